"""Llama-family decoder in Flax NNX: configuration, presets, modules, attention kernels."""

from tpu_train.model.config import PRESETS, LlamaConfig, RopeScaling, get_preset
from tpu_train.model.llama import Llama

__all__ = ["PRESETS", "Llama", "LlamaConfig", "RopeScaling", "get_preset"]
