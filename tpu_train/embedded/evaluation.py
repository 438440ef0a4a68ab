"""Steps 3 and 6 of the embedded default: sample programs from a checkpoint, run them, grade them.

Two sets, both PoT (greedy decoding in the model's prompt format), scored by
`tpu_train.evaluation.model_eval`:
    heldout_variants  new numbers for problems the model trains on (gold: the variant's executed answer)
    gsm8k             the first N GSM8K test problems (gold: the benchmark's answer)
Per-item JSONL, the accuracy table (Markdown), a chart and summary.json land in `out`; an `out` that
already holds a summary for the same checkpoint step is reused (a rerun does not sample again).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path

from tpu_train import checkpoint
from tpu_train.data.prompts import read_format
from tpu_train.data.records import ProgramRecord
from tpu_train.evaluation import benchmarks, model_eval, pipeline, scoring
from tpu_train.sampling.loading import load_for_sampling
from tpu_train.sampling.sampler import Sampler
from tpu_train.sampling.sampling_params import SamplingParams

HELDOUT = "heldout_variants"


def records(heldout: Sequence[ProgramRecord], gsm8k_items: int) -> list[benchmarks.Record]:
    """The evaluation items: the held-out variants, then the first `gsm8k_items` GSM8K test problems."""
    items = [
        benchmarks.Record(r.id, HELDOUT, r.original_problem, str(r.gen_answer), "number")
        for r in heldout
    ]
    return items + list(benchmarks.load("gsm8k"))[:gsm8k_items]


def evaluate(
    workdir: Path,
    out: Path,
    items: Sequence[benchmarks.Record],
    max_new_tokens: int,
    step: int | None = None,
    batch_size: int = 16,
) -> list[scoring.TableRow]:
    """Samples from checkpoint `step` (default: the latest) of `workdir`, executes and grades `items`;
    writes out/{items.jsonl, table.md, chart.png, summary.json}. Returns the table rows."""
    step = checkpoint.latest_step(workdir) if step is None else step
    summary_path = out / "summary.json"
    if summary_path.exists():
        summary = json.loads(summary_path.read_text())
        if summary.get("step") == step and summary.get("items") == len(items):
            print(f"      reusing {out} (step {step})")
            return [scoring.TableRow(**row) for row in summary["rows"]]
    fmt = read_format(workdir)
    model, tokenizer, eos_ids = load_for_sampling(
        workdir=workdir, step=step, compute_dtype="float32"
    )
    sampler = Sampler(model, tokenizer=tokenizer, eos_ids=eos_ids, batch_size=batch_size)
    params = SamplingParams(max_new_tokens=max_new_tokens, stop=fmt.stop)
    started = time.perf_counter()

    def generate(prompts: list[str]) -> list[str]:
        completions = sampler.generate(prompts, params, progress=True)
        tokens = sum(len(c.tokens) for c in completions)
        seconds = time.perf_counter() - started
        print(
            f"      sampled {len(prompts)} programs, {tokens} tokens in {seconds:.0f}s "
            f"({tokens / seconds:.0f} tokens/s); running them in the sandbox",
            flush=True,
        )
        return [(c.text or "").strip() for c in completions]

    print(
        f"      step {step}: sampling {len(items)} programs ({fmt.name} prompt format)", flush=True
    )
    graded, meta = model_eval.evaluate_model(generate, items, "pot", prompt_format=fmt)
    rows = pipeline.write_outputs(graded, meta, str(out))
    summary = json.loads(summary_path.read_text())
    summary.update(step=step, items=len(items), prompt_format=fmt.name)
    summary_path.write_text(json.dumps(summary, indent=2))
    return rows
