"""Do the run's captions suit the text tower? Measured once at run start on the captions of the first items.

Two ways a first run on one's own captions goes wrong without an error:
- the tokenizer does not fit them: a tiny vocabulary (the packaged micro teacher's has 194 pieces) splits real
  captions into single characters, so they run past `max_length` and are cut; a vocabulary of another language
  turns them into `<unk>`;
- the `short` captions are not alt-text: a folder's `.txt` sidecars holding whole documents become "short"
  captions of up to `max_caption_chars` characters.
"""
from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass
from itertools import islice

from torch.utils.data import IterableDataset

from distill.data.clean import clean_captions
from distill.data.scenes import SceneDataset
from distill.data.source import MapSource

log = logging.getLogger(__name__)

SAMPLE = 256  # items whose captions are measured
# Non-space characters per token below which words are split into characters: a subword vocabulary keeps common
# words whole (4-5 characters per token on English captions), the micro teacher's 194 pieces give 1.2-1.5.
CHARACTER_LEVEL = 2.0
MOSTLY = 0.5  # share of captions cut at max_length, or of tokens that are <unk>, that makes a warning
# Alt-text is a phrase or a sentence. 300 characters is ~50 words, a paragraph, and more than the 64 tokens TIPSv2
# reads hold (~4-5 characters per token); a tenth of the sampled short captions beyond it makes a warning.
ALT_TEXT_CHARS = 300
# `build_tokenizer`'s vocabulary for one's own captions: about their distinct words (a few hundred captioned images
# hold a few thousand), so most words stay whole; docs/data.md gives the same figure.
ADVISED_VOCAB_SIZE = 4096
LONG_ALT_TEXT_SHARE = 0.1


@dataclass(frozen=True)
class TokenFit:
    captions: int
    tokens: float  # per caption, before any cut
    chars_per_token: float  # non-space characters
    unknown: float  # share of the tokens that are <unk>
    cut: float  # share of the captions longer than max_length

    def problems(self, max_length: int) -> list[str]:
        found = []
        if self.chars_per_token < CHARACTER_LEVEL:
            found.append(f"{self.chars_per_token:.1f} characters per token (mostly single characters)")
        if self.unknown > MOSTLY:
            found.append(f"{self.unknown:.0%} of the tokens <unk>")
        if self.cut > MOSTLY:
            found.append(f"{self.tokens:.0f} tokens on average, {self.cut:.0%} cut at {max_length}")
        return found


def token_fit(tokenizer, captions: list[str], max_length: int) -> TokenFit:
    """How `tokenizer` splits `captions` (a non-empty list)."""
    ids = tokenizer(captions, add_special_tokens=False, verbose=False)["input_ids"]
    total = max(sum(map(len, ids)), 1)
    unknown = sum(seq.count(tokenizer.unk_token_id) for seq in ids) if tokenizer.unk_token_id is not None else 0
    special = tokenizer.num_special_tokens_to_add()
    return TokenFit(
        captions=len(captions), tokens=sum(map(len, ids)) / len(captions),
        chars_per_token=sum(len("".join(c.split())) for c in captions) / total, unknown=unknown / total,
        cut=sum(len(seq) + special > max_length for seq in ids) / len(captions))


def first_captions(dataset, limit: int = SAMPLE) -> list[dict[str, str]]:
    """The cleaned captions of the first `limit` items; images are not decoded where the source allows
    (folders, `hf:`)."""
    if isinstance(dataset, MapSource):
        items = (clean_captions(dataset.raw(i).captions, dataset.max_caption_chars)[0] for i in range(len(dataset)))
    elif isinstance(dataset, IterableDataset):
        items = (sample.captions for sample in dataset)
    else:
        items = (dataset[i].captions for i in range(len(dataset)))
    return list(islice(items, limit))


def check_captions(dataset, tokenizer) -> None:
    """Warn (once per call) about implausibly long short captions and a tokenizer that fits the captions poorly."""
    if isinstance(dataset, SceneDataset):  # the packaged micro tokenizer was built from these very captions
        return
    items = first_captions(dataset)
    captions = defaultdict(list)
    for item in items:
        for key, text in item.items():
            captions[key].append(text)
    short = captions.get("short", [])
    long = [len(text) for text in short if len(text) > ALT_TEXT_CHARS]
    if long and len(long) >= LONG_ALT_TEXT_SHARE * len(short):
        log.warning("%d of %d short captions (alt-text, paired with CLS1) in the first %d items are longer than %d "
                    "characters (longest %d): documents rather than alt-text? A folder's NAME.txt is the short "
                    "caption; longer texts belong in NAME.medium.txt / NAME.long.txt or an index's medium / long "
                    "columns", len(long), len(short), len(items), ALT_TEXT_CHARS, max(long))
    max_length = tokenizer.model_max_length
    problems = [f"{key}: {'; '.join(found)}" for key, texts in captions.items()
                if (found := token_fit(tokenizer, texts, max_length).problems(max_length))]
    if problems:
        log.warning("the text tokenizer (%d pieces, %d tokens max) fits the captions of the first %d items poorly: "
                    "%s. Use a tokenizer whose vocabulary covers these captions (a released TIPSv2 teacher's 32k "
                    "SentencePiece, or build_tokenizer(captions, vocab_size=%d) from teachers.tokenizer saved to DIR, "
                    "with student.tokenizer=DIR loss.contrastive.text_tower=student; docs/data.md)",
                    len(tokenizer), max_length, len(items),
                    " | ".join(problems), ADVISED_VOCAB_SIZE)
