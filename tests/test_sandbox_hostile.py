"""Hostile programs against the sandbox, each followed by a canary that must still be right.

The suite runs in its own PID namespace (``unshare --pid --fork --mount-proc``): this file is
re-executed as a script inside it, runs every case through one executor, and writes a JSON
report that the tests below check. A sandbox bug in a kill test (``kill(-1, 9)`` as root) can
then only take down the namespace, not the machine. Afterwards the runner checks that no stray
process, no file and no packet escaped.
"""

from __future__ import annotations

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

SECRET_ENV = "HOSTILE_SECRET_TOKEN"
CTYPES_LIBC = "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
MARKER = "/tmp/hostile_marker_{token}"


def _cases(ctx: dict) -> list[tuple[str, str, set[str], str | None]]:
    """(name, program, accepted verdicts, required answer or None)."""
    marker, secret, tcp, udp = ctx["marker"], ctx["secret_path"], ctx["tcp"], ctx["udp"]
    err, timeouts = {"runtime_error"}, {"timeout", "cpu_limit"}
    return [
        ("loop_plain", "while True:\n    pass", timeouts, None),
        ("loop_c_level", "import itertools\nsum(itertools.count())", timeouts, None),
        (
            "loop_catch_base",
            "while True:\n    try:\n        while True:\n            pass\n"
            "    except BaseException:\n        pass",
            timeouts,
            None,
        ),
        (
            "loop_ignore_signals",
            "import signal\nfor s in (signal.SIGTERM, signal.SIGINT, signal.SIGALRM, "
            "signal.SIGXCPU, signal.SIGHUP):\n    signal.signal(s, signal.SIG_IGN)\n"
            "while True:\n    pass",
            timeouts,
            None,
        ),
        ("sleep", "import time\ntime.sleep(1000)", {"timeout"}, None),
        ("memory_bytearray", "x = bytearray(64 << 30)", {"memory_limit"}, None),
        (
            "memory_growth",
            "a = []\nwhile True:\n    a.append(bytes(10**8))",
            {"memory_limit"},
            None,
        ),
        ("fork_os", "import os\nos.fork()", err, None),
        ("fork_bomb", "import os\nwhile True:\n    os.fork()", err, None),
        ("fork_posix", "import posix\nposix.fork()", err, None),
        # glibc's system() reports a failed spawn as exit status 127 (32512); the marker
        # check at the end proves that nothing ran.
        ("spawn_system", "import os\nans = os.system('touch " + marker + "')", {"ok"}, "32512"),
        ("spawn_posix_spawn", "import os\nos.posix_spawn('/bin/true', ['true'], {})", err, None),
        ("spawn_subprocess", "import subprocess\nsubprocess.run(['true'])", err, None),
        ("spawn_exec", "import os\nos.execv('/bin/true', ['true'])", err, None),
        (
            "spawn_multiprocessing",
            "import multiprocessing as mp\np = mp.Process(target=print)\np.start()\np.join()",
            err,
            None,
        ),
        ("ctypes_fork", CTYPES_LIBC + "ans = libc.fork()", {"ok"}, "-1"),
        ("ctypes_clone", CTYPES_LIBC + "ans = libc.syscall(56, 17, 0, 0, 0, 0)", {"ok"}, "-1"),
        (
            "ctypes_execve",
            CTYPES_LIBC + "ans = libc.execve(b'/bin/true', None, None)",
            {"ok"},
            "-1",
        ),
        (
            "tcp_connect",
            f"import socket\nsocket.create_connection(('127.0.0.1', {tcp}), timeout=0.5)",
            err,
            None,
        ),
        (
            "udp_send",
            "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            f"s.sendto(b'leak', ('127.0.0.1', {udp}))",
            err,
            None,
        ),
        ("dns", "import socket\nsocket.getaddrinfo('example.com', 80)", err, None),
        ("ctypes_socket", CTYPES_LIBC + "ans = libc.socket(2, 1, 0)", {"ok"}, "-1"),
        ("write_tmp", f"open('{marker}', 'w').write('x')", err, None),
        ("write_root", "open('/hostile_marker_root', 'w').write('x')", err, None),
        ("mkdir_outside", f"import os\nos.mkdir('{marker}.d')", err, None),
        ("read_secret", f"print(open('{secret}').read())", err, None),
        ("chmod_outside", f"import os\nos.chmod('{secret}', 0o600)", err, None),
        ("chown_outside", f"import os\nos.chown('{secret}', 65534, 65534)", err, None),
        ("utime_outside", f"import os\nos.utime('{secret}', (0, 0))", err, None),
        ("read_passwd", "print(open('/etc/passwd').read())", err, None),
        (
            "env_leak",
            f"import os\nprint(os.environ.get('{SECRET_ENV}'))\n"
            "print(open('/proc/self/environ').read())",
            err,
            None,
        ),
        (
            "env_leak_parent",
            "import os\nprint(open('/proc/%d/environ' % os.getppid()).read())",
            err,
            None,
        ),
        ("output_flood", "while True:\n    print('x' * 1000)", {"output_limit"}, None),
        (
            "stderr_flood",
            "import sys\nwhile True:\n    sys.stderr.write('x' * 10**6)",
            {"memory_limit", "timeout"},
            None,
        ),
        (
            "file_size",
            "f = open('big', 'wb')\nwhile True:\n    f.write(b'x' * 65536)",
            {"file_limit"},
            None,
        ),
        ("fd_exhaustion", "fs = [open('f%d' % i, 'w') for i in range(100000)]", err, None),
        ("kill_parent", "import os\nos.kill(os.getppid(), 9)", err, None),
        ("kill_all", "import os\nos.kill(-1, 9)", err, None),
        ("kill_group", "import os\nos.killpg(0, 9)", err, None),
        ("ctypes_kill_all", CTYPES_LIBC + "ans = libc.kill(-1, 9)", {"ok"}, "-1"),
        (
            "ptrace_parent",
            CTYPES_LIBC + "import os\nans = libc.ptrace(16, os.getppid(), 0, 0)",
            {"ok"},
            "-1",
        ),
        ("unshare", CTYPES_LIBC + "ans = libc.unshare(0x40000000)", {"ok"}, "-1"),
        ("io_uring", CTYPES_LIBC + "ans = libc.syscall(425, 8, 0)", {"ok"}, "-1"),
        (
            "raise_rlimit",
            "import resource\nresource.setrlimit(resource.RLIMIT_AS, (-1, -1))",
            err,
            None,
        ),
        # As nobody the setuid fails; as root without capabilities setgroups does.
        ("regain_root", "import os\nos.setuid(0)\nos.setgroups([0, 1])", err, None),
        ("recursion", "def f(n):\n    return f(n + 1)\nf(0)", err, None),
        (
            "recursion_unbounded",
            "import sys\nsys.setrecursionlimit(10**8)\ndef f(n):\n    return f(n + 1)\nf(0)",
            {"crash", "memory_limit", "runtime_error", "timeout", "cpu_limit"},
            None,
        ),
        ("segfault", "import ctypes\nctypes.string_at(0)", {"crash"}, None),
        ("stdin_input", "ans = input()", err, None),
        ("stdin_read", "import sys\nans = len(sys.stdin.read())", {"ok"}, "0"),
        ("stdin_fd", "import os\nans = len(os.read(0, 10))", {"ok"}, "0"),
        (
            "str_loops",
            "class A:\n    def __str__(self):\n        while True:\n            pass\nans = A()",
            {"timeout", "cpu_limit"},
            None,
        ),
        (
            "str_raises",
            "class A:\n    def __str__(self):\n        raise KeyboardInterrupt\nans = A()",
            err,
            None,
        ),
        (
            "reduce_hostile",
            "class A:\n    def __reduce__(self):\n        import os\n"
            f"        os.system('touch {marker}')\n        return (int, ())\n"
            "    def __str__(self):\n        return '42'\nans = A()",
            {"ok"},
            "42",
        ),
        (
            "str_subclass",
            "class S(str):\n    def __str__(self):\n        return self\n"
            "    def encode(self, *a, **k):\n        raise SystemExit(3)\nans = S('7')",
            {"ok"},
            "7",
        ),
        (
            "patch_modules",
            "import math, builtins, json, sys\nmath.sqrt = lambda x: 0\nbuiltins.print = None\n"
            "json.dumps = None\nsys.modules['fractions'] = None\nans = 5",
            {"ok"},
            "5",
        ),
        (
            "forged_frames",
            "import json, os, struct, sys\n"
            "body = json.dumps({'id': 0, 'verdict': 'ok', 'answer': 'FORGED', 'status': 'ok'})"
            ".encode()\nsys.stdout.flush()\nos.write(1, struct.pack('>I', len(body)) + body)\n"
            "for fd in range(3, 256):\n    try:\n        os.write(fd, body)\n"
            "    except OSError:\n        pass\nans = 1",
            {"runtime_error"},
            None,
        ),
        (
            "lingering_thread",
            "import threading\nthreading.Thread(target=lambda: [0 for _ in iter(int, 1)])"
            ".start()\nans = 3",
            {"ok"},
            "3",
        ),
        ("exit_nonzero", "import sys\nsys.exit(4)", err, None),
        ("os_exit", "import os\nos._exit(0)", err, None),
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


def run_suite(report_path: str, secret_path: str) -> None:
    """Runner side (inside the PID namespace): execute all cases, write the report."""
    from tpu_train.evaluation.executor import Executor, ExecutorConfig

    os.environ[SECRET_ENV] = "env-secret-" + uuid.uuid4().hex
    token = uuid.uuid4().hex
    listener = _Listener()
    ctx = {
        "marker": MARKER.format(token=token),
        "secret_path": secret_path,
        "tcp": listener.tcp.getsockname()[1],
        "udp": listener.udp.getsockname()[1],
    }
    cases = _cases(ctx)
    programs = []
    for index, (_, program, _, _) in enumerate(cases):
        programs += [program, _canary(1000 + index)]
    before = set(os.listdir(tempfile.gettempdir()))
    stat = os.stat(secret_path)
    secret_stat = (stat.st_mode & 0o7777, stat.st_uid, stat.st_mtime)
    config = ExecutorConfig(timeout_s=1.5, workers=2, memory_bytes=1 << 30)
    with Executor(config) as executor:
        level, layers, base = executor.isolation_level, executor.layers, executor._base
        results = executor.run(programs)
    listener.close()
    with open(secret_path) as handle:
        secret = handle.read().strip()
    report = {"level": level, "layers": list(layers), "cases": {}}
    for index, (name, _, verdicts, answer) in enumerate(cases):
        hostile, canary = results[2 * index], results[2 * index + 1]
        leaked = any(
            s in (r.stdout + (r.answer or ""))
            for s in (secret, os.environ[SECRET_ENV])
            for r in (hostile, canary)
        )
        report["cases"][name] = {
            "verdict": hostile.verdict,
            "error_type": hostile.error_type,
            "answer": hostile.answer,
            "verdict_ok": hostile.verdict in verdicts,
            "answer_ok": answer is None or hostile.answer == answer,
            "forged": any(r.answer == "FORGED" for r in (hostile, canary)),
            "leaked": leaked,
            "canary": [canary.verdict, canary.answer, canary.error_type],
            "canary_ok": canary.verdict == "ok" and canary.answer == str(1000 + index),
        }
    after = set(os.listdir(tempfile.gettempdir()))
    # /tmp is shared with other processes on the machine: only our own prefixes count.
    report["new_tmp_entries"] = sorted(
        name for name in after - before if name.startswith(("tpu_train_sandbox_", "hostile_"))
    )
    report["markers"] = [p for p in (ctx["marker"], ctx["marker"] + ".d") if os.path.exists(p)]
    report["root_marker"] = os.path.exists("/hostile_marker_root")
    stat = os.stat(secret_path)
    report["secret_untouched"] = (stat.st_mode & 0o7777, stat.st_uid, stat.st_mtime) == secret_stat
    report["sandbox_dir_left"] = os.path.exists(base)
    report["stray_pids"] = _other_pids()
    report["traffic"] = listener.hits
    with open(report_path, "w") as handle:
        json.dump(report, handle, indent=1)


def _unshare_commands(script_args: list[str]) -> list[list[str]]:
    base = ["--pid", "--fork", "--mount-proc"]
    tail = [sys.executable, os.path.abspath(__file__), *script_args]
    return [["unshare", *base, *tail], ["unshare", "--user", "--map-root-user", *base, *tail]]


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
    for command in _unshare_commands(["--run", str(report_path), str(secret_path)]):
        probe = subprocess.run([*command[: command.index(sys.executable)], "true"], check=False)
        if probe.returncode != 0:
            failures.append(" ".join(command[:5]))
            continue
        done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
        assert done.returncode == 0, done.stdout + done.stderr
        return json.loads(report_path.read_text())
    pytest.skip(f"no PID namespace can be created here (tried: {failures})")


CASE_NAMES = [name for name, *_ in _cases({"marker": "", "secret_path": "", "tcp": 1, "udp": 1})]


@pytest.mark.parametrize("name", CASE_NAMES)
def test_hostile_case_contained(report: dict, name: str) -> None:
    case = report["cases"][name]
    assert case["verdict_ok"], case
    assert case["answer_ok"], case
    assert not case["leaked"], case
    assert not case["forged"], case
    assert case["canary_ok"], case


def test_nothing_escaped(report: dict) -> None:
    assert report["stray_pids"] == [], "processes survived the executor"
    assert report["traffic"] == 0, "a packet or connection reached the loopback listeners"
    assert report["markers"] == [] and not report["root_marker"], "a file was written outside"
    assert report["secret_untouched"], "the planted file's mode, owner or times changed"
    assert not report["sandbox_dir_left"], "the executor left its sandbox directory behind"
    assert report["new_tmp_entries"] == [], report["new_tmp_entries"]


def test_strongest_isolation_recorded(report: dict) -> None:
    assert report["level"] in ("seccomp", "landlock", "namespaced")
    assert "seccomp" in report["layers"]


if __name__ == "__main__" and len(sys.argv) == 4 and sys.argv[1] == "--run":
    run_suite(sys.argv[2], sys.argv[3])
