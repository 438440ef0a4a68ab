"""A workdir is not silently shared or re-purposed: the training lock, and the architecture a workdir keeps."""

import json
import os
import socket
import subprocess
import sys

import pytest
import seqio_fixture_tasks  # noqa: F401  (registers fixture_arithmetic)
from train_helpers import run_train, tiny_config

from tpu_train import checkpoint
from tpu_train.checkpoint import WorkdirBusyError, WorkdirLock
from tpu_train.training.config_checks import ConfigError
from tpu_train.training.loop import train


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_second_run_in_a_held_workdir_is_refused_and_the_lock_is_released(tmp_path):
    with WorkdirLock(tmp_path):
        lock_file = tmp_path / WorkdirLock.FILE
        holder = json.loads(lock_file.read_text())
        assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
        with pytest.raises(WorkdirBusyError, match=rf"in use by pid {os.getpid()}"):
            train(tiny_config(num_steps=1), tmp_path)
        assert not list((tmp_path / checkpoint.CHECKPOINT_DIR).glob("*"))  # nothing was written
    assert not lock_file.exists()


def test_the_command_line_says_so_in_one_line(tmp_path):
    with WorkdirLock(tmp_path):
        result = run_train(tmp_path, "--config.train.num_steps=1", check=False)
    assert result.returncode != 0
    assert "error: " in result.stderr and "in use by pid" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_lock_left_by_a_dead_process_on_this_host_is_taken_over(tmp_path, capsys):
    lock_file = tmp_path / WorkdirLock.FILE
    lock_file.write_text(json.dumps({"host": socket.gethostname(), "pid": _dead_pid()}))
    train(tiny_config(num_steps=2, log_every=1), tmp_path)
    assert "no longer running; taking it over" in capsys.readouterr().out
    assert checkpoint.latest_step(tmp_path) == 2 and not lock_file.exists()


def test_a_lock_held_on_another_host_is_refused(tmp_path):
    (tmp_path / WorkdirLock.FILE).write_text(json.dumps({"host": "elsewhere", "pid": 1}))
    with pytest.raises(WorkdirBusyError, match="on elsewhere"):
        WorkdirLock(tmp_path).acquire()


def test_a_model_config_without_checkpoints_does_not_pin_the_preset(tmp_path):
    """A run that failed before its first checkpoint left model_config.json behind; the next run with
    another preset trains that preset."""
    from tpu_train.model import get_preset

    checkpoint.write_model_config(tmp_path, get_preset("tiny", vocab_size=4096))
    config = tiny_config(num_steps=1)
    config.model.preset = "tiny_gqa"
    train(config, tmp_path)
    cfg = checkpoint.read_model_config(tmp_path)
    assert (
        cfg.num_kv_heads == get_preset("tiny_gqa").num_kv_heads != get_preset("tiny").num_kv_heads
    )


def test_asking_a_trained_workdir_for_another_preset_is_an_error(tmp_path):
    train(tiny_config(num_steps=1), tmp_path)
    config = tiny_config(num_steps=2)
    config.model.preset = "tiny_gqa"
    with pytest.raises(ConfigError, match=r"holds checkpoints of model.preset='tiny'.*'tiny_gqa'"):
        train(config, tmp_path)
    assert checkpoint.latest_step(tmp_path) == 1
    train(tiny_config(num_steps=2), tmp_path)  # the same preset resumes
    assert checkpoint.latest_step(tmp_path) == 2
