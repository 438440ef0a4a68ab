"""`python -m tpu_train.sample`: the documented name of the command in `tpu_train/cli/sample.py`."""

from tpu_train.cli.sample import run

if __name__ == "__main__":
    run()
