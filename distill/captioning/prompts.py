"""One prompt per caption granularity: built-in defaults per captioner family, overridden by the user's."""
from __future__ import annotations

import re
from pathlib import Path

from common.errors import UserError

from distill.data.sample import CAPTION_KEYS

# Florence-2's three caption tasks (Xiao et al., arXiv 2311.06242): one sentence, a few sentences, a paragraph.
FLORENCE2 = {"short": "<CAPTION>", "medium": "<DETAILED_CAPTION>", "long": "<MORE_DETAILED_CAPTION>"}
# PaliGemma mix checkpoints' task prefixes (google/paligemma2-3b-mix-448 model card): a one-line caption and a
# paragraph; there is no third length. The leading image token is where PaliGemmaProcessor expects the image.
PALIGEMMA = {"short": "<image>caption en", "long": "<image>describe en"}
# Instruction-tuned models (a processor with a chat template): the prompt becomes the user's chat message.
INSTRUCT = {
    "short": "Write a one-sentence caption for this image.",
    "medium": "Describe this image in two or three sentences.",
    "long": "Describe this image in one detailed paragraph: the objects, their attributes, colours and "
            "positions, the background and any visible text.",
}
DEFAULT_PROMPTS = {"florence2": FLORENCE2, "paligemma": PALIGEMMA}

INLINE_PROMPTS = "short=...,medium=...,long=..."
PROMPTS_HELP = f"--prompts {INLINE_PROMPTS} or --prompts FILE.yaml"


def parse_granularities(text: str | None) -> tuple[str, ...] | None:
    """`short,long` -> ("short", "long") in CAPTION_KEYS order; None = every granularity with a prompt."""
    if text is None:
        return None
    names = {name.strip() for name in text.split(",") if name.strip()}
    unknown = sorted(names - set(CAPTION_KEYS))
    if unknown or not names:
        raise UserError(f"--granularities {text!r}: expected a comma-separated subset of {', '.join(CAPTION_KEYS)}")
    return tuple(key for key in CAPTION_KEYS if key in names)


def parse_prompts(items: list[str]) -> dict[str, str]:
    """Each item is a YAML/JSON file mapping granularity -> prompt, or `short=...,long=...`; later items win."""
    prompts: dict[str, str] = {}
    for item in items:
        prompts.update(_read_prompt_file(Path(item)) if Path(item).is_file() else _split_prompts(item))
    return prompts


def _split_prompts(item: str) -> dict[str, str]:
    # Split only at commas that start a new `name=`, so a prompt may itself contain commas.
    pairs = [part.partition("=") for part in re.split(r",(?=\s*\w+=)", item)]
    if not all(sep and key.strip() for key, sep, _ in pairs):
        raise UserError(f"--prompts {item!r} is neither a file nor {INLINE_PROMPTS}")
    return _checked({key.strip(): value for key, _, value in pairs}, f"--prompts {item!r}")


def _read_prompt_file(path: Path) -> dict[str, str]:
    import yaml

    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise UserError(f"prompt file {path} cannot be read as YAML/JSON ({type(exc).__name__})") from None
    if not isinstance(loaded, dict):
        raise UserError(f"prompt file {path}: expected a mapping like {{short: ..., long: ...}}")
    return _checked(loaded, f"prompt file {path}")


def _checked(prompts: dict, where: str) -> dict[str, str]:
    for key, value in prompts.items():
        if key not in CAPTION_KEYS:
            raise UserError(f"{where}: unknown granularity {key!r}: expected {', '.join(CAPTION_KEYS)}")
        if not isinstance(value, str) or not value.strip():
            raise UserError(f"{where}: the {key} prompt must be non-empty text")
    return dict(prompts)


def resolve_prompts(model_type: str, chat: bool, given: dict[str, str],
                    granularities: tuple[str, ...] | None) -> dict[str, str]:
    """{granularity: prompt} for the granularities to generate, in CAPTION_KEYS order."""
    available = {**DEFAULT_PROMPTS.get(model_type, INSTRUCT if chat else {}), **given}
    if not available:
        raise UserError(f"a {model_type} captioner has no built-in prompts (not Florence-2, PaliGemma or a chat "
                        f"model): give one per granularity with {PROMPTS_HELP}")
    wanted = granularities or tuple(key for key in CAPTION_KEYS if key in available)
    missing = [key for key in wanted if key not in available]
    if missing:
        raise UserError(f"no {missing[0]} prompt for a {model_type} captioner: give one with --prompts "
                        f"{missing[0]}=... or leave {missing[0]} out of --granularities")
    return {key: available[key] for key in wanted}
