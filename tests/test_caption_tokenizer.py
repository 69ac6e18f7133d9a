"""The loader tokenises each batch's captions once, for every student of the run: students whose text towers
tokenise differently are refused before any step, students that agree share one tokenisation."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from common.errors import UserError
from conftest import CORPUS
from distill.run import caption_tokenizer
from teachers.tokenizer import TextTokenizer, build_tokenizer


def _task(*tokenizers):
    return SimpleNamespace(students=lambda: [SimpleNamespace(text_tokenizer=t) for t in tokenizers])


def test_students_with_different_tokenisations_are_refused(tiny_tokenizer):
    other = build_tokenizer(CORPUS, vocab_size=96)
    with pytest.raises(UserError, match="tokenise captions differently"):
        caption_tokenizer(None, _task(TextTokenizer(tiny_tokenizer, 16), TextTokenizer(other, 16)))
    with pytest.raises(UserError, match="tokenise captions differently"):
        caption_tokenizer(None, _task(TextTokenizer(tiny_tokenizer, 16), TextTokenizer(tiny_tokenizer, 32)))


def test_students_that_agree_share_one_joint_tokenisation(tiny_tokenizer):
    same = build_tokenizer(CORPUS, vocab_size=128)  # another object, the same vocabulary and rules
    chosen = caption_tokenizer(None, _task(TextTokenizer(tiny_tokenizer, 16), TextTokenizer(same, 16)))
    assert chosen.joint and chosen.text.tokenizer is tiny_tokenizer
