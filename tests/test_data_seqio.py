"""TFDS builders over a manual dir and SeqIO tasks: layout, errors, loss mask, packing, sharding."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import seqio
import tensorflow_datasets as tfds

from tpu_train.data.builders import Infinitymath, InfinitymathConfig, Mathinstruct
from tpu_train.data.builders.mathinstruct import MathinstructConfig
from tpu_train.data.inspect import inspect_task
from tpu_train.data.pipeline import feature_converter, packing_stats, task_feature_lengths
from tpu_train.data.prompts import ALPACA, POT_TRIGGER
from tpu_train.data.records import RecordError
from tpu_train.data.sources import Source, prepare
from tpu_train.data.tasks import add_task, register_tasks

TOKENIZER = Path(__file__).resolve().parents[1] / "data" / "tokenizer.model"
FIELD_MAP = "original_problem=problem_text"


@pytest.fixture(autouse=True, scope="module")
def _restore_default_registrations():
    yield
    register_tasks()  # later tests in this process see the default tasks again


def _record(i: int, answer) -> dict:
    program = (
        f'def solution():\n    """How many apples?"""\n    # Tom has {{apples}} bags\n'
        f"    apples = {i + 2}\n    result = apples * 3\n    return result"
    )
    variables = {"apples": {"value": i + 2}}
    return {
        "id": f"syn/{i}",
        "source": "synthetic",
        "problem_text": f"Tom has {i + 2} bags of 3 apples. How many apples?",
        "general_problem": "Tom has {apples} bags of 3 apples. How many apples?",
        "generated_program": program,
        # The released file has variables both as objects and as strings.
        "variables": json.dumps(variables) if i % 2 else variables,
        "ori_answer": answer,
        "gen_answer": str(3 * (i + 2)),
    }


def _write(path: Path, rows: list) -> None:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))


@pytest.fixture(scope="module")
def manual_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("manual")
    answers = [6, 9.0, "12", "D", 18, 21.5, "24", 27, 30, "33", 36, 39]  # mixed types, as released
    _write(folder / "infinitymath.jsonl", [_record(i, a) for i, a in enumerate(answers)])
    good = [_record(i, 3 * (i + 2)) for i in range(4)]
    _write(
        folder / "broken.jsonl", [good[0], good[1], {"id": "x", "source": "s"}, good[2], "{oops"]
    )
    return folder


def _config(name: str, file_name: str, **kwargs) -> InfinitymathConfig:
    return InfinitymathConfig(name=name, file_name=file_name, field_map=FIELD_MAP, **kwargs)


def _build(manual_dir: Path, data_dir: Path, config) -> tfds.core.DatasetBuilder:
    builder = Infinitymath(config=config, data_dir=str(data_dir))
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir))
    )
    return builder


def test_builder_reads_released_layout_with_field_map(manual_dir, tmp_path):
    builder = _build(
        manual_dir, tmp_path, _config("syn", "infinitymath.jsonl", validation_percent=30)
    )
    assert set(builder.info.splits) == {"train", "validation"}
    rows = [
        ex
        for split in ("train", "validation")
        for ex in tfds.as_numpy(builder.as_dataset(split=split))
    ]
    assert len(rows) == 12
    by_id = {r["id"].decode(): r for r in rows}
    assert by_id["syn/3"]["ori_answer"] == b"D" and by_id["syn/1"]["ori_answer"] == b"9.0"
    assert by_id["syn/0"]["original_problem"].startswith(b"Tom has 2 bags")
    assert json.loads(by_id["syn/1"]["variables"]) == {"apples": {"value": 3}}
    # Comment placeholders hold the record's numbers, as the model reads and writes programs.
    assert b"    # Tom has 3 bags\n    apples = 3\n" in by_id["syn/1"]["generated_program"]
    assert builder.info.version == "1.1.0"


def test_builder_fails_on_bad_line_with_file_line_and_field(manual_dir, tmp_path):
    with pytest.raises(RecordError, match=r"broken\.jsonl:3: field 'original_problem' missing"):
        _build(manual_dir, tmp_path, _config("broken", "broken.jsonl"))


def test_builder_skip_flag_counts_and_lists_bad_lines(manual_dir, tmp_path):
    config = _config("broken_skip", "broken.jsonl", skip_bad_lines=True, validation_percent=0)
    builder = _build(manual_dir, tmp_path, config)
    assert builder.info.splits["train"].num_examples == 3
    assert len(builder.skipped_lines) == 2
    assert ":3:" in builder.skipped_lines[0] and ":5: invalid JSON" in builder.skipped_lines[1]


def test_mathinstruct_json_array_keeps_source_and_reports_lines(tmp_path):
    rows = [
        {
            "source": "data/CoT/gsm_rft.json",
            "instruction": "1+1?",
            "output": "1+1=2. The answer is 2",
        },
        {"source": "data/PoT/mathqa.json", "instruction": "2+2?", "output": "print(2 + 2)"},
    ]
    (tmp_path / "MathInstruct.json").write_text(json.dumps(rows, indent=1))
    builder = Mathinstruct(
        config=MathinstructConfig(name="t", validation_percent=0), data_dir=str(tmp_path / "d")
    )
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(tmp_path))
    )
    got = sorted((r["source"], r["kind"]) for r in tfds.as_numpy(builder.as_dataset(split="train")))
    assert got == [(b"data/CoT/gsm_rft.json", b"cot"), (b"data/PoT/mathqa.json", b"pot")]
    bad = [*rows, {"source": "x", "instruction": 3, "output": "y"}]
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "MathInstruct.json").write_text(json.dumps(bad, indent=1))
    broken = Mathinstruct(config=MathinstructConfig(name="t2"), data_dir=str(tmp_path / "d2"))
    with pytest.raises(RecordError, match=r"MathInstruct\.json:12: field 'instruction'"):
        broken.download_and_prepare(
            download_config=tfds.download.DownloadConfig(manual_dir=str(tmp_path / "bad"))
        )  # fmt: skip


@pytest.fixture(scope="module")
def task(manual_dir, tmp_path_factory) -> seqio.Task:
    data_dir = tmp_path_factory.mktemp("tfds")
    config = _config("syn_task", "infinitymath.jsonl", validation_percent=0)
    return add_task("test_data_synthetic_pot", "infinitymath", "program", TOKENIZER, data_dir,
                    manual_dir, config=config)  # fmt: skip


def _converted(task: seqio.Task, pack: bool, length: int = 256) -> list[dict]:
    ds = seqio.get_dataset(
        task.name,
        task_feature_lengths=task_feature_lengths(length),
        feature_converter=feature_converter(pack),
        shuffle=False,
        shard_info=seqio.ShardInfo(0, 1),
        verbose=False,
    )
    return list(tfds.as_numpy(ds))


def test_loss_mask_is_exactly_response_and_eos(task):
    vocab = task.output_features["targets"].vocabulary
    assert vocab.pad_id == 0 and vocab.eos_id == 2 and vocab.pad_id != vocab.eos_id
    rows = _converted(task, pack=False)
    assert len(rows) == 12
    programs = set()
    for row in rows:
        tokens, weights = row["decoder_target_tokens"], row["decoder_loss_weights"]
        masked = tokens[weights == 1].tolist()
        assert masked[-1] == vocab.eos_id and vocab.eos_id not in masked[:-1]
        program = vocab.decode(masked[:-1])
        programs.add(program)
        assert program.startswith("def solution():")
        # Loss tokens form one contiguous span ending in EOS, preceded by the whole prompt.
        span = np.flatnonzero(weights)
        assert (np.diff(span) == 1).all()
        prompt = vocab.decode(tokens[: span[0]].tolist())
        assert prompt.startswith(ALPACA.render("Tom has")[:60]) and prompt.endswith(
            POT_TRIGGER + "\n\n### Response:"
        )
        assert tokens[0] == 1  # BOS
        assert (tokens[span[-1] + 1 :] == 0).all() and (weights[span[-1] + 1 :] == 0).all()
    assert len(programs) == 12


def test_packing_keeps_every_token(task):
    plain = _converted(task, pack=False)
    packed = _converted(task, pack=True)
    assert len(packed) < len(plain)

    def pieces(rows):
        out = []
        for row in rows:
            seg = row["decoder_segment_ids"]
            for s in np.unique(seg[seg > 0]):
                sel = seg == s
                assert (row["decoder_positions"][sel] == np.arange(sel.sum())).all()
                out.append(
                    (
                        tuple(row["decoder_target_tokens"][sel]),
                        tuple(row["decoder_loss_weights"][sel]),
                    )
                )
        return sorted(out)

    plain_pieces = sorted(
        (tuple(r["decoder_target_tokens"][r["decoder_target_tokens"] > 0]),
         tuple(r["decoder_loss_weights"][r["decoder_target_tokens"] > 0]))
        for r in plain
    )  # fmt: skip
    assert pieces(packed) == plain_pieces
    stats = packing_stats([{k: v[None] for k, v in row.items()} for row in packed])
    assert stats["examples"] == 12 and 0 < stats["efficiency"] <= 1


def test_each_host_reads_a_disjoint_shard(task):
    def targets(index: int, count: int) -> list[tuple]:
        ds = task.get_dataset(
            task_feature_lengths(256), split="train", shuffle=False,
            shard_info=seqio.ShardInfo(index, count),
        )  # fmt: skip
        return [tuple(ex["targets"]) for ex in tfds.as_numpy(ds)]

    first, second, whole = targets(0, 2), targets(1, 2), targets(0, 1)
    assert first and second and not set(first) & set(second)
    assert sorted(first + second) == sorted(whole)


def test_registration_is_idempotent_and_takes_rates(tmp_path):
    rates = {"gsm8k_pot_mix": {"gsm8k_pot": 2.0, "gsm8k_pot_variants": 1.0}}
    names = register_tasks(TOKENIZER, tmp_path, mixtures=rates)
    again = register_tasks(TOKENIZER, tmp_path, mixtures=rates)
    assert names == again and "gsm8k_cot" in names and "infinitymath_pot" in names
    mixture = seqio.get_mixture_or_task("gsm8k_pot_mix")
    assert mixture.get_rate(seqio.get_mixture_or_task("gsm8k_pot")) == 2.0
    with pytest.raises(ValueError, match="unknown tasks"):
        register_tasks(TOKENIZER, tmp_path, mixtures={"bad": {"nope": 1.0}})


def test_gsm8k_cot_task_strips_annotations(tmp_path):
    register_tasks(TOKENIZER, tmp_path, mixtures={})
    prepare("gsm8k", tmp_path)
    task = seqio.get_mixture_or_task("gsm8k_cot")
    ds = task.get_dataset(task_feature_lengths(512), split="test", shuffle=False)
    example = next(iter(tfds.as_numpy(ds)))
    text = example["targets_pretokenized"].decode()
    assert "<<" not in text and text.rstrip().endswith(".") and "The answer is " in text


def test_prepared_data_is_keyed_by_content_not_modification_time(tmp_path, monkeypatch):
    """Two checkouts sharing one data_dir: the same bytes under other mtimes reuse the dataset, changed
    bytes get their own, and no run ever sees a dataset that is still being written."""
    rows = [_record(i, 3 * (i + 2)) for i in range(6)]
    first_dir, second_dir = tmp_path / "checkout1", tmp_path / "checkout2"
    for folder in (first_dir, second_dir):
        folder.mkdir()
        _write(folder / "infinitymath.jsonl", rows)
    # another checkout of the same files: another modification time
    os.utime(second_dir / "infinitymath.jsonl", ns=(10**18, 10**18))
    config = _config("keyed", "infinitymath.jsonl", validation_percent=0)
    source = Source("infinitymath", None, shipped=False)
    builds = []
    real_prepare = tfds.core.DatasetBuilder.download_and_prepare

    def counting_prepare(builder, *args, **kwargs):
        staging = Path(builder.data_dir).parents[2]  # STAGING/infinitymath/keyed/1.1.0
        builds.append(staging)
        final = staging.parent / staging.name.split(".building-")[0].lstrip(".")
        assert not final.exists()  # nothing at the final place until the build is whole
        return real_prepare(builder, *args, **kwargs)

    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", counting_prepare)
    first = prepare(source, tmp_path / "tfds", first_dir, config)
    assert first.info.splits["train"].num_examples == 6 and len(builds) == 1
    second = prepare(source, tmp_path / "tfds", second_dir, config)
    assert second.data_path == first.data_path and len(builds) == 1  # reused, not rebuilt
    assert ".building-" in builds[0].name  # built aside, then renamed into place
    _write(second_dir / "infinitymath.jsonl", rows[:4])
    changed = prepare(source, tmp_path / "tfds", second_dir, config)
    assert changed.info.splits["train"].num_examples == 4 and len(builds) == 2
    assert changed.data_path != first.data_path
    assert first.info.splits["train"].num_examples == 6  # the other checkout's data is untouched
    assert not list((tmp_path / "tfds" / "tpu_train").glob(".*building*"))  # no staging left


def test_two_runs_preparing_at_once_both_read_the_first_whole_build(tmp_path, monkeypatch):
    manual = tmp_path / "manual"
    manual.mkdir()
    _write(manual / "infinitymath.jsonl", [_record(i, 3 * (i + 2)) for i in range(5)])
    config = _config("raced", "infinitymath.jsonl", validation_percent=0)
    source = Source("infinitymath", None, shipped=False)
    real_prepare = tfds.core.DatasetBuilder.download_and_prepare
    other, started = [], []

    def racing_prepare(builder, *args, **kwargs):
        if not started:  # while this run builds, another one starts and finishes first
            started.append(True)
            other.append(prepare(source, tmp_path / "tfds", manual, config))
        return real_prepare(builder, *args, **kwargs)

    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", racing_prepare)
    mine = prepare(source, tmp_path / "tfds", manual, config)
    assert mine.data_path == other[0].data_path
    assert mine.info.splits["train"].num_examples == 5
    assert not list((tmp_path / "tfds" / "tpu_train").glob(".*building*"))


def test_inspect_prints_masked_examples_and_writes_histogram(task, tmp_path, capsys):
    png = tmp_path / "lengths.png"
    summary = inspect_task(
        task.name, sequence_length=256, examples=1, sample=12, rows=6, histogram=png
    )
    out = capsys.readouterr().out
    # Response pieces start with sentencepiece's word-boundary space, shown as " ".
    assert "### Response:[[ def solution():" in out and out.count("</s>]]") == 1
    assert summary["examples_sampled"] == 12 and summary["trimmed_fraction"] == 0
    assert 0 < summary["packing_efficiency"] <= 1 and png.stat().st_size > 1000


def test_infinitymath_task_over_user_file_with_field_map(manual_dir, tmp_path):
    register_tasks(TOKENIZER, tmp_path, manual_dir, mixtures={}, infinitymath_field_map=FIELD_MAP)
    task = seqio.get_mixture_or_task("infinitymath_pot")
    # 12 records at the default 2% validation share: none is held out, so no validation split.
    examples = list(
        tfds.as_numpy(task.get_dataset(task_feature_lengths(256), "train", shuffle=False))
    )
    assert len(examples) == 12
    assert all(ex["inputs_pretokenized"].decode().endswith(POT_TRIGGER + "\n\n### Response:")
               for ex in examples)  # fmt: skip


def _rows(name: str, length: int, pack: bool, **kwargs) -> list[dict]:
    from tpu_train.data.pipeline import get_dataset

    ds = get_dataset(name, length, batch_size=1, shuffle=False, num_epochs=1, pack=pack,
                     shard_info=seqio.ShardInfo(0, 1), **kwargs)  # fmt: skip
    return [{k: v[0] for k, v in batch.items()} for batch in tfds.as_numpy(ds)]


def test_training_rows_are_the_token_sequence_the_sampler_feeds(task):
    """The model reads [BOS, prompt..., response...] from position 0 in training, exactly the ids the
    sampler encodes for the same prompt, and predicts each next token (no leading 0 slot)."""
    from tpu_train.sampling.tokenizer import SentencePieceTokenizer

    tokenizer = SentencePieceTokenizer(TOKENIZER)
    rows = _rows(task.name, 256, pack=False)
    assert len(rows) == 12
    seen = set()
    for row in rows:
        inputs, targets = row["decoder_input_tokens"], row["decoder_target_tokens"]
        weights = row["decoder_loss_weights"]
        bags = int(tokenizer.decode(inputs.tolist()).split("Tom has ")[1].split()[0])
        seen.add(bags)
        prompt = ALPACA.render(f"Tom has {bags} bags of 3 apples. How many apples?" + POT_TRIGGER)
        fed = tokenizer.encode(prompt)  # what Sampler.generate feeds: BOS + prompt
        assert fed[0] == tokenizer.bos_id
        assert inputs[: len(fed)].tolist() == fed
        # Next-token targets: the first loss target is the first response token, read after the prompt.
        n = int((targets > 0).sum())
        assert targets[: n - 1].tolist() == inputs[1:n].tolist()
        assert np.flatnonzero(weights)[0] == len(fed) - 1
        assert targets[n - 1] == tokenizer.eos_ids[0] and weights[n - 1] == 1
    assert seen == set(range(2, 14))


def test_packed_examples_each_start_at_position_zero_with_bos(task):
    rows = _rows(task.name, 512, pack=True)
    starts = 0
    for row in rows:
        seg, pos, inputs = (
            row["decoder_segment_ids"],
            row["decoder_positions"],
            row["decoder_input_tokens"],
        )
        for s in np.unique(seg[seg > 0]):
            sel = np.flatnonzero(seg == s)
            assert pos[sel].tolist() == list(range(len(sel)))
            assert inputs[sel[0]] == 1  # BOS at position 0, as the sampler puts it
            starts += 1
        assert (row["decoder_loss_weights"][seg == 0] == 0).all()
    assert starts == 12


def test_overlong_examples_are_dropped_and_counted(tmp_path):
    """A prompt that does not fit is not cut (losing '### Response:'), a response that does not fit does
    not keep a false EOS: both are left out, and counted."""
    from tpu_train.data.tasks import count_overlong

    records = [_record(i, 3 * (i + 2)) for i in range(4)]
    records[1]["problem_text"] = "Tom has 3 bags of 3 apples. " * 30 + "How many apples?"
    records[2]["generated_program"] += "\n" + "    # padding comment words\n" * 60
    _write(tmp_path / "long.jsonl", records)
    config = _config("syn_long", "long.jsonl", validation_percent=0)
    task = add_task("test_data_overlong", "infinitymath", "program", TOKENIZER, tmp_path / "tfds",
                    tmp_path, config=config)  # fmt: skip
    lengths = {"inputs": 128, "targets": 128}
    assert count_overlong(task.name, lengths) == (2, 4)
    rows = _rows(task.name, 256, pack=False, feature_lengths=lengths)
    assert len(rows) == 2
    vocab = task.output_features["targets"].vocabulary
    for row in rows:
        text = vocab.decode(row["decoder_input_tokens"].tolist())
        assert "### Response:" in text
