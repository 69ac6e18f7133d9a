"""A stub model with the teacher interface for the evaluation tests (imported by tests/test_eval_*.py)."""
import pytest
import torch
import torch.nn.functional as F

from teachers.base import PIXEL_OVERSHOOT
from common.types import ImageTokens

COLOURS = {"background": (0, 0, 0), "red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255)}


def _one_hot_colour(rgb: torch.Tensor) -> torch.Tensor:
    """(..., 3) RGB in [0,1] -> (..., 4) [R, G, B, darkness]: the four scene colours are orthogonal."""
    return torch.cat([rgb, 1 - rgb.max(-1, keepdim=True).values], -1)


class ColourModel(torch.nn.Module):
    """Stub with the teacher interface: a patch's feature is its mean colour, a prompt's embedding the colour
    it names, the four classes orthogonal. With 2 px patches every pixel's bilinear weight on its own patch
    is 0.75^2 > 1/2, so on solid-colour scenes it segments perfectly."""

    has_text = True
    fingerprint = "colour-stub"

    def __init__(self, patch_size=2, image_size=32):
        super().__init__()
        self.patch_size, self.image_size = patch_size, image_size
        self.shapes = []

    def encode_image(self, pixels, value_trick=False):
        assert pixels.shape[-2] % self.patch_size == 0 and pixels.shape[-1] % self.patch_size == 0
        # Unclamped bicubic resizing (the official protocol) may overshoot [0,1] as much as teachers tolerate.
        assert -PIXEL_OVERSHOOT <= pixels.min() and pixels.max() <= 1 + PIXEL_OVERSHOOT
        self.shapes.append(tuple(pixels.shape))
        patches = _one_hot_colour(F.avg_pool2d(pixels, self.patch_size).permute(0, 2, 3, 1))
        return ImageTokens(patches.mean((1, 2)), patches.mean((1, 2))[:, None], patches)

    def encode_text(self, texts):
        rgb = [torch.tensor(COLOURS[max((c for c in COLOURS if c in t), key=len)], dtype=torch.float32) / 255
               for t in texts]
        return F.normalize(_one_hot_colour(torch.stack(rgb)), dim=-1)


class RandomFeatureModel(torch.nn.Module):
    """Stub with the teacher interface: a fixed random patch embedding (every window gets its own features)."""

    has_text = True
    fingerprint = "random-stub"

    def __init__(self, patch_size=8, width=16, seed=0):
        super().__init__()
        self.patch_size, self.image_size = patch_size, 32
        self.embed = torch.nn.Conv2d(3, width, patch_size, patch_size)
        torch.nn.init.normal_(self.embed.weight, generator=torch.Generator().manual_seed(seed))

    def encode_image(self, pixels, value_trick=False):
        patches = self.embed(pixels).permute(0, 2, 3, 1)
        return ImageTokens(patches.mean((1, 2)), patches[:, :1, 0], patches)


@pytest.fixture(scope="module")
def single_thread():
    """The probes train tiny heads: on a loaded two-core machine, two threads spend a step syncing (40x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
