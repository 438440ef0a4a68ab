"""Shared test set-up: 8 fake CPU devices for sharding tests, and tiny random Hugging Face Llamas."""

import os

# Must happen before jax is imported anywhere: gives the sharding tests 8 CPU devices to build meshes on.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest

TINY_HF = dict(
    vocab_size=256,
    hidden_size=64,
    intermediate_size=112,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=4,
    max_position_embeddings=256,
    rms_norm_eps=1e-5,
)


def make_hf_llama(out_dir, seed: int = 0, **overrides):
    """Saves a randomly initialised transformers LlamaForCausalLM (safetensors) into `out_dir`.

    Weights are drawn larger than transformers' default init and norms are not all ones, so logits
    differ clearly between tokens and a layout mistake cannot hide behind near-zero activations.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(**{**TINY_HF, **overrides})
    model = LlamaForCausalLM(config).to(torch.float32).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            else:
                p.copy_(0.08 * torch.randn_like(p))
    model.save_pretrained(out_dir, safe_serialization=True)
    return model


@pytest.fixture
def hf_llama_factory(tmp_path):
    """Returns make(name, **overrides) -> (hf_dir, torch model)."""

    def make(name: str = "hf", seed: int = 0, **overrides):
        out = tmp_path / name
        return out, make_hf_llama(out, seed=seed, **overrides)

    return make
