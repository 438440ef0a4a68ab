"""The shipped sentencepiece tokenizer and the trainer that made it."""

from __future__ import annotations

from pathlib import Path

import sentencepiece as spm
import seqio

from tpu_train.data.train_tokenizer import (
    BOS_ID,
    EOS_ID,
    PAD_ID,
    UNK_ID,
    texts_from_jsonl,
    train_tokenizer,
)

SHIPPED = Path(__file__).resolve().parents[1] / "data" / "tokenizer.model"
PROGRAM = 'def solution():\n    """Héllo ✓ 1,234?"""\n    apples = 1234\n\treturn apples / 2\n'


def test_shipped_tokenizer_ids_and_round_trip():
    sp = spm.SentencePieceProcessor(model_file=str(SHIPPED))
    assert sp.get_piece_size() == 4096
    assert (sp.pad_id(), sp.bos_id(), sp.eos_id(), sp.unk_id()) == (PAD_ID, BOS_ID, EOS_ID, UNK_ID)
    ids = sp.encode(PROGRAM)
    assert UNK_ID not in ids  # byte fallback covers every character
    assert sp.decode(ids) == PROGRAM  # indentation, tabs and newlines survive
    digits = [sp.id_to_piece(i) for i in sp.encode("1234")]
    assert digits[-4:] == ["1", "2", "3", "4"]


def test_seqio_vocabulary_pads_with_zero_not_eos():
    vocab = seqio.SentencePieceVocabulary(str(SHIPPED))
    assert vocab.pad_id == 0 and vocab.eos_id == 2 and vocab.vocab_size == 4096
    assert vocab.decode(vocab.encode("x = 3")) == "x = 3"


def test_trainer_on_jsonl(tmp_path):
    source = tmp_path / "t.jsonl"
    source.write_text(
        "".join(f'{{"question": "Tom has {i} cats.", "answer": "{i}*2=<<{i}*2={2 * i}>>"}}\n'
                for i in range(300))
    )  # fmt: skip
    texts = list(texts_from_jsonl([source]))
    assert len(texts) == 600
    path = train_tokenizer(texts, tmp_path / "tok.model", vocab_size=300)
    sp = spm.SentencePieceProcessor(model_file=str(path))
    assert sp.get_piece_size() == 300 and sp.eos_id() == EOS_ID
    assert sp.decode(sp.encode("Tom has 17 cats.")) == "Tom has 17 cats."
    assert not (tmp_path / "tok.vocab").exists()
