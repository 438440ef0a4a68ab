"""`python -m tpu_train.evaluate --hf_dir=...`: a tiny model over every benchmark, hybrid protocol."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

from tpu_train.evaluation import benchmarks, model_eval

ROOT = Path(__file__).resolve().parents[1]


def test_evaluate_samples_every_benchmark_and_reports(hf_llama_factory, tmp_path):
    hf_dir, _ = hf_llama_factory(vocab_size=4096, max_position_embeddings=1024)
    shutil.copyfile(ROOT / "data" / "tokenizer.model", hf_dir / "tokenizer.model")
    names = [*benchmarks.DATASETS[:-1], benchmarks.GSM8K_PLUS]
    out = tmp_path / "report"
    cmd = [
        sys.executable, "-m", "tpu_train.evaluate", f"--hf_dir={hf_dir}", f"--out={out}",
        f"--benchmarks={','.join(names)}", "--limit=2", "--mode=hybrid", "--max_new_tokens=8",
    ]  # fmt: skip
    run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    items = [json.loads(line) for line in (out / "items.jsonl").read_text().splitlines()]
    assert sorted({i["dataset"] for i in items}) == sorted(names)
    assert len(items) == 2 * len(names)
    # A random model's 8-token programs fail, so hybrid falls back to CoT for them and says so.
    assert all(
        "strict" in i and "compat" in i and i["prompt"].endswith("### Response:") for i in items
    )
    assert any(i.get("fallback") == "cot" for i in items)
    assert "GSM8K+ robustness: x = " in run.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["gsm8k_plus_robustness"]["problems"] >= 1
    assert json.loads((out / "sampling.json").read_text())["mode"] == "hybrid"
    assert (out / "chart.png").stat().st_size > 0 and "| gsm8k |" in (out / "table.md").read_text()


def test_hybrid_falls_back_to_cot_only_where_the_program_fails():
    records = [
        benchmarks.Record("gsm8k/0", "gsm8k", "What is 2+3?", "5", "number"),
        benchmarks.Record("gsm8k/1", "gsm8k", "What is 4+4?", "8", "number"),
    ]

    def generate(
        prompts,
    ):  # a program for the first question, a broken one for the second; CoT says 8
        if prompts[0].rstrip().endswith("### Response:") and "program" in prompts[0]:
            return ["def solution():\n    return 5", "def solution(:"][: len(prompts)]
        return ["The answer is 8."] * len(prompts)

    items, _ = model_eval.evaluate_model(generate, records, "hybrid")
    assert items[0]["strict"] and "fallback" not in items[0]
    assert items[1]["strict"] and items[1]["fallback"] == "cot"
    assert items[1]["pot_verdict"] == "syntax_error"
