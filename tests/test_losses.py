"""Loss unit tests: all-token patch loss, multi-positive InfoNCE and sigmoid, PHI-S, masks, captions."""
from __future__ import annotations

import hashlib

import pytest
import torch
import torch.nn.functional as F

from distill.data.captions import caption_pair
from distill.data.draws import Draws, MaskConfig
from distill.losses.contrastive_loss import info_nce_loss
from distill.losses.global_batch import caption_ids, global_batch
from distill.losses.hadamard import hadamard
from distill.losses.patch_distill_loss import PatchDistillWeights, patch_distill_loss
from distill.losses.sigmoid_loss import sigmoid_loss
from distill.losses.target_norm import TargetNorm
from distill.losses.token_distance import token_distance
from common.errors import UserError
from common.types import ImageTokens


def tokens(b=2, h=3, w=3, d=8, seed=0, grad=False):
    g = torch.Generator().manual_seed(seed)
    t = ImageTokens(torch.randn(b, d, generator=g), torch.randn(b, 1, d, generator=g),
                    torch.randn(b, h, w, d, generator=g))
    return t.map(lambda x: x.requires_grad_(grad))


@pytest.mark.parametrize("kind", ["all", "masked"])
def test_patch_loss_covers_visible_tokens_only_in_ibot_plus_plus(kind):
    pred, target = tokens(grad=True), tokens(seed=1)
    mask = torch.zeros(2, 9, dtype=torch.bool)
    mask[:, :4] = True
    total, parts = patch_distill_loss(pred, target, mask, "cosine", PatchDistillWeights(), tokens=kind)
    total.backward()
    grad = pred.patches.grad.reshape(2, 9, -1).abs().sum(-1)
    assert (grad[:, :4] > 0).all()  # hidden tokens always carry the loss
    assert ((grad[:, 4:] > 0).all() if kind == "all" else (grad[:, 4:] == 0).all())
    assert (pred.cls.grad.abs().sum() > 0) and (pred.registers.grad.abs().sum() > 0)
    assert {"cls", "register", "patch", "patch_masked", "patch_visible"} <= set(parts)


def test_masked_patch_loss_averages_over_masked_images_only():
    """Half the images unmasked (mask_probability 0.5) must not halve the patch term's weight."""
    pred, target = tokens(b=4), tokens(b=4, seed=1)
    mask = torch.zeros(4, 9, dtype=torch.bool)
    mask[:2, :4] = True  # images 2 and 3 carry no mask
    _, parts = patch_distill_loss(pred, target, mask, "cosine", PatchDistillWeights(), tokens="masked")
    per_patch = token_distance(pred.patches, target.patches, "cosine").reshape(4, 9)
    assert torch.allclose(parts["patch"], per_patch[:2, :4].mean())
    _, none = patch_distill_loss(pred, target, torch.zeros(4, 9, dtype=torch.bool), "cosine", PatchDistillWeights(),
                                 tokens="masked")
    assert none["patch"] == 0


def test_patch_loss_values():
    pred, target = tokens(), tokens(seed=1)
    total, parts = patch_distill_loss(pred, target, None, "mse", PatchDistillWeights(cls=2.0, register=0.0, patch=1.0))
    expected = 2 * F.mse_loss(pred.cls, target.cls) + F.mse_loss(pred.patches, target.patches)
    assert torch.allclose(total, expected)
    assert torch.allclose(parts["register"], F.mse_loss(pred.registers, target.registers))


def test_token_distances():
    a, b = torch.randn(5, 8), torch.randn(5, 8)
    cos = 1 - F.cosine_similarity(a, b, dim=-1)
    sl1 = F.smooth_l1_loss(a, b, reduction="none").mean(-1)
    assert torch.allclose(token_distance(a, b, "cosine"), cos, atol=1e-6)
    assert torch.allclose(token_distance(a, b, "mix", {"cosine": 0.9, "smooth_l1": 0.1}), 0.9 * cos + 0.1 * sl1)
    assert torch.allclose(token_distance(a, a, "mse"), torch.zeros(5))


def _embeddings(n=4, d=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g), torch.randn(n, d, generator=g)


def test_info_nce_with_distinct_captions_is_clip_loss():
    image, text = _embeddings()
    captions = ["a", "b", "c", "d"]
    t = torch.tensor(0.1)
    batch = global_batch(image, text, caption_ids(captions), torch.ones(4, dtype=torch.bool))
    logits = F.normalize(image) @ F.normalize(text).T / t
    clip = (F.cross_entropy(logits, torch.arange(4)) + F.cross_entropy(logits.T, torch.arange(4))) / 2
    assert torch.allclose(info_nce_loss(batch, t), clip, atol=1e-6)


def test_info_nce_identical_captions_are_positives():
    image, text = _embeddings()
    captions = ["a red circle", "a blue square", "a red circle", "a cat"]
    t = torch.tensor(0.1)
    batch = global_batch(image, text, caption_ids(captions), torch.ones(4, dtype=torch.bool))
    logits = F.normalize(image) @ F.normalize(text).T / t
    same = torch.tensor([[a == b for b in captions] for a in captions], dtype=torch.float)
    targets = same / same.sum(1, keepdim=True)
    expected = (-(targets * logits.log_softmax(1)).sum(1).mean() - (targets * logits.T.log_softmax(1)).sum(1).mean()) / 2
    assert torch.allclose(info_nce_loss(batch, t), expected, atol=1e-6)
    # A duplicate caption is not a negative: swapping the two duplicates' texts changes nothing.
    swapped = text[[2, 1, 0, 3]]
    again = global_batch(image, swapped, caption_ids(captions), torch.ones(4, dtype=torch.bool))
    assert torch.allclose(info_nce_loss(again, t), info_nce_loss(batch, t), atol=1e-6)


def test_missing_captions_take_no_row_or_column():
    image, text = _embeddings()
    captions = ["a", "", "c", "d"]
    valid = torch.tensor([True, False, True, True])
    t = torch.tensor(0.2)
    full = info_nce_loss(global_batch(image, text, caption_ids(captions), valid), t)
    keep = valid.nonzero().squeeze(1)
    subset = info_nce_loss(global_batch(image[keep], text[keep], caption_ids(["a", "c", "d"]),
                                        torch.ones(3, dtype=torch.bool)), t)
    assert torch.allclose(full, subset, atol=1e-6)
    none = global_batch(image.requires_grad_(), text, caption_ids(captions), torch.zeros(4, dtype=torch.bool))
    loss = info_nce_loss(none, t)
    loss.backward()
    assert loss.item() == 0 and torch.isfinite(image.grad).all()


def test_sigmoid_loss_matches_siglip_with_multi_positives():
    image, text = _embeddings()
    captions = ["a", "b", "a", "c"]
    t, b = torch.tensor(0.1), torch.tensor(-10.0)
    batch = global_batch(image, text, caption_ids(captions), torch.ones(4, dtype=torch.bool))
    logits = F.normalize(image) @ F.normalize(text).T / t + b
    labels = torch.tensor([[1.0 if x == y else -1.0 for y in captions] for x in captions])
    expected = -F.logsigmoid(labels * logits).sum() / 4
    assert torch.allclose(sigmoid_loss(batch, t, b), expected, atol=1e-5)


@pytest.mark.parametrize("n", [32, 96, 768, 1024, 1152, 1536])
def test_hadamard_is_orthonormal_and_flat(n):
    h = hadamard(n)
    assert torch.allclose(h @ h.T, torch.eye(n, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(h.abs(), torch.full_like(h, n**-0.5))


def _teacher_batches(d=12, count=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    mixing = torch.randn(d, d, generator=g) * torch.linspace(0.05, 8, d)  # very unequal channel scales
    for _ in range(count):
        yield ImageTokens(torch.randn(8, d, generator=g) @ mixing + 5, torch.randn(8, 1, d, generator=g) @ mixing,
                          torch.randn(8, 3, 3, d, generator=g) @ mixing - 2)


@pytest.mark.parametrize("kind", ["channel", "phi-s"])
def test_target_norm_round_trip_and_unit_variance(kind, tmp_path):
    norm = TargetNorm(kind, 12)
    norm.calibrate(_teacher_batches())
    sample = next(_teacher_batches(seed=1))
    y = norm.normalize(sample)
    assert torch.allclose(norm.denormalize(y).patches, sample.patches, atol=1e-3)
    calibration = torch.cat([b.patches.reshape(-1, 12) for b in _teacher_batches()])
    variances = norm.normalize(ImageTokens(calibration, calibration[:, None], calibration[:, None, None])).patches.var(0)
    if kind == "channel":
        assert torch.allclose(variances, torch.ones(12), atol=0.05)
    else:  # PHI-S: one isotropic scale, so the variances average to 1 and are spread evenly
        assert variances.mean().item() == pytest.approx(1.0, abs=0.05) and variances.max() < 2.5
        rotation = norm.patches_rotation.double()
        assert torch.allclose(rotation @ rotation.T, torch.eye(12, dtype=torch.float64), atol=1e-5)
    head = torch.nn.Linear(5, 12)
    x = torch.randn(3, 5)
    folded = norm.fold_into(head, "patches")
    y = head(x)
    assert torch.allclose(folded(x), norm.denormalize(ImageTokens(y, y[:, None], y[:, None, None])).patches[:, 0, 0],
                          atol=1e-4)
    norm.save(tmp_path / "norm.safetensors")
    again = TargetNorm.load(tmp_path / "norm.safetensors")
    assert again.kind == kind and torch.equal(again.normalize(sample).patches, y_ := norm.normalize(sample).patches)
    assert y_.dtype == torch.float32


def test_phi_s_without_hadamard_is_a_user_error():
    with pytest.raises(UserError, match="Hadamard"):
        TargetNorm("phi-s", 10)


def _masks(indices, epoch, ratio, probability=1.0, shape="block", grid=(8, 8)):
    draws = Draws(mask=MaskConfig(8, ratio, probability, shape))  # 8 px patches: a 64 px view is an 8x8 grid
    return torch.stack([draws({}, 8 * grid[0], 0, epoch, int(i))["mask"] for i in indices])


def test_masks_exact_count_and_per_sample_determinism():
    indices = torch.tensor([3, 7, 11, 19])
    masks = _masks(indices, 5, 0.4)
    assert masks.shape == (4, 64) and (masks.sum(1) == round(0.4 * 64)).all()
    assert torch.equal(_masks(indices[2:3], 5, 0.4)[0], masks[2])  # independent of the rest of the batch
    assert not torch.equal(masks, _masks(indices, 6, 0.4))  # a new draw each epoch
    assert (_masks(indices, 5, 0.25, shape="random").sum(1) == 16).all()
    assert not _masks(indices, 5, 0.0).any()
    some = _masks(torch.arange(200), 0, 0.5, probability=0.5, grid=(4, 4))
    assert 60 < int((some.sum(1) > 0).sum()) < 140


def test_mask_and_caption_draws_are_the_published_runs_draws():
    """The streams of (seed, epoch, index) give the masks and captions the committed runs trained on: a change to
    how they are drawn (rather than what they are drawn from) must not move them."""
    draws = Draws(MaskConfig(14, 0.4, 0.5), {"short": 0.2, "medium": 0.4, "long": 0.4})
    items = [draws({"short": "s", "medium": "m", "long": "l"}, 224, 7, 3, i) for i in range(64)]
    masks = torch.stack([item["mask"] for item in items])
    assert hashlib.blake2b(masks.numpy().tobytes(), digest_size=8).hexdigest() == "94cee951032cba43"
    assert "".join(item["caption"][1] for item in items) == (
        "lssmslmslllmlmmmmmmmsssllmllmssmllmlmmmsmlsmmslmsmlmsmsllmslmslm")


def _pairs(captions, indices, epoch, weights):
    draws = Draws(caption_weights=weights)
    rows = [{k: v[r] for k, v in captions.items() if v[r] is not None} for r in range(len(indices))]
    return caption_pair([draws(row, 64, 0, epoch, int(i))["caption"] for row, i in zip(rows, indices)])


def test_caption_sampling():
    captions = {"short": ["alt a", None, "alt c"], "medium": ["med a", "med b", None], "long": [None, None, None]}
    pair = _pairs(captions, [0, 1, 2], 0, {"short": 0.0, "medium": 1.0})
    assert pair.cls1 == ["alt a", "", "alt c"] and pair.cls1_valid.tolist() == [True, False, True]
    assert pair.cls2 == ["med a", "med b", ""] and pair.cls2_valid.tolist() == [True, True, False]
    many = {"short": ["s"] * 400, "medium": ["m"] * 400, "long": ["l"] * 400}
    drawn = _pairs(many, range(400), 0, {"short": 0.2, "medium": 0.4, "long": 0.4}).cls2
    assert abs(drawn.count("s") / 400 - 0.2) < 0.07 and abs(drawn.count("l") / 400 - 0.4) < 0.08
    assert abs(drawn.count("m") / 400 - 0.4) < 0.08 and len(drawn) == 400
