"""Build a real `Tipsv2Tokenizer` from a small text corpus.

Released TIPSv2 models ship a 32k SentencePiece vocabulary; micro models trained here (tests, the
embedded default teacher) need a small one. We train a BPE with the `tokenizers` library using the
same normaliser/pre-tokeniser as `Tipsv2Tokenizer`, so the result saves, reloads with
`AutoTokenizer` and behaves like the real one.
"""
from __future__ import annotations

import json
from collections.abc import Iterable

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
from transformers import Tipsv2Tokenizer


def build_tokenizer(corpus: Iterable[str], vocab_size: int = 512, max_length: int = 64) -> Tipsv2Tokenizer:
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.normalizer = normalizers.Lowercase()
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")]
    )
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "<unk>"], show_progress=False)
    bpe.train_from_iterator(corpus, trainer)
    model = json.loads(bpe.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return Tipsv2Tokenizer(vocab=model["vocab"], merges=merges, model_max_length=max_length)
