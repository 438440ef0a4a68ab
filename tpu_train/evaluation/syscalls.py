"""Raw Linux system calls the sandbox needs and Python 3.11 does not expose.

Python 3.11 has no ``os.unshare``, no Landlock and no seccomp bindings, so these go through
``ctypes`` and ``syscall(2)``. Numbers differ per architecture; only x86_64 and aarch64 are
described, and on anything else the layers that need them report themselves unavailable rather
than guessing numbers.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
import struct

# Flags for unshare(2).
CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
CLONE_THREAD = 0x00010000

PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
_LINUX_CAPABILITY_VERSION_3 = 0x20080522
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2

# Audit architecture tokens that seccomp reports in seccomp_data.arch.
AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}

# Syscall numbers by architecture, limited to the ones the seccomp filter names.
_X86_64 = {
    "socket": 41, "connect": 42, "accept": 43, "sendto": 44, "recvfrom": 45, "sendmsg": 46,
    "recvmsg": 47, "shutdown": 48, "bind": 49, "listen": 50, "getsockname": 51,
    "getpeername": 52, "socketpair": 53, "setsockopt": 54, "getsockopt": 55, "clone": 56,
    "fork": 57, "vfork": 58, "execve": 59, "kill": 62, "ptrace": 101, "syslog": 103,
    "setpgid": 109, "setsid": 112, "rt_sigqueueinfo": 129, "mknod": 133, "personality": 135,
    "pivot_root": 155, "setrlimit": 160, "chroot": 161, "acct": 163, "settimeofday": 164,
    "mount": 165, "umount2": 166, "swapon": 167, "swapoff": 168, "reboot": 169,
    "sethostname": 170, "setdomainname": 171, "iopl": 172, "ioperm": 173, "init_module": 175,
    "delete_module": 176, "quotactl": 179, "tkill": 200, "tgkill": 234, "kexec_load": 246,
    "add_key": 248, "request_key": 249, "keyctl": 250, "mknodat": 259, "unshare": 272,
    "accept4": 288, "rt_tgsigqueueinfo": 297, "perf_event_open": 298, "recvmmsg": 299,
    "prlimit64": 302, "name_to_handle_at": 303, "open_by_handle_at": 304, "sendmmsg": 307,
    "setns": 308, "process_vm_readv": 310, "process_vm_writev": 311, "kcmp": 312,
    "finit_module": 313, "kexec_file_load": 320, "bpf": 321, "execveat": 322,
    "userfaultfd": 323, "pidfd_send_signal": 424, "io_uring_setup": 425, "io_uring_enter": 426,
    "io_uring_register": 427, "open_tree": 428, "move_mount": 429, "fsopen": 430,
    "fsconfig": 431, "fsmount": 432, "fspick": 433, "pidfd_open": 434, "clone3": 435,
    "pidfd_getfd": 438, "mount_setattr": 442, "capset": 126,
    "chmod": 90, "fchmod": 91, "chown": 92, "fchown": 93, "lchown": 94, "utime": 132,
    "setxattr": 188, "lsetxattr": 189, "fsetxattr": 190, "removexattr": 197,
    "lremovexattr": 198, "fremovexattr": 199, "utimes": 235, "fchownat": 260,
    "futimesat": 261, "fchmodat": 268, "utimensat": 280, "fchmodat2": 452, "fcntl": 72,
}  # fmt: skip

_AARCH64 = {
    "socket": 198, "socketpair": 199, "bind": 200, "listen": 201, "accept": 202,
    "connect": 203, "getsockname": 204, "getpeername": 205, "sendto": 206, "recvfrom": 207,
    "setsockopt": 208, "getsockopt": 209, "shutdown": 210, "sendmsg": 211, "recvmsg": 212,
    "clone": 220, "execve": 221, "kill": 129, "tkill": 130, "tgkill": 131, "ptrace": 117,
    "syslog": 116, "setpgid": 154, "setsid": 157, "rt_sigqueueinfo": 138, "personality": 92,
    "pivot_root": 41, "setrlimit": 164, "chroot": 51, "acct": 89, "settimeofday": 170,
    "mount": 40, "umount2": 39, "swapon": 224, "swapoff": 225, "reboot": 142,
    "sethostname": 161, "setdomainname": 162, "init_module": 105, "delete_module": 106,
    "quotactl": 60, "kexec_load": 104, "add_key": 217, "request_key": 218, "keyctl": 219,
    "mknodat": 33, "unshare": 97, "accept4": 242, "rt_tgsigqueueinfo": 240,
    "perf_event_open": 241, "recvmmsg": 243, "prlimit64": 261, "name_to_handle_at": 264,
    "open_by_handle_at": 265, "sendmmsg": 269, "setns": 268, "process_vm_readv": 270,
    "process_vm_writev": 271, "kcmp": 272, "finit_module": 273, "kexec_file_load": 294,
    "bpf": 280, "execveat": 281, "userfaultfd": 282, "pidfd_send_signal": 424,
    "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427, "open_tree": 428,
    "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433,
    "pidfd_open": 434, "clone3": 435, "pidfd_getfd": 438, "mount_setattr": 442,
    "capset": 91, "fchmod": 52, "fchmodat": 53, "fchownat": 54, "fchown": 55,
    "setxattr": 5, "lsetxattr": 6, "fsetxattr": 7, "removexattr": 14, "lremovexattr": 15,
    "fremovexattr": 16, "utimensat": 88, "fchmodat2": 452, "fcntl": 25,
}  # fmt: skip

# Landlock uses the generic syscall table, so the numbers agree on both architectures.
LANDLOCK_CREATE_RULESET = 444
LANDLOCK_ADD_RULE = 445
LANDLOCK_RESTRICT_SELF = 446

_TABLES = {"x86_64": _X86_64, "aarch64": _AARCH64}


def machine() -> str:
    """Normalised machine name (``x86_64``, ``aarch64`` or whatever the kernel reports)."""
    name = platform.machine().lower()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(name, name)


def syscall_table() -> dict[str, int] | None:
    """Syscall numbers for this machine, or None when the architecture is not described."""
    return _TABLES.get(machine())


_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.prctl.restype = ctypes.c_int
_libc.unshare.restype = ctypes.c_int
_libc.unshare.argtypes = [ctypes.c_int]


def _check(result: int, what: str) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return result


def raw_syscall(number: int, *args: int | ctypes.c_void_p | None, what: str = "syscall") -> int:
    """Call ``syscall(number, *args)`` and raise OSError carrying errno on failure."""
    converted = [ctypes.c_long(a) if isinstance(a, int) else a for a in args]
    return _check(_libc.syscall(ctypes.c_long(number), *converted), what)


def prctl(option: int, arg2: int | ctypes.c_void_p = 0, arg3: int = 0) -> int:
    """``prctl(2)`` with errno-carrying failures."""
    a2 = ctypes.c_ulong(arg2) if isinstance(arg2, int) else arg2
    return _check(
        _libc.prctl(
            ctypes.c_int(option), a2, ctypes.c_ulong(arg3), ctypes.c_ulong(0), ctypes.c_ulong(0)
        ),
        f"prctl({option})",
    )


def unshare(flags: int) -> None:
    """``unshare(2)``; Python 3.11 lacks ``os.unshare``."""
    _check(_libc.unshare(flags), f"unshare({flags:#x})")


# mount(2) flags and mount_setattr(2) (Linux 5.12+, generic syscall number on both architectures).
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
MOUNT_SETATTR = 442
AT_FDCWD = -100
AT_RECURSIVE = 0x8000
MOUNT_ATTR_RDONLY = 0x1
_libc.mount.restype = ctypes.c_int
_libc.mount.argtypes = [
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_ulong,
    ctypes.c_char_p,
]


def mount(source: str, target: str, fstype: str | None, flags: int, data: str = "") -> None:
    """``mount(2)``; Python has no binding."""
    _check(
        _libc.mount(
            source.encode(),
            target.encode(),
            fstype.encode() if fstype else None,
            flags,
            data.encode() or None,
        ),
        f"mount({target})",
    )


def make_read_only_recursively(path: str) -> None:
    """Make the mount at ``path`` and every mount below it read-only (``mount_setattr``).

    Unlike remounting each mount, this keeps every other flag (nosuid, nodev, ...) as it is,
    which matters inside a user namespace, where clearing a flag the parent set is refused.
    """
    attr = struct.pack("=QQQQ", MOUNT_ATTR_RDONLY, 0, 0, 0)
    buffer = ctypes.create_string_buffer(attr, len(attr))
    raw_syscall(
        MOUNT_SETATTR,
        AT_FDCWD,
        ctypes.c_char_p(path.encode()),
        AT_RECURSIVE,
        buffer,
        len(attr),
        what=f"mount_setattr({path})",
    )


MADV_HUGEPAGE = 14
MADV_COLLAPSE = 25
_libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_libc.madvise.restype = ctypes.c_int


def madvise(address: int, length: int, advice: int) -> bool:
    """``madvise(2)``; returns False instead of raising, as callers treat it as a hint."""
    return _libc.madvise(address, length, advice) == 0


_libc.fork.restype = ctypes.c_int
_libc.fork.argtypes = []


def raw_fork() -> int:
    """``fork(2)`` without CPython's after-fork hooks (threading/random/logging re-init).

    Those hooks cost the child about 200 copy-on-write page faults, most of the price of a
    bare fork. Skipping them is only sound in a process with a single thread, where the
    interpreter's locks and thread state are already what the child needs; callers check that
    (see :func:`single_threaded`). The child's ``random`` state is then the parent's, which
    makes programs that use ``random`` without a seed deterministic across runs.
    """
    pid = _libc.fork()
    if pid < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"fork: {os.strerror(err)}")
    return pid


def single_threaded() -> bool:
    """True when the calling process has exactly one thread (kernel's view, not Python's)."""
    return len(os.listdir("/proc/self/task")) == 1


def drop_all_capabilities() -> None:
    """Empty the effective, permitted and inheritable capability sets (and ambient ones).

    Used where the process must keep uid 0 (the Python installation is readable only by
    root): without capabilities root can no longer bypass file permissions, raise limits,
    change uid or administer anything, and with no_new_privs it cannot get them back.
    """
    if _CAPSET is None:
        raise OSError(f"capset: no syscall table for {machine()!r}")
    raw_syscall(*_CAPSET, what="capset")
    prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)


# Built once at import: each Python object a forked child touches costs it a page copy.
_CAP_HEADER = (ctypes.c_uint32 * 2)(_LINUX_CAPABILITY_VERSION_3, 0)
_CAP_DATA = (ctypes.c_uint32 * 6)()
_CAPSET = (
    (syscall_table()["capset"], ctypes.addressof(_CAP_HEADER), ctypes.addressof(_CAP_DATA))
    if syscall_table() is not None
    else None
)
