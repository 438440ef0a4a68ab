"""`python -m tpu_train.evaluate`: the documented name of the command in `tpu_train/cli/evaluate.py`."""

from tpu_train.cli.evaluate import run

if __name__ == "__main__":
    run()
