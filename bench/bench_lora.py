"""LoRA fine-tuning throughput: our jitted LoRA train step against transformers + peft, side by side.

    python bench/bench_lora.py [--repeats=2] [--steps=2] [--batch=4] [--seq=512] [--markdown]

Both sides fine-tune the same Llama shape as SmolLM2-135M (hidden 576, 30 layers, 9 query heads over 3 K/V
heads of width 64, MLP 1536, vocab 49152, tied embeddings, RoPE theta 1e5, RMSNorm eps 1e-5: about 135M
parameters), randomly initialised (nothing is downloaded), on the same batch (4 x 512 tokens) in float32,
with LoRA rank 16, alpha 32, no dropout, on q/k/v/o_proj and gate/up/down_proj, and AdamW (lr 1e-4) over
the adapters only; the base is frozen:

* ours: `tpu_train.training.step.make_train_step` (the step the trainer runs) with `LlamaConfig.lora` set,
  the adapters as `TrainState.params` and the base as `TrainState.frozen` (no weight gradient, no optimizer
  state), under `jax.jit` with the state donated; layers scanned (`scan_layers=True`: for LoRA on CPU 1.5x
  faster than unrolled, see `model_config`);
* peft: `transformers.LlamaForCausalLM` (eager, SDPA attention) wrapped by `peft.get_peft_model`, with
  `torch.optim.AdamW` over the parameters that require grad, float32.

Both count their trainable parameters and the counts must agree (asserted). Each side runs in its own
process and the processes alternate (ours, peft, ours, peft, ...) so a burst of load from other jobs hits
both sides alike; each side reports its best step and the median. Separate processes because a user runs one
framework at a time, and because sharing a process slowed our step in bench_train.py (torch's OpenMP
threads keep spinning after each torch step). Memory is each process's peak resident set
(`getrusage(RUSAGE_SELF).ru_maxrss`), the same measure on both sides; ours includes the peak of XLA's
compilation. Our compiled step's own `memory_analysis()` (arguments + temporaries) is printed beside it.

Allocator: `--malloc=reuse` starts both children with `TPU_TRAIN_MALLOC=reuse` (both import tpu_train,
which then sets glibc's malloc to keep freed memory for the next step, `tpu_train.host_memory`); the
default, `system`, is glibc's own behaviour on both sides, as each library runs out of the box.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax
import jax.numpy as jnp
import numpy as np
import optax

from tpu_train.model.config import LORA_TARGETS, LlamaConfig, LoraConfig
from tpu_train.model.params import canonical_params, init_adapters, init_model
from tpu_train.training.step import TrainState, make_train_step

SHAPE = dict(
    vocab_size=49_152,
    hidden_size=576,
    intermediate_size=1536,
    num_layers=30,
    num_heads=9,
    num_kv_heads=3,
    rope_theta=1e5,
    rms_norm_eps=1e-5,
    tie_embeddings=True,
    max_seq_len=2048,
)
RANK, ALPHA = 16, 32.0
TARGETS = LORA_TARGETS  # q, k, v, o, gate, up, down
LR, BETAS, EPS, WEIGHT_DECAY = 1e-4, (0.9, 0.95), 1e-8, 0.0


def model_config() -> LlamaConfig:
    # Scanned layers: unlike full fine-tuning (bench_train.py, where XLA:CPU's scan zero-fills and copies
    # the stacked per-layer weight gradients each step), LoRA's stacked gradients are tiny, and the
    # 30-layer unrolled step ran 1.5x slower than the scanned one (23.6 s against 15.4 s, 4 x 512 tokens,
    # measured side by side on 2 cores).
    return LlamaConfig(
        **SHAPE,
        compute_dtype="float32",
        scan_layers=True,
        lora=LoraConfig(rank=RANK, alpha=ALPHA, targets=TARGETS),
    )


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


def _max_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


class OursRunner:
    """Our LoRA train step: adapters train, the base is frozen; jitted with the state donated."""

    def __init__(self, cfg: LlamaConfig, batch: dict[str, np.ndarray]):
        tx = optax.adamw(LR, b1=BETAS[0], b2=BETAS[1], eps=EPS, weight_decay=WEIGHT_DECAY)
        base = canonical_params(init_model(cfg.replace(lora=None), seed=0))
        adapters = init_adapters(cfg, seed=0)
        self.trainable = sum(int(x.size) for x in jax.tree.leaves(adapters))
        assert self.trainable == cfg.lora_params(), (self.trainable, cfg.lora_params())
        self.state = TrainState(
            step=jnp.int32(0), params=adapters, opt_state=tx.init(adapters), frozen=base
        )
        self.batch = {k: jnp.asarray(v) for k, v in batch.items()}
        self.step = jax.jit(make_train_step(cfg, None, tx), donate_argnums=(0,))
        start = time.perf_counter()
        self.compiled = self.step.lower(self.state, self.batch).compile()
        self.compile_s = time.perf_counter() - start
        self.xla_bytes = None
        try:
            mem = self.compiled.memory_analysis()
            self.xla_bytes = int(mem.argument_size_in_bytes + mem.temp_size_in_bytes)
        except Exception:  # not every backend reports it
            pass
        self.loss = float("nan")

    def __call__(self) -> float:
        start = time.perf_counter()
        self.state, out = self.compiled(self.state, self.batch)
        jax.block_until_ready(self.state)
        self.loss = float(out["loss"])
        return time.perf_counter() - start


class PeftRunner:
    """transformers LlamaForCausalLM + peft LoRA + torch AdamW over the adapters, eager, float32."""

    def __init__(self, batch: dict[str, np.ndarray]):
        import peft
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
            head_dim=SHAPE["hidden_size"] // SHAPE["num_heads"],
            max_position_embeddings=SHAPE["max_seq_len"],
            rope_parameters={"rope_type": "default", "rope_theta": SHAPE["rope_theta"]},
            rms_norm_eps=SHAPE["rms_norm_eps"],
            tie_word_embeddings=True,
            attn_implementation="sdpa",
        )
        model = LlamaForCausalLM(config).to(torch.float32)
        lora = peft.LoraConfig(
            r=RANK,
            lora_alpha=int(ALPHA),
            lora_dropout=0.0,
            target_modules=list(TARGETS),
            task_type="CAUSAL_LM",
        )
        self.torch = torch
        self.model = peft.get_peft_model(model, lora).train()
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.trainable = sum(p.numel() for p in trainable)
        self.opt = torch.optim.AdamW(
            trainable, lr=LR, betas=BETAS, eps=EPS, weight_decay=WEIGHT_DECAY
        )
        self.inputs = torch.from_numpy(batch["decoder_input_tokens"].astype(np.int64))
        self.labels = torch.from_numpy(batch["decoder_target_tokens"].astype(np.int64))
        self.weights = torch.from_numpy(batch["decoder_loss_weights"].astype(np.float32))
        self.xla_bytes = None
        self.loss = float("nan")

    def _loss(self):
        torch = self.torch
        logits = self.model(input_ids=self.inputs, use_cache=False).logits
        nll = torch.nn.functional.cross_entropy(
            logits.float().reshape(-1, logits.shape[-1]), self.labels.reshape(-1), reduction="none"
        )
        w = self.weights.reshape(-1)
        return (nll * w).sum() / w.sum().clamp(min=1.0)

    def __call__(self) -> float:
        start = time.perf_counter()
        self.opt.zero_grad(set_to_none=True)
        loss = self._loss()
        loss.backward()
        self.opt.step()
        self.loss = float(loss.detach())
        return time.perf_counter() - start


SIDES = ("ours", "peft")
MALLOC = {
    "system": "glibc's default",
    "reuse": "TPU_TRAIN_MALLOC=reuse (tpu_train.host_memory)",
}


def gemm_flops(side: str, tokens: int, repeats: int = 5) -> float:
    """Best-of-`repeats` FLOP/s of one float32 matmul of the step's MLP shape ([tokens, hidden] x
    [hidden, intermediate]) in the side's own library: XLA:CPU's for ours, torch's for peft. The ceiling
    each step's matmuls run under, measured in the same process after its steps."""
    m, k, n = tokens, SHAPE["hidden_size"], SHAPE["intermediate_size"]
    rng = np.random.default_rng(0)
    a, b = rng.random((m, k), np.float32), rng.random((k, n), np.float32)
    if side == "ours":
        x, w = jnp.asarray(a), jnp.asarray(b)
        mm = jax.jit(jnp.matmul)

        def once():
            mm(x, w).block_until_ready()
    else:
        import torch

        x, w = torch.from_numpy(a), torch.from_numpy(b)

        def once():
            torch.matmul(x, w)

    once()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        once()
        best = min(best, time.perf_counter() - start)
    return 2 * m * k * n / best


def time_side(side: str, steps: int, batch: int, seq: int) -> dict:
    """In this process: builds one side, runs a warm-up step (compilation or allocations), times `steps`."""
    data = make_batch(batch, seq)
    runner = OursRunner(model_config(), data) if side == "ours" else PeftRunner(data)
    runner()
    times = [runner() for _ in range(steps)]
    return {
        "times": times,
        "loss": runner.loss,
        "compile_s": getattr(runner, "compile_s", None),
        "trainable": runner.trainable,
        "max_rss": _max_rss_bytes(),
        "xla_bytes": runner.xla_bytes,
        "gemm_flops": gemm_flops(side, batch * seq),
    }


def run(
    repeats: int = 2,
    batch: int = 4,
    seq: int = 512,
    steps_per_process: int = 2,
    malloc: str = "system",
) -> dict:
    cfg = model_config()
    tokens = batch * seq
    found: dict[str, list[dict]] = {side: [] for side in SIDES}
    for _ in range(repeats):
        for side in SIDES:
            command = [sys.executable, os.path.abspath(__file__), f"--side={side}"]
            command += [f"--steps={steps_per_process}", f"--batch={batch}", f"--seq={seq}"]
            env = dict(os.environ, TPU_TRAIN_MALLOC=malloc)
            done = subprocess.run(command, capture_output=True, text=True, env=env)
            if done.returncode != 0:
                raise RuntimeError(f"{side} failed:\n{done.stderr[-2000:]}")
            found[side].append(json.loads(done.stdout.strip().splitlines()[-1]))
    trainable = {side: {r["trainable"] for r in runs} for side, runs in found.items()}
    assert trainable["ours"] == trainable["peft"] == {cfg.lora_params()}, (
        trainable,
        cfg.lora_params(),
    )
    result = {
        "params": cfg.num_params(),
        "trainable": cfg.lora_params(),
        "tokens_per_step": tokens,
        "batch": batch,
        "seq": seq,
        "compile_s": min(r["compile_s"] for r in found["ours"]),
        "xla_bytes": found["ours"][0]["xla_bytes"],
        "repeats": repeats,
        "steps": repeats * steps_per_process,
        "malloc": malloc,
        "cpus": os.cpu_count(),
        "load": os.getloadavg()[0],
    }
    for side, runs in found.items():
        times = [t for r in runs for t in r["times"]]
        result[side] = {
            "tokens_per_s": tokens / min(times),
            "median_tokens_per_s": tokens / statistics.median(times),
            "max_rss": max(r["max_rss"] for r in runs),
            "loss": runs[-1]["loss"],
            "gemm_flops": max(r["gemm_flops"] for r in runs),
        }
    return result


def markdown_rows(r: dict) -> list[str]:
    """Rows for bench/results.md: | measurement | ours | peer | ratio | notes |."""
    ours, peer = r["ours"], r["peft"]
    gib = 2**30
    xla = ""
    if r["xla_bytes"] is not None:
        xla = (
            " (our compiled step's memory_analysis, arguments + temporaries: "
            f"{r['xla_bytes'] / gib:.1f} GiB)"
        )
    return [
        f"| LoRA fine-tune tokens/s vs peft, SmolLM2-135M shape, rank {RANK}, "
        f"{r['batch']}x{r['seq']}, "
        f"float32 | {ours['tokens_per_s']:,.0f} | "
        f"{peer['tokens_per_s']:,.0f} (transformers + peft) | "
        f"{ours['tokens_per_s'] / peer['tokens_per_s']:.1f}x | target at least 1.2x; best of "
        f"{r['steps']} steps in {r['repeats']} alternating processes per side; medians "
        f"{ours['median_tokens_per_s']:,.0f} / {peer['median_tokens_per_s']:,.0f}; max RSS (peak "
        f"resident memory of the process) ours {ours['max_rss'] / gib:.1f} GiB / peft "
        f"{peer['max_rss'] / gib:.1f} GiB{xla}; trainable params {r['trainable']:,} on both; "
        f"malloc on both sides: {MALLOC[r['malloc']]} |",
        f"| float32 matmul GFLOP/s of the LoRA step's MLP shape ({r['tokens_per_step']}x"
        f"{SHAPE['hidden_size']}x{SHAPE['intermediate_size']}), XLA:CPU vs torch | "
        f"{ours['gemm_flops'] / 1e9:,.0f} | {peer['gemm_flops'] / 1e9:,.0f} (torch) | "
        f"{ours['gemm_flops'] / peer['gemm_flops']:.2f}x | the ceiling of each side's step: "
        "measured in each benchmark process after its steps, best of 5 |",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=2, help="processes per side, alternating")
    parser.add_argument("--steps", type=int, default=2, help="timed steps per process")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--markdown", action="store_true", help="print only Markdown table rows")
    parser.add_argument(
        "--malloc",
        choices=sorted(MALLOC),
        default="system",
        help="both sides' allocator: glibc's default, or TPU_TRAIN_MALLOC=reuse",
    )
    parser.add_argument("--side", choices=SIDES, help=argparse.SUPPRESS)  # one side, in a child
    args = parser.parse_args()
    if args.side:
        print(json.dumps(time_side(args.side, args.steps, args.batch, args.seq)))
        return
    r = run(args.repeats, args.batch, args.seq, args.steps, args.malloc)
    if args.markdown:
        print("\n".join(markdown_rows(r)))
        return
    xla = f"{r['xla_bytes'] / 2**30:.2f} GiB" if r["xla_bytes"] is not None else "n/a"
    print(
        f"machine: {r['cpus']} CPUs, load {r['load']:.1f}; {r['params'] / 1e6:.1f}M params, "
        f"{r['trainable']:,} trainable, {r['tokens_per_step']} tokens/step, compile "
        f"{r['compile_s']:.1f} s, our step's memory_analysis (arguments + temporaries) {xla}"
    )
    base = r["peft"]["tokens_per_s"]
    for name in SIDES:
        x = r[name]
        print(
            f"{name:<5} {x['tokens_per_s']:>8,.0f} tok/s (median {x['median_tokens_per_s']:,.0f})  "
            f"{x['tokens_per_s'] / base:.2f}x peft  max RSS {x['max_rss'] / 2**30:.2f} GiB  "
            f"loss {x['loss']:.3f}  matmul {x['gemm_flops'] / 1e9:,.0f} GFLOP/s"
        )


if __name__ == "__main__":
    main()
