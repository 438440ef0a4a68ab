"""Checkpoints are checked on restore (checksums written with each step) and fall back past damaged steps;
a failed save stops training at once; a failing command's stderr ends with its error."""

import asyncio
import gc
import json
import re
import shutil
import subprocess
import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import seqio_fixture_tasks  # noqa: F401  (registers fixture_arithmetic)
from etils import epath
from train_helpers import ROOT, final_params, metric_rows, tiny_config, train_command, train_env

from tpu_train import checkpoint, checksums
from tpu_train.checkpoint import CheckpointError
from tpu_train.cli import quiet_libraries
from tpu_train.training.loop import train


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny run with checkpoints at steps 2 and 4 (async saves, as in training)."""
    workdir = tmp_path_factory.mktemp("trained")
    config = tiny_config(num_steps=4, log_every=2)
    config.checkpoint.every_steps = 2
    train(config, workdir)
    return workdir


@pytest.fixture
def copy(trained, tmp_path):
    target = tmp_path / "w"
    shutil.copytree(trained, target)
    return target


def _largest_file(step_dir, item="params"):
    return max(
        (p for p in (step_dir / item).rglob("*") if p.is_file()), key=lambda p: p.stat().st_size
    )


def _flip_a_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(data))


def _truncate(path):
    path.write_bytes(path.read_bytes()[:100])


def test_every_step_carries_checksums_that_verify(trained):
    with checkpoint.Checkpointer(trained) as ckpt:
        assert ckpt.all_steps() == [2, 4]
        for step in ckpt.all_steps():
            assert checksums.manifests(ckpt.step_dir(step)) == [0]
            assert ckpt.verify(step) is None
    manifest = json.loads((trained / "checkpoints" / "4" / checksums.manifest_name(0)).read_text())
    assert any(name.startswith("params/ocdbt.process_0/") for name in manifest["files"])


def test_async_saves_are_hashed_off_the_main_thread_after_they_commit(tmp_path, monkeypatch):
    threads, real = [], checksums.write_manifest

    def recording(step_dir, process):
        assert step_dir.exists()  # committed: the final directory, not Orbax's temporary one
        threads.append(threading.current_thread().name)
        real(step_dir, process)

    monkeypatch.setattr(checksums, "write_manifest", recording)
    tree = {"w": jnp.arange(64.0).reshape(8, 8)}
    with checkpoint.Checkpointer(tmp_path, async_save=True) as ckpt:
        assert ckpt.save(1, tree, force=True)
        assert ckpt.save(2, tree, force=True)  # the first save's checksums start here at the latest
    assert len(threads) == 2 and "MainThread" not in threads
    assert all(
        (tmp_path / "checkpoints" / str(s) / checksums.manifest_name(0)).exists() for s in (1, 2)
    )


@pytest.mark.parametrize(
    "damage, reason",
    [
        (lambda s: _flip_a_byte(_largest_file(s)), "does not match its checksum"),
        (lambda s: _truncate(_largest_file(s)), r"has 100 bytes, [\d,]+ when saved"),
        (lambda s: shutil.rmtree(s / "params"), "params/.* is missing"),
        # Without its checksums (a step saved and killed before they were written) the damage only
        # shows when TensorStore reads it: one line, not its traceback.
        (
            lambda s: ((s / checksums.manifest_name(0)).unlink(), _truncate(_largest_file(s))),
            r"OUT_OF_RANGE: Error reading .* not valid for value of size 100",
        ),
    ],
    ids=["flipped-byte", "truncated-file", "half-deleted", "truncated-without-checksums"],
)
def test_a_damaged_step_is_skipped_with_a_one_line_warning(copy, capsys, damage, reason):
    damage(copy / "checkpoints" / "4")
    params, step = final_params(copy)
    assert step == 2
    warnings = [
        line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")
    ]
    assert len(warnings) == 1, warnings
    assert f"{copy}/checkpoints/4 is damaged (" in warnings[0] and warnings[0].endswith(
        "restored step 2"
    )
    assert re.search(reason, warnings[0]), warnings[0]
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(params))


def test_no_step_that_restores_is_one_clear_error(copy):
    for step in (2, 4):
        _flip_a_byte(_largest_file(copy / "checkpoints" / str(step)))
    with pytest.raises(
        CheckpointError, match=r"no checkpoint restores \(step 4: .*; step 2: .*\); move"
    ):
        final_params(copy)


def test_training_resumes_before_a_damaged_step_and_saves_it_again(copy, capsys):
    _flip_a_byte(_largest_file(copy / "checkpoints" / "4", "opt_state"))
    config = tiny_config(num_steps=6, log_every=2)
    config.checkpoint.every_steps = 2
    train(config, copy)
    out, err = capsys.readouterr()
    assert "resumed from" in out and "(step 2)" in out
    assert "checkpoints/4 is damaged" in err and "moved the damaged step 4 to" in err
    (aside,) = (copy / checkpoint.DAMAGED_DIR).iterdir()
    assert aside.name.startswith("4-")
    with checkpoint.Checkpointer(copy) as ckpt:
        assert ckpt.all_steps() == [2, 4, 6] and all(ckpt.verify(s) is None for s in (4, 6))
    assert [r["step"] for r in metric_rows(copy)][-2:] == [4, 6]


def _lora_workdir(path):
    """Step 0 holds a (toy) base, step 2 adapters over it, as a LoRA run leaves them."""
    base, adapters = {"w": jnp.arange(16.0).reshape(4, 4)}, {"a": jnp.ones((4, 2))}
    with checkpoint.Checkpointer(path, keep_base=True) as ckpt:
        ckpt.save(0, base, force=True)
        ckpt.save(2, adapters, force=True, base_step=0)
    return base, adapters


def _abstract(tree):
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


def test_a_lora_run_falls_back_to_its_base_and_fresh_adapters(tmp_path, capsys):
    base, adapters = _lora_workdir(tmp_path)
    _flip_a_byte(_largest_file(tmp_path / "checkpoints" / "2"))
    fresh = {"a": jnp.zeros((4, 2))}
    with checkpoint.Checkpointer(tmp_path, keep_base=True) as ckpt:
        first = checkpoint.start(
            ckpt, _abstract(base), None, import_params=None, init_params=lambda: base,
            adapters=checkpoint.Adapters(_abstract(adapters), lambda: fresh),
        )  # fmt: skip
    assert first.step == 0 and first.how == "resumed" and first.params is fresh
    np.testing.assert_array_equal(first.frozen["w"], base["w"])
    assert "checkpoints/2 is damaged" in capsys.readouterr().err
    _flip_a_byte(_largest_file(tmp_path / "checkpoints" / "0"))
    with (
        checkpoint.Checkpointer(tmp_path, keep_base=True) as ckpt,
        pytest.raises(CheckpointError, match=r"checkpoints/0 is damaged: .*base model is step 0"),
    ):
        checkpoint.start(
            ckpt, _abstract(base), None, import_params=None, init_params=lambda: base,
            adapters=checkpoint.Adapters(_abstract(adapters), lambda: fresh),
        )  # fmt: skip


def _last_line(stderr: str) -> str:
    return stderr.strip().splitlines()[-1]


def test_a_full_workdir_stops_training_at_once_in_one_line(tmp_path):
    """Files over 300 KB cannot be written (RLIMIT_FSIZE: EFBIG, as a full disk gives ENOSPC): the
    first async save fails, and the run exits naming the workdir and the OS error, not going on to
    step 20 and not ending in Orbax's tracebacks or asyncio's "Event loop is closed"."""

    command = train_command(
        tmp_path, "--config.train.num_steps=20", "--config.train.log_every=1",
        "--config.checkpoint.every_steps=1",
    )  # fmt: skip
    limited = ["bash", "-c", 'ulimit -f 293 && exec "$@"', "limited", *command]  # 293 KiB
    done = subprocess.run(
        limited, cwd=ROOT, env=train_env(1), capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 1, done.stderr[-3000:]
    assert _last_line(done.stderr).startswith(
        f"error: {tmp_path}: saving checkpoint step 1 failed: File too large (EFBIG"
    ), done.stderr[-3000:]
    for noise in ("Traceback", "Event loop is closed", "exception was never retrieved"):
        assert noise not in done.stderr, done.stderr[-3000:]
    assert [r["step"] for r in metric_rows(tmp_path)][-1] <= 3  # stopped at the next step boundary
    assert checkpoint.latest_step(tmp_path) is None


def _orphan_future_log(error: BaseException, caplog) -> str:
    """What asyncio logs when a future that failed is collected unretrieved, after `quiet_libraries`."""
    quiet_libraries()
    loop = asyncio.new_event_loop()
    future = loop.create_future()
    future.set_exception(error)  # as TensorStore does from C++: the error carries no traceback
    del future
    gc.collect()
    loop.close()
    logged = "\n".join(f"{r.getMessage()} {r.exc_info and r.exc_info[1]}" for r in caplog.records)
    caplog.clear()
    return logged


def test_orbax_tensorstore_orphans_are_dropped_and_other_orphans_kept(caplog):
    """The CI failure of stop 26: the rest of a failed batch of TensorStore writes reached asyncio as
    futures whose exception has no traceback (completed from C++), so the filter that looked for Orbax
    frames let them through, after the command's own error line."""
    spec = '[tensorstore_spec=\'{"path":"/w/checkpoints/1.orbax-checkpoint-tmp/opt_state/"}\']'
    assert "never retrieved" not in _orphan_future_log(ValueError(f"OUT_OF_RANGE: {spec}"), caplog)
    kept = _orphan_future_log(ValueError("an error of the user's own code"), caplog)
    assert "Future exception was never retrieved" in kept and "the user's own code" in kept


def test_an_unknown_config_key_is_the_last_line_and_names_the_flag(tmp_path):
    done = subprocess.run(
        train_command(tmp_path, "--config.train.num_stepz=4"),
        cwd=ROOT, env=train_env(1), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode != 0 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert _last_line(done.stderr) == (
        "error: --config.train.num_stepz: the config has no field 'num_stepz' "
        '(Did you mean "num_steps" instead of "num_stepz"?)'
    )


def test_a_manifest_being_written_by_another_process_is_not_hashed(tmp_path, monkeypatch):
    """Process 1's manifest, half written at the moment process 0 lists the step, is not one of the
    step's files (it used to be, and the step failed its check once the temporary file was renamed)."""
    step = epath.Path(tmp_path)
    (step / "state").mkdir()
    (step / "state" / "data").write_bytes(b"saved")
    path_type = type(step)
    real_rename = path_type.rename
    seen = {}

    def rename_after_process_0_hashed(self, target):
        if not seen:  # process 1 is between writing its temporary file and renaming it
            seen["partial"] = sorted(p.name for p in step.iterdir())
            seen["listed"] = None
            checksums.write_manifest(step, 0)
            seen["listed"] = json.loads((step / checksums.manifest_name(0)).read_text())["files"]
        return real_rename(self, target)

    monkeypatch.setattr(path_type, "rename", rename_after_process_0_hashed)
    checksums.write_manifest(step, 1)
    assert seen["partial"] == ["state", checksums.manifest_name(1) + ".partial"]
    assert list(seen["listed"]) == ["state/data"]
    assert checksums.manifests(step) == [0, 1]
    assert checksums.check_manifest(step, 0) is None
