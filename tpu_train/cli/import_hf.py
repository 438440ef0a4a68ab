"""Import a pretrained Llama into a tpu_train workdir (step-0 Orbax checkpoint + model config + tokenizer).

    python -m tpu_train.import_hf --hf_dir=DIR --workdir=W [--param_dtype=float32] [--compute_dtype=bfloat16]
    python -m tpu_train.import_hf --gguf=FILE.gguf --workdir=W

`--hf_dir` is a transformers directory (config.json + safetensors); `--gguf` a llama.cpp GGUF file, whose
tensors are dequantized to `param_dtype` (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q6_K) and whose
vocabulary becomes a tokenizer.json. The workdir may be local or gs://; it must not hold checkpoints yet.
Training started on W later resumes from this checkpoint.
"""

from absl import flags

from tpu_train.cli import run_main
from tpu_train.interop.hf import import_checkpoint, open_source
from tpu_train.interop.hf_config import UnsupportedCheckpointError
from tpu_train.interop.safetensors_io import SafetensorsFileError

# What a user fixes (a cut-short download, a workdir in use, a missing file, an unsupported model); each
# message names the file, key or tensor: one line, no traceback.
USER_ERRORS = (
    SafetensorsFileError,
    UnsupportedCheckpointError,
    FileExistsError,
    FileNotFoundError,
    KeyError,
)

_HF_DIR = flags.DEFINE_string(
    "hf_dir", "", "transformers Llama directory (config.json + safetensors)"
)
_GGUF = flags.DEFINE_string("gguf", "", "llama.cpp GGUF file of a Llama model")
_WORKDIR = flags.DEFINE_string("workdir", None, "new tpu_train workdir to write step 0 to")
_PARAM_DTYPE = flags.DEFINE_string("param_dtype", "float32", "dtype parameters are stored in")
_COMPUTE_DTYPE = flags.DEFINE_string(
    "compute_dtype", "bfloat16", "dtype of matmuls and activations"
)
flags.mark_flags_as_required(["workdir"])


def main(argv: list[str]) -> None:
    del argv
    try:
        source = open_source(hf_dir=_HF_DIR.value, gguf=_GGUF.value)
        cfg = import_checkpoint(
            source,
            _WORKDIR.value,
            overrides=dict(param_dtype=_PARAM_DTYPE.value, compute_dtype=_COMPUTE_DTYPE.value),
        )
    except USER_ERRORS as err:
        # KeyError's str() quotes its message; the message itself is what names the tensor.
        raise SystemExit(f"error: {err.args[0] if err.args else err}") from None
    print(
        f"imported {source.path}: {cfg.num_params() / 1e6:,.1f}M parameters, {cfg.num_layers} layers, "
        f"{cfg.num_heads} heads / {cfg.num_kv_heads} KV heads -> {_WORKDIR.value} (step 0)"
    )


def run() -> None:
    """What `python -m tpu_train.import_hf` does."""
    run_main(main, __doc__)


if __name__ == "__main__":
    run()
