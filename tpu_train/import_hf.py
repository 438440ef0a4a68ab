"""Import a Hugging Face Llama directory into a tpu_train workdir (step-0 Orbax checkpoint).

    python -m tpu_train.import_hf --hf_dir=DIR --workdir=W [--param_dtype=float32] [--compute_dtype=bfloat16]

Training started on W later resumes from this checkpoint.
"""

from absl import app, flags

from tpu_train.interop.hf import import_hf

_HF_DIR = flags.DEFINE_string(
    "hf_dir", None, "transformers Llama directory (config.json + safetensors)"
)
_WORKDIR = flags.DEFINE_string("workdir", None, "tpu_train workdir to create or add step 0 to")
_PARAM_DTYPE = flags.DEFINE_string("param_dtype", "float32", "dtype parameters are stored in")
_COMPUTE_DTYPE = flags.DEFINE_string(
    "compute_dtype", "bfloat16", "dtype of matmuls and activations"
)
flags.mark_flags_as_required(["hf_dir", "workdir"])


def main(argv: list[str]) -> None:
    del argv
    cfg = import_hf(
        _HF_DIR.value,
        _WORKDIR.value,
        overrides=dict(param_dtype=_PARAM_DTYPE.value, compute_dtype=_COMPUTE_DTYPE.value),
    )
    print(
        f"imported {_HF_DIR.value}: {cfg.num_params() / 1e6:,.1f}M parameters, {cfg.num_layers} layers, "
        f"{cfg.num_heads} heads / {cfg.num_kv_heads} KV heads -> {_WORKDIR.value} (step 0)"
    )


if __name__ == "__main__":
    app.run(main)
