"""Scaling on 8 fake CPU devices: FSDP memory per device, and a scanned train step whose size is flat in depth."""

import jax

from tpu_train.training import scaling


def test_fsdp8_holds_at_most_a_sixth_of_params_and_optimizer_state_per_device():
    assert jax.device_count() == 8
    result = scaling.fsdp_state_bytes(mesh_shape={"fsdp": 8})
    assert result["devices"] == 8
    assert result["per_device"] <= result["unsharded"] / 6, result


def test_scanned_train_step_does_not_grow_with_depth():
    """What compile time grows with, counted instead of timed (the machine is shared): the scanned
    program is the same size at 2 and 32 layers, the unrolled one grows with every layer."""
    scanned = [scaling.train_step_program_size(n, scan=True) for n in (2, 32)]
    assert scanned[0] == scanned[1], scanned
    unrolled = [scaling.train_step_program_size(n, scan=False) for n in (2, 4)]
    assert unrolled[1] > unrolled[0] + 50, unrolled
