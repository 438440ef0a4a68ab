"""Scoring: the gold oracle check, per-dataset accuracy tables in both modes, chart output."""

from __future__ import annotations

import collections
import dataclasses
import io
import os
from collections.abc import Sequence

from etils import epath

from tpu_train.evaluation import benchmarks, grader, latex


@dataclasses.dataclass(frozen=True)
class OracleReport:
    """Gold-as-prediction results for one dataset: nothing is dropped, failures are listed."""

    dataset: str
    total: int
    correct: int
    unscorable: tuple[tuple[str, str], ...]  # (id, reason)
    rejected: tuple[tuple[str, str], ...]  # (id, gold) graded wrong against itself

    @property
    def ok(self) -> bool:
        return not self.rejected


def oracle_check(
    records: Sequence[benchmarks.Record], checker: latex.LatexChecker | None = None
) -> list[OracleReport]:
    """Grade every gold against itself in strict mode, per dataset."""
    by_dataset: dict[str, list[benchmarks.Record]] = collections.defaultdict(list)
    for record in records:
        by_dataset[record.dataset].append(record)
    reports = []
    for dataset, items in by_dataset.items():
        unscorable = []
        scorable = []
        for record in items:
            reason = _unscorable_reason(record)
            if reason:
                unscorable.append((record.id, reason))
            else:
                scorable.append(record)
        requests = [
            grader.GradeRequest(r.gold, r.gold, r.answer_type, r.options, dataset=r.dataset)
            for r in scorable
        ]
        verdicts = grader.grade_many(requests, checker=checker)
        rejected = tuple((r.id, r.gold) for r, ok in zip(scorable, verdicts, strict=True) if not ok)
        reports.append(
            OracleReport(dataset, len(items), sum(verdicts), tuple(unscorable), rejected)
        )
    return reports


def _unscorable_reason(record: benchmarks.Record) -> str | None:
    if not record.gold.strip():
        return "no gold answer (MATH solution without \\boxed{})"
    return None


def quirks(records: Sequence[benchmarks.Record]) -> dict[str, int]:
    """Counts of the known data-set quirks, measured rather than assumed."""
    from tpu_train.evaluation import numbers

    counts: collections.Counter = collections.Counter()
    for record in records:
        if record.dataset == "mathematics" and numbers.parse_number(record.gold) is None:
            counts["mathematics: gold is not a plain number (list or expression)"] += 1
        if record.dataset == "mathematics" and record.gold.endswith(".0"):
            counts["mathematics: integer-valued gold written with .0"] += 1
        if record.dataset == "simuleq" and record.question.count("?") >= 2:
            counts["simuleq: question asks two things, one gold"] += 1
        if record.dataset == "numglue" and record.answer_type != "number":
            counts[f"numglue: gold is {record.answer_type} not number"] += 1
    return dict(counts)


@dataclasses.dataclass(frozen=True)
class TableRow:
    dataset: str
    items: int
    strict: float
    compat: float


def accuracy_table(items: Sequence[dict]) -> list[TableRow]:
    """Rows per dataset (sorted) plus a macro average, from scored item dicts."""
    groups: dict[str, list[dict]] = collections.defaultdict(list)
    for item in items:
        groups[item["dataset"]].append(item)
    rows = []
    for dataset in sorted(groups):
        group = groups[dataset]
        rows.append(
            TableRow(
                dataset,
                len(group),
                100.0 * sum(bool(i["strict"]) for i in group) / len(group),
                100.0 * sum(bool(i["compat"]) for i in group) / len(group),
            )
        )
    if rows:
        rows.append(
            TableRow(
                "average",
                sum(r.items for r in rows),
                sum(r.strict for r in rows) / len(rows),
                sum(r.compat for r in rows) / len(rows),
            )
        )
    return rows


def markdown_table(rows: Sequence[TableRow]) -> str:
    lines = ["| dataset | items | strict % | compat % |", "|---|---:|---:|---:|"]
    lines += [f"| {r.dataset} | {r.items} | {r.strict:.1f} | {r.compat:.1f} |" for r in rows]
    return "\n".join(lines) + "\n"


def text_table(rows: Sequence[TableRow]) -> str:
    lines = [f"{'dataset':<18} {'items':>6} {'strict%':>8} {'compat%':>8}"]
    lines += [f"{r.dataset:<18} {r.items:>6} {r.strict:>8.1f} {r.compat:>8.1f}" for r in rows]
    return "\n".join(lines) + "\n"


def write_chart(rows: Sequence[TableRow], path: str | os.PathLike) -> None:
    """Grouped bar chart of strict vs compat accuracy per dataset (PNG, no display needed; local or
    gs://)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r.dataset for r in rows]
    positions = range(len(rows))
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(rows)), 4))
    ax.bar([p - 0.2 for p in positions], [r.strict for r in rows], 0.4, label="strict")
    ax.bar([p + 0.2 for p in positions], [r.compat for r in rows], 0.4, label="compat")
    ax.set_xticks(list(positions), names, rotation=30, ha="right")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.legend()
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=100)
    plt.close(fig)
    path = epath.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png.getvalue())
