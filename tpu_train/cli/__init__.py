"""The command-line programs, one module each; `python -m tpu_train.NAME` runs `tpu_train/cli/NAME.py`.

train       fine-tune or train (ml_collections config, workdir; resumes)
import_hf   a transformers directory or a GGUF file -> a workdir at step 0
export_hf   a workdir checkpoint -> a Hugging Face directory
sample      generate from a workdir or a Hugging Face directory
evaluate    sample, execute and grade on the benchmarks, or grade given predictions
execute     run programs in the sandbox
plan        memory and step-time plan of a config on a TPU slice
rl          GRPO: rewards from running the model's programs in the sandbox

Every program's failure ends its stderr with the error itself: library noise that would bury it
(Orbax's log records and tracebacks from its background threads, asyncio's "Event loop is closed" and
"Task exception was never retrieved" for the rest of a failed batch) is cut down or dropped by
`quiet_libraries`.
"""

from __future__ import annotations

import logging as std_logging
import sys
from collections.abc import Callable, Sequence

from absl import app, flags, logging


def run_main(
    main: Callable[[list[str]], None], usage: str | None, required: Sequence[str] = ()
) -> None:
    """Parses the command line and runs `main`. `--help` prints `usage` whether the command was started
    as `python -m tpu_train.NAME` or as `python -m tpu_train.cli.NAME` (absl reads the __main__ module's
    docstring). A `--config.KEY=V` naming no config field is refused in one line."""
    sys.modules["__main__"].__doc__ = usage
    if required:
        flags.mark_flags_as_required(list(required))
    quiet_libraries()
    app.run(main, flags_parser=_parse_flags)


def _parse_flags(argv: list[str]) -> list[str]:
    try:
        return app.parse_flags_with_usage(argv)
    except (AttributeError, KeyError) as err:  # ml_collections, on an override of a missing field
        raise SystemExit(f"error: {_unknown_config_key(argv, err)}") from None


def _unknown_config_key(argv: Sequence[str], err: BaseException) -> str:
    """ml_collections says `'num_stepz'\\nDid you mean "num_steps" instead of "num_stepz"?` inside an
    AttributeError wrapping a KeyError; this names the flag it came from."""
    inner = err.args[0] if err.args and isinstance(err.args[0], BaseException) else err
    text = str(inner.args[0]) if isinstance(inner, KeyError) and inner.args else str(inner)
    key, *hint = text.strip("'\"").split("\n")
    key = key.strip("'\"")
    flag = next(
        (a for a in argv if a.startswith("--") and key in a.split("=")[0].split(".")[1:]), None
    )
    where = f"{flag.split('=')[0]}: " if flag else ""
    suggestion = f" ({' '.join(hint).strip()})" if hint else ""
    return f"{where}the config has no field {key!r}{suggestion}"


class _OrbaxRecords(std_logging.Filter):
    """Orbax logs each save's progress at INFO and, from its background threads, every failure at
    ERROR with a traceback, which the main thread then raises again (and `tpu_train.checkpoint`
    reports in one line). Keep warnings and errors, as one line each."""

    def filter(self, record: std_logging.LogRecord) -> bool:
        if "/orbax/" not in record.pathname.replace("\\", "/"):
            return True
        if record.levelno < std_logging.WARNING:
            return False
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        message = record.getMessage().strip().split("\n", 1)[0]
        record.msg, record.args = (message[:297] + "...") if len(message) > 300 else message, None
        return True


class _OrbaxOrphanTasks(std_logging.Filter):
    """The same failed batch, seen from asyncio: the writes that failed after the first one are tasks
    (and gathering futures) whose exception nobody retrieves, and asyncio logs each, with its traceback,
    when it is collected, often after the command's own error line. Only those from Orbax's writes are
    dropped: a traceback that runs through Orbax, or a TensorStore error that never passed through
    Python (TensorStore completes the future from C++, so it carries no traceback at all) on a path
    Orbax is writing."""

    def filter(self, record: std_logging.LogRecord) -> bool:
        if "exception was never retrieved" not in record.getMessage() or not record.exc_info:
            return True
        _, error, tb = record.exc_info
        if tb is None:
            text = str(error)
            return not ("tensorstore_spec" in text and ".orbax-checkpoint-tmp" in text)
        while tb is not None:
            if "/orbax/" in tb.tb_frame.f_code.co_filename.replace("\\", "/"):
                return False
            tb = tb.tb_next
        return True


def _drop_closed_loop_callbacks(previous: Callable) -> Callable:
    """TensorStore completes each write or read future by scheduling a callback on the asyncio loop
    that awaited it. When one of a batch fails, Orbax's `asyncio.gather` returns at once and its
    private loop is closed while the others are still in flight; each of those then raises "Event loop
    is closed" inside TensorStore, which reports it as unraisable: a harmless traceback per pending
    array, printed after the real error. Only those are dropped; anything else goes to `previous`."""

    def hook(unraisable) -> None:
        if (
            unraisable.exc_type is RuntimeError
            and str(unraisable.exc_value) == "Event loop is closed"
            and unraisable.object is None
        ):
            return
        previous(unraisable)

    hook.drops_closed_loop_callbacks = True
    return hook


def quiet_libraries() -> None:
    """Keeps library noise from burying a command's own output and errors (see the module docstring)."""
    logging.set_verbosity(logging.WARNING)
    absl_logger = std_logging.getLogger("absl")
    if not any(isinstance(f, _OrbaxRecords) for f in absl_logger.filters):
        absl_logger.addFilter(_OrbaxRecords())
    asyncio_logger = std_logging.getLogger("asyncio")
    if not any(isinstance(f, _OrbaxOrphanTasks) for f in asyncio_logger.filters):
        asyncio_logger.addFilter(_OrbaxOrphanTasks())
    if not getattr(sys.unraisablehook, "drops_closed_loop_callbacks", False):
        sys.unraisablehook = _drop_closed_loop_callbacks(sys.unraisablehook)
