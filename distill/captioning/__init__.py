"""Synthetic multi-granularity captions for a team's own images (`tipsdistill caption`).

TIPS/TIPSv2 align patch tokens with text by training on captions of several lengths (web alt-text plus
synthetic PaliGemma and Gemini captions); this package writes such captions with any transformers
image-text-to-text model into the `metadata.jsonl` that `folder:` and `hf:` read.
"""
from distill.captioning.captioner import Captioner, Generation, pick_device
from distill.captioning.job import CaptionSettings, Shard, caption_images, open_images, plan
from distill.captioning.output import checked_out, read_written
from distill.captioning.prompts import parse_granularities, parse_prompts, resolve_prompts

__all__ = ["CaptionSettings", "Captioner", "Generation", "Shard", "caption_images", "checked_out", "open_images",
           "parse_granularities", "parse_prompts", "pick_device", "plan", "read_written", "resolve_prompts"]
