"""Sandboxed execution of model-written programs on a pool of warm workers.

Why this shape: a fresh interpreter per program costs hundreds of milliseconds (importing
sympy), while ``exec`` in a reused process leaks state between programs and cannot be stopped
reliably. A warm worker that forks one confined child per program gets both speed and
isolation; the worker enforces the deadline with SIGKILL and only strings come back.

Usage::

    with Executor(ExecutorConfig(timeout_s=5)) as ex:
        results = ex.run(["print(1 + 1)", "ans = 2 ** 10"])
"""

from __future__ import annotations

import collections
import dataclasses
import os
import selectors
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence

from tpu_train.evaluation import isolation, protocol

VERDICTS = (
    "ok",
    "syntax_error",
    "runtime_error",
    "timeout",
    "cpu_limit",
    "memory_limit",
    "output_limit",
    "file_limit",
    "crash",
    "sandbox_error",
)
_STARTUP_TIMEOUT_S = 120.0
_WORKER_GRACE_S = 10.0
_WORKER_ENV = {
    "PATH": "/usr/bin:/bin",
    "LANG": "C.UTF-8",
    "OPENBLAS_NUM_THREADS": "1",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "NUMEXPR_NUM_THREADS": "1",
    "PYTHONDONTWRITEBYTECODE": "1",
}
_BOOTSTRAP = (
    "import sys; sys.path.insert(0, sys.argv[2]); "
    "from tpu_train.evaluation.worker import main; main()"
)


class SandboxUnavailable(RuntimeError):
    """The strongest isolation available is below the configured minimum."""


@dataclasses.dataclass(frozen=True)
class ExecutorConfig:
    """Limits and pool settings. ``cpu_s`` defaults to the wall-clock timeout plus one second.

    ``min_isolation`` defaults to ``landlock``, the weakest level that confines files (below it
    a program can write wherever its uid can); ``max_isolation`` caps the levels tried, which
    is how the tests exercise the weaker ones. ``file_bytes`` caps each file a program writes,
    ``disk_bytes`` all of them together (the tmpfs of the ``namespaced`` level; at ``landlock``
    the working directory is read-only instead).
    """

    timeout_s: float = 5.0
    memory_bytes: int = 2 << 30
    output_bytes: int = 64 << 10
    workers: int = 2
    min_isolation: str = "landlock"
    allow_weaker: bool = False
    max_isolation: str = "namespaced"
    cpu_s: float | None = None
    file_bytes: int = 16 << 20
    disk_bytes: int = 64 << 20
    open_files: int = 64
    preload_math_verify: bool = False

    def __post_init__(self) -> None:
        isolation.level_rank(self.min_isolation)
        isolation.level_rank(self.max_isolation)
        if self.timeout_s <= 0 or self.workers < 1 or self.output_bytes < 1:
            raise ValueError(f"invalid executor config: {self}")
        if self.disk_bytes < 1 << 20:
            raise ValueError(f"disk_bytes must be at least 1 MiB: {self}")


@dataclasses.dataclass(frozen=True)
class ExecutionResult:
    """What happened to one program. Every field is plain data produced by the worker."""

    verdict: str
    answer: str | None
    answer_source: str | None
    stdout: str
    error_type: str | None
    isolation_level: str
    layers: tuple[str, ...]
    seconds: float

    def to_json(self) -> dict:
        return dataclasses.asdict(self) | {"layers": list(self.layers)}


@dataclasses.dataclass
class _Worker:
    process: subprocess.Popen
    buffer: protocol.FrameBuffer
    level: str
    layers: tuple[str, ...]
    failures: tuple[str, ...]


class Executor:
    """Context manager owning a pool of warm sandbox workers."""

    def __init__(self, config: ExecutorConfig = ExecutorConfig()) -> None:
        self.config = config
        self._base = tempfile.mkdtemp(prefix="tpu_train_sandbox_")
        self._spawned = 0
        self._workers: list[_Worker] = []
        try:
            self._workers = [self._spawn() for _ in range(config.workers)]
            self._check_level()
        except BaseException:
            self.close()
            raise

    # -- pool management -------------------------------------------------------------------
    def _worker_config(self) -> dict:
        cfg = self.config
        self._spawned += 1
        return {
            "timeout_s": cfg.timeout_s,
            "cpu_s": cfg.cpu_s if cfg.cpu_s is not None else cfg.timeout_s + 1,
            "memory_bytes": cfg.memory_bytes,
            "file_bytes": cfg.file_bytes,
            "disk_bytes": cfg.disk_bytes,
            "open_files": cfg.open_files,
            "output_bytes": cfg.output_bytes,
            "max_level": cfg.max_isolation,
            "workdir": os.path.join(self._base, f"w{self._spawned}"),
            "preload": ["math_verify"] if cfg.preload_math_verify else [],
        }

    def _spawn(self) -> _Worker:
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        config = self._worker_config()
        log_path = config["workdir"] + ".log"
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-I", "-c", _BOOTSTRAP, _json(config), root],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                env=dict(_WORKER_ENV),
                cwd=self._base,
                close_fds=True,
            )
        hello = _read_with_deadline(process, _STARTUP_TIMEOUT_S)
        if hello is None or hello.get("type") != "hello":
            _kill(process)
            with open(log_path, errors="replace") as log:
                tail = log.read()[-2000:]
            raise SandboxUnavailable(f"sandbox worker failed to start: {tail or hello!r}")
        os.set_blocking(process.stdout.fileno(), False)
        return _Worker(
            process=process,
            buffer=protocol.FrameBuffer(),
            level=protocol.string_field(hello, "level"),
            layers=tuple(str(x) for x in hello.get("layers", [])),
            failures=tuple(str(x) for x in hello.get("failures", [])),
        )

    def _check_level(self) -> None:
        weakest = min(self._workers, key=lambda w: isolation.level_rank(w.level))
        too_weak = isolation.level_rank(weakest.level) < isolation.level_rank(
            self.config.min_isolation
        )
        if too_weak and not self.config.allow_weaker:
            raise SandboxUnavailable(
                f"isolation level {weakest.level!r} is below the required "
                f"{self.config.min_isolation!r}; failed probes: {list(weakest.failures)}. "
                "Pass allow_weaker=True (--allow_weaker) to run anyway."
            )

    @property
    def isolation_level(self) -> str:
        """Weakest level across the pool (all workers normally agree)."""
        return min((w.level for w in self._workers), key=isolation.level_rank)

    @property
    def layers(self) -> tuple[str, ...]:
        return self._workers[0].layers if self._workers else ()

    @property
    def probe_failures(self) -> tuple[str, ...]:
        return self._workers[0].failures if self._workers else ()

    def _replace(self, index: int) -> None:
        old = self._workers[index]
        _kill(old.process)
        self._workers[index] = self._spawn()

    # -- running ---------------------------------------------------------------------------
    def run(self, programs: Sequence[str], progress=None) -> list[ExecutionResult]:
        """Execute every program in its own child; results come back in input order."""
        requests = [{"kind": "program", "source": str(p)} for p in programs]
        return self._dispatch(requests, progress)

    def call(
        self, function: str, args_list: Sequence[Sequence[str]], timeout_s: float | None = None
    ) -> list[ExecutionResult]:
        """Run a function registered in the worker (e.g. ``latex_equal``) once per arg list."""
        requests = [
            {"kind": "call", "function": function, "args": [str(a) for a in args]}
            | ({"timeout_s": timeout_s} if timeout_s else {})
            for args in args_list
        ]
        return self._dispatch(requests, None)

    def _dispatch(self, requests: list[dict], progress) -> list[ExecutionResult]:
        if not self._workers:
            raise RuntimeError("executor is closed")
        results: list[ExecutionResult | None] = [None] * len(requests)
        pending = collections.deque(range(len(requests)))
        busy: dict[int, tuple[int, float]] = {}  # worker index -> (request index, deadline)
        selector = selectors.DefaultSelector()
        grace = self.config.timeout_s + _WORKER_GRACE_S
        try:
            while pending or busy:
                for w_index in range(len(self._workers)):
                    if w_index in busy or not pending:
                        continue
                    r_index = pending.popleft()
                    worker = self._workers[w_index]
                    try:
                        _send(worker.process, requests[r_index] | {"id": r_index})
                    except OSError:
                        results[r_index] = self._lost(w_index, "WorkerDied")
                        continue
                    timeout = requests[r_index].get("timeout_s") or self.config.timeout_s
                    busy[w_index] = (r_index, time.monotonic() + timeout + grace)
                    selector.register(worker.process.stdout, selectors.EVENT_READ, w_index)
                if not busy:
                    continue
                next_deadline = min(deadline for _, deadline in busy.values())
                events = selector.select(max(0.0, next_deadline - time.monotonic()))
                for key, _ in events:
                    w_index = key.data
                    r_index, _ = busy[w_index]
                    outcome = self._read(w_index, r_index)
                    if outcome is None:
                        continue
                    selector.unregister(key.fileobj)
                    del busy[w_index]
                    results[r_index] = outcome
                    if progress is not None:
                        progress(1)
                now = time.monotonic()
                for w_index, (r_index, deadline) in list(busy.items()):
                    if now > deadline:  # a worker stuck past any child deadline: replace it
                        selector.unregister(self._workers[w_index].process.stdout)
                        del busy[w_index]
                        results[r_index] = self._lost(w_index, "WorkerUnresponsive")
                        if progress is not None:
                            progress(1)
        finally:
            selector.close()
        return [r for r in results if r is not None]

    def _read(self, w_index: int, r_index: int) -> ExecutionResult | None:
        worker = self._workers[w_index]
        try:
            data = os.read(worker.process.stdout.fileno(), 1 << 20)
        except BlockingIOError:
            return None
        if not data:
            return self._lost(w_index, "WorkerDied", verdict="crash")
        try:
            messages = worker.buffer.feed(data)
        except protocol.ProtocolError:
            return self._lost(w_index, "ProtocolError")
        if not messages:
            return None
        message = messages[0]
        try:
            if message.get("id") != r_index:
                raise protocol.ProtocolError(f"reply for {message.get('id')!r}, not {r_index}")
            return self._result(message, worker)
        except (protocol.ProtocolError, ValueError, TypeError):
            return self._lost(w_index, "ProtocolError")

    def _result(self, message: dict, worker: _Worker) -> ExecutionResult:
        verdict = protocol.string_field(message, "verdict")
        if verdict not in VERDICTS:
            raise protocol.ProtocolError(f"unknown verdict {verdict!r}")
        seconds = message.get("seconds", 0.0)
        if not isinstance(seconds, int | float):
            raise protocol.ProtocolError("seconds is not a number")
        return ExecutionResult(
            verdict=verdict,
            answer=protocol.string_field(message, "answer", optional=True),
            answer_source=protocol.string_field(message, "answer_source", optional=True),
            stdout=protocol.string_field(message, "stdout", optional=True) or "",
            error_type=protocol.string_field(message, "error_type", optional=True),
            isolation_level=worker.level,
            layers=worker.layers,
            seconds=float(seconds),
        )

    def _lost(self, w_index: int, reason: str, verdict: str = "sandbox_error") -> ExecutionResult:
        """The worker died or misbehaved: the request gets a verdict and the worker is replaced."""
        worker = self._workers[w_index]
        result = ExecutionResult(
            verdict=verdict,
            answer=None,
            answer_source=None,
            stdout="",
            error_type=reason,
            isolation_level=worker.level,
            layers=worker.layers,
            seconds=0.0,
        )
        self._replace(w_index)
        return result

    def close(self) -> None:
        """Stop the workers (closing stdin ends them; SIGKILL if they linger) and clean up."""
        for worker in self._workers:
            _kill(worker.process, gentle=True)
        self._workers = []
        shutil.rmtree(self._base, ignore_errors=True)

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_workers", None):
            self.close()


def _json(obj: dict) -> str:
    import json

    return json.dumps(obj)


def _send(process: subprocess.Popen, message: dict) -> None:
    fd = process.stdin.fileno()
    protocol.write_frame(fd, message)


def _read_with_deadline(process: subprocess.Popen, timeout_s: float) -> dict | None:
    """Read the worker's first frame, giving up after ``timeout_s``."""
    buffer = protocol.FrameBuffer()
    deadline = time.monotonic() + timeout_s
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if not selector.select(deadline - time.monotonic()):
                continue
            data = os.read(process.stdout.fileno(), 1 << 16)
            if not data:
                return None
            messages = buffer.feed(data)
            if messages:
                return messages[0]
    return None


def _kill(process: subprocess.Popen, gentle: bool = False) -> None:
    if gentle and process.poll() is None:
        try:
            process.stdin.close()
            process.wait(timeout=2)
        except (OSError, subprocess.TimeoutExpired):
            pass
    if process.poll() is None:
        process.kill()
    process.wait()
    for stream in (process.stdin, process.stdout):
        try:
            if stream is not None:
                stream.close()
        except OSError:
            pass
