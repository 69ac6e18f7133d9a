"""TIPSv2 through transformers' native classes: a hub id (`google/tipsv2-g14`) or a `save_pretrained` dir."""
from __future__ import annotations

from transformers import Tipsv2Model, Tipsv2VisionModel

from common.errors import UserError
from teachers.tipsv2_teacher import Tipsv2Teacher
from teachers.tokenizer import load_tokenizer

MODEL_TYPES = ("tipsv2", "tipsv2_vision_model")


def load(name_or_dir: str, config, *, tokenizer: str | None = None, trust_remote_code: bool = False,
         revision: str | None = None) -> Tipsv2Teacher:
    kwargs = dict(trust_remote_code=trust_remote_code, revision=revision)
    if config.model_type == "tipsv2_vision_model":
        return Tipsv2Teacher(Tipsv2VisionModel.from_pretrained(name_or_dir, **kwargs))
    model = Tipsv2Model.from_pretrained(name_or_dir, **kwargs)
    try:
        text_tokenizer = load_tokenizer(tokenizer or name_or_dir, **kwargs)
    except (OSError, ValueError) as err:
        raise UserError(f"no tokenizer could be loaded from {tokenizer or name_or_dir} ({err}); "
                        f"expected tokenizer files saved with save_pretrained, or pass tokenizer=PATH") from None
    return Tipsv2Teacher(model.vision_model, model.text_model, text_tokenizer, float(model.temperature.detach()))
