"""Training checkpoints: parameters, optimizer state, progress and config, saved asynchronously by Orbax.

Each step directory W/checkpoints/<step>/ holds the items
    params     canonical parameter tree (the item `tpu_train.checkpoint` and HF import/export use)
    opt_state  optimizer state (absent for a step-0 checkpoint made by `import_hf`)
    progress   {"step": s}: the input pipeline resumes by skipping s batches (see input_pipeline)
    config     the training config as JSON, for the record

Orbax writes each step into a temporary directory and renames it when complete, so a process killed
mid-save leaves no step that restores half-written; the next start finds the last complete one.
"""

from __future__ import annotations

import jax
import orbax.checkpoint as ocp

from tpu_train.checkpoint import CHECKPOINT_DIR, workdir_path
from tpu_train.training.step import TrainState


class TrainCheckpointer:
    def __init__(
        self, workdir: str, every_steps: int, keep: int, keep_every: int, async_save: bool
    ):
        self.every_steps = every_steps
        self.manager = ocp.CheckpointManager(
            workdir_path(workdir) / CHECKPOINT_DIR,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep or None,
                keep_period=keep_every or None,
                enable_async_checkpointing=async_save,
                cleanup_tmp_directories=True,
                create=True,
            ),
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, state: TrainState, config_json: dict, force: bool = False) -> bool:
        """Starts saving `state` (async); returns whether a save was started."""
        step = int(jax.device_get(state.step))
        if step in self.manager.all_steps():
            return False
        return self.manager.save(
            step,
            args=ocp.args.Composite(
                params=ocp.args.StandardSave(state.params),
                opt_state=ocp.args.StandardSave(state.opt_state),
                progress=ocp.args.JsonSave({"step": step}),
                config=ocp.args.JsonSave(config_json),
            ),
            force=force,
        )

    def should_save(self, step: int) -> bool:
        return self.every_steps > 0 and step % self.every_steps == 0

    def restore(self, step: int, abstract: TrainState) -> tuple[dict, object | None]:
        """Restores `step` onto the shapes and shardings of `abstract` (ShapeDtypeStructs on the current
        mesh). Returns (params, opt_state), opt_state None for an imported step-0 checkpoint."""
        items = self.manager.item_metadata(step)
        has_opt = items is not None and "opt_state" in items
        args = dict(params=ocp.args.StandardRestore(abstract.params))
        if has_opt:
            args["opt_state"] = ocp.args.StandardRestore(abstract.opt_state)
        restored = self.manager.restore(step, args=ocp.args.Composite(**args))
        return restored["params"], restored["opt_state"] if has_opt else None

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()
