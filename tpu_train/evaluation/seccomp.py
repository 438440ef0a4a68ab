"""A seccomp-BPF filter for sandboxed programs, assembled by hand.

The filter is a deny list: arithmetic programs need a large, unpredictable set of ordinary
syscalls (mmap, futex, read, getrandom, ...) while the dangerous ones are few and well known.
Denied calls fail with EPERM, so a program sees a Python ``PermissionError`` (a runtime error
verdict) instead of dying mysteriously. What it blocks:

* sockets of every kind (no TCP, UDP, DNS or Unix sockets);
* process creation (fork, vfork, clone without ``CLONE_THREAD``, clone3, execve, execveat);
  threads stay allowed because numpy and some stdlib modules start them;
* signals to any process but itself (kill, tkill, tgkill, sigqueue, pidfd), including the
  indirect route through ``fcntl``: ``F_SETOWN``/``F_SETOWN_EX`` name a process to receive the
  SIGIO of a descriptor and ``F_SETSIG`` makes that signal any signal, SIGKILL included, so a
  pipe with ``O_ASYNC`` would kill whatever process it names; ``F_SETLEASE`` and ``F_NOTIFY``
  deliver signals the same way and are denied with them;
* changing file modes, owners, extended attributes or timestamps (Landlock does not cover
  metadata, and a child that keeps uid 0 without capabilities still owns root's files);
* raising resource limits, ptrace and cross-process memory access, namespaces, mounts, kernel
  modules, keyrings, BPF, perf, io_uring (which would bypass this filter) and friends.

A foreign architecture (for example the x32 ABI on x86_64) kills the process outright.
"""

from __future__ import annotations

import ctypes
import errno
import struct

from tpu_train.evaluation import syscalls

_LD_W_ABS = 0x20
_JEQ_K = 0x15
_JSET_K = 0x45
_JGE_K = 0x35
_RET_K = 0x06

RET_ALLOW = 0x7FFF0000
RET_KILL_PROCESS = 0x80000000
RET_ERRNO = 0x00050000

_OFF_NR = 0
_OFF_ARCH = 4
_OFF_ARG0_LO = 16
_OFF_ARG0_HI = 20
_OFF_ARG1_LO = 24  # little-endian: the low word of args[1] (both described architectures)
_X32_SYSCALL_BIT = 0x40000000

DENIED = (
    "socket", "socketpair", "connect", "accept", "accept4", "bind", "listen", "sendto",
    "recvfrom", "sendmsg", "recvmsg", "sendmmsg", "recvmmsg", "shutdown", "getsockname",
    "getpeername", "setsockopt", "getsockopt",
    "fork", "vfork", "execve", "execveat",
    "ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "pidfd_open", "pidfd_getfd",
    "pidfd_send_signal", "setrlimit", "prlimit64", "setsid", "setpgid",
    "unshare", "setns", "mount", "umount2", "pivot_root", "chroot", "open_tree", "move_mount",
    "fsopen", "fsconfig", "fsmount", "fspick", "mount_setattr", "name_to_handle_at",
    "open_by_handle_at", "mknod", "mknodat",
    "init_module", "finit_module", "delete_module", "kexec_load", "kexec_file_load", "reboot",
    "swapon", "swapoff", "syslog", "acct", "settimeofday", "sethostname", "setdomainname",
    "iopl", "ioperm", "quotactl", "personality", "add_key", "request_key", "keyctl", "bpf",
    "perf_event_open", "userfaultfd", "io_uring_setup", "io_uring_enter", "io_uring_register",
    "chmod", "fchmod", "fchmodat", "fchmodat2", "chown", "fchown", "lchown", "fchownat",
    "setxattr", "lsetxattr", "fsetxattr", "removexattr", "lremovexattr", "fremovexattr",
    "utime", "utimes", "utimensat", "futimesat",
)  # fmt: skip

# Signal-sending calls whose first argument is the target; allowed only when it is ourselves.
SELF_ONLY = ("kill", "tkill", "tgkill", "rt_sigqueueinfo", "rt_tgsigqueueinfo")

# fcntl commands that route a signal to a process of the caller's choosing (see above). The
# kernel reads the command as an unsigned int, so the low word of the argument is all it sees.
FCNTL_DENIED = {
    "F_SETOWN": 8,
    "F_SETSIG": 10,
    "F_SETOWN_EX": 15,
    "F_SETLEASE": 1024,
    "F_NOTIFY": 1026,
}


class _Assembler:
    """Tiny two-pass BPF assembler: instructions may jump forward to named labels."""

    def __init__(self) -> None:
        self._code: list[tuple[int, str | int, str | int, int]] = []
        self._labels: dict[str, int] = {}

    def label(self, name: str) -> None:
        self._labels[name] = len(self._code)

    def emit(self, code: int, k: int, jt: str | int = 0, jf: str | int = 0) -> None:
        self._code.append((code, jt, jf, k))

    def _offset(self, index: int, target: str | int) -> int:
        if isinstance(target, int):
            return target
        offset = self._labels[target] - index - 1
        if not 0 <= offset <= 255:
            raise ValueError(f"BPF jump to {target!r} out of range ({offset})")
        return offset

    def assemble(self) -> bytes:
        out = bytearray()
        for index, (code, jt, jf, k) in enumerate(self._code):
            out += struct.pack(
                "=HBBI", code, self._offset(index, jt), self._offset(index, jf), k & 0xFFFFFFFF
            )
        return bytes(out)


_PID_PLACEHOLDER = 0x7FFFFFFF


class FilterTemplate:
    """The filter assembled once in the worker, with the target pid patched in per child.

    "Signals only to yourself" needs the child's pid, known only after fork; assembling in
    Python costs most of a millisecond, patching one instruction costs microseconds.
    """

    def __init__(self, arch: str | None = None) -> None:
        self._program = build_filter(_PID_PLACEHOLDER, arch)
        self._offsets = [
            i
            for i in range(0, len(self._program), 8)
            if struct.unpack_from("=I", self._program, i + 4)[0] == _PID_PLACEHOLDER
        ]
        if len(self._offsets) != 1:
            raise ValueError("seccomp template: pid slot not found exactly once")

    def for_pid(self, pid: int) -> bytes:
        program = bytearray(self._program)
        struct.pack_into("=I", program, self._offsets[0] + 4, pid)
        return bytes(program)


def build_filter(own_pid: int, arch: str | None = None) -> bytes:
    """Return the filter program (packed ``sock_filter`` array) for a process ``own_pid``.

    Raises ValueError for an architecture without a syscall table.
    """
    arch = arch or syscalls.machine()
    table = syscalls._TABLES.get(arch)
    if table is None or arch not in syscalls.AUDIT_ARCH:
        raise ValueError(f"seccomp: no syscall table for architecture {arch!r}")
    asm = _Assembler()
    asm.emit(_LD_W_ABS, _OFF_ARCH)
    asm.emit(_JEQ_K, syscalls.AUDIT_ARCH[arch], jt=1, jf=0)
    asm.emit(_RET_K, RET_KILL_PROCESS)
    asm.emit(_LD_W_ABS, _OFF_NR)
    if arch == "x86_64":
        asm.emit(_JGE_K, _X32_SYSCALL_BIT, jt="deny", jf=0)
    for name in DENIED:
        if name in table:
            asm.emit(_JEQ_K, table[name], jt="deny")
    for name in SELF_ONLY:
        asm.emit(_JEQ_K, table[name], jt="self_only")
    asm.emit(_JEQ_K, table["clone"], jt="clone")
    asm.emit(_JEQ_K, table["clone3"], jt="enosys")
    asm.emit(_JEQ_K, table["fcntl"], jt="fcntl")
    asm.emit(_RET_K, RET_ALLOW)
    asm.label("fcntl")
    asm.emit(_LD_W_ABS, _OFF_ARG1_LO)
    for command in FCNTL_DENIED.values():
        asm.emit(_JEQ_K, command, jt="deny")
    asm.emit(_RET_K, RET_ALLOW)
    asm.label("self_only")
    asm.emit(_LD_W_ABS, _OFF_ARG0_LO)
    asm.emit(_JEQ_K, own_pid, jt=0, jf="deny")
    asm.emit(_LD_W_ABS, _OFF_ARG0_HI)
    asm.emit(_JEQ_K, 0, jt="allow", jf="deny")
    asm.label("clone")
    asm.emit(_LD_W_ABS, _OFF_ARG0_LO)
    asm.emit(_JSET_K, syscalls.CLONE_THREAD, jt="allow", jf="deny")
    asm.label("allow")
    asm.emit(_RET_K, RET_ALLOW)
    asm.label("deny")
    asm.emit(_RET_K, RET_ERRNO | errno.EPERM)
    # clone3 passes its flags through memory the filter cannot read; ENOSYS makes libc fall
    # back to clone(), whose flags the filter does check.
    asm.label("enosys")
    asm.emit(_RET_K, RET_ERRNO | errno.ENOSYS)
    return asm.assemble()


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def install(program: bytes) -> None:
    """Install ``program`` on the calling thread (requires no_new_privs or CAP_SYS_ADMIN)."""
    buffer = ctypes.create_string_buffer(program, len(program))
    fprog = _SockFprog(len(program) // 8, ctypes.cast(buffer, ctypes.c_void_p))
    syscalls.prctl(syscalls.PR_SET_NO_NEW_PRIVS, 1)
    syscalls.prctl(syscalls.PR_SET_SECCOMP, syscalls.SECCOMP_MODE_FILTER, ctypes.addressof(fprog))
