"""Periodic evaluation during training: sample PoT programs for a benchmark slice, run and grade them.

Enabled by `eval.every_steps > 0`. Every process takes part in sampling (the model is sharded over all of
them); process 0 executes the programs in the sandbox, grades them (`tpu_train.evaluation.pipeline`) and
writes W/eval/step_<n>/ (items.jsonl, table.md, chart.png, summary.json) plus `eval/<dataset>_strict`
scalars to TensorBoard.
"""

from __future__ import annotations

import os

import jax
import ml_collections

from tpu_train import checkpoint
from tpu_train.data.prompts import PromptFormat
from tpu_train.evaluation import benchmarks, model_eval, pipeline
from tpu_train.evaluation.executor import ExecutorConfig
from tpu_train.model.config import LlamaConfig
from tpu_train.model.params import model_from_params
from tpu_train.sampling.sampler import Sampler
from tpu_train.sampling.sampling_params import SamplingParams
from tpu_train.sampling.tokenizer import load_tokenizer
from tpu_train.sharding import Sharder


class EvalHook:
    def __init__(
        self,
        eval_cfg: ml_collections.ConfigDict,
        workdir: str | os.PathLike,
        prompt_format: PromptFormat,
    ):
        self.cfg, self.format = eval_cfg, prompt_format
        self.workdir = checkpoint.workdir_path(workdir)  # local or gs://
        self.tokenizer = load_tokenizer(self.workdir)
        self.items = [
            record
            for name in eval_cfg.benchmarks
            for record in list(benchmarks.load(name))[: eval_cfg.items_per_benchmark]
        ]

    def due(self, step: int) -> bool:
        return self.cfg.every_steps > 0 and step % self.cfg.every_steps == 0

    def __call__(
        self, step: int, params: dict, model_cfg: LlamaConfig, sharder: Sharder
    ) -> dict[str, float]:
        """Evaluates `params`; returns {"eval/<dataset>_strict": accuracy %} (empty off process 0)."""
        model = model_from_params(model_cfg, params, sharder)
        sampler = Sampler(model, tokenizer=self.tokenizer, batch_size=self.cfg.batch_size)
        sampling = SamplingParams(max_new_tokens=self.cfg.max_new_tokens, stop=self.format.stop)

        def generate(prompts: list[str]) -> list[str]:
            return [(c.text or "").strip() for c in sampler.generate(prompts, sampling)]

        if jax.process_index() != 0:  # every process samples (the model spans them); one grades
            generate(model_eval.make_prompts(self.items, "pot", self.format))
            return {}
        items, meta = model_eval.evaluate_model(
            generate, self.items, "pot", ExecutorConfig(workers=2), self.format
        )
        rows = pipeline.write_outputs(items, meta, self.workdir / "eval" / f"step_{step}")
        return {f"eval/{row.dataset}_strict": row.strict for row in rows}
