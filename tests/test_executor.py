"""Executor behaviour: verdicts, answer channels, ordering, isolation policy, worker crashes."""

from __future__ import annotations

import dataclasses
import os
import signal

import pytest

from tpu_train.evaluation.executor import (
    ExecutionResult,
    Executor,
    ExecutorConfig,
    SandboxUnavailable,
)


@pytest.fixture(scope="module")
def executor():
    with Executor(ExecutorConfig(timeout_s=1.0, workers=2, output_bytes=1000)) as ex:
        yield ex


def test_answer_channels(executor: Executor) -> None:
    programs = [
        "def solution():\n    return 6 * 7\n",
        "def solution():\n    return 1\nprint(solution() + 1)\n",
        "ans = 2 ** 10\nanswer = 5\n",
        "answer = 'x'\n",
        "print('working')\nprint(3.5)\n\n",
        "x = 1\n",
        "def solution():\n    print(9)\n",
    ]
    got = [(r.answer, r.answer_source) for r in executor.run(programs)]
    assert got == [
        ("42", "solution()"),
        ("2", "stdout"),  # solution() already called by the program: its output counts
        ("1024", "ans"),
        ("x", "answer"),
        ("3.5", "stdout"),
        (None, None),
        ("9", "stdout"),  # solution() returned None, so the printed line is the answer
    ]


def test_verdicts(executor: Executor) -> None:
    programs = {
        "ok": "ans = 1",
        "syntax_error": "def (:",
        "runtime_error": "1 / 0",
        "timeout": "while True:\n    pass",
        "memory_limit": "x = [0] * (10 ** 11)",
        "output_limit": "print('y' * 5000)",
        "file_limit": "f = open('f', 'wb')\nwhile True:\n    f.write(b'0' * 65536)",
        "crash": "import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)",
    }
    results = executor.run(list(programs.values()))
    assert [r.verdict for r in results] == list(programs)
    assert results[2].error_type == "ZeroDivisionError"
    assert results[7].error_type == "SIGSEGV"
    assert len(results[5].stdout) <= 1000


def test_answer_source_is_a_channel_the_program_defines(executor: Executor) -> None:
    """The child declares the channels its program's text defines before running it; a report
    naming another one (written by the program onto the result descriptor) is refused."""

    def forge(frame: str) -> str:
        return (
            "import os, sys\nprint(42)\nsys.stdout.flush()\n"
            f"os.write(3, b'{frame}\\n')\nos._exit(0)"
        )

    programs = [
        forge('{"status": "ok", "answer": "42", "answer_source": "solution()"}'),
        forge('{"status": "ok", "answer": "7", "answer_source": "stdout"}'),
        forge('{"status": "syntax", "error_type": "SyntaxError"}'),
        "solution = lambda: 5",  # bound by assignment: still a solution() channel
        "globals()['ans'] = 3\nprint(4)",  # bound only dynamically: not a channel
        "import os, signal\nos.kill(os.getpid(), signal.SIGXCPU)",  # CPU limit not reached
    ]
    got = [(r.verdict, r.answer, r.answer_source, r.error_type) for r in executor.run(programs)]
    assert got == [
        ("runtime_error", None, None, "InvalidResultFrame"),
        ("runtime_error", None, None, "InvalidResultFrame"),
        ("runtime_error", None, None, "InvalidResultFrame"),
        ("ok", "5", "solution()", None),
        ("ok", "4", "stdout", None),
        ("crash", None, None, "SIGXCPU"),
    ]


def test_cpu_limit_verdict() -> None:
    config = ExecutorConfig(timeout_s=15.0, cpu_s=1.0, workers=1)  # wall >> CPU: load-proof
    with Executor(config) as ex:
        (result,) = ex.run(["while True:\n    pass"])
    assert result.verdict == "cpu_limit"


def test_order_preserved_and_fields(executor: Executor) -> None:
    results = executor.run([f"ans = {i} * {i}" for i in range(40)])
    assert [r.answer for r in results] == [str(i * i) for i in range(40)]
    first = results[0]
    assert isinstance(first, ExecutionResult)
    assert first.isolation_level == executor.isolation_level
    assert "seccomp" in first.layers
    assert 0 < first.seconds < 1.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        first.verdict = "ok"  # type: ignore[misc]


def test_answers_are_strings_even_for_odd_objects(executor: Executor) -> None:
    results = executor.run(
        [
            "from fractions import Fraction\nans = Fraction(1, 3)",
            "import numpy as np\nans = np.float64(2.5)",
            "import sympy\nans = sympy.sqrt(8)",
            "ans = 'z' * 10000",
        ]
    )
    assert [r.answer for r in results[:3]] == ["1/3", "2.5", "2*sqrt(2)"]
    assert len(results[3].answer) == 4096


def test_empty_run(executor: Executor) -> None:
    assert executor.run([]) == []


def test_worker_crash_becomes_a_verdict() -> None:
    with Executor(ExecutorConfig(timeout_s=5.0, workers=1)) as ex:
        worker_pid = ex._workers[0].process.pid
        programs = ["import time\ntime.sleep(3)", "ans = 11"]
        # Kill the worker while it runs the first program, from a timer thread.
        import threading

        threading.Timer(1.0, os.kill, (worker_pid, signal.SIGKILL)).start()
        first, second = ex.run(programs)
        assert first.verdict == "crash" and first.error_type == "WorkerDied"
        assert (second.verdict, second.answer) == ("ok", "11")
        assert ex._workers[0].process.pid != worker_pid


def test_refuses_below_minimum_isolation() -> None:
    # The default minimum is the weakest level that confines files: seccomp alone is refused.
    assert ExecutorConfig().min_isolation == "landlock"
    config = ExecutorConfig(workers=1, max_isolation="seccomp")
    with pytest.raises(SandboxUnavailable, match="below the required"):
        Executor(config)
    weak = dataclasses.replace(config, max_isolation="process", allow_weaker=True)
    with Executor(weak) as ex:
        (result,) = ex.run(["ans = 1"])
    assert result.isolation_level == "process" and "seccomp" not in result.layers


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="unknown isolation level"):
        ExecutorConfig(min_isolation="bogus")
    with pytest.raises(ValueError):
        ExecutorConfig(workers=0)


def test_closed_executor_refuses_work() -> None:
    ex = Executor(ExecutorConfig(workers=1))
    ex.close()
    with pytest.raises(RuntimeError, match="closed"):
        ex.run(["ans = 1"])
