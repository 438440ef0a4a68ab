"""Sample from a workdir checkpoint or a Hugging Face Llama directory.

    python -m tpu_train.sample --workdir=W | --hf_dir=D  (--prompt=TEXT | --input=prompts.jsonl)
        [--output=out.jsonl] [--max_new_tokens=256] [--temperature=0] [--top_k=0] [--top_p=1] [--seed=0]
        [--template=none|alpaca] [--stop=STR ...] [--step=N] [--batch_size=8] [--cache_size=N]
        [--compute_dtype=float32] [--mesh=fsdp=-1]

Input lines are `{"prompt": ..., "id": ...}` (id optional: the line number). Each output line is
`{"id", "prompt", "output", "stop_reason", "tokens"}`: the prompt as given (before any template), the
generated text without EOS or stop string, why it stopped (eos, stop_string, max_new_tokens, cache_full)
and how many tokens were generated. Lines go to --output, or to stdout without it.

The tokenizer is `tokenizer.model` in the workdir / HF directory; BOS is prepended when it defines one.
--template=alpaca wraps each prompt in the MAmmoTH Alpaca template and, unless --stop is given, stops on
"### Instruction". temperature 0 (the default) is greedy decoding.
"""

from __future__ import annotations

import json
import sys
import time

import jax
from absl import app, flags

from tpu_train.checkpoint import CheckpointError
from tpu_train.cli import run_main
from tpu_train.data.prompts import resolve_format
from tpu_train.sampling import Sampler, SamplingParams, load_for_sampling
from tpu_train.sharding import Sharder, make_mesh

_WORKDIR = flags.DEFINE_string("workdir", None, "tpu_train workdir to sample from")
_HF_DIR = flags.DEFINE_string("hf_dir", None, "transformers Llama directory to sample from")
_STEP = flags.DEFINE_integer(
    "step", None, "workdir checkpoint step (default: latest)", lower_bound=0
)
_PROMPT = flags.DEFINE_string("prompt", None, "one prompt")
_INPUT = flags.DEFINE_string("input", None, 'JSONL of {"prompt", "id"?}')
_OUTPUT = flags.DEFINE_string("output", None, "JSONL to write (default: stdout)")
_MAX_NEW = flags.DEFINE_integer(
    "max_new_tokens", 256, "most tokens generated per prompt", lower_bound=1
)
_TEMPERATURE = flags.DEFINE_float(
    "temperature", 0.0, "softmax temperature; 0 = greedy", lower_bound=0.0
)
_TOP_K = flags.DEFINE_integer(
    "top_k", 0, "sample among the k most likely tokens (0: off)", lower_bound=0
)
_TOP_P = flags.DEFINE_float("top_p", 1.0, "nucleus sampling mass (1: off)")
flags.register_validator("top_p", lambda p: 0.0 < p <= 1.0, "--top_p must be in (0, 1]")
_SEED = flags.DEFINE_integer("seed", 0, "random seed")
_TEMPLATE = flags.DEFINE_enum(
    "template",
    "none",
    ["none", "workdir", "alpaca", "chat"],
    "prompt format around each prompt: none (as given), workdir (the format the model trained with), "
    "alpaca, or chat (the tokenizer's chat template)",
)
_STOP = flags.DEFINE_multi_string("stop", None, "stop string (repeatable)")
_BATCH = flags.DEFINE_integer("batch_size", 8, "prompts decoded together", lower_bound=1)
_CACHE = flags.DEFINE_integer(
    "cache_size", None, "cache slots per row (default: max_seq_len)", lower_bound=1
)
_DTYPE = flags.DEFINE_string("compute_dtype", None, "override the model's compute dtype")
_MESH = flags.DEFINE_string(
    "mesh", None, "mesh sizes, e.g. 'fsdp=-1' or 'data=2,tensor=4' (default: fsdp over all devices)"
)


def _read_prompts() -> list[tuple[object, str]]:
    if (_PROMPT.value is None) == (_INPUT.value is None):
        raise app.UsageError("pass exactly one of --prompt and --input")
    if _PROMPT.value is not None:
        return [(0, _PROMPT.value)]
    prompts = []
    with open(_INPUT.value) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise app.UsageError(f"{_INPUT.value}:{number}: invalid JSON ({e.msg})") from None
            if not isinstance(record, dict) or not isinstance(record.get("prompt"), str):
                raise app.UsageError(f'{_INPUT.value}:{number}: expected {{"prompt": "..."}}')
            prompts.append((record.get("id", number - 1), record["prompt"]))
    return prompts


def _sharder() -> Sharder | None:
    if _MESH.value:
        sizes = {}
        for part in _MESH.value.split(","):
            axis, _, size = part.partition("=")
            sizes[axis.strip()] = int(size)
        return Sharder(make_mesh(sizes))
    return Sharder(make_mesh({"fsdp": -1})) if jax.device_count() > 1 else None


def main(argv: list[str]) -> None:
    del argv
    if (_WORKDIR.value is None) == (_HF_DIR.value is None):
        raise app.UsageError("pass exactly one of --workdir and --hf_dir")
    prompts = _read_prompts()
    overrides = {"compute_dtype": _DTYPE.value} if _DTYPE.value else {}
    # Separate layers decode faster on CPU (see Sampler's unroll_layers); build the model that way.
    overrides["scan_layers"] = jax.default_backend() != "cpu"
    try:
        model, tokenizer, eos_ids = load_for_sampling(
            workdir=_WORKDIR.value,
            hf_dir=_HF_DIR.value,
            step=_STEP.value,
            sharder=_sharder(),
            **overrides,
        )
    except CheckpointError as err:  # every step damaged, or the one asked for: one line
        raise SystemExit(f"error: {err}") from None
    source = _WORKDIR.value or _HF_DIR.value
    if tokenizer is None:
        raise app.UsageError(f"{source} has no tokenizer.json or tokenizer.model to encode prompts")
    fmt = None
    if _TEMPLATE.value != "none":
        fmt = resolve_format("" if _TEMPLATE.value == "workdir" else _TEMPLATE.value, source)
    stop = tuple(_STOP.value) if _STOP.value else fmt.stop if fmt else ()
    params = SamplingParams(
        max_new_tokens=_MAX_NEW.value,
        temperature=_TEMPERATURE.value,
        top_k=_TOP_K.value,
        top_p=_TOP_P.value,
        seed=_SEED.value,
        stop=stop,
    )
    sampler = Sampler(
        model,
        tokenizer=tokenizer,
        eos_ids=eos_ids,
        cache_size=_CACHE.value,
        batch_size=_BATCH.value,
    )
    start = time.perf_counter()
    texts = [fmt.render(p) if fmt else p for _, p in prompts]
    completions = sampler.generate(texts, params, progress=True)
    seconds = time.perf_counter() - start
    out = open(_OUTPUT.value, "w") if _OUTPUT.value else sys.stdout  # noqa: SIM115
    try:
        for (prompt_id, prompt), c in zip(prompts, completions, strict=True):
            line = {
                "id": prompt_id,
                "prompt": prompt,
                "output": c.text,
                "stop_reason": c.stop_reason,
                "tokens": len(c.tokens),
            }
            out.write(json.dumps(line, ensure_ascii=False) + "\n")
    finally:
        if out is not sys.stdout:
            out.close()
    generated = sum(len(c.tokens) for c in completions)
    print(
        f"sampled {len(completions)} prompt(s), {generated} tokens in {seconds:.1f}s "
        f"({generated / max(seconds, 1e-9):.1f} tokens/s, compilation included)",
        file=sys.stderr,
    )


def run() -> None:
    """What `python -m tpu_train.sample` does."""
    run_main(main, __doc__)


if __name__ == "__main__":
    run()
