"""`python -m tpu_train.execute`: the documented name of the command in `tpu_train/cli/execute.py`."""

from tpu_train.cli.execute import run

if __name__ == "__main__":
    run()
