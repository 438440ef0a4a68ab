"""Rotary position embeddings in the Hugging Face "rotate-half" layout.

The head dimension is split into two halves [x1, x2]; a position p rotates the pair (x1[i], x2[i]) by the
angle p * inv_freq[i]. Using this layout (rather than Meta's interleaved pairs) means Hugging Face q/k
weights load with a reshape and a transpose, never a permutation.

Example:
    >>> import jax.numpy as jnp
    >>> inv = inverse_frequencies(head_dim=8, theta=10_000.0)
    >>> sin, cos = sin_cos(jnp.arange(4)[None, :], inv)
    >>> sin.shape   # [batch, length, head_dim]
    (1, 4, 8)
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from tpu_train.model.config import RopeScaling


def inverse_frequencies(
    head_dim: int, theta: float, scaling: RopeScaling | None = None
) -> np.ndarray:
    """Per-pair rotation speeds, shape [head_dim // 2], float32 (computed in float64 on the host)."""
    inv = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
    if scaling is not None:
        inv = _llama3_scale(inv, scaling)
    return inv.astype(np.float32)


def _llama3_scale(inv: np.ndarray, s: RopeScaling) -> np.ndarray:
    """Llama-3 scaling: slow (long-wavelength) frequencies are divided by `factor`, fast ones are kept,
    and the band in between is blended linearly in 1/wavelength."""
    wavelength = 2 * math.pi / inv
    long_wavelength = s.original_max_position_embeddings / s.low_freq_factor
    short_wavelength = s.original_max_position_embeddings / s.high_freq_factor
    blend = (s.original_max_position_embeddings / wavelength - s.low_freq_factor) / (
        s.high_freq_factor - s.low_freq_factor
    )
    blended = (1 - blend) * inv / s.factor + blend * inv
    return np.where(
        wavelength < short_wavelength,
        inv,
        np.where(wavelength > long_wavelength, inv / s.factor, blended),
    )


def sin_cos(positions: jax.Array, inv_freq: np.ndarray) -> tuple[jax.Array, jax.Array]:
    """positions [B, L] (int) -> (sin, cos), each [B, L, head_dim], float32."""
    angles = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)
    angles = jnp.concatenate([angles, angles], axis=-1)
    return jnp.sin(angles), jnp.cos(angles)


def apply_rope(x: jax.Array, sin: jax.Array, cos: jax.Array) -> jax.Array:
    """x [B, L, heads, head_dim] rotated by (sin, cos) [B, L, head_dim]; math in float32, result in x.dtype."""
    x32 = x.astype(jnp.float32)
    x1, x2 = jnp.split(x32, 2, axis=-1)
    rotated_half = jnp.concatenate([-x2, x1], axis=-1)
    out = x32 * cos[:, :, None, :] + rotated_half * sin[:, :, None, :]
    return out.astype(x.dtype)
