"""A LoRA workdir's adapters as a PEFT adapter directory, which `peft.PeftModel.from_pretrained(base, DIR)`
loads on top of the Hugging Face base model.

    DIR/adapter_config.json          peft_type LORA, r, lora_alpha, target_modules, task CAUSAL_LM
    DIR/adapter_model.safetensors    base_model.model.model.layers.{i}.self_attn.q_proj.lora_A.weight ...

Layouts: our A [*in, r] and B [r, *out] flatten their input and output dims in the order Hugging Face's
weight does (`interop.hf_weights`), so PEFT's lora_A [r, in] is A flattened and transposed, its lora_B
[out, r] likewise B; PEFT scales by lora_alpha / r as we do.

For QLoRA the adapters were trained against the quantized base; applied to the full-precision base they
give a slightly different model than the one sampled here (the merged export, which merges into the
dequantized base, is the exact one).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from tpu_train import checkpoint
from tpu_train.interop.hf import EXPORT_DTYPES, staged_directory
from tpu_train.model.config import LlamaConfig
from tpu_train.model.params import adapter_abstract, host_array

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
_MODULE = {  # our projection -> its module path inside a Hugging Face Llama layer
    "q_proj": "self_attn.q_proj",
    "k_proj": "self_attn.k_proj",
    "v_proj": "self_attn.v_proj",
    "o_proj": "self_attn.o_proj",
    "gate_proj": "mlp.gate_proj",
    "up_proj": "mlp.up_proj",
    "down_proj": "mlp.down_proj",
}


def adapter_tensors(adapters: dict, cfg: LlamaConfig, dtype: np.dtype) -> dict[str, np.ndarray]:
    """PEFT's tensor names and layouts for a canonical adapter tree (layers stacked)."""
    r = cfg.lora.rank
    out = {}
    for group in adapters["layers"].values():
        for target in cfg.lora.targets:
            if target + "_lora_a" not in group:
                continue
            a = host_array(group[target + "_lora_a"])  # [layers, *in, r]
            b = host_array(group[target + "_lora_b"])  # [layers, r, *out]
            for i in range(cfg.num_layers):
                name = f"base_model.model.model.layers.{i}.{_MODULE[target]}"
                out[f"{name}.lora_A.weight"] = np.ascontiguousarray(a[i].reshape(-1, r).T, dtype)
                out[f"{name}.lora_B.weight"] = np.ascontiguousarray(b[i].reshape(r, -1).T, dtype)
    return out


def adapter_config(cfg: LlamaConfig, base_model: str) -> dict:
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "r": cfg.lora.rank,
        "lora_alpha": cfg.lora.alpha,
        "lora_dropout": 0.0,
        "target_modules": sorted(cfg.lora.targets),
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        "use_dora": False,
        "init_lora_weights": True,
        "inference_mode": True,
        "modules_to_save": None,
    }


def export_adapter(
    workdir: str | Path,
    cfg: LlamaConfig,
    out_dir: Path,
    *,
    step: int | None = None,
    dtype: str | None = None,
    overwrite: bool = False,
) -> tuple[int, list[str]]:
    """Writes the adapters of checkpoint `step` (default: latest) of a LoRA workdir; returns (step,
    files). `base_model_name_or_path` records the model the run imported (`config.init`)."""
    if cfg.lora is None:
        raise ValueError(
            f"{workdir} is not a LoRA workdir (its model_config.json has no lora); export it without "
            "--lora=adapter"
        )
    dtype = dtype or cfg.param_dtype
    if dtype not in EXPORT_DTYPES:
        raise ValueError(f"export dtype {dtype!r}; choose one of {sorted(EXPORT_DTYPES)}")
    if out_dir.exists() and not overwrite:
        raise FileExistsError(f"{out_dir} exists; pass overwrite=True (--overwrite) to replace it")
    step = checkpoint.latest_step(workdir) if step is None else step
    if step in (None, checkpoint.BASE_STEP):
        raise FileNotFoundError(
            f"{workdir}: no trained adapters yet (only the base, step {checkpoint.BASE_STEP}); train "
            "first, or export the base with --lora=merged"
        )
    adapters, step = checkpoint.restore_params(workdir, adapter_abstract(cfg, None), step)
    tensors = adapter_tensors(adapters, cfg, np.dtype(EXPORT_DTYPES[dtype]))
    with staged_directory(out_dir) as staging:
        save_file(tensors, str(staging / ADAPTER_WEIGHTS), metadata={"format": "pt"})
        config = adapter_config(cfg, _base_model(workdir))
        (staging / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    return step, [ADAPTER_CONFIG, ADAPTER_WEIGHTS]


def _base_model(workdir: str | Path) -> str:
    path = checkpoint.workdir_path(workdir) / "config.json"
    if not path.exists():
        return ""
    init = json.loads(path.read_text()).get("init", {})
    return init.get("hf_dir") or init.get("gguf") or ""
