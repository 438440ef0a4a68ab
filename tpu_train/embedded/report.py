"""The embedded default's report: learning curve, before/after chart and table."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from tpu_train.evaluation.scoring import TableRow


def last_metrics(metrics_file: Path) -> dict[str, float]:
    """The last logged training metrics of a run."""
    return json.loads(metrics_file.read_text().splitlines()[-1])


def learning_curve(metrics_file: Path, out: Path) -> Path:
    """Loss and token accuracy against step, from W/metrics.jsonl."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in metrics_file.read_text().splitlines()]
    steps = [r["step"] for r in rows]
    fig, loss_ax = plt.subplots(figsize=(7, 4))
    loss_ax.plot(steps, [r["loss"] for r in rows], color="tab:blue", label="loss (response tokens)")
    loss_ax.set_xlabel("step")
    loss_ax.set_ylabel("loss", color="tab:blue")
    loss_ax.set_yscale("log")
    acc_ax = loss_ax.twinx()
    acc_ax.plot(
        steps, [r["token_accuracy"] for r in rows], color="tab:orange", label="token accuracy"
    )
    acc_ax.set_ylabel("token accuracy", color="tab:orange")
    acc_ax.set_ylim(0, 1)
    fig.suptitle("embedded default: fine-tuning learning curve")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def before_after_chart(before: Sequence[TableRow], after: Sequence[TableRow], out: Path) -> Path:
    """Strict accuracy per set before and after fine-tuning, as grouped bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r.dataset for r in after]
    old = {r.dataset: r.strict for r in before}
    x = range(len(names))
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.bar([i - 0.2 for i in x], [old.get(n, 0.0) for n in names], 0.4, label="before (zero-shot)")
    ax.bar([i + 0.2 for i in x], [r.strict for r in after], 0.4, label="after fine-tuning")
    ax.set_xticks(list(x), names)
    ax.set_ylabel("strict accuracy (%)")
    ax.set_ylim(0, 100)
    ax.legend()
    fig.suptitle("embedded default: SmolLM2-135M-Instruct, PoT, sandboxed")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def before_after_table(before: Sequence[TableRow], after: Sequence[TableRow]) -> str:
    """A text table: items, strict and compat accuracy before and after, per set."""
    old = {r.dataset: r for r in before}
    lines = [f"      {'set':<18} {'items':>5}   strict before -> after   compat before -> after"]
    for row in after:
        b = old.get(row.dataset)
        lines.append(
            f"      {row.dataset:<18} {row.items:>5}   {b.strict if b else float('nan'):6.1f}% -> "
            f"{row.strict:5.1f}%         {b.compat if b else float('nan'):6.1f}% -> {row.compat:5.1f}%"
        )
    return "\n".join(lines)
