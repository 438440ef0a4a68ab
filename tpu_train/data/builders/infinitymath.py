"""TFDS builder for InfinityMATH-format JSONL (the released file, or our derived program data).

Configs:
    full            `infinitymath.jsonl` as downloaded by the user (about 101K records).
    gsm8k_programs  `programs/gsm8k_train_programs.jsonl.gz` shipped in `data/` (GSM8K converter).
    gsm8k_variants  `programs/gsm8k_train_variants.jsonl.gz` shipped in `data/` (repopulated).

Splits `train` / `validation` are assigned by a hash of the seed id (variants follow their seed).
`generated_program` is the program as a model reads and writes it: placeholders left in its comments or
docstring are filled with the record's values (`tpu_train.data.substitute.render_program`).

Example:
    >>> builder = Infinitymath(config="gsm8k_programs", data_dir="/tmp/tfds")  # doctest: +SKIP
    >>> builder.download_and_prepare(
    ...     download_config=tfds.download.DownloadConfig(manual_dir="data"))  # doctest: +SKIP
    >>> next(iter(builder.as_dataset(split="train")))["generated_program"]  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import ClassVar

import tensorflow_datasets as tfds

from tpu_train import jsonl
from tpu_train.data.builders.common import SingleFileSource, parse_all, split_of, splits_present
from tpu_train.data.records import FieldMap, ProgramRecord
from tpu_train.data.substitute import render_program


@dataclasses.dataclass(eq=False)
class InfinitymathConfig(tfds.core.BuilderConfig):
    """Which file to read and how.

    Attributes:
        file_name: path of the JSONL file relative to the manual directory (".gz" accepted).
        field_map: "logical=actual,..." for fields under other names (e.g. the unconfirmed name of
            the original-problem field: "original_problem=problem_text").
        skip_bad_lines: skip unreadable lines instead of failing (they are counted and listed).
        validation_percent: share of seeds held out as the validation split (0: no such split).
    """

    file_name: str = "infinitymath.jsonl"
    field_map: str = ""
    skip_bad_lines: bool = False
    validation_percent: int = 2


_CONFIGS = [
    InfinitymathConfig(name="full", description="The released InfinityMATH file."),
    InfinitymathConfig(
        name="gsm8k_programs",
        file_name="programs/gsm8k_train_programs.jsonl.gz",
        description="GSM8K train converted to verified programs (tpu_train.data.gsm8k_to_programs).",
    ),
    InfinitymathConfig(
        name="gsm8k_variants",
        file_name="programs/gsm8k_train_variants.jsonl.gz",
        description="Number variants of gsm8k_programs (tpu_train.data.repopulate).",
    ),
]


def _id_of(line: str, id_field: str) -> object:
    """The id of a line, or None when the line cannot be read (the build reports it later)."""
    try:
        return jsonl.parse_object(line, "").get(id_field)
    except jsonl.JsonlError:
        return None


class Infinitymath(SingleFileSource, tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """InfinityMATH-format program records from a local file."""

    VERSION = tfds.core.Version("1.1.0")
    RELEASE_NOTES: ClassVar[dict[str, str]] = {
        "1.0.0": "First version: eight released fields, hash-based validation split.",
        "1.1.0": "generated_program rendered: comment and docstring placeholders hold the numbers.",
    }
    BUILDER_CONFIGS: ClassVar[list] = _CONFIGS
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Download infinitymath.jsonl (Apache-2.0, https://huggingface.co/datasets/flagopen/"
        "InfinityMATH) into the manual directory. The gsm8k_* configs read the files shipped in the "
        "repository's data/ folder: pass that folder as the manual directory."
    )

    def _info(self) -> tfds.core.DatasetInfo:
        text = tfds.features.Text()
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(
                {
                    "id": text,
                    "source": text,
                    "original_problem": text,
                    "general_problem": text,
                    "generated_program": text,
                    "variables": text,
                    "ori_answer": text,
                    "gen_answer": text,
                }
            ),
            homepage="https://arxiv.org/abs/2408.07089",
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        path = Path(dl_manager.manual_dir) / self.builder_config.file_name
        if not path.exists():
            raise FileNotFoundError(f"{path} not found. {self.MANUAL_DOWNLOAD_INSTRUCTIONS}")
        id_field = FieldMap.parse(self.builder_config.field_map).mapping.get("id", "id")
        ids = (str(_id_of(line, id_field)) for _, line in jsonl.lines(path))
        splits = splits_present(ids, self.builder_config.validation_percent)
        return {split: self._generate_examples(path, split) for split in splits}

    def _generate_examples(self, path: Path, split: str):
        config = self.builder_config
        fields = FieldMap.parse(config.field_map)
        # Both splits read the whole file; skipped lines are listed once, from the train pass.
        skipped = (
            (self.skipped_lines if split == "train" else []) if config.skip_bad_lines else None
        )
        records = parse_all(
            jsonl.lines(path),
            lambda where, line: ProgramRecord.from_json(line, where, fields),
            skipped,
            f"infinitymath/{config.name} {split}",
        )
        for number, record in enumerate(records):
            if split_of(record.id, config.validation_percent) != split:
                continue
            yield (
                f"{number}",
                {
                    "id": record.id,
                    "source": record.source,
                    "original_problem": record.original_problem,
                    "general_problem": record.general_problem,
                    "generated_program": render_program(record),
                    "variables": json.dumps(record.variables, sort_keys=True),
                    "ori_answer": str(record.ori_answer),
                    "gen_answer": record.gen_answer,
                },
            )
