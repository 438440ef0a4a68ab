"""GRPO: group-normalised advantages and the clipped token-level policy loss, as one jitted update.

Each prompt is sampled G times (a group). A completion's advantage is its reward minus its group's mean,
divided by the group's standard deviation only when `scale_advantages` is set: Dr. GRPO (Liu et al.,
2025, "Understanding R1-Zero-Like Training") shows the division up-weights groups that are almost all
right or all wrong. A group whose rewards are all equal has advantage 0 everywhere and carries no signal.

The loss is DAPO's token-level form (Yu et al., 2025): every response token of the batch counts once, and
the sum is divided once by the batch's response tokens, so a long answer is not diluted into one
sequence-mean the way GRPO's per-sequence average does. With several updates per batch the ratio
r = exp(logp - logp_old) is clipped to [1 - clip_low, 1 + clip_high] (DAPO's "clip-higher" sets
clip_high above clip_low so unlikely tokens can still rise). An optional KL term to a reference policy
uses the k3 estimator exp(ref - logp) - (ref - logp) - 1 (always >= 0).

Example (one group of 4, rewards 1, 0, 0, 1):
    >>> import numpy as np
    >>> group_advantages(np.array([[1.0, 0.0, 0.0, 1.0]]), scale=False).tolist()
    [[0.5, -0.5, -0.5, 0.5]]
    >>> group_advantages(np.array([[1.0, 1.0]]), scale=True).tolist()   # no signal
    [[0.0, 0.0]]
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from tpu_train.model import lora
from tpu_train.model.config import LlamaConfig
from tpu_train.model.params import model_from_params
from tpu_train.sharding import Sharder
from tpu_train.training.step import TrainState, accumulate_gradients, split_microbatches

# Batch keys, each [N, L] over N completions of L tokens (prompt + response, right-padded):
#   inputs, targets (inputs shifted by one), positions, segment_ids (1 real, 0 padding),
#   response_mask (1 where the target is a response token), old_logp and ref_logp (per target token),
#   and advantages [N].
Batch = dict[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class LossConfig:
    clip_low: float = 0.2
    clip_high: float = 0.28
    kl_coef: float = 0.0
    temperature: float = 1.0  # the sampling temperature: the policy optimised is the one sampled


def group_advantages(rewards: np.ndarray, scale: bool, eps: float = 1e-6) -> np.ndarray:
    """[P, G] rewards -> [P, G] advantages: minus the group mean, over the group std when `scale`."""
    rewards = np.asarray(rewards, np.float64)
    centred = rewards - rewards.mean(axis=1, keepdims=True)
    if scale:
        centred = centred / (rewards.std(axis=1, keepdims=True) + eps)
    return centred.astype(np.float32)


def token_logprobs(
    model_cfg: LlamaConfig,
    sharder: Sharder | None,
    params: dict,
    batch: Batch,
    temperature: float = 1.0,
) -> tuple[jax.Array, jax.Array]:
    """(log-probability of each target token, entropy of each position's distribution), both [N, L]."""
    model = model_from_params(model_cfg, params, sharder)
    logits = model(batch["inputs"], batch["positions"], batch["segment_ids"]) / temperature
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    target = jnp.take_along_axis(log_probs, batch["targets"][..., None], axis=-1)[..., 0]
    entropy = -(jnp.exp(log_probs) * log_probs).sum(axis=-1)
    return target, entropy


def batch_logprobs(
    model_cfg: LlamaConfig,
    sharder: Sharder | None,
    params: dict,
    batch: Batch,
    temperature: float = 1.0,
    microbatches: int = 1,
) -> tuple[jax.Array, jax.Array]:
    """`token_logprobs` over `microbatches` slices of the rows in turn: the [N, L, vocab] logits of a
    whole batch of rollouts (tens of GB at a 49k vocabulary) are never alive at once."""
    if microbatches == 1:
        return token_logprobs(model_cfg, sharder, params, batch, temperature)
    split = split_microbatches(batch, microbatches)
    target, entropy = jax.lax.map(
        lambda micro: token_logprobs(model_cfg, sharder, params, micro, temperature), split
    )
    return target.reshape(-1, target.shape[-1]), entropy.reshape(-1, entropy.shape[-1])


def policy_loss_sums(
    logp: jax.Array, batch: Batch, cfg: LossConfig
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """(summed token objective to minimise, per-batch sums). The caller divides by the response tokens.

    Without `old_logp` in the batch (one update per batch of rollouts: the policy that sampled is the
    one being updated) the ratio is exp(logp - stop_gradient(logp)) = 1 with the policy gradient's
    derivative, and no forward pass is spent on the old log-probabilities. Without `ref_logp` there is
    no KL term."""
    mask = batch["response_mask"].astype(jnp.float32)
    advantages = batch["advantages"][:, None]
    old_logp = batch["old_logp"] if "old_logp" in batch else jax.lax.stop_gradient(logp)
    ratio = jnp.exp(logp - old_logp)
    clipped = jnp.clip(ratio, 1.0 - cfg.clip_low, 1.0 + cfg.clip_high)
    surrogate = jnp.minimum(ratio * advantages, clipped * advantages)
    objective = pg_loss = (-surrogate * mask).sum()
    was_clipped = (ratio * advantages != surrogate) & (mask > 0)
    sums = {
        "pg_loss": pg_loss,
        "clipped": was_clipped.astype(jnp.float32).sum(),
        "tokens": mask.sum(),
    }
    if "ref_logp" in batch:
        log_ratio_ref = batch["ref_logp"] - logp
        kl = jnp.exp(log_ratio_ref) - log_ratio_ref - 1.0
        objective = objective + cfg.kl_coef * (kl * mask).sum()
        sums["kl"] = (kl * mask).sum()
    return objective, sums


def reference_params(state: TrainState, initial: dict | None) -> dict:
    """The KL reference's parameters: with LoRA the frozen base with zero adapters (the model before
    any adapter trained, at no extra memory beyond the zeros), else `initial`, a copy of the
    parameters RL started from (the loop keeps it only when `kl_coef` > 0)."""
    if state.frozen is not None:
        return lora.combine(state.frozen, jax.tree.map(jnp.zeros_like, state.params))
    if initial is None:
        raise ValueError("a KL reference without LoRA needs the starting parameters")
    return initial


def make_update(
    model_cfg: LlamaConfig,
    sharder: Sharder | None,
    tx: optax.GradientTransformation,
    cfg: LossConfig,
    microbatches: int = 1,
) -> Callable[[TrainState, Batch], tuple[TrainState, dict[str, jax.Array]]]:
    """update(state, batch) -> (state, metrics): one optimizer step on the GRPO objective, its gradient
    summed over `microbatches` slices of the rows. Under LoRA only the adapters are differentiated.
    `state.step` is not advanced: one RL step may hold several updates, and the loop sets the step it
    has finished."""

    def objective(params, frozen, batch):
        model_params = params if frozen is None else lora.combine(frozen, params)
        logp, entropy = token_logprobs(model_cfg, sharder, model_params, batch, cfg.temperature)
        objective, sums = policy_loss_sums(logp, batch, cfg)
        mask = batch["response_mask"].astype(jnp.float32)
        return objective, sums | {"entropy": jax.lax.stop_gradient(entropy * mask).sum()}

    grad_fn = jax.grad(objective, has_aux=True)

    def update(state: TrainState, batch: Batch) -> tuple[TrainState, dict[str, jax.Array]]:
        grads, sums = accumulate_gradients(grad_fn, state.params, state.frozen, batch, microbatches)
        tokens = jnp.maximum(sums["tokens"], 1.0)
        grads = jax.tree.map(lambda g: g / tokens, grads)
        grad_norm = optax.tree.norm(grads)
        finite = jnp.isfinite(grad_norm)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)  # noqa: E731
        new_state = state.replace(
            params=keep(params, state.params), opt_state=keep(opt_state, state.opt_state)
        )
        metrics = {
            "pg_loss": sums["pg_loss"] / tokens,
            "entropy": sums["entropy"] / tokens,  # of the policy before this update
            "clip_fraction": sums["clipped"] / tokens,
            "grad_norm": grad_norm,
            "finite": finite.astype(jnp.float32),
        }
        if "kl" in sums:
            metrics["kl"] = sums["kl"] / tokens
        return new_state, metrics

    return update
