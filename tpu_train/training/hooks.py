"""What the training loop does besides the step itself: functions called every N steps.

    hooks = [Hook(MetricsLogger(...), every=config.train.log_every),
             Hook(ValidationLoss(...), every=config.eval.validation_every_steps),
             Hook(evaluate, every=config.eval.every_steps)]
    ...
    for hook in hooks:
        if hook.due(done, num_steps):
            hook(info)

A hook receives a `StepInfo` (the step just completed, the state after it and the step's metrics, still
on the device) and returns scalars to log, or nothing. Every process calls every hook (the state is
sharded over all of them); writing files is process 0's job inside the hook. Checkpointing and preemption
stay in the loop itself: they decide whether the loop goes on.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections.abc import Callable, Iterator

import jax
import ml_collections
import numpy as np

from tpu_train.model.config import LlamaConfig
from tpu_train.sharding import Sharder
from tpu_train.training import input_pipeline, metrics
from tpu_train.training.step import TrainState, loss_sums


@dataclasses.dataclass(frozen=True)
class StepInfo:
    step: int  # updates applied so far (the step just completed)
    num_steps: int  # the run's last step
    state: TrainState
    metrics: dict[str, jax.Array]  # the step's metrics, on the device
    fingerprint: int  # of the global batch (input_pipeline.fingerprint)


@dataclasses.dataclass(frozen=True)
class Hook:
    """Calls `fn(info)` after every `every`-th step (0: never) and, with `at_end`, after the last one."""

    fn: Callable[[StepInfo], dict[str, float] | None]
    every: int
    at_end: bool = True

    def due(self, step: int, num_steps: int) -> bool:
        if self.every <= 0:
            return False
        return step % self.every == 0 or (self.at_end and step == num_steps)

    def __call__(self, info: StepInfo) -> dict[str, float] | None:
        return self.fn(info)


class MetricsLogger:
    """Fetches the step's metrics, adds throughput, learning rate and MFU over the steps since the last
    call, and writes them (TensorBoard, W/metrics.jsonl on process 0) and the console progress line."""

    def __init__(
        self,
        writer,
        jsonl: metrics.JsonlWriter | None,
        say: Callable[[str], None],
        *,
        schedule: Callable[[int], float],
        tokens_per_step: int,
        flops_per_step: float,
        peak_flops: float,
        start_step: int,
    ):
        self.writer, self.jsonl, self.say, self.schedule = writer, jsonl, say, schedule
        self.tokens_per_step, self.flops_per_step = tokens_per_step, flops_per_step
        self.peak = peak_flops * jax.device_count()
        self.start_step = self.window_step = start_step
        self.run_start = self.window_start = time.perf_counter()
        self.last: dict[str, float] = {}

    def __call__(self, info: StepInfo) -> dict[str, float]:
        values = {k: float(v) for k, v in jax.device_get(info.metrics).items()}
        now = time.perf_counter()
        tokens_per_s = (
            (info.step - self.window_step) * self.tokens_per_step / (now - self.window_start)
        )
        values.update(
            learning_rate=float(self.schedule(info.step - 1)),
            tokens_per_s=tokens_per_s,
            tokens_per_s_per_device=tokens_per_s / jax.device_count(),
            mfu=tokens_per_s * self.flops_per_step / self.tokens_per_step / self.peak,
            data_fingerprint=float(info.fingerprint),
        )
        self.writer.write_scalars(info.step, values)
        if self.jsonl is not None:
            self.jsonl.write(info.step, {**values, "data_fingerprint": info.fingerprint})
        self.say(
            metrics.progress_line(
                info.step,
                info.num_steps,
                values,
                now - self.run_start,
                info.step - self.start_step,
            )
        )
        self.last = values
        self.window_start, self.window_step = time.perf_counter(), info.step
        return values


class ValidationLoss:
    """Loss and token accuracy on the first `num_batches` batches of the data's validation split (the
    hash-chosen held-out split the TFDS builders make), the same batches every time.

    Written as `val/loss` and `val/token_accuracy` (TensorBoard, W/validation.jsonl) and printed. A mixture
    whose validation split is empty is reported once and then skipped.
    """

    def __init__(
        self,
        batches: Callable[[], Iterator[dict[str, np.ndarray]]],
        num_batches: int,
        model_cfg: LlamaConfig,
        sharder: Sharder,
        batch_sharding: jax.sharding.Sharding,
        writer,
        jsonl: metrics.JsonlWriter | None,
        say: Callable[[str], None],
    ):
        self.batches, self.num_batches = batches, num_batches
        self.batch_sharding, self.writer, self.jsonl, self.say = batch_sharding, writer, jsonl, say
        self.sums = jax.jit(lambda params, batch: loss_sums(model_cfg, sharder, params, batch)[1])
        self.empty = False

    def __call__(self, info: StepInfo) -> dict[str, float] | None:
        if self.empty:
            return None
        totals: dict[str, float] = {}
        for rows in itertools.islice(self.batches(), self.num_batches):
            batch = input_pipeline.to_device(rows, self.batch_sharding)
            for name, value in jax.device_get(self.sums(info.state.model_params(), batch)).items():
                totals[name] = totals.get(name, 0.0) + float(value)
        if not totals.get("tokens"):
            self.empty = True
            self.say("validation: the mixture's validation split is empty; validation loss is off")
            return None
        values = {
            "val/loss": totals["loss"] / totals["tokens"],
            "val/token_accuracy": totals["correct"] / totals["tokens"],
        }
        self.writer.write_scalars(info.step, values)
        if self.jsonl is not None:
            self.jsonl.write(info.step, values)
        self.say(
            f"validation at step {info.step}: loss {values['val/loss']:.4f}, token accuracy "
            f"{values['val/token_accuracy']:.3f} ({int(totals['tokens'])} target tokens)"
        )
        return values


def validation_data(data_cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The data section reading the validation split in a fixed order (no shuffling)."""
    cfg = ml_collections.ConfigDict(data_cfg.to_dict())
    cfg.split, cfg.shuffle = "validation", False
    return cfg
