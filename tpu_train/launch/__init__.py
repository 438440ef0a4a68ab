"""Launching runs: TPU VM pod slices (`tpu_vm`) and config sweeps (`sweep`)."""
