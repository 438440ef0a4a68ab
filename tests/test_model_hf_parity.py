"""Logits of our model against transformers' LlamaForCausalLM on the same (imported) weights."""

import jax.numpy as jnp
import numpy as np
import pytest
import torch

from tpu_train.interop.hf import load_hf_params, read_hf_config
from tpu_train.model.params import model_from_params

CASES = {
    "multi_head": {},
    "grouped_query": dict(num_key_value_heads=2),
    "rope_theta_1e6": dict(rope_theta=1e6, num_key_value_heads=1),
    "llama3_rope_scaling": dict(
        num_key_value_heads=2,
        rope_theta=5e5,
        rope_scaling=dict(
            rope_type="llama3",
            factor=8.0,
            low_freq_factor=1.0,
            high_freq_factor=4.0,
            original_max_position_embeddings=32,
        ),
    ),
    "tied_embeddings": dict(tie_word_embeddings=True),
}


def _tokens(batch: int, length: int, vocab: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, vocab, size=(batch, length), dtype=np.int32)


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("scan_layers", [True, False])
def test_logits_match_transformers(hf_llama_factory, case, scan_layers):
    hf_dir, torch_model = hf_llama_factory(case, **CASES[case])
    cfg = read_hf_config(hf_dir, compute_dtype="float32", scan_layers=scan_layers)
    model = model_from_params(cfg, load_hf_params(hf_dir, cfg))
    tokens = _tokens(2, 48, cfg.vocab_size)
    ours = np.asarray(model(jnp.asarray(tokens)))
    with torch.no_grad():
        theirs = torch_model(torch.from_numpy(tokens).long()).logits.numpy()
    assert np.abs(theirs).max() > 1.0  # logits are not trivially small
    np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=0)


def test_llama3_scaling_changes_logits(hf_llama_factory):
    """Guards the llama3 case above: without scaling the logits must differ, or the test proves nothing."""
    hf_dir, _ = hf_llama_factory("l3", **CASES["llama3_rope_scaling"])
    cfg = read_hf_config(hf_dir, compute_dtype="float32")
    params = load_hf_params(hf_dir, cfg)
    tokens = jnp.asarray(_tokens(1, 64, cfg.vocab_size))
    scaled = model_from_params(cfg, params)(tokens)
    unscaled = model_from_params(cfg.replace(rope_scaling=None), params)(tokens)
    assert float(jnp.abs(scaled - unscaled).max()) > 1e-3
