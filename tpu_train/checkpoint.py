"""Orbax checkpoints of a workdir.

Layout of a workdir:

    W/model_config.json        the LlamaConfig (JSON) every checkpoint in W was made with
    W/tokenizer.model          optional sentencepiece model travelling with the weights
    W/checkpoints/<step>/      Orbax CheckpointManager steps; item "params" holds the canonical
                               (layers-stacked) parameter tree; training adds its own items beside it

Restoring always targets the *current* mesh: the caller passes the abstract tree with the shardings it
wants, so a checkpoint written on fsdp=8 restores onto data=2 x fsdp=4 or onto one CPU.
"""

from __future__ import annotations

import json
from pathlib import Path

import orbax.checkpoint as ocp
from etils import epath

from tpu_train.model.config import LlamaConfig

CHECKPOINT_DIR = "checkpoints"
MODEL_CONFIG_FILE = "model_config.json"
TOKENIZER_FILE = "tokenizer.model"


def workdir_path(workdir: str | Path) -> epath.Path:
    """A workdir as a path object that also understands Cloud Storage (gs://...) paths."""
    path = epath.Path(workdir)
    return path if str(workdir).startswith("gs://") else epath.Path(Path(workdir).absolute())


def manager(workdir: str | Path, **options) -> ocp.CheckpointManager:
    """A CheckpointManager over W/checkpoints (`options`: CheckpointManagerOptions fields)."""
    return ocp.CheckpointManager(
        workdir_path(workdir) / CHECKPOINT_DIR,
        options=ocp.CheckpointManagerOptions(create=True, **options),
    )


def write_model_config(workdir: str | Path, cfg: LlamaConfig) -> None:
    path = workdir_path(workdir) / MODEL_CONFIG_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")


def read_model_config(workdir: str | Path) -> LlamaConfig:
    path = workdir_path(workdir) / MODEL_CONFIG_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path}: no model config; is {workdir} a tpu_train workdir?")
    try:
        return LlamaConfig.from_dict(json.loads(path.read_text()))
    except (ValueError, TypeError) as e:
        raise ValueError(f"{path}: {e}") from e


def save_params(workdir: str | Path, step: int, params: dict, cfg: LlamaConfig) -> None:
    """Writes `params` (canonical tree) as step `step` and records the model config; blocks until done."""
    write_model_config(workdir, cfg)
    with manager(workdir) as mngr:
        mngr.save(step, args=ocp.args.Composite(params=ocp.args.StandardSave(params)))
        mngr.wait_until_finished()


def latest_step(workdir: str | Path) -> int | None:
    if not (workdir_path(workdir) / CHECKPOINT_DIR).exists():
        return None
    with manager(workdir) as mngr:
        return mngr.latest_step()


def restore_params(workdir: str | Path, target: dict, step: int | None = None) -> tuple[dict, int]:
    """Restores the "params" item of `step` (default: latest) onto `target`'s shapes and shardings
    (e.g. `tpu_train.model.params.canonical_abstract`). Returns (params, step)."""
    step = latest_step(workdir) if step is None else step
    if step is None:
        raise FileNotFoundError(
            f"{workdir_path(workdir) / CHECKPOINT_DIR}: no checkpoint to restore"
        )
    with manager(workdir) as mngr:
        if step not in mngr.all_steps():
            raise FileNotFoundError(
                f"{workdir}: no checkpoint at step {step}; have {mngr.all_steps()}"
            )
        restored = mngr.restore(
            step, args=ocp.args.Composite(params=ocp.args.StandardRestore(target))
        )
    return restored["params"], step
