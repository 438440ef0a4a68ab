"""Step 3 of the embedded default: sample programs from the trained model, run them, grade them.

Two sets, both PoT (the training prompt format, greedy decoding), scored by
`tpu_train.evaluation.model_eval`:
    heldout_variants  new numbers for problems the model trained on (gold: the variant's executed answer)
    gsm8k             the first N GSM8K test problems (gold: the benchmark's answer)
Per-item JSONL, the accuracy table (Markdown), a chart and summary.json land in `out`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from tpu_train.data.records import ProgramRecord
from tpu_train.evaluation import benchmarks, model_eval, pipeline, scoring
from tpu_train.sampling.loading import load_for_sampling
from tpu_train.sampling.sampler import Sampler
from tpu_train.sampling.sampling_params import SamplingParams
from tpu_train.sampling.tokenizer import ALPACA_STOP

HELDOUT = "heldout_variants"


def evaluate(
    workdir: Path,
    out: Path,
    heldout: Sequence[ProgramRecord],
    gsm8k_items: int,
    max_new_tokens: int,
) -> tuple[list[dict], list[scoring.TableRow]]:
    """Samples from the latest checkpoint in `workdir`, executes and grades both sets; writes
    out/{items.jsonl, table.md, chart.png, summary.json}. Returns (items, table rows)."""
    records = [
        benchmarks.Record(r.id, HELDOUT, r.original_problem, str(r.gen_answer), "number")
        for r in heldout
    ]
    records += benchmarks.load("gsm8k")[:gsm8k_items]
    print(
        f"      sampling {len(records)} programs ({len(heldout)} held-out variants, {gsm8k_items} GSM8K test)"
    )
    model, tokenizer, eos_ids = load_for_sampling(workdir=workdir, compute_dtype="float32")
    sampler = Sampler(model, tokenizer=tokenizer, eos_ids=eos_ids, batch_size=16)
    params = SamplingParams(max_new_tokens=max_new_tokens, stop=ALPACA_STOP)

    def generate(prompts: list[str]) -> list[str]:
        return [(c.text or "").strip() for c in sampler.generate(prompts, params)]

    items, meta = model_eval.evaluate_model(generate, records, "pot")
    rows = pipeline.write_outputs(items, meta, str(out))
    by_name = {r.dataset: r for r in rows}
    summary_path = out / "summary.json"
    summary = json.loads(summary_path.read_text())
    summary["accuracy"] = by_name[HELDOUT].strict if HELDOUT in by_name else None
    summary_path.write_text(json.dumps(summary, indent=2))
    return items, rows
