"""The student architectures, timm-style: a registry of named entries, adding a size is one entry.

Every entry is a full `Tipsv2Config` (vision + text shapes and the temperature init), so a trained
student is a real transformers TIPSv2 model. The released sizes reuse the teacher layer's official
shapes (`teachers.tipsv2_sizes`); the small sizes keep the TIPSv2 layout (1 register, LayerScale,
GELU MLP, text width = vision width) with patch 8 so a 32-64 px image still has a 4x4-8x8 grid.
"""
from __future__ import annotations

from dataclasses import dataclass

from transformers import Tipsv2Config

from common.errors import UserError
from teachers.tipsv2_sizes import tipsv2_config


@dataclass(frozen=True)
class StudentArch:
    name: str
    config: Tipsv2Config  # vision + text shapes at the default image size and a 32k vocabulary
    timm_model: str  # timm architecture the vision tower exports to (with kwargs for non-default shapes)
    summary: str

    def build_config(self, *, vocab_size: int | None = None, image_size: int | None = None) -> Tipsv2Config:
        vision = self.config.vision_config.to_dict()
        text = self.config.text_config.to_dict()
        if image_size is not None:
            if image_size % vision["patch_size"]:
                raise UserError(
                    f"image_size {image_size} is not a multiple of {self.name}'s patch size {vision['patch_size']}"
                )
            vision["image_size"] = image_size
        if vocab_size is not None:
            text["vocab_size"] = vocab_size
        return Tipsv2Config(
            vision_config=vision, text_config=text, temperature_init_value=self.config.temperature_init_value
        )


STUDENTS: dict[str, StudentArch] = {}


def register_student(arch: StudentArch) -> StudentArch:
    STUDENTS[arch.name] = arch
    return arch


def get_arch(name: str) -> StudentArch:
    if name not in STUDENTS:
        raise UserError(f"unknown student {name!r}; expected one of {', '.join(STUDENTS)}")
    return STUDENTS[name]


def _small(width: int, depth: int, heads: int, patch: int, image_size: int) -> Tipsv2Config:
    return Tipsv2Config(
        vision_config=dict(hidden_size=width, num_hidden_layers=depth, num_attention_heads=heads, mlp_ratio=4,
                           patch_size=patch, image_size=image_size, num_register_tokens=1),
        text_config=dict(hidden_size=width, num_hidden_layers=depth, num_attention_heads=heads,
                         intermediate_size=4 * width, vocab_size=32000, max_position_embeddings=64),
    )


def _resized(size: str, *, width: int, heads: int) -> Tipsv2Config:
    """A released layout at another width in both towers (TIPSv2 never released an S/14)."""
    config = tipsv2_config(size)
    shape = dict(hidden_size=width, num_attention_heads=heads)
    return Tipsv2Config(
        vision_config={**config.vision_config.to_dict(), **shape},
        text_config={**config.text_config.to_dict(), **shape, "intermediate_size": 4 * width},
        temperature_init_value=config.temperature_init_value,
    )


_TIMM_B = "vit_base_patch14_reg1_tipsv2"

register_student(StudentArch("tipsv2-nano", _small(32, 2, 2, 8, 32), _TIMM_B,
                             "test size: the shapes of the tests' tiny TIPSv2 checkpoints"))
register_student(StudentArch("tipsv2-pico", _small(48, 3, 3, 8, 64), _TIMM_B,
                             "CPU size, the default job's student: about 4x fewer vision parameters (heads included) "
                             "and FLOPs than the packaged micro teacher"))
register_student(StudentArch("tipsv2-micro", _small(96, 4, 4, 8, 64), _TIMM_B,
                             "CPU size (the packaged micro teacher's shape): trains in minutes on 64 px images"))
register_student(StudentArch("tipsv2-s14", _resized("b14", width=384, heads=6), _TIMM_B,
                             "ViT-S/14 in the TIPSv2 layout (no released TIPSv2 S/14)"))
register_student(StudentArch("tipsv2-b14", tipsv2_config("b14"), _TIMM_B, "released TIPSv2 B/14 shapes"))
register_student(StudentArch("tipsv2-l14", tipsv2_config("l14"), "vit_large_patch14_reg1_tipsv2",
                             "released TIPSv2 L/14 shapes"))
register_student(StudentArch("tipsv2-so400m14", tipsv2_config("so400m14"), "vit_so400m_patch14_reg1_tipsv2",
                             "released TIPSv2 SO400m/14 shapes"))
