"""The released TIPSv2 architectures (b14, l14, so400m14, g14) as transformers `Tipsv2Config` kwargs.

One place for the official shapes: the `.npz` importer uses it to recover what shapes cannot tell
(attention heads, temperature), the parameter-count tests build the towers on the meta device from it,
and the student zoo reuses it for its B/L/SO400m students.
"""
from __future__ import annotations

from transformers import Tipsv2Config

from common.errors import UserError

# mlp_ratio follows transformers' conventions: GELU hidden = int(width * mlp_ratio); SwiGLU hidden =
# round_up_8(int(int(width * mlp_ratio) * 2 / 3)), so g/14's ratio 4 gives 6144 -> 4096.
TIPSV2_SIZES: dict[str, dict] = {
    "b14": dict(
        vision_config=dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, mlp_ratio=4),
        text_config=dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
        temperature_init_value=0.005065968260169029,
    ),
    "l14": dict(
        vision_config=dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, mlp_ratio=4),
        text_config=dict(hidden_size=1024, num_hidden_layers=12, num_attention_heads=16, intermediate_size=4096),
        temperature_init_value=0.004785,
    ),
    "so400m14": dict(
        vision_config=dict(hidden_size=1152, num_hidden_layers=27, num_attention_heads=16, mlp_ratio=4304 / 1152),
        text_config=dict(hidden_size=1152, num_hidden_layers=27, num_attention_heads=16, intermediate_size=4304),
        temperature_init_value=0.004638,
    ),
    "g14": dict(
        vision_config=dict(hidden_size=1536, num_hidden_layers=40, num_attention_heads=24, mlp_ratio=4,
                           use_swiglu_ffn=True),
        text_config=dict(hidden_size=1536, num_hidden_layers=12, num_attention_heads=24, intermediate_size=6144),
        temperature_init_value=0.003623,
    ),
}

# Shared by every size: patch 14 at 448 px (32x32 position grid), 1 register, 32k vocabulary, 64 tokens.
_COMMON_VISION = dict(patch_size=14, image_size=448, num_register_tokens=1)
_COMMON_TEXT = dict(vocab_size=32000, max_position_embeddings=64)


def tipsv2_config(size: str) -> Tipsv2Config:
    if size not in TIPSV2_SIZES:
        raise UserError(f"unknown TIPSv2 size {size!r}; expected one of {', '.join(TIPSV2_SIZES)}")
    kwargs = TIPSV2_SIZES[size]
    return Tipsv2Config(
        vision_config={**_COMMON_VISION, **kwargs["vision_config"]},
        text_config={**_COMMON_TEXT, **kwargs["text_config"]},
        temperature_init_value=kwargs["temperature_init_value"],
    )


def heads_for_width(width: int) -> int | None:
    """Attention heads of the released size with this width (shapes alone cannot tell), else None."""
    for kwargs in TIPSV2_SIZES.values():
        if kwargs["vision_config"]["hidden_size"] == width:
            return kwargs["vision_config"]["num_attention_heads"]
    return None
