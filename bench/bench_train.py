"""Training throughput: our jitted train step against transformers + torch AdamW, side by side.

    python bench/bench_train.py [--repeats=3] [--steps=2] [--markdown]

Both sides train the same Llama shape (hidden 512, 8 layers, 8 heads, MLP 1376, vocab 32000: about 58M
parameters) on the same batch (8 x 512 tokens) with AdamW, in float32:

* ours: `tpu_train.training.step.make_train_step` (the step the trainer runs) under `jax.jit`, layers
  unrolled as on CPU by default, with the
  state donated, compute dtype float32;
* torch: `transformers.LlamaForCausalLM` (eager, SDPA attention) + `torch.optim.AdamW`, float32;
* torch bf16: the same under `torch.autocast("cpu", bfloat16)`, reported beside it (oneDNN uses the
  CPU's bf16 matrix units; XLA:CPU has no fast bf16 matmul, so this is not the like-for-like figure).

Each side runs in its own process, and the processes alternate (ours, torch, torch bf16, ours, ...) so a
burst of load from other jobs hits every side alike; each side reports its best step (and the median).
Separate processes because a user runs one framework at a time, and because sharing a process slowed our
step (327 tokens/s interleaved with torch against 452-472 alone; a likely cause, not measured, is torch's
OpenMP threads still spinning after each torch step). MFU uses the FLOP formula of
`LlamaConfig.flops_per_token` against the float32 peak of a large jitted matmul measured
in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax
import jax.numpy as jnp
import numpy as np
import optax

from tpu_train.model.config import LlamaConfig
from tpu_train.model.params import canonical_params, init_model
from tpu_train.training import metrics
from tpu_train.training.step import TrainState, make_train_step

SHAPE = dict(
    vocab_size=32_000,
    hidden_size=512,
    intermediate_size=1376,
    num_layers=8,
    num_heads=8,
    num_kv_heads=8,
    max_seq_len=512,
)
LR, BETAS, EPS, WEIGHT_DECAY = 1e-4, (0.9, 0.95), 1e-8, 0.0


def model_config(remat: str = "none") -> LlamaConfig:
    # Unrolled layers, as configs/default.py runs on CPU: 452/472 tok/s against 440/455 scanned here
    # (XLA:CPU's scan zero-fills and copies stacked per-layer buffers each step).
    return LlamaConfig(**SHAPE, compute_dtype="float32", remat_policy=remat, scan_layers=False)


def make_batch(batch: int, seq: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    tokens = rng.integers(3, SHAPE["vocab_size"], size=(batch, seq + 1), dtype=np.int32)
    return {
        "decoder_input_tokens": tokens[:, :-1],
        "decoder_target_tokens": tokens[:, 1:],
        "decoder_loss_weights": np.ones((batch, seq), np.int32),
        "decoder_segment_ids": np.ones((batch, seq), np.int32),
        "decoder_positions": np.broadcast_to(np.arange(seq, dtype=np.int32), (batch, seq)).copy(),
    }


class OursRunner:
    """Our train step, jitted with the state donated (as the trainer runs it)."""

    def __init__(self, cfg: LlamaConfig, batch: dict[str, np.ndarray]):
        tx = optax.adamw(LR, b1=BETAS[0], b2=BETAS[1], eps=EPS, weight_decay=WEIGHT_DECAY)
        params = canonical_params(init_model(cfg, seed=0))
        self.state = TrainState(
            step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params)
        )
        self.batch = {k: jnp.asarray(v) for k, v in batch.items()}
        self.step = jax.jit(make_train_step(cfg, None, tx), donate_argnums=(0,))
        start = time.perf_counter()
        self.compiled = self.step.lower(self.state, self.batch).compile()
        self.compile_s = time.perf_counter() - start
        self.loss = float("nan")

    def __call__(self) -> float:
        start = time.perf_counter()
        self.state, out = self.compiled(self.state, self.batch)
        self.loss = float(out["loss"])  # blocks until the step is done
        return time.perf_counter() - start


class TorchRunner:
    """transformers LlamaForCausalLM + torch AdamW, eager; optional bf16 autocast."""

    def __init__(self, batch: dict[str, np.ndarray], bf16: bool):
        import torch
        from transformers import LlamaConfig as HFConfig
        from transformers import LlamaForCausalLM

        torch.manual_seed(0)
        config = HFConfig(
            vocab_size=SHAPE["vocab_size"],
            hidden_size=SHAPE["hidden_size"],
            intermediate_size=SHAPE["intermediate_size"],
            num_hidden_layers=SHAPE["num_layers"],
            num_attention_heads=SHAPE["num_heads"],
            num_key_value_heads=SHAPE["num_kv_heads"],
            max_position_embeddings=SHAPE["max_seq_len"],
            tie_word_embeddings=False,
        )
        self.torch, self.bf16 = torch, bf16
        self.model = LlamaForCausalLM(config).to(torch.float32).train()
        self.opt = torch.optim.AdamW(
            self.model.parameters(), lr=LR, betas=BETAS, eps=EPS, weight_decay=WEIGHT_DECAY
        )
        self.inputs = torch.from_numpy(batch["decoder_input_tokens"].astype(np.int64))
        self.labels = torch.from_numpy(batch["decoder_target_tokens"].astype(np.int64))
        self.loss = float("nan")

    def _loss(self):
        torch = self.torch
        logits = self.model(input_ids=self.inputs, use_cache=False).logits
        return torch.nn.functional.cross_entropy(
            logits.float().reshape(-1, logits.shape[-1]), self.labels.reshape(-1)
        )

    def __call__(self) -> float:
        torch = self.torch
        start = time.perf_counter()
        self.opt.zero_grad(set_to_none=True)
        if self.bf16:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = self._loss()
        else:
            loss = self._loss()
        loss.backward()
        self.opt.step()
        self.loss = float(loss)
        return time.perf_counter() - start


SIDES = ("ours", "torch_fp32", "torch_bf16")


def time_side(side: str, steps: int, batch: int, seq: int, remat: str) -> dict:
    """In this process: builds one side, runs a warm-up step (allocations, kernel selection), times `steps`."""
    data = make_batch(batch, seq)
    if side == "ours":
        runner = OursRunner(model_config(remat), data)
    else:
        runner = TorchRunner(data, bf16=side == "torch_bf16")
    runner()
    times = [runner() for _ in range(steps)]
    return {"times": times, "loss": runner.loss, "compile_s": getattr(runner, "compile_s", None)}


def run(
    repeats: int = 3,
    batch: int = 8,
    seq: int = 512,
    bf16: bool = True,
    remat: str = "none",
    steps_per_process: int = 2,
) -> dict:
    cfg = model_config(remat)
    tokens = batch * seq
    peak = metrics.measure_matmul_peak(n=2048, repeats=5)
    sides = SIDES if bf16 else SIDES[:2]
    found: dict[str, list[dict]] = {side: [] for side in sides}
    for _ in range(repeats):
        for side in sides:
            command = [
                sys.executable,
                os.path.abspath(__file__),
                f"--side={side}",
                f"--remat={remat}",
            ]
            command += [f"--steps={steps_per_process}", f"--batch={batch}", f"--seq={seq}"]
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0:
                raise RuntimeError(f"{side} failed:\n{done.stderr[-2000:]}")
            found[side].append(json.loads(done.stdout.strip().splitlines()[-1]))
    peak = max(peak, metrics.measure_matmul_peak(n=2048, repeats=5))  # best of before and after
    flops_token = cfg.flops_per_token(seq)
    result = {
        "params": cfg.num_params(),
        "tokens_per_step": tokens,
        "flops_per_token": flops_token,
        "peak_flops": peak,
        "compile_s": min(r["compile_s"] for r in found["ours"]),
        "repeats": repeats,
        "steps": repeats * steps_per_process,
        "cpus": os.cpu_count(),
        "load": os.getloadavg()[0],
    }
    for side, runs in found.items():
        times = [t for r in runs for t in r["times"]]
        result[side] = {
            "tokens_per_s": tokens / min(times),
            "median_tokens_per_s": tokens / statistics.median(times),
            "mfu": tokens / min(times) * flops_token / peak,
            "loss": runs[-1]["loss"],
        }
    return result


def markdown_rows(r: dict) -> list[str]:
    """Rows for bench/results.md: | measurement | ours | peer | ratio | notes |."""
    ours, fp32 = r["ours"], r["torch_fp32"]
    rows = [
        f"| training tokens/s, 58M Llama, 8x512, AdamW, float32 | {ours['tokens_per_s']:,.0f} | "
        f"{fp32['tokens_per_s']:,.0f} (transformers + torch) | "
        f"{ours['tokens_per_s'] / fp32['tokens_per_s']:.1f}x | best of {r['steps']} steps in "
        f"{r['repeats']} alternating processes per side; "
        f"medians {ours['median_tokens_per_s']:,.0f} / {fp32['median_tokens_per_s']:,.0f} |",
        f"| training MFU vs measured float32 matmul peak ({r['peak_flops'] / 1e9:,.0f} GFLOP/s) | "
        f"{ours['mfu']:.0%} | {fp32['mfu']:.0%} (torch) | "
        f"{ours['mfu'] / fp32['mfu']:.1f}x | {r['flops_per_token'] / 1e6:,.0f} MFLOP/token "
        "(6N + causal attention) |",
    ]
    if "torch_bf16" in r:
        bf = r["torch_bf16"]
        rows.append(
            f"| training tokens/s: ours float32 vs torch bf16 autocast (not like for like) | "
            f"{ours['tokens_per_s']:,.0f} | {bf['tokens_per_s']:,.0f} (torch bf16) | "
            f"{ours['tokens_per_s'] / bf['tokens_per_s']:.1f}x | torch uses the CPU's bf16 "
            "matrix units; XLA:CPU has none |"
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="processes per side, alternating")
    parser.add_argument("--steps", type=int, default=2, help="timed steps per process")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--remat", default="none")
    parser.add_argument("--no_bf16", action="store_true", help="skip the torch bf16 run")
    parser.add_argument("--markdown", action="store_true", help="print only Markdown table rows")
    parser.add_argument("--side", choices=SIDES, help=argparse.SUPPRESS)  # one side, in a child
    args = parser.parse_args()
    if args.side:
        print(json.dumps(time_side(args.side, args.steps, args.batch, args.seq, args.remat)))
        return
    r = run(args.repeats, args.batch, args.seq, not args.no_bf16, args.remat, args.steps)
    if args.markdown:
        print("\n".join(markdown_rows(r)))
        return
    print(
        f"machine: {r['cpus']} CPUs, load {r['load']:.1f}; {r['params'] / 1e6:.1f}M params, "
        f"{r['tokens_per_step']} tokens/step, peak {r['peak_flops'] / 1e9:.0f} GFLOP/s, "
        f"compile {r['compile_s']:.1f} s"
    )
    base = r["torch_fp32"]["tokens_per_s"]
    for name in ("ours", "torch_fp32", "torch_bf16"):
        if name in r:
            x = r[name]
            print(
                f"{name:<11} {x['tokens_per_s']:>8,.0f} tok/s (median {x['median_tokens_per_s']:,.0f}) "
                f"MFU {x['mfu']:.1%}  {x['tokens_per_s'] / base:.2f}x torch fp32  loss {x['loss']:.3f}"
            )


if __name__ == "__main__":
    main()
