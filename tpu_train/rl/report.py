"""The RL run's report: the reward curve (PNG) and the before/after accuracy lines.

Example (an evaluations file with rows for steps 0 and 20):
    >>> import json, pathlib, tempfile
    >>> f = pathlib.Path(tempfile.mkdtemp()) / "evaluations.jsonl"
    >>> rows = [{"step": 0, "sums/accuracy": 20.0, "sums/items": 25},
    ...         {"step": 20, "sums/accuracy": 92.0, "sums/items": 25}]
    >>> _ = f.write_text("".join(json.dumps(r) + "\\n" for r in rows))
    >>> before_after(f)
    ['accuracy on sums: 20.0% before RL -> 92.0% after RL (25 items, strict)']
"""

from __future__ import annotations

import json
from pathlib import Path


def before_after(evaluations_file: Path) -> list[str]:
    """One line per evaluated set: the first evaluation (step 0) against the last."""
    if not Path(evaluations_file).exists():
        return []
    rows = [json.loads(line) for line in Path(evaluations_file).read_text().splitlines()]
    if len(rows) < 2 or rows[0]["step"] != 0:
        return []
    first, last = rows[0], rows[-1]
    names = [k[: -len("/accuracy")] for k in first if k.endswith("/accuracy")]
    return [
        f"accuracy on {name}: {first[name + '/accuracy']:.1f}% before RL -> "
        f"{last[name + '/accuracy']:.1f}% after RL ({last[name + '/items']} items, strict)"
        for name in names
        if name + "/accuracy" in last
    ]


def reward_curve(metrics_file: Path, out: Path) -> Path:
    """Mean reward per step (with its spread over the batch) and the share of groups without signal."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in Path(metrics_file).read_text().splitlines()]
    steps = [r["step"] for r in rows]
    mean = [r["reward_mean"] for r in rows]
    std = [r["reward_std"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, mean, color="tab:blue", label="reward (mean over rollouts)")
    ax.fill_between(
        steps,
        [m - s for m, s in zip(mean, std, strict=True)],
        [m + s for m, s in zip(mean, std, strict=True)],
        color="tab:blue",
        alpha=0.15,
        label="± std",
    )
    ax.set_xlabel("RL step")
    ax.set_ylabel("reward")
    ax2 = ax.twinx()
    ax2.plot(
        steps,
        [r["groups_without_signal"] for r in rows],
        color="tab:gray",
        linestyle=":",
        label="groups without signal",
    )
    ax2.set_ylabel("groups without signal", color="tab:gray")
    fig.legend(loc="upper left", fontsize=8)
    fig.suptitle("GRPO: reward per step")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return Path(out)
