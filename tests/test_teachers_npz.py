"""Official google-deepmind/tips .npz checkpoints: key mapping, size inference, loading, bad files."""
from __future__ import annotations

import math
import shutil

import numpy as np
import pytest
import sentencepiece as spm
import torch
import torch.nn.functional as F
from transformers import Tipsv2Model

from conftest import CORPUS, tiny_tipsv2_config
from teachers import load_teacher
from common.errors import UserError
from teachers.official_npz import official_config, official_from_tipsv2, read_npz, tipsv2_from_official, write_npz
from teachers.sources.official import sentencepiece_tokenizer
from teachers.tipsv2_sizes import TIPSV2_SIZES, tipsv2_config

TOL = 1e-5
G14_TEMPERATURE = 0.003623


@pytest.fixture(scope="module")
def spm_model(tmp_path_factory):
    """A real (tiny) SentencePiece BPE model, the format of TIPSv2's tokenizer.model."""
    prefix = tmp_path_factory.mktemp("spm") / "tokenizer"
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS * 4), model_prefix=str(prefix), vocab_size=60, model_type="bpe",
        pad_id=0, unk_id=1, bos_id=-1, eos_id=-1, hard_vocab_limit=False, minloglevel=2)
    return prefix.with_suffix(".model")


@pytest.fixture(scope="module")
def npz_pair(tmp_path_factory, tiny_tipsv2_dir, spm_model):
    model = Tipsv2Model.from_pretrained(tiny_tipsv2_dir)
    vision, text = official_from_tipsv2(model, model.config)
    text["temperature"] = np.float32(G14_TEMPERATURE)  # the shared fixture's noise made its temperature negative
    out = tmp_path_factory.mktemp("official")
    write_npz(out / "tips_v2_oss_tiny_vision.npz", vision)
    write_npz(out / "tips_v2_oss_tiny_text.npz", text)
    shutil.copyfile(spm_model, out / "tokenizer.model")
    return out / "tips_v2_oss_tiny_vision.npz", out / "tips_v2_oss_tiny_text.npz"


@pytest.mark.parametrize("swiglu", [False, True])
def test_official_round_trip_is_exact(swiglu):
    torch.manual_seed(0)
    model = Tipsv2Model(tiny_tipsv2_config(vocab_size=50, swiglu=swiglu))
    vision, text = official_from_tipsv2(model, model.config)
    assert ("blocks.1.mlp.w12.weight" in vision) == swiglu and "blocks.0.attn.qkv.weight" in vision
    assert vision["pos_embed"].shape == (1, 1 + 16, 32) and "temperature" in text
    config, state, temperature = tipsv2_from_official(vision, text, num_heads=2)
    assert temperature == pytest.approx(model.temperature.item())
    assert config.vision_config.use_swiglu_ffn == swiglu and config.vision_config.image_size == 32
    reference = model.state_dict()
    assert set(state) == set(reference)
    assert all(torch.equal(state[k], reference[k]) for k in reference)


def _official_shapes(size: str) -> tuple[dict, dict]:
    """Official-layout arrays of a released size as zero-stride views: shapes without the memory."""
    config = tipsv2_config(size)
    v, t = config.vision_config, config.text_config
    d = v.hidden_size
    hidden = 4096 if v.use_swiglu_ffn else int(d * v.mlp_ratio)

    def arr(*shape):
        return np.broadcast_to(np.float32(0), shape)

    vision = {"cls_token": arr(1, 1, d), "pos_embed": arr(1, 1 + 32 * 32, d), "register_tokens": arr(1, 1, d),
              "mask_token": arr(1, d), "patch_embed.proj.weight": arr(d, 3, 14, 14), "patch_embed.proj.bias": arr(d),
              "norm.weight": arr(d), "norm.bias": arr(d)}
    mlp = ({"mlp.w12.weight": arr(2 * hidden, d), "mlp.w12.bias": arr(2 * hidden), "mlp.w3.weight": arr(d, hidden),
            "mlp.w3.bias": arr(d)} if v.use_swiglu_ffn else
           {"mlp.fc1.weight": arr(hidden, d), "mlp.fc1.bias": arr(hidden), "mlp.fc2.weight": arr(d, hidden),
            "mlp.fc2.bias": arr(d)})
    block = {"norm1.weight": arr(d), "norm1.bias": arr(d), "attn.qkv.weight": arr(3 * d, d), "attn.qkv.bias": arr(3 * d),
             "attn.proj.weight": arr(d, d), "attn.proj.bias": arr(d), "ls1.gamma": arr(d), "norm2.weight": arr(d),
             "norm2.bias": arr(d), "ls2.gamma": arr(d), **mlp}
    vision.update({f"blocks.{i}.{k}": a for i in range(v.num_hidden_layers) for k, a in block.items()})
    text = {"token_embedding.weight": arr(32000, d), "ln_final.weight": arr(d), "ln_final.bias": arr(d),
            "temperature": np.float32(config.temperature_init_value)}
    resblock = {"ln_1.weight": arr(d), "ln_1.bias": arr(d), "attn.in_proj_weight": arr(3 * d, d),
                "attn.in_proj_bias": arr(3 * d), "attn.out_proj.weight": arr(d, d), "attn.out_proj.bias": arr(d),
                "ln_2.weight": arr(d), "ln_2.bias": arr(d), "mlp.c_fc.weight": arr(t.intermediate_size, d),
                "mlp.c_fc.bias": arr(t.intermediate_size), "mlp.c_proj.weight": arr(d, t.intermediate_size),
                "mlp.c_proj.bias": arr(d)}
    text.update({f"transformer.resblocks.{i}.{k}": a for i in range(t.num_hidden_layers) for k, a in resblock.items()})
    return vision, text


@pytest.mark.parametrize("size", list(TIPSV2_SIZES))
def test_size_inferred_from_shapes(size):
    inferred, official = official_config(*_official_shapes(size)), tipsv2_config(size)
    for tower in ("vision_config", "text_config"):
        a, b = getattr(inferred, tower).to_dict(), getattr(official, tower).to_dict()
        keys = ("hidden_size", "num_hidden_layers", "num_attention_heads", "mlp_ratio", "use_swiglu_ffn",
                "intermediate_size", "patch_size", "image_size", "num_register_tokens", "vocab_size")
        assert {k: a.get(k) for k in keys} == {k: b.get(k) for k in keys}
    assert inferred.temperature_init_value == pytest.approx(official.temperature_init_value)


def test_npz_pair_loads_with_same_outputs(npz_pair, tiny_tipsv2_dir, spm_model):
    vision, text = npz_pair
    teacher = load_teacher(f"npz:{vision},{text}", tokenizer=str(spm_model), num_heads=2)
    reference = load_teacher(tiny_tipsv2_dir)
    pixels = torch.rand(2, 3, 40, 32)
    for trick in (False, True):
        a, b = teacher.encode_image(pixels, value_trick=trick), reference.encode_image(pixels, value_trick=trick)
        for x, y in ((a.cls, b.cls), (a.registers, b.registers), (a.patches, b.patches)):
            assert (x - y).abs().max() <= TOL
    assert teacher.temperature == pytest.approx(G14_TEMPERATURE)
    texts = ["A photo of a cat", "a red circle"]
    batch = teacher.tokenizer(texts, padding="max_length", max_length=64, truncation=True, return_tensors="pt")
    with torch.no_grad():
        expected = reference.text(**batch).pooler_output
    assert (teacher.encode_text(texts) - torch.nn.functional.normalize(expected, dim=-1)).abs().max() <= TOL
    # the same pair as a directory (tokenizer.model found beside it) and with spec options; vision only: no text
    assert load_teacher(vision.parent, num_heads=2).fingerprint == teacher.fingerprint
    assert load_teacher(f"npz:{vision},{text},tokenizer={spm_model},num_heads=2").fingerprint == teacher.fingerprint
    assert load_teacher(f"npz:{vision},num_heads=2").has_text is False


def test_sentencepiece_tokenizer_is_faithful(spm_model):
    tokenizer = sentencepiece_tokenizer(spm_model)
    reference = spm.SentencePieceProcessor(model_file=str(spm_model))
    assert tokenizer.pad_token_id == 0
    assert tokenizer("A RED Circle", add_special_tokens=False)["input_ids"] == reference.encode("a red circle")
    ids = tokenizer(["a photo"], padding="max_length", max_length=64, truncation=True)["input_ids"][0]
    assert len(ids) == 64 and ids[-1] == 0


def test_missing_and_extra_keys_are_listed(npz_pair, tmp_path):
    vision = read_npz(npz_pair[0])
    del vision["blocks.1.ls2.gamma"]
    vision["blocks.0.attn.bogus"] = np.zeros(3, np.float32)
    write_npz(tmp_path / "x_vision.npz", vision)
    with pytest.raises(UserError) as err:
        load_teacher(f"npz:{tmp_path / 'x_vision.npz'}", num_heads=2)
    message = str(err.value)
    assert "missing keys: blocks.1.ls2.gamma" in message and "unexpected keys: blocks.0.attn.bogus" in message
    assert "\n" not in message


def test_unknown_width_needs_heads_and_pickles_are_refused(npz_pair, tmp_path):
    with pytest.raises(UserError, match="num_heads"):
        load_teacher(f"npz:{npz_pair[0]}")
    np.savez(tmp_path / "p_vision.npz", cls_token=np.array([{"evil": 1}], dtype=object))
    with pytest.raises(UserError, match="not a plain-array"):
        read_npz(tmp_path / "p_vision.npz")
    shutil.copyfile(npz_pair[1], tmp_path / "t_text.npz")  # no tokenizer.model beside it
    with pytest.raises(UserError, match="tokenizer"):
        load_teacher(f"npz:{npz_pair[0]},{tmp_path / 't_text.npz'}", num_heads=2)


def _official_text_encoder(arrays: dict, ids: torch.Tensor, paddings: torch.Tensor, heads: int) -> torch.Tensor:
    """The official google-deepmind/tips PyTorch text encoder, written out from its structure with torch's own
    modules and the .npz arrays as they are: `nn.MultiheadAttention` over the fused `in_proj_*` (q, k, v
    rows), pre-LN residual blocks with a ReLU MLP masked at padding, sqrt(D)-scaled token embedding plus
    sinusoidal positions, a final LayerNorm and a mean over the non-padding tokens (+1e-8)."""
    t = {k: torch.from_numpy(np.asarray(v)) for k, v in arrays.items() if k != "temperature"}
    d = t["token_embedding.weight"].shape[1]
    layers = len({k.split(".")[2] for k in t if k.startswith("transformer.resblocks.")})
    half = d // 2
    inv = torch.exp(torch.arange(half, dtype=torch.float32) * -(math.log(10_000.0) / max(half - 1, 1)))
    angles = torch.arange(ids.shape[1], dtype=torch.float32)[:, None] * inv[None]
    x = t["token_embedding.weight"][ids] * d**0.5 + torch.cat([angles.sin(), angles.cos()], -1)[None]
    keep = (paddings == 0).float()
    attn_mask = torch.zeros(ids.shape[0] * heads, ids.shape[1], ids.shape[1])
    attn_mask.masked_fill_((keep == 0).repeat_interleave(heads, 0)[:, None, :], float("-inf"))

    def norm(x, name, eps=1e-5):
        return F.layer_norm(x, (d,), t[f"{name}.weight"], t[f"{name}.bias"], eps)

    x = x.transpose(0, 1)  # (L, B, D), as nn.MultiheadAttention expects by default
    for i in range(layers):
        p = f"transformer.resblocks.{i}"
        attn = torch.nn.MultiheadAttention(d, heads)
        attn.load_state_dict({"in_proj_weight": t[f"{p}.attn.in_proj_weight"], "in_proj_bias": t[f"{p}.attn.in_proj_bias"],
                              "out_proj.weight": t[f"{p}.attn.out_proj.weight"],
                              "out_proj.bias": t[f"{p}.attn.out_proj.bias"]})
        h = norm(x, f"{p}.ln_1")
        x = x + attn(h, h, h, need_weights=False, attn_mask=attn_mask)[0]
        h = F.relu(F.linear(norm(x, f"{p}.ln_2"), t[f"{p}.mlp.c_fc.weight"], t[f"{p}.mlp.c_fc.bias"]))
        h = h * keep.T[..., None]
        x = x + F.linear(h, t[f"{p}.mlp.c_proj.weight"], t[f"{p}.mlp.c_proj.bias"]) * keep.T[..., None]
    x = norm(x.transpose(0, 1), "ln_final")
    return (x * keep[..., None]).sum(1) / (keep.sum(1, keepdim=True) + 1e-8)


def test_text_tower_equals_the_official_multihead_attention_encoder(npz_pair, spm_model):
    """An independent reference, not a round trip: a q/k swap in the fused in_proj split would pass any test
    that converts with the same table both ways."""
    vision, text = npz_pair
    teacher = load_teacher(f"npz:{vision},{text}", tokenizer=str(spm_model), num_heads=2)
    texts = ["a red circle", "a photo of many dogs on a striped background"]
    batch = teacher.tokenizer(texts, padding="longest", return_tensors="pt")
    paddings = (batch["attention_mask"] == 0).float()
    with torch.no_grad():
        expected = _official_text_encoder(read_npz(text), batch["input_ids"], paddings, heads=2)
    assert (teacher.encode_text(texts) - F.normalize(expected, dim=-1)).abs().max() <= TOL
