"""A private mount namespace for the sandbox worker: every mount read-only, and a small tmpfs
as the programs' working directory.

The worker enters it once and its children inherit it, so programs pay nothing for it. It does
two things no other layer does:

* it confines writes without Landlock's help: a child that keeps uid 0 without capabilities
  (a Python installation only root can read) still owns root's files, but cannot write,
  create or delete any of them on a read-only mount;
* it caps the *total* bytes a program can write: ``RLIMIT_FSIZE`` limits each file, while the
  tmpfs holds at most ``disk_bytes`` in at most :data:`WORKDIR_INODES` files, so writing many
  files ends with ENOSPC instead of filling the host's disk.

Children cannot undo it: they have no capabilities (no remounting, no unmounting) and seccomp
denies every mount-related call besides.
"""

from __future__ import annotations

import errno
import os

from tpu_train.evaluation import syscalls

# Files (and directories) a program may create: enough for any honest program, and it bounds
# the time the worker spends emptying the directory after a hostile one.
WORKDIR_INODES = 4096
_PAGE = 4096


def enter_private_view(workdir: str, disk_bytes: int) -> None:
    """Run in a fresh mount namespace: make it private and read-only, then mount the tmpfs.

    Order matters: the recursive read-only flag would also cover a tmpfs mounted before it.
    """
    # Nothing mounted here reaches the host's namespace, and nothing the host mounts later
    # (a new disk, say) appears writable in here.
    syscalls.mount("none", "/", None, syscalls.MS_REC | syscalls.MS_PRIVATE)
    syscalls.make_read_only_recursively("/")
    options = f"size={disk_bytes},nr_inodes={WORKDIR_INODES},mode=0700"
    flags = syscalls.MS_NOSUID | syscalls.MS_NODEV | syscalls.MS_NOEXEC
    syscalls.mount("tmpfs", workdir, "tmpfs", flags, options)


def check_private_view(workdir: str, disk_bytes: int) -> None:
    """Raise unless files outside ``workdir`` cannot be created and it is a tmpfs of the cap."""
    outside = os.path.join(os.path.dirname(workdir), f".mount-probe-{os.getpid()}")
    try:
        fd = os.open(outside, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        if exc.errno != errno.EROFS:
            raise RuntimeError(f"creating a file outside the workdir failed oddly: {exc}") from None
    else:
        os.close(fd)
        os.unlink(outside)
        raise RuntimeError("a file outside the working directory could still be created")
    stats = os.statvfs(workdir)
    size = stats.f_blocks * stats.f_frsize
    if not 0 < size <= disk_bytes + _PAGE:
        raise RuntimeError(f"workdir holds {size} bytes, expected at most {disk_bytes}")
    probe = os.path.join(workdir, ".probe")
    with open(probe, "wb") as handle:
        handle.write(b"x")
    os.unlink(probe)
