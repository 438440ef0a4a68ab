"""The warm worker: pre-imports the maths stack once, then forks one confined child per task.

Started by :class:`tpu_train.evaluation.executor.Executor` as a fresh interpreter with a
scrubbed environment. It speaks frames (:mod:`tpu_train.evaluation.protocol`) on private
copies of its stdin/stdout and points descriptors 0-2 at /dev/null, so stray library output
can never corrupt the channel. It never starts threads, which keeps ``fork`` safe.
"""

from __future__ import annotations

import fcntl
import gc
import json
import math
import os
import select
import signal
import sys
import time

from tpu_train.evaluation import child, isolation, protocol, syscalls

MAX_RESULT_BYTES = 1 << 20
_HIGH_FD = 100


def _reached(cpu_s: float, limit_s: float) -> bool:
    """Whether a child's CPU time reached ``limit_s``, as far as ``wait4`` can tell: the
    kernel enforces RLIMIT_CPU on its own sampled clock, and a child it killed at 1 s can
    show 0.9 s in its rusage. A quarter of the limit (at least half a second) of slack still
    tells a program that signalled itself at the start from one that ran out of time."""
    return cpu_s >= limit_s - max(0.5, limit_s / 4)


def _preload(extra: list[str]) -> dict:
    """Import and exercise the maths stack so each forked child starts warm."""
    import decimal
    import fractions
    import itertools
    import math

    import numpy
    import sympy

    x = sympy.Symbol("x")
    sympy.solve(x**2 - 4, x)
    sympy.simplify(sympy.sin(x) ** 2 + sympy.cos(x) ** 2)
    sympy.Rational(1, 3) + sympy.sqrt(2)
    numpy.linalg.solve(numpy.eye(2), numpy.ones(2))
    fractions.Fraction(1, 3) + math.comb(5, 2)
    decimal.Decimal("0.1") * 3
    list(itertools.permutations(range(3)))
    functions = {}
    if "math_verify" in extra:
        from tpu_train.evaluation import latex

        latex.warm_up()
        functions["latex_equal"] = latex.latex_equal
    return functions


_HUGE = 2 << 20


def _collapse_into_huge_pages() -> int:
    """Back the warm heap with transparent huge pages; returns how many regions collapsed.

    Forking copies one page-table entry per 4 KiB page of the parent, and tearing the child
    down frees them again; with numpy and sympy loaded that is most of the per-program cost on
    a VM. Collapsing the heap into 2 MiB pages (``MADV_COLLAPSE``, Linux 6.1+) leaves 512x
    fewer entries to copy. Purely an optimisation: failures are ignored.
    """
    collapsed = 0
    with open("/proc/self/maps") as maps:
        regions = [line.split() for line in maps]
    for fields in regions:
        path = fields[5] if len(fields) > 5 else ""
        if not fields[1].startswith("rw") or path not in ("", "[heap]"):
            continue
        start, end = (int(x, 16) for x in fields[0].split("-"))
        start = (start + _HUGE - 1) & ~(_HUGE - 1)
        end &= ~(_HUGE - 1)
        if end > start:
            syscalls.madvise(start, end - start, syscalls.MADV_HUGEPAGE)
            collapsed += syscalls.madvise(start, end - start, syscalls.MADV_COLLAPSE)
    return collapsed


def _high(fd: int) -> int:
    """Move ``fd`` to a descriptor >= 100, out of the way of the child's 0-4."""
    high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, _HIGH_FD)
    os.close(fd)
    return high


def _pipe_high() -> tuple[int, int]:
    read_end, write_end = os.pipe()
    return _high(read_end), _high(write_end)


def _start_child(
    plan: isolation.Plan, task, null_fd: int, ruleset_fd: int | None, fork=os.fork
) -> tuple[int, int, int]:
    """Fork a confined child running ``task``; return (pid, stdout reader, result reader).

    All descriptor shuffling that can happen before the fork does (see :func:`_pipe_high`):
    the child only dup2()s into 0-4, closes the rest and confines itself.
    """
    out_r, out_w = _pipe_high()
    res_r, res_w = _pipe_high()
    pid = fork()
    if pid == 0:  # pragma: no cover - child side, exercised through the executor tests
        try:
            layout = [null_fd, out_w, null_fd, res_w]
            if ruleset_fd is not None:
                layout.append(ruleset_fd)
            for target, source in enumerate(layout):
                os.dup2(source, target)
            os.closerange(len(layout), 1 << 20)
            isolation.confine_child(plan, 4 if ruleset_fd is not None else None)
        except BaseException:
            os._exit(child.EXIT_NO_FRAME + 1)
        child.child_main(task, 1)
    os.close(out_w)
    os.close(res_w)
    return pid, out_r, res_r


def _collect(
    pid: int, out_r: int, res_r: int, timeout_s: float, output_bytes: int, soft_cpu_s: float
) -> dict:
    """Read a child's output under the deadline and turn its fate into a verdict.

    ``soft_cpu_s`` is the child's soft CPU limit (the hard one is a second above it).
    """
    start = time.monotonic()
    deadline = start + timeout_s
    pidfd = os.pidfd_open(pid)
    poller = select.poll()
    for fd in (out_r, res_r, pidfd):
        poller.register(fd, select.POLLIN)
    buffers = {out_r: bytearray(), res_r: bytearray()}
    open_pipes = {out_r, res_r}
    exited = False
    killed_for = None
    while killed_for is None and not (exited and not open_pipes):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            killed_for = "timeout"
            break
        for fd, _ in poller.poll(max(1, int(remaining * 1000))):
            if fd == pidfd:
                exited = True
                poller.unregister(pidfd)
                continue
            data = os.read(fd, 1 << 16)
            if not data:
                poller.unregister(fd)
                open_pipes.discard(fd)
                continue
            buffers[fd] += data
            if len(buffers[out_r]) > output_bytes:
                killed_for = "output_limit"
            elif len(buffers[res_r]) > MAX_RESULT_BYTES:
                killed_for = "result_limit"
    if killed_for is not None:
        os.kill(pid, signal.SIGKILL)
    _, status, usage = os.wait4(pid, 0)
    seconds = time.monotonic() - start
    for fd in (out_r, res_r, pidfd):
        os.close(fd)
    stdout = bytes(buffers[out_r][:output_bytes]).decode("utf-8", errors="replace")
    cpu = (usage.ru_utime + usage.ru_stime, soft_cpu_s, soft_cpu_s + 1)
    result = _verdict(killed_for, status, cpu, bytes(buffers[res_r]), stdout)
    result["stdout"] = stdout
    result["seconds"] = seconds
    return result


def _signal_verdict(sig: int, cpu_s: float, soft_cpu_s: float, hard_cpu_s: float) -> dict:
    # A program can send itself SIGXCPU: only a child that used its CPU time ran out of it.
    if sig == signal.SIGXCPU and _reached(cpu_s, soft_cpu_s):
        return {"verdict": "cpu_limit"}
    if sig == signal.SIGXFSZ:
        return {"verdict": "file_limit"}
    if sig == signal.SIGKILL and _reached(cpu_s, hard_cpu_s):
        return {"verdict": "cpu_limit"}  # ignored SIGXCPU, then hit the hard limit
    return {"verdict": "crash", "error_type": signal.Signals(sig).name}


def _split_lines(frame_bytes: bytes) -> tuple[dict, dict | None]:
    """(declaration, report) from the child's result bytes; ProtocolError when malformed.

    The declaration is the first line, written before the program ran; everything after it is
    the report and must be exactly one more JSON line (the program may have written to the
    descriptor, so nothing after the first line is taken on trust).
    """
    head, newline, rest = frame_bytes.partition(b"\n")
    if not newline:
        raise protocol.ProtocolError("no declaration line")
    declaration = protocol.decode(head)
    if not rest:
        return declaration, None
    body, newline, tail = rest.partition(b"\n")
    if not newline or tail:
        raise protocol.ProtocolError("report is not exactly one line")
    return declaration, protocol.decode(body)


def _declared_channels(declaration: dict) -> list[str]:
    sources = declaration.get("channels")
    if not isinstance(sources, list) or not all(isinstance(x, str) for x in sources):
        raise protocol.ProtocolError("declaration without a channel list")
    return sources


def _verdict(
    killed_for: str | None,
    status: int,
    cpu: tuple[float, float, float],
    frame_bytes: bytes,
    stdout: str,
) -> dict:
    """The verdict from what the worker saw (kill reason, exit status, CPU time, stdout) and
    what the child wrote, checked against the child's pre-run declaration."""
    if killed_for in ("timeout", "output_limit"):
        return {"verdict": killed_for}
    if killed_for == "result_limit":
        return {"verdict": "runtime_error", "error_type": "ResultTooLarge"}
    if os.WIFSIGNALED(status):
        return _signal_verdict(os.WTERMSIG(status), *cpu)
    code = os.waitstatus_to_exitcode(status)
    if code == child.EXIT_NO_FRAME + 1:
        return {"verdict": "sandbox_error", "error_type": "ConfinementFailed"}
    try:
        declaration, report = _split_lines(frame_bytes)
        declared = protocol.string_field(declaration, "status")
        if declared == "syntax":  # decided before the program ran; nothing after it counts
            error_type = protocol.string_field(declaration, "error_type", optional=True)
            return {"verdict": "syntax_error", "error_type": error_type}
        if declared != "compiled":
            raise protocol.ProtocolError(f"declaration status {declared!r}")
        sources = _declared_channels(declaration)
        if code != 0:
            return {"verdict": "runtime_error", "error_type": f"ExitStatus{code}"}
        if report is None:
            raise protocol.ProtocolError("no report line")
        status_name = protocol.string_field(report, "status")
        error_type = protocol.string_field(report, "error_type", optional=True)
        answer = protocol.string_field(report, "answer", optional=True)
        source = protocol.string_field(report, "answer_source", optional=True)
        if status_name == "ok" and (answer is None) != (source is None):
            raise protocol.ProtocolError("answer and answer_source disagree")
        if source is not None and source not in sources:
            raise protocol.ProtocolError(f"answer_source {source!r} was not declared")
    except protocol.ProtocolError:
        if code != 0:
            return {"verdict": "runtime_error", "error_type": f"ExitStatus{code}"}
        return {"verdict": "runtime_error", "error_type": "InvalidResultFrame"}
    if status_name == "error":
        if error_type == "MemoryError":
            return {"verdict": "memory_limit", "error_type": error_type}
        return {"verdict": "runtime_error", "error_type": error_type}
    if status_name != "ok":
        return {"verdict": "runtime_error", "error_type": "InvalidResultFrame"}
    if answer is None:  # the stdout channel is the worker's own reading, never the child's
        lines = [line.strip() for line in stdout.splitlines() if line.strip()]
        if lines:
            answer, source = lines[-1][: child.MAX_ANSWER_CHARS], "stdout"
    return {"verdict": "ok", "answer": answer, "answer_source": source}


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _clean_workdir(workdir: str) -> None:
    """Empty the working directory, however deep the tree a program left in it.

    Iterative with one open descriptor, walking down by name and back up by "..": a program
    can nest directories thousands deep (past PATH_MAX, past Python's recursion limit, which
    is where ``shutil.rmtree`` gives up and would leave its files to the next program).
    """
    fd = os.open(workdir, _DIR_FLAGS)
    names: list[str] = []  # the path from workdir down to fd
    try:
        while True:
            subdirectory = None
            with os.scandir(fd) as entries:
                for entry in entries:
                    if entry.is_dir(follow_symlinks=False):
                        subdirectory = entry.name
                        break
                    os.unlink(entry.name, dir_fd=fd)
            if subdirectory is not None:
                below = os.open(subdirectory, _DIR_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = below
                names.append(subdirectory)
                continue
            if not names:
                return
            above = os.open("..", _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = above
            os.rmdir(names.pop(), dir_fd=fd)
    finally:
        os.close(fd)


def _handle(request: dict, plan: isolation.Plan, functions: dict, config: dict, fds, fork) -> dict:
    kind = protocol.string_field(request, "kind")
    if kind == "program":
        source = protocol.string_field(request, "source")

        def task() -> dict:
            return child.run_program(source)

    elif kind == "call":
        name = protocol.string_field(request, "function")
        args = request.get("args")
        if name not in functions or not isinstance(args, list):
            raise protocol.ProtocolError(f"unknown function {name!r} or bad arguments")
        if not all(isinstance(a, str) for a in args):
            raise protocol.ProtocolError("call arguments must be strings")

        def task() -> dict:
            return child.run_call(functions[name], args)

    else:
        raise protocol.ProtocolError(f"unknown request kind {kind!r}")
    timeout_s = float(request.get("timeout_s") or config["timeout_s"])
    pid, out_r, res_r = _start_child(plan, task, *fds, fork)
    try:
        soft_cpu_s = max(1, math.ceil(config["cpu_s"]))
        return _collect(pid, out_r, res_r, timeout_s, config["output_bytes"], soft_cpu_s)
    finally:
        _clean_workdir(plan.workdir)


def main() -> None:
    """Worker entry point: ``python -c ... main()`` with the JSON config as argv[1]."""
    config = json.loads(sys.argv[1])
    proto_in, proto_out = os.dup(0), os.dup(1)
    null = os.open("/dev/null", os.O_RDWR)
    for fd in (0, 1):  # fd 2 stays: the executor points it at a log file
        os.dup2(null, fd)
    os.close(null)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    functions = _preload(config.get("preload", []))
    os.makedirs(config["workdir"], mode=0o700, exist_ok=True)
    limits = isolation.Limits(
        cpu_s=config["cpu_s"],
        memory_bytes=config["memory_bytes"],
        file_bytes=config["file_bytes"],
        open_files=config["open_files"],
    )
    plan = isolation.probe_and_prepare(
        limits, config["workdir"], config["max_level"], disk_bytes=config["disk_bytes"]
    )
    gc.collect()
    gc.freeze()
    _collapse_into_huge_pages()
    # The worker never starts threads; checking the kernel's view makes the fast fork safe
    # even if an imported library started one behind our back.
    fork = syscalls.raw_fork if syscalls.single_threaded() else os.fork
    null_fd = _high(os.open("/dev/null", os.O_RDWR))
    fds = (null_fd, _high(plan.ruleset.fd) if plan.ruleset is not None else None)
    protocol.write_frame(
        proto_out,
        {
            "type": "hello",
            "level": plan.level,
            "layers": list(plan.layers),
            "failures": list(plan.failures),
            "pid": os.getpid(),
        },
    )
    while (request := protocol.read_frame(proto_in)) is not None:
        request_id = request.get("id")
        try:
            response = _handle(request, plan, functions, config, fds, fork)
        except protocol.ProtocolError as exc:
            response = {"verdict": "sandbox_error", "error_type": f"BadRequest: {exc}"}
        except OSError as exc:  # fork or pipe failure: report, stay alive
            response = {"verdict": "sandbox_error", "error_type": f"{type(exc).__name__}: {exc}"}
        response["id"] = request_id
        response["level"] = plan.level
        protocol.write_frame(proto_out, response)
