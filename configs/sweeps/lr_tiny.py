"""Learning rate x warm-up on the tiny config: a sweep that finishes in minutes on a CPU.

./launch.sh sweep configs/sweeps/lr_tiny.py
"""

from tpu_train.launch.sweep import grid

CONFIG = "configs/tiny_test.py"


def get_sweep():
    return grid(**{"optimizer.learning_rate": [1e-3, 3e-3], "optimizer.warmup_steps": [2, 5]})
