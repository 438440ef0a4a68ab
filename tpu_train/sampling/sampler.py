"""Batched generation: prompts in, `Completion`s out.

    sampler = Sampler(model, tokenizer=tok)                     # any Llama, sharded or not
    [c] = sampler.generate(["What is 2 + 3?"], SamplingParams(max_new_tokens=64, stop=("###",)))
    c.text, c.stop_reason, len(c.tokens)

Two schedules, with the same greedy output:

* continuous (the default, `slots.py`): `batch_size` decode rows share one KV cache ring of
  S = min(longest padded prompt so far + max_new_tokens, cache_size) slots: prompts are admitted shortest
  first and the ring grows when a longer one comes. Each prompt is prefilled on its own,
  left-padded to a multiple of `prompt_bucket` (few shapes to compile), into a free row; a
  `lax.while_loop` adds one token per running row and returns to the host as soon as a row finishes while
  prompts wait, so the row is refilled while the others keep decoding. Randomness is per prompt:
  `fold_in(key(seed), prompt_number)`, then one `fold_in` per token.
* static (`continuous=False`): prompts are sorted by length and cut into batches of `batch_size` rows;
  each batch is left-padded to its longest prompt (rounded up to `prompt_bucket`), prefilled in one
  pass, and decoded until every row is done, so rows that finish early idle behind the slowest.
  Randomness: `fold_in(key(seed), batch_number)`, then one `fold_in` per step.

Either way EOS, max_new_tokens and a full cache are detected on the device. Stop strings are matched on
the decoded text on the host: with stop strings the loop returns every `stop_check_every` steps, rows
that produced one are marked done, and decoding resumes. The text is cut before the stop string; `tokens`
keep everything up to the token that completed it. Results come back in input order.

A prompt longer than the cache cannot be sampled at all and reports `cache_full` with no tokens; a row
that runs out of slots mid-generation reports `cache_full` with what it produced (a row padded to P gets
at most S - P + 1 tokens; in a static batch the longest prompt sets P for every row).
The same prompts, settings and seed give the same samples on any mesh.
"""

from __future__ import annotations

import collections
import functools
import sys
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from tpu_train.model.llama import Llama
from tpu_train.sampling import decode as dec
from tpu_train.sampling import slots
from tpu_train.sampling.sampling_params import (
    CACHE_FULL,
    EOS,
    REASON_NAMES,
    STOP_STRING,
    Completion,
    SamplingParams,
)
from tpu_train.sampling.tokenizer import Tokenizer
from tpu_train.sharding import fetch_global, put_global


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
        continuous: continuous batching (default): `batch_size` decode rows, each handed the next prompt
            as soon as it finishes (`slots.py`). False: static batches of length-sorted prompts, each
            decoded until its slowest row is done. Greedy output is the same either way.
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
        continuous: bool = True,
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
        self.continuous = continuous
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
        progress: bool = False,
    ) -> list[Completion]:
        """One `Completion` per prompt (a string, or token ids including any BOS), in input order.

        `progress` shows a bar on stderr: prompts finished, and generated tokens/s."""
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
        key = jax.random.key(params.seed)
        bar = _ProgressBar(len(ids), enabled=progress)
        bar.finished([r for r in results if r is not None])
        if self.continuous:
            order = [i for i, r in enumerate(results) if r is None]
            if order:
                completions = self._generate_continuous(ids, order, params, key, bar)
                for i, completion in completions.items():
                    results[i] = completion
            bar.close()
            return results  # type: ignore[return-value]
        order = sorted((i for i, r in enumerate(results) if r is None), key=lambda i: len(ids[i]))
        for batch_number, start in enumerate(range(0, len(order), self.batch_size)):
            members = order[start : start + self.batch_size]
            # Rows rounded up to a power of two: few shapes to compile, and a short last batch does not
            # pay for a full one (8 prompts on 32 rows decode about 2x slower than on 8, on CPU).
            rows = min(self.batch_size, _next_power_of_two(len(members)))
            batch_key = jax.random.fold_in(key, batch_number)
            completions = self._generate_batch([ids[i] for i in members], rows, params, batch_key)
            for i, completion in zip(members, completions, strict=True):
                results[i] = completion
            bar.finished(completions)
        bar.close()
        return results  # type: ignore[return-value]

    def _generate_batch(
        self, seqs: list[list[int]], rows: int, params: SamplingParams, key: jax.Array
    ) -> list[Completion]:
        length = self._padded_length(max(len(s) for s in seqs), params)
        spec = self._spec(min(length + params.max_new_tokens, self.cache_size), params)
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
            done, count, tokens = fetch_global((state.done, state.count, state.tokens))
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
        reasons = fetch_global(state.reason)
        return [
            self._completion(tokens[b], count[b], reasons[b], stopped.get(b))
            for b in range(len(seqs))
        ]

    def _completion(
        self, tokens: np.ndarray, count: int, reason: int, stopped: tuple[int, str] | None
    ) -> Completion:
        """A row's result: cut at its stop string when it produced one (`stopped`: tokens kept, text)."""
        if stopped is not None:
            kept, text = stopped
            return Completion(tuple(int(t) for t in tokens[:kept]), STOP_STRING, text)
        name = REASON_NAMES[int(reason)]
        generated = tuple(int(t) for t in tokens[:count])
        return Completion(generated, name, self._text(generated, name))

    def _padded_length(self, length: int, params: SamplingParams) -> int:
        """A prompt's padded length: rounded up to `prompt_bucket` unless that takes generation slots."""
        padded = -(-length // self.prompt_bucket) * self.prompt_bucket
        return length if padded + params.max_new_tokens > self.cache_size else padded

    def _spec(self, cache_size: int, params: SamplingParams) -> dec.DecodeSpec:
        return dec.DecodeSpec(
            max_new_tokens=params.max_new_tokens,
            cache_size=cache_size,
            eos_ids=self.eos_ids,
            greedy=params.greedy,
            top_k=params.top_k,
            use_top_p=params.top_p < 1.0,
        )

    def _generate_continuous(
        self,
        ids: list[list[int]],
        order: list[int],
        params: SamplingParams,
        key: jax.Array,
        bar: _ProgressBar,
    ) -> dict[int, Completion]:
        """Continuous batching (`slots.py`): `batch_size` rows; a row that finishes takes the next prompt
        while the others keep decoding. Returns {prompt number: completion}."""
        rows = min(self.batch_size, _next_power_of_two(len(order)))
        padded = {i: self._padded_length(len(ids[i]), params) for i in order}
        # Shortest first, so that the ring (read whole by every step) is only as long as the prompts
        # admitted so far need: it grows when a longer prompt's turn comes.
        queue = collections.deque(sorted(order, key=padded.__getitem__))

        def ring_size(i: int) -> int:
            return min(padded[i] + params.max_new_tokens, self.cache_size)

        spec = self._spec(ring_size(queue[0]), params)
        temperature = jnp.float32(params.temperature if params.temperature > 0 else 1.0)
        top_p = jnp.float32(params.top_p)
        state = _empty_slots_jit(self._params, graphdef=self._graphdef, rows=rows, spec=spec)
        free = list(range(rows))
        occupant: dict[int, int] = {}  # row -> prompt number
        checked = np.zeros((rows,), np.int64)  # tokens of each row known to hold no stop string
        every = self.stop_check_every if params.stop else 1 << 30
        results: dict[int, Completion] = {}
        while queue or occupant:
            while free and queue:
                i, row = queue.popleft(), free.pop(0)
                if ring_size(i) > spec.cache_size:
                    spec = self._spec(ring_size(i), params)
                    state = _grow_slots_jit(
                        self._params, state, graphdef=self._graphdef, size=spec.cache_size
                    )
                prompt = np.zeros((1, padded[i]), np.int32)
                prompt[0, padded[i] - len(ids[i]) :] = ids[i]
                state = _admit_jit(
                    self._params,
                    state,
                    self._place_rows(prompt),
                    jnp.int32(padded[i] - len(ids[i])),
                    jnp.int32(row),
                    jax.random.fold_in(key, i),
                    temperature,
                    top_p,
                    graphdef=self._graphdef,
                    spec=spec,
                )
                occupant[row], checked[row] = i, 0
            done = np.asarray(fetch_global(state.done))
            if not done.all():
                # Back to the host when a row frees up while prompts wait (else when all are done),
                # and every `stop_check_every` steps to look for stop strings.
                target = int(done.sum()) + 1 if queue else rows
                until = jnp.int32(min(int(state.steps) + every, (1 << 31) - 1))
                state = _decode_slots_jit(
                    self._params,
                    state,
                    until,
                    jnp.int32(target),
                    temperature,
                    top_p,
                    graphdef=self._graphdef,
                    spec=spec,
                )
            done, count, tokens, reasons = fetch_global(
                (state.done, state.count, state.tokens, state.reason)
            )
            done, stopped = np.array(done), {}
            for row in occupant:
                if params.stop and count[row] > checked[row]:
                    found = self._find_stop(
                        tokens[row, : count[row]], int(checked[row]), params.stop
                    )
                    checked[row] = count[row]
                    if found is not None:
                        stopped[row] = found
                        done[row] = True
            for row in [r for r in occupant if done[r]]:
                completion = self._completion(
                    tokens[row], count[row], reasons[row], stopped.get(row)
                )
                results[occupant.pop(row)] = completion
                bar.finished([completion])
                free.append(row)
            if stopped:  # rows the host stopped: the device must treat them as done (free) too
                state = state._replace(done=self._place_rows(done))
        return results

    def _place_rows(self, x: np.ndarray) -> jax.Array:
        if self.sharder is None:
            return jnp.asarray(x)
        axes = ("batch",) + (None,) * (x.ndim - 1)
        return put_global(x, self.sharder.sharding(axes, x.shape))

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


@functools.partial(jax.jit, static_argnames=("graphdef", "rows", "spec"))
def _empty_slots_jit(params, *, graphdef, rows, spec):
    return slots.empty_state(nnx.merge(graphdef, params), rows, spec)


# Not donated: the grown ring has other shapes, so the old buffers could not be reused anyway.
@functools.partial(jax.jit, static_argnames=("graphdef", "size"))
def _grow_slots_jit(params, state, *, graphdef, size):
    return slots.grow(nnx.merge(graphdef, params), state, size)


@functools.partial(jax.jit, static_argnames=("graphdef", "spec"), donate_argnames=("state",))
def _admit_jit(params, state, prompt, padding, row, key, temperature, top_p, *, graphdef, spec):
    model = nnx.merge(graphdef, params)
    return slots.admit(model, state, prompt, padding, row, key, temperature, top_p, spec)


@functools.partial(jax.jit, static_argnames=("graphdef", "spec"), donate_argnames=("state",))
def _decode_slots_jit(params, state, until, free_target, temperature, top_p, *, graphdef, spec):
    model = nnx.merge(graphdef, params)
    return slots.decode(model, state, until, free_target, temperature, top_p, spec)


@functools.partial(jax.jit, static_argnames=("graphdef", "spec"), donate_argnames=("state",))
def _decode_jit(params, state, until, key, temperature, top_p, *, graphdef, spec):
    model = nnx.merge(graphdef, params)
    return dec.decode(model, state, until, key, temperature, top_p, spec)


class _ProgressBar:
    """A tqdm bar over prompts (stderr) showing generated tokens/s; does nothing when not enabled."""

    def __init__(self, total: int, enabled: bool):
        self._bar = None
        if enabled:
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc="sampling", unit="prompt", file=sys.stderr)
        self._tokens, self._start = 0, time.perf_counter()

    def finished(self, completions: Sequence[Completion]) -> None:
        if self._bar is None or not completions:
            return
        self._tokens += sum(len(c.tokens) for c in completions)
        rate = self._tokens / max(time.perf_counter() - self._start, 1e-9)
        self._bar.set_postfix_str(f"{rate:.0f} tok/s", refresh=False)
        self._bar.update(len(completions))

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def _next_power_of_two(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()
