"""Landlock rulesets: a filesystem allow-list plus TCP and signal scoping where the ABI has them.

The ruleset is built once in the warm worker (opening each allowed path costs a syscall or two)
and every forked child only calls ``landlock_restrict_self`` on the inherited descriptor.
Landlock ABI history that matters here: 1 = filesystem, 2 = REFER, 3 = TRUNCATE, 4 = TCP bind /
connect, 5 = IOCTL_DEV, 6 = scoping of abstract Unix sockets and signals. Landlock never covers
UDP, which is why seccomp and the network namespace also exist.
"""

from __future__ import annotations

import ctypes
import dataclasses
import os
import struct

from tpu_train.evaluation import syscalls

_CREATE_RULESET_VERSION = 1
_RULE_PATH_BENEATH = 1

EXECUTE = 1 << 0
WRITE_FILE = 1 << 1
READ_FILE = 1 << 2
READ_DIR = 1 << 3
REMOVE_DIR = 1 << 4
REMOVE_FILE = 1 << 5
MAKE_CHAR = 1 << 6
MAKE_DIR = 1 << 7
MAKE_REG = 1 << 8
MAKE_SOCK = 1 << 9
MAKE_FIFO = 1 << 10
MAKE_BLOCK = 1 << 11
MAKE_SYM = 1 << 12
REFER = 1 << 13
TRUNCATE = 1 << 14
IOCTL_DEV = 1 << 15

NET_BIND_TCP = 1 << 0
NET_CONNECT_TCP = 1 << 1
SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0
SCOPE_SIGNAL = 1 << 1

_FILE_RIGHTS = EXECUTE | WRITE_FILE | READ_FILE | TRUNCATE | IOCTL_DEV


def abi_version() -> int:
    """Landlock ABI of the running kernel, 0 when Landlock is absent or disabled."""
    try:
        return syscalls.raw_syscall(
            syscalls.LANDLOCK_CREATE_RULESET, None, 0, _CREATE_RULESET_VERSION, what="landlock"
        )
    except OSError:
        return 0


def _handled_fs(abi: int) -> int:
    rights = (1 << 13) - 1
    if abi >= 2:
        rights |= REFER
    if abi >= 3:
        rights |= TRUNCATE
    if abi >= 5:
        rights |= IOCTL_DEV
    return rights


@dataclasses.dataclass(frozen=True)
class Ruleset:
    """An open Landlock ruleset descriptor and what it covers (for the layer report)."""

    fd: int
    abi: int
    layers: tuple[str, ...]


def build_ruleset(read_only: list[str], read_write: list[str], devices: list[str]) -> Ruleset:
    """Create a ruleset allowing reads under ``read_only``, everything under ``read_write``.

    ``devices`` are character devices such as /dev/null that need read and write. Paths that
    do not exist are skipped (a Python build without lib-dynload, say). Raises OSError when the
    kernel has no Landlock.
    """
    abi = abi_version()
    if abi < 1:
        raise OSError("Landlock is not available on this kernel")
    handled_fs = _handled_fs(abi)
    handled_net = NET_BIND_TCP | NET_CONNECT_TCP if abi >= 4 else 0
    scoped = SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL if abi >= 6 else 0
    if abi >= 6:
        attr = struct.pack("=QQQ", handled_fs, handled_net, scoped)
    elif abi >= 4:
        attr = struct.pack("=QQ", handled_fs, handled_net)
    else:
        attr = struct.pack("=Q", handled_fs)
    buffer = ctypes.create_string_buffer(attr, len(attr))
    fd = syscalls.raw_syscall(
        syscalls.LANDLOCK_CREATE_RULESET, buffer, len(attr), 0, what="landlock_create_ruleset"
    )
    read_rights = EXECUTE | READ_FILE | READ_DIR
    try:
        for path in read_only:
            _add_path(fd, path, read_rights & handled_fs)
        for path in read_write:
            _add_path(fd, path, handled_fs)
        for path in devices:
            _add_path(fd, path, (READ_FILE | WRITE_FILE | TRUNCATE | IOCTL_DEV) & handled_fs)
    except BaseException:
        os.close(fd)
        raise
    layers = ["landlock-fs"]
    if handled_net:
        layers.append("landlock-tcp")
    if scoped:
        layers.append("landlock-scope")
    return Ruleset(fd=fd, abi=abi, layers=tuple(layers))


def _add_path(ruleset_fd: int, path: str, rights: int) -> None:
    try:
        path_fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    try:
        if not os.path.isdir(path):
            rights &= _FILE_RIGHTS
        attr = struct.pack("=Qi", rights, path_fd)
        buffer = ctypes.create_string_buffer(attr, len(attr))
        syscalls.raw_syscall(
            syscalls.LANDLOCK_ADD_RULE,
            ruleset_fd,
            _RULE_PATH_BENEATH,
            buffer,
            0,
            what=f"landlock_add_rule({path})",
        )
    finally:
        os.close(path_fd)


def restrict_self(ruleset: Ruleset) -> None:
    """Confine the calling process; irreversible. Needs no_new_privs unless CAP_SYS_ADMIN."""
    syscalls.prctl(syscalls.PR_SET_NO_NEW_PRIVS, 1)
    syscalls.raw_syscall(syscalls.LANDLOCK_RESTRICT_SELF, ruleset.fd, 0, what="landlock_restrict")
