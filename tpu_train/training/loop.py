"""The training loop: config -> mesh -> model -> train state -> steps -> checkpoints.

    state = resume from W, or import config.init (hf_dir or gguf), or initialise (`checkpoint.start`)
    for step in start..num_steps:  batch -> jitted step (sharded, donated) -> metrics -> checkpoint
    SIGTERM (TPU preemption): save at the next step boundary and return

Only process 0 writes metrics and prints; every process takes part in checkpoint saves (Orbax coordinates).
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import time

import jax
import jax.numpy as jnp
import ml_collections
from clu import metric_writers
from etils import epath

from tpu_train import checkpoint
from tpu_train.data import prompts
from tpu_train.data.sources import SHIPPED_TOKENIZER
from tpu_train.interop.hf import ImportSource, load_params, open_source, write_tokenizer
from tpu_train.model.config import LlamaConfig, get_preset
from tpu_train.model.params import canonical_abstract, canonical_params, init_model
from tpu_train.sharding import DEFAULT_RULES, Sharder, describe, make_mesh
from tpu_train.training import input_pipeline, metrics
from tpu_train.training.config_checks import ConfigError, check_config
from tpu_train.training.optimizer import learning_rate_schedule, make_optimizer
from tpu_train.training.step import BATCH_KEYS, TrainState, make_train_step

# Model fields a training config may set; they change how the model runs, never its parameter shapes.
RUNTIME_MODEL_FIELDS = ("param_dtype", "compute_dtype", "scan_layers", "remat_policy", "attention")


class NonFiniteLossError(FloatingPointError):
    pass


@dataclasses.dataclass
class _Preemption:
    """Set by SIGTERM; the loop checkpoints and exits at the next step boundary."""

    requested: bool = False

    def __call__(self, signum, frame) -> None:
        self.requested = True


def import_source(init_cfg: ml_collections.ConfigDict) -> ImportSource | None:
    """The pretrained checkpoint `config.init` names (a transformers directory or a GGUF file), if any."""
    if not (init_cfg.hf_dir or init_cfg.get("gguf", "")):
        return None
    return open_source(hf_dir=init_cfg.hf_dir, gguf=init_cfg.get("gguf", ""))


def model_config(
    config: ml_collections.ConfigDict, workdir: epath.Path, source: ImportSource | None
) -> LlamaConfig:
    """The architecture comes from the workdir (a resumed or imported run) or the checkpoint to import,
    else from the preset; the config's runtime fields apply on top."""
    runtime = {k: config.model[k] for k in RUNTIME_MODEL_FIELDS if k in config.model}
    if (workdir / checkpoint.MODEL_CONFIG_FILE).exists():
        return checkpoint.read_model_config(workdir).replace(**runtime)
    if source is not None:
        return source.config(**runtime)
    extra = {k: v for k, v in config.model.get("overrides", {}).items()}
    return get_preset(config.model.preset, **runtime, **extra)


def prepare_tokenizer(
    config: ml_collections.ConfigDict, workdir: epath.Path, source: ImportSource | None
) -> ml_collections.ConfigDict:
    """Puts the run's tokenizer into a new workdir (the imported model's; else `data.tokenizer`, default
    the shipped one) and returns the data section with `tokenizer` resolved: `data.tokenizer` if set,
    else the workdir's own, so the tasks tokenize with the tokenizer the model came with."""
    if not checkpoint.has_tokenizer(workdir):
        copied = write_tokenizer(source, workdir) if source is not None else []
        if not copied:  # from scratch, or an import that carries no tokenizer
            checkpoint.copy_tokenizer(config.data.tokenizer or SHIPPED_TOKENIZER, workdir)
    data_cfg = ml_collections.ConfigDict(config.data.to_dict())
    data_cfg.tokenizer = config.data.tokenizer or str(workdir)
    return data_cfg


def sharding_rules(config: ml_collections.ConfigDict) -> tuple:
    """DEFAULT_RULES with the config's `mesh.rules` entries replacing those of the same logical name."""
    overrides = {
        name: (tuple(axes) if isinstance(axes, list) else axes) for name, axes in config.mesh.rules
    }
    return tuple((name, overrides.pop(name, axes)) for name, axes in DEFAULT_RULES) + tuple(
        overrides.items()
    )


def train(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Runs (or resumes) training to `config.train.num_steps`; returns the last logged metrics."""
    workdir = checkpoint.workdir_path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    is_main = jax.process_index() == 0
    say = print if is_main else (lambda *a, **k: None)

    source = import_source(config.init)
    model_cfg = model_config(config, workdir, source)
    mesh_shape = check_config(config, model_cfg, jax.device_count(), jax.process_count())
    mesh = make_mesh(mesh_shape)
    sharder = Sharder(mesh, sharding_rules(config))
    num_steps = config.train.num_steps
    tx = make_optimizer(config.optimizer, num_steps)
    schedule = learning_rate_schedule(config.optimizer, num_steps)

    ckpt = checkpoint.Checkpointer(
        workdir,
        every_steps=config.checkpoint.every_steps,
        keep=config.checkpoint.keep,
        keep_every=config.checkpoint.keep_every,
        async_save=config.checkpoint.async_save,
    )
    # Written before the first checkpoint so that every step in W has its config beside it.
    checkpoint.write_model_config(workdir, model_cfg)
    data_cfg = prepare_tokenizer(config, workdir, source)
    prompt_format = prompts.make_format(data_cfg.prompt_format, data_cfg.tokenizer)
    prompts.write_format(workdir, prompt_format)
    (workdir / "config.json").write_text(config.to_json_best_effort(indent=2) + "\n")

    abstract_params = canonical_abstract(model_cfg, sharder)
    replicated = lambda n: jax.device_put(jnp.asarray(n, jnp.int32), sharder.sharding(()))  # noqa: E731
    param_shardings = jax.tree.map(lambda s: s.sharding, abstract_params)
    opt_abstract = jax.eval_shape(tx.init, abstract_params)
    opt_shardings = optimizer_state_shardings(opt_abstract, param_shardings, sharder.sharding(()))
    init_opt = jax.jit(tx.init, out_shardings=opt_shardings)
    opt_abstract = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), opt_abstract, opt_shardings
    )

    def import_params() -> dict:
        say(f"importing {source.path} into {workdir} (step 0)")
        return load_params(source, model_cfg, sharder)

    first = checkpoint.start(
        ckpt,
        abstract_params,
        opt_abstract,
        import_params=import_params if source is not None else None,
        init_params=lambda: canonical_params(init_model(model_cfg, sharder, seed=config.seed)),
    )
    opt_state = first.opt_state if first.opt_state is not None else init_opt(first.params)
    state = TrainState(step=replicated(first.step), params=first.params, opt_state=opt_state)
    say(
        {
            "resumed": f"resumed from {workdir / checkpoint.CHECKPOINT_DIR / str(first.step)} "
            f"(step {first.step})",
            "imported": f"imported {model_cfg.num_params() / 1e6:,.1f}M parameters as step 0",
            "initialised": f"initialised {model_cfg.num_params() / 1e6:,.1f}M parameters from "
            f"scratch (seed {config.seed})",
        }[first.how]
    )
    say(describe(mesh, state.params))

    state_shardings = jax.tree.map(lambda x: x.sharding, state)
    batch_sharding = sharder.sharding(
        ("batch", "length"), (config.train.batch_size, config.data.seq_len)
    )
    step_fn = jax.jit(
        make_train_step(
            model_cfg,
            sharder,
            tx,
            microbatches=config.train.microbatches,
            z_loss=config.train.z_loss,
        ),
        in_shardings=(state_shardings, batch_sharding),
        out_shardings=(state_shardings, None),
        donate_argnums=(0,),
    )

    start = int(state.step)
    batches = input_pipeline.global_batches(
        data_cfg,
        config.train.batch_size,
        seed=config.seed,
        start_step=start,
        prompt_format=prompt_format,
    )
    if config.data.report_overlong:
        dropped, total = input_pipeline.count_overlong(data_cfg, prompt_format)
        if total and dropped == total:
            raise ConfigError(
                f"all {total} examples of {data_cfg.mixture} are longer than data.feature_lengths="
                f"{dict(data_cfg.feature_lengths)}; raise data.seq_len and the feature lengths"
            )
        say(
            f"data: {dropped} of {total} examples are longer than the feature lengths "
            f"{dict(data_cfg.feature_lengths)} and are left out"
        )
    writer = metric_writers.create_default_writer(
        str(workdir / "tensorboard"), just_logging=not is_main
    )
    jsonl = metrics.JsonlWriter(workdir / "metrics.jsonl") if is_main else None
    tokens_per_step = config.train.batch_size * config.data.seq_len
    flops_per_step = metrics.flops_per_token(model_cfg, config.data.seq_len) * tokens_per_step
    peak, peak_source = metrics.peak_flops_per_device(config.train.peak_flops_per_device)
    say(
        f"training steps {start}..{num_steps}: batch {config.train.batch_size} x {config.data.seq_len} tokens, "
        f"{flops_per_step / 1e12:.3g} TFLOP/step, peak {peak / 1e12:.3g} TFLOP/s/device ({peak_source})"
    )
    config_json = json.loads(config.to_json_best_effort())
    eval_hook = None
    if config.eval.every_steps > 0:
        from tpu_train.training.eval_hook import (
            EvalHook,
        )  # the sandbox and sampler load only when asked

        eval_hook = EvalHook(config.eval, workdir, prompt_format)
    preemption = _Preemption()
    previous_handler = signal.signal(signal.SIGTERM, preemption)
    last: dict[str, float] = {}
    window_start, window_steps = time.perf_counter(), 0
    run_start = time.perf_counter()
    try:
        for step in range(start, num_steps):
            if step == config.train.fault_injection_kill_at_step:
                # Fault injection for the resume tests: die at once, like a machine that is lost.
                os.kill(os.getpid(), signal.SIGKILL)
            local = next(batches)
            fingerprint = input_pipeline.fingerprint(local)
            batch = {
                k: jax.make_array_from_process_local_data(batch_sharding, local[k])
                for k in BATCH_KEYS
            }
            state, step_metrics = step_fn(state, batch)
            window_steps += 1
            done = step + 1
            if not bool(step_metrics["finite"]):
                message = f"non-finite loss or gradient at step {done} (the update was not applied)"
                if config.train.nan_policy == "stop":
                    ckpt.wait()
                    raise NonFiniteLossError(
                        message + "; set train.nan_policy='skip' to continue past it"
                    )
                say(f"warning: {message}; skipping (train.nan_policy='skip')")
            if done % config.train.log_every == 0 or done == num_steps:
                values = {k: float(v) for k, v in jax.device_get(step_metrics).items()}
                elapsed = time.perf_counter() - window_start
                tokens_per_s = window_steps * tokens_per_step / elapsed
                values.update(
                    learning_rate=float(schedule(step)),
                    tokens_per_s=tokens_per_s,
                    tokens_per_s_per_device=tokens_per_s / jax.device_count(),
                    mfu=tokens_per_s
                    * flops_per_step
                    / tokens_per_step
                    / (peak * jax.device_count()),
                    data_fingerprint=float(fingerprint),
                )
                writer.write_scalars(done, values)
                if jsonl is not None:
                    jsonl.write(done, {**values, "data_fingerprint": fingerprint})
                say(
                    metrics.progress_line(
                        done, num_steps, values, time.perf_counter() - run_start, done - start
                    )
                )
                last = values
                window_start, window_steps = time.perf_counter(), 0
            if eval_hook is not None and eval_hook.due(done):
                scores = eval_hook(done, state.params, model_cfg, sharder)
                if scores:
                    writer.write_scalars(done, scores)
                    say(
                        f"eval at step {done}: "
                        + ", ".join(f"{k} {v:.1f}%" for k, v in scores.items())
                    )
            if ckpt.should_save(done) or done == num_steps or preemption.requested:
                ckpt.save(
                    done,
                    state.params,
                    state.opt_state,
                    config_json,
                    force=preemption.requested or done == num_steps,
                )
            if preemption.requested:
                ckpt.wait()
                say(f"SIGTERM: saved step {done} and stopped; rerun the same command to resume")
                break
    finally:
        ckpt.wait()
        ckpt.close()
        writer.flush()
        signal.signal(signal.SIGTERM, previous_handler)
    return last


def optimizer_state_shardings(opt_abstract, param_shardings, replicated):
    """Every subtree of the optimizer state shaped like the parameters (Adam's moments) is sharded like
    the parameters; everything else (step counters) is replicated."""
    param_def = jax.tree.structure(param_shardings)

    def like_params(node) -> bool:
        return jax.tree.structure(node) == param_def

    return jax.tree.map(
        lambda node: param_shardings if like_params(node) else replicated,
        opt_abstract,
        is_leaf=like_params,
    )


__all__ = ["ConfigError", "NonFiniteLossError", "train"]
