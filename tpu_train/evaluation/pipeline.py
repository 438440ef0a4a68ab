"""Scoring model outputs produced anywhere: the engine behind ``python -m tpu_train.evaluate``.

Input lines are ``{"id", "dataset", "output", "mode": "pot"|"cot"}``. PoT outputs are run in
the sandbox and graded on the answer the program produced; CoT answers are extracted from the
text. Every item is graded in ``strict`` and ``compat`` mode and written out with its
provenance (answer source, verdict, isolation level).
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
from collections.abc import Callable, Sequence

from etils import epath

from tpu_train import jsonl
from tpu_train.evaluation import benchmarks, extract, grader, scoring
from tpu_train.evaluation.executor import Executor, ExecutorConfig


class InputError(jsonl.JsonlError):
    """A predictions or programs file line is malformed (message names file, line, field)."""


@dataclasses.dataclass(frozen=True)
class Prediction:
    id: str
    dataset: str
    output: str
    mode: str


def read_jsonl(path: str, required: dict[str, type]) -> list[tuple[str, dict]]:
    """("file:line", row) for each line of a JSONL file, checking that each row has the ``required``
    fields and types."""
    rows = []
    for where, row in jsonl.objects(path, InputError):
        for field, kind in required.items():
            if field not in row:
                raise InputError(f"{where}: missing field {field!r}")
            if not isinstance(row[field], kind):
                raise InputError(
                    f"{where}: field {field!r} must be {kind.__name__}, "
                    f"got {type(row[field]).__name__}"
                )
        rows.append((where, row))
    return rows


def read_predictions(path: str) -> list[Prediction]:
    """Predictions of a JSONL file; two lines for one benchmark item are refused (each item is scored
    once, so that a copied right answer cannot inflate the accuracy)."""
    predictions = []
    first_line: dict[tuple[str, str], str] = {}
    for where, row in read_jsonl(path, {"id": str, "dataset": str, "output": str, "mode": str}):
        if row["mode"] not in ("pot", "cot"):
            raise InputError(f"{where}: field 'mode' must be 'pot' or 'cot'")
        if row["dataset"] not in benchmarks.DATASETS:
            raise InputError(
                f"{where}: field 'dataset' {row['dataset']!r} is not one of {benchmarks.DATASETS}"
            )
        key = (row["dataset"], row["id"].removeprefix(row["dataset"] + "/"))
        if key in first_line:
            raise InputError(
                f"{where}: a second prediction for {row['dataset']} item {row['id']!r} "
                f"(the first is on line {first_line[key].rsplit(':', 1)[1]}); give one prediction "
                "per item"
            )
        first_line[key] = where
        predictions.append(Prediction(row["id"], row["dataset"], row["output"], row["mode"]))
    return predictions


def _index(datasets: set[str], eval_dir: str) -> dict[str, benchmarks.Record]:
    records = {}
    for dataset in sorted(datasets):
        for record in benchmarks.load(dataset, eval_dir):
            records[record.id] = record
    return records


def evaluate(
    predictions: Sequence[Prediction],
    config: ExecutorConfig | None = None,
    eval_dir: str = benchmarks.EVAL_DIR,
    progress: Callable[[int], None] | None = None,
) -> tuple[list[dict], dict]:
    """Score predictions whose ids name benchmark records; returns (per-item dicts, run metadata)."""
    records = _index({p.dataset for p in predictions}, eval_dir)
    resolved = []
    for prediction in predictions:
        key = prediction.id if prediction.id in records else f"{prediction.dataset}/{prediction.id}"
        if key not in records:
            raise InputError(f"prediction id {prediction.id!r} not found in {prediction.dataset}")
        resolved.append((prediction, records[key]))
    return evaluate_records(resolved, config, progress)


def evaluate_records(
    resolved: Sequence[tuple[Prediction, benchmarks.Record]],
    config: ExecutorConfig | None = None,
    progress: Callable[[int], None] | None = None,
) -> tuple[list[dict], dict]:
    """Score (prediction, record) pairs: PoT outputs run in the sandbox, CoT answers are extracted, and
    every item is graded in both modes. Returns (per-item dicts, run metadata)."""
    pot = [i for i, (p, _) in enumerate(resolved) if p.mode == "pot"]
    executions: dict[int, dict] = {}
    meta = {"isolation_level": None, "layers": []}
    if pot:
        with Executor(config or ExecutorConfig()) as executor:
            meta = {"isolation_level": executor.isolation_level, "layers": list(executor.layers)}
            programs = [extract.pot_program(resolved[i][0].output) for i in pot]
            outcomes = executor.run(programs, progress=progress)
        for index, outcome in zip(pot, outcomes, strict=True):
            executions[index] = outcome.to_json()
    items = []
    for index, (prediction, record) in enumerate(resolved):
        item = {"id": record.id, "dataset": record.dataset, "mode": prediction.mode}
        if prediction.mode == "pot":
            run = executions[index]
            item |= {
                "answer": run["answer"],
                "answer_source": run["answer_source"],
                "verdict": run["verdict"],
                "error_type": run["error_type"],
            }
        else:
            answer = extract.extract_cot_answer(prediction.output, record.answer_type)
            item |= {"answer": answer, "answer_source": "cot" if answer else None}
            # compat grades MAmmoTH's extraction, which falls back to the last number.
            compat_answer = extract.extract_cot_answer(
                prediction.output, record.answer_type, last_number_fallback=True
            )
            if compat_answer != answer:
                item["compat_answer"] = compat_answer
            if progress is not None:
                progress(1)
        item |= {"gold": record.gold, "answer_type": record.answer_type}
        items.append(item)
    for mode in grader.MODES:
        requests = [
            grader.GradeRequest(
                item.get("compat_answer", item["answer"]) if mode == "compat" else item["answer"],
                rec.gold,
                rec.answer_type,
                rec.options,
                False,
                rec.dataset,
            )
            for item, (_, rec) in zip(items, resolved, strict=True)
        ]
        for item, verdict in zip(items, grader.grade_many(requests, mode=mode), strict=True):
            item[mode] = verdict
    return items, meta


def write_outputs(
    items: Sequence[dict], meta: dict, out_dir: str | os.PathLike
) -> list[scoring.TableRow]:
    """Write items.jsonl, table.md, chart.png and summary.json into ``out_dir`` (local or gs://)."""
    out = epath.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    level = meta["isolation_level"]
    (out / "items.jsonl").write_text(
        "".join(json.dumps(item | {"isolation_level": level}) + "\n" for item in items)
    )
    rows = scoring.accuracy_table(items)
    (out / "table.md").write_text(scoring.markdown_table(rows))
    scoring.write_chart(rows, out / "chart.png")
    verdicts = collections.Counter(i.get("verdict", "cot") for i in items)
    summary = meta | {"rows": [dataclasses.asdict(r) for r in rows], "verdicts": dict(verdicts)}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return rows
