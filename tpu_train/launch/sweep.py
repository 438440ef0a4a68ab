"""Run a sweep of config overrides, one run after another, and tabulate the results.

    ./launch.sh sweep configs/sweeps/NAME.py [--root=runs/sweeps] [--tpu --name=... --zone=... ...]

A sweep file defines
    CONFIG = "configs/X.py"          # the base config
    def get_sweep() -> list[dict]:    # one dict of {"train.num_steps": 40, ...} per run
(`grid(**axes)` builds the cross product). Each run gets its own workdir `ROOT/NAME/<index>-<key=value,...>`
and runs `python -m tpu_train.train` in a fresh process (a finished run's workdir is resumed, which returns
at once, so an interrupted sweep continues where it stopped). With `--tpu ...` each run is handed to
`tpu_train.launch.tpu_vm` instead (add `--dry_run` there to print the commands). The summary table
(`ROOT/NAME/results.md`) lists each run's final logged metrics and, where a run wrote one,
its evaluation summary.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import re
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

METRICS = ("loss", "token_accuracy", "tokens_per_s", "mfu")


def grid(**axes: Sequence[Any]) -> list[dict[str, Any]]:
    """The cross product of the axes: grid(a=[1, 2], b=["x"]) -> [{"a": 1, "b": "x"}, {"a": 2, "b": "x"}]."""
    keys = list(axes)
    return [dict(zip(keys, values, strict=True)) for values in itertools.product(*axes.values())]


def load_sweep(path: str | Path) -> tuple[str, list[dict[str, Any]]]:
    spec = importlib.util.spec_from_file_location(Path(path).stem, path)
    if spec is None or not Path(path).exists():
        raise FileNotFoundError(f"{path}: no such sweep file")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for name in ("CONFIG", "get_sweep"):
        if not hasattr(module, name):
            raise AttributeError(f"{path}: a sweep file must define {name}")
    runs = module.get_sweep()
    if not runs:
        raise ValueError(f"{path}: get_sweep() returned no runs")
    return module.CONFIG, runs


def run_name(index: int, overrides: dict[str, Any]) -> str:
    text = ",".join(f"{k.split('.')[-1]}={v}" for k, v in overrides.items())
    return f"{index:02d}-" + re.sub(r"[^A-Za-z0-9=,.+-]", "_", text)[:80]


def override_flags(overrides: dict[str, Any]) -> list[str]:
    return [f"--config.{k}={v}" for k, v in overrides.items()]


def summarize(workdir: Path) -> dict[str, Any]:
    """Final logged metrics (metrics.jsonl) and evaluation accuracy (eval/summary.json) of one run."""
    row: dict[str, Any] = {}
    metrics = workdir / "metrics.jsonl"
    if metrics.exists():
        lines = metrics.read_text().splitlines()
        if lines:
            last = json.loads(lines[-1])
            row["step"] = last["step"]
            row.update({k: last[k] for k in METRICS if k in last})
    summary = workdir / "eval" / "summary.json"
    if summary.exists():
        row["eval"] = json.loads(summary.read_text()).get("accuracy")
    return row


def markdown_table(name: str, rows: list[tuple[str, dict[str, Any], int, dict[str, Any]]]) -> str:
    columns = ["step", *METRICS, "eval"]
    lines = [
        f"# Sweep {name}",
        "",
        "| run | overrides | exit | " + " | ".join(columns) + " |",
        "|---|---|---|" + "---|" * len(columns),
    ]
    for run, overrides, code, summary in rows:
        cells = [_fmt(summary.get(c)) for c in columns]
        flags = " ".join(override_flags(overrides))
        lines.append(f"| {run} | `{flags}` | {code} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _split_workdir_root(args: list[str]) -> tuple[list[str], str]:
    rest = [a for a in args if not a.startswith("--workdir_root=")]
    roots = [a.split("=", 1)[1] for a in args if a.startswith("--workdir_root=")]
    if not roots:
        raise SystemExit(
            "--tpu sweeps need --workdir_root=gs://BUCKET/sweeps (where the TPU runs write)"
        )
    return rest, roots[-1]


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog="./launch.sh sweep")
    p.add_argument("sweep", help="configs/sweeps/NAME.py")
    p.add_argument("--root", default="runs/sweeps", help="parent of the sweep's run directories")
    p.add_argument(
        "--tpu", action="store_true", help="launch each run on a TPU VM; other flags go to it"
    )
    args, rest = p.parse_known_args(argv)
    config, runs = load_sweep(args.sweep)
    name = Path(args.sweep).stem
    root = Path(args.root) / name
    root.mkdir(parents=True, exist_ok=True)
    results = []
    for index, overrides in enumerate(runs):
        run = run_name(index, overrides)
        workdir = root / run
        print(f"[sweep] {index + 1}/{len(runs)} {run}", flush=True)
        if args.tpu:
            from tpu_train.launch import tpu_vm

            # TPU runs write to --workdir_root (gs://...), the local root keeps only the table.
            tpu_args, remote_root = _split_workdir_root(rest)
            remote = f"{remote_root.rstrip('/')}/{name}/{run}"
            code = tpu_vm.main(
                [f"--config={config}", f"--workdir={remote}", *tpu_args, *override_flags(overrides)]
            )
        else:
            cmd = [
                sys.executable,
                "-m",
                "tpu_train.train",
                f"--config={config}",
                f"--workdir={workdir}",
            ]
            code = subprocess.run([*cmd, *rest, *override_flags(overrides)]).returncode
        results.append((run, overrides, code, summarize(workdir)))
    table = markdown_table(name, results)
    (root / "results.md").write_text(table)
    print(table, end="")
    print(f"[sweep] wrote {root / 'results.md'}")
    return 0 if all(code == 0 for _, _, code, _ in results) else 1


if __name__ == "__main__":
    sys.exit(main())
