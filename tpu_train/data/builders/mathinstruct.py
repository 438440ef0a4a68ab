"""TFDS builder for MathInstruct (MAmmoTH): a JSON array of {source, instruction, output}.

Rows keep their `source`, and `kind` says whether the output is a program ("pot": the source name
ends in "_pot" or contains "pot", or the output is Python code) or a chain of thought ("cot"), so
mixtures can weight or exclude sources. Splits `train` / `validation` are hash-based.

Example:
    >>> kind_of("gsm8k_pot", "print(3)"), kind_of("MATH_train", "So x = 3.")
    ('pot', 'cot')
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any, ClassVar

import tensorflow_datasets as tfds

from tpu_train import jsonl
from tpu_train.data.builders.common import (
    SingleFileSource,
    iter_json_array,
    parse_all,
    split_of,
    splits_present,
)
from tpu_train.data.records import RecordError

_CODE_RE = re.compile(r"^\s*(?:def |import |from \w+ import |print\()", re.M)


def kind_of(source: str, output: str) -> str:
    """ "pot" for program-of-thought rows, else "cot" (see the module example)."""
    name = source.lower()
    if name.endswith("_pot") or "pot" in re.split(r"[^a-z]+", name) or _CODE_RE.search(output):
        return "pot"
    return "cot"


def parse_row(where: str, row: Any) -> dict[str, str]:
    """Validate one MathInstruct row; RecordError names file, line and field."""
    if isinstance(row, str):
        row = jsonl.parse_object(row, where, RecordError)
    if not isinstance(row, dict):
        raise RecordError(f"{where}: expected an object, got {type(row).__name__}")
    out = {}
    for name in ("source", "instruction", "output"):
        value = row.get(name)
        if not isinstance(value, str):
            raise RecordError(f"{where}: field {name!r} missing or not a string: {value!r:.60}")
        out[name] = value
    return out


@dataclasses.dataclass(eq=False)
class MathinstructConfig(tfds.core.BuilderConfig):
    """File name (JSON array, or JSONL when it ends in .jsonl), skipping and validation share."""

    file_name: str = "MathInstruct.json"
    skip_bad_lines: bool = False
    validation_percent: int = 1


class Mathinstruct(SingleFileSource, tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """MathInstruct from a local file."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES: ClassVar[dict[str, str]] = {
        "1.0.0": "First version: source kept, cot/pot kind, hash-based validation."
    }
    BUILDER_CONFIGS: ClassVar[list] = [MathinstructConfig(name="default")]
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Download MathInstruct.json (https://huggingface.co/datasets/TIGER-Lab/MathInstruct) into "
        "the manual directory."
    )

    def _info(self) -> tfds.core.DatasetInfo:
        text = tfds.features.Text()
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(
                {"id": text, "source": text, "kind": text, "instruction": text, "output": text}
            ),
            homepage="https://arxiv.org/abs/2309.05653",
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        path = Path(dl_manager.manual_dir) / self.builder_config.file_name
        if not path.exists():
            raise FileNotFoundError(f"{path} not found. {self.MANUAL_DOWNLOAD_INSTRUCTIONS}")
        ids = (f"mathinstruct/{number}" for number, _ in enumerate(self._reader(path)))
        splits = splits_present(ids, self.builder_config.validation_percent)
        return {split: self._generate_examples(path, split) for split in splits}

    @staticmethod
    def _reader(path: Path):
        if path.name.endswith((".jsonl", ".jsonl.gz")):
            return jsonl.lines(path)
        return iter_json_array(path)

    def _generate_examples(self, path: Path, split: str):
        config = self.builder_config
        reader = self._reader(path)
        skipped = (
            (self.skipped_lines if split == "train" else []) if config.skip_bad_lines else None
        )
        rows = parse_all(reader, parse_row, skipped, f"mathinstruct {split}")
        for number, row in enumerate(rows):
            row_id = f"mathinstruct/{number}"
            if split_of(row_id, config.validation_percent) == split:
                yield row_id, {"id": row_id, "kind": kind_of(row["source"], row["output"]), **row}
