"""Steps 3-4 of the embedded default: sample programs from the trained model, run them, grade them.

Two sets, both PoT (the question + " Let's write a program." in the Alpaca template, greedy decoding):
    heldout_variants  new numbers for problems the model trained on (gold: the variant's executed answer)
    gsm8k             the first N GSM8K test problems (gold: the benchmark's answer)
Programs run in the sandboxed executor; answers are graded in strict and compat mode. Per-item JSONL,
the accuracy table (Markdown) and a chart land in W/eval/.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path

from tpu_train.data.prompts import POT_TRIGGER, format_prompt
from tpu_train.data.records import ProgramRecord
from tpu_train.evaluation import benchmarks, grader, scoring
from tpu_train.evaluation.executor import Executor, ExecutorConfig
from tpu_train.sampling.loading import load_for_sampling
from tpu_train.sampling.sampler import Sampler
from tpu_train.sampling.sampling_params import SamplingParams
from tpu_train.sampling.tokenizer import ALPACA_STOP

HELDOUT = "heldout_variants"


def pot_prompt(question: str) -> str:
    """Exactly the prompt the training data used for a PoT example."""
    return format_prompt(question + POT_TRIGGER)


def sample_programs(workdir: Path, questions: Sequence[str], max_new_tokens: int) -> list[str]:
    """Greedy completions of the PoT prompts by the latest checkpoint in `workdir`."""
    model, tokenizer, eos_ids = load_for_sampling(workdir=workdir, compute_dtype="float32")
    sampler = Sampler(model, tokenizer=tokenizer, eos_ids=eos_ids, batch_size=16)
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0, stop=ALPACA_STOP)
    completions = sampler.generate([pot_prompt(q) for q in questions], params)
    return [(c.text or "").strip() for c in completions]


def evaluate(
    workdir: Path,
    out: Path,
    heldout: Sequence[ProgramRecord],
    gsm8k_items: int,
    max_new_tokens: int,
) -> tuple[list[dict], list[scoring.TableRow]]:
    """Samples from the latest checkpoint in `workdir`, executes and grades both sets; writes
    out/{items.jsonl, table.md, chart.png, summary.json}. Returns (items, table rows)."""
    tests = list(benchmarks.load("gsm8k"))[:gsm8k_items]
    cases = [(HELDOUT, r.id, r.original_problem, str(r.gen_answer), "number") for r in heldout]
    cases += [(t.dataset, t.id, t.question, t.gold, t.answer_type) for t in tests]
    print(
        f"      sampling {len(cases)} programs ({len(heldout)} held-out variants, {len(tests)} GSM8K test)"
    )
    programs = sample_programs(workdir, [c[2] for c in cases], max_new_tokens)
    with Executor(ExecutorConfig(workers=2, timeout_s=5.0)) as executor:
        runs = executor.run(programs)
        isolation = executor.isolation_level
    items = []
    for (dataset, item_id, question, gold, answer_type), program, run in zip(
        cases, programs, runs, strict=True
    ):
        item = {
            "id": item_id,
            "dataset": dataset,
            "question": question,
            "program": program,
            "verdict": run.verdict,
            "answer": run.answer,
            "answer_source": run.answer_source,
            "gold": gold,
        }
        for mode in grader.MODES:
            item[mode] = grader.grade(run.answer, gold, answer_type, mode=mode, dataset=dataset)
        items.append(item)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "items.jsonl", "w") as f:
        for item in items:
            f.write(json.dumps(item | {"isolation_level": isolation}) + "\n")
    rows = scoring.accuracy_table(items)
    (out / "table.md").write_text(scoring.markdown_table(rows))
    scoring.write_chart(rows, str(out / "chart.png"))
    by_name = {r.dataset: r for r in rows}
    summary = {
        "accuracy": by_name[HELDOUT].strict if HELDOUT in by_name else None,
        "rows": [dataclasses.asdict(r) for r in rows],
        "isolation_level": isolation,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return items, rows
