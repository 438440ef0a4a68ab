"""Isolation layers for program children: probing at start-up and applying after each fork.

Each layer is probed by *trying* it in a throwaway forked child (kernel configs, container
runtimes and LSMs make any static check unreliable). The worker then applies every layer that
worked: namespaces once to itself (children inherit them), the rest in each child.

Levels, weakest to strongest; each includes everything before it:

* ``process``: a fresh forked child with rlimits (CPU, address space, file size, open files,
  core), an empty working directory, a scrubbed environment and stdin on /dev/null;
* ``seccomp``: plus the seccomp filter of :mod:`tpu_train.evaluation.seccomp` (no sockets, no
  process creation, no signals to others, fcntl signal routing included) and no_new_privs;
* ``landlock``: plus a Landlock filesystem allow-list (read the Python installation, nothing
  else; the working directory is read-only too, since without a mount namespace nothing could
  cap the bytes written there), TCP and signal scoping where the kernel's ABI has them;
* ``namespaced``: plus private network, IPC, UTS and mount namespaces: no interface but a down
  loopback (no traffic of any kind can leave), every mount read-only, and the working
  directory a tmpfs of ``disk_bytes`` (:mod:`tpu_train.evaluation.mounts`), which Landlock
  lets the program write.

Only ``landlock`` and above confine files: below it a child can write wherever its uid can,
which is why the executor refuses those levels unless told otherwise (see the README's table).

Where the worker runs as root, children also give up root: they become uid ``nobody`` when
``nobody`` can read the Python installation, and otherwise keep uid 0 with every capability
dropped (a pyenv Python under a 0700 /root, say). Where the worker needed a user namespace of
its own for the other namespaces, children drop the capabilities it gave them. None of this
changes the level, since none of it applies everywhere.
"""

from __future__ import annotations

import dataclasses
import fcntl
import math
import os
import resource
import signal
import socket
import sys

from tpu_train.evaluation import landlock, mounts, seccomp, syscalls

LEVELS = ("process", "seccomp", "landlock", "namespaced")
NOBODY = 65534
_NAMESPACES = (
    syscalls.CLONE_NEWNET | syscalls.CLONE_NEWIPC | syscalls.CLONE_NEWUTS | syscalls.CLONE_NEWNS
)


def level_rank(level: str) -> int:
    """Position of ``level`` in :data:`LEVELS`; ValueError naming the valid levels otherwise."""
    if level not in LEVELS:
        raise ValueError(f"unknown isolation level {level!r}; expected one of {LEVELS}")
    return LEVELS.index(level)


@dataclasses.dataclass(frozen=True)
class Limits:
    """Resource limits applied to each child."""

    cpu_s: float
    memory_bytes: int
    file_bytes: int
    open_files: int


@dataclasses.dataclass(frozen=True)
class Plan:
    """What a worker applies in every child, decided once by :func:`probe_and_prepare`."""

    limits: Limits
    workdir: str
    seccomp: seccomp.FilterTemplate | None
    ruleset: landlock.Ruleset | None
    privileges: str  # "nobody", "no-capabilities" or "unchanged"
    layers: tuple[str, ...]
    level: str
    failures: tuple[str, ...]


def apply_rlimits(limits: Limits, nobody: bool) -> None:
    """Set hard and soft limits equal so the program cannot raise them back.

    The CPU hard limit sits one second above the soft one: the soft limit delivers SIGXCPU
    (reported as ``cpu_limit``) and the hard one SIGKILL should the program ignore it.
    """
    cpu = max(1, math.ceil(limits.cpu_s))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    resource.setrlimit(resource.RLIMIT_AS, (limits.memory_bytes, limits.memory_bytes))
    resource.setrlimit(resource.RLIMIT_FSIZE, (limits.file_bytes, limits.file_bytes))
    resource.setrlimit(resource.RLIMIT_NOFILE, (limits.open_files, limits.open_files))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if nobody:
        # Counted per uid and ignored for root, so it only means something after the drop.
        resource.setrlimit(resource.RLIMIT_NPROC, (64, 64))


def drop_privileges() -> None:
    """Become uid/gid ``nobody`` with no supplementary groups (all capabilities go with it)."""
    os.setgroups([])
    os.setresgid(NOBODY, NOBODY, NOBODY)
    os.setresuid(NOBODY, NOBODY, NOBODY)


def confine_child(plan: Plan, ruleset_fd: int | None) -> None:
    """Apply the per-child layers, strongest last (seccomp forbids the calls before it).

    ``ruleset_fd`` is where the child keeps its inherited copy of the Landlock ruleset.
    """
    # The environment was scrubbed once, when the executor started the worker; rewriting it
    # here would cost every child a hundred page copies for nothing.
    os.chdir(plan.workdir)
    apply_rlimits(plan.limits, plan.privileges == "nobody")
    if plan.privileges == "nobody":
        drop_privileges()
    elif plan.privileges == "no-capabilities":
        syscalls.drop_all_capabilities()
    if plan.ruleset is not None:
        if ruleset_fd is None:
            raise RuntimeError("the plan uses Landlock but the child has no ruleset descriptor")
        landlock.restrict_self(dataclasses.replace(plan.ruleset, fd=ruleset_fd))
        os.close(ruleset_fd)
    if plan.seccomp is not None:
        seccomp.install(plan.seccomp.for_pid(os.getpid()))
    # Python ignores SIGXFSZ; restoring the default turns "file too large" into a clean kill
    # that the worker reports as file_limit.
    signal.signal(signal.SIGXFSZ, signal.SIG_DFL)


def _try_in_child(test) -> str | None:
    """Run ``test()`` in a throwaway child; return None on success or a short failure reason."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        os.close(read_fd)
        code = 0
        try:
            test()
        except BaseException as exc:
            os.write(write_fd, f"{type(exc).__name__}: {exc}"[:300].encode())
            code = 1
        os._exit(code)
    os.close(write_fd)
    message = b""
    while chunk := os.read(read_fd, 4096):
        message += chunk
    os.close(read_fd)
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) == 0:
        return None
    return message.decode(errors="replace") or f"exit status {status}"


def _expect_denied(action, what: str) -> None:
    try:
        action()
    except PermissionError:
        return
    raise RuntimeError(f"{what} was not denied")


def _probe_seccomp() -> None:
    seccomp.install(seccomp.build_filter(os.getpid()))
    _expect_denied(lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM), "socket()")
    _expect_denied(lambda: os.kill(os.getppid(), 0), "kill(parent)")
    read_end, _ = os.pipe()
    _expect_denied(lambda: fcntl.fcntl(read_end, fcntl.F_SETOWN, os.getppid()), "F_SETOWN")
    fcntl.fcntl(read_end, fcntl.F_GETFL)  # argument filtering must leave other commands alone


def _read_only_paths() -> list[str]:
    """Directories a program may read: the Python installation and its import path."""
    package_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    candidates = {
        sys.prefix,
        sys.base_prefix,
        sys.exec_prefix,
        sys.base_exec_prefix,
        package_dir,
        "/usr/lib",
        "/usr/lib64",
        "/lib",
        "/lib64",
    }
    prefixes = tuple(os.path.realpath(p) for p in candidates)
    for entry in sys.path:
        real = os.path.realpath(entry) if entry else ""
        if real and os.path.isdir(real) and real.startswith(prefixes):
            candidates.add(real)
    return sorted(p for p in candidates if os.path.exists(p))


_DEVICES = ["/dev/null", "/dev/zero", "/dev/urandom", "/dev/random"]


def _build_ruleset(workdir: str, writable_workdir: bool) -> landlock.Ruleset:
    """Reads of the installation; the workdir writable only when a tmpfs caps what it holds."""
    read_only, read_write = _read_only_paths(), []
    (read_write if writable_workdir else read_only).append(workdir)
    return landlock.build_ruleset(read_only, read_write, _DEVICES)


def _probe_landlock(ruleset: landlock.Ruleset, workdir: str):
    def test() -> None:
        landlock.restrict_self(ruleset)
        _expect_denied(lambda: os.listdir("/"), "listing /")
        os.listdir(workdir)

    return test


def _landlock_works(workdir: str, failures: list[str]) -> bool:
    """Build a ruleset and try it in a child (the worker's own is built after any mounts)."""
    try:
        ruleset = _build_ruleset(workdir, writable_workdir=False)
    except OSError as exc:
        failures.append(f"landlock: {exc}")
        return False
    try:
        problem = _try_in_child(_probe_landlock(ruleset, workdir))
    finally:
        os.close(ruleset.fd)
    if problem:
        failures.append(f"landlock: {problem}")
    return problem is None


def _probe_drop_uid() -> None:
    needed = _read_only_paths()  # listed while still root: as nobody they may be invisible
    drop_privileges()
    if os.geteuid() != NOBODY:
        raise RuntimeError("uid did not change")
    for path in needed:
        os.stat(path)  # PermissionError when nobody cannot reach the installation


def _probe_drop_capabilities() -> None:
    syscalls.drop_all_capabilities()
    with open("/proc/self/status") as status:
        effective = next(line for line in status if line.startswith("CapEff:"))
    if int(effective.split()[1], 16) != 0:
        raise RuntimeError(f"capabilities left after dropping them: {effective.strip()}")


def _enter_namespaces(workdir: str, disk_bytes: int) -> bool:
    """Give the worker (and so all its children) private network, IPC, UTS and mount
    namespaces and the read-only view with its tmpfs; True when that took a user namespace."""
    try:
        syscalls.unshare(_NAMESPACES)
        user_namespace = False
    except PermissionError:
        syscalls.unshare(_NAMESPACES | syscalls.CLONE_NEWUSER)
        user_namespace = True
    mounts.enter_private_view(workdir, disk_bytes)
    return user_namespace


def _probe_namespaces(workdir: str, disk_bytes: int):
    def test() -> None:
        _enter_namespaces(workdir, disk_bytes)
        names = socket.if_nameindex()
        if any(name != "lo" for _, name in names):
            raise RuntimeError(f"new network namespace has interfaces {names}")
        mounts.check_private_view(workdir, disk_bytes)

    return test


def _drop_root(workdir: str, failures: list[str], layers: list[str]) -> str:
    """How children of a root worker give up root: "nobody", "no-capabilities" or "unchanged"."""
    problem = _try_in_child(_probe_drop_uid)
    if problem is None:
        os.chown(workdir, NOBODY, NOBODY)
        layers.append("nobody-uid")
        return "nobody"
    failures.append(f"nobody-uid: {problem}")
    return _drop_capabilities(failures, layers)


def _drop_capabilities(failures: list[str], layers: list[str]) -> str:
    problem = _try_in_child(_probe_drop_capabilities)
    if problem is None:
        layers.append("no-capabilities")
        return "no-capabilities"
    failures.append(f"no-capabilities: {problem}")
    return "unchanged"


def probe_and_prepare(
    limits: Limits,
    workdir: str,
    max_level: str = "namespaced",
    drop_root: bool = True,
    disk_bytes: int = 64 << 20,
) -> Plan:
    """Probe every layer up to ``max_level``, enter namespaces, and return the child plan.

    ``disk_bytes`` sizes the tmpfs working directory of the ``namespaced`` level.
    """
    max_rank = level_rank(max_level)
    failures: list[str] = []
    layers = ["fork", "rlimits", "workdir", "env", "stdin"]
    use_seccomp = False
    if max_rank >= 1:
        problem = _try_in_child(_probe_seccomp)
        use_seccomp = problem is None
        if problem:
            failures.append(f"seccomp: {problem}")
    use_landlock = max_rank >= 2 and use_seccomp and _landlock_works(workdir, failures)
    namespaces = user_namespace = False
    if max_rank >= 3 and use_landlock:
        problem = _try_in_child(_probe_namespaces(workdir, disk_bytes))
        if problem:
            failures.append(f"namespaces: {problem}")
        else:
            user_namespace = _enter_namespaces(workdir, disk_bytes)
            namespaces = True
    ruleset = None
    if use_landlock:
        # Built only now: a rule names the directory's inode, which the tmpfs just replaced.
        try:
            ruleset = _build_ruleset(workdir, writable_workdir=namespaces)
        except OSError as exc:
            failures.append(f"landlock: {exc}")
    privileges = "unchanged"
    if drop_root and os.geteuid() == 0:
        privileges = _drop_root(workdir, failures, layers)
    elif user_namespace:
        privileges = _drop_capabilities(failures, layers)
    if use_seccomp:
        layers += ["no-new-privs", "seccomp"]
    if ruleset is not None:
        layers += list(ruleset.layers)
        layers.append("tmpfs-workdir" if namespaces else "read-only-workdir")
    if namespaces:
        layers += ["netns", "ipcns", "utsns", "mountns-read-only"]
    rank = 0
    for reached in (use_seccomp, ruleset is not None, namespaces):
        if not reached:
            break
        rank += 1
    return Plan(
        limits=limits,
        workdir=workdir,
        seccomp=seccomp.FilterTemplate() if use_seccomp else None,
        ruleset=ruleset,
        privileges=privileges,
        layers=tuple(layers),
        level=LEVELS[rank],
        failures=tuple(failures),
    )
