"""Decode throughput of `tpu_train.sampling` against transformers `generate`, side by side.

    .venv/bin/python bench/bench_decode.py [--new_tokens=256] [--batches=1,8] [--repeats=3] [--long=1024]

Both decode the same randomly initialised ~58M-parameter Llama (hidden 512, 8 layers, 8 heads, MLP 1376,
vocabulary 32000, float32): transformers' LlamaForCausalLM, saved as safetensors and imported into ours.
Greedy decoding of `new_tokens` tokens after a 32-token prompt, EOS disabled so every row generates all of
them. Each figure is the best of `repeats` timed runs, the two sides alternating, after a warm-up (ours: a
full run, so compilation is excluded; transformers: 8 tokens). A timed run of ours is a whole
`Sampler.generate`, prefill and host work included. Tokens/s counts generated tokens over all rows.
`--torch_threads` sets torch's intra-op threads (default: torch's own choice).

The second table shows the cache at work: the cost per token of the first and the last `window` decode
steps (128, or --long/4 when shorter) of one `--long`-token generation in a single cache. With the cache it stays flat; recomputing the whole
prefix instead would make the late tokens cost about `--long`/128 times as much.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from tpu_train.sampling import Sampler, SamplingParams, load_for_sampling
from tpu_train.sampling import decode as dec

SHAPE = dict(
    vocab_size=32_000,
    hidden_size=512,
    intermediate_size=1376,
    num_hidden_layers=8,
    num_attention_heads=8,
    num_key_value_heads=8,
    max_position_embeddings=4096,
)
PROMPT_LEN = 32


def _best_pair(ours, theirs, theirs_warmup, repeats: int) -> tuple[float, float]:
    """Best wall time of each side over `repeats` runs, alternating them so that a change in machine load
    hits both alike."""
    ours()  # compilation
    theirs_warmup()
    best_ours = best_theirs = float("inf")
    for _ in range(repeats):
        for fn, side in ((ours, "ours"), (theirs, "theirs")):
            start = time.perf_counter()
            fn()
            elapsed = time.perf_counter() - start
            if side == "ours":
                best_ours = min(best_ours, elapsed)
            else:
                best_theirs = min(best_theirs, elapsed)
    return best_ours, best_theirs


def _save_hf(directory: str):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**SHAPE)).to(torch.float32).eval()
    model.generation_config.eos_token_id = None
    model.save_pretrained(directory, safe_serialization=True)
    return model


def _ours_fn(sampler: Sampler, prompts: list[list[int]], new_tokens: int):
    params = SamplingParams(max_new_tokens=new_tokens)

    def run():
        out = sampler.generate(prompts, params)
        assert all(len(c.tokens) == new_tokens for c in out)

    return run


def _hf_fn(model, prompts: list[list[int]], new_tokens: int):
    import torch

    ids = torch.tensor(prompts)

    def run():
        with torch.no_grad():
            out = model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                do_sample=False,
                eos_token_id=None,
                pad_token_id=0,
            )
        assert out.shape[1] == PROMPT_LEN + new_tokens

    return run


def _cache_flatness(model, long: int, window: int) -> tuple[float, float]:
    """Seconds per token of the first and of the last `window` steps of one `long`-token generation."""
    spec = dec.DecodeSpec(
        max_new_tokens=long,
        cache_size=PROMPT_LEN + long,
        eos_ids=(),
        greedy=True,
        top_k=0,
        use_top_p=False,
    )
    prefill = jax.jit(dec.prefill, static_argnames=("spec",))
    decode = jax.jit(dec.decode, static_argnames=("spec",))
    prompts = jnp.asarray(
        np.random.default_rng(0).integers(3, SHAPE["vocab_size"], (1, PROMPT_LEN))
    )
    args = (jax.random.key(0), jnp.float32(1.0), jnp.float32(1.0))

    def timed(state, until):
        start = time.perf_counter()
        state = decode(model, state, jnp.int32(until), *args, spec=spec)
        jax.block_until_ready(state)
        return state, time.perf_counter() - start

    fresh = lambda: prefill(model, prompts, jnp.zeros(1), jnp.ones(1, bool), *args, spec=spec)  # noqa: E731
    state = fresh()
    timed(state, 1 + window)  # compile
    state = fresh()
    state, early = timed(state, 1 + window)
    state, _ = timed(state, long - window)
    state, late = timed(state, long)
    assert int(state.count[0]) == long
    return early / window, late / window


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new_tokens", type=int, default=256)
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--long", type=int, default=1024)
    parser.add_argument("--torch_threads", type=int, default=0)
    args = parser.parse_args()

    import torch

    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)

    with tempfile.TemporaryDirectory() as directory:
        hf_model = _save_hf(directory)
        # The layer layout the Sampler picks by default: unrolled on CPU, scanned elsewhere.
        unrolled = jax.default_backend() == "cpu"
        model, _, _ = load_for_sampling(
            hf_dir=directory, compute_dtype="float32", scan_layers=not unrolled
        )
    params = model.cfg.num_params()
    print(
        f"model: {params / 1e6:.1f}M parameters, float32; jax {jax.__version__} on "
        f"{jax.devices()[0].platform} ({jax.device_count()} device(s)); torch {torch.__version__} "
        f"with {torch.get_num_threads()} threads; {os.cpu_count()} CPUs"
    )
    print(
        f"greedy, {PROMPT_LEN}-token prompts, {args.new_tokens} new tokens, best of {args.repeats}; "
        f"our layers {'unrolled' if unrolled else 'scanned'}\n"
    )
    print(f"{'batch':>5} | {'tpu_train tok/s':>15} | {'transformers tok/s':>18} | {'ratio':>6}")
    print(f"{'-' * 5}-+-{'-' * 15}-+-{'-' * 18}-+-{'-' * 6}")
    rng = np.random.default_rng(1)
    for batch in (int(b) for b in args.batches.split(",")):
        prompts = rng.integers(3, SHAPE["vocab_size"], (batch, PROMPT_LEN)).tolist()
        sampler = Sampler(model, eos_ids=(), batch_size=batch, prompt_bucket=PROMPT_LEN)
        ours, theirs = _best_pair(
            _ours_fn(sampler, prompts, args.new_tokens),
            _hf_fn(hf_model, prompts, args.new_tokens),
            _hf_fn(hf_model, prompts, 8),  # nothing to compile: a short run warms it up
            args.repeats,
        )
        tokens = batch * args.new_tokens
        print(
            f"{batch:>5} | {tokens / ours:>15.1f} | {tokens / theirs:>18.1f} | "
            f"{theirs / ours:>5.1f}x"
        )

    window = min(128, args.long // 4)
    early, late = _cache_flatness(model, args.long, window)
    print(
        f"\nper-token cost, batch 1, one {args.long}-token generation ({PROMPT_LEN}-token prompt):"
    )
    print(f"  {f'steps 2-{window + 1}:':<22} {early * 1e3:.2f} ms/token")
    print(f"  {f'steps {args.long - window + 1}-{args.long}:':<22} {late * 1e3:.2f} ms/token")
    print(f"  {'late / early:':<22} {late / early:.2f}x (1.0x = flat)")


if __name__ == "__main__":
    main()
