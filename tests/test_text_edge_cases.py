"""Text edge cases behave as the official google-deepmind/tips text encoder: ASCII-only lower-casing,
`<unk>` for characters outside the vocabulary, a zero vector for an empty text, a `temperature_contrastive`
key in a text `.npz`; for every TIPSv2 source (transformers, official `.npz`, students)."""
from __future__ import annotations

import shutil
import string

import numpy as np
import pytest
import sentencepiece as spm
import torch
import torch.nn.functional as F
from transformers import Tipsv2Model

from conftest import CORPUS, tiny_tipsv2_config
from students import build_student
from teachers import load_teacher
from teachers.official_npz import official_from_tipsv2, read_npz, write_npz
from teachers.sources.official import sentencepiece_tokenizer
from teachers.tokenizer import build_tokenizer, load_tokenizer
from test_teachers_npz import _official_text_encoder

# "élan" is in the vocabularies, "É" and the snowman are not.
WORDS = CORPUS + ["un élan", "une école", "a big élan on the grass"]
ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)  # tf.strings.lower
TEMPERATURE = 0.004


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer(WORDS, vocab_size=128)


@pytest.fixture(scope="module")
def spm_model(tmp_path_factory):
    prefix = tmp_path_factory.mktemp("spm") / "tokenizer"
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(WORDS * 4), model_prefix=str(prefix), vocab_size=70, model_type="bpe",
        character_coverage=1.0, pad_id=0, unk_id=1, bos_id=-1, eos_id=-1, hard_vocab_limit=False, minloglevel=2)
    return prefix.with_suffix(".model")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("text")


@pytest.fixture(scope="module")
def encoders(root, tokenizer, spm_model):
    """name -> an encoder with `encode_text`, one per TIPSv2 source."""
    torch.manual_seed(0)
    model = Tipsv2Model(tiny_tipsv2_config(vocab_size=len(tokenizer))).eval()
    model.save_pretrained(root / "hf")
    tokenizer.save_pretrained(root / "hf")
    vision, text = official_from_tipsv2(model, model.config)
    text["temperature_contrastive"] = np.float32(TEMPERATURE)  # as the scenic checkpoints name it
    del text["temperature"]
    write_npz(root / "npz" / "tiny_vision.npz", vision)
    write_npz(root / "npz" / "tiny_text.npz", text)
    shutil.copyfile(spm_model, root / "npz" / "tokenizer.model")
    student = build_student("tipsv2-nano", tokenizer=tokenizer).eval()
    student.save(root / "student")
    return {"transformers": load_teacher(root / "hf"), "npz": load_teacher(root / "npz", num_heads=2),
            "student": student, "student checkpoint": load_teacher(root / "student")}


def test_sentencepiece_tokenizer_splits_like_the_official_encoder(spm_model):
    tok, reference = sentencepiece_tokenizer(spm_model), spm.SentencePieceProcessor(model_file=str(spm_model))
    for text in ("Élan, a ☃☃ Cat", "ÉCOLE", "ǅ", "x", ""):
        assert tok(text, add_special_tokens=False)["input_ids"] == reference.encode(text.translate(ASCII_LOWER))
    assert tok("a ☃☃ cat", add_special_tokens=False)["input_ids"].count(reference.unk_id()) == 1


def test_built_and_reloaded_tokenizers_lower_ascii_only_and_keep_unknowns(tokenizer, tmp_path):
    tokenizer.save_pretrained(tmp_path)
    for tok in (tokenizer, load_tokenizer(tmp_path)):
        assert tok.tokenize("Élan Cat") == tok.tokenize("Élan cat") != tok.tokenize("élan cat")
        assert tok.tokenize("a ☃☃ cat").count("<unk>") == 1


@pytest.mark.parametrize("name", ["transformers", "npz", "student", "student checkpoint"])
def test_encoders_treat_text_edge_cases_as_the_official_encoder(encoders, name):
    encoder = encoders[name]
    e = encoder.encode_text(["", "élan cat", "Élan CAT", "Élan cat", "a ☃ cat", "a cat"])
    assert e[0].abs().max() == 0  # an empty text pools to zero
    assert torch.allclose(e[2], e[3], atol=1e-5)  # ASCII capitals are lowered
    assert not torch.allclose(e[1], e[3], atol=1e-3)  # "É" is not
    assert not torch.allclose(e[4], e[5], atol=1e-3)  # "☃" is <unk>, not dropped
    empty = encoder.encode_text(["", ""])
    assert empty.shape == (2, encoder.width) and empty.abs().max() == 0


def test_npz_text_with_temperature_contrastive_matches_the_official_encoder(encoders, root, spm_model):
    teacher = encoders["npz"]
    assert teacher.temperature == pytest.approx(TEMPERATURE)
    text = "Élan, a ☃☃ Cat"
    ids = torch.tensor([spm.SentencePieceProcessor(model_file=str(spm_model)).encode(text.translate(ASCII_LOWER))])
    assert 1 in ids  # <unk>
    arrays = read_npz(root / "npz" / "tiny_text.npz")
    with torch.no_grad():
        expected = _official_text_encoder(arrays, ids, torch.zeros(ids.shape), heads=2)
    assert (teacher.encode_text([text]) - F.normalize(expected, dim=-1)).abs().max() <= 1e-5
