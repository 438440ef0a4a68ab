"""The embedded default, end to end: what `./launch.sh` runs on a fresh clone (CPU, shipped data).

    python -m tpu_train.embedded [--workdir=runs/default] [--config=configs/default.py] [--config.k=v ...]

  1. program data   a seeded slice of GSM8K train -> verified programs -> number variants (train / held out)
  2. train          a small Llama on the programs (+ a little GSM8K CoT) with the shipped tokenizer
  3. evaluate       greedy PoT programs for the held-out variants and a GSM8K test slice, run in the
                    sandbox, answers graded (strict and compat)
  4. export         the final checkpoint as a Hugging Face Llama directory
  5. summary        accuracy on held-out variants, learning curve, results chart

Rerunning on the same workdir rebuilds the (deterministic) data, resumes training from its last checkpoint
(nothing to do when it finished) and evaluates again; --fresh starts from an empty workdir.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from absl import app, flags, logging
from ml_collections import config_flags

from tpu_train.embedded import program_data, report
from tpu_train.embedded import tasks as embedded_tasks
from tpu_train.embedded.evaluation import HELDOUT, evaluate
from tpu_train.interop.hf import export_hf
from tpu_train.training.loop import train

_CONFIG = config_flags.DEFINE_config_file(
    "config", "configs/default.py", "the embedded default's config"
)
_WORKDIR = flags.DEFINE_string("workdir", "runs/default", "where data, checkpoints and reports go")
_FRESH = flags.DEFINE_bool("fresh", False, "delete the workdir first instead of reusing it")


class _Steps:
    def __init__(self, total: int):
        self.total, self.start, self.index = total, time.perf_counter(), 0

    def __call__(self, title: str) -> None:
        self.index += 1
        elapsed = time.perf_counter() - self.start
        print(f"\n[{self.index}/{self.total}] {title}  (t={elapsed / 60:.1f} min)", flush=True)


def run(config, workdir: Path) -> dict:
    cfg = config.embedded
    step = _Steps(5)
    step("program data: GSM8K -> verified programs -> number variants")
    data = program_data.build(
        workdir / "data",
        num_problems=cfg.num_problems,
        variants=cfg.variants,
        heldout_per_problem=cfg.heldout_per_problem,
        seed=config.seed,
        max_program_tokens=config.data.feature_lengths["targets"] - 1,  # room for EOS
        tokenizer=config.data.tokenizer,
    )
    heldout_problems = len({r.id.rsplit("/v", 1)[0] for r in data.heldout})
    print(
        f"      {data.kept}/{data.problems} problems with a verified program that fits; {data.train_records} training programs "
        f"(originals + their variants); {len(data.heldout)} held-out variants of {heldout_problems} problems"
    )

    step(f"train: {config.train.num_steps} steps on {config.data.mixture}")
    embedded_tasks.register(workdir / "data", cfg.cot_rate, config.data.tokenizer)
    train(config, str(workdir / "model"))

    step("sample + grade: held-out variants and GSM8K test (PoT, greedy)")
    _, rows = evaluate(
        workdir / "model", workdir / "eval", data.heldout, cfg.gsm8k_test_items, cfg.max_new_tokens
    )

    step("export: Hugging Face Llama directory")
    _, files = export_hf(workdir / "model", workdir / "hf", overwrite=True)
    print(f"      {workdir / 'hf'}: {', '.join(files)}")

    step("summary")
    curve = report.learning_curve(
        workdir / "model" / "metrics.jsonl", workdir / "learning_curve.png"
    )
    by_name = {r.dataset: r for r in rows}
    heldout = by_name.get(HELDOUT)
    final = report.last_metrics(workdir / "model" / "metrics.jsonl")
    print(
        f"      final training loss {final['loss']:.4f}, token accuracy {final['token_accuracy']:.3f}"
    )
    for row in rows:
        print(
            f"      {row.dataset:<18} {row.items:>5} items  strict {row.strict:5.1f}%  compat {row.compat:5.1f}%"
        )
    accuracy = heldout.strict if heldout else float("nan")
    print(
        f"\naccuracy on held-out variants: {accuracy:.1f}% ({heldout.items if heldout else 0} variants "
        "with numbers never trained on, strict grading)"
    )
    print(
        f"learning curve: {curve}\nresults chart: {workdir / 'eval' / 'chart.png'}\n"
        f"per-item results: {workdir / 'eval' / 'items.jsonl'}\nexported model: {workdir / 'hf'}"
    )
    return {"heldout_accuracy": accuracy, "rows": rows}


def main(argv: list[str]) -> None:
    del argv
    logging.set_verbosity(logging.WARNING)
    workdir = Path(_WORKDIR.value)
    if _FRESH.value and workdir.exists():
        shutil.rmtree(workdir)
    run(_CONFIG.value, workdir)


if __name__ == "__main__":
    app.run(main)
