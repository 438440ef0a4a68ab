"""`python -m tpu_train.train`: the documented name of the command in `tpu_train/cli/train.py`."""

from tpu_train.cli.train import run

if __name__ == "__main__":
    run()
