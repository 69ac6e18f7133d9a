"""Official google-deepmind/tips checkpoints: one `.npz` per tower + a SentencePiece `tokenizer.model`.

Spec: `npz:VISION.npz[,TEXT.npz]` or a directory holding one `*_vision.npz`, optionally one
`*_text.npz` and a `tokenizer.model`; a `tokenizer.model` (or a `save_pretrained` tokenizer, as in
tipsdistill's npz exports) beside the text file is used unless the `tokenizer=PATH` option names another.
Head counts recorded in `tips_npz.json` beside the files are used unless `num_heads=` is given. The arrays become transformers towers through
`teachers.official_npz`; the temperature comes from the text file.
"""
from __future__ import annotations

import json
import os
import shutil
import string
import tempfile
from pathlib import Path

import sentencepiece
from transformers import Tipsv2TextModel, Tipsv2Tokenizer, Tipsv2VisionModel
from transformers.initialization import no_init_weights

from common.errors import UserError
from teachers.official_npz import HEADS_FILE, read_npz, tipsv2_from_official
from teachers.tipsv2_teacher import Tipsv2Teacher
from teachers.tokenizer import match_official

# Probe captions: the converted tokenizer must split them exactly like SentencePiece itself, including
# non-ASCII capitals and characters outside the vocabulary.
_PROBES = ("a photo of a cat.", "Two Objects: a LARGE yellow star at the top-left, 3 small circles!",
           "itap of a {}.", "art of the tree", "A Red Circle", "ÉCOLE, Ǆ and ☃☃ 猫")
_ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)  # what tf.strings.lower does


def find_pair(directory: Path) -> tuple[Path, Path | None]:
    vision = sorted(directory.glob("*_vision.npz"))
    text = sorted(directory.glob("*_text.npz"))
    if len(vision) != 1 or len(text) > 1:
        raise UserError(f"{directory}: expected exactly one *_vision.npz and at most one *_text.npz, "
                        f"found {[p.name for p in vision + text] or 'none'}")
    return vision[0], (text[0] if text else None)


def load(vision_path: Path, text_path: Path | None, *, tokenizer: str | None = None,
         num_heads: int | None = None, text_num_heads: int | None = None) -> Tipsv2Teacher:
    recorded = _recorded_heads(vision_path.parent)
    num_heads = num_heads or recorded.get("num_heads")
    text_num_heads = text_num_heads or recorded.get("text_num_heads")
    if text_path is not None and tokenizer is None:
        tokenizer = _tokenizer_beside(text_path.parent)
    if text_path is not None and tokenizer is None:
        raise UserError(f"{text_path} needs its SentencePiece tokenizer; pass tokenizer=PATH/tokenizer.model")
    config, state, temperature = tipsv2_from_official(
        read_npz(vision_path), read_npz(text_path) if text_path else None,
        num_heads=num_heads, text_num_heads=text_num_heads)
    vision = _tower(Tipsv2VisionModel, config.vision_config, state, "vision_model.")
    if text_path is None:
        return Tipsv2Teacher(vision)
    text = _tower(Tipsv2TextModel, config.text_config, state, "text_model.")
    return Tipsv2Teacher(vision, text, _load_tokenizer(Path(tokenizer)), temperature)


def _recorded_heads(directory: Path) -> dict:
    path = directory / HEADS_FILE
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise UserError(f"{path}: not valid JSON ({err.msg}); expected {{\"num_heads\": N, \"text_num_heads\": N}}") from None


def _tokenizer_beside(directory: Path) -> str | None:
    """The official `tokenizer.model`, or a `save_pretrained` tokenizer (tipsdistill's own npz exports)."""
    for name in ("tokenizer.model", "tokenizer.json"):
        if (directory / name).is_file():
            return str(directory / name)
    return None


def _load_tokenizer(path: Path) -> Tipsv2Tokenizer:
    if path.name == "tokenizer.json" or path.is_dir():
        directory = path.parent if path.is_file() else path
        return match_official(Tipsv2Tokenizer.from_pretrained(directory))
    return sentencepiece_tokenizer(path)


def _tower(cls, config, state: dict, prefix: str):
    with no_init_weights():  # every weight is overwritten below; skip the random init (slow at 1.1B)
        model = cls(config)
    model.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}, strict=True)
    return model


def sentencepiece_tokenizer(path: str | os.PathLike, max_length: int = 64) -> Tipsv2Tokenizer:
    """`Tipsv2Tokenizer` converted from a SentencePiece BPE `tokenizer.model` (ASCII lower-cased, `<unk>` for
    characters outside the vocabulary, pad id 0), checked to split like SentencePiece itself."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such SentencePiece tokenizer.model file")
    try:
        reference = sentencepiece.SentencePieceProcessor(model_file=str(path))
    except (RuntimeError, OSError) as err:
        raise UserError(f"{path}: not a SentencePiece model ({err})") from None
    with tempfile.TemporaryDirectory() as tmp:
        # transformers converts a `tokenizer.model` found in a tokenizer directory.
        shutil.copyfile(path, Path(tmp) / "tokenizer.model")
        tokenizer = match_official(Tipsv2Tokenizer.from_pretrained(tmp, model_max_length=max_length))
    if tokenizer.pad_token_id != 0:
        raise UserError(f"{path}: pad id is {tokenizer.pad_token_id}; expected 0 (<pad>) as in TIPSv2")
    for probe in _PROBES:
        expected = reference.encode(probe.translate(_ASCII_LOWER))
        if tokenizer(probe, add_special_tokens=False)["input_ids"] != expected:
            raise UserError(f"{path}: transformers' Tipsv2Tokenizer does not reproduce this SentencePiece model "
                            f"(on {probe!r}); expected a BPE model like TIPSv2's tokenizer.model")
    return tokenizer
