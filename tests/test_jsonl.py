"""The one JSONL reader: every bad line is named by file and line, in the caller's error type."""

import gzip

import pytest

from tpu_train import jsonl
from tpu_train.data.records import RecordError, read_program_records
from tpu_train.evaluation.pipeline import InputError, read_predictions


def test_objects_yield_where_and_row_and_skip_blank_lines(tmp_path):
    path = tmp_path / "a.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.write('{"a": 1}\n\n   \n{"b": "é"}\n')
    assert list(jsonl.objects(path)) == [(f"{path}:1", {"a": 1}), (f"{path}:4", {"b": "é"})]


@pytest.mark.parametrize(
    "content, message",
    [
        (b'{"a": 1}\n{"a": }\n', r":2: invalid JSON: Expecting value \(column 7\)"),
        (b'{"a": 1}\n[1, 2]\n', r":2: expected a JSON object, got list"),
        (b'{"a": 1}\n{"a": "\xff\xfe"}\n', r":2: not UTF-8 text \(invalid start byte at byte 7"),
    ],
)
def test_a_bad_line_is_named(tmp_path, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(content)
    with pytest.raises(jsonl.JsonlError, match=rf"^{path}{message}"):
        list(jsonl.objects(path))


def test_format_readers_raise_their_own_subclass_with_the_same_message(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b"[1]\n")
    with pytest.raises(RecordError, match=rf"^{path}:1: expected a JSON object"):
        read_program_records(path)
    with pytest.raises(InputError, match=rf"^{path}:1: expected a JSON object"):
        read_predictions(str(path))
    assert issubclass(RecordError, jsonl.JsonlError) and issubclass(InputError, jsonl.JsonlError)
