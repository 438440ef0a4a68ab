"""Runs every benchmark in bench/ in its quick mode and writes bench/results.md (one Markdown table).

    python bench/run_all.py [--out=bench/results.md] [--only=train,scaling] [--full]

`--only` re-runs the named benchmarks and keeps the other rows of the existing results file.

Each `bench/bench_*.py` that exists is run in a subprocess (one at a time: the machine has few cores), so a
benchmark that is missing, fails or is still being written does not stop the others; its row then says why
it was not measured. Every row names the measurement, our figure, the peer's figure and the ratio written as
`N.Nx`, and the command that reproduces it; the machine is written above the table.

Benchmarks known here get quick arguments and an adapter for their output; any other `bench_*.py` is run with
`--markdown` and its table rows (`| measurement | ours | peer | ratio | notes |`) are taken as printed.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
PY = sys.executable


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine() -> str:
    mem = ""
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f", {kb / 2**20:.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    return (
        f"{_cpu_model()}, {os.cpu_count()} CPUs{mem}, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}; load average {os.getloadavg()[0]:.1f} at start"
    )


def run(args: list[str], timeout: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.run(
        [PY, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env
    )


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def _table_rows(stdout: str, width: int = 5) -> list[list[str]]:
    rows = []
    for line in stdout.splitlines():
        if not line.lstrip().startswith("|"):
            continue
        cells = _cells(line)
        if len(cells) != width or set("".join(cells)) <= set("-: "):
            continue
        if cells[0].lower() in ("measurement", "what"):
            continue
        rows.append(cells)
    return rows


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.1f}x" if b else "n/a"


# Each adapter: (quick arguments, full arguments, parse(stdout, context) -> rows [measurement, ours, peer,
# ratio, notes]).


def _note_train_rate(rows: list[list[str]], ctx: dict) -> None:
    """Puts our float32 training tokens/s (what bench_data compares against) into `ctx`."""
    for cells in rows:
        if cells[0].startswith("training tokens/s") and "float32" in cells[0]:
            ctx["train_tokens_per_s"] = float(cells[1].replace(",", ""))


def _parse_train(out: str, ctx: dict) -> list[list[str]]:
    rows = _table_rows(out)
    _note_train_rate(rows, ctx)
    return rows


def _parse_executor(out: str, ctx: dict) -> list[list[str]]:
    for cells in _table_rows(out):
        if not re.fullmatch(r"[\d,.]+", cells[0]):
            continue  # its own header row
        ours, mammoth, inproc, ratio, level = cells
        return [
            [
                "sandboxed executor, programs/s (GSM8K-style PoT)",
                ours,
                f"{mammoth} (MAmmoTH-style Manager + Process)",
                ratio,
                f"isolation {level}; unsafe in-process exec {inproc}",
            ]
        ]
    return []


def _parse_decode(out: str, ctx: dict) -> list[list[str]]:
    rows = []
    for line in out.splitlines():
        m = re.fullmatch(r"\s*(\d+)\s*\|\s*([\d.]+)\s*\|\s*([\d.]+)\s*\|\s*([\d.]+)x\s*", line)
        if m:
            batch, ours, theirs, _ = m.groups()
            rows.append(
                [
                    f"greedy decode tokens/s, 58M Llama, float32, batch {batch}",
                    f"{float(ours):,.0f}",
                    f"{float(theirs):,.0f} (transformers generate)",
                    _ratio(float(ours), float(theirs)),
                    "",
                ]
            )
    return rows


def _parse_data(out: str, ctx: dict) -> list[list[str]]:
    start = out.find("{")
    if start < 0:
        return []
    result = json.loads(out[start:])
    pipe, train = result["pipeline"], result["train_tokens_per_s"]
    rows = [
        [
            f"data pipeline tokens/s vs training step consumption ({result['mixture']}, "
            f"{result['batch_size']}x{result['sequence_length']})",
            f"{pipe['tokens_per_s']:,.0f}",
            f"{train:,.0f} (our train step consumes)",
            _ratio(pipe["tokens_per_s"], train),
            f"packing efficiency {pipe['packing_efficiency']:.0%}; must exceed 1.0x",
        ]
    ]
    return rows


def _data_args(ctx: dict) -> list[str]:
    rate = ctx.get("train_tokens_per_s")
    return [f"--train_tokens_per_s={rate:.0f}"] if rate else []


ADAPTERS = {
    "bench_train.py": (["--repeats=3", "--markdown"], ["--repeats=7", "--markdown"], _parse_train),
    "bench_scaling.py": (["--markdown"], ["--markdown", "--repeats=3"], None),
    "bench_executor.py": (
        ["--programs=400", "--baseline_programs=100", "--markdown"],
        ["--markdown"],
        _parse_executor,
    ),
    "bench_decode.py": (
        ["--new_tokens=128", "--repeats=2", "--long=256"],
        [],
        _parse_decode,
    ),
    "bench_data.py": (["--batches=50", "--repopulate_records=50"], [], _parse_data),
}
# bench_data's ratio is against the train step's tokens/s: re-running train re-runs data too, and a kept
# train row feeds a data re-run.
DEPENDS_ON = {"bench_data.py": "bench_train.py"}
ORDER = [
    "bench_train.py",
    "bench_scaling.py",
    "bench_decode.py",
    "bench_executor.py",
    "bench_data.py",
]


def bench_scripts() -> list[str]:
    present = sorted(p.name for p in BENCH.glob("bench_*.py"))
    return [n for n in ORDER if n in present] + [n for n in present if n not in ORDER]


def run_one(name: str, ctx: dict, full: bool, timeout: int) -> list[list[str]]:
    quick, full_args, parse = ADAPTERS.get(name, (["--markdown"], ["--markdown"], None))
    args = list(full_args if full else quick)
    if name == "bench_data.py":
        args += _data_args(ctx)
    command = " ".join(["python", f"bench/{name}", *args])
    start = time.perf_counter()
    try:
        done = run([str(BENCH / name), *args], timeout)
    except subprocess.TimeoutExpired:
        return [[f"{name}", "-", "-", "-", f"not measured: timed out after {timeout} s", command]]
    seconds = time.perf_counter() - start
    rows = (parse or (lambda out, c: _table_rows(out)))(done.stdout, ctx)
    if not rows:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        why = f"exit {done.returncode}: {tail[0][:160]}"
        return [[name, "-", "-", "-", f"not measured ({why})", command]]
    print(f"{name}: {len(rows)} row(s) in {seconds:.0f} s", file=sys.stderr)
    return [[*row, command] for row in rows]


def _kept_rows(path: Path, wanted: set[str]) -> dict[str, list[list[str]]]:
    """Rows of an earlier results file for the benchmarks that `--only` does not re-run, by script."""
    kept: dict[str, list[list[str]]] = {}
    if not path.exists():
        return kept
    for cells in _table_rows(path.read_text(), width=6):
        match = re.search(r"bench/(bench_\w+\.py)", cells[-1])
        if match and match.group(1) not in wanted:
            kept.setdefault(match.group(1), []).append([*cells[:-1], cells[-1].strip("`")])
    return kept


def render(rows: list[list[str]], header: str) -> str:
    lines = [
        "# Benchmark results",
        "",
        header,
        "",
        "| measurement | tpu_train | peer | ratio | notes | command |",
        "|---|---:|---:|---:|---|---|",
    ]
    for row in rows:
        cells = [c.replace("|", "/") for c in row]
        cells[-1] = f"`{cells[-1]}`"
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(BENCH / "results.md"))
    parser.add_argument("--only", default="", help="comma-separated names, e.g. train,scaling")
    parser.add_argument(
        "--full", action="store_true", help="full-length runs instead of quick mode"
    )
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per benchmark")
    args = parser.parse_args()
    wanted = {f"bench_{n.strip()}.py" for n in args.only.split(",") if n.strip()}
    header = (
        f"Measured {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC on {machine()}. "
        f"Reproduce: `python bench/run_all.py{' --full' if args.full else ''}` (each row's command runs "
        "one benchmark alone). Ratios are tpu_train / peer, so above 1.0x is better for throughput."
    )
    ctx: dict = {}
    wanted |= {name for name, dep in DEPENDS_ON.items() if wanted and dep in wanted}
    kept = _kept_rows(Path(args.out), wanted) if wanted else {}
    rows: list[list[str]] = []
    for name in bench_scripts():
        if wanted and name not in wanted:
            rows += kept.get(name, [])
            if name == "bench_train.py":
                _note_train_rate(kept.get(name, []), ctx)
            continue
        rows += run_one(name, ctx, args.full, args.timeout)
        Path(args.out).write_text(render(rows, header))  # partial results survive an interruption
    Path(args.out).write_text(render(rows, header))
    print(render(rows, header))


if __name__ == "__main__":
    main()
