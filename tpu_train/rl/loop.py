"""The GRPO loop: config -> mesh -> model -> train state -> (rollouts -> rewards -> updates) -> checkpoints.

    state = resume from W, or import config.init (workdir, hf_dir or gguf), or initialise
    for step in start..rl.num_steps:
        problems  = env.problems(step, P)                  # a pure function of (seed, step)
        rollouts  = sampler over the live parameters, G completions per problem
        rewards   = env.score(problems, rollouts)          # the sandbox and the strict grader
        advantages, old and reference log-probabilities, then rl.updates_per_batch clipped updates
        metrics.jsonl + TensorBoard; a checkpoint every checkpoint.every_steps (and at the end)

Sampling seeds are a function of (seed, step) too, so a run killed and resumed from its last checkpoint
produces the same rollouts and parameters as one that never stopped.
"""

from __future__ import annotations

import collections
import json
import os
import signal
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from clu import metric_writers
from etils import epath

from tpu_train import checkpoint
from tpu_train.interop.hf import load_params
from tpu_train.model import lora
from tpu_train.model.config import LlamaConfig
from tpu_train.model.params import model_from_params
from tpu_train.rl import grpo, report
from tpu_train.rl.environment import CORRECT, Problem, Scored
from tpu_train.rl.setup import Environment, RlRun, make_environment, prepare
from tpu_train.sampling.sampler import Sampler
from tpu_train.sampling.sampling_params import Completion, SamplingParams
from tpu_train.sharding import put_global
from tpu_train.training import metrics
from tpu_train.training.loop import initial_state
from tpu_train.training.optimizer import make_optimizer
from tpu_train.training.preemption import Preemption
from tpu_train.training.step import TrainState

# One row per greedy evaluation: step, "<set>/accuracy", "<set>/items".
EVALUATIONS_FILE = "evaluations.jsonl"


def train_rl(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Runs (or resumes) GRPO to `config.rl.num_steps`; returns the last step's metrics."""
    return checkpoint.run_locked(workdir, lambda path, is_main: _train_rl(config, path, is_main))


def _train_rl(
    config: ml_collections.ConfigDict, workdir: epath.Path, is_main: bool
) -> dict[str, float]:
    say = print if is_main else (lambda *a, **k: None)
    rl = config.rl
    run = prepare(config, workdir)
    model_cfg, sharder = run.model_cfg, run.sharder
    tx = make_optimizer(config.optimizer, rl.num_steps * rl.updates_per_batch)
    ckpt = checkpoint.Checkpointer.for_run(
        workdir, config.checkpoint, keep_base=model_cfg.lora is not None
    )
    state = initial_state(config, model_cfg, sharder, tx, ckpt, _importer(run, say), say)
    start = int(state.step)
    loss_cfg = grpo.LossConfig(rl.clip_low, rl.clip_high, rl.kl_coef, rl.temperature)
    state_shardings = jax.tree.map(lambda x: x.sharding, state)
    update = jax.jit(
        grpo.make_update(model_cfg, sharder, tx, loss_cfg, rl.microbatches),
        in_shardings=(state_shardings, None),
        out_shardings=(state_shardings, None),
        donate_argnums=(0,),
    )
    logprobs = jax.jit(
        lambda params, batch: grpo.batch_logprobs(
            model_cfg, sharder, params, batch, rl.temperature, rl.microbatches
        )
    )
    # The KL reference: LoRA's base costs nothing; a full fine-tune keeps the starting parameters,
    # so only when the KL term is on.
    with_reference = rl.kl_coef > 0
    initial = None
    if model_cfg.lora is None and with_reference:
        initial = jax.tree.map(jnp.copy, _starting_params(ckpt, state))

    env = make_environment(config, run)
    writer = metric_writers.create_default_writer(
        str(workdir / "tensorboard"), just_logging=not is_main
    )
    jsonl = metrics.JsonlWriter(workdir / "metrics.jsonl", keep_through=start) if is_main else None
    evaluations = (
        metrics.JsonlWriter(workdir / EVALUATIONS_FILE, keep_through=start) if is_main else None
    )
    config_json = json.loads(config.to_json_best_effort())
    (workdir / "config.json").write_text(config.to_json_best_effort(indent=2) + "\n")
    say(
        f"GRPO steps {start}..{rl.num_steps}: {rl.prompts_per_step} problems x {rl.group_size} "
        f"completions, {rl.updates_per_batch} update(s) per batch, environment {rl.environment}"
    )

    def evaluate(step: int) -> None:
        results = env.evaluate(_sampler(run, state, model_cfg, rl.rollout_rows), rl)
        for title, (accuracy, items) in results.items():
            say(
                f"greedy accuracy on {title} at step {step}: {accuracy:.1f}% ({items} items, strict)"
            )
        writer.write_scalars(step, {f"eval/{t}": a for t, (a, _) in results.items()})
        if evaluations is not None and results:
            evaluations.write(
                step,
                {
                    f"{t}/{k}": v
                    for t, (a, n) in results.items()
                    for k, v in (("accuracy", a), ("items", n))
                },
            )

    if start == 0:
        evaluate(0)
    last: dict[str, float] = {}
    preempted = False
    with Preemption() as preemption:
        try:
            for step in range(start, rl.num_steps):
                if step == rl.fault_injection_kill_at_step:
                    # a machine that is lost, for the resume tests
                    os.kill(os.getpid(), signal.SIGKILL)
                state, last = _rl_step(
                    step, state, env, run, rl, update, logprobs, initial, with_reference
                )
                done = step + 1
                if done % rl.log_every == 0 or done == rl.num_steps:
                    writer.write_scalars(done, last)
                    if jsonl is not None:
                        jsonl.write(done, last)
                    say(_progress(done, rl.num_steps, last))
                if rl.eval_every > 0 and done % rl.eval_every == 0 and done < rl.num_steps:
                    evaluate(done)
                preempted = preemption.reached(done)
                if ckpt.should_save(done) or done == rl.num_steps or preempted:
                    ckpt.save(
                        done,
                        state.params,
                        state.opt_state,
                        config_json,
                        force=preempted or done == rl.num_steps,
                        base_step=None if model_cfg.lora is None else checkpoint.BASE_STEP,
                    )
                if preempted:
                    ckpt.wait()
                    say(f"SIGTERM: saved step {done} and stopped; rerun the same command to resume")
                    break
                ckpt.poll()
            if start < rl.num_steps and not preempted:
                evaluate(rl.num_steps)
        finally:
            writer.flush()
            ckpt.close()
            env.close()
    if is_main:
        for line in report.before_after(workdir / EVALUATIONS_FILE):
            say(line)
        if (workdir / "metrics.jsonl").exists():
            say(
                f"reward curve: {report.reward_curve(workdir / 'metrics.jsonl', workdir / 'reward_curve.png')}"
            )
    return last


def _importer(run: RlRun, say):
    """What `initial_state` imports as step 0: another workdir's latest model, or an HF / GGUF source."""
    if run.init_workdir is not None:

        def from_workdir() -> dict:
            say(f"starting from {run.init_workdir} (its latest model becomes step 0)")
            cfg = checkpoint.read_model_config(run.init_workdir)
            params, _, _ = checkpoint.restore_model_params(run.init_workdir, cfg, run.sharder)
            return params

        return from_workdir
    if run.source is not None:

        def from_source() -> dict:
            say(f"importing {run.source.path} (step 0)")
            return load_params(run.source, run.model_cfg, run.sharder)

        return from_source
    return None


def _starting_params(ckpt: checkpoint.Checkpointer, state: TrainState) -> dict:
    """The parameters RL started from (step 0), for the KL reference of a full fine-tune."""
    if int(state.step) == 0:
        return state.params
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state.params
    )
    params, _, _ = ckpt.restore(0, abstract)
    return params


def _sampler(run: RlRun, state: TrainState, model_cfg: LlamaConfig, rows: int) -> Sampler:
    """A sampler over the live parameters (LoRA adapters merged on device; nothing goes to the host)."""
    params, cfg = lora.plain_model(state.model_params(), model_cfg)
    model = model_from_params(cfg, params, run.sharder)
    return Sampler(
        model,
        tokenizer=run.tokenizer,
        eos_ids=run.eos_ids,
        batch_size=rows,
        cache_size=run.row_length,
    )


def _rl_step(
    step: int,
    state: TrainState,
    env: Environment,
    run: RlRun,
    rl: ml_collections.ConfigDict,
    update,
    logprobs,
    initial: dict | None,
    with_reference: bool,
) -> tuple[TrainState, dict[str, float]]:
    started = time.perf_counter()
    problems = env.problems(step, rl.prompts_per_step)
    group = rl.group_size
    sampler = _sampler(run, state, run.model_cfg, rl.rollout_rows)
    prompt_ids = [sampler.encode(p.prompt) for p in problems]
    for problem, ids in zip(problems, prompt_ids, strict=True):
        if len(ids) > rl.max_prompt_tokens:
            raise ValueError(
                f"problem {problem.id}: its prompt is {len(ids)} tokens, over rl.max_prompt_tokens="
                f"{rl.max_prompt_tokens}; raise it"
            )
    repeated = [ids for ids in prompt_ids for _ in range(group)]
    sampling = SamplingParams(
        max_new_tokens=rl.max_new_tokens,
        temperature=rl.temperature,
        top_p=rl.top_p,
        seed=int(np.random.SeedSequence([int(run.seed), step]).generate_state(1)[0] >> 1),
        stop=run.stop,
    )
    sampled = time.perf_counter()
    completions = sampler.generate(repeated, sampling)
    sampling_s = time.perf_counter() - sampled
    scoring = time.perf_counter()
    scored = env.score([p for p in problems for _ in range(group)], completions)
    scoring_s = time.perf_counter() - scoring

    rewards = scored.rewards.reshape(len(problems), group)
    advantages = grpo.group_advantages(rewards, rl.scale_advantages).reshape(-1)
    longest = max(len(p) + len(c.tokens) - 1 for p, c in zip(repeated, completions, strict=True))
    host = rollout_batch(repeated, completions, advantages, _row_length(longest, run.row_length))
    batch = {k: put_global(v, _batch_sharding(run, v)) for k, v in host.items()}
    if rl.updates_per_batch > 1:  # the clipped ratio needs the sampling policy's log-probabilities
        batch["old_logp"] = logprobs(state.model_params(), batch)[0]
    if with_reference:
        batch["ref_logp"] = logprobs(grpo.reference_params(state, initial), batch)[0]
    update_metrics = []
    for _ in range(rl.updates_per_batch):
        state, m = update(state, batch)
        update_metrics.append(m)
    state = state.replace(step=state.step + 1)
    values = {
        "reward_mean": float(rewards.mean()),
        "reward_std": float(rewards.std()),
        "groups_without_signal": int((rewards.std(axis=1) == 0).sum()),
        "entropy": float(update_metrics[0]["entropy"]),
        "response_tokens": float(np.mean([len(c.tokens) for c in completions])),
        "rollouts_per_s": len(completions) / max(sampling_s, 1e-9),
        "programs_per_s": len(completions) / max(scoring_s, 1e-9),
    }
    if with_reference:
        values["kl"] = float(update_metrics[0]["kl"])
    values |= {k: float(update_metrics[-1][k]) for k in ("pg_loss", "clip_fraction", "grad_norm")}
    values["step_seconds"] = time.perf_counter() - started  # after the floats: updates are async
    counts = collections.Counter(scored.verdicts)
    values |= {f"verdict/{name}": counts[name] for name in sorted(counts)}
    return state, values


def _row_length(longest: int, limit: int, multiple: int = 64) -> int:
    """The update's row length: the longest rollout rounded up to `multiple` (a few shapes to
    compile) and at most `limit`, so padding to rl.max_prompt_tokens + rl.max_new_tokens is not
    computed when the answers are short.

        >>> _row_length(130, 384), _row_length(383, 384), _row_length(3, 8, multiple=64)
        (192, 384, 8)
    """
    return min(limit, -(-longest // multiple) * multiple)


def _batch_sharding(run: RlRun, value: np.ndarray) -> jax.sharding.Sharding:
    """Rollout rows split over the mesh's data-parallel axes, like a training batch."""
    return run.sharder.sharding(("batch",) + (None,) * (value.ndim - 1), value.shape)


def rollout_batch(
    prompts: list[list[int]],
    completions: list[Completion],
    advantages: np.ndarray,
    length: int,
) -> dict[str, np.ndarray]:
    """The update's batch: each row is prompt + completion, right-padded to `length` tokens.

    Example (prompt [1, 5], completion [7, 2]):
        >>> from tpu_train.sampling.sampling_params import Completion
        >>> b = rollout_batch([[1, 5]], [Completion((7, 2), "eos")], np.array([0.5]), 5)
        >>> b["inputs"].tolist(), b["targets"].tolist(), b["response_mask"].tolist()
        ([[1, 5, 7, 0, 0]], [[5, 7, 2, 0, 0]], [[0.0, 1.0, 1.0, 0.0, 0.0]])
    """
    n = len(prompts)
    out = {
        "inputs": np.zeros((n, length), np.int32),
        "targets": np.zeros((n, length), np.int32),
        "positions": np.tile(np.arange(length, dtype=np.int32), (n, 1)),
        "segment_ids": np.zeros((n, length), np.int32),
        "response_mask": np.zeros((n, length), np.float32),
        "advantages": np.asarray(advantages, np.float32),
    }
    for row, (prompt, completion) in enumerate(zip(prompts, completions, strict=True)):
        sequence = list(prompt) + list(completion.tokens)
        if len(sequence) - 1 > length:
            raise ValueError(
                f"rollout {row} has {len(sequence)} tokens, over the row length {length}"
            )
        used = len(sequence) - 1
        out["inputs"][row, :used] = sequence[:-1]
        out["targets"][row, :used] = sequence[1:]
        out["segment_ids"][row, :used] = 1
        out["response_mask"][row, len(prompt) - 1 : used] = 1.0
    return out


def _progress(step: int, total: int, values: dict[str, float]) -> str:
    verdicts = ", ".join(
        f"{k.split('/', 1)[1]} {v}" for k, v in values.items() if k.startswith("verdict/")
    )
    kl = f" kl {values['kl']:.4f}" if "kl" in values else ""
    return (
        f"rl step {step}/{total} reward {values['reward_mean']:.3f} (std {values['reward_std']:.3f}, "
        f"{values['groups_without_signal']} groups without signal){kl} entropy {values['entropy']:.3f} "
        f"{values['response_tokens']:.0f} tokens/answer, {values['rollouts_per_s']:.1f} rollouts/s, "
        f"{values['programs_per_s']:.0f} programs/s [{verdicts}]"
    )


__all__ = ["CORRECT", "Problem", "Scored", "rollout_batch", "train_rl"]
