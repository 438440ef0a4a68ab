"""Evaluate a model on the benchmarks, or score model outputs produced anywhere.

    python -m tpu_train.evaluate --workdir=W | --hf_dir=D --benchmarks=gsm8k,math,... --mode=hybrid|pot|cot \
        --out=DIR [--limit=N] [--max_new_tokens=512] [--step=S]
    python -m tpu_train.evaluate --predictions=preds.jsonl --out=DIR

The first form samples from the model (greedy, the training prompt format) and scores as
`tpu_train.evaluation.model_eval` describes; `--benchmarks=gsm8k_plus` adds InfinityMATH's robustness
figures (x / y / y/x). Both forms write items.jsonl, table.md, chart.png and summary.json (the first
also sampling.json) and print the table.

For the second form:

Lines are ``{"id", "dataset", "output", "mode": "pot"|"cot"}``. PoT outputs run in the sandbox,
CoT answers are extracted; every item is graded in strict and compat mode. Writes
``items.jsonl``, ``table.md``, ``chart.png`` and ``summary.json`` and prints the table.
``--oracle`` instead grades every benchmark gold against itself and reports the quirks.
"""

from __future__ import annotations

import sys

from absl import app, flags

from tpu_train.cli import run_main
from tpu_train.evaluation import benchmarks, pipeline, scoring
from tpu_train.evaluation.executor import ExecutorConfig

_PREDICTIONS = flags.DEFINE_string("predictions", None, "JSONL of {id, dataset, output, mode}.")
_OUT = flags.DEFINE_string("out", None, "Output directory.")
_WORKERS = flags.DEFINE_integer(
    "workers", 2, "Warm sandbox workers for PoT programs.", lower_bound=1
)
_TIMEOUT = flags.DEFINE_float("timeout", 5.0, "Wall-clock seconds per program.")
flags.register_validator("timeout", lambda t: t > 0, "--timeout must be more than 0 seconds")
_ALLOW_WEAKER = flags.DEFINE_bool("allow_weaker", False, "Run below the minimum isolation.")
_ORACLE = flags.DEFINE_bool("oracle", False, "Run the gold oracle check over eval/ and exit.")
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "tpu_train workdir to sample from (latest step or --step)"
)
_HF_DIR = flags.DEFINE_string("hf_dir", None, "Hugging Face Llama directory to sample from")
_STEP = flags.DEFINE_integer(
    "step", None, "checkpoint step of --workdir (default: latest)", lower_bound=0
)
_BENCHMARKS = flags.DEFINE_list(
    "benchmarks",
    list(benchmarks.DATASETS[:-1]),
    f"comma-separated, from {', '.join((*benchmarks.DATASETS, benchmarks.GSM8K_PLUS))}",
)
_MODE = flags.DEFINE_enum("mode", "hybrid", ["hybrid", "pot", "cot"], "decoding protocol")
_LIMIT = flags.DEFINE_integer(
    "limit", None, "first N items of each benchmark (all by default)", lower_bound=1
)
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 512, "tokens sampled per answer", lower_bound=1)
_BATCH = flags.DEFINE_integer("batch_size", 16, "prompts decoded together", lower_bound=1)
_BATCHING = flags.DEFINE_enum(
    "batching",
    "continuous",
    ["continuous", "static"],
    "continuous: a finished row takes the next prompt at once; static: length-sorted batches, each "
    "decoded until its slowest row is done (same greedy output, slower)",
)
_PROMPT_FORMAT = flags.DEFINE_enum(
    "prompt_format",
    "",
    ["", "alpaca", "chat"],
    "prompt format (default: the one the workdir trained with; alpaca for --hf_dir)",
)


def _oracle() -> int:
    records = [r for d in benchmarks.DATASETS for r in benchmarks.load(d)]
    failed = 0
    for report in scoring.oracle_check(records):
        print(
            f"{report.dataset:<18} {report.correct}/{report.total} correct, "
            f"{len(report.unscorable)} unscorable, {len(report.rejected)} rejected"
        )
        for item_id, reason in report.unscorable:
            print(f"    unscorable {item_id}: {reason}")
        for item_id, gold in report.rejected:
            print(f"    rejected   {item_id}: gold {gold!r}")
        failed += len(report.rejected)
    for quirk, count in sorted(scoring.quirks(records).items()):
        print(f"quirk: {quirk}: {count}")
    return 1 if failed else 0


def _evaluate_model() -> None:
    import json
    import os

    from tpu_train.data.prompts import resolve_format
    from tpu_train.evaluation import model_eval
    from tpu_train.sampling.loading import load_for_sampling
    from tpu_train.sampling.sampler import Sampler
    from tpu_train.sampling.sampling_params import SamplingParams

    records = []
    for name in _BENCHMARKS.value:
        loaded = (
            benchmarks.load_gsm8k_plus() if name == benchmarks.GSM8K_PLUS else benchmarks.load(name)
        )
        records += loaded[: _LIMIT.value] if _LIMIT.value else loaded
    source = {"workdir": _WORKDIR.value} if _WORKDIR.value else {"hf_dir": _HF_DIR.value}
    model, tokenizer, eos_ids = load_for_sampling(
        **source, step=_STEP.value, compute_dtype="float32"
    )
    directory = next(iter(source.values()))
    if tokenizer is None:
        raise app.UsageError(f"no tokenizer.json or tokenizer.model in {directory}")
    prompt_format = resolve_format(_PROMPT_FORMAT.value, directory)
    sampler = Sampler(
        model,
        tokenizer=tokenizer,
        eos_ids=eos_ids,
        batch_size=_BATCH.value,
        continuous=_BATCHING.value == "continuous",
    )
    params = SamplingParams(max_new_tokens=_MAX_NEW.value, stop=prompt_format.stop)

    def generate(prompts: list[str]) -> list[str]:
        print(f"sampling {len(prompts)} completions", file=sys.stderr, flush=True)
        return [(c.text or "").strip() for c in sampler.generate(prompts, params, progress=True)]

    config = ExecutorConfig(
        workers=_WORKERS.value, timeout_s=_TIMEOUT.value, allow_weaker=_ALLOW_WEAKER.value
    )
    items, meta = model_eval.evaluate_model(generate, records, _MODE.value, config, prompt_format)
    rows = pipeline.write_outputs(items, meta, _OUT.value)
    settings = {
        **source,
        "mode": _MODE.value,
        "prompt_format": prompt_format.name,
        "benchmarks": _BENCHMARKS.value,
        "limit": _LIMIT.value,
        "sampling": {
            "temperature": 0.0,
            "max_new_tokens": _MAX_NEW.value,
            "stop": list(prompt_format.stop),
        },
    }
    with open(os.path.join(_OUT.value, "sampling.json"), "w") as handle:
        json.dump(settings, handle, indent=2)
    print(f"isolation: {meta['isolation_level'] or 'n/a (no PoT items)'}")
    print(scoring.text_table(rows), end="")
    plus = [i for i in items if i["dataset"] == benchmarks.GSM8K_PLUS]
    if plus:
        r = model_eval.robustness(plus)
        summary_path = os.path.join(_OUT.value, "summary.json")
        with open(summary_path) as handle:
            summary = json.load(handle)
        with open(summary_path, "w") as handle:
            json.dump(summary | {"gsm8k_plus_robustness": r}, handle, indent=2)
        print(
            f"GSM8K+ robustness: x = {r['at_least_one']} of {r['problems']} problems with a version right, "
            f"y = {r['all']} with all right, y/x = {r['ratio']:.1%}"
        )
    print(f"wrote {_OUT.value}/items.jsonl, table.md, chart.png, summary.json, sampling.json")


def main(argv: list[str]) -> None:
    del argv
    if _ORACLE.value:
        sys.exit(_oracle())
    if _WORKDIR.value or _HF_DIR.value:
        if not _OUT.value or (_WORKDIR.value and _HF_DIR.value):
            raise app.UsageError("give --out and exactly one of --workdir and --hf_dir")
        _evaluate_model()
        return
    if not _PREDICTIONS.value or not _OUT.value:
        raise app.UsageError("--predictions and --out are required (or pass --oracle)")
    try:
        predictions = pipeline.read_predictions(_PREDICTIONS.value)
    except pipeline.InputError as exc:
        raise app.UsageError(str(exc)) from None
    config = ExecutorConfig(
        workers=_WORKERS.value, timeout_s=_TIMEOUT.value, allow_weaker=_ALLOW_WEAKER.value
    )
    progress = None
    if sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(total=len(predictions), unit="item", file=sys.stderr)
        progress = bar.update
    items, meta = pipeline.evaluate(predictions, config, progress=progress)
    rows = pipeline.write_outputs(items, meta, _OUT.value)
    print(f"isolation: {meta['isolation_level'] or 'n/a (no PoT items)'}")
    print(scoring.text_table(rows), end="")
    print(f"wrote {_OUT.value}/items.jsonl, table.md, chart.png, summary.json")


def run() -> None:
    """What `python -m tpu_train.evaluate` does."""
    run_main(main, __doc__)


if __name__ == "__main__":
    run()
