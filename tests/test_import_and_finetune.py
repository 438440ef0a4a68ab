"""Fine-tuning an imported model: the run starts from the imported weights, never from random ones."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from tests.train_helpers import final_params, tiny_config
from tpu_train import checkpoint
from tpu_train.interop import hf
from tpu_train.interop.hf import import_hf, load_hf_params
from tpu_train.training.loop import train


def _max_diff(a: dict, b: dict) -> float:
    return max(
        float(np.abs(np.asarray(x) - np.asarray(y)).max())
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


def test_init_hf_dir_trains_from_the_imported_weights(tmp_path, hf_llama_factory):
    hf_dir, _ = hf_llama_factory(vocab_size=4096, num_key_value_heads=2)
    config = tiny_config(num_steps=2, log_every=1)
    config.init.hf_dir = str(hf_dir)
    config.optimizer.learning_rate = 1e-7  # two tiny steps: the weights must stay the imported ones
    config.optimizer.warmup_steps = 0
    config.data.report_overlong = False
    train(config, tmp_path / "w")
    cfg = checkpoint.read_model_config(tmp_path / "w")
    imported = jax.device_get(load_hf_params(hf_dir, cfg))
    trained, step = final_params(tmp_path / "w")
    assert step == 2
    assert _max_diff(trained, imported) < 1e-3
    # Step 0 is the import itself, saved by the run's own checkpoint manager.
    assert 0 in checkpoint.Checkpointer(tmp_path / "w").all_steps()


def test_import_keeps_a_cloud_workdir_a_cloud_path(tmp_path, hf_llama_factory, monkeypatch):
    """`gs://bucket/run` must reach the checkpoint layer as it is (pathlib made it `gs:/bucket/run`)."""
    hf_dir, _ = hf_llama_factory()
    seen = []
    monkeypatch.setattr(hf.checkpoint, "latest_step", lambda w: seen.append(("latest", w)))
    monkeypatch.setattr(
        hf.checkpoint, "save_params", lambda w, step, params, cfg: seen.append(("save", w))
    )
    monkeypatch.setattr(hf, "write_tokenizer", lambda source, w: seen.append(("tok", w)))
    import_hf(hf_dir, "gs://bucket/run")
    assert [str(w) for _, w in seen] == ["gs://bucket/run"] * 3


def test_import_refuses_a_workdir_with_checkpoints(tmp_path, hf_llama_factory):
    hf_dir, _ = hf_llama_factory()
    import_hf(hf_dir, tmp_path / "w")
    before = (tmp_path / "w" / checkpoint.MODEL_CONFIG_FILE).read_bytes()
    with pytest.raises(FileExistsError, match="already has checkpoints"):
        import_hf(hf_dir, tmp_path / "w")
    assert (tmp_path / "w" / checkpoint.MODEL_CONFIG_FILE).read_bytes() == before
