"""Export a tpu_train workdir checkpoint as a Hugging Face Llama directory.

    python -m tpu_train.export_hf --workdir=W [--step=N] --out=DIR [--dtype=bfloat16] [--overwrite]
                                  [--lora=merged|adapter]

Load the result with `transformers.AutoModelForCausalLM.from_pretrained(DIR)`. A LoRA workdir exports
the merged model by default; `--lora=adapter` writes a PEFT adapter directory instead, loaded with
`peft.PeftModel.from_pretrained(base_model, DIR)`.
"""

from absl import flags

from tpu_train.checkpoint import CheckpointError
from tpu_train.cli import run_main
from tpu_train.interop.hf import DEFAULT_MAX_SHARD_BYTES, EXPORT_DTYPES, LORA_EXPORTS, export_hf

_WORKDIR = flags.DEFINE_string("workdir", None, "tpu_train workdir holding checkpoints")
_OUT = flags.DEFINE_string("out", None, "output directory (written atomically)")
_STEP = flags.DEFINE_integer("step", None, "checkpoint step (default: latest)")
_DTYPE = flags.DEFINE_enum(
    "dtype", None, sorted(EXPORT_DTYPES), "tensor dtype (default: param dtype)"
)
_MAX_SHARD = flags.DEFINE_integer(
    "max_shard_bytes", DEFAULT_MAX_SHARD_BYTES, "split safetensors into shards above this size"
)
_LORA = flags.DEFINE_enum(
    "lora",
    "merged",
    list(LORA_EXPORTS),
    "LoRA workdirs: merged = the plain model with the adapters merged in; adapter = a PEFT adapter",
)
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "replace an existing --out directory")
flags.mark_flags_as_required(["workdir", "out"])


def main(argv: list[str]) -> None:
    del argv
    try:
        step, files = export_hf(
            _WORKDIR.value,
            _OUT.value,
            step=_STEP.value,
            dtype=_DTYPE.value,
            max_shard_bytes=_MAX_SHARD.value,
            overwrite=_OVERWRITE.value,
            lora=_LORA.value,
        )
    except CheckpointError as err:  # every step damaged, or the one asked for: one line
        raise SystemExit(f"error: {err}") from None
    print(f"exported step {step} of {_WORKDIR.value} -> {_OUT.value}: {', '.join(files)}")


def run() -> None:
    """What `python -m tpu_train.export_hf` does."""
    run_main(main, __doc__)


if __name__ == "__main__":
    run()
