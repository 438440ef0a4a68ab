"""Checks an exported Hugging Face directory against transformers: the reloaded model's greedy tokens.

    theirs = transformers_greedy(out_dir, prompt_ids, max_new_tokens=32)

Needs torch and transformers (the `hf` extra); float32 on CPU, so the comparison is exact unless two
logits tie within rounding.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


def transformers_greedy(
    hf_dir: str | Path, prompt_ids: Sequence[int], max_new_tokens: int
) -> list[int]:
    """The tokens transformers' `generate` (greedy) appends to `prompt_ids`, up to and including the
    first EOS of the export's generation config (or `max_new_tokens` of them)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32).eval()
    prompt = torch.tensor([list(prompt_ids)], dtype=torch.long)
    with torch.no_grad():
        out = model.generate(
            prompt,
            attention_mask=torch.ones_like(prompt),
            max_new_tokens=max_new_tokens,
            do_sample=False,
        )
    tokens = out[0, len(prompt_ids) :].tolist()
    eos = model.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [] if eos is None else [eos])
    for i, token in enumerate(tokens):
        if token in eos:
            return tokens[: i + 1]
    return tokens
