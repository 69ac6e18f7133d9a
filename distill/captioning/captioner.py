"""A transformers image-text-to-text model as a captioner: a batch of images and one prompt in, one text each out.

Model, processor, generation and decoding are transformers' own (`AutoModelForImageTextToText`, `AutoProcessor`,
`generate`, `post_process_image_text_to_text`), the same calls as its image-text-to-text pipeline.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from common.errors import UserError

from distill.data.hf import one_line

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


@dataclass(frozen=True)
class Generation:
    max_new_tokens: int = 256
    num_beams: int = 1  # greedy by default: the same image always gets the same caption

    def validate(self) -> None:
        if self.max_new_tokens < 1:
            raise UserError(f"--max-new-tokens {self.max_new_tokens}: expected a positive number of tokens")
        if self.num_beams < 1:
            raise UserError(f"--num-beams {self.num_beams}: expected 1 (greedy) or more")


def pick_device(device: str | None, dtype: str | None) -> tuple[torch.device, torch.dtype]:
    """Default: the GPU in bf16 when there is one, else the CPU in fp32 (CPUs lack fast bf16 matmuls)."""
    try:
        chosen = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    except RuntimeError:
        raise UserError(f"--device {device!r}: expected cpu, cuda or cuda:N") from None
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {device}: no CUDA device is available here")
    return chosen, DTYPES[dtype or ("fp32" if chosen.type == "cpu" else "bf16")]


class Captioner:
    def __init__(self, spec: str, *, device: torch.device, dtype: torch.dtype, generation: Generation):
        from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

        spec = checked_spec(spec)
        config = _load(AutoConfig, spec, "config")
        if not is_captioner(config.model_type):
            raise UserError(f"captioner {spec} is a {config.model_type} model, not a captioner: expected an "
                            f"image-text-to-text model (Florence-2, PaliGemma, a chat vision-language model)")
        positions = getattr(config.get_text_config(), "max_position_embeddings", None)
        if positions and generation.max_new_tokens >= positions:
            raise UserError(f"--max-new-tokens {generation.max_new_tokens}: the captioner's text model has "
                            f"{positions} positions")
        self.model_type, self.generation = config.model_type, generation
        self.processor = _load(AutoProcessor, spec, "processor")
        self.model = _load(AutoModelForImageTextToText, spec, "weights", dtype=dtype).to(device).eval()
        self.device, self.dtype = device, dtype
        # Instruction-tuned models take the prompt as a chat message; the others take it as raw text.
        self.chat = bool(getattr(self.processor, "chat_template", None))
        if not self.model.config.is_encoder_decoder:
            # A prompt's length can vary with the image (Qwen2-VL's image token count follows its size) and a
            # decoder-only model continues from the right end, so shorter prompts are padded on the left.
            self.processor.tokenizer.padding_side = "left"

    def caption(self, images: list[Image.Image], prompt: str) -> list[str]:
        text = self._prompt_text(prompt)
        # One list of images per prompt: the batched form of processors that take several images per prompt.
        inputs = self.processor(images=[[image] for image in images], text=[text] * len(images), padding=True,
                                return_tensors="pt")
        inputs = inputs.to(device=self.device, dtype=self.dtype)
        with torch.inference_mode():
            generated = self.model.generate(**inputs, do_sample=False, num_beams=self.generation.num_beams,
                                            max_new_tokens=self.generation.max_new_tokens)
        if not self.model.config.is_encoder_decoder:
            # Decoder-only models return the (left-padded) prompt too.
            generated = generated[:, inputs["input_ids"].shape[1]:]
        texts = self.processor.post_process_image_text_to_text(generated, skip_special_tokens=True)
        return [text.strip() for text in texts]

    def _prompt_text(self, prompt: str) -> str:
        if not self.chat:
            return prompt
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
        return self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def is_captioner(model_type: str) -> bool:
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    return model_type in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES


def checked_spec(spec: str) -> str:
    """A local model directory, or something shaped like a hub id (`org/name`), which is left to transformers."""
    path = Path(spec).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise UserError(f"captioner {spec} is not a transformers model directory (no config.json): expected "
                            f"a save_pretrained directory or a hub id")
        return str(path)
    if spec.startswith((".", "/", "~")) or spec.count("/") != 1:
        raise UserError(f"captioner directory {spec} does not exist")
    return spec


def _load(loader, spec: str, what: str, **kwargs):
    try:
        return loader.from_pretrained(spec, **kwargs)
    except (OSError, ValueError, KeyError, TypeError) as exc:  # offline hub, missing or broken files
        raise UserError(f"captioner {spec}: cannot load its {what} ({type(exc).__name__}: {one_line(exc)})") from None
