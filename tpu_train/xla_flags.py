"""XLA:CPU defaults that tpu_train sets before JAX starts (no effect on TPU or GPU backends).

XLA reads `XLA_FLAGS` once, when the first backend is created, so `tpu_train/__init__.py` calls
`add_cpu_defaults()` on import, before any module of the package touches JAX. A flag the user already
put in `XLA_FLAGS` is left as given.

- `--xla_cpu_experimental_ynn_fusion_type=individual_dot`: hand XLA:CPU's dots to YNNPACK one by one,
  without the elementwise and reduce operations around them. Left to fuse them, YNNPACK took the softmax
  backward of attention into the score-gradient matmul and ran that fusion at about 11 GFLOP/s instead of
  the 75-170 of the plain matmuls in the same step: 1.6 s of a 14 s step (58M Llama, 8 x 512 tokens, see bench/bench_train.py).
  Measured side by side in alternating processes: 326 / 345 / 359 tokens/s with the flag against
  290 / 329 / 343 without.
"""

from __future__ import annotations

import os

CPU_DEFAULTS = {"--xla_cpu_experimental_ynn_fusion_type": "individual_dot"}


def add_cpu_defaults(environ: os._Environ | dict[str, str] = os.environ) -> str:
    """Appends each default flag to `environ["XLA_FLAGS"]` unless it is already there; returns the value."""
    flags = environ.get("XLA_FLAGS", "")
    present = {item.split("=", 1)[0] for item in flags.split()}
    extra = [f"{name}={value}" for name, value in CPU_DEFAULTS.items() if name not in present]
    environ["XLA_FLAGS"] = " ".join([flags, *extra]).strip()
    return environ["XLA_FLAGS"]
