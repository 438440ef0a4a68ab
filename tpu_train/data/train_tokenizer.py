"""Train the small sentencepiece tokenizer shipped as `data/tokenizer.model`.

Usage:
    python -m tpu_train.data.train_tokenizer --output=data/tokenizer.model --vocab_size=4096 \\
        data/gsm8k/gsm8k_train.jsonl data/programs/gsm8k_train_programs.jsonl.gz

A Llama-style BPE model: byte fallback (no unknown characters), digits split one per token,
whitespace kept verbatim (program indentation survives a round trip), and the special ids
pad=0, bos=1, eos=2, unk=3. BOS/EOS ids are those of Llama-2 / CodeLlama; pad is a real `<pad>` piece
at SeqIO's padding id 0, so padding is never EOS. Real runs use the model's own `tokenizer.model`.

Example:
    >>> train_tokenizer(["Tom has 12 cats.\\n    x = 3"] * 50, "/tmp/tok.model", 300)  # doctest: +SKIP
    >>> import sentencepiece as spm
    >>> spm.SentencePieceProcessor(model_file="/tmp/tok.model").encode("12")  # doctest: +SKIP
    [..., <id of "1">, <id of "2">]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import sentencepiece as spm

from tpu_train import jsonl
from tpu_train.data.records import RecordError

PAD_ID, BOS_ID, EOS_ID, UNK_ID = 0, 1, 2, 3
_TEXT_FIELDS = (
    "question",
    "answer",
    "instruction",
    "output",
    "original_problem",
    "generated_program",
)


def texts_from_jsonl(paths: Iterable[str | Path]) -> Iterator[str]:
    """The text fields of GSM8K, MathInstruct-style and InfinityMATH-format JSONL files."""
    for path in paths:
        for _, row in jsonl.objects(path, RecordError):
            for name in _TEXT_FIELDS:
                if isinstance(row.get(name), str):
                    yield row[name]


def train_tokenizer(texts: Iterable[str], output: str | Path, vocab_size: int) -> Path:
    """Train a BPE sentencepiece model on `texts` and write `output` (a .model file)."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    lines = (line for text in texts for line in text.split("\n") if line.strip())
    spm.SentencePieceTrainer.train(
        sentence_iterator=lines,
        model_prefix=str(output.with_suffix("")),
        model_type="bpe",
        vocab_size=vocab_size,
        character_coverage=1.0,
        byte_fallback=True,
        split_digits=True,
        remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True,
        normalization_rule_name="identity",
        pad_id=PAD_ID,
        bos_id=BOS_ID,
        eos_id=EOS_ID,
        unk_id=UNK_ID,
        pad_piece="<pad>",
        bos_piece="<s>",
        eos_piece="</s>",
        unk_piece="<unk>",
        max_sentence_length=8192,
        num_threads=2,
        minloglevel=2,
    )
    vocab_file = output.with_suffix(".vocab")
    if vocab_file.exists():
        vocab_file.unlink()
    return output


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("inputs", nargs="+", help="JSONL files (.gz accepted)")
    parser.add_argument("--output", default="data/tokenizer.model")
    parser.add_argument("--vocab_size", type=int, default=4096)
    args = parser.parse_args(argv)
    path = train_tokenizer(texts_from_jsonl(args.inputs), args.output, args.vocab_size)
    sp = spm.SentencePieceProcessor(model_file=str(path))
    print(
        f"wrote {path}: vocab {sp.get_piece_size()}, pad/bos/eos/unk ids "
        f"{sp.pad_id()}/{sp.bos_id()}/{sp.eos_id()}/{sp.unk_id()}",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
