"""The Hugging Face round trip, end to end: what `./launch.sh` runs until training lands.

    python -m tpu_train.interop.roundtrip [--workdir=runs/roundtrip] [--preset_like=tiny_gqa]

1. builds a small random `transformers` LlamaForCausalLM and saves it (safetensors),
2. imports it into a tpu_train workdir (Orbax checkpoint, step 0),
3. runs our JAX model on a batch and compares logits with transformers,
4. exports the checkpoint back to a Hugging Face directory and checks every tensor is bit-identical,
5. reloads the export with transformers and compares its greedy continuation with ours.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging

from tpu_train import checkpoint
from tpu_train.interop.hf import export_hf, import_hf
from tpu_train.interop.safetensors_io import CheckpointReader
from tpu_train.model.params import canonical_abstract, model_from_params

_WORKDIR = flags.DEFINE_string("workdir", "runs/roundtrip", "where the HF dirs and the workdir go")
_SEED = flags.DEFINE_integer("seed", 0, "seed of the random Hugging Face model")

_HF_CONFIG = dict(
    vocab_size=1024,
    hidden_size=128,
    intermediate_size=344,
    num_hidden_layers=4,
    num_attention_heads=8,
    num_key_value_heads=2,
    max_position_embeddings=512,
    rope_theta=10_000.0,
)


def _step(n: int, text: str, started: float) -> None:
    print(f"[{n}/5] {text}  ({time.perf_counter() - started:.1f}s)", flush=True)


def main(argv: list[str]) -> None:
    del argv
    logging.set_verbosity(logging.WARNING)  # Orbax logs every step of a save at INFO
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    root = Path(_WORKDIR.value)
    if root.exists():
        shutil.rmtree(root)
    started = time.perf_counter()

    torch.manual_seed(_SEED.value)
    reference = LlamaForCausalLM(LlamaConfig(**_HF_CONFIG)).eval()
    reference.save_pretrained(root / "hf_in", safe_serialization=True)
    n_params = sum(p.numel() for p in reference.parameters())
    _step(
        1,
        f"random HF Llama ({n_params / 1e6:.1f}M params, GQA 8/2 heads) -> {root / 'hf_in'}",
        started,
    )

    cfg = import_hf(root / "hf_in", root / "workdir", overrides=dict(compute_dtype="float32"))
    _step(
        2,
        f"imported -> {root / 'workdir'} (Orbax step 0, scan over {cfg.num_layers} layers)",
        started,
    )

    params, _ = checkpoint.restore_params(root / "workdir", canonical_abstract(cfg, None))
    model = model_from_params(cfg, params)
    tokens = np.random.default_rng(_SEED.value).integers(0, cfg.vocab_size, (4, 64))
    ours = np.asarray(jax.jit(lambda m, t: m(t))(model, jnp.asarray(tokens)))
    with torch.no_grad():
        theirs = reference(torch.from_numpy(tokens)).logits.numpy()
    diff = float(np.abs(ours - theirs).max())
    _step(
        3,
        f"JAX forward on {jax.devices()[0].platform}: max |logits - transformers| = {diff:.2e}",
        started,
    )

    _, files = export_hf(root / "workdir", root / "hf_out")
    before, after = CheckpointReader(root / "hf_in"), CheckpointReader(root / "hf_out")
    identical = sum(np.array_equal(before.get(n), after.get(n)) for n in before.names())
    total = len(list(before.names()))
    _step(
        4,
        f"exported -> {root / 'hf_out'} ({len(files)} files): {identical}/{total} tensors identical",
        started,
    )

    reloaded = AutoModelForCausalLM.from_pretrained(root / "hf_out").eval()
    prompt = torch.from_numpy(tokens[:1, :8])
    with torch.no_grad():
        hf_greedy = reloaded.generate(prompt, max_new_tokens=16, do_sample=False)[0, 8:].tolist()
    # A fixed-size buffer and a full forward per token (causal attention ignores the unfilled tail), so it
    # compiles once; the KV-cache sampler is a later component.
    forward = jax.jit(lambda m, t: m(t))
    seq = np.zeros((1, 24), np.int32)
    seq[0, :8] = tokens[0, :8]
    for t in range(8, 24):
        seq[0, t] = int(jnp.argmax(forward(model, jnp.asarray(seq))[0, t - 1]))
    ours_greedy = seq[0, 8:].tolist()
    _step(5, f"greedy 16 tokens: transformers(export) == ours: {hf_greedy == ours_greedy}", started)

    ok = diff <= 1e-4 and identical == total and hf_greedy == ours_greedy
    print("round trip OK" if ok else "round trip FAILED")
    if not ok:
        raise SystemExit(1)


if __name__ == "__main__":
    app.run(main)
