"""GRPO: the loss against NumPy, the update's direction, the environments' streams and rewards, and runs
end to end: the sum fixture learns, a killed run resumes exactly, and RL on programs from a fine-tuned
workdir with LoRA (sandbox rewards, held-out evaluation, export)."""

import doctest
import gzip
import json
import re
import signal
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from train_helpers import (
    ROOT,
    final_params,
    load_config,
    run_command,
    run_processes,
    run_train,
)

from tpu_train.data.prompts import POT_TRIGGER, make_format
from tpu_train.data.records import ProgramRecord
from tpu_train.evaluation.executor import Executor, ExecutorConfig
from tpu_train.model import get_preset
from tpu_train.model.params import canonical_params, init_model
from tpu_train.rl import grpo, report
from tpu_train.rl import loop as rl_loop
from tpu_train.rl.environment import CORRECT, NO_ANSWER, WRONG, Problem, ProgramEnvironment
from tpu_train.rl.loop import EVALUATIONS_FILE, rollout_batch, train_rl
from tpu_train.sampling.sampling_params import Completion
from tpu_train.training.optimizer import make_optimizer
from tpu_train.training.step import TrainState

NATALIA = json.dumps(
    {
        "id": "gsm8k/train/0",
        "source": "gsm8k",
        "original_problem": "Natalia sold clips to 48 of her friends in April, and then she sold half as "
        "many clips in May. How many clips did Natalia sell altogether in April and May?",
        "general_problem": "Natalia sold clips to {friends} of her friends in April, and then she sold "
        "half as many clips in May. How many clips did Natalia sell altogether in April and May?",
        "generated_program": 'def solution():\n    """Clips in April and May."""\n    friends = 48\n'
        "    clips = friends / 2\n    result = friends + clips\n    return result",
        "variables": {
            "friends": {
                "value": 48,
                "constraints": ["integer", "positive"],
                "range": [24, 96],
                "step": 12,
            }
        },
        "ori_answer": 72,
        "gen_answer": "72",
    }
)


def rl_command(workdir, config: str, *overrides) -> list[str]:
    return [
        sys.executable,
        "-m",
        "tpu_train.rl",
        f"--config={ROOT / 'configs' / config}",
        f"--workdir={workdir}",
        *overrides,
    ]


def run_rl(workdir, *overrides, config="grpo_tiny_test.py", devices=2, check=True):
    return run_command(rl_command(workdir, config, *overrides), devices, check)


def rows(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("module", [grpo, report, rl_loop])
def test_docstring_examples(module):
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0


def test_policy_loss_matches_numpy():
    rng = np.random.default_rng(0)
    n, length = 3, 5
    logp = rng.normal(-2.0, 0.5, (n, length)).astype(np.float32)
    batch = {
        "old_logp": (logp + rng.normal(0, 0.4, (n, length))).astype(np.float32),
        "ref_logp": (logp + rng.normal(0, 0.3, (n, length))).astype(np.float32),
        "advantages": np.array([1.0, -0.5, 0.25], np.float32),
        "response_mask": np.array([[0, 1, 1, 1, 0], [0, 0, 1, 1, 1], [0, 1, 0, 0, 0]], np.float32),
    }
    cfg = grpo.LossConfig(clip_low=0.2, clip_high=0.28, kl_coef=0.1)
    objective, sums = grpo.policy_loss_sums(
        jnp.asarray(logp), jax.tree.map(jnp.asarray, batch), cfg
    )

    ratio = np.exp(logp - batch["old_logp"])
    adv = batch["advantages"][:, None]
    surrogate = np.minimum(ratio * adv, np.clip(ratio, 0.8, 1.28) * adv)
    d = batch["ref_logp"] - logp
    kl = np.exp(d) - d - 1
    mask = batch["response_mask"]
    np.testing.assert_allclose(float(objective), ((-surrogate + 0.1 * kl) * mask).sum(), rtol=1e-5)
    np.testing.assert_allclose(float(sums["kl"]), (kl * mask).sum(), rtol=1e-5)
    assert float(sums["tokens"]) == mask.sum() == 7
    # the random ratios put some tokens outside [0.8, 1.28]: the clip must count them
    outside = ((ratio < 0.8) & (adv < 0)) | ((ratio > 1.28) & (adv > 0))
    assert outside[mask > 0].any()
    assert float(sums["clipped"]) == (outside & (mask > 0)).sum()


def test_group_advantages_scale_and_no_signal():
    rewards = np.array([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    plain = grpo.group_advantages(rewards, scale=False)
    np.testing.assert_allclose(plain[0], [0.75, -0.25, -0.25, -0.25])
    scaled = grpo.group_advantages(rewards, scale=True)
    np.testing.assert_allclose(scaled[0], plain[0] / rewards[0].std(), rtol=1e-5)
    assert not scaled[1].any()


def test_update_raises_positive_and_lowers_negative_completions():
    """Two completions of one prompt, advantages +1 and -1: one update must raise the log-probability
    of the first's response token and lower the second's."""
    cfg = get_preset("tiny").replace(vocab_size=16, max_seq_len=8, compute_dtype="float32")
    params = canonical_params(init_model(cfg, seed=0))
    tx = make_optimizer(load_config("grpo_tiny_test").optimizer, 10)
    state = TrainState(jnp.int32(0), params, tx.init(params))
    host = rollout_batch(
        [[1, 4, 5], [1, 4, 5]],
        [Completion((9,), "length"), Completion((10,), "length")],
        np.array([1.0, -1.0]),
        4,
    )
    batch = {k: jnp.asarray(v) for k, v in host.items()}
    logp_before, _ = grpo.token_logprobs(cfg, None, params, batch)
    batch["old_logp"] = batch["ref_logp"] = logp_before
    update = jax.jit(grpo.make_update(cfg, None, tx, grpo.LossConfig()))
    state, metrics = update(state, batch)
    logp_after, _ = grpo.token_logprobs(cfg, None, state.params, batch)
    assert float(metrics["finite"]) == 1.0 and float(metrics["grad_norm"]) > 0
    last = 2  # the response token's position: the target after the prompt's last token
    assert float(logp_after[0, last]) > float(logp_before[0, last])
    assert float(logp_after[1, last]) < float(logp_before[1, last])
    assert int(state.step) == 0  # the loop advances the step, not the update


def test_microbatched_logprobs_and_update_equal_the_whole_batch():
    """Slicing the rollouts into microbatches (so their logits never live at once) changes memory,
    not results: the same log-probabilities and the same updated parameters, without `old_logp` (the
    on-policy single update) and without a reference (no KL)."""
    cfg = get_preset("tiny").replace(vocab_size=16, max_seq_len=8, compute_dtype="float32")
    params = canonical_params(init_model(cfg, seed=0))
    tx = make_optimizer(load_config("grpo_tiny_test").optimizer, 10)
    host = rollout_batch(
        [[1, 4, 5], [1, 4], [1, 6, 7], [1, 2]],
        [Completion((9,), "length"), Completion((10, 3), "eos")] * 2,
        np.array([1.0, -1.0, 0.5, -0.5]),
        6,
    )
    batch = {k: jnp.asarray(v) for k, v in host.items()}
    whole, whole_entropy = grpo.batch_logprobs(cfg, None, params, batch)
    sliced, sliced_entropy = jax.jit(
        lambda p, b: grpo.batch_logprobs(cfg, None, p, b, microbatches=2)
    )(params, batch)
    np.testing.assert_allclose(sliced, whole, atol=1e-6)
    np.testing.assert_allclose(sliced_entropy, whole_entropy, atol=1e-6)
    results = []
    for microbatches in (1, 4):
        state = TrainState(jnp.int32(0), params, tx.init(params))
        update = jax.jit(grpo.make_update(cfg, None, tx, grpo.LossConfig(), microbatches))
        results.append(update(state, batch))
    (one, one_metrics), (four, four_metrics) = results
    assert "kl" not in one_metrics and float(one_metrics["grad_norm"]) > 0
    np.testing.assert_allclose(four_metrics["pg_loss"], one_metrics["pg_loss"], atol=1e-6)
    for a, b in zip(jax.tree.leaves(four.params), jax.tree.leaves(one.params), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)
    moved = jax.tree.leaves(jax.tree.map(lambda a, b: jnp.abs(a - b).max(), one.params, params))
    assert max(float(m) for m in moved) > 0  # the comparison is not between two untouched copies


@pytest.fixture(scope="module")
def executor():
    with Executor(ExecutorConfig(timeout_s=5.0, workers=2)) as ex:
        yield ex


def natalia_environment(executor, exclude=()):
    record = ProgramRecord.from_json(NATALIA, "natalia:1")
    fmt = make_format("alpaca", str(ROOT / "data" / "tokenizer.model"))
    return ProgramEnvironment(
        [record], executor, seed=0, prompt_format=fmt, exclude_problems=exclude
    )


def friends_in(problem: Problem) -> int:
    return int(re.search(r"clips to (\d+) of her friends", problem.prompt).group(1))


def test_program_problems_are_fresh_verified_and_a_function_of_the_step(executor):
    env = natalia_environment(executor)
    first = env.problems(step=3, count=6)
    assert env.problems(step=3, count=6) == first  # the same for the same (seed, step)
    assert [p.id for p in first] == [f"gsm8k/train/0/rl3.{k}" for k in range(6)]
    drawn = [friends_in(p) for p in first + env.problems(step=4, count=6)]
    assert len(set(drawn)) > 2 and 48 not in drawn  # fresh numbers, not the record's own
    for problem in first:
        friends = friends_in(problem)
        assert friends in range(24, 97, 12)
        assert float(problem.answer) == friends * 1.5  # the reference program's answer, re-run
        question = json.loads(NATALIA)["general_problem"].format(friends=friends)
        assert problem.prompt == env.format.render(question + POT_TRIGGER)


def test_held_out_problems_are_never_drawn(executor):
    general = json.loads(NATALIA)["general_problem"]
    held_out = {general.format(friends=f) for f in (24, 36, 60, 72)}
    env = natalia_environment(executor, exclude=held_out)
    drawn = {friends_in(p) for step in range(8) for p in env.problems(step, 4)}
    assert drawn and not drawn & {24, 36, 60, 72}
    assert drawn <= {48, 84, 96}


def test_rewards_come_from_running_the_completions_programs(executor):
    env = natalia_environment(executor)
    env.format_bonus = 0.1
    problem = Problem("p", "prompt", "72")
    programs = [
        "```python\ndef solution():\n    return 48 + 48 / 2\n```",  # right, in a fence
        "def solution():\n    return 48 + 48\n",  # runs, wrong
        "def solution():\n    raise ValueError('no')\n",
        "x = 1\n",  # runs, no answer
        "def solution(:\n",
    ]
    scored = env.score([problem] * 5, [Completion((1,), "eos", text) for text in programs])
    assert scored.verdicts == (CORRECT, WRONG, "runtime_error", NO_ANSWER, "syntax_error")
    np.testing.assert_allclose(scored.rewards, [1.1, 0.1, 0.0, 0.0, 0.0])


def test_the_sum_fixture_learns_on_a_sharded_mesh(tmp_path, capsys):
    """40 GRPO steps on data=2 x fsdp=4 take the tiny model from guessing to most sums right."""
    config = load_config("grpo_tiny_test")
    config.mesh.shape.update(data=2, fsdp=4)
    last = train_rl(config, str(tmp_path))
    out = capsys.readouterr().out
    evals = rows(tmp_path / EVALUATIONS_FILE)
    assert [e["step"] for e in evals] == [0, 40]
    before, after = evals[0]["sums/accuracy"], evals[1]["sums/accuracy"]
    assert before <= 20.0 and after >= 60.0, (before, after)
    assert (
        f"accuracy on sums: {before:.1f}% before RL -> {after:.1f}% after RL (25 items, strict)"
        in out
    )
    metric_rows = rows(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in metric_rows] == list(range(1, 41))
    for key in ("reward_mean", "reward_std", "groups_without_signal", "entropy", "response_tokens"):
        assert np.isfinite(last[key]), key
    assert last["rollouts_per_s"] > 0 and last["programs_per_s"] > 0
    for row in metric_rows:
        assert row.get("verdict/correct", 0) + row.get("verdict/wrong", 0) == 128
    early = np.mean([r["reward_mean"] for r in metric_rows[:5]])
    late = np.mean([r["reward_mean"] for r in metric_rows[-5:]])
    assert late > early + 0.15, (early, late)
    assert (tmp_path / "reward_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


def test_kill_and_resume_equals_a_straight_run(tmp_path):
    common = [
        "--config.rl.num_steps=10",
        "--config.checkpoint.every_steps=5",
        "--config.rl.prompts_per_step=4",
        "--config.rl.group_size=4",
        "--config.rl.rollout_rows=16",
    ]
    run_rl(tmp_path / "straight", *common)
    killed = run_rl(
        tmp_path / "resumed", *common, "--config.rl.fault_injection_kill_at_step=7", check=False
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    resumed = run_rl(tmp_path / "resumed", *common)
    assert "resumed from" in resumed.stdout, resumed.stdout[-2000:]
    straight_params, s1 = final_params(tmp_path / "straight")
    resumed_params, s2 = final_params(tmp_path / "resumed")
    assert s1 == s2 == 10
    for a, b in zip(jax.tree.leaves(straight_params), jax.tree.leaves(resumed_params), strict=True):
        np.testing.assert_array_equal(a, b)
    straight_rows = rows(tmp_path / "straight" / "metrics.jsonl")
    resumed_rows = rows(tmp_path / "resumed" / "metrics.jsonl")
    assert [r["step"] for r in resumed_rows] == list(range(1, 11))  # steps 6-7 once, not twice
    same = ("reward_mean", "verdict/correct", "pg_loss")
    assert [[r.get(k) for k in same] for r in resumed_rows] == [
        [r.get(k) for k in same] for r in straight_rows
    ]
    evals = rows(tmp_path / "resumed" / EVALUATIONS_FILE)
    assert [e["step"] for e in evals] == [0, 10]


def test_two_processes_run_grpo_as_one_process_does(tmp_path):
    """The multi-controller path: two processes of 2 devices each (coordinator on loopback) run the
    same command and reach the parameters a single process of 4 devices reaches, with the same
    rewards; only process 0 reports."""
    common = [
        "--config.rl.num_steps=4",
        "--config.rl.prompts_per_step=4",
        "--config.rl.group_size=4",
    ]
    run_rl(tmp_path / "one", *common, devices=4)
    outs = run_processes(
        rl_command(tmp_path / "two", "grpo_tiny_test.py", *common), processes=2, devices=2
    )
    assert "rl step 4/4" in outs[0] and "rl step 4/4" not in outs[1]
    one_params, one_step = final_params(tmp_path / "one")
    two_params, two_step = final_params(tmp_path / "two")
    assert one_step == two_step == 4
    for a, b in zip(jax.tree.leaves(one_params), jax.tree.leaves(two_params), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    same = ("reward_mean", "verdict/correct", "verdict/wrong")
    one_rows = [[r.get(k) for k in same] for r in rows(tmp_path / "one" / "metrics.jsonl")]
    assert one_rows == [[r.get(k) for k in same] for r in rows(tmp_path / "two" / "metrics.jsonl")]
    assert len(one_rows) == 4


def test_config_errors_are_one_line(tmp_path):
    bad = run_rl(tmp_path, "--config.rl.environment=chess", check=False)
    assert bad.returncode != 0
    assert bad.stderr.strip().splitlines()[-1].startswith("error: rl.environment='chess'")
    assert "Traceback" not in bad.stderr
    uneven = run_rl(
        tmp_path / "uneven",
        "--config.rl.prompts_per_step=3",
        "--config.rl.group_size=3",
        check=False,
    )  # 9 rollouts over 2 devices
    assert "do not split over the data-parallel size" in uneven.stderr
    assert "Traceback" not in uneven.stderr


def test_rl_on_programs_from_a_fine_tuned_workdir_with_lora(tmp_path, capsys):
    """The user's path: fine-tune (the tiny fixture), then GRPO from that workdir on repopulated programs
    with LoRA and the KL to the base, rewards from the sandbox, held-out and GSM8K evaluation before and
    after, then export the RL run for Hugging Face."""
    from tpu_train.interop.hf import export_hf

    finetuned = tmp_path / "finetuned"
    run_train(finetuned, "--config.train.num_steps=2")
    shipped = ROOT / "data" / "programs" / "gsm8k_train_programs.jsonl.gz"
    lines = gzip.decompress(shipped.read_bytes()).decode().splitlines()[:4]
    (tmp_path / "programs.jsonl").write_text("\n".join(lines[:3]) + "\n")
    (tmp_path / "heldout.jsonl").write_text(lines[3] + "\n")

    config = load_config("grpo_default")
    config.init.workdir = str(finetuned)
    config.model.scan_layers = False
    config.lora.rank = 4
    config.rl.update(
        programs=str(tmp_path / "programs.jsonl"),
        heldout=str(tmp_path / "heldout.jsonl"),
        num_steps=2,
        prompts_per_step=4,  # x 2: 8 rollouts, one per fake device
        group_size=2,
        max_new_tokens=8,
        max_prompt_tokens=200,
        rollout_rows=8,
        eval_items=1,
        gsm8k_items=1,
        kl_coef=0.01,
        updates_per_batch=1,  # the ratio from the update's own forward (no old_logp pass)
        microbatches=1,
    )
    rl_dir = tmp_path / "rl"
    last = train_rl(config, str(rl_dir))
    out = capsys.readouterr().out
    assert f"starting from {finetuned}" in out
    assert "kl" in last and last["kl"] >= 0.0  # LoRA: the base is the reference
    metric_rows = rows(rl_dir / "metrics.jsonl")
    assert [r["step"] for r in metric_rows] == [1, 2]
    for row in metric_rows:
        # 8 programs per step ran in the sandbox and each got a verdict
        assert sum(v for k, v in row.items() if k.startswith("verdict/")) == 8, row
    evals = rows(rl_dir / EVALUATIONS_FILE)
    assert [e["step"] for e in evals] == [0, 2]
    assert evals[0]["held-out variants/items"] == 1 and evals[0]["GSM8K test/items"] == 1
    assert re.search(
        r"accuracy on held-out variants: \d+\.\d% before RL -> \d+\.\d% after RL \(1 items, strict\)",
        out,
    )
    assert "accuracy on GSM8K test:" in out
    step, files = export_hf(rl_dir, tmp_path / "exported")
    assert step == 2 and "config.json" in files
    assert (tmp_path / "exported" / "model.safetensors").exists()
