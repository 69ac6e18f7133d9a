"""The released TIPSv2 towers built on the meta device have the published parameter counts.

Checked at the precision the reference table gives: millions rounded to one decimal.
"""
from __future__ import annotations

import pytest
import torch
from transformers import Tipsv2TextModel, Tipsv2VisionModel

from teachers.tipsv2_sizes import tipsv2_config

# (vision with the 448 px / 32x32 position embedding, text), in millions
EXPECTED = {"b14": (86.3, 109.6), "l14": (304.0, 183.9), "so400m14": (413.4, 448.3), "g14": (1136.0, 389.1)}


@pytest.mark.parametrize("size", list(EXPECTED))
def test_parameter_counts_on_meta(size):
    config = tipsv2_config(size)
    with torch.device("meta"):
        vision, text = Tipsv2VisionModel(config.vision_config), Tipsv2TextModel(config.text_config)
    counts = tuple(round(sum(p.numel() for p in m.parameters()) / 1e6, 1) for m in (vision, text))
    assert counts == EXPECTED[size]
    if size == "g14":  # SwiGLU hidden 4096 from mlp_ratio 4 through transformers' 2/3 + multiple-of-8 rounding
        assert vision.encoder.layer[0].mlp.gate_proj.out_features == 4096
