"""`python -m tpu_train.export_hf`: the documented name of the command in `tpu_train/cli/export_hf.py`."""

from tpu_train.cli.export_hf import run

if __name__ == "__main__":
    run()
