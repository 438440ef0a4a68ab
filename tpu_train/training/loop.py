"""The training loop: config -> mesh -> model -> train state -> steps -> checkpoints.

    state = resume from W, or import config.init (hf_dir or gguf), or initialise (`checkpoint.start`);
            with LoRA (`config.lora.rank` > 0) the base is frozen and only the adapters train
    for step in start..num_steps:  batch -> jitted step (sharded, donated) -> metrics -> checkpoint
    SIGTERM (TPU preemption): every process saves the same step and returns (`training.preemption`)

Only process 0 writes metrics and prints; every process takes part in checkpoint saves (Orbax coordinates).
"""

from __future__ import annotations

import functools
import json
import os
import signal
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax
from clu import metric_writers
from etils import epath

from tpu_train import checkpoint
from tpu_train.data import prompts
from tpu_train.data.sources import SHIPPED_TOKENIZER
from tpu_train.interop.hf import ImportSource, load_params, open_source, write_tokenizer
from tpu_train.model import lora
from tpu_train.model.config import LlamaConfig, get_preset
from tpu_train.model.params import (
    adapter_abstract,
    canonical_abstract,
    canonical_params,
    init_adapters,
    init_model,
)
from tpu_train.sharding import (
    DEFAULT_RULES,
    Sharder,
    describe,
    make_mesh,
    optimizer_state_shardings,
)
from tpu_train.training import hooks, input_pipeline, metrics
from tpu_train.training.config_checks import ConfigError, check_config, lora_config
from tpu_train.training.optimizer import learning_rate_schedule, make_optimizer
from tpu_train.training.preemption import Preemption
from tpu_train.training.step import TrainState, make_train_step

# Model fields a training config may set; they change how the model runs, never its parameter shapes.
RUNTIME_MODEL_FIELDS = ("param_dtype", "compute_dtype", "scan_layers", "remat_policy", "attention")


class NonFiniteLossError(FloatingPointError):
    pass


def import_source(init_cfg: ml_collections.ConfigDict) -> ImportSource | None:
    """The pretrained checkpoint `config.init` names (a transformers directory or a GGUF file), if any."""
    if not (init_cfg.hf_dir or init_cfg.get("gguf", "")):
        return None
    return open_source(hf_dir=init_cfg.hf_dir, gguf=init_cfg.get("gguf", ""))


def model_config(
    config: ml_collections.ConfigDict, workdir: epath.Path, source: ImportSource | None
) -> LlamaConfig:
    """The architecture comes from the workdir (a resumed or imported run) or the checkpoint to import,
    else from the preset; the config's runtime fields and its `lora` section apply on top."""
    runtime = {k: config.model[k] for k in RUNTIME_MODEL_FIELDS if k in config.model}
    runtime["lora"] = lora_config(config.get("lora"))
    # Only a workdir with checkpoints decides: a model_config.json left by a run that failed before
    # its first checkpoint must not pin that run's architecture on the next one.
    trained = checkpoint.latest_step(workdir) is not None
    if trained and (workdir / checkpoint.MODEL_CONFIG_FILE).exists():
        if source is None:  # with an import the preset plays no part
            _refuse_preset_change(config, workdir)
        saved = checkpoint.read_model_config(workdir)
        if saved.lora != runtime["lora"]:
            raise ConfigError(
                f"{workdir} was trained with lora={saved.lora} (see {workdir / checkpoint.MODEL_CONFIG_FILE});"
                f" this run asks for lora={runtime['lora']}. A workdir resumes its own adapters: drop the "
                "change, or train in a new --workdir"
            )
        return saved.replace(**runtime)
    if source is not None:
        return source.config(**runtime)
    extra = {k: v for k, v in config.model.get("overrides", {}).items()}
    return get_preset(config.model.preset, **runtime, **extra)


def _refuse_preset_change(config: ml_collections.ConfigDict, workdir: epath.Path) -> None:
    """A workdir trained from a preset resumes that architecture; asking for another one is an error
    (silently resuming the old model while config.json records the new preset misleads)."""
    previous = workdir / "config.json"
    if not previous.exists():
        return  # an imported workdir not trained yet: its architecture is the import's
    old = json.loads(previous.read_text()).get("model", {})
    was = {"preset": old.get("preset"), "overrides": old.get("overrides") or {}}
    asked = json.loads(
        json.dumps(
            {"preset": config.model.preset, "overrides": dict(config.model.get("overrides", {}))}
        )
    )
    if asked != was:
        raise ConfigError(
            f"{workdir} holds checkpoints of model.preset={was['preset']!r} "
            f"(overrides {was['overrides']}, see {previous}); this run asks for "
            f"model.preset={asked['preset']!r} (overrides {asked['overrides']}). A workdir resumes its "
            "own architecture: drop the change, or train in a new --workdir"
        )


def write_tokenizer_files(
    config: ml_collections.ConfigDict, workdir: epath.Path, source: ImportSource | None
) -> None:
    """Puts the run's tokenizer into a new workdir: the imported model's; else `data.tokenizer`,
    default the shipped one. A workdir that has a tokenizer keeps it."""
    if not checkpoint.has_tokenizer(workdir):
        copied = write_tokenizer(source, workdir) if source is not None else []
        if not copied:  # from scratch, or an import that carries no tokenizer
            checkpoint.copy_tokenizer(config.data.tokenizer or SHIPPED_TOKENIZER, workdir)


def data_config(
    config: ml_collections.ConfigDict, workdir: epath.Path
) -> ml_collections.ConfigDict:
    """The data section with `tokenizer` resolved: `data.tokenizer` if set, else the workdir's own
    (`write_tokenizer_files`), so the tasks tokenize with the tokenizer the model came with."""
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
    """Runs (or resumes) training to `config.train.num_steps`; returns the last logged metrics.

    The workdir is locked for the run (`checkpoint.WorkdirLock`, taken by process 0): a second run in
    the same workdir fails with WorkdirBusyError instead of overwriting this one's checkpoints."""
    return checkpoint.run_locked(workdir, lambda path, is_main: _train(config, path, is_main))


def _train(
    config: ml_collections.ConfigDict, workdir: epath.Path, is_main: bool
) -> dict[str, float]:
    say = print if is_main else (lambda *a, **k: None)

    source = import_source(config.init)
    model_cfg = model_config(config, workdir, source)
    mesh_shape = check_config(config, model_cfg, jax.device_count(), jax.process_count())
    mesh = make_mesh(mesh_shape)
    sharder = Sharder(mesh, sharding_rules(config))
    num_steps = config.train.num_steps
    tx = make_optimizer(config.optimizer, num_steps)
    schedule = learning_rate_schedule(config.optimizer, num_steps)

    ckpt = checkpoint.Checkpointer.for_run(
        workdir, config.checkpoint, keep_base=model_cfg.lora is not None
    )
    # Written before the first checkpoint so that every step in W has its config beside it; by
    # process 0 alone (the others wait, then read the tokenizer it wrote).
    if is_main:
        checkpoint.write_model_config(workdir, model_cfg)
        write_tokenizer_files(config, workdir, source)
        (workdir / "config.json").write_text(config.to_json_best_effort(indent=2) + "\n")
    checkpoint.sync_processes("run files written")
    data_cfg = data_config(config, workdir)
    prompt_format = prompts.make_format(data_cfg.prompt_format, data_cfg.tokenizer)
    if is_main:
        prompts.write_format(workdir, prompt_format)
    input_pipeline.check_mixture(data_cfg, prompt_format)

    import_params = None
    if source is not None:

        def import_params() -> dict:
            say(f"importing {source.path} into {workdir} (step 0)")
            return load_params(source, model_cfg, sharder)

    state = initial_state(config, model_cfg, sharder, tx, ckpt, import_params, say)

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
    tokens_per_step = config.train.batch_size * config.data.seq_len
    flops_per_step = model_cfg.flops_per_token(config.data.seq_len) * tokens_per_step
    peak, peak_source = metrics.peak_flops_per_device(config.train.peak_flops_per_device)
    say(
        f"training steps {start}..{num_steps}: batch {config.train.batch_size} x {config.data.seq_len} tokens, "
        f"{flops_per_step / 1e12:.3g} TFLOP/step, peak {peak / 1e12:.3g} TFLOP/s/device ({peak_source})"
    )
    logger = hooks.MetricsLogger(
        writer,
        metrics.JsonlWriter(workdir / "metrics.jsonl", keep_through=start) if is_main else None,
        say,
        schedule=schedule,
        tokens_per_step=tokens_per_step,
        flops_per_step=flops_per_step,
        peak_flops=peak,
        start_step=start,
    )
    loop_hooks = [hooks.Hook(logger, every=config.train.log_every)]
    if config.eval.get("validation_every_steps", 0) > 0:
        validation_cfg = hooks.validation_data(data_cfg)
        loop_hooks.append(
            hooks.Hook(
                hooks.ValidationLoss(
                    lambda: input_pipeline.global_batches(
                        validation_cfg,
                        config.train.batch_size,
                        seed=config.seed,
                        prompt_format=prompt_format,
                    ),
                    config.eval.validation_batches,
                    model_cfg,
                    sharder,
                    batch_sharding,
                    writer,
                    metrics.JsonlWriter(workdir / "validation.jsonl", keep_through=start)
                    if is_main
                    else None,
                    say,
                ),
                every=config.eval.validation_every_steps,
            )
        )
    if config.eval.every_steps > 0:
        from tpu_train.training.eval_hook import (
            EvalHook,  # the sandbox and sampler load only when asked
        )

        evaluate = EvalHook(config.eval, workdir, prompt_format)

        def evaluate_and_log(info: hooks.StepInfo) -> dict[str, float]:
            params, cfg = lora.plain_model(info.state.model_params(), model_cfg)
            scores = evaluate(info.step, params, cfg, sharder)
            if scores:
                writer.write_scalars(info.step, scores)
                say(
                    f"eval at step {info.step}: "
                    + ", ".join(f"{k} {v:.1f}%" for k, v in scores.items())
                )
            return scores

        loop_hooks.append(hooks.Hook(evaluate_and_log, every=config.eval.every_steps, at_end=False))
    config_json = json.loads(config.to_json_best_effort())
    with Preemption() as preemption:
        try:
            for step in range(start, num_steps):
                if step == config.train.fault_injection_kill_at_step:
                    # Fault injection for the resume tests: die at once, like a machine that is lost.
                    os.kill(os.getpid(), signal.SIGKILL)
                rows = next(batches)
                fingerprint = input_pipeline.fingerprint(rows)
                batch = input_pipeline.to_device(rows, batch_sharding)
                state, step_metrics = step_fn(state, batch)
                done = step + 1
                if not bool(step_metrics["finite"]):
                    message = (
                        f"non-finite loss or gradient at step {done} (the update was not applied)"
                    )
                    if config.train.nan_policy == "stop":
                        ckpt.wait()
                        raise NonFiniteLossError(
                            message + "; set train.nan_policy='skip' to continue past it"
                        )
                    say(f"warning: {message}; skipping (train.nan_policy='skip')")
                info = hooks.StepInfo(done, num_steps, state, step_metrics, fingerprint)
                for hook in loop_hooks:
                    if hook.due(done, num_steps):
                        hook(info)
                preempted = preemption.reached(done)
                if ckpt.should_save(done) or done == num_steps or preempted:
                    ckpt.save(
                        done,
                        state.params,
                        state.opt_state,
                        config_json,
                        force=preempted or done == num_steps,
                        base_step=None if model_cfg.lora is None else checkpoint.BASE_STEP,
                    )
                if preempted:
                    ckpt.wait()
                    say(f"SIGTERM: saved step {done} and stopped; rerun the same command to resume")
                    break
                ckpt.poll()  # an async save that failed (full or read-only workdir) stops the run here
        finally:
            writer.flush()
            ckpt.close()  # waits for the last save; CheckpointSaveError if it failed
    return logger.last


def initial_state(
    config: ml_collections.ConfigDict,
    model_cfg: LlamaConfig,
    sharder: Sharder,
    tx: optax.GradientTransformation,
    ckpt: checkpoint.Checkpointer,
    import_params: Callable[[], dict] | None,
    say: Callable[[str], None],
) -> TrainState:
    """The run's first TrainState, sharded: resumed from `ckpt`, else imported (`import_params`, saved
    as step 0), else initialised from `config.seed`; with LoRA (`model_cfg.lora`) the base is frozen
    (quantized for QLoRA) and only the adapters train. Says which, and how the parameters lie."""
    # With LoRA the model's parameters split into the frozen base and the adapters that train.
    base_cfg = model_cfg.replace(lora=None)
    abstract_params = canonical_abstract(base_cfg, sharder)
    trained_abstract = (
        abstract_params if model_cfg.lora is None else adapter_abstract(model_cfg, sharder)
    )
    replicated = lambda n: jax.device_put(jnp.asarray(n, jnp.int32), sharder.sharding(()))  # noqa: E731
    param_shardings = jax.tree.map(lambda s: s.sharding, trained_abstract)
    opt_abstract = jax.eval_shape(tx.init, trained_abstract)
    opt_shardings = optimizer_state_shardings(opt_abstract, param_shardings, sharder.sharding(()))
    init_opt = jax.jit(tx.init, out_shardings=opt_shardings)
    opt_abstract = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), opt_abstract, opt_shardings
    )
    first = checkpoint.start(
        ckpt,
        abstract_params,
        opt_abstract,
        import_params=import_params,
        init_params=lambda: canonical_params(init_model(base_cfg, sharder, seed=config.seed)),
        adapters=None
        if model_cfg.lora is None
        else checkpoint.Adapters(
            trained_abstract, lambda: init_adapters(model_cfg, sharder, seed=config.seed)
        ),
    )
    opt_state = first.opt_state if first.opt_state is not None else init_opt(first.params)
    frozen = first.frozen
    if model_cfg.lora is not None and model_cfg.lora.quantize_base != "none":
        # QLoRA: quantized at every start; absmax quantization is deterministic, so a resumed run
        # trains against the same base.
        quantize = functools.partial(lora.quantize_base, lora=model_cfg.lora)
        frozen = jax.jit(quantize, donate_argnums=0)(frozen)
    state = TrainState(
        step=replicated(first.step), params=first.params, opt_state=opt_state, frozen=frozen
    )
    say(
        {
            "resumed": f"resumed from {ckpt.step_dir(first.step)} (step {first.step})",
            "imported": f"imported {model_cfg.num_params() / 1e6:,.1f}M parameters as step 0",
            "initialised": f"initialised {model_cfg.num_params() / 1e6:,.1f}M parameters from "
            f"scratch (seed {config.seed})",
        }[first.how]
    )
    say(describe(sharder.mesh, state.params))
    if model_cfg.lora is not None:
        lora_cfg, trained = model_cfg.lora, model_cfg.lora_params()
        say(
            f"LoRA rank {lora_cfg.rank} on {', '.join(lora_cfg.targets)}: {trained / 1e6:,.2f}M "
            f"trainable parameters ({100 * trained / model_cfg.num_params():.2f}% of the base); "
            f"base frozen{'' if lora_cfg.quantize_base == 'none' else ', ' + lora_cfg.quantize_base}"
        )
    return state


__all__ = ["ConfigError", "NonFiniteLossError", "train"]
