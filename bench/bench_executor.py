"""Programs per second: our sandbox vs a MAmmoTH-style executor vs plain in-process ``exec``.

    python bench/bench_executor.py [--programs=2000] [--baseline_programs=400] [--markdown]

All three run the same GSM8K-style Program-of-Thought programs in one process run:

* ours: :class:`tpu_train.evaluation.executor.Executor` at the strongest isolation available
  (warm workers, one forked and confined child per program);
* MAmmoTH-style: what the MAmmoTH evaluation does, a ``multiprocessing.Manager`` for the result
  and a new ``multiprocessing.Process`` per program running ``exec``, joined with a timeout;
* in-process: ``exec`` in this interpreter with stdout captured, no isolation at all (the
  unsafe upper bound).

Every answer is checked against the expected value, so a fast but wrong executor shows up.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import multiprocessing
import os
import random
import resource
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tpu_train.evaluation.executor import Executor, ExecutorConfig

_TEMPLATES = [
    (
        "def solution():\n    eggs = {a}\n    eaten = {b}\n    baked = {c}\n"
        "    price = {d}\n    return (eggs - eaten - baked) * price\n",
        lambda a, b, c, d: (a - b - c) * d,
    ),
    (
        "total = {a} * {d}\nspent = {b} + {c}\nans = total - spent\n",
        lambda a, b, c, d: a * d - (b + c),
    ),
    (
        "import math\nbolts = {a}\nhalf = bolts / 2\nprint(int(math.floor(bolts + half)) + {b})\n",
        lambda a, b, c, d: int(a + a / 2) + b,
    ),
    (
        "from fractions import Fraction\ndef solution():\n    share = Fraction({a}, {d})\n"
        "    return int(share * {d} * {c})\n",
        lambda a, b, c, d: a * c,
    ),
    (
        "def solution():\n    days = [{a}, {b}, {c}]\n    weekly = sum(days) * {d}\n"
        "    return weekly\n",
        lambda a, b, c, d: (a + b + c) * d,
    ),
]


def make_programs(count: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """GSM8K-style PoT programs and their expected answers."""
    rng = random.Random(seed)
    programs, expected = [], []
    for index in range(count):
        template, answer = _TEMPLATES[index % len(_TEMPLATES)]
        a, d = rng.randint(20, 90), rng.randint(2, 9)
        b, c = rng.randint(1, 9), rng.randint(1, 9)
        programs.append(template.format(a=a, b=b, c=c, d=d))
        expected.append(str(answer(a, b, c, d)))
    return programs, expected


def _answer_from(namespace: dict, stdout: str) -> str | None:
    if callable(namespace.get("solution")):
        return str(namespace["solution"]())
    if "ans" in namespace:
        return str(namespace["ans"])
    lines = stdout.strip().splitlines()
    return lines[-1] if lines else None


def _exec_program(program: str) -> str | None:
    namespace: dict = {"__name__": "__main__"}
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        exec(program, namespace)
    return _answer_from(namespace, buffer.getvalue())


def _mammoth_child(program: str, results) -> None:
    try:
        results["answer"] = _exec_program(program)
    except Exception as exc:
        results["error"] = type(exc).__name__


def run_mammoth_style(programs: list[str], timeout_s: float) -> list[str | None]:
    """A Manager for results and one Process per program, joined under a timeout."""
    answers = []
    with multiprocessing.Manager() as manager:
        for program in programs:
            results = manager.dict()
            process = multiprocessing.Process(target=_mammoth_child, args=(program, results))
            process.start()
            process.join(timeout_s)
            if process.is_alive():
                process.kill()
                process.join()
            answers.append(results.get("answer"))
    return answers


def run_in_process(programs: list[str]) -> list[str | None]:
    return [_exec_program(program) for program in programs]


def _process_cpu(pid: int) -> float:
    """CPU seconds of a live process plus the children it has reaped (from /proc)."""
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def _own_cpu() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _rate(name: str, func, programs: list[str], expected: list[str], pids=()) -> tuple:
    """(programs/s, CPU ms per program over every process involved, note)."""
    cpu0 = _own_cpu() + sum(_process_cpu(p) for p in pids)
    start = time.perf_counter()
    answers = func(programs)
    elapsed = time.perf_counter() - start
    cpu = _own_cpu() + sum(_process_cpu(p) for p in pids) - cpu0
    wrong = sum(a != e for a, e in zip(answers, expected, strict=True))
    if wrong:
        raise SystemExit(f"{name}: {wrong} of {len(programs)} answers wrong")
    note = f"{len(programs)} programs in {elapsed:.2f} s"
    return len(programs) / elapsed, 1000 * cpu / len(programs), note


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--programs", type=int, default=2000, help="programs for ours/in-process")
    parser.add_argument("--baseline_programs", type=int, default=400, help="for MAmmoTH-style")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--markdown", action="store_true", help="also print a Markdown row")
    args = parser.parse_args()

    programs, expected = make_programs(args.programs)
    config = ExecutorConfig(workers=args.workers, timeout_s=5.0)
    with Executor(config) as executor:
        executor.run(programs[:50])  # let the workers settle before timing
        level = executor.isolation_level
        pids = [w.process.pid for w in executor._workers]
        ours = _rate(
            "ours", lambda p: [r.answer for r in executor.run(p)], programs, expected, pids
        )
    n = args.baseline_programs
    mammoth = _rate("mammoth", lambda p: run_mammoth_style(p, 5.0), programs[:n], expected[:n])
    inproc = _rate("in-process", run_in_process, programs, expected)

    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    print(f"{'executor':<34} {'programs/s':>10} {'vs MAmmoTH':>10} {'CPU ms/prog':>11}  run")
    rows = [
        (f"ours ({args.workers} workers, {level})", *ours),
        ("MAmmoTH-style (Manager+Process)", *mammoth),
        ("in-process exec (unsafe)", *inproc),
    ]
    for name, rate, cpu_ms, note in rows:
        print(f"{name:<34} {rate:>10.1f} {rate / mammoth[0]:>9.1f}x {cpu_ms:>11.2f}  {note}")
    print(
        "CPU ms/prog counts every process involved (executor, workers, children, Manager), so "
        f"{os.cpu_count()} idle cores bound ours at about "
        f"{1000 * (os.cpu_count() or 1) / ours[1]:.0f} programs/s."
    )
    if args.markdown:
        print()
        print(
            "| ours (programs/s) | MAmmoTH-style | in-process exec | ours / MAmmoTH | isolation |"
        )
        print("|---:|---:|---:|---:|---|")
        print(
            f"| {ours[0]:.0f} | {mammoth[0]:.0f} | {inproc[0]:.0f} | "
            f"{ours[0] / mammoth[0]:.1f}x | {level} |"
        )


if __name__ == "__main__":
    main()
