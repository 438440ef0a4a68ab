"""Run training on a Cloud TPU VM slice with `gcloud`, relaunching after preemption.

    ./launch.sh tpu --name=my-v4 --zone=us-central2-b --config=configs/X.py --workdir=gs://BUCKET/run \
        [--config.k=v ...] [--project=P] [--create --accelerator=v4-32 --version=tpu-ubuntu2204-base]
        [--retries=3] [--dry_run]

One attempt:
  1. (with --create, or after a preemption) create the TPU VM;
  2. copy the repository (tracked files, as a tarball) to every worker;
  3. install it into a virtualenv on every worker (`pip install -e .[tpu]`);
  4. start training on all workers at once under nohup, one log per worker
     (`jax.distributed.initialize()` finds its peers on TPU VMs without arguments: `--distributed`);
  5. stream worker 0's log until training ends, then read its exit status.
A failed attempt whose TPU was preempted (or vanished) is retried up to --retries times; training resumes
from the last checkpoint in the workdir, so the workdir should be on Cloud Storage (gs://).
`--dry_run` prints the exact commands of one attempt and runs nothing.
"""

from __future__ import annotations

import dataclasses
import re
import shlex
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

REMOTE_DIR = "tpu_train"
# gcloud's accelerator-type prefixes and how their sizes count: TensorCores (2 per chip) on v2-v4 and
# v5p, chips on v5e (which gcloud spells v5litepod) and v6e.
ACCELERATORS = {"v2": 2, "v3": 2, "v4": 2, "v5p": 2, "v5litepod": 1, "v6e": 1}
LOG = "$HOME/tpu_train_logs/train-worker$(hostname).log"
EXIT_FILE = "$HOME/tpu_train_logs/exit-code"


@dataclasses.dataclass(frozen=True)
class TpuJob:
    name: str
    zone: str
    config: str
    workdir: str
    overrides: tuple[str, ...] = ()
    project: str | None = None
    accelerator: str = "v4-8"
    version: str = "tpu-ubuntu2204-base"


def _gcloud(job: TpuJob, verb: str, *args: str) -> list[str]:
    cmd = ["gcloud", "compute", "tpus", "tpu-vm", verb, *args, f"--zone={job.zone}"]
    return cmd + ([f"--project={job.project}"] if job.project else [])


def create_command(job: TpuJob) -> list[str]:
    return _gcloud(
        job, "create", job.name, f"--accelerator-type={job.accelerator}", f"--version={job.version}"
    )


def delete_command(job: TpuJob) -> list[str]:
    return _gcloud(job, "delete", job.name, "--quiet")


def state_command(job: TpuJob) -> list[str]:
    return _gcloud(job, "describe", job.name, "--format=value(state)")


def copy_command(job: TpuJob, tarball: str) -> list[str]:
    return _gcloud(job, "scp", tarball, f"{job.name}:~/{REMOTE_DIR}.tar.gz", "--worker=all")


def ssh_command(job: TpuJob, remote: str, worker: str = "all") -> list[str]:
    return _gcloud(job, "ssh", job.name, f"--worker={worker}", f"--command={remote}")


def install_script() -> str:
    return (
        f"set -e; rm -rf ~/{REMOTE_DIR} && mkdir -p ~/{REMOTE_DIR} ~/tpu_train_logs && "
        f"tar -xzf ~/{REMOTE_DIR}.tar.gz -C ~/{REMOTE_DIR} && cd ~/{REMOTE_DIR} && "
        "python3 -m venv .venv && .venv/bin/pip install -q --upgrade pip && "
        ".venv/bin/pip install -q -e '.[tpu]'"
    )


def train_script(job: TpuJob) -> str:
    args = " ".join(
        shlex.quote(a)
        for a in (
            f"--config={job.config}",
            f"--workdir={job.workdir}",
            "--distributed",
            *job.overrides,
        )
    )
    run = f".venv/bin/python -m tpu_train.train {args}"
    # The exit code lands in a file so the launcher can tell success from a crash after the log ends.
    return (
        f"cd ~/{REMOTE_DIR} && rm -f {EXIT_FILE} && "
        f"nohup sh -c '{run}; echo $? > {EXIT_FILE}' > {LOG} 2>&1 < /dev/null &"
    )


def stream_script() -> str:
    """Follows worker 0's log until its exit-code file appears, then prints the code last."""
    return (
        f"while [ ! -f {EXIT_FILE} ]; do sleep 2; done & waiter=$!; "
        f"tail -n +1 -F {LOG} --pid=$waiter; echo tpu_train_exit_code=$(cat {EXIT_FILE})"
    )


def attempt_commands(job: TpuJob, tarball: str, create: bool) -> list[list[str]]:
    return [
        *([create_command(job)] if create else []),
        copy_command(job, tarball),
        ssh_command(job, install_script()),
        ssh_command(job, train_script(job)),
        ssh_command(job, stream_script(), worker="0"),
    ]


def make_tarball(repo: Path, out: Path) -> Path:
    """The repository's tracked files (what `git ls-files` lists), as a gzipped tarball."""
    files = subprocess.run(
        ["git", "ls-files", "-z"], cwd=repo, capture_output=True, check=True
    ).stdout.split(b"\0")
    with tarfile.open(out, "w:gz") as tar:
        for f in filter(None, files):
            tar.add(repo / f.decode(), arcname=f.decode())
    return out


Runner = Callable[[list[str]], tuple[int, str]]


def run_streaming(cmd: list[str]) -> tuple[int, str]:
    """Runs a command, echoing its output live; returns (exit code, output)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in proc.stdout:
        sys.stdout.write(line)
        lines.append(line)
    return proc.wait(), "".join(lines)


def launch(
    job: TpuJob, *, create: bool, retries: int, tarball: str, run: Runner = run_streaming
) -> int:
    """Runs attempts until training exits 0 or retries run out; returns the final training exit code."""
    needs_create = create
    for attempt in range(retries + 1):
        print(f"[tpu] attempt {attempt + 1}/{retries + 1} on {job.name} ({job.zone})", flush=True)
        code = 0
        for cmd in attempt_commands(job, tarball, needs_create):
            code, out = run(cmd)
            if code != 0:
                break
        else:
            code = _training_exit_code(out)
            if code == 0:
                print("[tpu] training finished", flush=True)
                return 0
        code_state, state = run(state_command(job))
        state = state.strip() if code_state == 0 else "NOT_FOUND"
        print(f"[tpu] attempt failed (exit {code}); TPU state: {state}", flush=True)
        if state in ("PREEMPTED", "TERMINATED"):
            run(delete_command(job))
            needs_create = True
        elif state == "NOT_FOUND":
            needs_create = True
        elif state != "READY":
            time.sleep(30)
        else:
            needs_create = False
    print(f"[tpu] giving up after {retries + 1} attempts", flush=True)
    return code or 1


def _training_exit_code(stream_output: str) -> int:
    for line in reversed(stream_output.splitlines()):
        if line.startswith("tpu_train_exit_code="):
            value = line.split("=", 1)[1].strip()
            return int(value) if value.lstrip("-").isdigit() else 1
    return 1


def parse_args(argv: Sequence[str]) -> tuple[TpuJob, dict]:
    import argparse

    p = argparse.ArgumentParser(prog="./launch.sh tpu", description=__doc__.split("\n\n")[0])
    p.add_argument("--name", required=True, help="TPU VM name")
    p.add_argument("--zone", required=True)
    p.add_argument("--project")
    p.add_argument("--config", required=True, help="configs/X.py (path inside the repository)")
    p.add_argument("--workdir", required=True, help="run directory; use gs://BUCKET/... on TPU VMs")
    p.add_argument("--create", action="store_true", help="create the TPU VM first")
    p.add_argument(
        "--accelerator", default="v4-8", help="accelerator type for --create, e.g. v5p-64"
    )
    p.add_argument(
        "--version", default="tpu-ubuntu2204-base", help="TPU VM software version for --create"
    )
    p.add_argument("--retries", type=int, default=3, help="relaunches after preemption")
    p.add_argument("--dry_run", action="store_true", help="print the gcloud commands, run nothing")
    args, rest = p.parse_known_args(argv)
    bad = [a for a in rest if not a.startswith("--config.")]
    if bad:
        p.error(
            f"unrecognised arguments: {' '.join(bad)} (config overrides look like --config.k=v)"
        )
    job = TpuJob(
        name=args.name,
        zone=args.zone,
        project=args.project,
        config=args.config,
        workdir=args.workdir,
        overrides=tuple(rest),
        accelerator=args.accelerator,
        version=args.version,
    )
    return job, dict(create=args.create, retries=args.retries, dry_run=args.dry_run)


class LaunchError(ValueError):
    """A job that cannot run as given; the message names the flag and what to change."""


def check_job(job: TpuJob, repo: Path) -> TpuJob:
    """Refuses, before any gcloud command, what would only fail on the workers (or lose the run);
    returns the job with `config` as a path relative to the repository, as the workers see it."""
    config = Path(job.config)
    if config.is_absolute():
        try:
            config = config.resolve().relative_to(repo)
        except ValueError:
            raise LaunchError(
                f"--config={job.config}: outside the repository {repo}; the workers receive only "
                "its tracked files, so put the config under configs/"
            ) from None
    if not (repo / config).is_file():
        raise LaunchError(
            f"--config={job.config}: no such file in {repo} (configs are paths inside the "
            "repository, e.g. configs/llama2_7b_infinitymath.py)"
        )
    tracked = subprocess.run(
        ["git", "ls-files", "--error-unmatch", str(config)], cwd=repo, capture_output=True
    )
    if tracked.returncode != 0:
        raise LaunchError(
            f"--config={job.config}: not tracked by git, so it would not be copied to the workers; "
            f"git add {config} (a commit is not needed)"
        )
    match = re.fullmatch(r"([a-z0-9]+)-(\d+)", job.accelerator)
    if not match or match.group(1) not in ACCELERATORS:
        raise LaunchError(
            f"--accelerator={job.accelerator}: not a TPU accelerator type; expected one of "
            f"{', '.join(f'{g}-N' for g in ACCELERATORS)} (v5e is v5litepod-N), e.g. v4-8, v5p-64"
        )
    per_chip = ACCELERATORS[match.group(1)]
    if int(match.group(2)) == 0 or int(match.group(2)) % per_chip:
        raise LaunchError(
            f"--accelerator={job.accelerator}: {match.group(1)} sizes count TensorCores, "
            f"{per_chip} per chip (e.g. {match.group(1)}-8)"
        )
    if not job.workdir.startswith("gs://"):
        raise LaunchError(
            f"--workdir={job.workdir}: a TPU VM run needs a Cloud Storage workdir "
            "(gs://BUCKET/runs/NAME): every worker writes its part of each checkpoint there, and "
            "it must outlive a preempted VM to resume from"
        )
    return dataclasses.replace(job, config=config.as_posix())


def main(argv: Sequence[str] | None = None) -> int:
    job, opts = parse_args(sys.argv[1:] if argv is None else argv)
    repo = Path(__file__).resolve().parents[2]
    try:
        job = check_job(job, repo)
    except LaunchError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if opts["dry_run"]:
        for cmd in attempt_commands(job, f"/tmp/{REMOTE_DIR}.tar.gz", opts["create"]):
            print(shlex.join(cmd))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        tarball = make_tarball(repo, Path(tmp) / f"{REMOTE_DIR}.tar.gz")
        return launch(job, create=opts["create"], retries=opts["retries"], tarball=str(tarball))


if __name__ == "__main__":
    sys.exit(main())
