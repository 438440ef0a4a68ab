"""Hostile programs against the sandbox at every isolation level the machine reaches, each
followed by a canary that must still be answered right.

The suite runs in its own PID namespace (``unshare --pid --fork --mount-proc``): this file is
re-executed as a script inside it, runs the cases level by level, one executor per level, and
writes a JSON report that the tests below check. A sandbox bug in a kill test (``kill(-1, 9)``
as root) can then only take down the namespace, not the machine. Afterwards the runner checks
that no stray process, no file and no packet escaped, and that a victim process it started at
each level is still alive.

Levels: from ``process`` up to the strongest this machine reaches, capped by the environment
variable ``SANDBOX_MAX_ISOLATION`` (``SANDBOX_MAX_ISOLATION=landlock pytest tests/...`` runs
the suite as a machine without namespaces would). Each case names the weakest level that must
contain it (its *floor*, the README's table of which layer stops what) and runs there and at
every stronger level; the few that only wait out a deadline or a limit the worker enforces the
same way at every level run at the strongest level alone, to keep the suite fast.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import uuid

import pytest

from tpu_train.evaluation import isolation
from tpu_train.evaluation.executor import ExecutorConfig

SECRET_ENV = "HOSTILE_SECRET_TOKEN"
MAX_LEVEL_ENV = "SANDBOX_MAX_ISOLATION"
CTYPES_LIBC = "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
MARKER = "/tmp/hostile_marker_{token}"
LEVELS = isolation.LEVELS
DEFAULT_MIN = ExecutorConfig().min_isolation
# Small limits so the disk cases are quick: the tmpfs holds 8 MiB, each file at most 2 MiB.
FILE_BYTES, DISK_BYTES = 2 << 20, 8 << 20
FORGED = "FORGED"

ERR = frozenset({"runtime_error"})
TIMEOUTS = frozenset({"timeout", "cpu_limit"})


@dataclasses.dataclass(frozen=True)
class Case:
    """One hostile program: what it may end as, and from which level it must be contained."""

    name: str
    program: str
    verdicts: frozenset[str]
    answer: str | None = None
    floor: str = "seccomp"
    slow: bool = False  # waits out a deadline or limit the worker enforces at every level
    at_level: tuple[tuple[str, frozenset[str]], ...] = ()  # verdicts that differ per level

    def accepted(self, level: str) -> frozenset[str]:
        return dict(self.at_level).get(level, self.verdicts)


def _c(name, program, verdicts, answer=None, floor="seccomp", slow=False, at_level=()) -> Case:
    return Case(name, program, frozenset(verdicts), answer, floor, slow, tuple(at_level))


def _forge(frame: dict) -> str:
    """A program that prints an answer and writes its own report onto the result descriptor."""
    line = json.dumps(frame) + "\n"
    return f"import os, sys\nprint(42)\nsys.stdout.flush()\nos.write(3, {line.encode()!r})\nos._exit(0)"


def _cases(ctx: dict) -> list[Case]:
    marker, secret, tcp, udp = ctx["marker"], ctx["secret_path"], ctx["tcp"], ctx["udp"]
    victim, victim_file, install = ctx["victim_pid"], ctx["victim_file"], ctx["install_marker"]
    return [
        # -- deadlines and limits the worker enforces (the same at every level) ------------
        _c("loop_plain", "while True:\n    pass", TIMEOUTS, floor="process", slow=True),
        _c(
            "loop_c_level",
            "import itertools\nsum(itertools.count())",
            TIMEOUTS,
            floor="process",
            slow=True,
        ),
        _c(
            "loop_catch_base",
            "while True:\n    try:\n        while True:\n            pass\n"
            "    except BaseException:\n        pass",
            TIMEOUTS,
            floor="process",
            slow=True,
        ),
        _c(
            "loop_ignore_signals",
            "import signal\nfor s in (signal.SIGTERM, signal.SIGINT, signal.SIGALRM, "
            "signal.SIGXCPU, signal.SIGHUP):\n    signal.signal(s, signal.SIG_IGN)\n"
            "while True:\n    pass",
            TIMEOUTS,
            floor="process",
            slow=True,
        ),
        _c("sleep", "import time\ntime.sleep(1000)", {"timeout"}, floor="process", slow=True),
        _c("memory_bytearray", "x = bytearray(64 << 30)", {"memory_limit"}, floor="process"),
        _c(
            "memory_growth",
            "a = []\nwhile True:\n    a.append(bytes(10**8))",
            {"memory_limit"},
            floor="process",
            slow=True,
        ),
        _c("output_flood", "while True:\n    print('x' * 1000)", {"output_limit"}, floor="process"),
        _c(
            "stderr_flood",
            "import sys\nwhile True:\n    sys.stderr.write('x' * 10**6)",
            {"memory_limit", "timeout"},
            floor="process",
            slow=True,
        ),
        # One file past RLIMIT_FSIZE; at `landlock` the workdir is read-only, so no file at all.
        _c(
            "file_size",
            "f = open('big', 'wb')\nwhile True:\n    f.write(b'x' * 65536)",
            {"file_limit"},
            floor="process",
            at_level=[("landlock", ERR)],
        ),
        _c(
            "fd_exhaustion",
            "fs = [open('f%d' % i, 'w') for i in range(100000)]",
            ERR,
            floor="process",
        ),
        _c(
            "raise_rlimit",
            "import resource\nresource.setrlimit(resource.RLIMIT_AS, (-1, -1))",
            ERR,
            floor="process",
        ),
        # As nobody the setuid fails; as root without capabilities setgroups does.
        _c("regain_root", "import os\nos.setuid(0)\nos.setgroups([0, 1])", ERR, floor="process"),
        _c("recursion", "def f(n):\n    return f(n + 1)\nf(0)", ERR, floor="process"),
        _c(
            "recursion_unbounded",
            "import sys\nsys.setrecursionlimit(10**8)\ndef f(n):\n    return f(n + 1)\nf(0)",
            {"crash", "memory_limit", "runtime_error", "timeout", "cpu_limit"},
            floor="process",
        ),
        _c("segfault", "import ctypes\nctypes.string_at(0)", {"crash"}, floor="process"),
        _c("stdin_input", "ans = input()", ERR, floor="process"),
        _c("stdin_read", "import sys\nans = len(sys.stdin.read())", {"ok"}, "0", floor="process"),
        _c("stdin_fd", "import os\nans = len(os.read(0, 10))", {"ok"}, "0", floor="process"),
        # -- hostile objects and the result channel (the worker's checks, every level) -----
        _c(
            "str_loops",
            "class A:\n    def __str__(self):\n        while True:\n            pass\nans = A()",
            TIMEOUTS,
            floor="process",
            slow=True,
        ),
        _c(
            "str_raises",
            "class A:\n    def __str__(self):\n        raise KeyboardInterrupt\nans = A()",
            ERR,
            floor="process",
        ),
        _c(
            "reduce_hostile",
            "class A:\n    def __reduce__(self):\n        import os\n"
            f"        os.system('touch {marker}')\n        return (int, ())\n"
            "    def __str__(self):\n        return '42'\nans = A()",
            {"ok"},
            "42",
            floor="process",
        ),
        _c(
            "str_subclass",
            "class S(str):\n    def __str__(self):\n        return self\n"
            "    def encode(self, *a, **k):\n        raise SystemExit(3)\nans = S('7')",
            {"ok"},
            "7",
            floor="process",
        ),
        _c(
            "patch_modules",
            "import math, builtins, json, sys\nmath.sqrt = lambda x: 0\nbuiltins.print = None\n"
            "json.dumps = None\nsys.modules['fractions'] = None\nans = 5",
            {"ok"},
            "5",
            floor="process",
        ),
        _c(
            "forged_frames",
            "import json, os, struct, sys\n"
            f"body = json.dumps({{'id': 0, 'verdict': 'ok', 'answer': '{FORGED}', "
            "'status': 'ok'}).encode()\nsys.stdout.flush()\n"
            "os.write(1, struct.pack('>I', len(body)) + body)\n"
            "for fd in range(3, 256):\n    try:\n        os.write(fd, body)\n"
            "    except OSError:\n        pass\nans = 1",
            ERR,
            floor="process",
        ),
        # Provenance: a report naming a channel the program's text never defined is refused.
        _c(
            "forge_solution_source",
            _forge({"status": "ok", "answer": FORGED, "answer_source": "solution()"}),
            ERR,
            floor="process",
        ),
        _c(
            "forge_stdout_source",
            _forge({"status": "ok", "answer": FORGED, "answer_source": "stdout"}),
            ERR,
            floor="process",
        ),
        _c(
            "forge_ans_source",
            _forge({"status": "ok", "answer": FORGED, "answer_source": "ans"}),
            ERR,
            floor="process",
        ),
        _c(
            "forge_syntax_error",
            _forge({"status": "syntax", "error_type": "SyntaxError"}),
            ERR,
            floor="process",
        ),
        # A second declaration, then an honest report: the report is no longer one line.
        _c(
            "forge_declaration",
            'import os\nos.write(3, b\'{"status": "compiled", "channels": ["ans"]}\\n\')\n'
            f"ans = '{FORGED}'",
            ERR,
            floor="process",
        ),
        _c(
            "lingering_thread",
            "import threading\nthreading.Thread(target=lambda: [0 for _ in iter(int, 1)])"
            ".start()\nans = 3",
            {"ok"},
            "3",
            floor="process",
        ),
        _c("exit_nonzero", "import sys\nsys.exit(4)", ERR, floor="process"),
        _c("os_exit", "import os\nos._exit(0)", ERR, floor="process"),
        # -- processes, signals, network (seccomp) ------------------------------------------
        _c("fork_os", "import os\nos.fork()", ERR),
        _c("fork_bomb", "import os\nwhile True:\n    os.fork()", ERR),
        _c("fork_posix", "import posix\nposix.fork()", ERR),
        # glibc's system() reports a failed spawn as exit status 127 (32512); the marker
        # check at the end proves that nothing ran.
        _c("spawn_system", "import os\nans = os.system('touch " + marker + "')", {"ok"}, "32512"),
        _c("spawn_posix_spawn", "import os\nos.posix_spawn('/bin/true', ['true'], {})", ERR),
        _c("spawn_subprocess", "import subprocess\nsubprocess.run(['true'])", ERR),
        _c("spawn_exec", "import os\nos.execv('/bin/true', ['true'])", ERR),
        _c(
            "spawn_multiprocessing",
            "import multiprocessing as mp\np = mp.Process(target=print)\np.start()\np.join()",
            ERR,
        ),
        _c("ctypes_fork", CTYPES_LIBC + "ans = libc.fork()", {"ok"}, "-1"),
        _c("ctypes_clone", CTYPES_LIBC + "ans = libc.syscall(56, 17, 0, 0, 0, 0)", {"ok"}, "-1"),
        _c(
            "ctypes_execve",
            CTYPES_LIBC + "ans = libc.execve(b'/bin/true', None, None)",
            {"ok"},
            "-1",
        ),
        _c(
            "tcp_connect",
            f"import socket\nsocket.create_connection(('127.0.0.1', {tcp}), timeout=0.5)",
            ERR,
        ),
        _c(
            "udp_send",
            "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            f"s.sendto(b'leak', ('127.0.0.1', {udp}))",
            ERR,
        ),
        _c("dns", "import socket\nsocket.getaddrinfo('example.com', 80)", ERR),
        _c("ctypes_socket", CTYPES_LIBC + "ans = libc.socket(2, 1, 0)", {"ok"}, "-1"),
        _c("kill_parent", "import os\nos.kill(os.getppid(), 9)", ERR),
        _c("kill_all", "import os\nos.kill(-1, 9)", ERR),
        _c("kill_group", "import os\nos.killpg(0, 9)", ERR),
        _c("kill_victim", f"import os\nos.kill({victim}, 9)", ERR),
        _c("ctypes_kill_all", CTYPES_LIBC + "ans = libc.kill(-1, 9)", {"ok"}, "-1"),
        # SIGIO routed to the victim as SIGKILL: owner, signal, async mode, then a write.
        _c(
            "fcntl_sigkill_victim",
            "import fcntl, os\nr, w = os.pipe()\n"
            f"fcntl.fcntl(r, fcntl.F_SETOWN, {victim})\nfcntl.fcntl(r, fcntl.F_SETSIG, 9)\n"
            "fcntl.fcntl(r, fcntl.F_SETFL, fcntl.fcntl(r, fcntl.F_GETFL) | os.O_ASYNC)\n"
            "os.write(w, b'x')",
            ERR,
        ),
        # Every signal-routing command fails with EPERM, which only the filter returns on a
        # pipe (the kernel itself would refuse a lease or dnotify there with other errors).
        _c(
            "fcntl_owner_commands",
            "import fcntl, os, struct\nr, w = os.pipe()\nans = []\n"
            f"for cmd, arg in ((fcntl.F_SETOWN, {victim}), "
            f"(15, struct.pack('ii', 1, {victim})), (fcntl.F_SETSIG, 9), "
            "(fcntl.F_SETLEASE, fcntl.F_WRLCK), (fcntl.F_NOTIFY, 0x80000001)):\n"
            "    try:\n        fcntl.fcntl(r, cmd, arg)\n        ans.append(0)\n"
            "    except OSError as e:\n        ans.append(e.errno)\n"
            "fcntl.fcntl(w, fcntl.F_GETFL)\n",
            {"ok"},
            "[1, 1, 1, 1, 1]",
        ),
        _c(
            "ptrace_parent",
            CTYPES_LIBC + "import os\nans = libc.ptrace(16, os.getppid(), 0, 0)",
            {"ok"},
            "-1",
        ),
        _c("unshare", CTYPES_LIBC + "ans = libc.unshare(0x40000000)", {"ok"}, "-1"),
        _c(
            "remount", CTYPES_LIBC + "ans = libc.mount(b'none', b'/', None, 32, None)", {"ok"}, "-1"
        ),
        _c("io_uring", CTYPES_LIBC + "ans = libc.syscall(425, 8, 0)", {"ok"}, "-1"),
        _c("chmod_outside", f"import os\nos.chmod('{secret}', 0o600)", ERR),
        _c("chown_outside", f"import os\nos.chown('{secret}', 65534, 65534)", ERR),
        _c("utime_outside", f"import os\nos.utime('{secret}', (0, 0))", ERR),
        # -- files (Landlock, and the read-only mount view at `namespaced`) ---------------
        _c("write_tmp", f"open('{marker}', 'w').write('x')", ERR, floor="landlock"),
        _c("write_root", "open('/hostile_marker_root', 'w').write('x')", ERR, floor="landlock"),
        _c("write_install", f"open('{install}', 'w').write('x')", ERR, floor="landlock"),
        _c("mkdir_outside", f"import os\nos.mkdir('{marker}.d')", ERR, floor="landlock"),
        _c("append_outside", f"open('{secret}', 'a').write('x')", ERR, floor="landlock"),
        _c(
            "truncate_outside", f"import os\nos.truncate('{victim_file}', 0)", ERR, floor="landlock"
        ),
        _c("delete_outside", f"import os\nos.unlink('{victim_file}')", ERR, floor="landlock"),
        _c(
            "rename_outside",
            f"import os\nos.rename('{victim_file}', '{victim_file}.moved')",
            ERR,
            floor="landlock",
        ),
        _c(
            "link_into_workdir",
            f"import os\nos.link('{secret}', 'copy')\nprint(open('copy').read())",
            ERR,
            floor="landlock",
        ),
        _c(
            "symlink_out",
            f"import os\nos.symlink('{secret}', 'ln')\nprint(open('ln').read())",
            ERR,
            floor="landlock",
        ),
        _c("read_secret", f"print(open('{secret}').read())", ERR, floor="landlock"),
        _c("read_passwd", "print(open('/etc/passwd').read())", ERR, floor="landlock"),
        _c(
            "env_leak",
            f"import os\nprint(os.environ.get('{SECRET_ENV}'))\n"
            "print(open('/proc/self/environ').read())",
            ERR,
            floor="landlock",
        ),
        _c(
            "env_leak_parent",
            "import os\nprint(open('/proc/%d/environ' % os.getppid()).read())",
            ERR,
            floor="landlock",
        ),
        # -- disk: many files under the per-file limit, together past the total cap --------
        _c(
            "disk_many_files",
            "for i in range(64):\n    with open('f%d' % i, 'wb') as f:\n"
            "        f.write(b'x' * (1 << 20))\n    print(i + 1, flush=True)\nans = 'all written'",
            ERR,
            floor="landlock",
        ),
        _c(
            "disk_many_inodes",
            "import os\nfor i in range(100000):\n    os.close(os.open('e%d' % i, os.O_CREAT))\n"
            "ans = 'all created'",
            ERR,
            floor="landlock",
        ),
        _c(
            "disk_deep_dirs",
            "import os\nfor i in range(100000):\n    os.mkdir('d')\n    os.chdir('d')\n"
            "ans = 'all created'",
            ERR,
            floor="landlock",
        ),
    ]


def _canary(number: int) -> str:
    """A benign program that also checks nothing leaked from the hostile one before it."""
    return (
        "import math, os, json, fractions\n"
        "assert math.sqrt(16) == 4.0\n"
        "assert os.listdir('.') == [], os.listdir('.')\n"
        f"assert '{SECRET_ENV}' not in os.environ\n"
        "assert json.dumps([1]) == '[1]'\n"
        f"print(fractions.Fraction({number}, 1))\n"
    )


def cases_at(level: str, strongest: str, ctx: dict) -> list[Case]:
    """The cases run at ``level`` when ``strongest`` is the strongest level reached."""
    rank = isolation.level_rank(level)
    return [
        case
        for case in _cases(ctx)
        if isolation.level_rank(case.floor) <= rank and (level == strongest or not case.slow)
    ]


class _Listener:
    """TCP and UDP listeners on loopback that count anything reaching them."""

    def __init__(self) -> None:
        self.hits = 0
        self.tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.tcp.bind(("127.0.0.1", 0))
        self.tcp.listen(8)
        self.tcp.settimeout(0.2)
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind(("127.0.0.1", 0))
        self.udp.settimeout(0.2)
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._loop, args=(self._accept,), daemon=True),
            threading.Thread(target=self._loop, args=(self.udp.recv,), daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def _accept(self, _size: int) -> None:
        conn, _ = self.tcp.accept()
        conn.close()

    def _loop(self, receive) -> None:
        while not self._stop.is_set():
            try:
                receive(1024)
                self.hits += 1
            except OSError:
                continue

    def close(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()
        self.tcp.close()
        self.udp.close()


def _other_pids() -> list[int]:
    own = os.getpid()
    return sorted(int(p) for p in os.listdir("/proc") if p.isdigit() and int(p) != own)


def _config(level: str) -> ExecutorConfig:
    weaker = isolation.level_rank(level) < isolation.level_rank(DEFAULT_MIN)
    return ExecutorConfig(
        # Generous for the cases that end on their own: a 4096-deep tree under Landlock (each path walk
        # is O(depth)) took 0.3 s here and over 1.5 s on a loaded CI machine.
        timeout_s=4.0,
        workers=2,
        memory_bytes=1 << 30,
        file_bytes=FILE_BYTES,
        disk_bytes=DISK_BYTES,
        max_isolation=level,
        allow_weaker=weaker,  # the default minimum applies to every level that meets it
    )


def _run_level(executor, cases: list[Case], ctx: dict) -> dict:
    programs = []
    for index, case in enumerate(cases):
        programs += [case.program, _canary(1000 + index)]
    results = executor.run(programs)
    with open(ctx["secret_path"]) as handle:
        secret = handle.read().strip()
    out = {}
    for index, case in enumerate(cases):
        hostile, canary = results[2 * index], results[2 * index + 1]
        leaked = any(
            s in (r.stdout + (r.answer or ""))
            for s in (secret, os.environ[SECRET_ENV])
            for r in (hostile, canary)
        )
        out[case.name] = {
            "verdict": hostile.verdict,
            "error_type": hostile.error_type,
            "answer": hostile.answer,
            "answer_source": hostile.answer_source,
            "stdout_tail": hostile.stdout[-200:],
            "forged": any(r.answer == FORGED for r in (hostile, canary)),
            "leaked": leaked,
            "canary": [canary.verdict, canary.answer, canary.error_type],
        }
    return out


def run_suite(report_path: str, secret_path: str, max_level: str) -> None:
    """Runner side (inside the PID namespace): every reachable level, then the report."""
    from tpu_train.evaluation.executor import Executor

    os.environ[SECRET_ENV] = "env-secret-" + uuid.uuid4().hex
    token = uuid.uuid4().hex
    listener = _Listener()
    victim_file = os.path.join(os.path.dirname(secret_path), "victim.txt")
    ctx = {
        "marker": MARKER.format(token=token),
        "secret_path": secret_path,
        "victim_file": victim_file,
        "install_marker": os.path.join(sys.prefix, f"hostile_marker_{token}"),
        "tcp": listener.tcp.getsockname()[1],
        "udp": listener.udp.getsockname()[1],
    }
    with open(secret_path) as handle:
        secret_text = handle.read()
    before = set(os.listdir(tempfile.gettempdir()))
    stat = os.stat(secret_path)
    secret_stat = (stat.st_mode & 0o7777, stat.st_uid, stat.st_mtime)
    report = {"levels": {}, "unreachable": [], "sandbox_dirs_left": []}
    # The strongest level first: its executor tells how far this machine goes, and runs it.
    first = Executor(dataclasses.replace(_config(max_level), allow_weaker=True))
    strongest = first.isolation_level
    report["unreachable"] = list(LEVELS[LEVELS.index(strongest) + 1 : LEVELS.index(max_level) + 1])
    for level in reversed(LEVELS[: LEVELS.index(strongest) + 1]):
        with open(victim_file, "w") as handle:
            handle.write("victim")
        victim = subprocess.Popen(["sleep", "600"])
        ctx["victim_pid"] = victim.pid
        cases = cases_at(level, strongest, ctx)
        executor = first if level == strongest else Executor(_config(level))
        with executor:
            assert executor.isolation_level == level, (level, executor.probe_failures)
            layers, base = list(executor.layers), executor._base
            outcomes = _run_level(executor, cases, ctx)
        victim_alive = victim.poll() is None
        victim.kill()
        victim.wait()
        with open(victim_file) as handle:
            victim_file_intact = handle.read() == "victim"
        report["levels"][level] = {
            "layers": layers,
            "cases": outcomes,
            "victim_alive": victim_alive,
            "victim_file_intact": victim_file_intact,
        }
        if os.path.exists(base):
            report["sandbox_dirs_left"].append(base)
    listener.close()
    after = set(os.listdir(tempfile.gettempdir()))
    # /tmp is shared with other processes on the machine: only our own prefixes count.
    report["new_tmp_entries"] = sorted(
        name for name in after - before if name.startswith(("tpu_train_sandbox_", "hostile_"))
    )
    escaped = [ctx["marker"], ctx["marker"] + ".d", ctx["install_marker"], victim_file + ".moved"]
    report["markers"] = [p for p in escaped if os.path.exists(p)]
    for path in report["markers"]:
        shutil.rmtree(path) if os.path.isdir(path) else os.unlink(path)
    report["root_marker"] = os.path.exists("/hostile_marker_root")
    stat = os.stat(secret_path)
    with open(secret_path) as handle:
        same_text = handle.read() == secret_text
    same_stat = (stat.st_mode & 0o7777, stat.st_uid, stat.st_mtime) == secret_stat
    report["secret_untouched"] = same_text and same_stat
    report["stray_pids"] = _other_pids()
    report["traffic"] = listener.hits
    with open(report_path, "w") as handle:
        json.dump(report, handle, indent=1)


def _unshare_commands(script_args: list[str]) -> list[list[str]]:
    base = ["--pid", "--fork", "--mount-proc"]
    tail = [sys.executable, os.path.abspath(__file__), *script_args]
    return [["unshare", *base, *tail], ["unshare", "--user", "--map-root-user", *base, *tail]]


def _max_level() -> str:
    level = os.environ.get(MAX_LEVEL_ENV, LEVELS[-1])
    isolation.level_rank(level)  # a typo fails loudly instead of testing nothing
    return level


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict:
    if shutil.which("unshare") is None:
        pytest.skip("no `unshare` binary: cannot create a PID namespace for the hostile suite")
    workdir = tmp_path_factory.mktemp("hostile")
    secret_path = workdir / "secret.txt"
    secret_path.write_text("planted-secret-" + uuid.uuid4().hex)
    secret_path.chmod(0o644)
    report_path = workdir / "report.json"
    failures = []
    args = ["--run", str(report_path), str(secret_path), _max_level()]
    for command in _unshare_commands(args):
        probe = subprocess.run([*command[: command.index(sys.executable)], "true"], check=False)
        if probe.returncode != 0:
            failures.append(" ".join(command[:5]))
            continue
        done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
        assert done.returncode == 0, done.stdout + done.stderr
        return json.loads(report_path.read_text())
    pytest.skip(f"no PID namespace can be created here (tried: {failures})")


_NO_CTX = {
    "marker": "",
    "secret_path": "",
    "victim_file": "",
    "install_marker": "",
    "victim_pid": 1,
    "tcp": 1,
    "udp": 1,
}
CASES = {case.name: case for case in _cases(_NO_CTX)}
STRONGEST = "strongest"  # stands for the strongest level reached, where the slow cases run
PAIRS = [(STRONGEST, name) for name, case in CASES.items() if case.slow] + [
    (level, name)
    for level in LEVELS
    for name, case in CASES.items()
    if not case.slow and isolation.level_rank(case.floor) <= isolation.level_rank(level)
]


def _level_report(report: dict, level: str) -> tuple[str, dict]:
    if level == STRONGEST:
        level = next(iter(report["levels"]))
    if level not in report["levels"]:
        pytest.skip(f"isolation level {level!r} not reached here (or above {MAX_LEVEL_ENV})")
    return level, report["levels"][level]


@pytest.mark.parametrize(("level", "name"), PAIRS)
def test_hostile_case_contained(report: dict, level: str, name: str) -> None:
    level, outcomes = _level_report(report, level)
    outcomes = outcomes["cases"]
    case, outcome = CASES[name], outcomes[name]
    assert outcome["verdict"] in case.accepted(level), outcome
    assert case.answer is None or outcome["answer"] == case.answer, outcome
    assert not outcome["leaked"], outcome
    assert not outcome["forged"], outcome
    index = list(outcomes).index(name)
    assert outcome["canary"][:2] == ["ok", str(1000 + index)], outcome


@pytest.mark.parametrize("level", LEVELS)
def test_victim_survives(report: dict, level: str) -> None:
    """kill() and fcntl signal routing aimed at a process outside the sandbox both failed."""
    assert _level_report(report, level)[1]["victim_alive"]


@pytest.mark.parametrize("level", LEVELS[LEVELS.index("landlock") :])
def test_files_outside_untouched(report: dict, level: str) -> None:
    assert _level_report(report, level)[1]["victim_file_intact"]


def test_disk_cap_is_total(report: dict) -> None:
    """At `namespaced` the 1 MiB files stop at the 8 MiB tmpfs, each under the 2 MiB limit."""
    outcome = _level_report(report, "namespaced")[1]["cases"]["disk_many_files"]
    assert outcome["error_type"] == "OSError", outcome
    written = int(outcome["stdout_tail"].split()[-1])
    assert 1 <= written <= DISK_BYTES >> 20, outcome


def test_nothing_escaped(report: dict) -> None:
    assert report["stray_pids"] == [], "processes survived the executor"
    assert report["traffic"] == 0, "a packet or connection reached the loopback listeners"
    assert report["markers"] == [] and not report["root_marker"], "a file was written outside"
    assert report["secret_untouched"], "the planted file's content, mode, owner or times changed"
    assert report["sandbox_dirs_left"] == [], "the executor left its sandbox directory behind"
    assert report["new_tmp_entries"] == [], report["new_tmp_entries"]


def test_strongest_isolation_recorded(report: dict) -> None:
    strongest, level_report = _level_report(report, STRONGEST)
    assert [strongest, *report["unreachable"]][-1] == _max_level()
    assert list(report["levels"]) == list(reversed(LEVELS[: LEVELS.index(strongest) + 1]))
    assert ("seccomp" in level_report["layers"]) == (strongest != "process")


def test_default_levels_hold_every_case() -> None:
    """Every level the executor accepts by default runs the whole suite (no floor above it),
    the new cases included: signals via fcntl, files, disk and provenance."""
    default = isolation.level_rank(DEFAULT_MIN)
    assert all(isolation.level_rank(case.floor) <= default for case in CASES.values())
    for name in ("fcntl_sigkill_victim", "delete_outside", "disk_many_files", "forge_ans_source"):
        assert name in CASES


if __name__ == "__main__" and len(sys.argv) == 5 and sys.argv[1] == "--run":
    run_suite(sys.argv[2], sys.argv[3], sys.argv[4])
