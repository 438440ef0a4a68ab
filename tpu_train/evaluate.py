"""Score model outputs: ``python -m tpu_train.evaluate --predictions=preds.jsonl --out=DIR``.

Lines are ``{"id", "dataset", "output", "mode": "pot"|"cot"}``. PoT outputs run in the sandbox,
CoT answers are extracted; every item is graded in strict and compat mode. Writes
``items.jsonl``, ``table.md``, ``chart.png`` and ``summary.json`` and prints the table.
``--oracle`` instead grades every benchmark gold against itself and reports the quirks.
"""

from __future__ import annotations

import sys

from absl import app, flags

from tpu_train.evaluation import benchmarks, pipeline, scoring
from tpu_train.evaluation.executor import ExecutorConfig

_PREDICTIONS = flags.DEFINE_string("predictions", None, "JSONL of {id, dataset, output, mode}.")
_OUT = flags.DEFINE_string("out", None, "Output directory.")
_WORKERS = flags.DEFINE_integer("workers", 2, "Warm sandbox workers for PoT programs.")
_TIMEOUT = flags.DEFINE_float("timeout", 5.0, "Wall-clock seconds per program.")
_ALLOW_WEAKER = flags.DEFINE_bool("allow_weaker", False, "Run below the minimum isolation.")
_ORACLE = flags.DEFINE_bool("oracle", False, "Run the gold oracle check over eval/ and exit.")


def _oracle() -> int:
    records = [r for d in benchmarks.DATASETS for r in benchmarks.load(d)]
    failed = 0
    for report in scoring.oracle_check(records):
        print(
            f"{report.dataset:<18} {report.correct}/{report.total} correct, "
            f"{len(report.unscorable)} unscorable, {len(report.rejected)} rejected"
        )
        for item_id, reason in report.unscorable:
            print(f"    unscorable {item_id}: {reason}")
        for item_id, gold in report.rejected:
            print(f"    rejected   {item_id}: gold {gold!r}")
        failed += len(report.rejected)
    for quirk, count in sorted(scoring.quirks(records).items()):
        print(f"quirk: {quirk}: {count}")
    return 1 if failed else 0


def main(argv: list[str]) -> None:
    del argv
    if _ORACLE.value:
        sys.exit(_oracle())
    if not _PREDICTIONS.value or not _OUT.value:
        raise app.UsageError("--predictions and --out are required (or pass --oracle)")
    try:
        predictions = pipeline.read_predictions(_PREDICTIONS.value)
    except pipeline.InputError as exc:
        raise app.UsageError(str(exc)) from None
    config = ExecutorConfig(
        workers=_WORKERS.value, timeout_s=_TIMEOUT.value, allow_weaker=_ALLOW_WEAKER.value
    )
    progress = None
    if sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(total=len(predictions), unit="item", file=sys.stderr)
        progress = bar.update
    items, meta = pipeline.evaluate(predictions, config, progress=progress)
    rows = pipeline.write_outputs(items, meta, _OUT.value)
    print(f"isolation: {meta['isolation_level'] or 'n/a (no PoT items)'}")
    print(scoring.text_table(rows), end="")
    print(f"wrote {_OUT.value}/items.jsonl, table.md, chart.png, summary.json")


if __name__ == "__main__":
    app.run(main)
