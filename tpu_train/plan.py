"""`python -m tpu_train.plan`: the documented name of the command in `tpu_train/cli/plan.py`."""

from tpu_train.cli.plan import run

if __name__ == "__main__":
    run()
