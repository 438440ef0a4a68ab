"""Continuous batching on the device: a fixed set of decode rows ("slots") that prompts enter and leave.

The static sampler (`decode.py`) prefills a whole batch and decodes until its slowest row is done, so rows
that finish early idle. Here a finished row is handed a new prompt while the other rows keep decoding:

    state = empty_state(model.cfg, rows=8, spec)            # every row free
    state = admit(model, state, prompt, padding, row, key, ...) # prefill one prompt into a free row
    state = decode(model, state, until, free_target, ...)     # run until a row frees up (or `until`)
    state = grow(model, state, size=512)                         # a longer ring, the rows' tokens kept

The KV cache is a *ring* of S slots shared by the rows, as in the static sampler: every decode step writes
all rows' new keys/values into the same slot, `index`, which wraps around modulo S. A row's live tokens
are the last P + n slots before `index` (P its padded prompt, n its tokens generated so far, whose count
is capped at S - P + 1, the last token never being fed back, so the ring never overwrites a live token
of its own). `admit` runs a prompt through
the model alone (its own small cache), writes its keys/values into its row at slots index - P .. index - 1
(mod S), and marks every other slot of that row invisible (segment 0), which hides the previous
occupant. Attention masks by segment and position, never by slot order, so the wrap is invisible to it.
Rows are thus refilled without touching the others and with the same decode step for every row.

Every decode step reads all S slots of every row, so the ring is kept as short as the prompts admitted so
far allow: the sampler admits prompts shortest first and `grow`s the ring when a longer one comes, rather
than sizing it for the longest prompt from the start (on CPU a step at 768 slots costs about 1.4x one at
320).

Randomness is per prompt, not per batch: a row draws its n-th token with `fold_in(key, n)`, `key` given at
admission (the sampler passes `fold_in(key(seed), prompt_number)`), so samples do not depend on which row
or alongside which prompts a prompt ran.

Shapes: B rows, P padded prompt length, S cache slots, N max_new_tokens.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from tpu_train.model.kv_cache import KV_AXES, SLOT_AXES, KVCache, init_cache
from tpu_train.model.llama import Llama
from tpu_train.sampling.decode import DecodeSpec, select_tokens, stop_code
from tpu_train.sampling.sampling_params import RUNNING_CODE
from tpu_train.sharding import constrain


class SlotsState(NamedTuple):
    """The rows' cache and progress. Row b's generated tokens are tokens[b, :count[b]]."""

    cache: KVCache  # ring of S slots; cache.index in [0, S) is the slot the next decode step writes
    last: jax.Array  # [B] int32 newest token of each row, not yet in the cache
    position: jax.Array  # [B] int32 position of `last` in its sequence
    tokens: jax.Array  # [B, N] int32
    count: jax.Array  # [B] int32
    limit: (
        jax.Array
    )  # [B] int32 most tokens the row may generate: N, or less where the ring is short
    done: jax.Array  # [B] bool; a free row (no prompt yet) is done with reason RUNNING_CODE
    reason: jax.Array  # [B] int32, a REASON_CODES value once done
    key: jax.Array  # [B] typed PRNG keys, one per admitted prompt
    steps: jax.Array  # [] int32 decode steps run so far (all rows together)


def empty_state(model: Llama, rows: int, spec: DecodeSpec) -> SlotsState:
    """Every row free, the cache empty."""
    cache = init_cache(model.cfg, rows, spec.cache_size, model.sharder, not model.cfg.scan_layers)
    zeros = jnp.zeros((rows,), jnp.int32)
    return SlotsState(
        cache=cache,
        last=zeros,
        position=zeros,
        tokens=jnp.zeros((rows, spec.max_new_tokens), jnp.int32),
        count=zeros,
        limit=zeros,
        done=jnp.ones((rows,), bool),
        reason=zeros,
        key=jax.random.split(jax.random.key(0), rows),
        steps=jnp.zeros((), jnp.int32),
    )


def _grown(buffer: jax.Array, index: jax.Array, extra: int, axis: int) -> jax.Array:
    """`buffer` rotated so that its slot `index` comes first, behind `extra` new empty slots."""
    rolled = jnp.roll(buffer, -index, axis=axis)
    widths = [(0, 0)] * buffer.ndim
    widths[axis] = (extra, 0)
    return jnp.pad(rolled, widths)


def grow(model: Llama, state: SlotsState, size: int) -> SlotsState:
    """The same rows in a ring of `size` >= S slots.

    Old slot (index + j) mod S moves to new slot size - S + j, and the write index becomes 0: each row's
    live tokens are still the slots just before the index, in order, and the size - S new slots are
    empty (segment 0). Every row gains size - S slots of room (`limit`)."""
    ring, extra = state.cache, size - state.cache.size
    if extra < 0:
        raise ValueError(f"a ring of {ring.size} slots cannot shrink to {size}")
    if extra == 0:
        return state
    if model.cfg.scan_layers:
        k = constrain(_grown(ring.k, ring.index, extra, 3), model.sharder, KV_AXES)
        v = constrain(_grown(ring.v, ring.index, extra, 3), model.sharder, KV_AXES)
    else:
        k = tuple(
            constrain(_grown(b, ring.index, extra, 2), model.sharder, KV_AXES[1:]) for b in ring.k
        )
        v = tuple(
            constrain(_grown(b, ring.index, extra, 2), model.sharder, KV_AXES[1:]) for b in ring.v
        )
    segment = constrain(_grown(ring.segment, ring.index, extra, 1), model.sharder, SLOT_AXES)
    position = constrain(_grown(ring.position, ring.index, extra, 1), model.sharder, SLOT_AXES)
    cache = KVCache(k, v, segment, position, jnp.zeros((), jnp.int32))
    return state._replace(cache=cache, limit=state.limit + extra)


def _select_per_row(logits, keys, count, temperature, top_p, spec: DecodeSpec) -> jax.Array:
    """One token per row [B], each row drawing with its own key folded with its token count."""

    def one(row_logits, key, n):
        return select_tokens(
            row_logits[None],
            jax.random.fold_in(key, n),
            greedy=spec.greedy,
            top_k=spec.top_k,
            use_top_p=spec.use_top_p,
            temperature=temperature,
            top_p=top_p,
        )[0]

    if spec.greedy:  # no keys needed: one argmax over the batch
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    return jax.vmap(one)(logits, keys, count)


def _record(state: SlotsState, new: jax.Array, running: jax.Array, spec: DecodeSpec) -> SlotsState:
    """Appends `new` [B] to the running rows and marks the ones that must stop now."""
    rows = jnp.arange(new.shape[0])
    slot = jnp.minimum(state.count, spec.max_new_tokens - 1)
    tokens = state.tokens.at[rows, slot].set(jnp.where(running, new, state.tokens[rows, slot]))
    count = state.count + running.astype(jnp.int32)
    code = stop_code(new, count, count >= state.limit, spec)
    stop = running & (code != RUNNING_CODE)
    return state._replace(
        last=jnp.where(running, new, state.last),
        tokens=tokens,
        count=count,
        done=state.done | stop,
        reason=jnp.where(stop, code, state.reason),
    )


def _write_rows(buffer: jax.Array, new: jax.Array, row: jax.Array, slots: jax.Array, stacked: bool):
    """buffer [(layers,) B, K, S, D] with new [(layers,) 1, K, P, D] written into `row` at `slots` [P]."""
    if stacked:  # advanced indices split by slices: the update is laid out [P, layers, K, D]
        return buffer.at[:, row, :, slots].set(new[:, 0].transpose(2, 0, 1, 3))
    return buffer.at[row, :, slots].set(new[0].transpose(1, 0, 2))


def admit(
    model: Llama,
    state: SlotsState,
    prompt: jax.Array,  # [1, P] int32, left-padded
    padding: jax.Array,  # [] int32 padding slots at its start
    row: jax.Array,  # [] int32 the free row it goes into
    key: jax.Array,  # a typed PRNG key for this prompt's draws
    temperature: jax.Array,
    top_p: jax.Array,
    spec: DecodeSpec,
) -> SlotsState:
    """Prefills `prompt` into `row` (which must be free) and draws its first token."""
    length, size = prompt.shape[1], spec.cache_size
    slot_ids = jnp.arange(length, dtype=jnp.int32)
    segments = (slot_ids >= padding).astype(jnp.int32)[None]
    positions = jnp.maximum(slot_ids - padding, 0)[None]
    scratch = init_cache(model.cfg, 1, length, model.sharder, not model.cfg.scan_layers)
    hidden, scratch = model.hidden_states(prompt, positions, segments, scratch)
    logits = model.logits(hidden[:, -1:])[:, 0]  # [1, V]

    ring = state.cache
    slots = (ring.index - length + slot_ids) % size  # the P slots just before the write index
    stacked = model.cfg.scan_layers
    if stacked:
        k = _write_rows(ring.k, scratch.k, row, slots, True)
        v = _write_rows(ring.v, scratch.v, row, slots, True)
    else:
        k = tuple(
            _write_rows(b, n, row, slots, False) for b, n in zip(ring.k, scratch.k, strict=True)
        )
        v = tuple(
            _write_rows(b, n, row, slots, False) for b, n in zip(ring.v, scratch.v, strict=True)
        )
    segment = ring.segment.at[row].set(0).at[row, slots].set(segments[0])
    position = ring.position.at[row].set(0).at[row, slots].set(positions[0])
    cache = KVCache(k, v, segment, position, ring.index)

    keys = state.key.at[row].set(key)
    first = _select_per_row(
        logits, keys[row][None], jnp.zeros((1,), jnp.int32), temperature, top_p, spec
    )
    state = state._replace(
        cache=cache,
        position=state.position.at[row].set(length - padding),
        tokens=state.tokens.at[row].set(0),
        count=state.count.at[row].set(0),
        # Feeding back the n-th token takes the row's (P + n)-th slot of the ring, and the last token is
        # never fed back: n may reach S - P + 1 (1 when the prompt fills the ring).
        limit=state.limit.at[row].set(size - length + 1),
        done=state.done.at[row].set(False),
        reason=state.reason.at[row].set(RUNNING_CODE),
        key=keys,
    )
    new = jnp.zeros_like(state.last).at[row].set(first[0])
    running = jnp.zeros_like(state.done).at[row].set(True)
    return _record(state, new, running, spec)


def decode(
    model: Llama,
    state: SlotsState,
    until: jax.Array,  # [] int32: return once `steps` reaches it (the host checks stop strings then)
    free_target: jax.Array,  # [] int32: return once this many rows are done (a row to refill)
    temperature: jax.Array,
    top_p: jax.Array,
    spec: DecodeSpec,
) -> SlotsState:
    """One token per running row per iteration of a `lax.while_loop`; done and free rows ride along
    (their results are discarded) so that shapes stay static."""

    def cond(s: SlotsState) -> jax.Array:
        done = s.done.sum(dtype=jnp.int32)
        return (s.steps < until) & (done < free_target) & ~jnp.all(s.done)

    def body(s: SlotsState) -> SlotsState:
        running = ~s.done
        positions = s.position[:, None]
        hidden, cache = model.hidden_states(
            s.last[:, None], positions, jnp.ones_like(positions), s.cache
        )
        cache = cache._replace(index=cache.index % spec.cache_size)  # the ring wraps
        logits = model.logits(hidden)[:, 0]
        new = _select_per_row(logits, s.key, s.count, temperature, top_p, spec)
        s = s._replace(cache=cache, position=s.position + 1, steps=s.steps + 1)
        return _record(s, new, running, spec)

    return jax.lax.while_loop(cond, body, state)
