"""Step 6 of the embedded default: the learning-curve PNG and the closing summary."""

from __future__ import annotations

import json
from pathlib import Path


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
    fig.suptitle("embedded default: learning curve")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
