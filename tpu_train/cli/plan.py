"""Plan a training run on a TPU slice before renting it: HBM per chip, FLOPs per step, step time, MFU.

    python -m tpu_train.plan --config=configs/llama2_7b_infinitymath.py --topology=v5p-64
    python -m tpu_train.plan --config=configs/tiny_test.py --topology=v5e-8 --mfu=0.4 \
        --config.model.remat_policy=full --config.train.batch_size=64

The model comes from the config: its `init.hf_dir` when that directory exists, else the preset its name
matches (`.../Llama-2-7b-hf` -> llama2_7b, `.../CodeLlama-7b-hf` -> codellama_7b), else `model.preset`;
`--preset` overrides all three. The config's runtime model fields (dtypes, remat policy, attention), its
`lora` section (LoRA / QLoRA: frozen base, adapters with AdamW), mesh
shape, sharding rules, batch, sequence length and microbatches are used as the trainer would use them.
See `tpu_train.planning.planner` for what each figure counts. Exits 1 when the plan does not fit.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from absl import flags
from ml_collections import config_flags

from tpu_train.cli import run_main
from tpu_train.model.config import PRESETS, LlamaConfig, get_preset

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "ml_collections training config", lock_config=True
)
_TOPOLOGY = flags.DEFINE_string("topology", "v5p-64", "TPU slice: v4-N, v5e-N, v5p-N, v6e-N")
_PRESET = flags.DEFINE_string("preset", None, "model preset overriding the config's model")
_MFU = flags.DEFINE_float("mfu", 0.5, "MFU assumed for the step time (fraction of the bf16 peak)")
_USABLE = flags.DEFINE_float("usable_hbm", 0.95, "fraction of HBM the run may use")
flags.mark_flags_as_required(["config"])

RUNTIME_FIELDS = ("param_dtype", "compute_dtype", "scan_layers", "remat_policy", "attention")


def _normalise(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower()).removesuffix("hf")


def resolve_model(config, preset: str | None = None) -> tuple[LlamaConfig, str]:
    """(model config, where it came from) for a training config."""
    runtime = {k: config.model[k] for k in RUNTIME_FIELDS if k in config.model}
    overrides = dict(config.model.get("overrides", {}))
    if preset:
        return get_preset(preset, **runtime, **overrides), f"preset {preset} (--preset)"
    hf_dir = config.init.get("hf_dir", "")
    if hf_dir and (Path(hf_dir) / "config.json").exists():
        from tpu_train.interop.hf import read_hf_config

        return read_hf_config(hf_dir, **runtime), f"{hf_dir}/config.json"
    if hf_dir:
        wanted = _normalise(Path(hf_dir).name)
        for name in PRESETS:
            if _normalise(name) == wanted:
                return get_preset(name, **runtime), f"preset {name} (named by init.hf_dir={hf_dir})"
        raise ValueError(
            f"init.hf_dir={hf_dir} does not exist and its name matches no preset; pass --preset "
            f"(one of {', '.join(PRESETS)})"
        )
    name = config.model.preset
    return get_preset(name, **runtime, **overrides), f"preset {name} (model.preset)"


def main(argv: list[str]) -> None:
    del argv
    from tpu_train.planning import format_plan, make_plan, parse_topology
    from tpu_train.training.config_checks import lora_config
    from tpu_train.training.loop import sharding_rules

    config = _CONFIG.value
    cfg, source = resolve_model(config, _PRESET.value)
    cfg = cfg.replace(lora=lora_config(config.get("lora")))
    plan = make_plan(
        cfg,
        parse_topology(_TOPOLOGY.value),
        dict(config.mesh.shape),
        config.train.batch_size,
        config.data.seq_len,
        microbatches=config.train.microbatches,
        rules=sharding_rules(config),
        mfu=_MFU.value,
        usable_fraction=_USABLE.value,
    )
    print(f"config     {source}")
    print(format_plan(plan))
    if not plan.fits:
        sys.exit(1)


def run() -> None:
    """What `python -m tpu_train.plan` does."""
    run_main(main, __doc__)


if __name__ == "__main__":
    run()
