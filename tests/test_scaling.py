"""Scaling on 8 fake CPU devices: FSDP memory per device, and compile time flat in depth with scan."""

import jax

from tpu_train.planning import scaling


def test_fsdp8_holds_at_most_a_sixth_of_params_and_optimizer_state_per_device():
    assert jax.device_count() == 8
    result = scaling.fsdp_state_bytes(mesh_shape={"fsdp": 8})
    assert result["devices"] == 8
    assert result["per_device"] <= result["unsharded"] / 6, result


def test_scan_compile_time_is_flat_in_depth():
    shallow, deep = scaling.compile_ratio(deep=32, shallow=2, repeats=1)
    assert deep <= 1.5 * shallow, (shallow, deep)
