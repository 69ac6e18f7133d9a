"""Warnings a first run on one's own data needs: captions the tokenizer splits into characters or cuts,
documents as alt-text, image files the folder reader leaves out, and no "Loading weights" bars."""
from __future__ import annotations

import logging
import re
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from transformers.utils import logging as transformers_logging

from distill.caption_check import check_captions, token_fit
from distill.cli import main
from distill.recipe_loader import load_recipe
from distill.data import build_dataset
from distill.run import build_run
from teachers.load import PACKAGED
from teachers.tokenizer import build_tokenizer, load_tokenizer

# Real alt-text: ~100 characters, which the micro teacher's few hundred pieces split into more than 64 tokens.
CAPTIONS = [
    "A golden retriever puppy playing with a red ball on the grass of a sunny park, next to an old wooden bench.",
    "Two people riding bicycles along a sandy beach at sunset, with tall palm trees and waves in the background.",
    "Close-up photo of a bowl of ramen with a soft egg, green onions and pork slices on a dark wooden table.",
    "An old stone bridge over a narrow river in a small mountain village, covered in snow on a winter morning.",
]
ROOT = Path(__file__).resolve().parent.parent
DOCUMENT = " ".join(["Ein langer Text über die Geschichte der Stadt, ses rues et ses habitants; 历史与文化."] * 30)


def _folder(root, captions):
    root.mkdir()
    for i, caption in enumerate(captions):
        Image.fromarray(np.full((32, 32, 3), 40 * i, np.uint8)).save(root / f"{i}.png")
        (root / f"{i}.txt").write_text(caption)
    return root


@pytest.fixture(scope="module")
def micro_tokenizer():
    return load_tokenizer(PACKAGED["micro"])


def test_a_tokenizer_that_splits_captions_into_characters_is_reported(tmp_path, caplog, micro_tokenizer):
    fit = token_fit(micro_tokenizer, CAPTIONS, 64)
    assert fit.chars_per_token < 2 and fit.tokens > 64
    cut = token_fit(micro_tokenizer, CAPTIONS, 48)  # every caption is longer than 48 tokens
    assert cut.problems(48)[-1] == f"{cut.tokens:.0f} tokens on average, 100% cut at 48"
    dataset = build_dataset(f"folder:{_folder(tmp_path / 'photos', CAPTIONS)}")
    with caplog.at_level(logging.WARNING):
        check_captions(dataset, micro_tokenizer)
        check_captions(dataset, build_tokenizer(CAPTIONS, vocab_size=400))  # a vocabulary made for them: quiet
    [record] = [r for r in caplog.records if "tokenizer" in r.getMessage()]
    message = record.getMessage()
    assert f"({len(micro_tokenizer)} pieces, 64 tokens max)" in message and "first 4 items" in message
    assert f"short: {fit.chars_per_token:.1f} characters per token (mostly single characters)" in message


def _prose_captions(items: int) -> list[dict[str, str]]:
    """Real English with some 900 distinct words (the standard library's pydoc topics, prose sentences only)
    as short / medium / long captions: a richer vocabulary than the built-in scenes' 194 pieces."""
    from pydoc_data.topics import topics

    text = " ".join(" ".join(topics[key] for key in sorted(topics)).split())
    sentences = [s for s in re.split(r"(?<=[.!?]) ", text) if 20 <= len(s) <= 100 and not re.search(r"[^\w ,.;:'-]", s)]
    return [{"short": sentences[i], "medium": " ".join(sentences[i:i + 2]), "long": " ".join(sentences[i:i + 3])}
            for i in range(items)]


def test_the_docs_tokenizer_advice_is_quiet_on_real_captions(tmp_path, caplog):
    from distill.caption_check import ADVISED_VOCAB_SIZE
    from distill.data.scenes import caption_corpus

    [advised] = re.findall(r"build_tokenizer\(captions, vocab_size=(\d+)\)", (ROOT / "docs" / "data.md").read_text())
    assert int(advised) == ADVISED_VOCAB_SIZE  # the docs (Training data) and the warning give the same advice
    items = _prose_captions(300)
    captions = [text for item in items for text in item.values()]
    assert len({word.lower() for text in captions for word in text.split()}) > 800
    for corpus in (captions, caption_corpus()):
        assert token_fit(build_tokenizer(corpus, vocab_size=int(advised)), corpus, 64).problems(64) == []
    advice, default = build_tokenizer(captions, vocab_size=int(advised)), build_tokenizer(captions)
    for key in ("short", "medium", "long"):
        texts = [item[key] for item in items]
        # Words stay whole with the advice; the default 512 pieces sit near the warning's 2 characters per token.
        assert token_fit(advice, texts, 64).chars_per_token > 4 > 3 > token_fit(default, texts, 64).chars_per_token
    root = tmp_path / "photos"
    root.mkdir()
    for i, item in enumerate(items[:64]):
        Image.new("RGB", (8, 8)).save(root / f"{i:03d}.png")
        for key, suffix in (("short", ".txt"), ("medium", ".medium.txt"), ("long", ".long.txt")):
            (root / f"{i:03d}{suffix}").write_text(item[key])
    with caplog.at_level(logging.WARNING):
        check_captions(build_dataset(f"folder:{root}"), advice)
    assert not [r for r in caplog.records if "tokenizer" in r.getMessage()]


def test_documents_as_short_captions_are_reported(tmp_path, caplog):
    tokenizer = build_tokenizer([DOCUMENT, "a red circle"], vocab_size=400)
    dataset = build_dataset(f"folder:{_folder(tmp_path / 'docs', [DOCUMENT] * 3 + ['a red circle'])}")
    long_only = _folder(tmp_path / "long", [])
    Image.new("RGB", (8, 8)).save(long_only / "a.png")
    (long_only / "a.long.txt").write_text(DOCUMENT)
    with caplog.at_level(logging.WARNING):
        check_captions(dataset, tokenizer)
        check_captions(build_dataset(f"folder:{long_only}"), tokenizer)  # long captions may be documents
    [message] = [r.getMessage() for r in caplog.records if "short captions" in r.getMessage()]
    assert "3 of 4 short captions" in message and "longer than 300 characters (longest 996)" in message


def test_image_files_the_reader_does_not_decode_are_reported(tmp_path, caplog):
    root = _folder(tmp_path / "mixed", ["a red circle"])
    (root / "logo.svg").write_text("<svg xmlns='http://www.w3.org/2000/svg'/>")
    (root / "sub").mkdir()
    (root / "sub" / "icon.ico").write_bytes(b"\0")
    (root / "notes.md").write_text("not an image")
    with caplog.at_level(logging.WARNING):
        assert len(build_dataset(f"folder:{root}")) == 1
    [message] = [r.getMessage() for r in caplog.records if "left out" in r.getMessage()]
    assert "left out 2 image file(s)" in message and "(.ico 1, .svg 1; e.g. logo.svg, sub/icon.ico)" in message


@pytest.mark.parametrize("text_tower", ["student", "teacher"])
def test_a_run_checks_its_captions_with_the_text_tokenizer(tmp_path, caplog, text_tower):
    photos = _folder(tmp_path / "photos", CAPTIONS)
    recipe = load_recipe("micro", [f"data.source=folder:{photos}", "data.options={}", "batch_size=4",
                                   "student.name=tipsv2-nano", "student.image_size=32", "num_workers=0",
                                   f"loss.contrastive.text_tower={text_tower}"])
    with caplog.at_level(logging.WARNING):
        build_run(recipe, tmp_path / "run", calibrate=False)
    assert any(f"({len(load_tokenizer(PACKAGED['micro']))} pieces, 64 tokens max)" in r.getMessage()
               for r in caplog.records)


def test_commands_hide_transformers_weight_loading_bars(tmp_path):
    try:
        assert main(["export", str(tmp_path / "missing"), "--format", "hf", "--out", str(tmp_path / "x")]) == 2
        assert not transformers_logging.is_progress_bar_enabled()
    finally:
        transformers_logging.enable_progress_bar()


def test_a_run_logs_above_its_bar_and_only_the_caption_weights_it_uses(tmp_path, caplog, capsys):
    photos = _folder(tmp_path / "photos", CAPTIONS)  # short captions only
    console = logging.StreamHandler(sys.stderr)  # a user's terminal, where tqdm draws its bar too
    console.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(console)
    try:
        with caplog.at_level(logging.INFO):
            assert main(["distill", "--recipe", "micro", f"data.source=folder:{photos}", "train.max_steps=2",
                         "train.batch_size=4", "--out", str(tmp_path / "run")]) == 0
    finally:
        logging.getLogger().removeHandler(console)
    [drawn] = [line for line in capsys.readouterr().err.split("\n") if "samples drawn" in line]
    assert drawn.split("\r")[-1] == "INFO distill.train: data: 8 samples drawn"  # not after the bar's text
    [contrastive] = [r.getMessage() for r in caplog.records if r.getMessage().startswith("contrastive")]
    assert "CLS2 <-> short 0.2; data captions: short (medium, long weighted but not in the data)" in contrastive


def test_hf_on_a_local_folder_shows_no_download_bars(tmp_path, capsys):
    from datasets.utils import logging as datasets_logging

    photos = _folder(tmp_path / "photos", CAPTIONS)
    (photos / "metadata.jsonl").write_text("".join(f'{{"file_name": "{i}.png", "text": "{c}"}}\n'
                                                   for i, c in enumerate(CAPTIONS)))
    for path in photos.glob("*.txt"):
        path.unlink()
    assert len(build_dataset(f"hf:{photos}", cache_dir=str(tmp_path / "cache"))) == 4
    err = capsys.readouterr().err
    assert "Generating train split" not in err and "Downloading" not in err, err
    assert datasets_logging.is_progress_bar_enabled()  # silenced for the local read only
