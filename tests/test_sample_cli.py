"""`python -m tpu_train.sample` end to end on a tiny random Llama with a freshly trained sentencepiece model."""

import io
import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import make_hf_llama
from tpu_train.data.prompts import ALPACA
from tpu_train.interop.hf import import_hf
from tpu_train.sampling import (
    STOP_REASONS,
    Sampler,
    SamplingParams,
    SentencePieceTokenizer,
    load_for_sampling,
)

REPO = Path(__file__).resolve().parents[1]
WORDS = [
    "the",
    "a",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "apples",
    "pears",
    "cost",
    "dollars",
    "each",
    "how",
    "many",
    "total",
    "what",
    "is",
    "sum",
    "of",
    "and",
    "has",
    "buys",
    "sells",
    "gives",
    "left",
    "more",
    "than",
    "times",
    "per",
    "week",
    "day",
    "instruction",
    "response",
]


def train_tokenizer(path: Path) -> None:
    """A 320-piece BPE sentencepiece model (BOS 1, EOS 2, byte fallback) trained on generated sentences."""
    import sentencepiece as spm

    rng = random.Random(0)
    lines = [
        " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 15))) + f" {rng.randint(0, 999)}."
        for _ in range(400)
    ]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=model,
        vocab_size=320,
        model_type="bpe",
        byte_fallback=True,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        minloglevel=2,
    )
    path.write_bytes(model.getvalue())


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    make_hf_llama(root / "hf", seed=1, vocab_size=320, num_key_value_heads=2)
    train_tokenizer(root / "hf" / "tokenizer.model")
    return root / "hf"


def _run(*args: str) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-m", "tpu_train.sample", *args],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    # All of stderr: Orbax can print a shutdown traceback after the real error (issue #16).
    assert result.returncode == 0, result.stderr
    return result


def test_tokenizer_adds_bos_and_decodes_without_control_tokens(hf_dir):
    tok = SentencePieceTokenizer(hf_dir / "tokenizer.model")
    ids = tok.encode("how many apples")
    assert ids[0] == tok.bos_id == 1 and tok.eos_ids == (2,)
    assert tok.decode([*ids, 2]) == "how many apples"
    assert tok.decode(tok.encode("héllo 42", add_bos=False)) == "héllo 42"  # byte fallback


def test_cli_jsonl_with_alpaca_template(hf_dir, tmp_path):
    prompts = [
        {"id": "q1", "prompt": "how many apples does one buy"},
        {"prompt": "what is the sum of two and three"},
        {
            "id": 7,
            "prompt": "five pears cost ten dollars each; what is the total cost of the pears?",
        },
    ]
    source = tmp_path / "prompts.jsonl"
    source.write_text("".join(json.dumps(p) + "\n" for p in prompts))
    out = tmp_path / "out.jsonl"
    result = _run(
        f"--hf_dir={hf_dir}",
        f"--input={source}",
        f"--output={out}",
        "--max_new_tokens=10",
        "--template=alpaca",
        "--compute_dtype=float32",
    )
    assert "sampled 3 prompt(s)" in result.stderr
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["id"] for line in lines] == ["q1", 1, 7]
    assert [line["prompt"] for line in lines] == [p["prompt"] for p in prompts]
    for line in lines:
        assert set(line) == {"id", "prompt", "output", "stop_reason", "tokens"}
        assert line["stop_reason"] in STOP_REASONS and 1 <= line["tokens"] <= 10

    # The same greedy generation in-process: the CLI adds the template, BOS, EOS ids and the stop string.
    model, tokenizer, eos_ids = load_for_sampling(hf_dir=hf_dir, compute_dtype="float32")
    sampler = Sampler(model, tokenizer=tokenizer, eos_ids=eos_ids)
    expected = sampler.generate(
        [ALPACA.render(p["prompt"]) for p in prompts],
        SamplingParams(max_new_tokens=10, stop=ALPACA.stop),
    )
    assert [(line["output"], line["stop_reason"], line["tokens"]) for line in lines] == [
        (c.text, c.stop_reason, len(c.tokens)) for c in expected
    ]


def test_cli_prompt_on_a_workdir(hf_dir, tmp_path):
    workdir = tmp_path / "work"
    import_hf(hf_dir, workdir, overrides=dict(compute_dtype="float32"))
    assert (workdir / "tokenizer.model").exists()
    args = (f"--workdir={workdir}", "--prompt=how many pears", "--max_new_tokens=6")
    sampled = ("--temperature=0.8", "--top_k=5", "--top_p=0.9", "--seed=3")
    first = _run(*args, *sampled).stdout.splitlines()
    assert len(first) == 1
    line = json.loads(first[0])
    assert line["id"] == 0 and line["prompt"] == "how many pears"
    assert line["stop_reason"] in ("eos", "max_new_tokens") and 1 <= line["tokens"] <= 6
    shutil.rmtree(workdir / "checkpoints" / "0")
    with pytest.raises(AssertionError, match="no checkpoint"):
        _run(*args)
