"""Scaling measurements on the devices at hand (8 fake CPU devices in tests and benchmarks).

* `fsdp_state_bytes`: per-device bytes of real parameters + AdamW state created sharded over a mesh,
  against the same state unsharded;
* `scan_compile_seconds`: time to lower and compile the train step for a given depth with scanned layers
  (compile time should stay flat in depth).
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from tpu_train.model.config import LlamaConfig
from tpu_train.model.params import canonical_params, init_model
from tpu_train.sharding import (
    Sharder,
    bytes_per_device,
    make_mesh,
    optimizer_state_shardings,
    total_bytes,
)
from tpu_train.training.step import TrainState, make_train_step

# Every dimension divisible by 8 so that fsdp=8 shards each matrix.
SMALL = LlamaConfig(
    vocab_size=1024,
    hidden_size=128,
    intermediate_size=344,
    num_layers=4,
    num_heads=4,
    num_kv_heads=4,
    max_seq_len=256,
    compute_dtype="float32",
)


def _state_shardings(opt_state, params):
    replicated = jax.sharding.NamedSharding(
        jax.tree.leaves(params)[0].sharding.mesh, jax.sharding.PartitionSpec()
    )
    return optimizer_state_shardings(
        jax.eval_shape(lambda: opt_state), jax.tree.map(lambda x: x.sharding, params), replicated
    )


def fsdp_state_bytes(cfg: LlamaConfig = SMALL, mesh_shape: dict | None = None) -> dict[str, int]:
    """Real parameters + AdamW state, created sharded on `mesh_shape` (default fsdp over every device):
    {"per_device": largest per-device bytes, "unsharded": global bytes, "devices": mesh size}."""
    mesh = make_mesh(mesh_shape or {"fsdp": -1})
    sharder = Sharder(mesh)
    tx = optax.adamw(1e-3)
    params = canonical_params(init_model(cfg, sharder, seed=0))
    abstract_opt = jax.eval_shape(tx.init, params)
    opt_shardings = _state_shardings(abstract_opt, params)
    opt_state = jax.jit(tx.init, out_shardings=opt_shardings)(params)
    state = (params, opt_state)
    return {
        "per_device": bytes_per_device(state),
        "unsharded": total_bytes(state),
        "devices": mesh.size,
    }


def _lowered_train_step(num_layers: int, cfg: LlamaConfig, batch: int, seq: int, scan: bool):
    """The (unsharded) train step of a `num_layers`-deep model, lowered for abstract inputs."""
    cfg = cfg.replace(num_layers=num_layers, scan_layers=scan)
    tx = optax.adamw(1e-3)
    sds = jax.ShapeDtypeStruct
    params = jax.eval_shape(lambda: canonical_params(init_model(cfg, seed=0)))
    state = TrainState(
        step=sds((), jnp.int32), params=params, opt_state=jax.eval_shape(tx.init, params)
    )
    batch_spec = {
        k: sds((batch, seq), np.int32)
        for k in (
            "decoder_input_tokens",
            "decoder_target_tokens",
            "decoder_loss_weights",
            "decoder_segment_ids",
            "decoder_positions",
        )
    }
    return jax.jit(make_train_step(cfg, None, tx)).lower(state, batch_spec)


def scan_compile_seconds(
    num_layers: int, cfg: LlamaConfig = SMALL, batch: int = 2, seq: int = 64
) -> float:
    """Seconds to lower and compile the (unsharded) train step of a `num_layers`-deep scanned model."""
    jax.clear_caches()
    start = time.perf_counter()
    _lowered_train_step(num_layers, cfg, batch, seq, scan=True).compile()
    return time.perf_counter() - start


def train_step_program_size(
    num_layers: int, scan: bool, cfg: LlamaConfig = SMALL, batch: int = 2, seq: int = 64
) -> int:
    """Operations in the lowered train step (StableHLO): what compile time grows with. With scanned
    layers it does not depend on depth; with separate layers it grows linearly."""
    text = _lowered_train_step(num_layers, cfg, batch, seq, scan).as_text()
    return sum(1 for line in text.splitlines() if " = " in line)


def compile_ratio(deep: int = 32, shallow: int = 2, repeats: int = 2) -> tuple[float, float]:
    """(best compile seconds at `shallow` layers, at `deep` layers), repetitions interleaved."""
    scan_compile_seconds(shallow)  # warm up tracing and lowering machinery
    best_shallow = best_deep = float("inf")
    for _ in range(repeats):
        best_shallow = min(best_shallow, scan_compile_seconds(shallow))
        best_deep = min(best_deep, scan_compile_seconds(deep))
    return best_shallow, best_deep
