"""TFDS builder for GSM8K train/test JSONL files (`question`, `answer` with `#### <final>`).

Not registered in the TFDS catalog (which has its own, downloading `gsm8k`): instantiate it.

Example:
    >>> parse_item("f.jsonl:1", '{"question": "1+1?", "answer": "1+1=2\\\\n#### 2"}')["final_answer"]
    '2'
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import tensorflow_datasets as tfds

from tpu_train import jsonl
from tpu_train.data.builders.common import parse_all
from tpu_train.data.records import RecordError

FILES = {"train": "gsm8k/gsm8k_train.jsonl", "test": "gsm8k/gsm8k_test.jsonl"}


def parse_item(where: str, line: str) -> dict[str, Any]:
    """One GSM8K line; RecordError names file, line and field."""
    row = jsonl.parse_object(line, where, RecordError)
    for name in ("question", "answer"):
        if not isinstance(row.get(name), str):
            raise RecordError(f"{where}: field {name!r} missing or not a string")
    if "####" not in row["answer"]:
        raise RecordError(f"{where}: field 'answer' has no '#### <final answer>' line")
    final = row["answer"].rsplit("####", 1)[1].strip().replace(",", "")
    return {"question": row["question"], "answer": row["answer"], "final_answer": final}


class Gsm8k(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """GSM8K from the local files `gsm8k/gsm8k_{train,test}.jsonl` of the manual directory."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES: ClassVar[dict[str, str]] = {
        "1.0.0": "First version: train and test files, final answer extracted."
    }
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "The repository ships data/gsm8k/gsm8k_train.jsonl and gsm8k_test.jsonl (MIT, see "
        "data/gsm8k/LICENSE.gsm8k): pass data/ as the manual directory."
    )

    def source_files(self) -> list[str]:
        """Files read from the manual directory."""
        return list(FILES.values())

    def _info(self) -> tfds.core.DatasetInfo:
        text = tfds.features.Text()
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(
                {"id": text, "question": text, "answer": text, "final_answer": text}
            ),
            homepage="https://github.com/openai/grade-school-math",
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        out = {}
        for split, name in FILES.items():
            path = Path(dl_manager.manual_dir) / name
            if not path.exists():
                raise FileNotFoundError(f"{path} not found. {self.MANUAL_DOWNLOAD_INSTRUCTIONS}")
            out[split] = self._generate_examples(path, split)
        return out

    def _generate_examples(self, path: Path, split: str):
        for number, item in enumerate(parse_all(jsonl.lines(path), parse_item, None, "gsm8k")):
            item_id = f"gsm8k/{split}/{number}"
            yield item_id, {"id": item_id, **item}
