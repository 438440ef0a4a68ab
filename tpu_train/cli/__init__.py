"""The command-line programs, one module each; `python -m tpu_train.NAME` runs `tpu_train/cli/NAME.py`.

train       fine-tune or train (ml_collections config, workdir; resumes)
import_hf   a transformers directory or a GGUF file -> a workdir at step 0
export_hf   a workdir checkpoint -> a Hugging Face directory
sample      generate from a workdir or a Hugging Face directory
evaluate    sample, execute and grade on the benchmarks, or grade given predictions
execute     run programs in the sandbox
plan        memory and step-time plan of a config on a TPU slice
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

from absl import app, flags


def run_main(
    main: Callable[[list[str]], None], usage: str | None, required: Sequence[str] = ()
) -> None:
    """Parses the command line and runs `main`. `--help` prints `usage` whether the command was started
    as `python -m tpu_train.NAME` or as `python -m tpu_train.cli.NAME` (absl reads the __main__ module's
    docstring)."""
    sys.modules["__main__"].__doc__ = usage
    if required:
        flags.mark_flags_as_required(list(required))
    app.run(main)
