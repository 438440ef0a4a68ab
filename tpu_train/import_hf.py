"""`python -m tpu_train.import_hf`: the documented name of the command in `tpu_train/cli/import_hf.py`."""

from tpu_train.cli.import_hf import run

if __name__ == "__main__":
    run()
