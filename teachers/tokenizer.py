"""TIPSv2 tokenizers that split text as the official google-deepmind/tips text encoder does.

The official encoder (`pytorch/text_encoder.py`) lower-cases with `tf.strings.lower`, which changes ASCII
letters only, then runs the SentencePiece model, which keeps a character outside its vocabulary as `<unk>`
(a run of them as one `<unk>`). transformers' `Tipsv2Tokenizer` lower-cases every Unicode letter ("ÉCOLE" ->
"école") and, having no unknown token in its BPE model, drops such characters. `match_official` fixes both on
the tokenizer's own `tokenizers` pipeline; every place the toolkit builds or loads a TIPSv2 tokenizer goes
through it, because transformers rebuilds that pipeline from `Tipsv2Tokenizer.__init__` on each load.

Released TIPSv2 models ship a 32k SentencePiece vocabulary; micro models trained here (tests, the
embedded default teacher) need a small one: `build_tokenizer` trains a BPE with the `tokenizers` library
using the same normaliser/pre-tokeniser, so the result saves, reloads with `AutoTokenizer` and behaves like
the real one.
"""
from __future__ import annotations

import json
import string
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
from transformers import AutoTokenizer, BatchEncoding, Tipsv2Tokenizer


def _ascii_lowercase() -> list[normalizers.Normalizer]:
    return [normalizers.Replace(upper, lower) for upper, lower in zip(string.ascii_uppercase, string.ascii_lowercase)]


def match_official(tokenizer):
    """A `Tipsv2Tokenizer` gets the official text pipeline (in place): ASCII-only lower-casing before the
    SentencePiece model's own normalisation, and `<unk>` for characters outside the vocabulary. Other
    tokenizers are returned as they are."""
    if not isinstance(tokenizer, Tipsv2Tokenizer):
        return tokenizer
    backend = tokenizer.backend_tokenizer
    current = backend.normalizer
    parts = list(current) if isinstance(current, normalizers.Sequence) else [current] if current else []
    # Only SentencePiece's precompiled charsmap (NFKC and whitespace rules) is kept: it runs after
    # `tf.strings.lower` in the official encoder, so "ǅ" becomes "Dž" there and stays capitalised.
    spm = [part for part in parts if isinstance(part, normalizers.Precompiled)]
    backend.normalizer = normalizers.Sequence(_ascii_lowercase() + spm)
    backend.model.unk_token = tokenizer.unk_token
    return tokenizer


def load_tokenizer(name_or_dir, **kwargs):
    """`AutoTokenizer.from_pretrained`, with the official pipeline for TIPSv2 tokenizers."""
    return match_official(AutoTokenizer.from_pretrained(name_or_dir, **kwargs))


def tokenize(tokenizer, texts: list[str], max_length: int) -> BatchEncoding:
    """Tensors padded to the longest text and cut at `max_length`, at least one position wide: an empty text
    is all padding and pools to a zero vector, as in the official encoder (masked sum / (count + 1e-8))."""
    batch = tokenizer(list(texts), padding="longest", truncation=True, max_length=max_length, return_tensors="pt")
    if batch["input_ids"].shape[1] == 0:  # only empty texts: a zero-length sequence has no attention to run
        batch = tokenizer(list(texts), padding="max_length", max_length=1, return_tensors="pt")
    return batch


@dataclass(frozen=True)
class TextTokenizer:
    """A tokenizer with the length and padding rule of the text tower that reads its output: a plain value,
    so a DataLoader's workers can tokenise captions for a tower that stays in the main process."""

    tokenizer: object
    max_length: int
    pad_to_max_length: bool = False  # transformers' CLIP/SigLIP text towers: as their processors pad

    def __call__(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """The tensors the tower reads (`input_ids`, and `attention_mask` when the tokenizer makes one)."""
        if not self.pad_to_max_length:
            return dict(tokenize(self.tokenizer, texts, self.max_length))
        return dict(self.tokenizer(list(texts), padding="max_length", truncation=True, max_length=self.max_length,
                                   return_tensors="pt"))


def build_tokenizer(corpus: Iterable[str], vocab_size: int = 512, max_length: int = 64) -> Tipsv2Tokenizer:
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.normalizer = normalizers.Sequence(_ascii_lowercase())
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")]
    )
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "<unk>"], show_progress=False)
    bpe.train_from_iterator(corpus, trainer)
    model = json.loads(bpe.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return match_official(Tipsv2Tokenizer(vocab=model["vocab"], merges=merges, model_max_length=max_length))
