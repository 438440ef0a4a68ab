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
        tpu_train_checksums.process_<i>.json   sizes and CRCs of the files process i wrote
                   (`tpu_train.checksums`), written once the step has committed
    W/damaged_checkpoints/<step>/   a damaged step moved aside when training saves that step again

A LoRA workdir (`model_config.json` has `lora`) keeps its frozen base once, as step 0 (imported or
initialised; never deleted by the retention policy), and each later step saves only what trains: params
holds the adapters, opt_state their optimizer state, progress {"step": s, "base_step": 0}.
`restore_model_params` puts the two together for sampling, evaluation and export.

Orbax writes each step into a temporary directory and renames it when complete, so a process killed
mid-save leaves no step that restores half-written; the next start finds the last complete one.
What happens to a step later (a flipped bit, a truncated copy, a half-deleted directory) is caught by
the checksums: restoring the latest step checks them, and a step that fails them (or that Orbax cannot
read) is skipped with a one-line warning for the step before it, down to step 0; when none restores,
`CheckpointError` says so. An async save that fails (a full or read-only workdir) raises
`CheckpointSaveError` at the next step boundary (`Checkpointer.poll`), so training stops at once.
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

import concurrent.futures
import dataclasses
import errno
import json
import os
import re
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from orbax.checkpoint import checkpoint_managers

from tpu_train import checksums, tokenizer_files
from tpu_train.model import lora
from tpu_train.model.config import LlamaConfig
from tpu_train.model.params import adapter_abstract, canonical_abstract

CHECKPOINT_DIR = "checkpoints"
DAMAGED_DIR = "damaged_checkpoints"  # where a damaged step goes when training saves that step again
MODEL_CONFIG_FILE = "model_config.json"
BASE_STEP = 0  # where a LoRA workdir keeps its frozen base


def workdir_path(workdir: str | Path) -> epath.Path:
    """A workdir as a path object that also understands Cloud Storage (gs://...) paths."""
    path = epath.Path(workdir)
    return path if str(workdir).startswith("gs://") else epath.Path(Path(workdir).absolute())


class WorkdirBusyError(RuntimeError):
    """Another training process holds the workdir."""


class CheckpointError(RuntimeError):
    """No checkpoint of a workdir restores (each one damaged), or the step asked for is damaged.
    `skipped`: (step, reason) of each damaged step tried."""

    def __init__(self, message: str, skipped: tuple[tuple[int, str], ...] = ()):
        super().__init__(message)
        self.skipped = skipped


class CheckpointSaveError(RuntimeError):
    """A checkpoint could not be written (a full or read-only workdir); the message names the cause."""


class _DamagedStep(Exception):
    """One step failed its checksums or could not be read; the message is the reason, one line."""


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


def run_locked(workdir: str | Path, run: Callable[[epath.Path, bool], Any]) -> Any:
    """Creates `workdir` and calls `run(path, is_main)` while process 0 holds its `WorkdirLock`; what
    a training or RL run does around its loop, so that a second run in the directory is refused."""
    path = workdir_path(workdir)
    path.mkdir(parents=True, exist_ok=True)
    is_main = jax.process_index() == 0
    if not is_main:
        return run(path, is_main)
    with WorkdirLock(path):
        return run(path, is_main)


class Checkpointer:
    """The one Orbax CheckpointManager over W/checkpoints; every save and restore of a workdir goes here.

    Args:
        workdir: local path or gs://...
        every_steps: `should_save(step)` is true every this many steps (0: only when forced).
        keep: most recent steps kept (0: all); keep_every: also keep every this many steps (0: none).
        async_save: save in a background thread (training); imports and tools save synchronously.
        keep_base: never delete step 0 (a LoRA run's frozen base).

    Checksums (`tpu_train.checksums`) are computed once a step has committed, from the files Orbax
    wrote: at once for a synchronous save; for an async one in a background thread started when the
    save is seen to have finished (`poll`, called by the loop every step, or the next `save`, `wait`,
    `close`), so hashing never holds up training.
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
        self.async_save = async_save
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
        self._in_flight: int | None = None  # an async save started, not yet seen to have committed
        self._hasher = concurrent.futures.ThreadPoolExecutor(1, "checkpoint-checksums")
        self._hashing: concurrent.futures.Future | None = None
        self._damaged: set[int] = set()  # steps skipped by a restore: moved aside when saved again

    @classmethod
    def for_run(cls, workdir: str | Path, config: Any, *, keep_base: bool) -> Checkpointer:
        """A training or RL run's checkpointer, from its `checkpoint` config section."""
        return cls(
            workdir,
            every_steps=config.every_steps,
            keep=config.keep,
            keep_every=config.keep_every,
            async_save=config.async_save,
            keep_base=keep_base,
        )

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def step_dir(self, step: int) -> epath.Path:
        return self.workdir / CHECKPOINT_DIR / str(step)

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
        `base_step`: `params` are LoRA adapters over the base saved at that step. Raises
        CheckpointSaveError when this save, or the async one before it, failed."""
        self._settle(block=True)  # Orbax would wait for the previous save here anyway
        if step in self._damaged:
            self._move_aside(step)
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
        try:
            started = self.manager.save(step, args=ocp.args.Composite(**items), force=force)
        except Exception as err:  # the synchronous part: creating the step's directories
            raise self._save_error(step, err) from None
        if started:
            self._in_flight = step
            if not self.async_save:
                self._settle(block=True)
        return started

    def poll(self) -> None:
        """Between steps: if the async save in flight has finished, raise CheckpointSaveError when it
        failed, else start hashing its files. Never blocks on a save still being written."""
        self._settle(block=False)
        self._check_hashing(block=False)

    def _settle(self, block: bool) -> None:
        if self._in_flight is None:
            return
        if not block and self.manager.is_saving_in_progress():
            return
        step, self._in_flight = self._in_flight, None
        try:
            self.manager.wait_until_finished()
        except Exception as err:
            raise self._save_error(step, err) from None
        self._check_hashing(block=True)  # one step's hashing at a time
        process = jax.process_index()
        self._hashing = self._hasher.submit(self._write_checksums, step, process)

    def _write_checksums(self, step: int, process: int) -> None:
        step_dir = self.step_dir(step)
        try:
            checksums.write_manifest(step_dir, process)
        except FileNotFoundError:
            if step_dir.exists():
                raise
            # Already deleted by the retention policy: nothing to protect.

    def _check_hashing(self, block: bool) -> None:
        if self._hashing is None or (not block and not self._hashing.done()):
            return
        hashing, self._hashing = self._hashing, None
        try:
            hashing.result()
        except OSError as err:  # writing the manifest fails like the save would: a full workdir
            raise CheckpointSaveError(
                f"{self.workdir}: writing checkpoint checksums failed: {_os_cause(err)}; free space "
                f"in (or fix the permissions of) {self.workdir}, then rerun to resume"
            ) from None

    def _save_error(self, step: int, err: BaseException) -> CheckpointSaveError:
        done = [s for s in self.all_steps() if s != step]
        resume = f"resume from step {max(done)}" if done else "start over"
        if _os_error_code(err) is None:  # not the storage: say what failed, advise nothing
            return CheckpointSaveError(
                f"{self.workdir}: saving checkpoint step {step} failed: "
                f"{_first_line(_root_cause(err))}; training stopped"
            )
        return CheckpointSaveError(
            f"{self.workdir}: saving checkpoint step {step} failed: {_os_cause(err)}; training "
            f"stopped. Free space in (or fix the permissions of) {self.workdir}, then rerun the same "
            f"command to {resume}"
        )

    def _move_aside(self, step: int) -> None:
        """A damaged step that training is about to save again goes to W/damaged_checkpoints/ (kept
        for inspection; on gs://, where directories cannot be renamed, it is deleted)."""
        self._damaged.discard(step)
        if step not in self.manager.all_steps():
            return
        if jax.process_index() == 0:
            if _is_local(self.workdir):
                aside = self.workdir / DAMAGED_DIR / f"{step}-{time.strftime('%Y%m%d-%H%M%S')}"
                aside.parent.mkdir(parents=True, exist_ok=True)
                self.step_dir(step).rename(aside)
                _warn(f"moved the damaged step {step} to {aside}; saving it again")
            else:
                _warn(f"deleting the damaged step {self.step_dir(step)}; saving it again")
        if not _is_local(self.workdir):
            self.manager.delete(step)
        sync_processes("tpu_train_checkpoint_move_aside")
        self.manager.reload()

    def verify(self, step: int) -> str | None:
        """None when the files of `step` match the checksums written when it was saved (or it has
        none: see `checksums.manifests`); else the reason, one line. Every process checks its share
        of the manifests and all agree on the verdict."""
        step_dir = self.step_dir(step)
        count, index = jax.process_count(), jax.process_index()
        try:
            mine = [p for p in checksums.manifests(step_dir) if p % count == index]
            problem = next(
                filter(None, (checksums.check_manifest(step_dir, p) for p in mine)), None
            )
        except OSError as err:
            problem = f"unreadable: {_os_cause(err)}"
        if _all_true(problem is None):
            return None
        return problem or "another process found a damaged file"

    def restore(
        self,
        step: int | None,
        abstract_params: Any,
        abstract_opt_state: Any = None,
        *,
        after: int | None = None,
    ) -> tuple[Any, Any, int]:
        """Restores `step` onto the shapes and shardings of the abstract trees; None: the latest step
        (after `after`, when given) that passes its checksums and restores, each newer one skipped with
        a one-line warning. Returns (params, opt_state or None, step): opt_state is None when not asked
        for or not saved (a step-0 import). Raises CheckpointError when no such step restores (or
        `step` is damaged), FileNotFoundError when there is none at all."""
        self._settle(block=True)
        steps = self.all_steps()
        if step is not None:
            if step not in steps:
                raise FileNotFoundError(
                    f"{self.workdir}: no checkpoint at step {step}; have {self.all_steps()}"
                )
            try:
                return self._restore_step(step, abstract_params, abstract_opt_state)
            except _DamagedStep as err:
                raise CheckpointError(f"{self.step_dir(step)} is damaged: {err}") from None
        candidates = sorted((s for s in steps if after is None or s > after), reverse=True)
        if not candidates:
            raise FileNotFoundError(f"{self.workdir / CHECKPOINT_DIR}: no checkpoint to restore")
        skipped: list[tuple[int, str]] = []
        for candidate in candidates:
            try:
                restored = self._restore_step(candidate, abstract_params, abstract_opt_state)
            except _DamagedStep as err:
                skipped.append((candidate, str(err)))
                continue
            for bad, reason in skipped:
                _warn(f"{self.step_dir(bad)} is damaged ({reason}); restored step {candidate}")
            self._damaged.update(bad for bad, _ in skipped)
            return restored
        self._damaged.update(bad for bad, _ in skipped)
        listing = "; ".join(f"step {s}: {reason}" for s, reason in skipped)
        raise CheckpointError(
            f"{self.workdir / CHECKPOINT_DIR}: no checkpoint restores ({listing}); move the damaged "
            "steps away to start over, or train in a new --workdir",
            tuple(skipped),
        )

    def _restore_step(
        self, step: int, abstract_params: Any, abstract_opt_state: Any
    ) -> tuple[Any, Any, int]:
        problem = self.verify(step)
        if problem is not None:
            raise _DamagedStep(problem)
        # A step without checksums (or with a fault they cannot see) is checked by reading it: any
        # failure of Orbax or TensorStore counts as damage, reported by its first line instead of
        # the whole TensorStore traceback.
        try:
            # Whether opt_state was saved, from the directory: Orbax's item_metadata would warn once
            # per item that it has no handler registered for it.
            saved_opt = (self.step_dir(step) / "opt_state").exists()
            args = dict(params=ocp.args.StandardRestore(abstract_params))
            with_opt = abstract_opt_state is not None and saved_opt
            if with_opt:
                args["opt_state"] = ocp.args.StandardRestore(abstract_opt_state)
            restored = self.manager.restore(step, args=ocp.args.Composite(**args))
            error = None
        except Exception as err:  # any read failure is this step's damage
            error = _first_line(_root_cause(err))
        if not _all_true(error is None):
            raise _DamagedStep(error or "another process could not read it")
        return restored["params"], restored["opt_state"] if with_opt else None, step

    def wait(self) -> None:
        """Blocks until the save in flight and its checksums are written (raises CheckpointSaveError
        when either failed)."""
        self._settle(block=True)
        self._check_hashing(block=True)

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self._hasher.shutdown(wait=True)
            self.manager.close()


def _warn(message: str) -> None:
    if jax.process_index() == 0:
        print(f"warning: {message}", file=sys.stderr, flush=True)


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    line = text[0] if text else type(err).__name__
    return line if len(line) <= 300 else line[:297] + "..."


def _root_cause(err: BaseException) -> BaseException:
    """The innermost of chained errors: for a TensorStore read, the one naming the file and byte range
    rather than the wrapper that prints the whole TensorStore spec."""
    while err.__cause__ is not None or err.__context__ is not None:
        err = err.__cause__ or err.__context__
    return err


def _os_error_code(err: BaseException) -> int | None:
    """The errno behind an error: an OSError's in its chain, or the one TensorStore puts in its
    text ("... [os_error_code='28']"); None when the failure did not come from the OS."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno:
            return seen.errno
        match = re.search(r"os_error_code='?(\d+)", str(seen))
        if match:
            return int(match.group(1))
        seen = seen.__cause__ or seen.__context__
    return None


def _os_cause(err: BaseException) -> str:
    """What the OS said, with the errno's name and the file: "File too large (EFBIG, writing F)"."""
    code = _os_error_code(err)
    if code is None:
        return _first_line(_root_cause(err))
    seen: BaseException | None = err
    where = ""
    while seen is not None:
        if isinstance(seen, OSError) and seen.filename:
            where = f", {seen.filename}"
            break
        written = re.search(r'Failed writing: "([^"]+)"', str(seen))
        if written:
            where = f", writing {written.group(1)}"
            break
        seen = seen.__cause__ or seen.__context__
    return f"{os.strerror(code)} ({errno.errorcode.get(code, code)}{where})"


def _all_true(flag: bool) -> bool:
    """Whether `flag` holds on every process (all of them must take the same branch of a restore)."""
    if jax.process_count() == 1:
        return flag
    from jax.experimental import multihost_utils

    return bool(np.all(multihost_utils.process_allgather(np.array([flag]))))


def sync_processes(name: str) -> None:
    """Waits until every process reaches this point (no-op for one process); e.g. until process 0 has
    written files the others read."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


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
    """(parameters, config, step) of the model checkpoint `step` (default: the latest that restores,
    see `Checkpointer.restore`) of a workdir holds, onto `sharder`'s mesh (None: one device). For a
    LoRA workdir that is the plain model its adapters compute: the base of step 0 (quantized as in
    training, for QLoRA) with the adapters of `step` merged in (`lora.merge`), and the config without
    `lora`; so sampling, evaluation and export need no separate merge step. When no adapter step
    restores, that is the base alone (step 0), with a warning per damaged step."""
    if cfg.lora is None:
        params, step = restore_params(workdir, canonical_abstract(cfg, sharder), step)
        return params, cfg, step
    plain = cfg.replace(lora=None)
    base, _ = restore_params(workdir, canonical_abstract(plain, sharder), BASE_STEP)
    if step is None:
        step = _latest_adapters(workdir)
    if step == BASE_STEP:  # imported, not trained yet (or no adapter step restores)
        return base, plain, step
    base = lora.quantize_base(base, cfg.lora)
    adapters, step = restore_params(workdir, adapter_abstract(cfg, sharder), step)
    return lora.merge(lora.combine(base, adapters), cfg.lora), plain, step


def _latest_adapters(workdir: str | Path) -> int:
    """The latest step after the base whose files pass their checksums; the base step when none."""
    with Checkpointer(workdir) as ckpt:
        for step in sorted((s for s in ckpt.all_steps() if s > BASE_STEP), reverse=True):
            problem = ckpt.verify(step)
            if problem is None:
                return step
            _warn(f"{ckpt.step_dir(step)} is damaged ({problem}); trying the step before it")
    return BASE_STEP


def restore_params(workdir: str | Path, target: dict, step: int | None = None) -> tuple[dict, int]:
    """Restores the "params" item of `step` (default: the latest that restores, older ones tried in
    turn) onto `target`'s shapes and shardings (e.g. `tpu_train.model.params.canonical_abstract`).
    Returns (params, step)."""
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
        try:
            base, _, _ = ckpt.restore(BASE_STEP, abstract_params)
        except CheckpointError as err:
            raise CheckpointError(
                f"{err}; a LoRA workdir's base model is step {BASE_STEP}, and the adapters cannot be "
                "used without it: train in a new --workdir"
            ) from None
    if latest is None or latest == BASE_STEP:
        return Start(adapters.init(), None, BASE_STEP, how, frozen=base)
    try:
        trained, opt_state, step = ckpt.restore(
            None, adapters.abstract, abstract_opt_state, after=BASE_STEP
        )
    except CheckpointError as err:  # every adapter step is damaged: the base is the last good state
        for bad, reason in err.skipped:
            _warn(
                f"{ckpt.step_dir(bad)} is damaged ({reason}); starting the adapters afresh on the "
                f"base (step {BASE_STEP})"
            )
        return Start(adapters.init(), None, BASE_STEP, how, frozen=base)
    return Start(trained, opt_state, step, how, frozen=base)


def _save_step0(ckpt: Checkpointer, params: Any) -> Any:
    if not ckpt.save(BASE_STEP, params, force=True):
        raise RuntimeError(f"{ckpt.workdir}: Orbax did not save step {BASE_STEP}")
    ckpt.wait()
    return params
