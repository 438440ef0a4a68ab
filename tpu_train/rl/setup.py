"""What an RL run is set up from: the model, mesh, tokenizer and prompt format (`prepare`), and the
environment that hands out problems and rewards (`make_environment`).

The model comes, in this order, from the RL workdir itself (a resumed run), from `init.workdir` (a
tpu_train run, e.g. the embedded default's fine-tuned model: its latest model becomes step 0 and its
tokenizer and prompt format are copied over), from `init.hf_dir` / `init.gguf` (imported as for
training), or from the preset (the CI fixture). `prepare` writes the workdir's tokenizer, prompt
format and model config before the first checkpoint, as training does.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Protocol

import jax
import ml_collections
from etils import epath

from tpu_train import checkpoint
from tpu_train.data import prompts
from tpu_train.data.records import read_program_records
from tpu_train.embedded import evaluation as embedded_eval
from tpu_train.evaluation import model_eval
from tpu_train.evaluation.executor import Executor, ExecutorConfig
from tpu_train.interop.hf import ImportSource
from tpu_train.model.config import LlamaConfig
from tpu_train.rl.environment import Problem, ProgramEnvironment, Scored, SumEnvironment
from tpu_train.sampling.sampler import Sampler
from tpu_train.sampling.sampling_params import Completion, SamplingParams
from tpu_train.sampling.tokenizer import Tokenizer, load_tokenizer
from tpu_train.sharding import Sharder, make_mesh, resolve_mesh_shape
from tpu_train.training.config_checks import ConfigError, lora_config
from tpu_train.training.loop import (
    RUNTIME_MODEL_FIELDS,
    data_config,
    import_source,
    model_config,
    sharding_rules,
    write_tokenizer_files,
)

ENVIRONMENTS = ("programs", "sum")


@dataclasses.dataclass(frozen=True)
class RlRun:
    """The parts of an RL run that the config and the workdir fix before the first step."""

    model_cfg: LlamaConfig
    sharder: Sharder
    tokenizer: Tokenizer | None
    eos_ids: tuple[int, ...]
    stop: tuple[str, ...]  # the prompt format's stop strings
    prompt_format: prompts.PromptFormat | None  # None: the environment's prompts are token ids
    seed: int
    row_length: int  # rl.max_prompt_tokens + rl.max_new_tokens
    init_workdir: epath.Path | None  # the tpu_train run whose model becomes step 0
    source: ImportSource | None  # or the HF / GGUF checkpoint imported as step 0


class Environment(Protocol):
    def problems(self, step: int, count: int) -> list[Problem]: ...
    def score(self, problems: Sequence[Problem], completions: Sequence[Completion]) -> Scored: ...
    def evaluate(
        self, sampler: Sampler, rl: ml_collections.ConfigDict
    ) -> dict[str, tuple[float, int]]: ...
    def close(self) -> None: ...


def prepare(config: ml_collections.ConfigDict, workdir: epath.Path) -> RlRun:
    """Validates the config against the workdir and writes the workdir's tokenizer, prompt format and
    model config (see the module docstring for where the model comes from)."""
    rl = config.rl
    if rl.environment not in ENVIRONMENTS:
        raise ConfigError(f"rl.environment={rl.environment!r}; choose one of {ENVIRONMENTS}")
    init_workdir = checkpoint.workdir_path(config.init.workdir) if config.init.workdir else None
    source = import_source(config.init)
    if init_workdir is not None and source is not None:
        raise ConfigError("set one of init.workdir and init.hf_dir / init.gguf, not both")
    if init_workdir is not None and checkpoint.latest_step(init_workdir) is None:
        raise ConfigError(f"init.workdir: {init_workdir} holds no checkpoint to start from")
    resumed = checkpoint.latest_step(workdir) is not None
    if init_workdir is not None and not resumed:
        runtime = {k: config.model[k] for k in RUNTIME_MODEL_FIELDS if k in config.model}
        runtime["lora"] = lora_config(config.get("lora"))
        # the plain model of init.workdir (its adapters are merged in when it becomes step 0)
        model_cfg = checkpoint.read_model_config(init_workdir).replace(**runtime)
    else:
        model_cfg = model_config(config, workdir, source)
    row_length = rl.max_prompt_tokens + rl.max_new_tokens
    if row_length > model_cfg.max_seq_len:
        raise ConfigError(
            f"rl.max_prompt_tokens + rl.max_new_tokens = {row_length} exceeds the model's "
            f"max_seq_len={model_cfg.max_seq_len}"
        )
    rows = rl.prompts_per_step * rl.group_size
    try:
        mesh_shape = resolve_mesh_shape(dict(config.mesh.shape), _device_count())
    except ValueError as e:
        raise ConfigError(f"mesh.shape: {e}") from e
    data_parallel = mesh_shape["data"] * mesh_shape["fsdp"]
    if rows % data_parallel:
        raise ConfigError(
            f"rl.prompts_per_step x rl.group_size = {rows} rollouts per step do not split over the "
            f"data-parallel size data*fsdp={data_parallel}"
        )
    if rl.microbatches < 1 or rows % (rl.microbatches * data_parallel):
        raise ConfigError(
            f"rl.microbatches={rl.microbatches}: {rows} rollouts per step do not split into that many "
            f"slices of a multiple of data*fsdp={data_parallel} rows"
        )
    sharder = Sharder(make_mesh(mesh_shape), sharding_rules(config))

    is_main = jax.process_index() == 0
    tokenizer, fmt = None, None
    if rl.environment == "programs" and is_main:  # one process writes files
        if init_workdir is not None:
            if not checkpoint.has_tokenizer(workdir):
                checkpoint.copy_tokenizer(init_workdir, workdir)
            if not (workdir / prompts.FORMAT_FILE).exists():
                prompts.write_format(workdir, prompts.read_format(init_workdir))
        else:
            write_tokenizer_files(config, workdir, source)
            if not (workdir / prompts.FORMAT_FILE).exists():
                data_cfg = data_config(config, workdir)
                prompts.write_format(
                    workdir, prompts.make_format(data_cfg.prompt_format, data_cfg.tokenizer)
                )
    if is_main:
        checkpoint.write_model_config(workdir, model_cfg)
    checkpoint.sync_processes("rl run files written")
    if rl.environment == "programs":
        tokenizer = load_tokenizer(workdir)
        if tokenizer is None:
            raise ConfigError(f"{workdir}: no tokenizer; set data.tokenizer")
        fmt = prompts.read_format(workdir)
    return RlRun(
        model_cfg=model_cfg,
        sharder=sharder,
        tokenizer=tokenizer,
        eos_ids=tuple(tokenizer.eos_ids) if tokenizer is not None else (),
        stop=tuple(fmt.stop) if fmt is not None else (),
        prompt_format=fmt,
        seed=config.seed,
        row_length=row_length,
        init_workdir=init_workdir,
        source=source,
    )


def _device_count() -> int:
    return jax.device_count()


class SumTask(SumEnvironment):
    """The sum fixture with its evaluation: greedy accuracy over every (a, b) pair."""

    def evaluate(
        self, sampler: Sampler, rl: ml_collections.ConfigDict
    ) -> dict[str, tuple[float, int]]:
        problems = self.all_problems()
        completions = sampler.generate(
            [p.prompt for p in problems], SamplingParams(max_new_tokens=1)
        )
        scored = self.score(problems, completions)
        return {"sums": (100.0 * float(scored.rewards.mean()), len(problems))}

    def close(self) -> None:
        pass


class ProgramTask(ProgramEnvironment):
    """Repopulated program problems, evaluated greedily (PoT, strict) on held-out variants and a GSM8K
    test slice, as the embedded default reports them."""

    def __init__(self, heldout, gsm8k_items: int, **kwargs):
        super().__init__(**kwargs)
        self.heldout, self.gsm8k_items = heldout, gsm8k_items

    def evaluate(
        self, sampler: Sampler, rl: ml_collections.ConfigDict
    ) -> dict[str, tuple[float, int]]:
        items = embedded_eval.records(self.heldout[: rl.eval_items], self.gsm8k_items)
        if not items:
            return {}
        params = SamplingParams(max_new_tokens=rl.max_new_tokens, stop=self.format.stop)

        def generate(texts: list[str]) -> list[str]:
            return [(c.text or "").strip() for c in sampler.generate(texts, params, progress=True)]

        graded, _ = model_eval.evaluate_model(generate, items, "pot", prompt_format=self.format)
        results: dict[str, tuple[float, int]] = {}
        for title, name in (("held-out variants", embedded_eval.HELDOUT), ("GSM8K test", "gsm8k")):
            scores = [bool(g["strict"]) for g in graded if g["dataset"] == name]
            if scores:
                results[title] = (100.0 * sum(scores) / len(scores), len(scores))
        return results

    def close(self) -> None:
        self.executor.close()


def make_environment(config: ml_collections.ConfigDict, run: RlRun) -> Environment:
    rl = config.rl
    if rl.environment == "sum":
        return SumTask(seed=config.seed)
    for field in ("programs", "heldout"):
        path = rl[field]
        if field == "programs" and not path:
            raise ConfigError("rl.programs: set it to an InfinityMATH-format JSONL of programs")
        if path and not epath.Path(path).exists():
            raise ConfigError(f"rl.{field}: {path} does not exist")
    records, _ = read_program_records(rl.programs)
    heldout = read_program_records(rl.heldout)[0] if rl.heldout else []
    executor = Executor(ExecutorConfig(workers=rl.executor_workers, timeout_s=5.0))
    try:
        return ProgramTask(
            heldout,
            rl.gsm8k_items,
            records=records,
            executor=executor,
            seed=config.seed,
            prompt_format=run.prompt_format,
            exclude_problems={r.original_problem for r in heldout},
            format_bonus=rl.format_bonus,
        )
    except ValueError as e:
        executor.close()
        raise ConfigError(f"rl.programs: {rl.programs}: {e}") from e
