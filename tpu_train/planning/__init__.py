"""Memory and throughput planning for a training config on a TPU topology (see `planner`)."""

from tpu_train.planning.planner import (
    TOPOLOGIES,
    Plan,
    Topology,
    activation_bytes,
    format_plan,
    import_host_bytes,
    lora_param_bytes,
    make_plan,
    parse_topology,
    sharded_param_bytes,
)

__all__ = [
    "TOPOLOGIES",
    "Plan",
    "Topology",
    "activation_bytes",
    "format_plan",
    "import_host_bytes",
    "lora_param_bytes",
    "make_plan",
    "parse_topology",
    "sharded_param_bytes",
]
