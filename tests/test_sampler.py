"""The sampler: cached decoding against the full forward pass and transformers, token selection, stopping,
and sharded against unsharded decoding (8 fake CPU devices from conftest)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from tests.conftest import make_hf_llama
from tpu_train.interop.hf import import_hf
from tpu_train.model.kv_cache import init_cache
from tpu_train.model.params import canonical_abstract, canonical_params, model_from_params
from tpu_train.sampling import Sampler, SamplingParams, load_for_sampling
from tpu_train.sampling.decode import as_scanned, as_unrolled, select_tokens
from tpu_train.sharding import Sharder, make_mesh

EOS = 2  # transformers' LlamaConfig default eos_token_id
PROMPT_LENGTHS = (3, 7, 12, 20)
NEW = 12  # most tests share this and the prompts above, so they share one compilation per sampling mode
NUCLEUS = SamplingParams(max_new_tokens=NEW, temperature=1.0, top_p=0.5, top_k=50, seed=1)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(model imported through import_hf, the transformers model, prompts of several lengths)."""
    root = tmp_path_factory.mktemp("sampler")
    torch_model = make_hf_llama(root / "hf", seed=0, num_key_value_heads=2)
    import_hf(root / "hf", root / "work", overrides=dict(compute_dtype="float32"))
    model, _, _ = load_for_sampling(workdir=root / "work")
    rng = np.random.default_rng(0)
    prompts = [[1, *rng.integers(3, model.cfg.vocab_size, n - 1).tolist()] for n in PROMPT_LENGTHS]
    return model, torch_model, prompts


@pytest.fixture(scope="module")
def sampler(tiny):
    return Sampler(tiny[0], eos_ids=())


def _logits_of(model, seqs):
    """Full-forward logits of right-padded `seqs` (padding after a sequence cannot change its logits)."""
    rows = np.zeros((len(seqs), 32), np.int32)
    for b, seq in enumerate(seqs):
        rows[b, : len(seq)] = seq
    return np.asarray(jax.jit(lambda m, t: m(t))(model, jnp.asarray(rows)))


@pytest.mark.parametrize("layers", ["scanned", "unrolled"])
def test_cached_decoding_matches_full_forward(tiny, layers):
    model, _, prompts = tiny
    model = as_scanned(model) if layers == "scanned" else as_unrolled(model)
    short, long_ = prompts[0] + prompts[1][1:], prompts[3]  # 9 and 20 tokens
    length, width = 24, len(long_)
    rows = np.zeros((2, length), np.int32)
    padding = np.array([width - len(short), 0])
    rows[0, padding[0] : width], rows[1, :width] = short, long_
    rows[:, width:] = np.random.default_rng(1).integers(
        3, model.cfg.vocab_size, (2, length - width)
    )
    slots = np.arange(length)[None]
    segments = (slots >= padding[:, None]).astype(np.int32)
    positions = np.maximum(slots - padding[:, None], 0)
    full = np.asarray(model(jnp.asarray(rows), jnp.asarray(positions), jnp.asarray(segments)))

    cache = init_cache(model.cfg, 2, 32, per_layer=layers == "unrolled")
    step = jax.jit(lambda model, cache, *inputs: model.hidden_states(*inputs, cache=cache))
    hidden, cache = step(model, cache, rows[:, :width], positions[:, :width], segments[:, :width])
    prefilled = np.asarray(model.logits(hidden))
    real = (
        segments[:, :width] == 1
    )  # padding rows attend differently by design; only real tokens count
    np.testing.assert_allclose(prefilled[real], full[:, :width][real], atol=1e-4, rtol=0)
    got = [prefilled[:, -1]]
    for i in range(width, length):
        hidden, cache = step(
            model, cache, rows[:, i : i + 1], positions[:, i : i + 1], segments[:, i : i + 1]
        )
        got.append(np.asarray(model.logits(hidden))[:, 0])
    assert int(cache.index) == length
    expected = full[:, width - 1 :]
    for b in range(2):
        np.testing.assert_allclose(np.stack(got)[:, b], expected[b], atol=1e-4, rtol=0)


def test_scanned_and_unrolled_layers_sample_alike(tiny, sampler):
    model, _, prompts = tiny
    unscanned = model_from_params(model.cfg.replace(scan_layers=False), canonical_params(model))
    scanned = Sampler(unscanned, eos_ids=(), unroll_layers=False)
    assert scanned.cfg.scan_layers and not sampler.cfg.scan_layers  # CPU default: unrolled
    for params in (SamplingParams(max_new_tokens=NEW), NUCLEUS):
        assert scanned.generate(prompts, params) == sampler.generate(prompts, params)


def test_greedy_matches_transformers_generate(tiny):
    model, torch_model, prompts = tiny
    new = 16
    sampler = Sampler(model, eos_ids=(EOS,), prompt_bucket=8)  # padding 17, 13, 8 and 0
    ours = sampler.generate(prompts, SamplingParams(max_new_tokens=new))
    for prompt, completion in zip(prompts, ours, strict=True):
        with torch.no_grad():
            out = torch_model.generate(
                torch.tensor([prompt]),
                attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                max_new_tokens=new,
                do_sample=False,
                eos_token_id=EOS,
                pad_token_id=0,
            )
        theirs = out[0, len(prompt) :].tolist()
        assert list(completion.tokens) == theirs
        expected_reason = "eos" if theirs[-1] == EOS else "max_new_tokens"
        assert completion.stop_reason == expected_reason


def _step_logits(model, prompts, completions):
    """[(logits the model gave before each generated token, that token)] over all rows."""
    seqs = [list(p) + list(c.tokens) for p, c in zip(prompts, completions, strict=True)]
    logits = _logits_of(model, seqs)
    pairs = []
    for b, (p, c) in enumerate(zip(prompts, completions, strict=True)):
        rows = logits[b, len(p) - 1 : len(p) - 1 + len(c.tokens)]
        pairs += list(zip(rows, c.tokens, strict=True))
    return pairs


def test_top_k_never_leaves_the_top_k(tiny, sampler):
    model, _, prompts = tiny
    params = SamplingParams(max_new_tokens=NEW, temperature=3.0, top_k=3, seed=5)
    completions = sampler.generate(prompts, params)
    ranks = [int((row > row[t]).sum()) for row, t in _step_logits(model, prompts, completions)]
    assert len(ranks) == NEW * len(prompts) and max(ranks) < 3
    assert len(set(ranks)) > 1  # at temperature 3 the draws are not all greedy


def test_top_p_keeps_the_nucleus(tiny, sampler):
    model, _, prompts = tiny
    completions = sampler.generate(prompts, NUCLEUS)
    for row, token in _step_logits(model, prompts, completions):
        probs = np.exp(row - row.max())
        probs /= probs.sum()
        mass_before = probs[probs > probs[token]].sum()  # more likely tokens than the one drawn
        assert mass_before < 0.5 + 1e-5


def test_select_tokens_filters_compose():
    logits = jnp.log(jnp.array([[0.05, 0.4, 0.3, 0.15, 0.1]] * 4000))
    key = jax.random.key(0)

    def draws(**kw):
        kw = {"greedy": False, "top_k": 0, "use_top_p": False, **kw}
        return np.bincount(np.asarray(select_tokens(logits, key, **kw)), minlength=5)

    assert set(np.nonzero(draws(top_k=2))[0]) == {1, 2}
    assert set(np.nonzero(draws(use_top_p=True, top_p=0.75))[0]) == {1, 2, 3}
    assert set(np.nonzero(draws(top_k=2, use_top_p=True, top_p=0.75))[0]) == {1, 2}
    assert set(np.nonzero(draws(use_top_p=True, top_p=0.1))[0]) == {1}
    counts = draws()
    np.testing.assert_allclose(counts / counts.sum(), [0.05, 0.4, 0.3, 0.15, 0.1], atol=0.03)
    cold = draws(temperature=1e-4)
    assert cold[1] == cold.sum()


def test_low_temperature_equals_greedy_and_seeds_are_deterministic(tiny, sampler):
    _, _, prompts = tiny
    greedy = sampler.generate(prompts, SamplingParams(max_new_tokens=NEW))
    cold = sampler.generate(prompts, SamplingParams(max_new_tokens=NEW, temperature=1e-6, seed=3))
    assert [c.tokens for c in cold] == [g.tokens for g in greedy]
    hot = SamplingParams(max_new_tokens=NEW, temperature=1.5, seed=7)
    first, again = sampler.generate(prompts, hot), sampler.generate(prompts, hot)
    other = sampler.generate(prompts, SamplingParams(max_new_tokens=NEW, temperature=1.5, seed=8))
    assert first == again
    assert [c.tokens for c in first] != [c.tokens for c in other]
    assert [c.tokens for c in first] != [g.tokens for g in greedy]


@pytest.mark.parametrize("unroll", [True, False])
def test_sharded_sampler_equals_unsharded(tiny, sampler, unroll):
    model, _, prompts = tiny
    sharder = Sharder(
        make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    )  # batch 4-way, K/V heads 2-way
    params = canonical_params(model)
    placed = jax.device_put(
        params, jax.tree.map(lambda s: s.sharding, canonical_abstract(model.cfg, sharder))
    )
    sharded = model_from_params(model.cfg, placed, sharder)
    assert len(sharded.layers.mlp.up_proj[...].sharding.device_set) == 8
    sharded_sampler = Sampler(sharded, eos_ids=(), unroll_layers=unroll)
    for sampling in (SamplingParams(max_new_tokens=NEW), NUCLEUS)[: 2 if unroll else 1]:
        assert sharded_sampler.generate(prompts, sampling) == sampler.generate(prompts, sampling)


class HexTokenizer:
    """Token t reads as two hex digits: stop strings can start and end inside tokens."""

    eos_ids = ()

    def encode(self, text):
        return [int(text[i : i + 2], 16) for i in range(0, len(text), 2)]

    def decode(self, ids):
        return "".join(f"{int(t):02x}" for t in ids)


def test_stop_reasons(tiny, sampler):
    model, _, prompts = tiny
    free = sampler.generate(prompts, SamplingParams(max_new_tokens=NEW))
    assert {c.stop_reason for c in free} == {"max_new_tokens"}
    assert all(len(c.tokens) == NEW for c in free)

    # EOS: declare the 4th greedy token of prompt 0 an EOS token; it stops there, EOS kept in tokens.
    eos = free[0].tokens[3]
    first = free[0].tokens.index(eos)
    [c] = Sampler(model, eos_ids=(eos,)).generate(prompts[:1], SamplingParams(max_new_tokens=NEW))
    assert (c.stop_reason, c.tokens) == ("eos", free[0].tokens[: first + 1])

    # cache_full: 20 prompt tokens in 24 slots leave room for 5 tokens (the last needs no slot).
    for continuous in (True, False):
        small = Sampler(model, eos_ids=(), cache_size=24, continuous=continuous)
        out = small.generate([prompts[3], prompts[0], [1] * 30], SamplingParams(max_new_tokens=NEW))
        assert out[0].stop_reason == "cache_full" and out[0].tokens == free[3].tokens[:5]
        if continuous:  # prompt 0 has its own padding (3 slots): room for all its tokens
            assert (out[1].stop_reason, out[1].tokens) == ("max_new_tokens", free[0].tokens)
        else:  # it shares the static batch's slots: padded to 20 as well
            assert (out[1].stop_reason, out[1].tokens) == ("cache_full", free[0].tokens[:5])
        assert (out[2].stop_reason, out[2].tokens) == ("cache_full", ())  # longer than the cache
        exact = small.generate([prompts[3]], SamplingParams(max_new_tokens=5))
        assert exact[0].stop_reason == "max_new_tokens"


def test_continuous_batching_refills_rows_and_equals_static_batches(tiny):
    """More prompts than rows, finishing at different steps (EOS after different counts): rows are
    refilled mid-decode, and greedy output equals the static sampler's and each prompt decoded alone."""
    model, _, prompts = tiny
    many = [*prompts, *[p[: max(2, len(p) // 2)] for p in prompts], prompts[0] + prompts[2]]
    alone = [
        Sampler(model, eos_ids=()).generate([p], SamplingParams(max_new_tokens=NEW))[0]
        for p in many
    ]
    # EOS = a token that shows up early in some rows and late or never in others.
    eos = alone[1].tokens[2]
    params = SamplingParams(max_new_tokens=NEW)
    static = Sampler(model, eos_ids=(eos,), batch_size=4, continuous=False).generate(many, params)
    rows = Sampler(model, eos_ids=(eos,), batch_size=2).generate(many, params)
    assert rows == static
    lengths = {len(c.tokens) for c in rows}
    assert len(lengths) > 1 and "eos" in {c.stop_reason for c in rows}  # rows did finish unevenly
    for c, a in zip(rows, alone, strict=True):
        cut = a.tokens.index(eos) + 1 if eos in a.tokens else NEW
        assert c.tokens == a.tokens[:cut]


def test_continuous_ring_grows_with_the_prompts_and_rows_keep_their_tokens(tiny, monkeypatch):
    """Prompts in four length buckets, longest first: they are admitted shortest first and the ring
    grows (rotated, new slots in front) while other rows are mid-decode; every row's tokens still equal
    its prompt decoded alone, and the static sampler's."""
    from tpu_train.sampling import sampler as sampler_module

    model, _, prompts = tiny
    longest_first = prompts[::-1]
    params = SamplingParams(max_new_tokens=NEW)
    alone = [Sampler(model, eos_ids=()).generate([p], params)[0].tokens for p in longest_first]
    # EOS = the 3rd token of the shortest prompt's answer: rows end at different steps, so the ring
    # grows while another row is mid-answer (its write index anywhere in the ring).
    eos = alone[-1][2]
    expected = [a[: a.index(eos) + 1] if eos in a else a for a in alone]
    sizes = []
    grow = sampler_module._grow_slots_jit

    def recording_grow(params, state, *, graphdef, size):
        sizes.append((state.cache.size, int(state.cache.index), int((~state.done).sum()), size))
        return grow(params, state, graphdef=graphdef, size=size)

    monkeypatch.setattr(sampler_module, "_grow_slots_jit", recording_grow)
    sampler = Sampler(model, eos_ids=(eos,), batch_size=2, prompt_bucket=4)
    rows = sampler.generate(longest_first, params)
    assert [c.tokens for c in rows] == expected
    # Padded lengths 4, 8, 12, 20: rings of 16, 20, 24 and 32 slots, grown three times.
    assert [(old, new) for old, _, _, new in sizes] == [(16, 20), (20, 24), (24, 32)]
    assert any(index > 0 and live > 0 for _, index, live, _ in sizes)  # a live row was rotated
    static = Sampler(model, eos_ids=(eos,), batch_size=2, prompt_bucket=4, continuous=False)
    assert rows == static.generate(longest_first, params)


def test_continuous_samples_do_not_depend_on_the_rows(tiny):
    """Each prompt draws with its own key: the same samples on 1, 2 or 8 rows."""
    model, _, prompts = tiny
    outs = [Sampler(model, eos_ids=(), batch_size=n).generate(prompts, NUCLEUS) for n in (1, 2, 8)]
    assert outs[0] == outs[1] == outs[2]
    assert len({c.tokens for c in outs[0]}) == len(prompts)


def test_stop_strings(tiny):
    model, _, prompts = tiny
    tok = HexTokenizer()
    sampler = Sampler(model, tokenizer=tok, stop_check_every=3)
    free = sampler.generate(prompts, SamplingParams(max_new_tokens=NEW))
    texts = [tok.decode(c.tokens) for c in free]
    # A stop string from the middle of row 1's text, spanning a token boundary; other rows may hit it too.
    stop = texts[1][9:12]
    got = sampler.generate(prompts, SamplingParams(max_new_tokens=NEW, stop=(stop, "zz")))
    hits = 0
    for c, f in zip(got, free, strict=True):
        n = next((n for n in range(1, len(f.tokens) + 1) if stop in tok.decode(f.tokens[:n])), None)
        if n is None:
            assert c == f
            continue
        hits += 1
        prefix = tok.decode(f.tokens[:n])
        assert (c.stop_reason, c.tokens, c.text) == (
            "stop_string",
            f.tokens[:n],
            prefix[: prefix.find(stop)],
        )
    assert hits >= 1 and got[1].stop_reason == "stop_string" and len(got[1].tokens) <= 6


@pytest.mark.parametrize("continuous", [True, False])
def test_progress_bar_counts_every_prompt(tiny, capsys, continuous):
    model, _, prompts = tiny
    quiet = Sampler(model, eos_ids=(), continuous=continuous).generate(
        prompts, SamplingParams(max_new_tokens=NEW)
    )
    assert capsys.readouterr().err == ""
    shown = Sampler(model, eos_ids=(), continuous=continuous).generate(
        prompts, SamplingParams(max_new_tokens=NEW), progress=True
    )
    err = capsys.readouterr().err
    assert shown == quiet
    assert "sampling" in err and f"{len(prompts)}/{len(prompts)}" in err and "tok/s" in err
