"""`timm:NAME` students: any timm image model (convnet or ViT) as the vision tower, e.g. `timm:convnext_atto`.

The tower is `teachers.timm_vision.TimmVision` (dense features of one level as patches, two learned maps of the
pooled vector as CLS1 / CLS2); this module adds what only training needs: masking and the checkpoint manifest.

Masking: a convnet cannot drop tokens, so the masked cells of the student's stride grid are replaced in pixel
space by a learned RGB value, `mask_token`: SimMIM's learnable mask token (Xie et al., arXiv 2111.09886) moved
to the input, since a convnet has no token sequence; the dense convolutions then see a masked image as
ConvNeXt V2's FCMAE does without sparse convolution (Woo et al., arXiv 2301.00808). An all-False mask leaves
the pixels untouched, so an unmasked image gives exactly the plain forward.

No text tower: a timm student reads captions through its teacher's text tower (`loss.contrastive.text_tower:
teacher`) and is evaluated zero-shot in the teacher's space (`DIR@teacher`).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from common.errors import UserError
from common.types import ImageTokens
from students.heads import ProjectionHeads
from students.model import Student
from teachers.timm_vision import PREFIX, TimmVision

FORMATS = ("timm", "onnx")
MASK_INIT = 0.5  # mid-grey in [0,1] RGB


def mask_pixels(pixels: torch.Tensor, mask: torch.Tensor, stride: int, value: torch.Tensor) -> torch.Tensor:
    """pixels (B,3,H,W); mask (B, H/stride * W/stride) bool, True = hidden; `value` (3,) fills the hidden cells."""
    b, _, h, w = pixels.shape
    cells = mask.view(b, 1, h // stride, w // stride)
    cells = cells.repeat_interleave(stride, dim=2).repeat_interleave(stride, dim=3)
    return torch.where(cells, value.view(1, 3, 1, 1).to(pixels.dtype), pixels)


class TimmStudent(Student):
    """State dict: `vision.*` (`TimmVision`), `mask_token`, `heads.*`. The fingerprint is the vision tower's,
    as the teacher layer computes it when it reads the checkpoint (the mask token never serves an image)."""

    def __init__(self, name: str, vision: TimmVision, heads: ProjectionHeads | None = None,
                 metadata: dict[str, Any] | None = None):
        super().__init__(name, vision, None, heads, metadata=metadata)
        self.mask_token = nn.Parameter(torch.full((3,), MASK_INIT))

    width = property(lambda self: self.vision.width)
    patch_size = property(lambda self: self.vision.patch_size)
    image_size = property(lambda self: self.vision.image_size)
    num_registers = property(lambda self: 1)  # CLS2, as TIPSv2's register
    input_multiple = property(lambda self: self.vision.input_multiple)
    fixed_size = property(lambda self: self.vision.fixed_size)
    fingerprint = property(lambda self: self.vision.fingerprint)

    def image_tokens(self, pixels: torch.Tensor, bool_masked_pos: torch.Tensor | None = None,
                     value_trick: bool = False) -> ImageTokens:
        """MaskCLIP's value trick acts on a ViT's last attention; a timm student has none to rewrite, so
        `value_trick` gives the plain tokens."""
        if bool_masked_pos is not None:
            pixels = mask_pixels(pixels, bool_masked_pos, self.patch_size, self.mask_token)
        return self.vision(pixels)

    forward = image_tokens

    @torch.inference_mode()
    def encode_image(self, pixels: torch.Tensor, value_trick: bool = False) -> ImageTokens:
        return self.image_tokens(pixels.to(self.mask_token.dtype))

    def architecture(self) -> dict[str, Any]:
        return {"vision_config": None, "text_config": None, "timm": self.vision.describe()}

    def vision_summary(self) -> str:
        v = self.vision
        return (f"timm `{v.name}` ({v.kwargs or 'default shape'}): tokens of its stride-{v.patch_size} feature map "
                f"(width {v.width}), CLS1 and CLS2 learned maps of its pooled vector, {v.image_size} px")

    def input_summary(self) -> str:
        return ("Input: RGB in [0, 1]; the ONNX graphs and tipsdistill apply the model's mean/std, the bare timm "
                "model takes timm's transform (`resolve_data_config`). Tokens: [CLS1, CLS2, patches].")

    def tipsv2_config(self):
        raise UserError(f"student {self.name} is a timm model, not a TIPSv2 backbone; export it with --format "
                        f"{' or '.join(FORMATS)}")


def build_timm_student(name: str, *, teacher_width: int | None, text: bool, init: str | None,
                       text_init: str | None, image_size: int | None, head: str, timm_kwargs: dict | None,
                       feature_stride: int | None, gradient_checkpointing: bool) -> TimmStudent:
    """`init`: a local timm weights file (.safetensors or .pth state dict) for the model, read by timm."""
    if text or text_init is not None:
        raise UserError(f"student {name} is a timm model with no text tower; expected loss.contrastive.text_tower: "
                        "teacher (captions through the teacher's text tower) and no student.text_init")
    if image_size is None:
        raise UserError(f"student {name} needs an image size; expected student.image_size")
    vision = TimmVision(name[len(PREFIX):], image_size=image_size, kwargs=timm_kwargs, feature_stride=feature_stride,
                        weights=init)
    if gradient_checkpointing:
        vision.model.set_grad_checkpointing(True)
    heads = ProjectionHeads(vision.width, teacher_width, head) if teacher_width else None
    metadata = {"init": {"spec": init, "fingerprint": vision.fingerprint}} if init else {}
    return TimmStudent(name, vision, heads, metadata)
