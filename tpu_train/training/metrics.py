"""Throughput, MFU, metric writers and the console progress line.

MFU = achieved FLOP/s / (devices x peak FLOP/s per device), with the model FLOPs of
`LlamaConfig.flops_per_token` (6N + causal attention).
"""

from __future__ import annotations

import json
import time

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath

# Dense bf16 peak FLOP/s per chip (vendor figures), keyed by a fragment of `jax.Device.device_kind`.
PEAK_FLOPS = {
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,
    "TPU v5e": 197e12,
    "TPU v5p": 459e12,
    "TPU v5": 459e12,
    "TPU v6 lite": 918e12,
    "TPU v6e": 918e12,
    "H100": 989e12,
    "H200": 989e12,
    "A100": 312e12,
}


def peak_flops_per_device(configured: float | None = None) -> tuple[float, str]:
    """(peak FLOP/s of one device, where the figure comes from). Explicit config wins; known accelerators
    use their datasheet; otherwise (CPU) a large float32 matmul is timed."""
    if configured:
        return float(configured), "config"
    kind = jax.devices()[0].device_kind
    for fragment, peak in PEAK_FLOPS.items():
        if fragment.lower() in kind.lower():
            return peak, f"datasheet ({kind})"
    return measure_matmul_peak(), f"measured float32 matmul ({kind})"


def measure_matmul_peak(n: int = 2048, repeats: int = 5) -> float:
    """Best-of-`repeats` FLOP/s of one jitted n x n float32 matmul on the default device."""
    a = jnp.ones((n, n), jnp.float32)
    mm = jax.jit(lambda x: x @ x)
    mm(a).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        mm(a).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


class JsonlWriter:
    """One JSON object per logged step in a file (easy to plot and to compare across runs).

    The file is rewritten whole on each write, since Cloud Storage objects cannot be appended to; logging
    happens every few steps, so this stays cheap."""

    def __init__(self, path: epath.PathLike, keep_through: int | None = None):
        """`keep_through`: a resumed run's step; rows logged after it by a run that then died are
        dropped, since the resumed run logs those steps again."""
        self.path = epath.Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lines = self.path.read_text().splitlines(keepends=True) if self.path.exists() else []
        if keep_through is not None:
            self._lines = [
                line for line in self._lines if json.loads(line).get("step", 0) <= keep_through
            ]

    def write(self, step: int, values: dict[str, float]) -> None:
        self._lines.append(
            json.dumps({"step": step, **{k: _plain(v) for k, v in values.items()}}) + "\n"
        )
        self.path.write_text("".join(self._lines))


def _plain(value) -> float | int:
    value = np.asarray(value).item()
    return value


def format_duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def progress_line(
    step: int, total: int, values: dict[str, float], elapsed: float, done_since_start: int
) -> str:
    """`step 120/1000 (12%) loss 2.314 acc 0.41 gnorm 1.2 lr 2.0e-05 1,234 tok/s MFU 31.0% ETA 4m10s`."""
    rate = done_since_start / elapsed if elapsed > 0 else 0.0
    eta = (total - step) / rate if rate > 0 else float("nan")
    eta_text = format_duration(eta) if np.isfinite(eta) else "?"
    return (
        f"step {step}/{total} ({step / total:.0%}) loss {values['loss']:.4f} "
        f"acc {values['token_accuracy']:.3f} gnorm {values['grad_norm']:.3g} lr {values['learning_rate']:.2e} "
        f"{values['tokens_per_s']:,.0f} tok/s MFU {values['mfu']:.1%} ETA {eta_text}"
    )
