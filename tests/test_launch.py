"""TPU VM launcher (dry run and relaunch after preemption) and local config sweeps."""

import os
import re
import shlex
import subprocess
import sys

import pytest
from train_helpers import FIXTURE_OVERRIDES, ROOT, train_env

from tpu_train.launch import sweep, tpu_vm

TPU_ARGS = [
    "--name=my-v4", "--zone=us-central2-b", "--project=proj", "--config=configs/tiny_test.py",
    "--workdir=gs://bucket/runs/a", "--config.train.num_steps=40",
]  # fmt: skip


def test_dry_run_prints_every_gcloud_command():
    out = subprocess.run(
        [sys.executable, "-m", "tpu_train.launch.tpu_vm", *TPU_ARGS, "--create", "--accelerator=v5p-64", "--dry_run"],
        capture_output=True, text=True, check=True, cwd=ROOT,
    ).stdout.splitlines()  # fmt: skip
    assert len(out) == 5
    create, scp, install, train, stream = (shlex.split(line) for line in out)
    assert create[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "create"]
    assert "--accelerator-type=v5p-64" in create and "--zone=us-central2-b" in create
    assert "--project=proj" in create
    assert scp[4] == "scp" and "--worker=all" in scp and scp[-4].startswith("my-v4:~/")
    assert "--worker=all" in install and "pip install -q -e '.[tpu]'" in install[-3]
    command = train[-3]
    assert "--worker=all" in train and "nohup" in command and "--distributed" in command
    assert "--workdir=gs://bucket/runs/a" in command and "--config.train.num_steps=40" in command
    assert "--worker=0" in stream and "tail" in stream[-3]


@pytest.mark.parametrize(
    "change, message",
    [
        ("--config=configs/no_such.py", r"--config=configs/no_such.py: no such file in "),
        ("--config=/etc/hostname", r"--config=/etc/hostname: outside the repository"),
        ("--accelerator=v9-8", r"--accelerator=v9-8: not a TPU accelerator type; expected one of v2-N"),
        ("--accelerator=v5e-8", r"\(v5e is v5litepod-N\)"),
        ("--accelerator=v4-7", r"--accelerator=v4-7: v4 sizes count TensorCores, 2 per chip"),
        ("--workdir=runs/a", r"--workdir=runs/a: a TPU VM run needs a Cloud Storage workdir \(gs://"),
    ],
)  # fmt: skip
def test_dry_run_refuses_what_would_fail_on_the_workers_in_one_line(change, message, capsys):
    key = change.split("=")[0]
    args = [a for a in TPU_ARGS if not a.startswith(key + "=")] + [change, "--create", "--dry_run"]
    assert tpu_vm.main(args) == 2
    out, err = capsys.readouterr()
    assert out == ""  # no gcloud command printed
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    assert re.search(message, err), err


def test_an_untracked_config_is_refused(tmp_path):
    untracked = ROOT / "configs" / f"untracked_{os.getpid()}.py"
    untracked.write_text("")
    try:
        with pytest.raises(tpu_vm.LaunchError, match="not tracked by git"):
            tpu_vm.check_job(tpu_vm.parse_args([*TPU_ARGS, f"--config={untracked}"])[0], ROOT)
    finally:
        untracked.unlink()


def test_bad_override_is_rejected():
    with pytest.raises(SystemExit):
        tpu_vm.parse_args([*TPU_ARGS, "--learning_rate=3"])


def test_relaunches_after_preemption_and_recreates():
    job, _ = tpu_vm.parse_args(TPU_ARGS)
    calls, attempts = [], {"n": 0}

    def fake_gcloud(cmd):  # first training attempt dies with the TPU preempted; the second succeeds
        calls.append(cmd[4])
        if cmd[4] == "ssh" and "tail" in cmd[-3]:
            attempts["n"] += 1
            return 0, "step 10/40\n" + (
                "tpu_train_exit_code=137\n" if attempts["n"] == 1 else "tpu_train_exit_code=0\n"
            )
        if cmd[4] == "describe":
            return 0, "PREEMPTED\n"
        return 0, ""

    code = tpu_vm.launch(job, create=False, retries=2, tarball="/tmp/x.tar.gz", run=fake_gcloud)
    assert code == 0
    assert calls == [
        "scp",
        "ssh",
        "ssh",
        "ssh",
        "describe",
        "delete",
        "create",
        "scp",
        "ssh",
        "ssh",
        "ssh",
    ]


def test_gives_up_after_retries():
    job, _ = tpu_vm.parse_args(TPU_ARGS)

    def always_crashing(cmd):
        if cmd[4] == "ssh" and "tail" in cmd[-3]:
            return 0, "tpu_train_exit_code=1\n"
        return (0, "READY\n") if cmd[4] == "describe" else (0, "")

    assert tpu_vm.launch(job, create=False, retries=1, tarball="x", run=always_crashing) == 1


def test_grid_and_run_names():
    runs = sweep.grid(**{"optimizer.learning_rate": [1e-3, 3e-3], "train.batch_size": [8]})
    assert runs == [
        {"optimizer.learning_rate": 1e-3, "train.batch_size": 8},
        {"optimizer.learning_rate": 3e-3, "train.batch_size": 8},
    ]
    assert sweep.run_name(1, runs[1]) == "01-learning_rate=0.003,batch_size=8"


def test_local_sweep_runs_each_config_and_tabulates(tmp_path):
    sweep_file = tmp_path / "two_lrs.py"
    sweep_file.write_text(
        "CONFIG = 'configs/tiny_test.py'\n"
        "def get_sweep():\n"
        "    return [{'optimizer.learning_rate': 1e-3}, {'optimizer.learning_rate': 3e-3}]\n"
    )
    cmd = [
        sys.executable, "-m", "tpu_train.launch.sweep", str(sweep_file), f"--root={tmp_path / 'runs'}",
        *FIXTURE_OVERRIDES, "--config.train.num_steps=2", "--config.train.log_every=1",
        "--config.checkpoint.every_steps=0",
    ]  # fmt: skip
    out = subprocess.run(
        cmd, cwd=ROOT, env=train_env(1), capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    table = (tmp_path / "runs" / "two_lrs" / "results.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| 0")]
    assert len(rows) == 2
    assert "learning_rate=0.001" in rows[0] and "learning_rate=0.003" in rows[1]
    assert all("| 0 | 2 |" in row for row in rows)  # exit code 0, reached step 2
