"""`python -m tpu_train.rl`: the documented name of the command in `tpu_train/cli/rl.py`."""

from tpu_train.cli.rl import run

if __name__ == "__main__":
    run()
