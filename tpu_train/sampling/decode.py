"""Token selection, and the prefill / `lax.while_loop` decode of a batch.

Everything here runs inside `jax.jit`. The forward pass is the model's own, given a KV cache
(`Llama.hidden_states(..., cache=)`): one decoder, for training and for decoding. Stacked layers
(`cfg.scan_layers`) run under `lax.scan` over a stacked cache; separate layers (`as_unrolled`) in a
Python loop, each with its own cache buffer (faster on CPU).

Shapes: B batch, P padded prompt length, S cache slots, N max_new_tokens, V vocabulary, E hidden size.

Example (teacher-forced decoding reproduces the full forward pass):
    >>> import jax.numpy as jnp
    >>> from tpu_train.model import get_preset
    >>> from tpu_train.model.params import init_model
    >>> from tpu_train.model.kv_cache import init_cache
    >>> model = init_model(get_preset("tiny", compute_dtype="float32"))
    >>> tokens = jnp.array([[5, 6, 7, 8]])
    >>> ones, pos = jnp.ones((1, 3), jnp.int32), jnp.arange(4)[None]
    >>> _, cache = model(tokens[:, :3], pos[:, :3], ones, cache=init_cache(model.cfg, 1, 8))
    >>> logits, cache = model(tokens[:, 3:], pos[:, 3:], ones[:, :1], cache=cache)
    >>> bool(jnp.allclose(logits[0, 0], model(tokens)[0, 3], atol=1e-5))
    True
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp

from tpu_train.model.kv_cache import KVCache, init_cache
from tpu_train.model.llama import Llama
from tpu_train.model.params import canonical_params, model_from_params
from tpu_train.sampling.sampling_params import REASON_CODES, RUNNING_CODE


def as_scanned(model: Llama) -> Llama:
    """`model` itself when its layers are stacked, else a stacked copy holding the same parameters."""
    if model.cfg.scan_layers:
        return model
    cfg = model.cfg.replace(scan_layers=True)
    return model_from_params(cfg, canonical_params(model), model.sharder)


def as_unrolled(model: Llama) -> Llama:
    """`model` itself when its layers are separate modules, else a copy with one module per layer.

    Decoding loops over separate layers in Python; on CPU this is about 3x faster than scanning the
    stacked layers, where XLA copies each layer's weights and cache slice out of the stacks every step.
    The copy doubles parameter memory while both models are alive."""
    if not model.cfg.scan_layers:
        return model
    cfg = model.cfg.replace(scan_layers=False)
    return model_from_params(cfg, canonical_params(model), model.sharder)


def select_tokens(
    logits: jax.Array,  # [B, V] float32
    key: jax.Array,
    *,
    greedy: bool,
    top_k: int,
    use_top_p: bool,
    temperature: jax.Array | float = 1.0,
    top_p: jax.Array | float = 1.0,
) -> jax.Array:  # [B] int32
    """Picks one token per row: argmax when `greedy`, else a draw after temperature, top-k and top-p.

    `greedy`, `top_k` and `use_top_p` shape the computation (static); `temperature` and `top_p` may be
    traced. top-k draws among the k largest logits' indices, so it can never return a token outside them.

    >>> logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]]))
    >>> key = jax.random.key(0)
    >>> int(select_tokens(logits, key, greedy=True, top_k=0, use_top_p=False)[0])
    0
    >>> # top_p=0.7 keeps {0, 1}: 0.5 alone is below 0.7, 0.5 + 0.3 reaches it.
    >>> draws = [int(select_tokens(logits, jax.random.key(s), greedy=False, top_k=0, use_top_p=True,
    ...                            top_p=0.7)[0]) for s in range(50)]
    >>> sorted(set(draws))
    [0, 1]
    """
    if greedy:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits / jnp.asarray(temperature, jnp.float32)
    if not top_k and not use_top_p:
        return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)
    k = min(top_k, logits.shape[-1]) if top_k else logits.shape[-1]
    values, indices = jax.lax.top_k(logits, k)  # [B, k], sorted descending
    if use_top_p:
        probs = jax.nn.softmax(values, axis=-1)
        mass_before = jnp.cumsum(probs, axis=-1) - probs
        values = jnp.where(mass_before < top_p, values, -jnp.inf)  # the first token always stays
    choice = jax.random.categorical(key, values, axis=-1)
    return jnp.take_along_axis(indices, choice[:, None], axis=-1)[:, 0].astype(jnp.int32)


@dataclasses.dataclass(frozen=True)
class DecodeSpec:
    """The static (shape- and branch-determining) part of a decode: one compilation per distinct spec."""

    max_new_tokens: int
    cache_size: int
    eos_ids: tuple[int, ...]
    greedy: bool
    top_k: int
    use_top_p: bool


class DecodeState(NamedTuple):
    """The loop state: the cache plus per-row progress. Row b's generated tokens are tokens[b, :count[b]]."""

    cache: KVCache
    padding: jax.Array  # [B] int32 left padding of each prompt (slot - padding = position)
    last: jax.Array  # [B] int32 newest token, not yet in the cache
    tokens: jax.Array  # [B, N] int32
    count: jax.Array  # [B] int32
    done: jax.Array  # [B] bool
    reason: jax.Array  # [B] int32, a REASON_CODES value once done
    step: jax.Array  # [] int32 decode steps run (= count of every row still running)


def stop_code(new: jax.Array, count: jax.Array, full: jax.Array, spec: DecodeSpec) -> jax.Array:
    """[B] REASON_CODES of the rows that must stop after appending `new` (their `count`-th token), or
    RUNNING_CODE: EOS first, then max_new_tokens, then `full` (no cache slot for another token)."""
    is_eos = jnp.isin(new, jnp.asarray(spec.eos_ids, jnp.int32)) if spec.eos_ids else False
    return jnp.where(
        is_eos,
        REASON_CODES["eos"],
        jnp.where(
            count >= spec.max_new_tokens,
            REASON_CODES["max_new_tokens"],
            jnp.where(full, REASON_CODES["cache_full"], RUNNING_CODE),
        ),
    )


def _record(
    state: DecodeState, new: jax.Array, running: jax.Array, spec: DecodeSpec
) -> DecodeState:
    """Appends `new` [B] to the running rows and marks the ones that must stop now."""
    tokens = state.tokens.at[:, state.step].set(
        jnp.where(running, new, state.tokens[:, state.step])
    )
    count = state.count + running.astype(jnp.int32)
    # The next token needs `new` in the cache first: no free slot means the sequence cannot go on.
    code = stop_code(new, count, state.cache.index >= spec.cache_size, spec)
    stop = running & (code != RUNNING_CODE)
    return state._replace(
        last=jnp.where(running, new, state.last),
        tokens=tokens,
        count=count,
        done=state.done | stop,
        reason=jnp.where(stop, code, state.reason),
        step=state.step + 1,
    )


def prefill(
    model: Llama,
    prompts: jax.Array,  # [B, P] int, left-padded
    padding: jax.Array,  # [B] int, padding slots at the start of each row
    active: jax.Array,  # [B] bool; False rows (batch filler) start done and generate nothing
    key: jax.Array,
    temperature: jax.Array,
    top_p: jax.Array,
    spec: DecodeSpec,
) -> DecodeState:
    """Fills the cache with the prompts and draws each row's first token (step 0)."""
    batch, length = prompts.shape
    slots = jnp.arange(length, dtype=jnp.int32)[None, :]
    padding = padding.astype(jnp.int32)
    segments = (slots >= padding[:, None]).astype(jnp.int32)
    positions = jnp.maximum(slots - padding[:, None], 0)
    cache = init_cache(model.cfg, batch, spec.cache_size, model.sharder, not model.cfg.scan_layers)
    hidden, cache = model.hidden_states(prompts, positions, segments, cache)
    logits = model.logits(hidden[:, -1:])[:, 0]
    new = _select(logits, key, 0, temperature, top_p, spec)
    state = DecodeState(
        cache=cache,
        padding=padding,
        last=jnp.zeros((batch,), jnp.int32),
        tokens=jnp.zeros((batch, spec.max_new_tokens), jnp.int32),
        count=jnp.zeros((batch,), jnp.int32),
        done=~active,
        reason=jnp.zeros((batch,), jnp.int32),
        step=jnp.zeros((), jnp.int32),
    )
    return _record(state, new, active, spec)


def decode(
    model: Llama,
    state: DecodeState,
    until: jax.Array,  # [] int: stop the loop once `step` reaches it (host checks stop strings between)
    key: jax.Array,
    temperature: jax.Array,
    top_p: jax.Array,
    spec: DecodeSpec,
) -> DecodeState:
    """Generates one token per running row per iteration of a `lax.while_loop`, until every row is done
    or `step == until`. Done rows ride along (their results are discarded) so shapes stay static."""

    def cond(s: DecodeState) -> jax.Array:
        return (s.step < until) & ~jnp.all(s.done)

    def body(s: DecodeState) -> DecodeState:
        running = ~s.done
        positions = (s.cache.index - s.padding)[:, None]
        hidden, cache = model.hidden_states(
            s.last[:, None], positions, jnp.ones_like(positions), s.cache
        )
        logits = model.logits(hidden)[:, 0]
        new = _select(logits, key, s.step, temperature, top_p, spec)
        return _record(s._replace(cache=cache), new, running, spec)

    return jax.lax.while_loop(cond, body, state)


def _select(logits, key, step, temperature, top_p, spec: DecodeSpec) -> jax.Array:
    return select_tokens(
        logits,
        jax.random.fold_in(key, step),
        greedy=spec.greedy,
        top_k=spec.top_k,
        use_top_p=spec.use_top_p,
        temperature=temperature,
        top_p=top_p,
    )
