"""Batched generation: prompts in, `Completion`s out.

    sampler = Sampler(model, tokenizer=tok)                     # any Llama, sharded or not
    [c] = sampler.generate(["What is 2 + 3?"], SamplingParams(max_new_tokens=64, stop=("###",)))
    c.text, c.stop_reason, len(c.tokens)

How a batch runs:
  1. Prompts are sorted by length and cut into batches of `batch_size` rows (results come back in input
     order). Each batch is *left*-padded to P = its longest prompt rounded up to `prompt_bucket` (fewer
     recompilations), and the cache gets S = min(P + max_new_tokens, cache_size) slots.
  2. `prefill` runs all prompts through the model in one pass and draws the first tokens; `decode` then
     runs a `lax.while_loop` that adds one token per running row until every row is done.
  3. EOS, max_new_tokens and a full cache are detected on the device. Stop strings are matched on the
     decoded text on the host: with stop strings the loop returns every `stop_check_every` steps, rows that
     produced one are marked done, and the loop resumes while any row runs. The text is cut before the
     stop string; `tokens` keep everything up to the token that completed it.

A prompt longer than the cache cannot be sampled at all and reports `cache_full` with no tokens; a row
that runs out of slots mid-generation reports `cache_full` with what it produced. Left padding means the
rows of one batch share the slots: a short prompt next to a long one gets at most S - P + 1 tokens (the
longest prompt of the batch sets P; batches are length-sorted to keep this waste small).

Randomness: each batch draws with `fold_in(key(seed), batch_number)` and then one `fold_in` per step, so
the same prompts, settings and seed give the same samples on any mesh.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from tpu_train.model.llama import Llama
from tpu_train.sampling import decode as dec
from tpu_train.sampling.sampling_params import (
    CACHE_FULL,
    EOS,
    REASON_NAMES,
    STOP_STRING,
    Completion,
    SamplingParams,
)
from tpu_train.sampling.tokenizer import Tokenizer


class Sampler:
    """Generates from `model` (its sharder, if any, shards the cache and activations the same way).

    Args:
        model: a Llama, sharded or not.
        tokenizer: encodes string prompts and decodes outputs (needed for text and stop strings).
        eos_ids: tokens that end a sequence (default: the tokenizer's EOS).
        cache_size: slots per row, prompt included (default: the model's max_seq_len).
        batch_size: most rows decoded together.
        prompt_bucket: padded prompt lengths are multiples of this.
        stop_check_every: decode steps between host checks for stop strings.
        unroll_layers: run the layers as separate modules in a Python loop (one cache buffer per layer)
            instead of `lax.scan` over the stacked layers. Default: unrolled on CPU, where it is about 3x
            faster (XLA's CPU backend copies each layer's weights and cache slice out of the stacks
            on every step), scanned elsewhere (constant compile time in depth). The model is converted to
            the chosen layout once, which copies its parameters.
    """

    def __init__(
        self,
        model: Llama,
        *,
        tokenizer: Tokenizer | None = None,
        eos_ids: Sequence[int] | None = None,
        cache_size: int | None = None,
        batch_size: int = 8,
        prompt_bucket: int = 64,
        stop_check_every: int = 32,
        unroll_layers: bool | None = None,
    ):
        if unroll_layers is None:
            unroll_layers = jax.default_backend() == "cpu"
        model = dec.as_unrolled(model) if unroll_layers else dec.as_scanned(model)
        self.cfg, self.sharder, self.tokenizer = model.cfg, model.sharder, tokenizer
        if eos_ids is None:
            eos_ids = tokenizer.eos_ids if tokenizer is not None else ()
        self.eos_ids = tuple(int(i) for i in eos_ids)
        self.cache_size = cache_size or self.cfg.max_seq_len
        self.batch_size, self.prompt_bucket = batch_size, prompt_bucket
        self.stop_check_every = stop_check_every
        self._graphdef, self._params = nnx.split(model)

    def _prefill(self, *args, spec: dec.DecodeSpec) -> dec.DecodeState:
        return _prefill_jit(self._params, *args, graphdef=self._graphdef, spec=spec)

    def _decode(self, *args, spec: dec.DecodeSpec) -> dec.DecodeState:
        return _decode_jit(self._params, *args, graphdef=self._graphdef, spec=spec)

    def encode(self, prompt: str | Sequence[int]) -> list[int]:
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise ValueError("string prompts need a tokenizer; pass token ids or tokenizer=")
            return self.tokenizer.encode(prompt)
        return [int(t) for t in prompt]

    def generate(
        self,
        prompts: Sequence[str | Sequence[int]],
        params: SamplingParams = SamplingParams(),  # noqa: B008 (frozen, so a shared default is safe)
    ) -> list[Completion]:
        """One `Completion` per prompt (a string, or token ids including any BOS), in input order."""
        if params.stop and self.tokenizer is None:
            raise ValueError("stop strings are matched on text; the sampler needs a tokenizer")
        ids = [self.encode(p) for p in prompts]
        for i, seq in enumerate(ids):
            if not seq:
                raise ValueError(f"prompt {i} is empty (no tokens, not even BOS)")
        results: list[Completion | None] = [None] * len(ids)
        for i, seq in enumerate(ids):
            if len(seq) > self.cache_size:  # cannot even be prefilled: nothing generated
                results[i] = Completion((), CACHE_FULL, "" if self.tokenizer else None)
        order = sorted((i for i, r in enumerate(results) if r is None), key=lambda i: len(ids[i]))
        key = jax.random.key(params.seed)
        for batch_number, start in enumerate(range(0, len(order), self.batch_size)):
            members = order[start : start + self.batch_size]
            # Rows rounded up to a power of two: few shapes to compile, and a short last batch does not
            # pay for a full one (8 prompts on 32 rows decode about 2x slower than on 8, on CPU).
            rows = min(self.batch_size, _next_power_of_two(len(members)))
            batch_key = jax.random.fold_in(key, batch_number)
            completions = self._generate_batch([ids[i] for i in members], rows, params, batch_key)
            for i, completion in zip(members, completions, strict=True):
                results[i] = completion
        return results  # type: ignore[return-value]

    def _generate_batch(
        self, seqs: list[list[int]], rows: int, params: SamplingParams, key: jax.Array
    ) -> list[Completion]:
        longest = max(len(s) for s in seqs)
        length = -(-longest // self.prompt_bucket) * self.prompt_bucket
        if length + params.max_new_tokens > self.cache_size:
            length = longest  # rounding up would only take slots away from generation
        spec = dec.DecodeSpec(
            max_new_tokens=params.max_new_tokens,
            cache_size=min(length + params.max_new_tokens, self.cache_size),
            eos_ids=self.eos_ids,
            greedy=params.greedy,
            top_k=params.top_k,
            use_top_p=params.top_p < 1.0,
        )
        prompts = np.zeros((rows, length), np.int32)
        padding = np.full((rows,), length, np.int32)  # filler rows: all padding
        active = np.zeros((rows,), bool)
        for b, seq in enumerate(seqs):
            prompts[b, length - len(seq) :] = seq
            padding[b], active[b] = length - len(seq), True
        temperature = jnp.float32(params.temperature if params.temperature > 0 else 1.0)
        top_p = jnp.float32(params.top_p)
        place = self._place_rows
        state = self._prefill(
            place(prompts),
            place(padding),
            place(active),
            key,
            temperature,
            top_p,
            spec=spec,
        )
        every = self.stop_check_every if params.stop else params.max_new_tokens
        checked = np.zeros((rows,), np.int64)  # tokens already known to hold no stop string
        stopped: dict[int, tuple[int, str]] = {}  # row -> (tokens kept, text)
        while True:
            step = int(state.step)
            if not bool(jnp.all(state.done)):
                until = jnp.int32(min(step + every, params.max_new_tokens))
                state = self._decode(state, until, key, temperature, top_p, spec=spec)
            done, count, tokens = jax.device_get((state.done, state.count, state.tokens))
            if params.stop:
                for b in range(len(seqs)):
                    if b in stopped or count[b] <= checked[b]:
                        continue
                    found = self._find_stop(tokens[b, : count[b]], int(checked[b]), params.stop)
                    if found is not None:
                        stopped[b] = found
                    checked[b] = count[b]
                newly = [b for b in stopped if not done[b]]
                if newly:
                    done = done.copy()
                    done[newly] = True
                    state = state._replace(done=self._place_rows(done))
            if done.all():
                break
        reasons = jax.device_get(state.reason)
        out = []
        for b in range(len(seqs)):
            if b in stopped:
                kept, text = stopped[b]
                out.append(Completion(tuple(int(t) for t in tokens[b, :kept]), STOP_STRING, text))
                continue
            reason = REASON_NAMES[int(reasons[b])]
            generated = tuple(int(t) for t in tokens[b, : count[b]])
            out.append(Completion(generated, reason, self._text(generated, reason)))
        return out

    def _place_rows(self, x: np.ndarray) -> jax.Array:
        if self.sharder is None:
            return jnp.asarray(x)
        axes = ("batch",) + (None,) * (x.ndim - 1)
        return jax.device_put(x, self.sharder.sharding(axes, x.shape))

    def _text(self, tokens: Sequence[int], reason: str) -> str | None:
        if self.tokenizer is None:
            return None
        if reason == EOS:
            tokens = tokens[:-1]
        return self.tokenizer.decode(tokens)

    def _find_stop(
        self, tokens: np.ndarray, checked: int, stops: tuple[str, ...]
    ) -> tuple[int, str] | None:
        """(fewest tokens whose text holds a stop string, that text cut before it), or None."""
        ids = [int(t) for t in tokens if int(t) not in self.eos_ids]
        if not any(s in self.tokenizer.decode(ids) for s in stops):
            return None
        for n in range(max(checked, 1), len(tokens) + 1):
            text = self.tokenizer.decode([int(t) for t in tokens[:n] if int(t) not in self.eos_ids])
            hits = [text.find(s) for s in stops if s in text]
            if hits:
                return n, text[: min(hits)]
        raise AssertionError("unreachable: the full text holds a stop string")


# Module-level, keyed on the model's structure (graphdef) and the DecodeSpec: samplers over models of the
# same shape and sharding share compilations.
@functools.partial(jax.jit, static_argnames=("graphdef", "spec"))
def _prefill_jit(params, prompts, padding, active, key, temperature, top_p, *, graphdef, spec):
    model = nnx.merge(graphdef, params)
    return dec.prefill(model, prompts, padding, active, key, temperature, top_p, spec)


@functools.partial(jax.jit, static_argnames=("graphdef", "spec"), donate_argnames=("state",))
def _decode_jit(params, state, until, key, temperature, top_p, *, graphdef, spec):
    model = nnx.merge(graphdef, params)
    return dec.decode(model, state, until, key, temperature, top_p, spec)


def _next_power_of_two(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()
