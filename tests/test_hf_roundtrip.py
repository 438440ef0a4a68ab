"""HF -> tpu_train workdir -> HF: every tensor comes back bit-exact, transformers loads the export, and
bad inputs fail with messages that name the key or tensor."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from tpu_train.interop.hf import export_hf, import_hf, read_hf_config
from tpu_train.interop.hf_config import UnsupportedCheckpointError
from tpu_train.interop.safetensors_io import CheckpointReader, SafetensorsFileError


def _all_tensors(hf_dir) -> dict[str, np.ndarray]:
    reader = CheckpointReader(hf_dir)
    return {name: reader.get(name) for name in reader.names()}


@pytest.mark.parametrize("overrides", [{}, dict(num_key_value_heads=2, tie_word_embeddings=True)])
def test_roundtrip_is_exact_and_loads_in_transformers(hf_llama_factory, tmp_path, overrides):
    hf_dir, torch_model = hf_llama_factory(**overrides)
    import_hf(hf_dir, tmp_path / "w", overrides=dict(compute_dtype="float32"))
    # A tiny shard limit forces the sharded layout with an index file.
    step, files = export_hf(tmp_path / "w", tmp_path / "out", max_shard_bytes=100_000)
    assert step == 0
    assert "model.safetensors.index.json" in files and len(files) > 4
    before, after = _all_tensors(hf_dir), _all_tensors(tmp_path / "out")
    assert sorted(before) == sorted(after)
    for name in before:
        assert before[name].dtype == after[name].dtype, name
        np.testing.assert_array_equal(before[name], after[name], err_msg=name)

    from transformers import AutoModelForCausalLM

    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    tokens = torch.arange(0, 40).reshape(2, 20)
    with torch.no_grad():
        np.testing.assert_array_equal(
            reloaded(tokens).logits.numpy(), torch_model(tokens).logits.numpy()
        )


def test_bfloat16_export_and_config_keys(hf_llama_factory, tmp_path):
    hf_dir, _ = hf_llama_factory(rope_theta=1e6)
    import_hf(hf_dir, tmp_path / "w")
    export_hf(tmp_path / "w", tmp_path / "out", dtype="bfloat16")
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert config["rope_theta"] == 1e6 and config["torch_dtype"] == "bfloat16"
    assert config["num_key_value_heads"] == 4
    tensors = load_file(tmp_path / "out" / "model.safetensors")
    assert str(tensors["model.norm.weight"].dtype) == "bfloat16"
    assert (tmp_path / "out" / "generation_config.json").exists()


def test_cli_import_then_export(hf_llama_factory, tmp_path):
    hf_dir, _ = hf_llama_factory()
    run = lambda *args: subprocess.run(  # noqa: E731
        [sys.executable, "-m", *args], capture_output=True, text=True, check=True
    )
    out = run("tpu_train.import_hf", f"--hf_dir={hf_dir}", f"--workdir={tmp_path / 'w'}")
    assert "step 0" in out.stdout
    assert (tmp_path / "w" / "model_config.json").exists()
    out = run("tpu_train.export_hf", f"--workdir={tmp_path / 'w'}", f"--out={tmp_path / 'o'}")
    assert "model.safetensors" in out.stdout
    np.testing.assert_array_equal(
        _all_tensors(hf_dir)["lm_head.weight"], _all_tensors(tmp_path / "o")["lm_head.weight"]
    )


def _edit_config(hf_dir, **changes):
    path = hf_dir / "config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(architectures=["MistralForCausalLM"], model_type="mistral"), "only LlamaForCausalLM"),
        (dict(attention_bias=True), "attention_bias=true"),
        (dict(rope_scaling={"rope_type": "yarn", "factor": 4.0}), "'yarn' is not supported"),
    ],
)
def test_unsupported_configs_name_the_key(hf_llama_factory, changes, message):
    hf_dir, _ = hf_llama_factory()
    _edit_config(hf_dir, **changes)
    # transformers 5 writes rope_parameters, which outranks rope_scaling: drop it for the yarn case.
    config = json.loads((hf_dir / "config.json").read_text())
    config.pop("rope_parameters", None)
    (hf_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsupportedCheckpointError, match=message):
        read_hf_config(hf_dir)


def _rewrite_weights(hf_dir, edit):
    from safetensors.numpy import save_file

    tensors = load_file(hf_dir / "model.safetensors")
    edit(tensors)
    save_file(tensors, hf_dir / "model.safetensors", metadata={"format": "pt"})


def test_missing_tensor_is_named(hf_llama_factory, tmp_path):
    hf_dir, _ = hf_llama_factory()
    _rewrite_weights(hf_dir, lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
    with pytest.raises(KeyError, match=r"model\.layers\.1\.mlp\.up_proj\.weight"):
        import_hf(hf_dir, tmp_path / "w")


def test_misshaped_tensor_is_named(hf_llama_factory, tmp_path):
    hf_dir, _ = hf_llama_factory()

    def shrink(t):
        t["model.layers.0.self_attn.k_proj.weight"] = t["model.layers.0.self_attn.k_proj.weight"][
            :-1
        ]

    _rewrite_weights(hf_dir, shrink)
    with pytest.raises(UnsupportedCheckpointError, match=r"k_proj\.weight.*shape \[63, 64\]"):
        import_hf(hf_dir, tmp_path / "w")


def test_unexpected_tensor_is_named(hf_llama_factory, tmp_path):
    hf_dir, _ = hf_llama_factory()
    _rewrite_weights(
        hf_dir,
        lambda t: t.update({"model.layers.0.self_attn.q_proj.bias": np.zeros(64, np.float32)}),
    )
    with pytest.raises(UnsupportedCheckpointError, match=r"q_proj\.bias"):
        import_hf(hf_dir, tmp_path / "w")


def test_export_is_atomic(hf_llama_factory, tmp_path, monkeypatch):
    """A failure mid-write leaves neither a half-written export nor staging files behind."""
    hf_dir, _ = hf_llama_factory()
    import_hf(hf_dir, tmp_path / "w")
    from tpu_train.interop import safetensors_io

    calls = {"n": 0}
    real_write = safetensors_io.write_file

    def failing_write(path, tensors):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("disk full (simulated)")
        real_write(path, tensors)

    monkeypatch.setattr(safetensors_io, "write_file", failing_write)
    with pytest.raises(OSError, match="simulated"):
        export_hf(tmp_path / "w", tmp_path / "out", max_shard_bytes=100_000)
    assert calls["n"] == 2
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.glob(".out.partial-*"))
    with pytest.raises(FileExistsError, match="overwrite"):
        (tmp_path / "out").mkdir()
        export_hf(tmp_path / "w", tmp_path / "out")


def test_export_refuses_an_out_dir_overlapping_the_workdir(tmp_path, hf_llama_factory):
    hf_dir, _ = hf_llama_factory()
    import_hf(hf_dir, tmp_path / "w")
    for out in (tmp_path / "w", tmp_path / "w" / "hf", tmp_path):
        with pytest.raises(ValueError, match="overlaps the workdir"):
            export_hf(tmp_path / "w", out, overwrite=True)
    assert (tmp_path / "w" / "checkpoints").is_dir()  # nothing was deleted


def test_a_truncated_safetensors_file_is_named_in_one_line(hf_llama_factory, tmp_path):
    """An interrupted download: the file, not safetensors' "incomplete metadata", and no traceback."""
    hf_dir, _ = hf_llama_factory()
    weights = hf_dir / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1000])
    with pytest.raises(SafetensorsFileError, match=r"model\.safetensors: not a complete"):
        import_hf(hf_dir, tmp_path / "w")
    assert not (tmp_path / "w" / "checkpoints").exists()  # nothing was written
    done = subprocess.run(
        [sys.executable, "-m", "tpu_train.import_hf", f"--hf_dir={hf_dir}", f"--workdir={tmp_path / 'w'}"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode != 0 and "Traceback" not in done.stderr, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {weights}: not a complete safetensors file"), last
