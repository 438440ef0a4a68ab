"""Device mesh, logical-axis rules and per-device memory.

Every parameter and key activation of the model names its axes with *logical* names ("embed", "heads",
"batch", ...). A short rule table maps each logical name to zero or more *mesh* axes ("data", "fsdp",
"sequence", "tensor"). Changing the parallelism of a run means editing the mesh shape or the table, never the
model.

Example:
    >>> rules = dict(DEFAULT_RULES)
    >>> rules["embed"], rules["mlp"], rules["batch"]
    ('fsdp', 'tensor', ('data', 'fsdp'))

With mesh {data: 2, fsdp: 4}, an MLP kernel with logical axes ("embed", "mlp") of shape [4096, 11008] gets
PartitionSpec("fsdp", None): the tensor axis has size 1, so "mlp" is left whole, and each device holds
[1024, 11008].
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "sequence", "tensor")

MeshAxes = str | tuple[str, ...] | None
Rules = tuple[tuple[str, MeshAxes], ...]

# Parameters: FSDP shards the embed dimension, tensor parallelism the heads / MLP / vocabulary.
# Activations ("act_*") keep the embed dimension whole so FSDP all-gathers weights, not activations.
DEFAULT_RULES: Rules = (
    ("batch", ("data", "fsdp")),
    ("length", "sequence"),
    ("embed", "fsdp"),
    ("vocab", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),
    ("head_dim", None),
    ("layers", None),
    ("norm", None),
    ("lora_rank", None),  # LoRA adapters: the rank dim is small and stays whole
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_kv_heads", "tensor"),
    ("act_mlp", "tensor"),
    ("act_vocab", "tensor"),
)


def resolve_mesh_shape(shape: Mapping[str, int], num_devices: int) -> dict[str, int]:
    """Fills in the one axis given as -1 so that the product equals `num_devices`.

    >>> resolve_mesh_shape({"data": 2, "fsdp": -1, "tensor": 1}, 8)
    {'data': 2, 'fsdp': 4, 'sequence': 1, 'tensor': 1}
    """
    unknown = sorted(set(shape) - set(MESH_AXES))
    if unknown:
        raise ValueError(f"mesh axes {unknown} are not among {MESH_AXES}")
    sizes = {axis: int(shape.get(axis, 1)) for axis in MESH_AXES}
    free = [axis for axis, size in sizes.items() if size == -1]
    if len(free) > 1:
        raise ValueError(f"only one mesh axis may be -1, got {free}")
    if any(size == 0 or size < -1 for size in sizes.values()):
        raise ValueError(f"mesh sizes must be positive or -1, got {sizes}")
    fixed = math.prod(size for size in sizes.values() if size != -1)
    if free:
        if num_devices % fixed:
            raise ValueError(
                f"mesh {sizes}: the fixed axes multiply to {fixed}, which does not divide the "
                f"{num_devices} available devices; change mesh sizes so their product divides {num_devices}"
            )
        sizes[free[0]] = num_devices // fixed
    elif fixed != num_devices:
        raise ValueError(
            f"mesh {sizes} has {fixed} devices but {num_devices} are available; set one axis to -1 "
            "or make the sizes multiply to the device count"
        )
    return sizes


def make_mesh(shape: Mapping[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
    """Builds a mesh over `devices` (default: all) with axes MESH_AXES, sized by `shape`."""
    devices = list(devices) if devices is not None else jax.devices()
    sizes = resolve_mesh_shape(shape, len(devices))
    return jax.make_mesh(
        tuple(sizes[a] for a in MESH_AXES),
        MESH_AXES,
        axis_types=(AxisType.Auto,) * len(MESH_AXES),
        devices=devices,
    )


@dataclasses.dataclass(frozen=True)
class Sharder:
    """A mesh plus the rule table: turns logical axis names into shardings.

    A mesh axis is dropped from a dimension when the dimension is not divisible by it (e.g. 2 KV heads on
    tensor=4) or when an earlier dimension of the same array already uses it; that dimension is then
    replicated, which is always correct, only less memory-efficient.
    """

    mesh: Mesh
    rules: Rules = DEFAULT_RULES

    def __post_init__(self) -> None:
        for name, axes in self.rules:
            for axis in _as_tuple(axes):
                if axis not in self.mesh.axis_names:
                    raise ValueError(
                        f"rule {name!r} -> {axis!r}: no such mesh axis {self.mesh.axis_names}"
                    )

    def spec(
        self, logical_axes: Sequence[str | None], shape: Sequence[int] | None = None
    ) -> PartitionSpec:
        table = dict(self.rules)
        used: set[str] = set()
        out: list[MeshAxes] = []
        for i, name in enumerate(logical_axes):
            if name is not None and name not in table:
                raise KeyError(f"logical axis {name!r} has no rule; known: {sorted(table)}")
            axes = [
                a for a in _as_tuple(table.get(name)) if a not in used and self.mesh.shape[a] > 1
            ]
            if shape is not None:
                axes = _divisible_prefix(axes, shape[i], self.mesh)
            used.update(axes)
            out.append(None if not axes else axes[0] if len(axes) == 1 else tuple(axes))
        return PartitionSpec(*out)

    def sharding(
        self, logical_axes: Sequence[str | None], shape: Sequence[int] | None = None
    ) -> NamedSharding:
        return NamedSharding(self.mesh, self.spec(logical_axes, shape))

    def constrain(self, x: jax.Array, logical_axes: Sequence[str | None]) -> jax.Array:
        """Pins an activation's layout inside `jax.jit` (a no-op on a one-device mesh)."""
        if self.mesh.size == 1:
            return x
        return jax.lax.with_sharding_constraint(x, self.sharding(logical_axes, x.shape))


def constrain(
    x: jax.Array, sharder: Sharder | None, logical_axes: Sequence[str | None]
) -> jax.Array:
    """`sharder.constrain`, or identity without a sharder (single-device use)."""
    return x if sharder is None else sharder.constrain(x, logical_axes)


def _as_tuple(axes: MeshAxes) -> tuple[str, ...]:
    if axes is None:
        return ()
    return (axes,) if isinstance(axes, str) else tuple(axes)


def _divisible_prefix(axes: list[str], dim: int, mesh: Mesh) -> list[str]:
    """Longest prefix of `axes` whose combined size divides `dim`."""
    keep: list[str] = []
    for axis in axes:
        if dim % (math.prod(mesh.shape[a] for a in keep) * mesh.shape[axis]):
            break
        keep.append(axis)
    return keep


def bytes_per_device(arrays: object) -> int:
    """Bytes that the largest-loaded device holds for the arrays in a pytree (jax.Array or ShapeDtypeStruct
    with a sharding)."""
    per_device: dict[jax.Device, int] = {}
    for leaf in jax.tree.leaves(arrays):
        sharding = getattr(leaf, "sharding", None)
        itemsize = np.dtype(leaf.dtype).itemsize
        if sharding is None:
            per_device[None] = per_device.get(None, 0) + math.prod(leaf.shape) * itemsize
            continue
        shard_bytes = math.prod(sharding.shard_shape(leaf.shape)) * itemsize
        for device in sharding.device_set:
            per_device[device] = per_device.get(device, 0) + shard_bytes
    return max(per_device.values(), default=0)


def total_bytes(arrays: object) -> int:
    """Global (unsharded) bytes of the arrays in a pytree."""
    return sum(math.prod(x.shape) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(arrays))


def describe(mesh: Mesh, arrays: object) -> str:
    """One line: mesh shape, global bytes, and the largest per-device share."""
    shape = " x ".join(f"{a}={n}" for a, n in mesh.shape.items() if n > 1) or "single device"
    total, local = total_bytes(arrays), bytes_per_device(arrays)
    return (
        f"mesh [{shape}] ({mesh.size} devices): {total / 2**20:,.1f} MiB in all, "
        f"{local / 2**20:,.1f} MiB per device ({local / max(total, 1):.1%})"
    )


def optimizer_state_shardings(opt_abstract, param_shardings, replicated):
    """Every subtree of the optimizer state shaped like the parameters (Adam's moments) is sharded like
    the parameters; everything else (step counters) is replicated."""
    param_def = jax.tree.structure(param_shardings)

    def like_params(node) -> bool:
        return jax.tree.structure(node) == param_def

    return jax.tree.map(
        lambda node: param_shardings if like_params(node) else replicated,
        opt_abstract,
        is_leaf=like_params,
    )


def put_global(value: np.ndarray, sharding: jax.sharding.Sharding) -> jax.Array:
    """A host value that every process holds alike, as a jax.Array laid out by `sharding`; each process
    copies only the slices its own devices hold (so it also works when the mesh spans processes)."""
    return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])


def fetch_global(tree: object) -> object:
    """`jax.device_get` for arrays that may span processes: each process gets the whole value of every
    leaf (gathered across processes when a leaf has slices on other hosts)."""
    leaves = jax.tree.leaves(tree)
    if all(not isinstance(x, jax.Array) or x.is_fully_addressable for x in leaves):
        return jax.device_get(tree)
    from jax.experimental import multihost_utils

    return multihost_utils.process_allgather(tree, tiled=True)
