"""Built-in procedural scenes: coloured shapes on muted textured backgrounds, with exact masks and captions.

This is the data of the embedded default (no download): the micro teacher is pretrained on the train
split and teacher and students are evaluated by zero-shot segmentation on the held-out split.

Classes are colours (`SCENE_CLASSES`: background + one class per colour), not colour-shape pairs.
Why: a CPU prototype showed patch-text alignment for colour words emerging clearly and for shape words
hardly at all, so with colour-shape classes zero-shot segmentation mostly measures a shape lottery among
same-coloured classes. Colour classes keep the task measurable (object-pixel chance = 1/#colours) while
shapes still vary in the pixels and in every caption. Two objects in one image never share a colour, so
every object pixel has exactly one right class.

Every scene is a pure function of (seed, split, index): the train and held-out splits draw from disjoint
seed sequences, and the mask is the very array the objects are painted through, so it is exact.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageDraw

from distill.data.sample import Sample
from teachers.errors import UserError

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 210, 40),
    "purple": (150, 50, 200),
}
SHAPES = ("circle", "square", "triangle")
TEXTURES = ("striped", "checkered", "noisy")
# Muted, low-saturation background tones: far from every object colour in hue and saturation.
BACKGROUND_TONES: dict[str, tuple[int, int, int]] = {
    "grey": (128, 128, 128),
    "beige": (170, 160, 140),
    "brown": (120, 105, 90),
    "slate": (105, 115, 125),
}
SCENE_CLASSES: tuple[str, ...] = ("background", *COLOURS)
SPLITS = {"train": 0, "heldout": 1}

# Radius range at 64 px (scaled with the image size): objects span several 8-px patches.
_RADIUS_64 = (14, 24)
_SIZE_WORDS = ((17, "small"), (20, "medium"), (24, "large"))
# P(0, 1, 2 objects). Empty scenes are what gives the word "background" a meaning of its own: every
# caption mentions the background, so without them the text tower never ties "background" to pixels
# and zero-shot segmentation cannot name the background class.
_OBJECT_COUNT_P = (0.15, 0.45, 0.4)


@dataclass(frozen=True)
class SceneObject:
    colour: str
    shape: str
    cx: float
    cy: float
    radius: float

    @property
    def class_id(self) -> int:
        return SCENE_CLASSES.index(self.colour)


@dataclass(frozen=True)
class Scene:
    image: Image.Image
    mask: np.ndarray  # (H, W) uint8, 0 = background, k = SCENE_CLASSES[k]
    objects: tuple[SceneObject, ...]
    tone: str
    texture: str
    captions: dict[str, str]


def _rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, SPLITS[split], index]))


def _texture(rng: np.random.Generator, size: int, texture: str, tone: tuple[int, int, int]) -> np.ndarray:
    base = np.asarray(tone, dtype=np.float32)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    if texture == "striped":
        angle = rng.uniform(0, np.pi)
        period = rng.uniform(6, 14) * size / 64
        pattern = np.sign(np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period))
    elif texture == "checkered":
        cell = max(2, int(rng.integers(5, 11) * size / 64))
        pattern = (((xx // cell) + (yy // cell)) % 2) * 2 - 1
    else:
        pattern = rng.uniform(-1, 1, (size, size)).astype(np.float32)
    contrast = rng.uniform(12, 25)
    image = base[None, None, :] + contrast * pattern[..., None]
    return np.clip(image + rng.normal(0, 3, image.shape), 0, 255)


def _shape_polygon(obj: SceneObject) -> list[tuple[float, float]] | None:
    if obj.shape == "square":
        h = obj.radius * 0.85
        return [(obj.cx - h, obj.cy - h), (obj.cx + h, obj.cy - h), (obj.cx + h, obj.cy + h), (obj.cx - h, obj.cy + h)]
    if obj.shape == "triangle":
        r = obj.radius * 1.1
        angles = np.deg2rad([-90, 30, 150])
        return [(obj.cx + r * np.cos(a), obj.cy + r * np.sin(a)) for a in angles]
    return None


def _paint(mask: Image.Image, obj: SceneObject) -> None:
    draw = ImageDraw.Draw(mask)
    polygon = _shape_polygon(obj)
    if polygon is None:
        r = obj.radius
        draw.ellipse([obj.cx - r, obj.cy - r, obj.cx + r, obj.cy + r], fill=obj.class_id)
    else:
        draw.polygon(polygon, fill=obj.class_id)


def _place_objects(rng: np.random.Generator, size: int) -> tuple[SceneObject, ...]:
    scale = size / 64
    count = int(rng.choice(3, p=_OBJECT_COUNT_P))
    colours = rng.choice(list(COLOURS), size=count, replace=False)
    objects: list[SceneObject] = []
    for colour in colours:
        for _ in range(30):  # rejection sampling: objects overlap at most slightly, may leave the frame a little
            radius = rng.uniform(*_RADIUS_64) * scale
            cx, cy = rng.uniform(0.75 * radius, size - 0.75 * radius, 2)
            if all(np.hypot(cx - o.cx, cy - o.cy) > 0.9 * (radius + o.radius) for o in objects):
                objects.append(SceneObject(str(colour), str(rng.choice(SHAPES)), float(cx), float(cy), float(radius)))
                break
    return tuple(objects)


def _size_word(obj: SceneObject, size: int) -> str:
    r64 = obj.radius * 64 / size
    return next(word for bound, word in _SIZE_WORDS if r64 <= bound + 1e-6)


def _position_words(obj: SceneObject, size: int) -> str:
    def third(v: float) -> int:
        return min(2, int(3 * v / size))

    vertical = ("top", "middle", "bottom")[third(obj.cy)]
    horizontal = ("left", "center", "right")[third(obj.cx)]
    if vertical == "middle" and horizontal == "center":
        return "in the center"
    if vertical == "middle":
        return f"on the {horizontal}"
    if horizontal == "center":
        return f"at the {vertical}"
    return f"at the {vertical} {horizontal}"


def _captions(objects: tuple[SceneObject, ...], tone: str, texture: str, size: int) -> dict[str, str]:
    if not objects:
        return {"short": f"a {texture} background", "medium": f"nothing but a {texture} background",
                "long": f"no objects, only a {tone} {texture} background"}
    names = [f"a {o.colour} {o.shape}" for o in objects]
    # Alt-text is terse and partial on the web: it names the largest object only.
    largest = max(objects, key=lambda o: o.radius)
    long_parts = [f"a {_size_word(o, size)} {o.colour} {o.shape} {_position_words(o, size)}" for o in objects]
    return {
        "short": f"a {largest.colour} {largest.shape}",
        "medium": f"{' and '.join(names)} on a {texture} background",
        "long": f"{' and '.join(long_parts)}, on a {tone} {texture} background",
    }


def make_scene(seed: int, split: str, index: int, size: int = 64) -> Scene:
    if split not in SPLITS:
        raise UserError(f"scene split {split!r} is unknown; expected one of {sorted(SPLITS)}")
    if size < 32:
        raise UserError(f"scene size {size} is too small; expected at least 32 px")
    rng = _rng(seed, split, index)
    tone = str(rng.choice(list(BACKGROUND_TONES)))
    texture = str(rng.choice(TEXTURES))
    pixels = _texture(rng, size, texture, BACKGROUND_TONES[tone])
    objects = _place_objects(rng, size)
    mask_image = Image.new("L", (size, size), 0)
    for obj in objects:
        _paint(mask_image, obj)
    mask = np.asarray(mask_image, dtype=np.uint8).copy()
    for obj in objects:
        # A little shading per object so colour, not one exact RGB value, is what identifies it.
        shade = np.asarray(COLOURS[obj.colour], np.float32) * rng.uniform(0.85, 1.1) + rng.normal(0, 6, (size, size, 3))
        region = mask == obj.class_id
        pixels[region] = shade[region]
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    return Scene(image, mask, objects, tone, texture, _captions(objects, tone, texture, size))


class SceneDataset(torch.utils.data.Dataset):
    """`length` deterministic scenes of one split; item i is always the same image, captions and mask."""

    def __init__(self, split: str = "train", size: int = 64, length: int = 1000, seed: int = 0):
        if split not in SPLITS:
            raise UserError(f"scene split {split!r} is unknown; expected one of {sorted(SPLITS)}")
        if length < 1:
            raise UserError(f"scene dataset length {length} must be at least 1")
        self.split, self.size, self.length, self.seed = split, size, length, seed
        self.classes = SCENE_CLASSES

    def __len__(self) -> int:
        return self.length

    def scene(self, index: int) -> Scene:
        if not 0 <= index < self.length:
            raise IndexError(index)
        return make_scene(self.seed, self.split, index, self.size)

    def __getitem__(self, index: int) -> Sample:
        scene = self.scene(index)
        return Sample(image=scene.image, captions=dict(scene.captions), index=index)

    def segmentation_item(self, index: int) -> tuple[str, Image.Image, np.ndarray]:
        """(name, RGB image, mask uint8 HxW with 0 = background and k = SCENE_CLASSES[k])."""
        scene = self.scene(index)
        return f"{self.split}_{self.seed}_{index:06d}", scene.image, scene.mask


def caption_corpus(length: int = 2000, seed: int = 0, size: int = 64) -> list[str]:
    """Every caption granularity of `length` train scenes plus class-name prompts: the tokenizer's corpus."""
    # Prompts put the evaluation's words and punctuation ("a photo of a red.") into the vocabulary.
    corpus = [f"a photo of a {name}." for name in SCENE_CLASSES]
    for i in range(length):
        corpus.extend(make_scene(seed, "train", i, size).captions.values())
    return corpus
