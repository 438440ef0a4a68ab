"""The full set of training config fields with their defaults; `configs/*.py` start from this.

Each component reads only its own section: `model` (architecture preset and runtime fields), `init`,
`lora` (adapters on a frozen base), `mesh` (shape and sharding-rule overrides), `data` (input pipeline),
`optimizer`, `train` (the loop), `checkpoint`, and the top-level `seed`.
"""

import ml_collections

from tpu_train.model.config import LORA_TARGETS


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0

    c.model = ml_collections.ConfigDict()
    c.model.preset = (
        "tiny"  # tpu_train.model.PRESETS; ignored when the workdir or init.hf_dir defines it
    )
    c.model.param_dtype = "float32"
    c.model.compute_dtype = "bfloat16"
    c.model.scan_layers = True
    c.model.remat_policy = "none"  # none | full | save_dots | save_dots_no_batch | save_qkv_attn
    c.model.attention = "xla"  # xla | splash (TPU)
    c.model.overrides = (
        ml_collections.ConfigDict()
    )  # extra LlamaConfig fields for a preset (e.g. num_layers)

    c.init = ml_collections.ConfigDict()
    # A pretrained model to import as step 0 when the workdir has no checkpoint (one of the two).
    c.init.hf_dir = ""  # a transformers Llama directory (config.json + safetensors + tokenizer)
    c.init.gguf = ""  # a llama.cpp GGUF file (dequantized on import; its tokenizer comes along)

    # LoRA / QLoRA (tpu_train.model.lora): adapters on a frozen base; rank 0 trains every parameter.
    c.lora = ml_collections.ConfigDict()
    c.lora.rank = 0
    c.lora.alpha = 16.0  # the update is scaled by alpha / rank
    c.lora.targets = LORA_TARGETS  # any of q_proj k_proj v_proj o_proj gate_proj up_proj down_proj
    c.lora.quantize_base = "none"  # none | int8 | nf4 (QLoRA, quantized by qwix)

    c.mesh = ml_collections.ConfigDict()
    c.mesh.shape = ml_collections.ConfigDict(dict(data=1, fsdp=-1, sequence=1, tensor=1))
    c.mesh.rules = ()  # ((logical, mesh axes), ...) replacing entries of tpu_train.sharding.DEFAULT_RULES

    c.data = ml_collections.ConfigDict()
    c.data.mixture = (
        "gsm8k_pot_mix"  # SeqIO task or mixture (tpu_train.data.tasks lists the built-in ones)
    )
    # The tokenizer the tasks tokenize with: a tokenizer.model, a tokenizer.json directory, or "" for the
    # workdir's own (an imported model's; the shipped data/tokenizer.model for a run from scratch).
    c.data.tokenizer = ""
    c.data.prompt_format = (
        "alpaca"  # alpaca | chat (the tokenizer's chat template); tpu_train.data.prompts
    )
    c.data.report_overlong = True  # count (and print) the examples too long for feature_lengths
    c.data.manual_dir = ""  # user downloads (infinitymath.jsonl, MathInstruct.json); "" = data/
    c.data.registry_modules = ()  # extra modules imported to register more tasks and mixtures
    c.data.split = "train"
    c.data.seq_len = 512
    # Prompt / response trim lengths; they pack into rows of seq_len = inputs + targets. Loss covers the
    # response + EOS only (SeqIO's prefix-LM converter).
    c.data.feature_lengths = ml_collections.ConfigDict(dict(inputs=192, targets=320))
    c.data.pack = True
    c.data.shuffle = True
    c.data.files = ml_collections.ConfigDict()  # name -> path, each checked to exist

    c.optimizer = ml_collections.ConfigDict()
    c.optimizer.learning_rate = 2e-5
    c.optimizer.schedule = "cosine"  # cosine | linear | constant
    c.optimizer.warmup_fraction = 0.03
    c.optimizer.warmup_steps = 0  # > 0 overrides warmup_fraction
    c.optimizer.end_lr_fraction = 0.0
    c.optimizer.b1 = 0.9
    c.optimizer.b2 = 0.95
    c.optimizer.eps = 1e-8
    c.optimizer.weight_decay = 0.0
    c.optimizer.weight_decay_exclude = ("norm",)  # parameter paths containing these never decay
    c.optimizer.clip_norm = 1.0

    c.train = ml_collections.ConfigDict()
    c.train.num_steps = 1000
    c.train.batch_size = 128  # global, in sequences
    c.train.microbatches = 1  # gradient accumulation: sums over microbatches, divides once
    c.train.z_loss = 0.0
    c.train.log_every = 10
    c.train.nan_policy = "stop"  # stop | skip
    c.train.peak_flops_per_device = 0.0  # 0: datasheet for known accelerators, measured on CPU
    c.train.fault_injection_kill_at_step = -1  # tests only: SIGKILL the process before this step

    c.eval = (
        ml_collections.ConfigDict()
    )  # periodic PoT evaluation on a benchmark slice (eval_hook.py)
    c.eval.every_steps = 0  # 0: off
    # Loss on the data's validation split (the held-out ids the TFDS builders set aside), every N steps.
    c.eval.validation_every_steps = 0  # 0: off
    c.eval.validation_batches = 4  # batches of train.batch_size rows, the same ones each time
    c.eval.benchmarks = ("gsm8k",)  # names in tpu_train.evaluation.benchmarks.DATASETS
    c.eval.items_per_benchmark = 20
    c.eval.max_new_tokens = 256
    c.eval.batch_size = 16

    c.checkpoint = ml_collections.ConfigDict()
    c.checkpoint.every_steps = 500
    c.checkpoint.keep = 3  # the last K...
    c.checkpoint.keep_every = 0  # ...plus every M-th step (0: none)
    c.checkpoint.async_save = True
    return c


def published_recipe(records: int, hf_dir: str, mixture: str) -> ml_collections.ConfigDict:
    """The InfinityMATH / MAmmoTH fine-tuning recipe: full fine-tune of an imported checkpoint, lr 2e-5,
    3 epochs, cosine schedule, 3% warm-up, weight decay 0, global batch 128, bf16 compute over fp32 master
    weights. Rows are not packed (one example per row, as the recipe trained), so an epoch of `records`
    examples is ceil(records / 128) steps."""
    import math

    c = base_config()
    c.init.hf_dir = hf_dir  # user-downloaded transformers directory (its tokenizer comes along)
    c.model.param_dtype = "float32"
    c.model.compute_dtype = "bfloat16"
    c.model.remat_policy = "save_dots_no_batch"
    c.model.attention = "splash"
    c.data.mixture = mixture
    c.data.seq_len = 1024
    c.data.feature_lengths = dict(inputs=512, targets=512)
    c.data.pack = False
    c.optimizer.learning_rate = 2e-5
    c.optimizer.schedule = "cosine"
    c.optimizer.warmup_fraction = 0.03
    c.optimizer.weight_decay = 0.0
    c.train.batch_size = 128
    c.train.num_steps = 3 * math.ceil(records / 128)
    c.checkpoint.every_steps = 200
    c.checkpoint.keep = 2
    return c
