"""The embedded default end to end at toy scale: every step runs and writes what the summary names."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import sentencepiece as spm

from tpu_train.data.records import read_program_records
from tpu_train.data.substitute import render_program

ROOT = Path(__file__).resolve().parents[1]


def test_embedded_default_runs_end_to_end(tmp_path):
    env = {
        **os.environ,
        "TFDS_DATA_DIR": str(tmp_path / "tfds"),
        "XLA_FLAGS": "--xla_force_host_platform_device_count=1",
    }
    cmd = [
        sys.executable, "-m", "tpu_train.embedded", f"--workdir={tmp_path / 'run'}",
        "--config.embedded.num_problems=12", "--config.embedded.variants=3",
        "--config.embedded.heldout_per_problem=1", "--config.embedded.gsm8k_test_items=3",
        "--config.embedded.max_new_tokens=24", "--config.train.num_steps=4", "--config.train.log_every=2",
        "--config.checkpoint.every_steps=0",
    ]  # fmt: skip
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    for n in range(1, 6):
        assert f"[{n}/5]" in out.stdout
    match = re.search(r"accuracy on held-out variants: ([0-9.]+)% \((\d+) ", out.stdout)
    assert match, out.stdout[-2000:]
    run = tmp_path / "run"
    items = [json.loads(line) for line in (run / "eval" / "items.jsonl").read_text().splitlines()]
    heldout = [i for i in items if i["dataset"] == "heldout_variants"]
    assert len(heldout) == int(match.group(2)) > 0
    assert sum(i["dataset"] == "gsm8k" for i in items) == 3
    assert all(i["isolation_level"] for i in items)
    assert (run / "learning_curve.png").stat().st_size > 0
    assert (run / "eval" / "chart.png").stat().st_size > 0
    config = json.loads((run / "hf" / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["vocab_size"] == 4096
    assert (run / "hf" / "tokenizer.model").exists()

    # Held-out variants really are unseen: none of their questions is in the training file.
    def questions(name):
        lines = (run / "data" / name).read_text().splitlines()
        return {json.loads(line)["id"]: json.loads(line)["original_problem"] for line in lines}

    heldout_file = questions("heldout_variants.jsonl")
    assert {i["id"] for i in heldout} == set(heldout_file)
    assert not set(heldout_file.values()) & set(questions("train_programs.jsonl").values())
    assert all(i["prompt"].endswith("Let's write a program.\n\n### Response:") for i in heldout)

    # Every training program fits the target length as the model writes it (rendered, plus EOS).
    pieces = spm.SentencePieceProcessor(model_file=str(ROOT / "data" / "tokenizer.model"))
    records, _ = read_program_records(run / "data" / "train_programs.jsonl")
    lengths = [len(pieces.encode(render_program(r))) for r in records]
    assert records and max(lengths) <= 320 - 1
    assert all("{" not in render_program(r).split('"""')[-1] for r in records)
