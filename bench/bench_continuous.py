"""Continuous batching against static batches and transformers `generate`, on GSM8K PoT prompts.

    python bench/bench_continuous.py [--prompts=256] [--slots=8] [--max_new_tokens=256] [--hf_prompts=64] [--rounds=2]

The model is SmolLM2-135M-Instruct (the embedded default's pretrained model, fetched once from the package
registry into data/models/ and imported from its GGUF file), float32. The prompts are the first
`--prompts` GSM8K test questions with the PoT trigger in the model's chat format, exactly as
`python -m tpu_train.evaluate --mode=pot` renders them; greedy decoding, EOS (end of turn) ends a row.

* continuous: `Sampler(batch_size=slots)`: a row that finishes takes the next prompt at once;
* static: `Sampler(batch_size=slots, continuous=False)`: length-sorted batches of `slots` prompts, each
  decoded until its slowest row is done;
* transformers: `LlamaForCausalLM.generate` (loaded from the same GGUF file), length-sorted left-padded
  batches of `slots` prompts, on the first `--hf_prompts` prompts (it is the slowest side).

Tokens/s counts generated tokens (EOS included) over wall time, prefill and host work included, in the
fastest of `--rounds` timed runs per schedule, alternating between the schedules, after a
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


def decode_steps(prompt_lengths: list[int], generated: list[int], slots: int) -> dict[str, int]:
    """Decode steps each schedule needs for these outputs (the first token of each prompt comes from its
    prefill), ignoring every cost but the step count: their ratio is what continuous batching can gain
    at most when a step costs the same in both.

    static: length-sorted batches, each decoded until its longest output is done.
    continuous: `slots` rows, a prompt admitted (in input order) as soon as a row frees up.

    >>> decode_steps([1, 1, 1, 1], [10, 1, 1, 10], slots=2)
    {'static': 18, 'continuous': 9}
    """
    order = sorted(range(len(generated)), key=lambda i: prompt_lengths[i])
    static = sum(
        max(generated[i] for i in order[start : start + slots]) - 1
        for start in range(0, len(order), slots)
    )
    ends = [0] * min(slots, len(generated))  # the step at which each row frees up
    for n in generated:
        row = min(range(len(ends)), key=ends.__getitem__)
        ends[row] += n - 1
    return {"static": static, "continuous": max(ends)}


def _warmup_prompts(prompts, tokenizer, slots: int, sampler) -> list[str]:
    """`slots` prompts of each padded length: every static batch shape (rows x padded length) and every
    continuous prefill shape of the timed run, and every ring size the continuous ring grows through."""
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
    parser.add_argument(
        "--rounds", type=int, default=2, help="timed runs per schedule, alternating"
    )
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
    # Timed in alternating order (continuous, static, static, continuous, ...): the machine's speed can
    # drift by 2x within an hour, and alternation spreads that drift over both sides. Each side's
    # figure is its fastest round.
    runs: dict[str, list[float]] = {name: [] for name in samplers}
    for round_number in range(args.rounds):
        names = list(samplers) if round_number % 2 == 0 else list(samplers)[::-1]
        for name in names:
            results[name], took = _timed(lambda s=samplers[name]: s.generate(prompts, params))
            runs[name].append(took)
    seconds = {name: min(times) for name, times in runs.items()}
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
        rounds = " / ".join(f"{t:.1f}" for t in runs[name])
        print(
            f"  {name:>10}: {tokens[name]} tokens in {seconds[name]:.1f} s = {rate[name]:.1f} tok/s "
            f"(rounds: {rounds} s)"
        )
    ratio = rate["continuous"] / rate["static"]
    steps = decode_steps([len(tokenizer.encode(p)) for p in prompts], list(lengths), args.slots)
    bound = steps["static"] / steps["continuous"]
    print(
        f"  continuous / static: {ratio:.2f}x (target at least 1.8x); decode steps static "
        f"{steps['static']}, continuous {steps['continuous']}: {bound:.2f}x at most at equal step cost"
    )
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
            f"{lengths.max()}); identical tokens: {same}; best of {args.rounds} alternating rounds "
            f"per side; decode steps static {steps['static']} / continuous {steps['continuous']} "
            f"({bound:.2f}x, the most it can gain at equal step cost); target at least 1.8x"
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
