"""LoRA and QLoRA: adapters on a frozen base, from the model up to the PEFT export.

The journey test runs what a user runs: import a (random) Hugging Face Llama, LoRA fine-tune it with
`python -m tpu_train.train`, lose the process to SIGKILL and resume, then sample from the workdir and
export it both ways, checked in torch against transformers and peft.
"""

from __future__ import annotations

import json
import signal

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tests.train_helpers import final_params, run_train
from tpu_train import checkpoint
from tpu_train.interop.hf import export_hf
from tpu_train.model import lora
from tpu_train.model.config import LoraConfig, get_preset
from tpu_train.model.llama import logical_axes
from tpu_train.model.params import (
    adapter_abstract,
    canonical_params,
    init_adapters,
    init_model,
    model_from_params,
)
from tpu_train.training.config_checks import ConfigError
from tpu_train.training.step import BATCH_KEYS, TrainState, make_train_step

TINY = get_preset("tiny_gqa", compute_dtype="float32")
TOKENS = (jnp.arange(48).reshape(3, 16) * 7) % TINY.vocab_size


def _perturbed(adapters: dict, seed: int = 1) -> dict:
    """Adapters with B != 0 (trained ones), so that merge and export have something to carry."""
    leaves, tree = jax.tree.flatten(adapters)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return jax.tree.unflatten(
        tree, [x + 0.05 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys, strict=True)]
    )


def test_fresh_adapters_leave_the_base_model_exactly():
    cfg = TINY.replace(lora=LoraConfig(rank=4))
    base = canonical_params(init_model(TINY, seed=3))
    adapters = init_adapters(cfg, seed=0)
    assert all(not np.any(b) for k, b in _named(adapters) if k.endswith("_lora_b"))
    assert all(np.any(a) for k, a in _named(adapters) if k.endswith("_lora_a"))
    with_lora = model_from_params(cfg, lora.combine(base, adapters))(TOKENS)
    plain = model_from_params(TINY, base)(TOKENS)
    np.testing.assert_array_equal(with_lora, plain)


def _named(tree: dict, prefix: str = ""):
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from _named(value, prefix + key + ".")
        else:
            yield prefix + key, value


def test_adapters_carry_the_logical_axes_of_the_weight_they_adapt():
    cfg = TINY.replace(lora=LoraConfig(rank=4, targets=("q_proj", "o_proj", "down_proj")))
    from flax import nnx

    axes = nnx.to_pure_dict(logical_axes(nnx.state(init_model(cfg), nnx.Param)))["layers"]
    assert axes["attn"]["q_proj_lora_a"] == ("layers", "embed", "lora_rank")
    assert axes["attn"]["q_proj_lora_b"] == ("layers", "lora_rank", "heads", "head_dim")
    assert axes["attn"]["o_proj_lora_a"] == ("layers", "heads", "head_dim", "lora_rank")
    assert axes["mlp"]["down_proj_lora_b"] == ("layers", "lora_rank", "embed")
    assert "k_proj_lora_a" not in axes["attn"] and "up_proj_lora_a" not in axes["mlp"]


@pytest.mark.parametrize("scan_layers", [True, False])
def test_merged_weights_compute_what_the_adapters_compute(scan_layers):
    cfg = TINY.replace(lora=LoraConfig(rank=4, alpha=8.0), scan_layers=scan_layers)
    base = canonical_params(init_model(TINY, seed=3))
    params = lora.combine(base, _perturbed(init_adapters(cfg)))
    adapted = model_from_params(cfg, params)(TOKENS)
    merged, plain_cfg = lora.plain_model(params, cfg)
    assert plain_cfg.lora is None and "q_proj_lora_a" not in merged["layers"]["attn"]
    np.testing.assert_allclose(model_from_params(plain_cfg, merged)(TOKENS), adapted, atol=2e-5)
    assert float(jnp.abs(adapted - model_from_params(TINY, base)(TOKENS)).max()) > 1e-2


@pytest.mark.parametrize("quantize, tolerance", [("int8", 0.05), ("nf4", 0.5)])
def test_qlora_base_is_quantized_by_qwix_and_dequantized_where_used(quantize, tolerance):
    import qwix

    cfg = TINY.replace(lora=LoraConfig(rank=4, quantize_base=quantize))
    base = canonical_params(init_model(TINY, seed=3))
    frozen = lora.quantize_base(base, cfg.lora)
    q = frozen["layers"]["attn"]["q_proj"]
    assert isinstance(q, qwix.QArray) and q.qvalue.shape == base["layers"]["attn"]["q_proj"].shape
    assert not isinstance(frozen["embed"], qwix.QArray)  # only the projections are quantized
    params = lora.combine(frozen, _perturbed(init_adapters(cfg)))
    quantized = model_from_params(cfg, params)(TOKENS)
    merged, plain_cfg = lora.plain_model(params, cfg)
    np.testing.assert_allclose(model_from_params(plain_cfg, merged)(TOKENS), quantized, atol=2e-5)
    full = model_from_params(cfg, lora.combine(base, lora.split(params)[1]))(TOKENS)
    error = float(jnp.abs(quantized - full).max())
    assert 0 < error < tolerance, error


def _batch(cfg, batch=4, length=32):
    tokens = (jnp.arange(batch * length).reshape(batch, length) * 13) % cfg.vocab_size
    return {
        "decoder_input_tokens": tokens,
        "decoder_target_tokens": jnp.roll(tokens, -1, axis=1),
        "decoder_loss_weights": jnp.ones_like(tokens),
        "decoder_segment_ids": jnp.ones_like(tokens),
        "decoder_positions": jnp.broadcast_to(jnp.arange(length), tokens.shape),
    }


def test_only_the_adapters_train_and_the_base_gets_no_weight_gradient():
    cfg = TINY.replace(lora=LoraConfig(rank=4))
    base = canonical_params(init_model(TINY, seed=3))
    adapters = init_adapters(cfg)
    tx = optax.adamw(1e-2)
    state = TrainState(jnp.int32(0), adapters, tx.init(adapters), frozen=base)
    assert jax.tree.structure(state.opt_state[0].mu) == jax.tree.structure(adapters)
    step = jax.jit(make_train_step(cfg, None, tx))
    batch = {k: _batch(cfg)[k] for k in BATCH_KEYS}
    new, metrics = step(state, batch)
    jax.tree.map(np.testing.assert_array_equal, new.frozen, base)
    moved = [
        float(jnp.abs(a - b).max())
        for a, b in zip(*map(jax.tree.leaves, (new.params, adapters)), strict=True)
    ]
    assert min(moved) > 0 and np.isfinite(float(metrics["loss"]))
    # The base's weight gradients are not computed at all: the step costs about 4N + 6 x adapters per
    # token instead of 6N (XLA's count of the compiled step, against full fine-tuning's).
    full_state = TrainState(jnp.int32(0), base, tx.init(base))
    flops = [
        _flops(jax.jit(make_train_step(c, None, tx)), s, batch)
        for c, s in ((cfg, state), (TINY, full_state))
    ]
    assert flops[0] / flops[1] < 0.85, flops


def _flops(fn, state, batch) -> float:
    analysis = fn.lower(state, batch).compile().cost_analysis()
    return (analysis[0] if isinstance(analysis, list) else analysis)["flops"]


def test_lora_config_errors_name_the_field():
    from tpu_train.training.base_config import base_config
    from tpu_train.training.config_checks import lora_config

    config = base_config()
    assert lora_config(config.lora) is None  # rank 0: full fine-tuning
    config.lora.rank, config.lora.targets = 8, ("q_proj", "qkv")
    with pytest.raises(ConfigError, match=r"config.lora: .*unknown \['qkv'\]"):
        lora_config(config.lora)
    config.lora.targets, config.lora.quantize_base = ("q_proj",), "int3"
    with pytest.raises(ConfigError, match="quantize_base='int3'"):
        lora_config(config.lora)


def test_lora_model_config_round_trips_through_json():
    cfg = TINY.replace(lora=LoraConfig(rank=8, alpha=32.0, targets=("q_proj", "v_proj")))
    again = type(cfg).from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg and again.lora.scale == 4.0


LORA_RUN = [
    "--config.lora.rank=4",
    "--config.lora.alpha=8.0",
    "--config.train.num_steps=8",
    "--config.checkpoint.every_steps=4",
    "--config.checkpoint.keep=1",
    "--config.train.log_every=1",
    "--config.optimizer.learning_rate=3e-2",
    "--config.data.report_overlong=False",
]


def test_lora_journey_import_finetune_kill_resume_sample_export(tmp_path, hf_llama_factory):
    """Import -> LoRA fine-tune (SIGKILLed at step 6, resumed) -> sample -> export merged and PEFT."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    hf_dir, hf_model = hf_llama_factory(vocab_size=4096, num_key_value_heads=2)
    run = [f"--config.init.hf_dir={hf_dir}", *LORA_RUN]
    straight = run_train(tmp_path / "straight", *run)
    assert "LoRA rank 4 on q_proj" in straight.stdout, straight.stdout[-2000:]
    killed = run_train(
        tmp_path / "w", *run, "--config.train.fault_injection_kill_at_step=6", check=False
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    resumed = run_train(tmp_path / "w", *run)
    assert "resumed from" in resumed.stdout and "(step 4)" in resumed.stdout

    # Checkpoints: the base once as step 0 (kept although keep=1), then adapters and their AdamW
    # state only, bit-equal to the run that was never interrupted.
    work = tmp_path / "w"
    assert checkpoint.Checkpointer(work).all_steps() == [0, 8]
    cfg = checkpoint.read_model_config(work)
    assert cfg.lora == LoraConfig(rank=4, alpha=8.0)
    adapters = {}
    for name in ("straight", "w"):
        adapters[name], step = checkpoint.restore_params(
            tmp_path / name, adapter_abstract(cfg, None)
        )
        assert step == 8
    for a, b in zip(*map(jax.tree.leaves, adapters.values()), strict=True):
        np.testing.assert_array_equal(a, b)
    progress = json.loads((work / "checkpoints" / "8" / "progress" / "metadata").read_text())
    assert progress == {"step": 8, "base_step": 0}
    assert max(float(np.abs(b).max()) for k, b in _named(adapters["w"]) if k.endswith("_b")) > 0

    # Sampling loads the workdir directly: the merged model, equal to the plain HF base where no
    # adapter applies (embeddings), different where adapters trained.
    from tpu_train.sampling.loading import load_for_sampling

    model, _, _ = load_for_sampling(workdir=work, compute_dtype="float32")
    assert model.cfg.lora is None
    merged_params, _ = final_params(work)

    # Export: merged (plain transformers) and adapter (PEFT on the HF base): the same logits.
    export_hf(work, tmp_path / "merged")
    step, files = export_hf(work, tmp_path / "adapter", lora="adapter")
    assert step == 8 and files == ["adapter_config.json", "adapter_model.safetensors"]
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float32).eval()
    base = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    frozen_before = {k: v.clone() for k, v in base.state_dict().items()}
    peft_model = PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
    tokens = torch.tensor(np.asarray(TOKENS) % 4096)
    with torch.no_grad():
        merged_logits = merged(tokens).logits.numpy()
        peft_logits = peft_model(tokens).logits.numpy()
        base_logits = hf_model(tokens).logits.numpy()
    np.testing.assert_allclose(peft_logits, merged_logits, atol=1e-4)
    ours = np.asarray(model(jnp.asarray(np.asarray(TOKENS) % 4096)))
    np.testing.assert_allclose(ours, merged_logits, atol=1e-4)
    assert np.abs(merged_logits - base_logits).max() > 1e-3  # the adapters changed the model
    # The base's own tensors are untouched by loading adapters, and the merged export keeps every
    # tensor no adapter targets exactly as imported.
    for name, value in peft_model.get_base_model().state_dict().items():
        if "lora_" not in name:
            key = name.replace(".base_layer", "")
            torch.testing.assert_close(value, frozen_before[key], rtol=0, atol=0)
    for name in ("model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"):
        torch.testing.assert_close(merged.state_dict()[name], frozen_before[name], rtol=0, atol=0)
    assert np.asarray(merged_params["embed"]).shape == (4096, 64)

    # A LoRA workdir resumes only with its own adapters.
    refused = run_train(work, *run[:1], "--config.train.num_steps=9", check=False)
    assert refused.returncode != 0 and "lora=" in refused.stderr


def test_adapter_export_of_a_full_finetune_is_refused(tmp_path):
    run_train(tmp_path / "w", "--config.train.num_steps=1", "--config.checkpoint.every_steps=1")
    with pytest.raises(ValueError, match="not a LoRA workdir"):
        export_hf(tmp_path / "w", tmp_path / "out", lora="adapter")
    assert not (tmp_path / "out").exists()


def test_qlora_run_from_scratch_trains_and_resumes(tmp_path):
    """QLoRA without an import: the random base is saved as step 0 and quantized at every start."""
    common = [
        "--config.lora.rank=4",
        "--config.lora.quantize_base=int8",
        "--config.train.num_steps=4",
        "--config.checkpoint.every_steps=2",
        "--config.train.log_every=1",
        "--config.data.report_overlong=False",
    ]
    first = run_train(tmp_path / "w", *common[:-3], "--config.train.num_steps=2",
                      "--config.checkpoint.every_steps=2", *common[-2:])  # fmt: skip
    assert "base frozen, int8" in first.stdout
    second = run_train(tmp_path / "w", *common)
    assert "resumed from" in second.stdout
    assert checkpoint.Checkpointer(tmp_path / "w").all_steps() == [0, 2, 4]
    params, step = final_params(tmp_path / "w")
    assert step == 4 and "q_proj_lora_a" not in params["layers"]["attn"]
