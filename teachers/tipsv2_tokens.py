"""Run a transformers `Tipsv2VisionModel` and split its output into `ImageTokens`.

Shared by every TIPSv2-shaped encoder in the toolkit (teachers loaded from the hub, a local
directory or official `.npz` files, and the students), so that the MaskCLIP value trick and the
token layout [CLS1, registers, patches] are defined once.
"""
from __future__ import annotations

import torch
from transformers import Tipsv2VisionModel

from common.errors import UserError
from common.types import ImageTokens


def split_tokens(sequence: torch.Tensor, num_registers: int, grid: tuple[int, int]) -> ImageTokens:
    b, _, d = sequence.shape
    return ImageTokens(
        cls=sequence[:, 0],
        registers=sequence[:, 1 : 1 + num_registers],
        patches=sequence[:, 1 + num_registers :].reshape(b, grid[0], grid[1], d),
    )


def _value_trick_block(layer, x: torch.Tensor) -> torch.Tensor:
    """MaskCLIP: the last block's attention output is replaced by proj(v(norm1(x))), no token mixing."""
    attn = layer.attention
    x = x + layer.layer_scale1(attn.o_proj(attn.v_proj(layer.norm1(x))))
    return x + layer.layer_scale2(layer.mlp(layer.norm2(x)))


def tipsv2_tokens(
    vision: Tipsv2VisionModel,
    pixels: torch.Tensor,
    bool_masked_pos: torch.Tensor | None = None,
    value_trick: bool = False,
) -> ImageTokens:
    """pixels: (B,3,H,W) already normalised for the model (TIPSv2: RGB in [0,1], no mean/std)."""
    patch = vision.config.patch_size
    h, w = pixels.shape[-2:]
    if h % patch or w % patch:
        raise UserError(f"image size {h}x{w} is not a multiple of the patch size {patch}")
    grid = (h // patch, w // patch)
    num_registers = vision.config.num_register_tokens
    if not value_trick:
        out = vision(pixel_values=pixels, bool_masked_pos=bool_masked_pos)
        return split_tokens(out.last_hidden_state, num_registers, grid)
    x = vision.embeddings(pixels, bool_masked_pos=bool_masked_pos)
    layers = vision.encoder.layer
    for layer in layers[:-1]:
        x = layer(x, None)
    x = vision.layernorm(_value_trick_block(layers[-1], x))
    return split_tokens(x, num_registers, grid)


def tipsv2_hidden_states(vision: Tipsv2VisionModel, pixels: torch.Tensor, layers: list[int]) -> list[torch.Tensor]:
    """Token sequences (B, 1+R+N, D) after blocks `layers` (1-based; 0 = the embeddings) through the final
    layernorm: what transformers' `Tipsv2VisionBackbone` (apply_layernorm=True, reshape_hidden_states=False)
    hands the `Tipsv2DptFor*` heads."""
    depth = vision.config.num_hidden_layers
    if any(not 0 <= layer <= depth for layer in layers):
        raise UserError(f"layers {layers} are out of range; expected blocks 0..{depth}")
    hidden = vision(pixel_values=pixels, output_hidden_states=True).hidden_states
    return [vision.layernorm(hidden[layer]) for layer in layers]
