"""Evaluating a model on the benchmarks: sample, execute, grade, as MAmmoTH and InfinityMATH report it.

Modes (the question goes into the model's training prompt format, `tpu_train.data.prompts`):
    pot     the question + " Let's write a program."; the program runs in the sandbox
    cot     the question alone; the answer is extracted from the text
    hybrid  PoT first; where the program fails or yields no answer, the CoT answer is used instead
            (MAmmoTH's hybrid decoding); each item records which one answered (`fallback`)

The GSM8K+ robustness set groups each GSM8K test problem with its number variants: x = problems with at
least one version right, y = problems with all versions right, reported with y/x (InfinityMATH's figure).

Example:
    >>> robustness([{"id": "g/1", "strict": True}, {"id": "g/1/v1", "strict": False},
    ...             {"id": "g/2", "strict": True}, {"id": "g/2/v1", "strict": True}])
    {'problems': 2, 'at_least_one': 2, 'all': 1, 'ratio': 0.5}
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Sequence

from tpu_train.data.prompts import ALPACA, POT_TRIGGER, PromptFormat
from tpu_train.evaluation import pipeline
from tpu_train.evaluation.benchmarks import Record
from tpu_train.evaluation.executor import ExecutorConfig

MODES = ("hybrid", "pot", "cot")
Generate = Callable[[list[str]], list[str]]  # prompts -> completions (text)


def evaluate_model(
    generate: Generate,
    records: Sequence[Record],
    mode: str,
    executor: ExecutorConfig | None = None,
    prompt_format: PromptFormat = ALPACA,
) -> tuple[list[dict], dict]:
    """Samples (through `generate`) and scores every record; returns (items, metadata)."""
    if mode not in MODES:
        raise ValueError(f"mode {mode!r}; choose one of {MODES}")
    first = "cot" if mode == "cot" else "pot"
    items, meta = _run(generate, records, first, executor, prompt_format)
    if mode == "hybrid":
        retry = [
            i
            for i, item in enumerate(items)
            if item.get("verdict") != "ok" or item["answer"] is None
        ]
        if retry:
            cot_items, _ = _run(
                generate, [records[i] for i in retry], "cot", executor, prompt_format
            )
            for index, cot_item in zip(retry, cot_items, strict=True):
                items[index] = cot_item | {
                    "fallback": "cot",
                    "pot_verdict": items[index].get("verdict"),
                }
    return items, meta


def make_prompts(
    records: Sequence[Record], mode: str, prompt_format: PromptFormat = ALPACA
) -> list[str]:
    """The prompts of `records` in `mode` ("pot" adds the PoT trigger) and the model's format."""
    suffix = POT_TRIGGER if mode == "pot" else ""
    return [prompt_format.render(r.question + suffix) for r in records]


def _run(
    generate: Generate,
    records: Sequence[Record],
    mode: str,
    executor: ExecutorConfig | None,
    prompt_format: PromptFormat,
) -> tuple[list[dict], dict]:
    prompts = make_prompts(records, mode, prompt_format)
    outputs = generate(prompts)
    pairs = [
        (pipeline.Prediction(r.id, r.dataset, out, mode), r)
        for r, out in zip(records, outputs, strict=True)
    ]
    items, meta = pipeline.evaluate_records(pairs, executor)
    for item, prompt, output in zip(items, prompts, outputs, strict=True):
        item |= {"prompt": prompt, "output": output}
    return items, meta


def robustness(items: Sequence[dict], mode: str = "strict") -> dict[str, float]:
    """x / y / (y/x) over GSM8K+ items grouped by problem (a variant's id is `<problem id>/v<k>`)."""
    groups: dict[str, list[bool]] = collections.defaultdict(list)
    for item in items:
        groups[item["id"].split("/v")[0]].append(bool(item[mode]))
    at_least_one = sum(any(g) for g in groups.values())
    every = sum(all(g) for g in groups.values())
    return {
        "problems": len(groups),
        "at_least_one": at_least_one,
        "all": every,
        "ratio": every / at_least_one if at_least_one else 0.0,
    }
