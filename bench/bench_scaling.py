"""Scaling on 8 fake CPU devices: FSDP memory per device and compile time against depth.

    python bench/bench_scaling.py [--repeats=2] [--markdown]

* per-device bytes of real parameters + AdamW state created sharded with fsdp=8, against unsharded
  (target: at most 1/6);
* seconds to compile the train step with layers scanned, 32 layers against 2 (a small width so it is quick;
  target: at most 1.5x), best of `repeats` interleaved compilations.
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tpu_train.training import scaling


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--markdown", action="store_true", help="print only Markdown table rows")
    args = parser.parse_args()
    mem = scaling.fsdp_state_bytes(mesh_shape={"fsdp": 8})
    shallow, deep = scaling.compile_ratio(deep=32, shallow=2, repeats=args.repeats)
    per, whole = mem["per_device"], mem["unsharded"]
    rows = [
        f"| params + AdamW state per device, fsdp=8 on 8 fake CPU devices | {per / 2**20:.2f} MiB | "
        f"{whole / 2**20:.2f} MiB (unsharded) | {per / whole:.2f}x | target at most 0.17x (1/6) |",
        f"| train-step compile time, scan over 32 layers vs 2 layers | {deep:.1f} s | "
        f"{shallow:.1f} s (2 layers) | {deep / shallow:.1f}x | target at most 1.5x; best of "
        f"{args.repeats} |",
    ]
    if args.markdown:
        print("\n".join(rows))
        return
    print(f"fsdp=8: {per:,} bytes per device of {whole:,} ({per / whole:.3f})")
    print(f"compile: 2 layers {shallow:.2f} s, 32 layers {deep:.2f} s ({deep / shallow:.2f}x)")


if __name__ == "__main__":
    main()
