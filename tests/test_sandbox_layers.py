"""Unit checks of the isolation building blocks (the hostile suite covers their effect)."""

from __future__ import annotations

import errno
import fcntl
import os
import struct

import pytest

from tpu_train.evaluation import isolation, mounts, protocol, seccomp, syscalls, worker


def test_filter_template_patches_only_the_pid() -> None:
    template = seccomp.FilterTemplate("x86_64")
    a, b = template.for_pid(1234), template.for_pid(99)
    assert len(a) == len(b) and len(a) % 8 == 0
    differing = [i for i in range(0, len(a), 8) if a[i : i + 8] != b[i : i + 8]]
    assert len(differing) == 1
    assert struct.unpack_from("=I", a, differing[0] + 4)[0] == 1234


def test_filter_starts_with_an_architecture_check() -> None:
    for arch in ("x86_64", "aarch64"):
        program = seccomp.build_filter(1, arch)
        code, _, _, k = struct.unpack_from("=HBBI", program, 0)
        assert (code, k) == (0x20, 4)  # load seccomp_data.arch
        _, _, _, token = struct.unpack_from("=HBBI", program, 8)
        assert token == syscalls.AUDIT_ARCH[arch]
    with pytest.raises(ValueError, match="no syscall table"):
        seccomp.build_filter(1, "mips")


def test_levels_are_ordered_and_validated() -> None:
    assert [isolation.level_rank(level) for level in isolation.LEVELS] == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="unknown isolation level"):
        isolation.level_rank("maximum")


def test_probe_reports_layers(tmp_path) -> None:
    limits = isolation.Limits(cpu_s=2, memory_bytes=1 << 30, file_bytes=1 << 20, open_files=32)
    plan = isolation.probe_and_prepare(limits, str(tmp_path), max_level="landlock")
    assert plan.level in isolation.LEVELS[: isolation.level_rank("landlock") + 1]
    assert ("seccomp" in plan.layers) == (plan.seccomp is not None)
    assert ("landlock-fs" in plan.layers) == (plan.ruleset is not None)
    assert "netns" not in plan.layers  # above max_level, so never tried
    if plan.ruleset is not None:
        os.close(plan.ruleset.fd)


def test_frames_roundtrip_and_reject_garbage() -> None:
    buffer = protocol.FrameBuffer()
    frame = protocol.encode({"verdict": "ok", "answer": "ü"})
    assert buffer.feed(frame[:3]) == []
    assert buffer.feed(frame[3:] + frame) == [{"verdict": "ok", "answer": "ü"}] * 2
    with pytest.raises(protocol.ProtocolError):
        protocol.FrameBuffer().feed(struct.pack(">I", 4) + b"[1]\n")
    with pytest.raises(protocol.ProtocolError, match="expected str"):
        protocol.string_field({"answer": 5}, "answer")


@pytest.mark.skipif(os.geteuid() != 0, reason="capability dropping is only meaningful as root")
def test_root_without_capabilities_cannot_regain_them() -> None:
    def attempt() -> None:
        syscalls.drop_all_capabilities()
        try:
            os.setgroups([0, 1])
        except PermissionError:
            return
        raise RuntimeError("setgroups still allowed")

    assert isolation._try_in_child(attempt) is None


def test_filter_denies_signal_routing_fcntl_commands_only() -> None:
    """F_SETOWN & co. fail with EPERM (the kernel never returns that for them on a pipe),
    whatever the upper word of the command (the kernel reads an unsigned int); the other
    fcntl commands still work."""
    table = syscalls.syscall_table()
    if table is None:
        pytest.skip("no syscall table for this architecture")

    def attempt() -> None:
        read_end, write_end = os.pipe()
        seccomp.install(seccomp.build_filter(os.getpid()))
        for name, command in seccomp.FCNTL_DENIED.items():
            for high in (0, 1 << 32):
                try:
                    syscalls.raw_syscall(table["fcntl"], read_end, high | command, os.getpid())
                except OSError as exc:
                    if exc.errno != errno.EPERM:
                        raise RuntimeError(f"{name}: errno {exc.errno}, not EPERM") from None
                else:
                    raise RuntimeError(f"{name} (upper word {high:#x}) was allowed")
        flags = fcntl.fcntl(write_end, fcntl.F_GETFL)
        fcntl.fcntl(write_end, fcntl.F_SETFL, flags | os.O_NONBLOCK)
        os.close(fcntl.fcntl(write_end, fcntl.F_DUPFD_CLOEXEC, 10))
        os.kill(os.getpid(), 0)

    assert isolation._try_in_child(attempt) is None


def test_private_view_is_read_only_with_a_capped_tmpfs(tmp_path) -> None:
    """In its own mount namespace (a throwaway child): nothing outside the workdir can be
    created, removed or written, and the workdir holds ``disk_bytes`` however many files."""
    workdir, outside = tmp_path / "work", tmp_path / "outside.txt"
    workdir.mkdir()
    outside.write_text("keep")

    def attempt() -> None:
        try:
            syscalls.unshare(syscalls.CLONE_NEWNS)
        except PermissionError:
            raise RuntimeError("no mount namespace") from None
        mounts.enter_private_view(str(workdir), 1 << 20)
        mounts.check_private_view(str(workdir), 1 << 20)
        for action in (
            lambda: outside.write_text("changed"),
            lambda: outside.unlink(),
            lambda: (tmp_path / "new").mkdir(),
        ):
            try:
                action()
            except OSError as exc:
                assert exc.errno == errno.EROFS, exc
            else:
                raise RuntimeError("a write outside the workdir succeeded")
        written = 0
        try:
            for index in range(8):
                (workdir / f"f{index}").write_bytes(b"x" * (256 << 10))
                written += 1
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
        assert 3 <= written <= 4, written  # 1 MiB holds four 256 KiB files, not five

    problem = isolation._try_in_child(attempt)
    if problem and "no mount namespace" in problem:
        pytest.skip("no mount namespace can be created here")
    assert problem is None, problem
    assert outside.read_text() == "keep" and list(workdir.iterdir()) == []


def test_clean_workdir_empties_any_tree(tmp_path) -> None:
    """Deeper than PATH_MAX and Python's recursion limit; symlinks are removed, not followed."""
    workdir, target = tmp_path / "work", tmp_path / "target.txt"
    workdir.mkdir()
    target.write_text("keep")
    (workdir / "link").symlink_to(target)
    (workdir / "dirlink").symlink_to(tmp_path)
    fd = os.open(workdir, os.O_RDONLY | os.O_DIRECTORY)
    for depth in range(3000):
        os.mkdir("d", dir_fd=fd)
        if depth % 1000 == 0:
            os.close(os.open("file", os.O_CREAT | os.O_WRONLY, dir_fd=fd))
        below = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = below
    os.close(fd)
    worker._clean_workdir(str(workdir))
    assert list(workdir.iterdir()) == []
    assert target.read_text() == "keep" and (tmp_path / "work").is_dir()
