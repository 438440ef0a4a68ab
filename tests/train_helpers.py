"""Helpers for the training tests: the tiny config pointed at the fixture SeqIO task, and subprocess runs."""

import importlib.util
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax

from tpu_train import checkpoint

ROOT = Path(__file__).resolve().parents[1]
FIXTURE_OVERRIDES = [
    "--config.data.mixture=fixture_arithmetic",
    "--config.data.registry_modules=('seqio_fixture_tasks',)",
]


def load_config(name: str):
    """configs/NAME.py's get_config()."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "configs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def tiny_config(**train):
    config = load_config("tiny_test")
    config.data.mixture = "fixture_arithmetic"
    config.data.registry_modules = ("seqio_fixture_tasks",)
    config.train.update(train)
    return config


def train_command(workdir, *overrides) -> list[str]:
    """`python -m tpu_train.train` on configs/tiny_test.py with the fixture task."""
    return [
        sys.executable,
        "-m",
        "tpu_train.train",
        f"--config={ROOT / 'configs' / 'tiny_test.py'}",
        f"--workdir={workdir}",
        *FIXTURE_OVERRIDES,
        *overrides,
    ]


def train_env(devices: int = 1, env: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment with the tests' modules importable, `devices` fake CPU devices,
    and `env` on top."""
    return {
        **os.environ,
        "PYTHONPATH": str(ROOT / "tests"),
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
        **(env or {}),
    }


def run_command(
    command: list[str],
    devices: int = 1,
    check: bool = True,
    env: dict[str, str] | None = None,
    timeout: float = 600,
):
    """Runs a command of the project to completion (or death) on `devices` fake CPU devices (with
    `env` added to the environment) and returns the CompletedProcess (`timeout` s at most, 10 minutes
    by default: a hang fails the test)."""
    return subprocess.run(
        command,
        cwd=ROOT,
        env=train_env(devices, env),
        capture_output=True,
        text=True,
        check=check,
        timeout=timeout,
    )


def start_command(command: list[str], devices: int = 1) -> subprocess.Popen:
    """Starts a command of the project; stdout and stderr merged, text mode."""
    return subprocess.Popen(
        command,
        cwd=ROOT,
        env=train_env(devices),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def start_processes(
    command: list[str], processes: int = 2, devices: int = 1
) -> list[subprocess.Popen]:
    """Starts `command` as a multi-controller job of `processes` local processes of `devices` fake
    CPU devices each (coordinator on loopback), as every worker of a slice runs it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return [
        start_command(
            [
                *command,
                f"--coordinator_address=127.0.0.1:{port}",
                f"--num_processes={processes}",
                f"--process_id={i}",
            ],
            devices,
        )
        for i in range(processes)
    ]


def finish_processes(procs: list[subprocess.Popen], timeout: float = 400) -> list[str]:
    """Waits for a job's processes; asserts they all exit 0 within `timeout` s in all (a hang fails
    the test, and kills them) and returns their outputs (stdout and stderr merged), by process index."""
    deadline = time.monotonic() + timeout
    outs = []
    try:
        for p in procs:
            outs.append(p.communicate(timeout=max(1.0, deadline - time.monotonic()))[0])
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        raise AssertionError(f"the job did not finish within {timeout} s") from None
    for p, out in zip(procs, outs, strict=True):
        assert p.returncode == 0, out[-3000:]
    return outs


def run_processes(command: list[str], processes: int = 2, devices: int = 1) -> list[str]:
    """Runs `command` as a multi-controller job (`start_processes`) to its end (`finish_processes`)."""
    return finish_processes(start_processes(command, processes, devices))


def run_train(workdir, *overrides, devices: int = 1, check: bool = True):
    """Runs a training subprocess to completion (or death) and returns the CompletedProcess."""
    return run_command(train_command(workdir, *overrides), devices, check)


def start_train(workdir, *overrides, devices: int = 1) -> subprocess.Popen:
    """Starts a training subprocess; stdout and stderr merged, text mode."""
    return start_command(train_command(workdir, *overrides), devices)


def final_params(workdir):
    """The latest step's model parameters (a LoRA workdir's merged into its base) on the host."""
    cfg = checkpoint.read_model_config(workdir)
    params, _, step = checkpoint.restore_model_params(workdir, cfg)
    return jax.device_get(params), step


def metric_rows(workdir):
    import json

    return [json.loads(line) for line in (Path(workdir) / "metrics.jsonl").read_text().splitlines()]
