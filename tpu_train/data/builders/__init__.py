"""TFDS builders over local files in a manual directory (nothing is downloaded).

The builders are instantiated directly (`Infinitymath(config=..., data_dir=...)`) and are kept out of
the global TFDS catalog, which already has an unrelated `gsm8k`; `prepare.build` wraps the
download_and_prepare call with the manual directory.
"""

from tpu_train.data.builders.gsm8k import Gsm8k
from tpu_train.data.builders.infinitymath import Infinitymath, InfinitymathConfig
from tpu_train.data.builders.mathinstruct import Mathinstruct, MathinstructConfig

__all__ = ["Gsm8k", "Infinitymath", "InfinitymathConfig", "Mathinstruct", "MathinstructConfig"]
