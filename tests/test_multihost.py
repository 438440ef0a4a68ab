"""The multi-host journey, as on a TPU slice where every worker runs the same command: local processes
with a coordinator on loopback, each with its own fake CPU devices.

Fine-tune an imported HF Llama on 2 processes (evaluating on the way), resume it on 1, then on 4 with
data=2 x fsdp=4, export it: every step sees the same global batch as a straight one-process run, and
at lr 1e-7 the export stays the imported model. Preemption notices reaching one host stop them all at
one step.
"""

from __future__ import annotations

import json
import signal
import time

import numpy as np

from tests.train_helpers import (
    finish_processes,
    metric_rows,
    run_processes,
    run_train,
    start_processes,
    tiny_config,
    train_command,
)
from tpu_train import checkpoint
from tpu_train.interop.hf import export_hf
from tpu_train.interop.safetensors_io import CheckpointReader
from tpu_train.training.loop import train

STEPS = dict(learning_rate=1e-7, warmup_steps=0)  # tiny steps: the weights stay the imported ones


def test_imported_llama_fine_tunes_across_process_counts_and_exports(tmp_path, hf_llama_factory):
    hf_dir, _ = hf_llama_factory(vocab_size=4096, num_key_value_heads=2)
    flags = [
        f"--config.init.hf_dir={hf_dir}",
        "--config.optimizer.learning_rate=1e-7",
        "--config.optimizer.warmup_steps=0",
        "--config.data.report_overlong=False",
        "--config.train.log_every=1",
        "--config.checkpoint.every_steps=2",
    ]
    work = tmp_path / "w"
    # 2 processes x 2 devices import the model and train steps 1-2; the evaluation hook samples with
    # rows split over both processes (4 rows on fsdp=4) and process 0 grades.
    first = run_processes(
        train_command(
            work,
            *flags,
            "--config.train.num_steps=2",
            "--config.eval.every_steps=2",
            "--config.eval.items_per_benchmark=4",
            "--config.eval.batch_size=4",
            "--config.eval.max_new_tokens=8",
        ),
        processes=2,
        devices=2,
    )
    assert "imported" in first[0] and "mesh [fsdp=4] (4 devices)" in first[0]
    assert "step 2/2" in first[0] and "step 2/2" not in first[1]  # only process 0 reports
    items = (work / "eval" / "step_2" / "items.jsonl").read_text().splitlines()
    assert len(items) == 4 and all(json.loads(i)["verdict"] for i in items)
    # The slice shrinks to one host of one device (steps 3-4), then grows to 4 hosts of 2 devices on
    # data=2 x fsdp=4 (steps 5-6).
    resumed = run_train(work, *flags, "--config.train.num_steps=4").stdout
    assert "resumed from" in resumed and "(step 2)" in resumed
    grown = run_processes(
        train_command(work, *flags, "--config.train.num_steps=6", "--config.mesh.shape.data=2"),
        processes=4,
        devices=2,
    )
    assert "resumed from" in grown[0] and "mesh [data=2 x fsdp=4] (8 devices)" in grown[0]

    config = tiny_config(num_steps=6, log_every=1)
    config.init.hf_dir = str(hf_dir)
    config.optimizer.update(STEPS)
    config.data.report_overlong = False
    config.checkpoint.every_steps = 0
    train(config, tmp_path / "straight")
    chained, straight = metric_rows(work), metric_rows(tmp_path / "straight")
    assert [r["step"] for r in chained] == [1, 2, 3, 4, 5, 6]
    assert [r["data_fingerprint"] for r in chained] == [r["data_fingerprint"] for r in straight]
    np.testing.assert_allclose(
        [r["loss"] for r in chained], [r["loss"] for r in straight], rtol=1e-4
    )

    step, _ = export_hf(work, tmp_path / "export")
    assert step == 6
    ours, imported = CheckpointReader(tmp_path / "export"), CheckpointReader(hf_dir)
    names = sorted(imported.names())
    assert sorted(ours.names()) == names
    worst = max(float(np.abs(ours.get(n) - imported.get(n)).max()) for n in names)
    assert worst < 1e-3


def test_sigterm_to_one_process_stops_every_process_at_one_step(tmp_path):
    """A preemption notice that reaches one host only: both save the same step and exit 0."""
    procs = start_processes(
        train_command(
            tmp_path,
            "--config.train.num_steps=1000",
            "--config.train.log_every=1",
            "--config.checkpoint.every_steps=0",
        ),
        processes=2,
    )
    seen, deadline = [], time.monotonic() + 300
    for line in procs[0].stdout:  # process 0 reports; wait until training is under way
        seen.append(line)
        if line.startswith("step 3/1000") or time.monotonic() > deadline:
            break
    procs[1].send_signal(signal.SIGTERM)
    outs = finish_processes(procs)
    report = "".join(seen) + outs[0]
    assert "SIGTERM: saved step" in report, report[-3000:]
    stopped = int(report.split("SIGTERM: saved step ")[1].split()[0])
    assert 3 <= stopped < 1000
    assert checkpoint.latest_step(tmp_path) == stopped
