"""Learning-rate schedules and the AdamW optimizer (with clipping and a weight-decay mask).

Example:
    >>> import ml_collections
    >>> cfg = ml_collections.ConfigDict(dict(
    ...     learning_rate=2e-5, schedule="cosine", warmup_fraction=0.03, warmup_steps=0, end_lr_fraction=0.0,
    ...     b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.0, weight_decay_exclude=("norm",), clip_norm=1.0))
    >>> lr = learning_rate_schedule(cfg, num_steps=100)
    >>> [round(float(lr(s)), 9) for s in (0, 3, 100)]   # 3 warm-up steps, then cosine to 0
    [0.0, 2e-05, 0.0]
"""

from __future__ import annotations

import jax
import ml_collections
import optax

SCHEDULES = ("cosine", "linear", "constant")


def learning_rate_schedule(cfg: ml_collections.ConfigDict, num_steps: int) -> optax.Schedule:
    """Linear warm-up from 0, then `cfg.schedule` down to `end_lr_fraction * learning_rate` at num_steps.

    Warm-up length: `warmup_steps` if set (> 0), else `warmup_fraction * num_steps` (the published recipe
    uses 3%)."""
    if cfg.schedule not in SCHEDULES:
        raise ValueError(f"optimizer.schedule={cfg.schedule!r}; choose one of {SCHEDULES}")
    peak = cfg.learning_rate
    warmup = cfg.warmup_steps or round(cfg.warmup_fraction * num_steps)
    warmup = min(max(warmup, 0), num_steps)
    decay_steps = max(num_steps - warmup, 1)
    end = cfg.end_lr_fraction * peak
    if cfg.schedule == "cosine":
        decay = optax.cosine_decay_schedule(peak, decay_steps, alpha=cfg.end_lr_fraction)
    elif cfg.schedule == "linear":
        decay = optax.linear_schedule(peak, end, decay_steps)
    else:
        decay = optax.constant_schedule(peak)
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), decay], [warmup])


def weight_decay_mask(params: dict, exclude: tuple[str, ...]) -> dict:
    """True for parameters that decay: those whose path names none of `exclude` (e.g. "norm", "embed")."""

    def decays(path, _) -> bool:
        names = "/".join(str(getattr(k, "key", k)) for k in path)
        return not any(word in names for word in exclude)

    return jax.tree_util.tree_map_with_path(decays, params)


def make_optimizer(cfg: ml_collections.ConfigDict, num_steps: int) -> optax.GradientTransformation:
    """Global-norm clipping (if clip_norm > 0) followed by AdamW on the schedule."""
    adamw = optax.adamw(
        learning_rate_schedule(cfg, num_steps),
        b1=cfg.b1,
        b2=cfg.b2,
        eps=cfg.eps,
        weight_decay=cfg.weight_decay,
        mask=lambda params: weight_decay_mask(params, tuple(cfg.weight_decay_exclude)),
    )
    if cfg.clip_norm and cfg.clip_norm > 0:
        return optax.chain(optax.clip_by_global_norm(cfg.clip_norm), adamw)
    return adamw
