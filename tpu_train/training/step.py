"""The train state and the jitted train step.

Loss: cross-entropy summed over target tokens (those with loss weight 1: the response and its EOS), divided
once by the number of target tokens in the *global* batch. With gradient accumulation the microbatches'
sums are added first and divided once, so k microbatches equal one batch k times the size, and short
examples are not up-weighted (a per-sequence mean would do that).

Batches are SeqIO decoder features, each [B, L]:
    decoder_input_tokens, decoder_target_tokens, decoder_loss_weights, decoder_segment_ids, decoder_positions
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from flax import struct

from tpu_train.model import lora
from tpu_train.model.config import LlamaConfig
from tpu_train.model.params import model_from_params
from tpu_train.sharding import Sharder

Batch = dict[str, jax.Array]
BATCH_KEYS = (
    "decoder_input_tokens",
    "decoder_target_tokens",
    "decoder_loss_weights",
    "decoder_segment_ids",
    "decoder_positions",
)


class TrainState(struct.PyTreeNode):
    step: jax.Array  # int32 scalar: number of updates applied
    # What trains, canonical (layers-stacked), float32 master weights: every parameter, or with LoRA
    # the adapters only.
    params: dict
    opt_state: optax.OptState  # of `params`
    frozen: dict | None = None  # LoRA: the frozen (possibly quantized) base the adapters apply to

    def model_params(self) -> dict:
        """The tree the model runs on: `params`, with LoRA's frozen base put back in."""
        return self.params if self.frozen is None else lora.combine(self.frozen, self.params)


def loss_sums(
    model_cfg: LlamaConfig, sharder: Sharder | None, params: dict, batch: Batch
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """(objective to differentiate, per-batch sums). Sums, not means: the caller divides once."""
    model = model_from_params(model_cfg, params, sharder)
    logits = model(
        batch["decoder_input_tokens"], batch["decoder_positions"], batch["decoder_segment_ids"]
    )  # [B, L, V] float32
    targets = batch["decoder_target_tokens"]
    weights = batch["decoder_loss_weights"].astype(jnp.float32)
    # logsumexp written out so that its max also serves the accuracy metric: a target logit equal to the
    # row's max is a correct prediction (ties count as correct). A separate argmax costs one more pass
    # over the [B, L, V] logits: 2-3% of a CPU step at a 32k vocabulary (profiled).
    max_logit = jax.lax.stop_gradient(logits.max(axis=-1))
    log_z = max_logit + jnp.log(jnp.exp(logits - max_logit[..., None]).sum(axis=-1))
    target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]  # no one-hot
    nll = (log_z - target_logit) * weights
    sums = {
        "loss": nll.sum(),
        "z_loss": (jnp.square(log_z) * weights).sum(),
        "correct": ((target_logit >= max_logit) * weights).sum(),
        "tokens": weights.sum(),
    }
    return sums["loss"], sums


def split_microbatches(batch: Batch, microbatches: int) -> Batch:
    """[B, ...] -> [microbatches, B / microbatches, ...] for every array of the batch."""
    return jax.tree.map(
        lambda x: x.reshape(microbatches, x.shape[0] // microbatches, *x.shape[1:]), batch
    )


def accumulate_gradients(grad_fn, params, frozen, batch: Batch, microbatches: int):
    """grad_fn(params, frozen, batch) -> (grads, sums), summed over `microbatches` slices of the batch
    (a scan: one slice's activations are alive at a time). Both are sums, so the caller divides once."""
    if microbatches == 1:
        return grad_fn(params, frozen, batch)
    split = split_microbatches(batch, microbatches)

    def accumulate(carry, micro):
        return jax.tree.map(jnp.add, carry, grad_fn(params, frozen, micro)), None

    first = jax.tree.map(lambda x: x[0], split)
    zeros = jax.tree.map(jnp.zeros_like, jax.eval_shape(grad_fn, params, frozen, first))
    return jax.lax.scan(accumulate, zeros, split)[0]


def make_train_step(
    model_cfg: LlamaConfig,
    sharder: Sharder | None,
    tx: optax.GradientTransformation,
    *,
    microbatches: int = 1,
    z_loss: float = 0.0,
) -> Callable[[TrainState, Batch], tuple[TrainState, dict[str, jax.Array]]]:
    """Returns step(state, batch) -> (state, metrics); jit it with the shardings of the run.

    A step whose loss or gradient norm is not finite leaves the state unchanged (metrics["finite"] = 0);
    the loop then stops or skips as configured, and the parameters never hold NaN.
    """

    def objective(params, frozen, batch):
        # Only `params` is differentiated: under LoRA the frozen base gets no weight gradient (XLA
        # drops that half of its backward pass), and no optimizer state.
        model_params = params if frozen is None else lora.combine(frozen, params)
        loss, sums = loss_sums(model_cfg, sharder, model_params, batch)
        return loss + z_loss * sums["z_loss"], sums

    grad_fn = jax.grad(objective, has_aux=True)

    def step(state: TrainState, batch: Batch) -> tuple[TrainState, dict[str, jax.Array]]:
        grads, sums = accumulate_gradients(grad_fn, state.params, state.frozen, batch, microbatches)
        tokens = jnp.maximum(sums["tokens"], 1.0)
        grads = jax.tree.map(lambda g: g / tokens, grads)
        loss = sums["loss"] / tokens
        grad_norm = optax.tree.norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)  # noqa: E731
        new_state = state.replace(
            step=state.step + 1,  # a skipped update still consumed its batch
            params=keep(params, state.params),
            opt_state=keep(opt_state, state.opt_state),
        )
        metrics = {
            "loss": loss,
            "z_loss": sums["z_loss"] / tokens,
            "token_accuracy": sums["correct"] / tokens,
            "grad_norm": grad_norm,
            "target_tokens": sums["tokens"],
            "finite": finite.astype(jnp.float32),
        }
        return new_state, metrics

    return step
