"""The embedded default: fine-tune the pretrained SmolLM2-135M-Instruct to write GSM8K programs, on CPU.

`./launch.sh` (python -m tpu_train.embedded) fetches and imports the model, builds the program data,
evaluates zero-shot, fine-tunes with this config, evaluates again, exports to Hugging Face format and
summarises (tpu_train/embedded/run.py). Sized for about 20 minutes on 2 CPU cores.
"""

import ml_collections

from tpu_train.training.base_config import base_config


def get_config():
    c = base_config()
    c.seed = 0
    # The architecture and tokenizer come from the imported model (init.gguf, "" = the embedded runner
    # fetches SmolLM2-135M-Instruct); these are only the fields that say how it runs.
    c.init.gguf = ""
    c.model.param_dtype = "float32"
    c.model.compute_dtype = "float32"  # XLA:CPU has no fast bfloat16 matmul
    # Unrolled layers are faster on CPU for full fine-tuning and decoding (measured); with LoRA
    # (config.lora.rank > 0) set scan_layers=True: 1.5x faster there (bench/bench_lora.py).
    c.model.scan_layers = False
    c.mesh.shape = dict(data=1, fsdp=-1, sequence=1, tensor=1)

    c.data.mixture = "embedded_programs_mix"
    c.data.prompt_format = "chat"  # SmolLM2-Instruct's own ChatML template
    c.data.seq_len = 512
    c.data.feature_lengths = dict(inputs=192, targets=320)

    c.optimizer.learning_rate = 3e-4
    c.optimizer.schedule = "cosine"
    c.optimizer.warmup_steps = 5
    c.optimizer.end_lr_fraction = 0.1
    c.optimizer.weight_decay = 0.0
    c.optimizer.clip_norm = 1.0

    c.train.num_steps = 40
    c.train.batch_size = 4
    c.train.log_every = 5
    c.checkpoint.every_steps = 20
    c.checkpoint.keep = 1

    # Read only by the embedded runner (tpu_train/embedded/run.py).
    c.embedded = ml_collections.ConfigDict()
    c.embedded.num_problems = 15  # GSM8K train problems turned into programs, with variants
    c.embedded.variants = 40  # number variants drawn per program (fewer where constraints allow)
    c.embedded.heldout_per_problem = 4  # the last 4 variants of a problem are held out
    # Shares of the training mixture: the problems' own programs and variants, the shipped GSM8K train
    # programs (other problems; breadth for the GSM8K test), chain-of-thought.
    c.embedded.rates = dict(embedded=0.7, shipped=0.25, cot=0.05)
    c.embedded.gsm8k_test_items = 100  # GSM8K test problems evaluated (PoT)
    c.embedded.max_new_tokens = 256
    c.embedded.eval_batch_size = (
        64  # prompts decoded together (64 rows: 1.14x the tokens/s of 32 on CPU)
    )
    return c
