"""Official google-deepmind/tips `.npz` checkpoints <-> transformers `Tipsv2Model` state dicts.

The official PyTorch release ships one `.npz` per tower whose keys are the official modules'
state-dict names (DINOv2-style vision tower, CLIP-style text tower, the temperature in the text file).
The renames match transformers' `conversion_mapping.py` ("Tipsv2VisionModel"/"Tipsv2TextModel"):
fused `attn.qkv` / `in_proj_*` split in three along dim 0, SwiGLU `mlp.w12` split into gate/up
(gate first, as in DINOv2's `SwiGLUFFN`), `ls*.gamma` -> `layer_scale*.lambda1`. The vision
`pos_embed` keeps its CLS slot (1, 1 + grid^2, D) in both layouts.

Shapes give every size hyper-parameter but the number of attention heads; that comes from the
released size with the same width (`tipsv2_sizes`), or from `num_heads` for other widths.
"""
from __future__ import annotations

import math
import os
import re
from pathlib import Path

import numpy as np
import torch
from transformers import Tipsv2Config

from common.atomic import write_atomic
from common.errors import UserError
from teachers.tipsv2_sizes import heads_for_width

_QKV = ("q_proj", "k_proj", "v_proj")

# official key -> transformers key(s); several targets mean "split along dim 0 in this order".
_VISION_TOP = {
    "cls_token": "embeddings.cls_token",
    "pos_embed": "embeddings.position_embeddings",
    "register_tokens": "embeddings.register_tokens",
    "mask_token": "embeddings.mask_token",
    "patch_embed.proj.weight": "embeddings.patch_embeddings.projection.weight",
    "patch_embed.proj.bias": "embeddings.patch_embeddings.projection.bias",
    "norm.weight": "layernorm.weight",
    "norm.bias": "layernorm.bias",
}
_VISION_BLOCK = {
    "norm1.weight": "norm1.weight",
    "norm1.bias": "norm1.bias",
    "attn.qkv.weight": tuple(f"attention.{p}.weight" for p in _QKV),
    "attn.qkv.bias": tuple(f"attention.{p}.bias" for p in _QKV),
    "attn.proj.weight": "attention.o_proj.weight",
    "attn.proj.bias": "attention.o_proj.bias",
    "ls1.gamma": "layer_scale1.lambda1",
    "norm2.weight": "norm2.weight",
    "norm2.bias": "norm2.bias",
    "ls2.gamma": "layer_scale2.lambda1",
}
_VISION_MLP = {
    "mlp.fc1.weight": "mlp.fc1.weight",
    "mlp.fc1.bias": "mlp.fc1.bias",
    "mlp.fc2.weight": "mlp.fc2.weight",
    "mlp.fc2.bias": "mlp.fc2.bias",
}
_VISION_SWIGLU = {
    "mlp.w12.weight": ("mlp.gate_proj.weight", "mlp.up_proj.weight"),
    "mlp.w12.bias": ("mlp.gate_proj.bias", "mlp.up_proj.bias"),
    "mlp.w3.weight": "mlp.down_proj.weight",
    "mlp.w3.bias": "mlp.down_proj.bias",
}
_TEXT_TOP = {
    "token_embedding.weight": "embeddings.token_embedding.weight",
    "ln_final.weight": "final_layer_norm.weight",
    "ln_final.bias": "final_layer_norm.bias",
}
_TEXT_BLOCK = {
    "ln_1.weight": "layer_norm1.weight",
    "ln_1.bias": "layer_norm1.bias",
    "attn.in_proj_weight": tuple(f"self_attn.{p}.weight" for p in _QKV),
    "attn.in_proj_bias": tuple(f"self_attn.{p}.bias" for p in _QKV),
    "attn.out_proj.weight": "self_attn.out_proj.weight",
    "attn.out_proj.bias": "self_attn.out_proj.bias",
    "ln_2.weight": "layer_norm2.weight",
    "ln_2.bias": "layer_norm2.bias",
    "mlp.c_fc.weight": "mlp.fc1.weight",
    "mlp.c_fc.bias": "mlp.fc1.bias",
    "mlp.c_proj.weight": "mlp.fc2.weight",
    "mlp.c_proj.bias": "mlp.fc2.bias",
}
_TEMPERATURE = "temperature"
# A text file names the temperature `temperature` or, like the scenic checkpoints, `temperature_contrastive`:
# google-deepmind/tips pytorch/run_text_encoder_inference.py drops either before loading the text encoder.
# Exports write `temperature`.
_TEMPERATURE_KEYS = (_TEMPERATURE, "temperature_contrastive")
# Shapes give everything but the head counts; exports of non-released widths record them beside the .npz files.
HEADS_FILE = "tips_npz.json"


def _vision_table(depth: int, swiglu: bool) -> dict[str, str | tuple[str, ...]]:
    table = {k: f"vision_model.{v}" for k, v in _VISION_TOP.items()}
    block = {**_VISION_BLOCK, **(_VISION_SWIGLU if swiglu else _VISION_MLP)}
    for i in range(depth):
        for k, v in block.items():
            table[f"blocks.{i}.{k}"] = _prefixed(f"vision_model.encoder.layer.{i}.", v)
    return table


def _text_table(depth: int) -> dict[str, str | tuple[str, ...]]:
    table = {k: f"text_model.{v}" for k, v in _TEXT_TOP.items()}
    for i in range(depth):
        for k, v in _TEXT_BLOCK.items():
            table[f"transformer.resblocks.{i}.{k}"] = _prefixed(f"text_model.encoder.layers.{i}.", v)
    return table


def _prefixed(prefix: str, target: str | tuple[str, ...]) -> str | tuple[str, ...]:
    return prefix + target if isinstance(target, str) else tuple(prefix + t for t in target)


def _depth(keys, pattern: str) -> int:
    indices = [int(m.group(1)) for k in keys if (m := re.match(pattern, k))]
    return max(indices) + 1 if indices else 0


def _check_keys(arrays: dict, expected: set[str], what: str) -> None:
    missing = sorted(expected - set(arrays), key=_natural)
    extra = sorted(set(arrays) - expected, key=_natural)
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing keys: {', '.join(missing)}")
        if extra:
            parts.append(f"unexpected keys: {', '.join(extra)}")
        raise UserError(f"{what} is not in the official TIPSv2 key layout; {'; '.join(parts)}")


def _natural(key: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", key)]


def _shape(arrays: dict, key: str, what: str, ndim: int) -> tuple[int, ...]:
    if key not in arrays:
        raise UserError(f"{what} is not in the official TIPSv2 key layout; missing keys: {key}")
    shape = tuple(np.shape(arrays[key]))
    if len(shape) != ndim:
        raise UserError(f"{what}: {key} has shape {shape}, expected {ndim} dimensions")
    return shape


def _mlp_ratio(width: int, hidden: int, swiglu: bool) -> float | int:
    """The transformers `mlp_ratio` that rebuilds this MLP hidden size (see `Tipsv2VisionSwiGLUFFN`)."""

    def rebuilt(ratio):
        h = int(width * ratio)
        return (int(h * 2 / 3) + 7) // 8 * 8 if swiglu else h

    # Prefer the canonical 4 (b/l/g), then the smallest fc1 width that the rounding maps to `hidden`.
    candidates = [4] + ([m / width for m in range(math.floor(1.5 * (hidden - 8)), math.ceil(1.5 * hidden) + 2)]
                        if swiglu else [hidden / width])
    for ratio in candidates:
        for r in (ratio, math.nextafter(ratio, math.inf)):  # float products may land just below the integer
            if r > 0 and rebuilt(r) == hidden:
                return r
    raise UserError(f"vision MLP hidden size {hidden} at width {width} cannot be expressed by transformers' "
                    f"{'SwiGLU (multiple of 8)' if swiglu else 'MLP'} mlp_ratio")


def _heads(width: int, num_heads: int | None, tower: str) -> int:
    heads = num_heads or heads_for_width(width)
    if heads is None:
        raise UserError(f"cannot infer the {tower} attention heads for width {width} (not a released TIPSv2 size); "
                        f"pass num_heads=N")
    if width % heads:
        raise UserError(f"num_heads={heads} does not divide the {tower} width {width}")
    return heads


def _to_torch(array) -> torch.Tensor:
    # No copy for arrays read from an .npz (contiguous, writable): the g/14 weights stay in memory once.
    array = np.asarray(array)
    return torch.from_numpy(array if array.flags.writeable else array.copy())


def official_config(
    vision_arrays: dict,
    text_arrays: dict | None,
    *,
    num_heads: int | None = None,
    text_num_heads: int | None = None,
) -> Tipsv2Config:
    """The `Tipsv2Config` of official arrays, from their shapes and key names only (no copy of the weights).

    Raises UserError listing missing / unexpected keys. With `text_arrays=None`, `config.text_config` is a
    placeholder of the same width. `num_heads` / `text_num_heads` are needed only for widths that are not
    a released size.
    """
    what = "vision .npz"
    width = _shape(vision_arrays, "cls_token", what, 3)[-1]
    patch = _shape(vision_arrays, "patch_embed.proj.weight", what, 4)[-1]
    positions = _shape(vision_arrays, "pos_embed", what, 3)[1] - 1
    grid = math.isqrt(positions)
    if grid * grid != positions:
        raise UserError(f"{what}: pos_embed holds {positions} patch positions (+1 CLS); expected a square grid")
    depth = _depth(vision_arrays, r"blocks\.(\d+)\.")
    swiglu = "blocks.0.mlp.w12.weight" in vision_arrays
    _check_keys(vision_arrays, set(_vision_table(depth, swiglu)), what)
    hidden_key = "blocks.0.mlp.w12.weight" if swiglu else "blocks.0.mlp.fc1.weight"
    hidden = _shape(vision_arrays, hidden_key, what, 2)[0] // (2 if swiglu else 1)
    heads = _heads(width, num_heads, "vision")
    vision_config = dict(
        hidden_size=width, num_hidden_layers=depth, num_attention_heads=heads,
        mlp_ratio=_mlp_ratio(width, hidden, swiglu), use_swiglu_ffn=swiglu,
        patch_size=patch, image_size=grid * patch,
        num_register_tokens=_shape(vision_arrays, "register_tokens", what, 3)[1],
    )
    if text_arrays is None:
        return Tipsv2Config(vision_config=vision_config, text_config=dict(hidden_size=width, num_attention_heads=heads))

    what = "text .npz"
    vocab, text_width = _shape(text_arrays, "token_embedding.weight", what, 2)
    if text_width != width:
        raise UserError(f"text width {text_width} differs from vision width {width}; expected one TIPSv2 pair")
    text_depth = _depth(text_arrays, r"transformer\.resblocks\.(\d+)\.")
    temperatures = [key for key in _TEMPERATURE_KEYS if key in text_arrays] or [_TEMPERATURE]
    _check_keys(text_arrays, set(_text_table(text_depth)) | set(temperatures), what)
    text_config = dict(
        hidden_size=width, num_hidden_layers=text_depth,
        num_attention_heads=_heads(width, text_num_heads or num_heads, "text"),
        intermediate_size=_shape(text_arrays, "transformer.resblocks.0.mlp.c_fc.weight", what, 2)[0],
        vocab_size=vocab,
    )
    return Tipsv2Config(vision_config=vision_config, text_config=text_config,
                        temperature_init_value=_temperature(text_arrays, temperatures[0]))


def _temperature(text_arrays: dict, key: str) -> float:
    value = np.asarray(text_arrays[key])
    if value.size != 1:
        raise UserError(f"text .npz: {key} has shape {value.shape}, expected a scalar")
    temperature = float(value.reshape(()))
    if not temperature > 0:
        raise UserError(f"text .npz: {key} is {temperature}, expected a positive number")
    return temperature


def tipsv2_from_official(
    vision_arrays: dict,
    text_arrays: dict | None,
    *,
    num_heads: int | None = None,
    text_num_heads: int | None = None,
) -> tuple[Tipsv2Config, dict[str, torch.Tensor], float | None]:
    """Official arrays -> (config, `Tipsv2Model` state dict, temperature); see `official_config`.

    With `text_arrays=None` the state dict holds only `vision_model.*` keys and the temperature is None
    (build `Tipsv2VisionModel(config.vision_config)`).
    """
    config = official_config(vision_arrays, text_arrays, num_heads=num_heads, text_num_heads=text_num_heads)
    vision = config.vision_config
    state = _convert(vision_arrays, _vision_table(vision.num_hidden_layers, vision.use_swiglu_ffn))
    if text_arrays is None:
        return config, state, None
    state.update(_convert(text_arrays, _text_table(config.text_config.num_hidden_layers)))
    state["temperature"] = torch.tensor(config.temperature_init_value, dtype=torch.float32)
    return config, state, config.temperature_init_value


def _convert(arrays: dict, table: dict) -> dict[str, torch.Tensor]:
    state = {}
    for key, target in table.items():
        tensor = _to_torch(arrays[key])
        if isinstance(target, str):
            state[target] = tensor
        else:
            if tensor.shape[0] % len(target):
                raise UserError(f"{key} has {tensor.shape[0]} rows, expected a multiple of {len(target)}")
            state.update(zip(target, tensor.chunk(len(target), dim=0)))
    return state


def _tipsv2_state(model_or_state_dict) -> dict[str, torch.Tensor]:
    """`Tipsv2Model` (or its state dict), or any module with `.vision` / `.text` towers (the students)."""
    if isinstance(model_or_state_dict, torch.nn.Module):
        module = model_or_state_dict
        if hasattr(module, "vision_model"):
            return module.state_dict()
        state = {f"vision_model.{k}": v for k, v in module.vision.state_dict().items()}
        if getattr(module, "text", None) is not None:
            state.update({f"text_model.{k}": v for k, v in module.text.state_dict().items()})
        if isinstance(getattr(module, "temperature", None), torch.Tensor):
            state["temperature"] = module.temperature
        return state
    return dict(model_or_state_dict)


def official_from_tipsv2(model_or_state_dict, config: Tipsv2Config) -> tuple[dict, dict | None]:
    """`Tipsv2Model` weights -> (vision arrays, text arrays or None) in the official key layout (float32).

    Text arrays are produced when the state holds `text_model.*` keys; their `temperature` is the model's
    `temperature` parameter, else `config.temperature_init_value`.
    """
    state = _tipsv2_state(model_or_state_dict)
    vision = config.vision_config
    vision_arrays = _gather(state, _vision_table(vision.num_hidden_layers, vision.use_swiglu_ffn), "vision")
    if not any(k.startswith("text_model.") for k in state):
        return vision_arrays, None
    text_arrays = _gather(state, _text_table(config.text_config.num_hidden_layers), "text")
    temperature = state.get("temperature", torch.tensor(config.temperature_init_value))
    text_arrays[_TEMPERATURE] = np.asarray(float(temperature), dtype=np.float32)
    return vision_arrays, text_arrays


def _gather(state: dict, table: dict, tower: str) -> dict[str, np.ndarray]:
    sources = {t for target in table.values() for t in ((target,) if isinstance(target, str) else target)}
    prefix = f"{tower}_model."
    missing = sorted(sources - set(state), key=_natural)
    extra = sorted({k for k in state if k.startswith(prefix)} - sources, key=_natural)
    if missing or extra:
        raise UserError(f"{tower} weights do not match the config; missing: {', '.join(missing) or '-'}; "
                        f"unexpected: {', '.join(extra) or '-'}")
    arrays = {}
    for key, target in table.items():
        parts = [target] if isinstance(target, str) else list(target)
        tensor = torch.cat([state[p].detach().float().cpu() for p in parts], dim=0)
        arrays[key] = tensor.numpy()
    return arrays


def read_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Load every array of an `.npz` file; object arrays are refused (`allow_pickle=False`)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such .npz file")
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {k: archive[k] for k in archive.files}
    except ValueError as err:  # numpy refuses pickled object arrays with a ValueError
        raise UserError(f"{path}: not a plain-array .npz file ({err})") from None
    except (OSError, EOFError) as err:
        raise UserError(f"{path}: not a readable .npz file ({err})") from None


def write_npz(path: str | os.PathLike, arrays: dict[str, np.ndarray]) -> None:
    """Write arrays to `path` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: np.savez would append ".npz" to a bare temp name
            np.savez(f, **arrays)

    write_atomic(path, write)
