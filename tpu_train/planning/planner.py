"""How much HBM per chip a training config needs on a TPU topology, and the step time it implies.

Per chip, for the config's model, mesh and batch:

* parameters: every parameter's shard under the config's logical-axis rules (the same `Sharder` the trainer
  uses, on an abstract mesh of the topology's size), in `param_dtype`;
* optimizer state: AdamW's two moments, shaped and sharded like the parameters (plus a step counter);
* gradients: one parameter-shaped, parameter-sharded tree in `param_dtype` (alive during the update);
* activations: what the backward pass keeps, read from the model itself: one decoder layer is traced at the
  per-chip shapes (local batch, sequence shard, heads / MLP / vocab split by the tensor axis) under the
  config's remat policy, and the residuals autodiff saves are summed (`saved_residuals`), times the number of
  layers; plus the layer recomputed during the backward pass under a remat policy, the float32 logits and
  their gradient, and the final norm.

FLOPs per step use `LlamaConfig.flops_per_token` (6N + causal attention, the MFU formula of the
trainer); the recomputation a remat policy adds is reported separately (hardware FLOPs), so the best MFU a
policy allows is model FLOPs / hardware FLOPs. Step time = model FLOPs / (chips x peak x MFU) for a stated MFU.

The memory figures are checked against what XLA actually allocates for small models on a fake-device CPU mesh
(tests/test_plan.py): parameters and optimizer state exactly, activations + gradients against the compiled
train step's temporary buffers within the tolerance stated there.
"""

from __future__ import annotations

import dataclasses
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import AbstractMesh

from tpu_train.model import lora
from tpu_train.model.config import LlamaConfig
from tpu_train.model.llama import DecoderLayer, Llama, logical_axes, remat_policy
from tpu_train.sharding import DEFAULT_RULES, MESH_AXES, Rules, Sharder, resolve_mesh_shape

GIB = 2**30


@dataclasses.dataclass(frozen=True)
class Generation:
    """One TPU generation: HBM and dense bf16 peak per chip, and how its slice names count."""

    name: str
    hbm_bytes: int
    peak_flops: float  # dense bf16 FLOP/s per chip (vendor figure)
    cores_per_chip: int  # slice names count TensorCores on v4/v5p (2 per chip), chips on v5e/v6e
    # Chips one host (TPU VM worker) drives: 4 on every multi-host TPU slice; single-host v5e/v6e
    # slices (v5litepod-8, v6e-8) put 8 on one host, as does an 8-GPU machine.
    chips_per_host: int = 4
    single_host_chips: int = 4

    def chips_on_a_host(self, chips: int) -> int:
        return chips if chips <= self.single_host_chips else min(chips, self.chips_per_host)


TOPOLOGIES: dict[str, Generation] = {
    "v4": Generation("v4", 32 * GIB, 275e12, 2),
    "v5e": Generation("v5e", 16 * GIB, 197e12, 1, single_host_chips=8),
    "v5p": Generation("v5p", 95 * GIB, 459e12, 2),
    "v6e": Generation("v6e", 32 * GIB, 918e12, 1, single_host_chips=8),
    # GPUs, for comparison with single-GPU LoRA recipes: `a100-1`, `h100-8` count GPUs (80 GB parts).
    "a100": Generation("a100", 80 * 10**9, 312e12, 1, 8, 8),
    "h100": Generation("h100", 80 * 10**9, 989e12, 1, 8, 8),
}
_ALIASES = {"v5litepod": "v5e", "v5lite": "v5e", "v6": "v6e", "v5": "v5p"}


@dataclasses.dataclass(frozen=True)
class Topology:
    name: str
    generation: Generation
    chips: int

    @property
    def chips_per_host(self) -> int:
        return self.generation.chips_on_a_host(self.chips)


def parse_topology(name: str) -> Topology:
    """`v5p-64` (64 TensorCores = 32 chips), `v4-8` (4 chips), `v5e-16` / `v5litepod-16`, `v6e-8` (chips),
    `h100-1` / `a100-1` (80 GB GPUs)."""
    match = re.fullmatch(r"([a-z0-9]+)-(\d+)", name.strip().lower())
    if not match:
        raise ValueError(f"topology {name!r}: expected GENERATION-SIZE, e.g. v5p-64, v4-8, v6e-16")
    gen_name = _ALIASES.get(match.group(1), match.group(1))
    if gen_name not in TOPOLOGIES:
        raise ValueError(
            f"topology {name!r}: unknown generation {match.group(1)!r}; known: {', '.join(TOPOLOGIES)}"
        )
    gen, size = TOPOLOGIES[gen_name], int(match.group(2))
    if size % gen.cores_per_chip or size == 0:
        raise ValueError(
            f"topology {name!r}: {gen.name} slice sizes count TensorCores ({gen.cores_per_chip} per chip)"
        )
    return Topology(name, gen, size // gen.cores_per_chip)


def _abstract_params(cfg: LlamaConfig) -> tuple[dict, dict]:
    """(shapes as ShapeDtypeStructs, logical axes) of the canonical (layers-stacked) parameter tree."""
    state = nnx.state(
        nnx.eval_shape(lambda: Llama(cfg.replace(scan_layers=True), rngs=nnx.Rngs(0)))
    )
    return nnx.to_pure_dict(state), nnx.to_pure_dict(logical_axes(state))


def _sharder(mesh_shape: dict[str, int], rules: Rules) -> Sharder:
    sizes = tuple(mesh_shape.get(axis, 1) for axis in MESH_AXES)
    return Sharder(AbstractMesh(sizes, MESH_AXES), rules)


def _shard_elements(sharder: Sharder, axes: tuple, shape: tuple[int, ...]) -> int:
    spec = sharder.spec(axes, shape)
    elements = 1
    for dim, entry in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec)), strict=True):
        names = () if entry is None else (entry,) if isinstance(entry, str) else entry
        elements *= dim // math.prod(sharder.mesh.shape[n] for n in names)
    return elements


@dataclasses.dataclass(frozen=True)
class _ParamShard:
    name: str  # the parameter's own key (e.g. "q_proj", "lora_a")
    shape: tuple[int, ...]  # global, layers-stacked
    local: int  # elements on each chip under the rules


def _param_shards(cfg: LlamaConfig, mesh_shape: dict[str, int], rules: Rules) -> list[_ParamShard]:
    """Every parameter of the canonical tree with its per-chip size on a mesh of `mesh_shape`."""
    shapes, axes = _abstract_params(cfg)
    sharder = _sharder(mesh_shape, rules)
    flat = jax.tree_util.tree_flatten_with_path(shapes)[0]
    axis_leaves = jax.tree.leaves(axes, is_leaf=lambda x: isinstance(x, tuple))
    return [
        _ParamShard(str(path[-1].key), leaf.shape, _shard_elements(sharder, names, leaf.shape))
        for (path, leaf), names in zip(flat, axis_leaves, strict=True)
    ]


def sharded_param_bytes(
    cfg: LlamaConfig, mesh_shape: dict[str, int], rules: Rules = DEFAULT_RULES
) -> tuple[int, int]:
    """(global bytes, bytes on each chip) of the parameters under `rules` on a mesh of `mesh_shape`,
    every one in the parameter dtype (LoRA adapters included, no quantization)."""
    shards = _param_shards(cfg, mesh_shape, rules)
    itemsize = np.dtype(cfg.param_dtype).itemsize
    total = sum(math.prod(p.shape) for p in shards) * itemsize
    return total, sum(p.local for p in shards) * itemsize


def import_host_bytes(
    cfg: LlamaConfig, mesh_shape: dict[str, int], chips_per_host: int, rules: Rules = DEFAULT_RULES
) -> dict[str, int]:
    """Host memory one worker needs to import a checkpoint (`interop.hf.load_params`, then the step-0
    save), an upper bound by part:

    * ``read``: the import builds one parameter at a time from the parts its host's chips hold (each
      distinct part read once, kept in `param_dtype` until the parameter is on the chips), and reading
      one part briefly holds two float32 copies of it (the per-layer reads and their stack, or the file's
      values and their conversion); the largest parameter sets the figure.
    * ``save``: Orbax copies what a host writes of every parameter to host memory before writing it.

    A host's share of a parameter is at most ``chips_per_host`` of its distinct parts (fewer when the
    parameter is replicated over some mesh axes); which chips share a host does not change this bound.
    """
    itemsize = np.dtype(cfg.param_dtype).itemsize
    read = save = 0
    for p in _param_shards(cfg, mesh_shape, rules):
        host = min(chips_per_host, math.prod(p.shape) // p.local) * p.local
        read = max(read, host * itemsize + 2 * p.local * 4)
        save += host * itemsize
    return {"read": read, "save": save, "peak": max(read, save)}


# Bytes per element of a quantized QLoRA base weight (qwix stores nf4 as 4-bit codes).
_QUANT_BYTES = {"int8": 1.0, "nf4": 0.5}


def lora_param_bytes(
    cfg: LlamaConfig, mesh_shape: dict[str, int], rules: Rules = DEFAULT_RULES
) -> tuple[int, int]:
    """(frozen base, adapters): bytes on each chip of a LoRA model's two parts. A quantized base
    projection costs its sharded codes plus one float32 scale per block (`lora.quantize_base`'s
    layout), the scales counted unsharded."""
    itemsize = np.dtype(cfg.param_dtype).itemsize
    quant = cfg.lora.quantize_base
    frozen = adapters = 0.0
    for p in _param_shards(cfg, mesh_shape, rules):
        if lora.is_adapter(p.name):
            adapters += p.local * itemsize
        elif quant != "none" and p.name in lora.CONTRACTED_DIMS:
            last_in = lora.CONTRACTED_DIMS[p.name]  # axis 0 is the layers axis
            dim = p.shape[last_in]
            block = lora.QUANT_BLOCK if dim % lora.QUANT_BLOCK == 0 else dim
            # Scales counted whole on every chip: their sharding is XLA's choice (an upper bound).
            frozen += p.local * _QUANT_BYTES[quant] + math.prod(p.shape) / block * 4
        else:
            frozen += p.local * itemsize
    return int(frozen), int(adapters)


def local_layer_config(cfg: LlamaConfig, tensor: int) -> LlamaConfig:
    """The decoder layer one chip computes: heads, K/V heads and the MLP split by the tensor axis where it
    divides them (the rule table leaves an indivisible dimension whole)."""
    split = lambda n: n // tensor if n % tensor == 0 else n  # noqa: E731
    heads, kv = split(cfg.num_heads), split(cfg.num_kv_heads)
    if heads % kv:  # tensor divides the query heads but not the K/V heads: K/V stay whole
        heads = cfg.num_heads
    return cfg.replace(
        num_heads=heads,
        num_kv_heads=kv,
        intermediate_size=split(cfg.intermediate_size),
        explicit_head_dim=cfg.head_dim,
        attention_interpret=True,
    )


def _layer_residual_bytes(cfg: LlamaConfig, batch: int, length: int, policy_name: str) -> int:
    """Bytes autodiff keeps for one decoder layer's backward pass at [batch, length] under a remat policy."""
    from jax._src.ad_checkpoint import saved_residuals  # the jaxpr-level view of jax.checkpoint

    layer = nnx.eval_shape(lambda: DecoderLayer(cfg, nnx.Rngs(0), None))
    graph, state = nnx.split(layer)
    params = nnx.to_pure_dict(state)

    def apply(x, params, sin, cos, segment_ids, positions):
        layer_state = nnx.split(layer)[1]
        nnx.replace_by_pure_dict(layer_state, params)
        return nnx.merge(graph, layer_state)(x, sin, cos, segment_ids, positions)

    if policy_name != "none":
        apply = jax.checkpoint(apply, policy=remat_policy(policy_name))
    dt, sds = jnp.dtype(cfg.compute_dtype), jax.ShapeDtypeStruct
    args = (
        sds((batch, length, cfg.hidden_size), dt),
        params,
        sds((batch, length, cfg.head_dim), jnp.float32),
        sds((batch, length, cfg.head_dim), jnp.float32),
        sds((batch, length), jnp.int32),
        sds((batch, length), jnp.int32),
    )
    residuals = saved_residuals(apply, *args)
    total = 0
    for aval, source in residuals:
        # Shared inputs (weights, sin/cos, ids) are not per-layer activations; the layer input x is.
        if source.startswith("from the argument") and source != "from the argument x":
            continue
        if source == "from a constant":
            continue
        total += math.prod(aval.shape) * aval.dtype.itemsize
    return total


def activation_bytes(
    cfg: LlamaConfig, local_batch: int, local_length: int, tensor: int = 1
) -> dict[str, int]:
    """Per-chip activation memory of one (micro)batch's forward + backward, by part."""
    local = local_layer_config(cfg, tensor)
    saved = _layer_residual_bytes(local, local_batch, local_length, cfg.remat_policy)
    # Under a remat policy the backward pass recomputes one layer at a time with everything kept.
    recompute = (
        0
        if cfg.remat_policy == "none"
        else _layer_residual_bytes(local, local_batch, local_length, "none")
    )
    vocab = cfg.vocab_size // tensor if cfg.vocab_size % tensor == 0 else cfg.vocab_size
    tokens = local_batch * local_length
    compute = jnp.dtype(cfg.compute_dtype).itemsize
    head = (
        2 * tokens * vocab * 4 + 2 * tokens * cfg.hidden_size * compute
    )  # logits + grad, final norm
    return {
        "layers_saved": saved * cfg.num_layers,
        "per_layer_saved": saved,
        "layer_recompute": recompute,
        "logits_and_head": head,
    }


def recompute_flops_per_token(cfg: LlamaConfig, seq_len: int) -> float:
    """Forward FLOPs per token that the remat policy recomputes in the backward pass."""
    e, d = cfg.hidden_size, cfg.head_dim
    attn_proj = e * d * (2 * cfg.num_heads + 2 * cfg.num_kv_heads)
    mlp = 3 * e * cfg.intermediate_size
    attn_fwd = 2 * seq_len * cfg.num_heads * d  # causal q.k + p.v per layer, forward only
    per_layer = {
        "none": 0,
        "save_dots": 0,
        "save_dots_no_batch": attn_fwd,
        "save_qkv_attn": 2 * (mlp + e * d * cfg.num_heads),
        "full": 2 * (attn_proj + mlp) + attn_fwd,
    }[cfg.remat_policy]
    return float(per_layer * cfg.num_layers)


@dataclasses.dataclass(frozen=True)
class Plan:
    model: LlamaConfig
    topology: Topology
    mesh: dict[str, int]
    global_batch: int
    seq_len: int
    microbatches: int
    local_batch: int  # sequences per chip per microbatch
    params_total: int
    params_bytes: int  # per chip, as are all *_bytes; with LoRA the frozen base + the adapters
    opt_bytes: int
    grad_bytes: int
    activations: dict[str, int]
    model_flops_per_step: float
    hardware_flops_per_step: float
    mfu: float  # the stated MFU the step time assumes
    usable_fraction: float
    frozen_bytes: int = 0  # LoRA: the part of params_bytes that is the frozen base
    import_host: dict[str, int] = dataclasses.field(default_factory=dict)  # per host (worker)

    @property
    def activation_bytes(self) -> int:
        a = self.activations
        return a["layers_saved"] + a["layer_recompute"] + a["logits_and_head"]

    @property
    def total_bytes(self) -> int:
        return self.params_bytes + self.opt_bytes + self.grad_bytes + self.activation_bytes

    @property
    def usable_bytes(self) -> int:
        return int(self.topology.generation.hbm_bytes * self.usable_fraction)

    @property
    def fits(self) -> bool:
        return self.total_bytes <= self.usable_bytes

    @property
    def peak_flops(self) -> float:
        return self.topology.chips * self.topology.generation.peak_flops

    @property
    def step_time_s(self) -> float:
        return self.model_flops_per_step / (self.peak_flops * self.mfu)

    @property
    def mfu_ceiling(self) -> float:
        """MFU at 100% hardware utilisation: recomputed FLOPs do not count as model FLOPs."""
        return self.model_flops_per_step / self.hardware_flops_per_step


def make_plan(
    cfg: LlamaConfig,
    topology: Topology,
    mesh_shape: dict[str, int],
    global_batch: int,
    seq_len: int,
    *,
    microbatches: int = 1,
    rules: Rules = DEFAULT_RULES,
    mfu: float = 0.5,
    usable_fraction: float = 0.95,
) -> Plan:
    mesh = resolve_mesh_shape(mesh_shape, topology.chips)
    batch_shards = math.prod(mesh[a] for a in ("data", "fsdp"))
    if global_batch % (batch_shards * microbatches):
        raise ValueError(
            f"global batch {global_batch} does not split over data x fsdp = {batch_shards} chips and "
            f"{microbatches} microbatches; make it a multiple of {batch_shards * microbatches}"
        )
    if seq_len % mesh["sequence"]:
        raise ValueError(
            f"seq_len {seq_len} is not a multiple of the sequence axis {mesh['sequence']}"
        )
    local_batch = global_batch // batch_shards // microbatches
    if cfg.lora is None:
        _, params_local = sharded_param_bytes(cfg, mesh, rules)
        frozen_local, trained_local = 0, params_local
    else:  # only the adapters have gradients and AdamW state
        frozen_local, trained_local = lora_param_bytes(cfg, mesh, rules)
        params_local = frozen_local + trained_local
    n_params = cfg.num_params()
    acts = activation_bytes(cfg, local_batch, seq_len // mesh["sequence"], mesh["tensor"])
    tokens = global_batch * seq_len
    model_flops = cfg.flops_per_token(seq_len) * tokens
    hardware_flops = model_flops + recompute_flops_per_token(cfg, seq_len) * tokens
    return Plan(
        model=cfg,
        topology=topology,
        mesh=mesh,
        global_batch=global_batch,
        seq_len=seq_len,
        microbatches=microbatches,
        local_batch=local_batch,
        params_total=n_params,
        params_bytes=params_local,
        opt_bytes=2 * trained_local
        + 4,  # AdamW mu and nu like the parameters, plus the int32 count
        grad_bytes=trained_local,
        activations=acts,
        model_flops_per_step=model_flops,
        hardware_flops_per_step=hardware_flops,
        mfu=mfu,
        usable_fraction=usable_fraction,
        frozen_bytes=frozen_local,
        import_host=import_host_bytes(cfg, mesh, topology.chips_per_host, rules),
    )


def _gib(n: float) -> str:
    return f"{n / GIB:8.2f} GiB"


def format_plan(p: Plan) -> str:
    cfg, gen = p.model, p.topology.generation
    mesh = " x ".join(f"{a}={n}" for a, n in p.mesh.items() if n > 1) or "single chip"
    a = p.activations
    lines = [
        f"topology   {p.topology.name}: {p.topology.chips} {gen.name} chips, "
        f"{gen.hbm_bytes / GIB:.0f} GiB HBM and {gen.peak_flops / 1e12:.0f} TFLOP/s (dense bf16) per chip",
        f"mesh       {mesh}",
        f"model      {p.params_total / 1e9:.3f}B parameters ({cfg.matmul_params() / 1e9:.3f}B in matmuls), "
        f"{cfg.num_layers} layers, hidden {cfg.hidden_size}, heads {cfg.num_heads}/{cfg.num_kv_heads} "
        f"(q/kv), vocab {cfg.vocab_size}; param {cfg.param_dtype}, compute {cfg.compute_dtype}, "
        f"remat {cfg.remat_policy}, attention {cfg.attention}",
        f"batch      {p.global_batch} x {p.seq_len} tokens, {p.microbatches} microbatch(es): "
        f"{p.local_batch} sequence(s) per chip per microbatch",
        "",
        "HBM per chip",
        f"  parameters        {_gib(p.params_bytes)}   ({p.params_bytes / max(1, p.params_total * np.dtype(cfg.param_dtype).itemsize):.1%} of all)"
        if cfg.lora is None
        else f"  parameters        {_gib(p.params_bytes)}   (frozen base {_gib(p.frozen_bytes).strip()}"
        f"{'' if cfg.lora.quantize_base == 'none' else ' in ' + cfg.lora.quantize_base}, LoRA rank "
        f"{cfg.lora.rank} adapters {_gib(p.params_bytes - p.frozen_bytes).strip()}: "
        f"{cfg.lora_params() / 1e6:,.1f}M parameters)",
        f"  optimizer state   {_gib(p.opt_bytes)}   (AdamW mu + nu, sharded like the "
        f"{'parameters' if cfg.lora is None else 'adapters'})",
        f"  gradients         {_gib(p.grad_bytes)}",
        f"  activations       {_gib(p.activation_bytes)}   ({_gib(a['per_layer_saved']).strip()} saved per "
        f"layer x {cfg.num_layers}, {_gib(a['layer_recompute']).strip()} recomputed layer, "
        f"{_gib(a['logits_and_head']).strip()} logits + head)",
        f"  total             {_gib(p.total_bytes)}   of {_gib(p.usable_bytes).strip()} usable "
        f"({p.usable_fraction:.0%} of {gen.hbm_bytes / GIB:.0f} GiB)",
        "",
        f"host memory per worker ({p.topology.chips_per_host} chips) to import a checkpoint: "
        f"{_gib(p.import_host['peak']).strip()} (reading parts {_gib(p.import_host['read']).strip()}, "
        "staging the step-0 save "
        f"{_gib(p.import_host['save']).strip()}; an upper bound, not checked against the host's RAM)",
        "",
        f"FLOPs/step {p.model_flops_per_step:.4g} model "
        f"({'6N' if cfg.lora is None else '4N frozen + 6 x adapters'} + causal attention), "
        f"{p.hardware_flops_per_step:.4g} with remat recomputation (MFU ceiling {p.mfu_ceiling:.0%})",
        f"step time  {p.step_time_s:.3f} s at {p.mfu:.0%} MFU of {p.peak_flops / 1e15:.2f} PFLOP/s "
        f"({p.global_batch * p.seq_len / p.step_time_s:,.0f} tokens/s); "
        f"{p.model_flops_per_step / p.peak_flops:.3f} s at 100%",
    ]
    if not p.fits:
        lines.append(
            f"WARNING: needs {p.total_bytes / GIB:.1f} GiB per chip but {gen.name} has "
            f"{p.usable_bytes / GIB:.1f} GiB usable: it will not fit. Shard more (fsdp/tensor), use a "
            "stronger remat policy (full), more microbatches, or a larger slice."
        )
    else:
        lines.append(f"fits: {p.total_bytes / p.usable_bytes:.0%} of usable HBM per chip")
    return "\n".join(lines)
