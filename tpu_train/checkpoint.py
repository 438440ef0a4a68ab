"""The workdir and its Orbax checkpoints: one module, one manager, one place that decides how a run starts.

Layout of a workdir:

    W/model_config.json        the LlamaConfig (JSON) every checkpoint in W was made with
    W/tokenizer.json (+ tokenizer_config.json)  or  W/tokenizer.model
                               the tokenizer travelling with the weights (Hugging Face or sentencepiece)
    W/prompt_format.json       the prompt format the model was trained in (`tpu_train.data.prompts`)
    W/train.lock               while a training run holds W: its host and pid (`WorkdirLock`)
    W/checkpoints/<step>/      Orbax CheckpointManager steps, items:
        params     canonical (layers-stacked) parameter tree: what import, export and sampling use
        opt_state  optimizer state (absent for a step-0 checkpoint made by an import)
        progress   {"step": s}: the input pipeline resumes by skipping s batches
        config     the training config as JSON, for the record

A LoRA workdir (`model_config.json` has `lora`) keeps its frozen base once, as step 0 (imported or
initialised; never deleted by the retention policy), and each later step saves only what trains: params
holds the adapters, opt_state their optimizer state, progress {"step": s, "base_step": 0}.
`restore_model_params` puts the two together for sampling, evaluation and export.

Orbax writes each step into a temporary directory and renames it when complete, so a process killed
mid-save leaves no step that restores half-written; the next start finds the last complete one.
Restoring always targets the *current* mesh: the caller passes abstract arrays with the shardings it
wants, so a checkpoint written on fsdp=8 restores onto data=2 x fsdp=4 or onto one CPU.

How a training run starts (`start`, the one place this is decided):

    W has a checkpoint         -> resume from the latest step (parameters and, if saved, optimizer state)
    else an import is given    -> import it and save it as step 0 through the same manager, then train
    else                       -> initialise from scratch (with LoRA: the base, saved as step 0)
LoRA adds one rule: the base always comes from step 0, the adapters from the latest step after it (fresh
adapters while there is none).
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orbax.checkpoint as ocp
from etils import epath
from orbax.checkpoint import checkpoint_managers

from tpu_train import tokenizer_files
from tpu_train.model import lora
from tpu_train.model.config import LlamaConfig
from tpu_train.model.params import adapter_abstract, canonical_abstract

CHECKPOINT_DIR = "checkpoints"
MODEL_CONFIG_FILE = "model_config.json"
BASE_STEP = 0  # where a LoRA workdir keeps its frozen base


def workdir_path(workdir: str | Path) -> epath.Path:
    """A workdir as a path object that also understands Cloud Storage (gs://...) paths."""
    path = epath.Path(workdir)
    return path if str(workdir).startswith("gs://") else epath.Path(Path(workdir).absolute())


class WorkdirBusyError(RuntimeError):
    """Another training process holds the workdir."""


class WorkdirLock:
    """Held by the training run of a workdir, so that a second run in the same directory is refused
    instead of overwriting the first one's checkpoints and metrics.

    The lock is a file created exclusively (`O_EXCL`) that names its holder's host and pid. A lock left
    by a process that died on this host (a SIGKILL, a lost machine that came back) is taken over with a
    warning; one held on another host is refused, naming the file to delete if that run is gone. Only
    local workdirs are locked: object stores (gs://) have no exclusive create, so there the caller
    relies on running one job per workdir.

    Example:
        >>> import tempfile
        >>> w = tempfile.mkdtemp()
        >>> with WorkdirLock(w):
        ...     WorkdirLock(w).acquire()
        Traceback (most recent call last):
        ...
        tpu_train.checkpoint.WorkdirBusyError: ...
    """

    FILE = "train.lock"

    def __init__(self, workdir: str | Path):
        self.path = workdir_path(workdir) / self.FILE
        self.held = False

    def acquire(self) -> WorkdirLock:
        if not _is_local(self.path):
            return self
        host, pid = socket.gethostname(), os.getpid()
        for _ in range(2):  # a second try after removing a stale lock
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                holder = self._holder()
                if holder.get("host") == host and not _alive(holder.get("pid")):
                    print(
                        f"warning: {self.path} was left by pid {holder.get('pid')}, which is no "
                        "longer running; taking it over"
                    )
                    self.path.unlink(missing_ok=True)
                    continue
                raise WorkdirBusyError(
                    f"{self.path}: this workdir is in use by pid {holder.get('pid')} on "
                    f"{holder.get('host')} (since {holder.get('since')}); wait for that run, use "
                    "another --workdir, or delete the file if that run is gone"
                ) from None
            with os.fdopen(fd, "w") as handle:
                json.dump({"host": host, "pid": pid, "since": time.strftime("%F %T")}, handle)
            self.held = True
            return self
        raise WorkdirBusyError(f"{self.path}: could not take the lock")

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False

    def _holder(self) -> dict[str, Any]:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}  # half-written by a holder that died at once: treated as another host's

    def __enter__(self) -> WorkdirLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _is_local(path: epath.Path) -> bool:
    return "://" not in str(path)


def _alive(pid: Any) -> bool:
    if not isinstance(pid, int):
        return True  # unknown: do not take over
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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


def has_tokenizer(directory: str | Path) -> bool:
    """Whether a directory (local or gs://) holds any tokenizer file."""
    return any((epath.Path(directory) / name).exists() for name in tokenizer_files.ALL_FILES)


def copy_tokenizer(source: str | Path, workdir: str | Path) -> list[str]:
    """Copies a tokenizer into the workdir, where sampling, evaluation and export read it, beside its
    weights; returns the file names written. `source` (local or gs://) is a directory holding
    tokenizer.json (+ its config) or tokenizer.model (none there: nothing copied, []), or one of those
    files (which must exist)."""
    source, target = epath.Path(source), workdir_path(workdir)
    if source.is_dir():
        pairs = [
            (source / name, name) for name in tokenizer_files.ALL_FILES if (source / name).exists()
        ]
        if not pairs:
            return []
    elif source.name.endswith(".model"):  # any sentencepiece model file
        pairs = [(source, tokenizer_files.SENTENCEPIECE_MODEL)]
    else:  # tokenizer.json: its config files beside it travel with it
        pairs = [
            (source.parent / n, n) for n in tokenizer_files.HF_FILES if (source.parent / n).exists()
        ]
    if not pairs or not pairs[0][0].exists():
        raise FileNotFoundError(f"{source}: no tokenizer.json or tokenizer.model there")
    target.mkdir(parents=True, exist_ok=True)
    for path, name in pairs:
        (target / name).write_bytes(path.read_bytes())
    return [name for _, name in pairs]


class Checkpointer:
    """The one Orbax CheckpointManager over W/checkpoints; every save and restore of a workdir goes here.

    Args:
        workdir: local path or gs://...
        every_steps: `should_save(step)` is true every this many steps (0: only when forced).
        keep: most recent steps kept (0: all); keep_every: also keep every this many steps (0: none).
        async_save: save in a background thread (training); imports and tools save synchronously.
        keep_base: never delete step 0 (a LoRA run's frozen base).
    """

    def __init__(
        self,
        workdir: str | Path,
        *,
        every_steps: int = 0,
        keep: int = 0,
        keep_every: int = 0,
        async_save: bool = False,
        keep_base: bool = False,
    ):
        self.workdir = workdir_path(workdir)
        self.every_steps = every_steps
        policies = [checkpoint_managers.LatestN(keep or None)]
        if keep_every:
            policies.append(checkpoint_managers.EveryNSteps(keep_every))
        if keep_base:
            policies.append(checkpoint_managers.CustomSteps([BASE_STEP]))
        self.manager = ocp.CheckpointManager(
            self.workdir / CHECKPOINT_DIR,
            options=ocp.CheckpointManagerOptions(
                preservation_policy=checkpoint_managers.AnyPreservationPolicy(policies),
                enable_async_checkpointing=async_save,
                cleanup_tmp_directories=True,
                create=True,
            ),
        )

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def should_save(self, step: int) -> bool:
        return self.every_steps > 0 and step % self.every_steps == 0

    def save(
        self,
        step: int,
        params: Any,
        opt_state: Any = None,
        config_json: dict | None = None,
        force: bool = False,
        base_step: int | None = None,
    ) -> bool:
        """Starts saving step `step` (async when configured); returns whether a save was started.
        `base_step`: `params` are LoRA adapters over the base saved at that step."""
        if step in self.manager.all_steps():
            return False
        progress = {"step": step} if base_step is None else {"step": step, "base_step": base_step}
        items: dict[str, Any] = dict(
            params=ocp.args.StandardSave(params), progress=ocp.args.JsonSave(progress)
        )
        if opt_state is not None:
            items["opt_state"] = ocp.args.StandardSave(opt_state)
        if config_json is not None:
            items["config"] = ocp.args.JsonSave(config_json)
        return self.manager.save(step, args=ocp.args.Composite(**items), force=force)

    def restore(
        self, step: int | None, abstract_params: Any, abstract_opt_state: Any = None
    ) -> tuple[Any, Any, int]:
        """Restores `step` (None: latest) onto the shapes and shardings of the abstract trees.
        Returns (params, opt_state or None, step): opt_state is None when not asked for or not saved
        (a step-0 import)."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"{self.workdir / CHECKPOINT_DIR}: no checkpoint to restore")
        if step not in self.manager.all_steps():
            raise FileNotFoundError(
                f"{self.workdir}: no checkpoint at step {step}; have {self.all_steps()}"
            )
        items = self.manager.item_metadata(step)
        args = dict(params=ocp.args.StandardRestore(abstract_params))
        with_opt = abstract_opt_state is not None and items is not None and "opt_state" in items
        if with_opt:
            args["opt_state"] = ocp.args.StandardRestore(abstract_opt_state)
        restored = self.manager.restore(step, args=ocp.args.Composite(**args))
        return restored["params"], restored["opt_state"] if with_opt else None, step

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def save_params(workdir: str | Path, step: int, params: dict, cfg: LlamaConfig) -> None:
    """Writes `params` (canonical tree) as step `step` and records the model config; blocks until done.

    Refuses a workdir that already has a checkpoint at or after `step`: Orbax would skip the save while
    the model config was overwritten, leaving checkpoints that no longer restore."""
    with Checkpointer(workdir) as ckpt:
        latest = ckpt.latest_step()
        if latest is not None and latest >= step:
            raise FileExistsError(
                f"{ckpt.workdir}: already has checkpoints up to step {latest}; "
                "use a new workdir (nothing was written)"
            )
        write_model_config(workdir, cfg)
        if not ckpt.save(step, params):
            raise RuntimeError(f"{ckpt.workdir}: Orbax did not save step {step}")
        ckpt.wait()


def latest_step(workdir: str | Path) -> int | None:
    if not (workdir_path(workdir) / CHECKPOINT_DIR).exists():
        return None
    with Checkpointer(workdir) as ckpt:
        return ckpt.latest_step()


def restore_model_params(
    workdir: str | Path, cfg: LlamaConfig, sharder: Any = None, step: int | None = None
) -> tuple[dict, LlamaConfig, int]:
    """(parameters, config, step) of the model checkpoint `step` (default: latest) of a workdir holds,
    onto `sharder`'s mesh (None: one device). For a LoRA workdir that is the plain model its adapters
    compute: the base of step 0 (quantized as in training, for QLoRA) with the adapters of `step`
    merged in (`lora.merge`), and the config without `lora`; so sampling, evaluation and export need
    no separate merge step."""
    if cfg.lora is None:
        params, step = restore_params(workdir, canonical_abstract(cfg, sharder), step)
        return params, cfg, step
    plain = cfg.replace(lora=None)
    base, _ = restore_params(workdir, canonical_abstract(plain, sharder), BASE_STEP)
    step = latest_step(workdir) if step is None else step
    if step == BASE_STEP:  # imported, not trained yet
        return base, plain, step
    base = lora.quantize_base(base, cfg.lora)
    adapters, step = restore_params(workdir, adapter_abstract(cfg, sharder), step)
    return lora.merge(lora.combine(base, adapters), cfg.lora), plain, step


def restore_params(workdir: str | Path, target: dict, step: int | None = None) -> tuple[dict, int]:
    """Restores the "params" item of `step` (default: latest) onto `target`'s shapes and shardings
    (e.g. `tpu_train.model.params.canonical_abstract`). Returns (params, step)."""
    if not (workdir_path(workdir) / CHECKPOINT_DIR).exists():
        raise FileNotFoundError(
            f"{workdir_path(workdir) / CHECKPOINT_DIR}: no checkpoint to restore"
        )
    with Checkpointer(workdir) as ckpt:
        params, _, step = ckpt.restore(step, target)
    return params, step


@dataclasses.dataclass(frozen=True)
class Start:
    """How a run starts: what trains (all parameters, or LoRA's adapters), its optimizer state (None:
    initialise it), the frozen base under LoRA's adapters (None without LoRA), the step and why."""

    params: Any
    opt_state: Any
    step: int
    how: str  # "resumed" | "imported" | "initialised"
    frozen: Any = None


@dataclasses.dataclass(frozen=True)
class Adapters:
    """What `start` needs for a LoRA run: the adapters' abstract tree (shapes and shardings) and how to
    make fresh ones."""

    abstract: Any
    init: Callable[[], Any]


def start(
    ckpt: Checkpointer,
    abstract_params: Any,
    abstract_opt_state: Any,
    *,
    import_params: Callable[[], Any] | None,
    init_params: Callable[[], Any],
    adapters: Adapters | None = None,
) -> Start:
    """Resume, import or initialise, in that order (see the module docstring).

    `import_params` (None: nothing to import) returns the imported parameters, already on the current
    mesh; they are saved as step 0 through `ckpt` itself, so the step is visible to this run and a crash
    before the first training checkpoint resumes from the import rather than from random weights.

    With `adapters` (LoRA), `abstract_params` describes the base and `abstract_opt_state` the adapters'
    optimizer state; the base is step 0 (saved first if the workdir is new), the adapters and their
    optimizer state come from the latest later step, or fresh from `adapters.init`.
    """
    latest = ckpt.latest_step()
    if adapters is None:
        if latest is not None:
            params, opt_state, step = ckpt.restore(None, abstract_params, abstract_opt_state)
            return Start(params, opt_state, step, "resumed")
        if import_params is not None:
            return Start(_save_step0(ckpt, import_params()), None, 0, "imported")
        return Start(init_params(), None, 0, "initialised")
    if latest is None:
        how = "imported" if import_params is not None else "initialised"
        base = _save_step0(ckpt, (import_params or init_params)())
    else:
        if BASE_STEP not in ckpt.all_steps():
            raise FileNotFoundError(
                f"{ckpt.workdir / CHECKPOINT_DIR}: a LoRA workdir keeps its base model as step "
                f"{BASE_STEP}, which is missing (steps {ckpt.all_steps()}); the adapters cannot be "
                "used without it"
            )
        how = "resumed"
        base, _, _ = ckpt.restore(BASE_STEP, abstract_params)
    if latest is None or latest == BASE_STEP:
        return Start(adapters.init(), None, BASE_STEP, how, frozen=base)
    trained, opt_state, step = ckpt.restore(latest, adapters.abstract, abstract_opt_state)
    return Start(trained, opt_state, step, how, frozen=base)


def _save_step0(ckpt: Checkpointer, params: Any) -> Any:
    if not ckpt.save(BASE_STEP, params, force=True):
        raise RuntimeError(f"{ckpt.workdir}: Orbax did not save step {BASE_STEP}")
    ckpt.wait()
    return params
