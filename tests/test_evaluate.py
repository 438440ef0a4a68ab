"""End-to-end runs of ``python -m tpu_train.execute`` and ``python -m tpu_train.evaluate``."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=300
    )


def _write_jsonl(path, rows) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_execute_cli(tmp_path) -> None:
    src, out = tmp_path / "programs.jsonl", tmp_path / "results.jsonl"
    _write_jsonl(
        src,
        [
            {"id": "a", "program": "print(16 - 3 - 4)", "gold": "9", "dataset": "gsm8k"},
            {"id": "b", "program": "def solution():\n    return 0.1 + 0.2", "gold": "0.3"},
            {"id": "c", "program": "while True:\n    pass"},
            {"id": "d", "program": "ans = 4.6", "gold": "5"},
        ],
    )
    done = _run("tpu_train.execute", f"--input={src}", f"--output={out}", "--timeout=1")
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == ["a", "b", "c", "d"]
    assert [r["verdict"] for r in rows] == ["ok", "ok", "timeout", "ok"]
    assert [r.get("correct") for r in rows] == [True, True, None, False]
    assert rows[0]["answer_source"] == "stdout" and rows[1]["answer_source"] == "solution()"
    assert all(r["isolation_level"] for r in rows)
    assert "timeout" in done.stdout and "accuracy (strict): 66.67% of 3" in done.stdout
    assert "programs/s" in done.stdout


def test_execute_cli_reports_bad_lines(tmp_path) -> None:
    src = tmp_path / "programs.jsonl"
    src.write_text('{"id": "a", "program": "ans = 1"}\n{"id": "b"}\n')
    done = _run("tpu_train.execute", f"--input={src}", f"--output={tmp_path / 'o.jsonl'}")
    assert done.returncode != 0
    assert "programs.jsonl:2: missing field 'program'" in done.stderr


def test_execute_cli_refuses_an_unwritable_output_before_running(tmp_path) -> None:
    src = tmp_path / "programs.jsonl"
    _write_jsonl(src, [{"id": "a", "program": "ans = 1"}])
    done = _run("tpu_train.execute", f"--input={src}", f"--output={tmp_path / 'no' / 'o.jsonl'}")
    assert done.returncode != 0
    assert "no/o.jsonl: No such file or directory" in done.stderr
    assert "Traceback" not in done.stderr


def test_execute_cli_keeps_finished_results_on_ctrl_c(tmp_path) -> None:
    """Results stream to --output chunk by chunk; SIGINT stops the run and keeps what is done."""
    import signal
    import time

    src, out = tmp_path / "programs.jsonl", tmp_path / "results.jsonl"
    rows = [{"id": str(i), "program": "import time\ntime.sleep(0.05)\nans = 1"} for i in range(640)]
    _write_jsonl(src, rows)
    proc = subprocess.Popen(
        [sys.executable, "-m", "tpu_train.execute", f"--input={src}", f"--output={out}"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (not out.exists() or not out.read_text()):
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    kept = [json.loads(line) for line in out.read_text().splitlines()]
    assert 0 < len(kept) < len(rows)
    assert [r["id"] for r in kept] == [str(i) for i in range(len(kept))]
    assert f"interrupted: {len(kept)} of {len(rows)} results are in {out}" in stderr


def test_evaluate_cli(tmp_path) -> None:
    preds, out = tmp_path / "preds.jsonl", tmp_path / "report"
    _write_jsonl(
        preds,
        [
            {"id": "gsm8k/0", "dataset": "gsm8k", "output": "The answer is 18.", "mode": "cot"},
            {"id": "1", "dataset": "gsm8k", "output": "print(2 + 1)", "mode": "pot"},
            {"id": "math/algebra/1", "dataset": "math", "output": "\\boxed{2}", "mode": "cot"},
            {"id": "aqua/0", "dataset": "aqua", "output": "I'd say 13.66", "mode": "cot"},
        ],
    )
    done = _run("tpu_train.evaluate", f"--predictions={preds}", f"--out={out}")
    assert done.returncode == 0, done.stderr
    items = [json.loads(line) for line in (out / "items.jsonl").read_text().splitlines()]
    assert [(i["strict"], i["compat"]) for i in items] == [
        (True, True),
        (True, True),
        (True, True),
        (False, True),  # compat defaults an unanswered choice to "A"; strict never does
    ]
    assert items[1]["verdict"] == "ok" and items[1]["isolation_level"]
    table = (out / "table.md").read_text()
    assert "| aqua | 1 | 0.0 | 100.0 |" in table and "| average |" in table
    assert (out / "chart.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["verdicts"]["ok"] == 1
    assert "strict%" in done.stdout


def test_evaluate_cli_rejects_unknown_dataset(tmp_path) -> None:
    preds = tmp_path / "preds.jsonl"
    _write_jsonl(preds, [{"id": "1", "dataset": "gsm9k", "output": "1", "mode": "cot"}])
    done = _run("tpu_train.evaluate", f"--predictions={preds}", f"--out={tmp_path / 'r'}")
    assert done.returncode != 0 and "preds.jsonl:1: field 'dataset'" in done.stderr


def test_evaluate_rejects_duplicate_predictions(tmp_path) -> None:
    """Nine copies of one right answer once scored "11 items, 90.9%"."""
    from tpu_train.evaluation.pipeline import InputError, read_predictions

    preds = tmp_path / "preds.jsonl"
    row = {"id": "gsm8k/0", "dataset": "gsm8k", "output": "The answer is 18.", "mode": "cot"}
    _write_jsonl(preds, [row, {**row, "id": "gsm8k/1"}, {**row, "id": "0"}])
    with pytest.raises(InputError, match=r"preds.jsonl:3: a second prediction .* line 1"):
        read_predictions(str(preds))


def test_oracle_cli() -> None:
    done = _run("tpu_train.evaluate", "--oracle")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "gsm8k              1319/1319 correct" in done.stdout
    assert "quirk: simuleq" in done.stdout


def test_evaluate_cli_maps_a_pot_value_to_its_option(tmp_path) -> None:
    preds, out = tmp_path / "preds.jsonl", tmp_path / "report"
    program = "import math\nans = 5 * (math.sqrt(3) + 1)"
    _write_jsonl(preds, [{"id": "aqua/0", "dataset": "aqua", "output": program, "mode": "pot"}])
    done = _run("tpu_train.evaluate", f"--predictions={preds}", f"--out={out}")
    assert done.returncode == 0, done.stderr
    [item] = [json.loads(line) for line in (out / "items.jsonl").read_text().splitlines()]
    assert item["verdict"] == "ok" and (item["strict"], item["compat"]) == (True, True)


@pytest.mark.parametrize(
    "command, flag, message",
    [
        ("tpu_train.evaluate", "--limit=0", "--limit=0: 0 is not a positive integer"),
        ("tpu_train.evaluate", "--max_new_tokens=0", "--max_new_tokens=0: 0 is not a positive"),
        ("tpu_train.sample", "--top_p=0", "--top_p must be in (0, 1]"),
        ("tpu_train.sample", "--temperature=-1", "--temperature=-1: -1.0 is not a non-negative"),
    ],
)
def test_argument_ranges_fail_before_any_model_loads(tmp_path, command, flag, message) -> None:
    """The workdir does not even exist: the flag is refused first, in one line."""
    out = "--out" if command == "tpu_train.evaluate" else "--output"
    done = _run(command, f"--workdir={tmp_path / 'nowhere'}", f"{out}={tmp_path / 'o'}", flag)
    assert done.returncode != 0
    assert message in done.stderr and "Traceback" not in done.stderr, done.stderr
