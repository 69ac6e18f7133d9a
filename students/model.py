"""`Student`: a TIPSv2 vision tower (+ optional text tower) with projection heads to the teacher's width.

The towers are transformers' `Tipsv2VisionModel` / `Tipsv2TextModel`, so the trained backbone is a
real TIPSv2 model; the heads only exist for distillation and are exported on request.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn
from transformers import Tipsv2Config, Tipsv2TextModel, Tipsv2VisionModel

from students.heads import ProjectionHeads
from teachers.fingerprint import canonical_config, fingerprint
from teachers.student_checkpoint import FORMAT, MANIFEST, VERSION, WEIGHTS, is_student_dir
from teachers.tipsv2_tokens import tipsv2_tokens
from teachers.tokenizer import TextTokenizer
from common.atomic import atomic_directory
from common.errors import UserError
from common.types import ImageTokens


class Student(nn.Module):
    """State-dict layout: `vision.*`, `text.*`, `temperature`, `heads.{cls,registers,patches}.*`.

    The same image/text encoder interface as teachers (`encode_image`, `encode_text`, `width`, `patch_size`,
    `image_size`, `num_registers`, `has_text`, `temperature`, `tokenizer`, `fingerprint`), at the student's own
    width; `teacher_space()` is the same interface through the projection heads. For training, `forward` is
    `image_tokens` (with gradients and a mask), so wrappers that hook `forward` (DDP via Accelerate) see the
    vision pass; text features go through `text_features`.
    """

    def __init__(
        self,
        name: str,
        vision: Tipsv2VisionModel,
        text: Tipsv2TextModel | None = None,
        heads: ProjectionHeads | None = None,
        tokenizer=None,
        temperature: float = Tipsv2Config.temperature_init_value,
        metadata: dict[str, Any] | None = None,
    ):
        super().__init__()
        if text is not None and text.config.hidden_size != vision.config.hidden_size:
            raise UserError(
                f"text width {text.config.hidden_size} differs from vision width {vision.config.hidden_size}; "
                "TIPSv2 compares patches and text in one space"
            )
        self.name = name
        self.vision = vision
        self.text = text
        self.heads = heads
        self.tokenizer = tokenizer
        # Like Tipsv2Model: logits = cosine / temperature, the temperature itself is the parameter.
        if text is not None:
            self.temperature = nn.Parameter(torch.tensor(float(temperature)))
        else:
            self.register_parameter("temperature", None)
        self.metadata: dict[str, Any] = dict(metadata or {})
        # The heads of the other teachers of a multi-teacher run (AM-RADIO's adaptors), by teacher name; `heads`
        # are the primary teacher's. Empty (no state-dict keys) for a one-teacher student.
        self.teacher_heads = nn.ModuleDict()

    def add_teacher_heads(self, name: str, teacher_width: int, kind: str = "linear") -> None:
        self.teacher_heads[name] = ProjectionHeads(self.width, teacher_width, kind)

    @property
    def width(self) -> int:
        return self.vision.config.hidden_size

    @property
    def patch_size(self) -> int:
        return self.vision.config.patch_size

    @property
    def image_size(self) -> int:
        return self.vision.config.image_size

    @property
    def input_multiple(self) -> int:
        """What image sides must be multiples of for the whole network to run (a ViT: its patch size)."""
        return self.patch_size

    @property
    def fixed_size(self) -> bool:
        """Whether the tower takes its own `image_size` only (TIPSv2 resamples its position embeddings: no)."""
        return False

    @property
    def num_registers(self) -> int:
        return self.vision.config.num_register_tokens

    @property
    def has_text(self) -> bool:
        return self.text is not None and self.tokenizer is not None

    @property
    def fingerprint(self) -> str:
        """sha256 of architecture + weights, as the teacher layer computes it for any TIPSv2 encoder."""
        architecture = {"family": "tipsv2", "vision": canonical_config(self.vision.config),
                        "temperature": None if self.temperature is None else float(self.temperature.detach())}
        tensors = {f"vision.{k}": v for k, v in self.vision.state_dict().items()}
        if self.text is not None:
            architecture["text"] = canonical_config(self.text.config)
            tensors.update({f"text.{k}": v for k, v in self.text.state_dict().items()})
        return fingerprint(architecture, tensors)

    @property
    def teacher_width(self) -> int | None:
        return None if self.heads is None else self.heads.teacher_width

    @property
    def head_kind(self) -> str | None:
        return None if self.heads is None else self.heads.kind

    def image_tokens(
        self, pixels: torch.Tensor, bool_masked_pos: torch.Tensor | None = None, value_trick: bool = False
    ) -> ImageTokens:
        """pixels: (B,3,H,W) RGB in [0,1] (TIPSv2 takes them unnormalised); tokens at the student width."""
        return tipsv2_tokens(self.vision, pixels, bool_masked_pos=bool_masked_pos, value_trick=value_trick)

    forward = image_tokens

    def project(self, tokens: ImageTokens, teacher: str | None = None) -> ImageTokens:
        """Through the primary teacher's heads, or those of the teacher named `teacher`."""
        return self.projection_heads(teacher)(tokens)

    def projection_heads(self, teacher: str | None = None) -> ProjectionHeads:
        if teacher is not None:
            if teacher not in self.teacher_heads:
                raise UserError(f"student {self.name} has no heads for teacher {teacher!r}; expected one of "
                                f"{', '.join(self.teacher_heads) or '(none: a one-teacher student)'}")
            return self.teacher_heads[teacher]
        if self.heads is None:
            raise UserError(f"student {self.name} has no projection heads; build it with teacher_width=...")
        return self.heads

    @property
    def text_tokenizer(self) -> TextTokenizer:
        """The text tower's tokenisation (padded to the longest text), as a value data workers can run."""
        return TextTokenizer(self.tokenizer, self.text.config.max_position_embeddings)

    def text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Masked-mean pooled text embedding (B, D), unnormalised, as Tipsv2TextModel's pooler_output."""
        if self.text is None:
            raise UserError(f"student {self.name} was built without a text tower (text=False)")
        return self.text(input_ids=input_ids, attention_mask=attention_mask).pooler_output

    # -- the encoder interface (evaluation): frozen use, no graph ---------------------------------------
    @torch.inference_mode()
    def encode_image(self, pixels: torch.Tensor, value_trick: bool = False) -> ImageTokens:
        """pixels: RGB in [0,1] (B,3,H,W); the backbone's tokens at the student's width."""
        return self.image_tokens(pixels.to(self.vision.embeddings.cls_token.dtype), value_trick=value_trick)

    @torch.inference_mode()
    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """L2-normalised text embeddings (B, width), padded to the longest text (same embeddings as 64-token
        padding under masked pooling); an empty text gives a zero vector."""
        if not self.has_text:
            raise UserError(f"student {self.name} has no text tower (or no tokenizer); encode_text needs one")
        batch = self.text_tokenizer(texts)
        device = self.vision.embeddings.cls_token.device
        return F.normalize(self.text_features(batch["input_ids"].to(device), batch["attention_mask"].to(device)),
                           dim=-1)

    def teacher_space(self, teacher: str | None = None) -> "TeacherSpace":
        """This student's tokens through its projection heads (the primary teacher's, or `teacher`'s): what
        fidelity compares with that teacher."""
        return TeacherSpace(self, teacher)

    def tipsv2_config(self) -> Tipsv2Config:
        """The `Tipsv2Config` of this backbone; without a text tower its text config is a same-width placeholder."""
        vision = self.vision.config
        if self.text is not None:
            text = self.text.config.to_dict()
            temperature = float(self.temperature.detach())
            if not temperature > 0:
                raise UserError(f"student {self.name} has temperature {temperature}; expected a positive number")
        else:
            text = dict(hidden_size=vision.hidden_size, num_attention_heads=vision.num_attention_heads)
            temperature = Tipsv2Config.temperature_init_value
        return Tipsv2Config(vision_config=vision.to_dict(), text_config=text, temperature_init_value=temperature)

    def tipsv2_state_dict(self) -> dict[str, torch.Tensor]:
        """The backbone's weights in `Tipsv2Model`'s key layout (no heads); text keys only with a text tower."""
        state = {f"vision_model.{k}": v for k, v in self.vision.state_dict().items()}
        if self.text is not None:
            state.update({f"text_model.{k}": v for k, v in self.text.state_dict().items()})
            state["temperature"] = self.temperature.detach()
        return state

    def architecture(self) -> dict[str, Any]:
        """The towers' configs, as `student.json` records them."""
        return {"vision_config": self.vision.config.to_dict(),
                "text_config": None if self.text is None else self.text.config.to_dict()}

    def vision_summary(self) -> str:
        """The vision tower in a sentence, for model cards."""
        v = self.vision.config
        return (f"width {v.hidden_size}, depth {v.num_hidden_layers}, {v.num_attention_heads} heads, patch "
                f"{v.patch_size}, {v.image_size} px, 1 register")

    def input_summary(self) -> str:
        return "Input: RGB in [0, 1], no mean/std normalisation. Tokens: [CLS1, register (CLS2), patches]."

    def save(self, directory: str | os.PathLike, metadata: dict[str, Any] | None = None) -> None:
        """Atomic: the directory appears complete or not at all (`teachers.student_checkpoint` format).
        Replaces an earlier student checkpoint at the same path (training saves repeatedly), never any other
        non-empty directory."""
        directory = Path(directory)
        if directory.is_dir() and any(directory.iterdir()) and not is_student_dir(directory):
            raise UserError(f"{directory} is a non-empty directory that is not a student checkpoint; not overwriting it")
        manifest = {
            "format": FORMAT, "version": VERSION, "name": self.name, **self.architecture(),
            "teacher_width": self.teacher_width, "head_kind": self.head_kind,
            "metadata": {**self.metadata, **(metadata or {})},
        }
        if len(self.teacher_heads):
            manifest["teacher_heads"] = {name: {"teacher_width": h.teacher_width, "head_kind": h.kind}
                                         for name, h in self.teacher_heads.items()}
        state = {k: v.detach().to("cpu").contiguous() for k, v in self.state_dict().items()}
        with atomic_directory(directory, overwrite=True) as tmp:
            save_file(state, tmp / WEIGHTS, metadata={"format": "pt"})
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
            if self.tokenizer is not None:
                self.tokenizer.save_pretrained(tmp)


class TeacherSpace(nn.Module):
    """The encoder interface over a student's projected tokens, at the teacher's width; `heads` are the ones it
    reads through (the cost columns count them with the vision tower)."""

    def __init__(self, student: Student, teacher: str | None = None):
        super().__init__()
        self.student = student
        self.heads = student.projection_heads(teacher)
        self.width = self.heads.teacher_width
        self.patch_size, self.image_size, self.num_registers = student.patch_size, student.image_size, student.num_registers
        self.fingerprint = student.fingerprint

    @torch.inference_mode()
    def encode_image(self, pixels: torch.Tensor, value_trick: bool = False) -> ImageTokens:
        return self.heads(self.student.encode_image(pixels, value_trick))
