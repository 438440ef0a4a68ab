"""Sampling from Llama models: a static-shape KV cache, prefill + `lax.while_loop` decode, and text I/O.

from tpu_train.sampling import Sampler, SamplingParams, load_for_sampling
model, tokenizer, eos_ids = load_for_sampling(workdir="runs/sft")
sampler = Sampler(model, tokenizer=tokenizer, eos_ids=eos_ids)
completions = sampler.generate(prompts, SamplingParams(max_new_tokens=512, stop=("### Instruction",)))
"""

from tpu_train.sampling.loading import load_for_sampling
from tpu_train.sampling.sampler import Sampler
from tpu_train.sampling.sampling_params import STOP_REASONS, Completion, SamplingParams
from tpu_train.sampling.tokenizer import HfTokenizer, SentencePieceTokenizer, load_tokenizer

__all__ = [
    "STOP_REASONS",
    "Completion",
    "HfTokenizer",
    "Sampler",
    "SamplingParams",
    "SentencePieceTokenizer",
    "load_for_sampling",
    "load_tokenizer",
]
