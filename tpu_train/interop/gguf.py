"""llama.cpp GGUF files (architecture `llama`) read as a Hugging Face checkpoint.

`GGUFCheckpoint` presents a GGUF file the way `hf_weights.load_params` expects a safetensors checkpoint:
Hugging Face tensor names, float32 values in the Hugging Face layout, a transformers `config.json` dict
and a `tokenizer.json`, all rebuilt from the file. Tensors are dequantized one at a time on `get`.

    GGUF tensor                 GGUF shape (ne)  HF name                                   HF shape
    token_embd.weight           [E, V]           model.embed_tokens.weight                 [V, E]
    blk.{i}.attn_q.weight       [E, H*D]         model.layers.{i}.self_attn.q_proj.weight  [H*D, E]  (*)
    blk.{i}.attn_k.weight       [E, K*D]         model.layers.{i}.self_attn.k_proj.weight  [K*D, E]  (*)
    blk.{i}.attn_v.weight       [E, K*D]         model.layers.{i}.self_attn.v_proj.weight  [K*D, E]
    blk.{i}.attn_output.weight  [H*D, E]         model.layers.{i}.self_attn.o_proj.weight  [E, H*D]
    blk.{i}.ffn_gate.weight     [E, F]           model.layers.{i}.mlp.gate_proj.weight     [F, E]
    blk.{i}.ffn_up.weight       [E, F]           model.layers.{i}.mlp.up_proj.weight       [F, E]
    blk.{i}.ffn_down.weight     [F, E]           model.layers.{i}.mlp.down_proj.weight     [E, F]
    blk.{i}.attn_norm.weight    [E]              model.layers.{i}.input_layernorm.weight   [E]
    blk.{i}.ffn_norm.weight     [E]              model.layers.{i}.post_attention_layernorm [E]
    output_norm.weight          [E]              model.norm.weight                         [E]
    output.weight               [E, V]           lm_head.weight  (absent: tied embeddings) [V, E]
    rope_freqs.weight           [D/2]            (none: must agree with the llama3 rope scaling)

GGUF lists dimensions fastest-first (ggml's `ne`), so the numpy array `GGUFReader` hands out is already
[rows, cols] = [out, in], which is the Hugging Face layout: no transpose is needed.

(*) llama.cpp's converter permutes the rows of Q and K within each head from the Hugging Face
rotate-half order (first half of the head dimension, then second half) to Meta's interleaved pairs,
because ggml's RoPE rotates adjacent pairs. Our model uses rotate-half (see `tpu_train/model/rope.py`),
so `get` undoes that permutation; for K the heads are the KV heads.

Metadata keys (prefix `llama.`) -> config.json: block_count -> num_hidden_layers, embedding_length ->
hidden_size, feed_forward_length -> intermediate_size, attention.head_count(_kv) ->
num_(attention|key_value)_heads, attention.key_length (or rope.dimension_count) -> head_dim,
rope.freq_base -> rope_theta, attention.layer_norm_rms_epsilon -> rms_norm_eps, context_length ->
max_position_embeddings, vocab_size (or the token count) -> vocab_size, tokenizer.ggml.*_token_id ->
bos/eos/pad_token_id. Llama-3 RoPE scaling is not stored as metadata by llama.cpp but as the
per-frequency divisors in `rope_freqs.weight`; those are fitted back to llama3 `rope_scaling`
parameters and the fit is checked to reproduce every divisor, else the file is refused.

The tokenizer (`tokenizer.ggml.*`) is rebuilt as a `tokenizers` byte-level BPE for `model == "gpt2"`:
tokens + merges -> models.BPE, `pre` -> the pre-tokenizer llama.cpp applies for that type ("smollm":
single digits then GPT-2's regex; "llama-bpe"/"llama3": Llama-3's regex; "gpt2"/"default": GPT-2's),
token_type CONTROL (3) -> special added tokens, USER_DEFINED (4) -> added tokens, add_bos_token /
add_eos_token -> the post-processor, bos/eos/padding/unknown_token_id and chat_template ->
tokenizer_config.json. SentencePiece vocabularies (`model == "llama"`) are refused.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from tpu_train import tokenizer_files
from tpu_train.interop.hf_config import UnsupportedCheckpointError, config_from_hf
from tpu_train.interop.hf_weights import full_index
from tpu_train.model.config import LlamaConfig, RopeScaling
from tpu_train.model.rope import inverse_frequencies

Q = gguf.GGMLQuantizationType
# The types llama.cpp's common Llama exports use whose dequantization tests/test_gguf.py checks (gguf-py
# can read more, but an untested block layout is refused rather than trusted).
SUPPORTED_TYPES = frozenset(
    {
        Q.F32,
        Q.F16,
        Q.BF16,
        Q.Q8_0,
        Q.Q4_0,
        Q.Q4_1,
        Q.Q5_0,
        Q.Q5_1,
        Q.Q4_K,
        Q.Q5_K,
        Q.Q6_K,
    }
)

_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_LAYER_NAMES = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
_LAYER_RE = re.compile(r"blk\.(\d+)\.(\w+)\.weight")
_ROPE_FREQS = "rope_freqs.weight"

# llama.cpp's token types (gguf.TokenType).
_CONTROL, _USER_DEFINED = 3, 4

# Split regexes of llama.cpp's pre-tokenizer types. GPT-2's own regex is the one `ByteLevel(use_regex)`
# applies, so those types need no Split.
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_LLAMA3_PRE = ("llama3", "llama-v3", "llama-bpe")
# "default" (or no pre type) is taken as plain GPT-2, as transformers' GGUF loader does. llama.cpp's own
# "default" adds punctuation and 3-digit splits around the GPT-2 regex; converters only write it for
# vocabularies they could not identify, so files that rely on the difference are rare.
_GPT2_PRE = ("gpt2", "default", "")
_SMOLLM_PRE = ("smollm",)


def _hf_tensor_name(gguf_name: str) -> str | None:
    """The Hugging Face name of a GGUF tensor, or None if it is not one of a Llama's parameters."""
    if gguf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[gguf_name]
    m = _LAYER_RE.fullmatch(gguf_name)
    if m and m.group(2) in _LAYER_NAMES:
        return f"model.layers.{m.group(1)}.{_LAYER_NAMES[m.group(2)]}.weight"
    return None


def _unpermute_rows(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Inverts llama.cpp's Q/K permutation: per head, rows were reordered from [half, pair] to
    [pair, half] (interleaved); swapping the two axes back restores rotate-half order."""
    rows = w.shape[0]
    half = rows // n_heads // 2
    return w.reshape(n_heads, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


class GGUFCheckpoint:
    """A llama.cpp GGUF file of a Llama model, as Hugging Face tensors, config and tokenizer."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: no such GGUF file")
        try:
            self._reader = gguf.GGUFReader(self.path, "r")
        except Exception as e:  # gguf-py raises plain ValueErrors (bad magic, version, truncation)
            raise UnsupportedCheckpointError(f"{self.path}: not a readable GGUF file ({e})") from e
        arch = self._meta("general.architecture")
        if arch != "llama":
            raise UnsupportedCheckpointError(
                f"{self.path}: general.architecture={arch!r}; only 'llama' is supported"
            )
        if int(self._meta("llama.expert_count", 0) or 0) > 0:
            # Mixtral-style files also say architecture 'llama'.
            raise UnsupportedCheckpointError(
                f"{self.path}: llama.expert_count={self._meta('llama.expert_count')}; "
                "mixture-of-experts models are not supported"
            )
        self._tensors = {t.name: t for t in self._reader.tensors}
        self._by_hf: dict[str, str] = {}
        for name, t in self._tensors.items():
            if t.tensor_type not in SUPPORTED_TYPES:
                raise UnsupportedCheckpointError(
                    f"{self.path}: tensor {name!r} has type {t.tensor_type.name}; supported: "
                    + ", ".join(sorted(q.name for q in SUPPORTED_TYPES))
                )
            if name == _ROPE_FREQS:
                continue  # checked against the config in hf_config()
            hf = _hf_tensor_name(name)
            if hf is None:
                raise UnsupportedCheckpointError(
                    f"{self.path}: tensor {name!r} is not part of a Llama this reader knows"
                )
            self._by_hf[hf] = name
        # Built on first use, so that tensors and the tokenizer stay readable from a file whose
        # config this model cannot express (the error then comes from `hf_config`/`config`).
        self._hf_config: dict | None = None
        self._rows_cache: tuple[Any, np.ndarray | None] = (None, None)  # the last rows dequantized

    # -- metadata ----------------------------------------------------------------------------------

    def _meta(self, key: str, default: Any = None) -> Any:
        field = self._reader.fields.get(key)
        if field is None:
            return default
        if field.types == [gguf.GGUFValueType.FLOAT32]:
            # float32 on disk: 1e-5 reads back as 9.99999974e-06. The shortest decimal that is the same
            # float32 is what the converter was given, and what a transformers config would say.
            return float(str(np.float32(field.contents())))
        return field.contents()

    def _require(self, key: str) -> Any:
        value = self._meta(key)
        if value is None:
            raise UnsupportedCheckpointError(f"{self.path}: metadata {key!r} is missing")
        return value

    def _uniform(self, key: str, default: Any = None) -> Any:
        """A per-model value; llama.cpp allows per-layer arrays, which a uniform Llama cannot hold."""
        value = self._meta(key, default) if default is not None else self._require(key)
        if isinstance(value, list):
            if len(set(value)) != 1:
                raise UnsupportedCheckpointError(
                    f"{self.path}: {key} varies per layer ({value[:4]}...); not supported"
                )
            value = value[0]
        return value

    def _build_hf_config(self) -> dict:
        hidden = int(self._require("llama.embedding_length"))
        heads = int(self._uniform("llama.attention.head_count"))
        kv_heads = int(self._uniform("llama.attention.head_count_kv", heads))
        rope_dim = self._meta("llama.rope.dimension_count")
        head_dim = int(self._meta("llama.attention.key_length") or rope_dim or hidden // heads)
        value_dim = self._meta("llama.attention.value_length")
        if value_dim is not None and int(value_dim) != head_dim:
            raise UnsupportedCheckpointError(
                f"{self.path}: llama.attention.value_length={value_dim} differs from the key "
                f"length {head_dim}; not supported"
            )
        if rope_dim is not None and int(rope_dim) != head_dim:
            # The Q/K permutation and our RoPE both cover the whole head.
            raise UnsupportedCheckpointError(
                f"{self.path}: llama.rope.dimension_count={rope_dim} != head_dim {head_dim}; "
                "partial rotary embeddings are not supported"
            )
        tokens = self._reader.fields.get("tokenizer.ggml.tokens")
        vocab = self._meta("llama.vocab_size")
        if vocab is None:
            if tokens is None:
                raise UnsupportedCheckpointError(
                    f"{self.path}: neither llama.vocab_size nor tokenizer.ggml.tokens is present"
                )
            vocab = len(tokens.data)
        theta = float(self._meta("llama.rope.freq_base", 10_000.0))
        cfg = {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "vocab_size": int(vocab),
            "hidden_size": hidden,
            "intermediate_size": int(self._uniform("llama.feed_forward_length")),
            "num_hidden_layers": int(self._require("llama.block_count")),
            "num_attention_heads": heads,
            "num_key_value_heads": kv_heads,
            "head_dim": head_dim,
            "hidden_act": "silu",
            "max_position_embeddings": int(self._meta("llama.context_length", 4096)),
            "rms_norm_eps": float(self._require("llama.attention.layer_norm_rms_epsilon")),
            "rope_theta": theta,
            "rope_scaling": self._rope_scaling(head_dim, theta),
            # llama.cpp writes `output.weight` only when the model does not tie it to the embedding.
            "tie_word_embeddings": "output.weight" not in self._tensors,
            "attention_bias": False,
            "mlp_bias": False,
            "torch_dtype": "float32",  # what `get` returns, whatever the file's quantization
        }
        for ours, key in (("bos", "bos"), ("eos", "eos"), ("pad", "padding")):
            value = self._meta(f"tokenizer.ggml.{key}_token_id")
            if value is not None:
                cfg[f"{ours}_token_id"] = int(value)
        return cfg

    def _rope_scaling(self, head_dim: int, theta: float) -> dict | None:
        kind = self._meta("llama.rope.scaling.type")
        factor = self._meta("llama.rope.scaling.factor", self._meta("llama.rope.scale_linear"))
        if kind not in (None, "none") or (kind is None and factor not in (None, 1.0)):
            raise UnsupportedCheckpointError(
                f"{self.path}: llama.rope.scaling.type={kind!r} (factor {factor}); only llama3 "
                "scaling (stored as rope_freqs.weight) is supported"
            )
        if _ROPE_FREQS not in self._tensors:
            return None
        divisors = self._dequantize(_ROPE_FREQS).reshape(-1).astype(np.float64)
        if divisors.shape != (head_dim // 2,):
            raise UnsupportedCheckpointError(
                f"{self.path}: {_ROPE_FREQS} has {divisors.size} entries, expected {head_dim // 2}"
            )
        if np.allclose(divisors, 1.0, rtol=0, atol=1e-6):
            return None
        original = self._meta("llama.rope.scaling.original_context_length")
        scaling = _fit_llama3(divisors, head_dim, theta, int(original) if original else None)
        if scaling is None:
            raise UnsupportedCheckpointError(
                f"{self.path}: {_ROPE_FREQS} is not a llama3 rope scaling this model can express "
                f"(divisors {np.round(divisors[:: max(1, divisors.size // 6)], 4).tolist()}...)"
            )
        return {
            "rope_type": "llama3",
            "factor": scaling.factor,
            "low_freq_factor": scaling.low_freq_factor,
            "high_freq_factor": scaling.high_freq_factor,
            "original_max_position_embeddings": scaling.original_max_position_embeddings,
        }

    # -- public API ----------------------------------------------------------------------------------

    def hf_config(self) -> dict:
        """A transformers `LlamaForCausalLM` config.json dict built from the file's metadata."""
        if self._hf_config is None:
            self._hf_config = self._build_hf_config()
        return dict(self._hf_config)

    def config(self, **overrides: Any) -> LlamaConfig:
        """The model configuration; `overrides` set tpu_train-only fields (dtypes, scan...)."""
        return config_from_hf(self.hf_config(), source=str(self.path), **overrides)

    def names(self) -> set[str]:
        """The Hugging Face tensor names this file holds (`rope_freqs` is config, not a tensor)."""
        return set(self._by_hf)

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """{Hugging Face name: shape} of every tensor, from the file's tensor infos."""
        return {hf: self._shape(name) for hf, name in self._by_hf.items()}

    def get(self, hf_name: str) -> np.ndarray:
        """One tensor, dequantized to float32, in the Hugging Face layout and shape."""
        return self.read(hf_name)

    def read(self, hf_name: str, index: tuple[slice, ...] = ()) -> np.ndarray:
        """Part `index` of a tensor, dequantized to float32, in the Hugging Face layout.

        Quantized blocks run along a row, so only the rows asked for are dequantized; a part that is a
        column range (a tensor split by columns) costs the whole row range, which is kept for the next
        part of the same rows. Q and K rows are un-permuted per head, on whole heads."""
        try:
            name = self._by_hf[hf_name]
        except KeyError:
            raise KeyError(f"{self.path}: no tensor {hf_name!r}") from None
        shape = self._shape(name)
        index = full_index(index, shape)
        rows, heads = index[0], None
        if hf_name.endswith(("self_attn.q_proj.weight", "self_attn.k_proj.weight")):
            # Read the head counts directly: the rest of the config need not be valid for this.
            heads = int(self._uniform("llama.attention.head_count"))
            if hf_name.endswith("k_proj.weight"):
                heads = int(self._uniform("llama.attention.head_count_kv", heads))
        if heads is None:
            lo, hi = rows.start, rows.stop
        else:  # whole heads, so that the per-head permutation can be undone
            per_head = shape[0] // heads
            lo, hi = rows.start // per_head * per_head, -(-rows.stop // per_head) * per_head
        key = (name, lo, hi)
        if self._rows_cache[0] != key:
            w = self._dequantize(name, lo, hi)
            if heads is not None:
                w = _unpermute_rows(w, (hi - lo) // per_head)
            self._rows_cache = (key, w)
        w = self._rows_cache[1]
        return w[(slice(rows.start - lo, rows.stop - lo), *index[1:])]

    def _shape(self, name: str) -> tuple[int, ...]:
        return tuple(int(n) for n in reversed(self._tensors[name].shape.tolist()))  # ne -> numpy

    def _dequantize(self, name: str, lo: int = 0, hi: int | None = None) -> np.ndarray:
        """Rows lo:hi (default: all) of a tensor, dequantized to float32."""
        t = self._tensors[name]
        shape = self._shape(name)
        hi = shape[0] if hi is None else hi
        # np.array copies out of the read-only memmap, so callers get an ordinary writable array.
        w = np.array(gguf.quants.dequantize(t.data[lo:hi], t.tensor_type), dtype=np.float32)
        want = (hi - lo, *shape[1:])
        if w.shape != want:
            raise UnsupportedCheckpointError(
                f"{self.path}: tensor {name!r} rows {lo}:{hi} dequantized to {list(w.shape)}, "
                f"expected {list(want)}"
            )
        return w

    def write_tokenizer(self, out_dir: str | Path) -> list[str]:
        """Writes tokenizer.json, tokenizer_config.json and special_tokens_map.json to `out_dir`
        (a local directory) and returns their names."""
        tokenizer, config, special = self._tokenizer()
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        tokenizer.save(str(out / tokenizer_files.TOKENIZER_JSON))
        (out / tokenizer_files.TOKENIZER_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
        (out / tokenizer_files.SPECIAL_TOKENS_MAP).write_text(json.dumps(special, indent=2) + "\n")
        return list(tokenizer_files.HF_FILES)

    def _tokenizer(self) -> tuple[Any, dict, dict]:
        from tokenizers import (
            AddedToken,
            Regex,
            Tokenizer,
            decoders,
            models,
            pre_tokenizers,
            processors,
        )

        model = self._meta("tokenizer.ggml.model")
        if model != "gpt2":
            raise UnsupportedCheckpointError(
                f"{self.path}: tokenizer.ggml.model={model!r}; only 'gpt2' (byte-level BPE) "
                "tokenizers can be rebuilt"
            )
        pre = self._meta("tokenizer.ggml.pre", "default") or ""
        tokens: list[str] = self._require("tokenizer.ggml.tokens")
        types: list[int] = self._meta("tokenizer.ggml.token_type") or [1] * len(tokens)
        merges = [tuple(m.split(" ", 1)) for m in self._meta("tokenizer.ggml.merges") or []]
        vocab = {tok: i for i, tok in reversed(list(enumerate(tokens)))}  # first id wins

        if pre in _LLAMA3_PRE:
            # llama.cpp keeps a pre-token whole when it is itself in the vocabulary (ignore_merges).
            bpe = models.BPE(vocab, merges, ignore_merges=True)
            pre_tokenizer = pre_tokenizers.Sequence(
                [
                    pre_tokenizers.Split(Regex(_LLAMA3_SPLIT), behavior="isolated"),
                    pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
                ]
            )
        elif pre in _SMOLLM_PRE:
            bpe = models.BPE(vocab, merges)
            # llama.cpp: "\p{N}" first, then the GPT-2 regex; the same as SmolLM's own tokenizer.json.
            pre_tokenizer = pre_tokenizers.Sequence(
                [
                    pre_tokenizers.Digits(individual_digits=True),
                    pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
                ]
            )
        elif pre in _GPT2_PRE:
            bpe = models.BPE(vocab, merges)
            pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        else:
            raise UnsupportedCheckpointError(
                f"{self.path}: tokenizer.ggml.pre={pre!r} is not supported (known: "
                + ", ".join(_LLAMA3_PRE + _SMOLLM_PRE + _GPT2_PRE[:2])
                + ")"
            )
        tok = Tokenizer(bpe)
        tok.pre_tokenizer = pre_tokenizer
        tok.decoder = decoders.ByteLevel()
        # CONTROL tokens are special (skipped when decoding with skip_special_tokens); USER_DEFINED
        # ones are matched whole in the text like llama.cpp does, but are ordinary text.
        tok.add_special_tokens(
            [
                AddedToken(t, special=True, normalized=False)
                for t, k in zip(tokens, types, strict=True)
                if k == _CONTROL
            ]
        )
        tok.add_tokens(
            [
                AddedToken(t, special=False, normalized=False)
                for t, k in zip(tokens, types, strict=True)
                if k == _USER_DEFINED
            ]
        )

        def token(key: str) -> str | None:
            i = self._meta(f"tokenizer.ggml.{key}_token_id")
            return tokens[int(i)] if i is not None and 0 <= int(i) < len(tokens) else None

        bos, eos, pad, unk = token("bos"), token("eos"), token("padding"), token("unknown")
        # llama.cpp turns BOS on by default for the Llama-3 pre-tokenizers, off for other BPE vocabs.
        add_bos = bool(self._meta("tokenizer.ggml.add_bos_token", pre in _LLAMA3_PRE))
        add_eos = bool(self._meta("tokenizer.ggml.add_eos_token", False))
        for flag, name, value in ((add_bos, "bos", bos), (add_eos, "eos", eos)):
            if flag and value is None:
                raise UnsupportedCheckpointError(
                    f"{self.path}: tokenizer.ggml.add_{name}_token is true but {name}_token_id is absent"
                )
        steps = [processors.ByteLevel(trim_offsets=False)]
        if add_bos or add_eos:
            pre_ids = [f"{bos}:0"] if add_bos else []
            post_ids = [f"{eos}:0"] if add_eos else []
            single = [*pre_ids, "$A:0", *post_ids]
            pair = [*single, *(s.replace(":0", ":1") for s in pre_ids), "$B:1"]
            pair += [s.replace(":0", ":1") for s in post_ids]
            steps.append(
                processors.TemplateProcessing(
                    single=single,
                    pair=pair,
                    special_tokens=[(t, vocab[t]) for t in {bos, eos} if t is not None],
                )
            )
        tok.post_processor = processors.Sequence(steps)

        special = {k: v for k, v in dict(bos_token=bos, eos_token=eos, pad_token=pad).items() if v}
        if unk is not None:
            special["unk_token"] = unk
        config = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            **dict(bos_token=bos, eos_token=eos, pad_token=pad, unk_token=unk),
            "add_bos_token": add_bos,
            "add_eos_token": add_eos,
            "clean_up_tokenization_spaces": False,
            "model_max_length": int(self._meta("llama.context_length", 4096)),
        }
        template = self._meta("tokenizer.chat_template")
        if template is not None:
            config["chat_template"] = template
        return tok, config, special


def _fit_llama3(
    divisors: np.ndarray, head_dim: int, theta: float, original: int | None
) -> RopeScaling | None:
    """Llama-3 scaling parameters that reproduce llama.cpp's per-frequency divisors, or None.

    A divisor is 1 for wavelengths below S = original / high, `factor` above L = original / low, and
    1 / ((1 - s) / factor + s) in between, with s = (1/wavelength - 1/L) / (1/S - 1/L). The divisors fix
    only L and S, so `original` comes from the file when stated, else is L (making low_freq_factor 1,
    Llama 3's choice); L and S are fitted from the blended band. With fewer than two blended
    frequencies Llama 3's own low 1 / high 4 are tried. Every candidate must reproduce all divisors.
    """
    factor = float(f"{divisors.max():.6g}")
    inv = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
    wavelength = 2 * math.pi / inv
    candidates = [RopeScaling(factor, 1.0, 4.0, original or 8192)]
    band = (divisors > 1 + 1e-4) & (divisors < factor * (1 - 1e-4))
    if band.sum() >= 2:
        blend = (1 / divisors[band] - 1 / factor) / (1 - 1 / factor)
        slope, intercept = np.polyfit(1 / wavelength[band], blend, 1)
        if slope > 0 and intercept < 0:
            long_wl, short_wl = -slope / intercept, slope / (1 - intercept)
            orig = original or round(long_wl)
            # Snap away the float32 noise of the stored divisors; the check below still applies.
            low, high = (float(f"{orig / wl:.6g}") for wl in (long_wl, short_wl))
            candidates.insert(0, RopeScaling(factor, low, high, orig))
    for c in candidates:
        if not 0 < c.low_freq_factor < c.high_freq_factor:
            continue
        expected = inv / inverse_frequencies(head_dim, theta, c).astype(np.float64)
        if np.allclose(expected, divisors, rtol=1e-4, atol=0):
            return c
    return None
