"""The training loop: learning, accumulation, exact resume after SIGKILL, SIGTERM, other meshes, errors."""

import json
import signal

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

# pytest puts tests/ on sys.path (no __init__.py there), so the helper modules import directly.
import seqio_fixture_tasks  # noqa: F401  (registers fixture_arithmetic)
from train_helpers import (
    final_params,
    metric_rows,
    run_train,
    start_train,
    tiny_config,
)

from tpu_train import checkpoint
from tpu_train.model import get_preset
from tpu_train.model.params import canonical_params, init_model, model_from_params
from tpu_train.training import input_pipeline
from tpu_train.training.config_checks import ConfigError, check_config
from tpu_train.training.loop import NonFiniteLossError, train
from tpu_train.training.step import TrainState, loss_sums, make_train_step


def test_loss_decreases_and_metrics_are_written(tmp_path):
    config = tiny_config(num_steps=30, log_every=5)  # fsdp over the 8 fake devices
    train(config, tmp_path)
    rows = metric_rows(tmp_path)
    assert [r["step"] for r in rows] == [5, 10, 15, 20, 25, 30]
    assert rows[-1]["loss"] < 0.7 * rows[0]["loss"]
    for key in (
        "token_accuracy",
        "grad_norm",
        "learning_rate",
        "tokens_per_s",
        "tokens_per_s_per_device",
        "mfu",
    ):
        assert np.isfinite(rows[-1][key]) and rows[-1][key] >= 0, key
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    _, step = final_params(tmp_path)
    assert step == 30


def test_validation_loss_hook_scores_the_validation_split(tmp_path):
    """val/loss every 2 steps on the same 2 validation batches; the last one equals the loss of the final
    checkpoint on those batches, computed here independently."""
    from tpu_train.training.hooks import validation_data

    config = tiny_config(num_steps=4, log_every=2)
    config.eval.validation_every_steps, config.eval.validation_batches = 2, 2
    train(config, tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "validation.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 4]
    assert [r["step"] for r in metric_rows(tmp_path)] == [2, 4]  # the training rows stay apart
    data_cfg = validation_data(config.data)
    data_cfg.tokenizer = str(tmp_path)
    batches = input_pipeline.global_batches(data_cfg, config.train.batch_size, seed=0)
    params, _ = final_params(tmp_path)
    cfg = checkpoint.read_model_config(tmp_path)
    loss = tokens = 0.0
    for _ in range(2):
        sums = loss_sums(cfg, None, params, {k: jnp.asarray(v) for k, v in next(batches).items()})[
            1
        ]
        loss, tokens = loss + float(sums["loss"]), tokens + float(sums["tokens"])
    np.testing.assert_allclose(rows[-1]["val/loss"], loss / tokens, rtol=1e-4)
    assert 0 < rows[-1]["val/token_accuracy"] <= 1


def _batch(config, n):
    it = input_pipeline.global_batches(config.data, n, seed=0)
    return {k: jnp.asarray(v) for k, v in next(it).items()}


def test_accumulation_equals_one_big_batch():
    config = tiny_config()
    cfg = get_preset("tiny", compute_dtype="float32")
    params = canonical_params(init_model(cfg, seed=0))
    # Plain SGD at rate 1: the update is the gradient itself. (Adam's first step, g / (|g| + eps), turns
    # float rounding of a near-zero gradient into an update difference of up to the learning rate.)
    tx = optax.sgd(1.0)
    batch = _batch(config, 8)
    results = []
    for micro in (1, 4):
        step = jax.jit(make_train_step(cfg, None, tx, microbatches=micro))
        state = TrainState(step=jnp.asarray(0), params=params, opt_state=tx.init(params))
        new_state, metrics = step(state, batch)
        results.append((new_state.params, metrics))
    (p1, m1), (p4, m4) = results
    np.testing.assert_allclose(m1["loss"], m4["loss"], rtol=1e-6)
    np.testing.assert_allclose(m1["grad_norm"], m4["grad_norm"], rtol=1e-5)
    assert float(m1["target_tokens"]) == float(m4["target_tokens"]) > 0
    for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p4), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_loss_sums_match_a_log_softmax_reference():
    cfg = get_preset("tiny", compute_dtype="float32")
    params = canonical_params(init_model(cfg, seed=0))
    batch = _batch(tiny_config(), 4)
    _, sums = loss_sums(cfg, None, params, batch)

    def reference_loss(params):
        logits = model_from_params(cfg, params, None)(
            batch["decoder_input_tokens"], batch["decoder_positions"], batch["decoder_segment_ids"]
        )
        logp = jax.nn.log_softmax(logits)
        nll = -jnp.take_along_axis(logp, batch["decoder_target_tokens"][..., None], -1)[..., 0]
        return (nll * batch["decoder_loss_weights"]).sum(), logits

    (ref_loss, logits), ref_grads = jax.value_and_grad(reference_loss, has_aux=True)(params)
    weights = np.asarray(batch["decoder_loss_weights"], np.float32)
    hits = np.asarray(logits).argmax(-1) == np.asarray(batch["decoder_target_tokens"])
    np.testing.assert_allclose(sums["loss"], ref_loss, rtol=1e-5)
    assert float(sums["correct"]) == float((hits * weights).sum())
    assert float(sums["tokens"]) == weights.sum() > 0
    grads = jax.grad(lambda p: loss_sums(cfg, None, p, batch)[0])(params)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_kill_and_resume_is_exact(tmp_path):
    """12 steps straight == 6 steps, SIGKILL at step 9, resume to 12: same parameters, same batches."""
    common = [
        "--config.train.num_steps=12",
        "--config.checkpoint.every_steps=6",
        "--config.train.log_every=1",
    ]
    run_train(tmp_path / "straight", *common)
    killed = run_train(
        tmp_path / "resumed", *common, "--config.train.fault_injection_kill_at_step=9", check=False
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    resumed = run_train(tmp_path / "resumed", *common)
    assert "resumed from" in resumed.stdout
    straight_params, s1 = final_params(tmp_path / "straight")
    resumed_params, s2 = final_params(tmp_path / "resumed")
    assert s1 == s2 == 12
    for a, b in zip(jax.tree.leaves(straight_params), jax.tree.leaves(resumed_params), strict=True):
        np.testing.assert_array_equal(a, b)
    straight = {r["step"]: r["data_fingerprint"] for r in metric_rows(tmp_path / "straight")}
    resumed_rows = {r["step"]: r["data_fingerprint"] for r in metric_rows(tmp_path / "resumed")}
    assert resumed_rows == straight
    # The killed run logged steps 7-9 after its last checkpoint; the resumed run drops those rows and
    # logs the steps again, so each step appears once.
    assert [r["step"] for r in metric_rows(tmp_path / "resumed")] == list(range(1, 13))


def test_sigterm_saves_and_exits_cleanly(tmp_path):
    proc = start_train(
        tmp_path,
        "--config.train.num_steps=100000",
        "--config.train.log_every=1",
        "--config.checkpoint.every_steps=0",
    )
    for line in proc.stdout:
        if line.startswith("step 3/"):
            break
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-2000:]
    assert "SIGTERM: saved step" in out
    _, step = final_params(tmp_path)
    assert step >= 3


def test_restore_onto_another_mesh(tmp_path):
    """Checkpoint on fsdp=8, continue on data=2 x fsdp=4 (8 fake devices from conftest)."""
    config = tiny_config(num_steps=4, log_every=2)
    config.checkpoint.every_steps = 2
    config.mesh.shape.update(data=1, fsdp=8)
    train(config, tmp_path)
    config = tiny_config(num_steps=6, log_every=2)
    config.mesh.shape.update(data=2, fsdp=4)
    train(config, tmp_path)
    rows = metric_rows(tmp_path)
    assert [r["step"] for r in rows] == [2, 4, 6]
    assert np.isfinite(rows[-1]["loss"]) and rows[-1]["loss"] < rows[0]["loss"]


def test_non_finite_loss_stops_with_the_step(tmp_path):
    config = tiny_config(num_steps=6, log_every=1)
    config.optimizer.learning_rate = 1e30
    config.optimizer.clip_norm = 0.0
    config.optimizer.warmup_steps = 0
    config.optimizer.warmup_fraction = 0.0
    config.optimizer.schedule = "constant"
    with pytest.raises(NonFiniteLossError, match=r"at step \d"):
        train(config, tmp_path / "stop")
    config.train.nan_policy = "skip"
    train(config, tmp_path / "skip")
    params, _ = final_params(tmp_path / "skip")
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(params))  # skipped updates never land


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda c: c.mesh.shape.update(data=3, fsdp=-1), "mesh.shape: .*does not divide the 8"),
        (lambda c: c.mesh.shape.update(data=2, fsdp=2), "mesh.shape: .*has 4 devices but 8"),
        (lambda c: c.train.update(batch_size=12), r"not divisible by the data-parallel size data\*fsdp=8"),
        (lambda c: c.train.update(batch_size=16, microbatches=3), "not divisible by train.microbatches=3"),
        (lambda c: c.data.update(seq_len=512, feature_lengths=dict(inputs=256, targets=256)), "exceeds the model's max_seq_len=256"),
        (lambda c: c.data.update(seq_len=96), r"rows of 128 tokens but data.seq_len=96"),
        (lambda c: c.data.update(tokenizer="/nonexistent/tokenizer.model"), "data.tokenizer: /nonexistent"),
        (lambda c: c.train.update(nan_policy="ignore"), "nan_policy"),
    ],
)  # fmt: skip
def test_config_errors_say_what_to_change(change, message):
    config = tiny_config()
    change(config)
    with pytest.raises(ConfigError, match=message):
        check_config(config, get_preset("tiny", vocab_size=4096), num_devices=8, process_count=1)


def test_an_unknown_mixture_is_named_before_the_model_is_built(tmp_path):
    config = tiny_config(num_steps=1)
    config.data.mixture = "gsm8k_pot_mixx"
    with pytest.raises(
        ConfigError, match=r"data.mixture='gsm8k_pot_mixx' is not a registered .*gsm8k_pot_mix"
    ):
        train(config, tmp_path)
    assert checkpoint.latest_step(tmp_path) is None  # nothing initialised or saved


def test_data_that_never_fits_the_feature_lengths_is_an_error(tmp_path):
    config = tiny_config(num_steps=2)
    config.data.mixture = "gsm8k_pot_mix"  # every prompt is longer than tiny_test's 64 input tokens
    config.data.registry_modules = ()
    with pytest.raises(
        ConfigError, match=r"all \d+ examples .* are longer than data.feature_lengths"
    ):
        train(config, tmp_path)


def test_tokenizer_larger_than_the_vocabulary_is_caught():
    with pytest.raises(ConfigError, match="has 4096 pieces but the model's vocab_size is 512"):
        check_config(tiny_config(), get_preset("tiny"), num_devices=8, process_count=1)


@pytest.mark.parametrize(
    "name, preset, steps",
    [("llama2_7b_infinitymath", "llama2_7b", 2379), ("codellama_7b_hybrid", "codellama_7b", 8520)],
)
def test_published_recipes_check_out_but_for_the_users_checkpoint(name, preset, steps):
    from train_helpers import load_config

    config = load_config(name)
    assert (config.optimizer.learning_rate, config.optimizer.warmup_fraction) == (2e-5, 0.03)
    assert (config.train.batch_size, config.train.num_steps, config.optimizer.weight_decay) == (
        128,
        steps,
        0,
    )
    assert config.model.compute_dtype == "bfloat16" and config.optimizer.schedule == "cosine"
    # On a 64-chip slice with 8 hosts everything checks out except the checkpoint the user downloads.
    with pytest.raises(ConfigError, match=r"init.hf_dir: data/hf/.* does not exist"):
        check_config(config, get_preset(preset), num_devices=64, process_count=8)


def test_periodic_evaluation_hook_samples_runs_and_grades(tmp_path):
    config = tiny_config(num_steps=2, log_every=1)
    config.data.mixture = "gsm8k_pot_mix"  # the shipped data and tokenizer (vocab 4096)
    config.data.registry_modules = ()
    # GSM8K prompts do not fit tiny_test's 64-token inputs (they would all be left out).
    config.data.seq_len = 256
    config.data.feature_lengths = dict(inputs=128, targets=128)
    config.eval.update(every_steps=2, items_per_benchmark=2, max_new_tokens=8, batch_size=2)
    config.checkpoint.every_steps = 0
    train(config, tmp_path)
    out = tmp_path / "eval" / "step_2"
    items = [json.loads(line) for line in (out / "items.jsonl").read_text().splitlines()]
    assert [i["dataset"] for i in items] == ["gsm8k", "gsm8k"]
    assert all(i["verdict"] and i["isolation_level"] for i in items)
    assert (out / "chart.png").exists() and "gsm8k" in (out / "table.md").read_text()
