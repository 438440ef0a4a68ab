"""Hugging Face tokenizer.json support: HfTokenizer (sampler) and HfTokenizerVocabulary (SeqIO).

Tokenizers are trained here on a small text with the `tokenizers` library and saved through
transformers, so every comparison is against `transformers.AutoTokenizer` on the same files:
a Llama-3-style one (byte-level BPE, Llama 3's split regex, TemplateProcessing adding
`<|begin_of_text|>`) and a SmolLM2-style one (ByteLevel, no BOS added, pad = eos, ChatML specials).
"""

import copy
import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest

tokenizers = pytest.importorskip("tokenizers")

REPO = Path(__file__).resolve().parents[1]
SP_MODEL = REPO / "data" / "tokenizer.model"

# Llama 3's pre-tokenizer split pattern (from its published tokenizer.json).
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
CORPUS = [
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many in May.",
    "def solution():\n    total = 48 + 48 // 2\n    return total\n",
    "The answer is 72. Let's write a program.",
    "### Instruction:\nBelow is an instruction that describes a task.\n\n### Response:\n",
    "Über café naïve — 日本語のテキスト, emoji 🙂 and tabs\tcount too.",
    "    leading spaces, trailing spaces   \n\n\nnewlines\r\nand 1234567890 digits",
] * 4
SAMPLES = [
    "Hello world",
    " leading space",
    "  two leading spaces and trailing  ",
    "digits 1234567 and 3.14159, -42",
    "unicode: Ünïcödé 日本語 🙂 café",
    "line one\nline two\n\n\tindented\r\n",
    "def f(x):\n    return [i ** 2 for i in range(x)]  # squares\n",
    "",
    "!!! ??? ... ''' \"\"\"",
]


def _train_bpe(specials_first: list[str], vocab_size: int = 400):
    from tokenizers import Regex, decoders, models, pre_tokenizers, trainers

    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials_first,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    return tok


def _save(tok, out: Path, **special) -> Path:
    from transformers import PreTrainedTokenizerFast

    PreTrainedTokenizerFast(tokenizer_object=tok, **special).save_pretrained(str(out))
    return out


@pytest.fixture(scope="module")
def llama3_dir(tmp_path_factory) -> Path:
    """Specials added after the base vocabulary (as in Llama 3); BOS added by the post-processor."""
    from tokenizers import processors

    tok = _train_bpe([])
    bot, eot = "<|begin_of_text|>", "<|end_of_text|>"
    tok.add_special_tokens([bot, eot])
    bos = tok.token_to_id(bot)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bot} $A", pair=f"{bot} $A {bot} $B", special_tokens=[(bot, bos)]
    )
    return _save(tok, tmp_path_factory.mktemp("llama3"), bos_token=bot, eos_token=eot)


@pytest.fixture(scope="module")
def smollm2_dir(tmp_path_factory) -> Path:
    """SmolLM2-Instruct's layout: ids 0/1/2 = <|endoftext|>/<|im_start|>/<|im_end|>, pad = eos = 2,
    a bos_token named but not added (ByteLevel post-processor)."""
    from tokenizers import pre_tokenizers, processors

    tok = _train_bpe(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return _save(
        tok,
        tmp_path_factory.mktemp("smollm2"),
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
        unk_token="<|endoftext|>",
    )


def _auto(directory: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(directory))


def test_llama3_style_matches_autotokenizer(llama3_dir):
    from tpu_train.sampling.tokenizer import HfTokenizer

    auto, tok = _auto(llama3_dir), HfTokenizer(llama3_dir)
    bos, eos = auto.convert_tokens_to_ids(["<|begin_of_text|>", "<|end_of_text|>"])
    assert tok.prefix_ids == (bos,) and tok.bos_id == bos and tok.eos_ids == (eos,)
    assert tok.vocab_size == len(auto) == eos + 1
    for text in SAMPLES:
        ids = tok.encode(text)
        assert ids == auto.encode(text), text
        assert tok.encode(text, add_bos=False) == auto.encode(text, add_special_tokens=False)
        with_eos = [*ids, eos]
        assert tok.decode(with_eos) == auto.decode(with_eos, skip_special_tokens=True) == text


def test_smollm2_style_no_prefix_and_chatml_specials(smollm2_dir):
    from tpu_train.data.vocabulary import HfTokenizerVocabulary, prompt_prefix_ids
    from tpu_train.sampling.tokenizer import HfTokenizer

    auto, tok = _auto(smollm2_dir), HfTokenizer(smollm2_dir)
    vocab = HfTokenizerVocabulary(smollm2_dir)
    assert tok.prefix_ids == () and tok.bos_id is None and prompt_prefix_ids(vocab) == ()
    assert tok.eos_ids == (2,) and vocab.eos_id == 2 and tok.pad_token_id == 2
    assert vocab.unk_id == 0 and vocab.pad_id == 0  # SeqIO still pads with 0, not with pad = eos
    prompt = "<|im_start|>user\nHow many apples?<|im_end|>\n<|im_start|>assistant\n"
    ids = tok.encode(prompt)
    assert ids == auto.encode(prompt) == list(vocab.encode(prompt))
    assert ids[0] == 1 and ids.count(1) == 2 and ids.count(2) == 1
    assert tok.decode(ids) == auto.decode(ids, skip_special_tokens=True)
    assert "<|im_start|>" not in tok.decode(ids) and "How many apples?" in tok.decode(ids)
    for text in SAMPLES:
        assert tok.encode(text) == auto.encode(text), text


def test_added_token_dicts_and_add_bos_token_override(smollm2_dir, llama3_dir, tmp_path):
    """Older tokenizer_config.json files write tokens as AddedToken dicts; an explicit add_bos_token
    puts BOS first (SmolLM2 adds none) or takes it off (Llama 3 adds one)."""
    from tpu_train.data.vocabulary import HfTokenizerVocabulary, prompt_prefix_ids
    from tpu_train.sampling.tokenizer import HfTokenizer

    def with_config(source: Path, name: str, config: dict) -> Path:
        out = tmp_path / name
        out.mkdir()
        shutil.copy(source / "tokenizer.json", out / "tokenizer.json")
        (out / "tokenizer_config.json").write_text(json.dumps(config))
        return out

    eos_dict = {"__type": "AddedToken", "content": "<|im_end|>", "special": True}
    smol = with_config(
        smollm2_dir,
        "smol",
        {"eos_token": eos_dict, "bos_token": "<|im_start|>", "add_bos_token": True},
    )
    tok = HfTokenizer(smol)
    assert tok.eos_ids == (2,) and tok.prefix_ids == (1,) and tok.encode("Hi")[0] == 1
    assert prompt_prefix_ids(HfTokenizerVocabulary(smol)) == (1,)

    bot = {"__type": "AddedToken", "content": "<|begin_of_text|>"}
    llama = with_config(llama3_dir, "llama", {"bos_token": bot, "add_bos_token": False})
    plain = HfTokenizer(llama)
    assert plain.prefix_ids == () and plain.bos_id is None and plain.eos_ids == ()
    assert plain.encode("Hi") == HfTokenizer(llama3_dir).encode("Hi", add_bos=False)

    bad = with_config(smollm2_dir, "bad", {"eos_token": "<|not_a_token|>"})
    with pytest.raises(ValueError, match="not_a_token"):
        HfTokenizer(bad)


def test_sampler_tokenizer_imports_no_tensorflow():
    """The sampler loads HF tokenizers without pulling TensorFlow / SeqIO into its process."""
    import subprocess
    import sys

    code = (
        "import sys, tpu_train.sampling.tokenizer as t; "
        "print(sorted(m for m in ('tensorflow', 'seqio') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


def test_vocabulary_tf_encode_decode_in_tf_data(llama3_dir):
    import tensorflow as tf

    from tpu_train.data.vocabulary import HfTokenizerVocabulary, prompt_prefix_ids

    vocab = HfTokenizerVocabulary(llama3_dir)
    auto = _auto(llama3_dir)
    assert prompt_prefix_ids(vocab) == (auto.bos_token_id,) and vocab.eos_id == auto.eos_token_id
    assert vocab.vocab_size == len(auto)
    ds = tf.data.Dataset.from_tensor_slices(SAMPLES).map(vocab.encode_tf)
    assert ds.element_spec == tf.TensorSpec([None], tf.int32)
    encoded = [x.tolist() for x in ds.as_numpy_iterator()]
    assert encoded == [list(vocab.encode(t)) for t in SAMPLES]
    assert encoded == [auto.encode(t, add_special_tokens=False) for t in SAMPLES]
    # Round trip inside the graph, and decode_tf stops at EOS: what follows is not id-0 text ("!").
    eos = vocab.eos_id
    roundtrip = ds.map(lambda ids: vocab.decode_tf(tf.concat([ids, [eos, 0, 0]], 0)))
    assert [t.decode() for t in roundtrip.as_numpy_iterator()] == SAMPLES
    assert vocab.decode([*encoded[0], eos, 0, 0]) == SAMPLES[0]
    # Batched forms: 1-D strings -> ragged ids; 2-D ids -> 1-D strings.
    ragged = vocab.encode_tf(tf.constant(SAMPLES[:3]))
    assert ragged.to_list() == encoded[:3]
    dense = ragged.to_tensor(default_value=eos)
    assert [t.decode() for t in vocab.decode_tf(dense).numpy()] == SAMPLES[:3]
    # Rank 2 strings -> [2, 2, None] ids, and back.
    grid = vocab.encode_tf(tf.constant([SAMPLES[:2], SAMPLES[2:4]]))
    assert grid.shape[:2] == [2, 2] and grid.to_list() == [encoded[:2], encoded[2:4]]
    texts = vocab.decode_tf(grid.to_tensor(default_value=eos)).numpy()
    assert [[t.decode() for t in row] for row in texts] == [SAMPLES[:2], SAMPLES[2:4]]


def test_vocabulary_survives_copy_pickle_and_hashing(llama3_dir, smollm2_dir, tmp_path):
    import seqio

    from tpu_train.data.vocabulary import HfTokenizerVocabulary

    vocab = HfTokenizerVocabulary(llama3_dir)
    for other in (copy.deepcopy(vocab), pickle.loads(pickle.dumps(vocab)), copy.copy(vocab)):
        assert other == vocab and hash(other) == hash(vocab)
        assert list(other.encode(SAMPLES[4])) == list(vocab.encode(SAMPLES[4]))
    moved = tmp_path / "moved"
    shutil.copytree(llama3_dir, moved)
    assert HfTokenizerVocabulary(moved) == vocab  # equality by content, not path
    assert HfTokenizerVocabulary(moved / "tokenizer.json") == vocab
    assert HfTokenizerVocabulary(smollm2_dir) != vocab
    assert vocab != seqio.ByteVocabulary()
    assert hash(seqio.Feature(vocab)) == hash(seqio.Feature(copy.deepcopy(vocab)))


def test_pad_equal_to_eos_keeps_eos_a_loss_target(smollm2_dir):
    """SmolLM2: pad = eos = 2. SeqIO pads with 0, so the EOS after the response has loss weight 1,
    packed or not."""
    import seqio
    import tensorflow as tf

    from tpu_train.data.vocabulary import HfTokenizerVocabulary

    vocab = HfTokenizerVocabulary(smollm2_dir)
    prompt, response = "<|im_start|>user\nHow many?<|im_end|>\n<|im_start|>assistant\n", "72"
    name = "test_hf_tokenizer_pad_eos"
    seqio.TaskRegistry.remove(name)
    task = seqio.TaskRegistry.add(
        name,
        source=seqio.FunctionDataSource(
            lambda split, shuffle_files: tf.data.Dataset.from_tensors(
                {"inputs": prompt, "targets": response}
            ),
            splits=("train",),
        ),
        preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim],
        output_features={
            "inputs": seqio.Feature(vocab, add_eos=False),
            "targets": seqio.Feature(vocab, add_eos=True),
        },
    )
    lengths = {"inputs": 32, "targets": 8}
    n_in = len(vocab.encode(prompt))
    expected = [*vocab.encode(prompt), *vocab.encode(response), 2]
    eos_at = len(expected) - 1
    for pack in (False, True):
        ds = task.get_dataset(lengths, split="train", shuffle=False)
        converter = seqio.PrefixLMFeatureConverter(pack=pack, loss_on_targets_only=True)
        row = next(converter(ds, lengths).as_numpy_iterator())
        targets, weights = row["decoder_target_tokens"], row["decoder_loss_weights"]
        assert targets[: len(expected)].tolist() == expected, pack
        assert not targets[len(expected) :].any()  # padding is id 0, never the pad token 2
        assert weights[eos_at] == 1 and targets[eos_at] == vocab.eos_id
        assert np.flatnonzero(weights).tolist() == list(range(n_in, len(expected)))
    seqio.TaskRegistry.remove(name)


def test_eos_of_id_zero_is_refused(smollm2_dir, tmp_path):
    """SmolLM2 *base* ends texts with <|endoftext|> = 0, SeqIO's padding id: refused for training,
    still fine for sampling."""
    from tpu_train.data.vocabulary import HfTokenizerVocabulary
    from tpu_train.sampling.tokenizer import HfTokenizer

    shutil.copy(smollm2_dir / "tokenizer.json", tmp_path / "tokenizer.json")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|endoftext|>"}))
    assert HfTokenizer(tmp_path).eos_ids == (0,)
    with pytest.raises(ValueError, match="id 0"):
        HfTokenizerVocabulary(tmp_path)


def test_load_vocabulary_and_load_tokenizer_pick_the_class(llama3_dir, tmp_path):
    import seqio

    from tpu_train.data.vocabulary import HfTokenizerVocabulary, load_vocabulary
    from tpu_train.sampling.tokenizer import HfTokenizer, SentencePieceTokenizer, load_tokenizer

    both, sp_only, empty = tmp_path / "both", tmp_path / "sp", tmp_path / "empty"
    shutil.copytree(llama3_dir, both)
    shutil.copy(SP_MODEL, both / "tokenizer.model")
    sp_only.mkdir()
    shutil.copy(SP_MODEL, sp_only / "tokenizer.model")
    empty.mkdir()
    (empty / "notes.txt").write_text("not a tokenizer")

    for path, cls in [
        (both, HfTokenizerVocabulary),
        (str(both / "tokenizer.json"), HfTokenizerVocabulary),
        (sp_only, seqio.SentencePieceVocabulary),
        (SP_MODEL, seqio.SentencePieceVocabulary),
    ]:
        vocab = load_vocabulary(path)
        assert type(vocab) is cls, path
        assert vocab.vocab_size > 0
    for bad in (empty, tmp_path / "missing", empty / "notes.txt"):
        with pytest.raises(FileNotFoundError, match=r"tokenizer\.json.*tokenizer\.model") as err:
            load_vocabulary(bad)
        assert str(bad) in str(err.value)

    assert type(load_tokenizer(both)) is HfTokenizer
    assert type(load_tokenizer(sp_only)) is SentencePieceTokenizer
    assert load_tokenizer(empty) is None


def test_sentencepiece_prefix_is_its_bos():
    import sentencepiece as spm
    import seqio

    from tpu_train.data.vocabulary import load_vocabulary, prompt_prefix_ids

    bos = spm.SentencePieceProcessor(model_file=str(SP_MODEL)).bos_id()
    assert bos >= 0
    assert prompt_prefix_ids(load_vocabulary(SP_MODEL)) == (bos,)
    assert prompt_prefix_ids(seqio.ByteVocabulary()) == ()
