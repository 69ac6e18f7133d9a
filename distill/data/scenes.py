"""Built-in procedural scenes: coloured objects standing on a textured floor in front of a textured wall,
with exact per-pixel classes, exact per-pixel depth and captions at three granularities.

This is the data of the embedded default (no download): the micro teacher is pretrained on the train
split, every choice (teacher step count, recipe settings) is made on the validation split, and teacher and
students are reported on the held-out split.

Modelled on ADE20K, the paper's benchmark: every pixel belongs to a class that the captions name and
that looks like something, and no class is a catch-all "background".
- Stuff classes are surface materials (`MATERIALS`: snow, asphalt, sand, wood, stone), each with its own
  tone and texture, as ADE20K's grass, sand or sky have theirs; the wall and the floor never share one.
  Why materials and not bare textures: a micro TIPSv2 teacher pretrained on striped / checkered / dotted /
  noisy surfaces did not learn those words at all (texture zero-shot accuracy 25%, chance, on held-out
  scenes after 600 and 2400 steps), which made four classes as unnameable as a "background".
- Thing classes are object colours (`COLOURS`), not colour-shape pairs: at micro scale colour words align
  with patches and shape words hardly at all, so colour-shape classes would make zero-shot segmentation a
  shape lottery. Shapes still vary in the pixels and in every caption. Objects in one scene never share a
  colour, so every object pixel has exactly one right class.

Geometry (a pinhole camera `CAMERA_HEIGHT` metres above a flat floor, focal length = image size in
pixels, horizon at row `horizon`): the floor at pixel row y is at depth f * h / (y + 0.5 - horizon), so it
recedes upward until it meets the wall, a fronto-parallel plane at depth `wall_depth`. Objects are
upright billboards standing on the floor: an object at depth Z has its base on the floor row of depth Z
and a pixel size of f * (metric size) / Z, so nearer objects are larger and lower. They are painted far
to near, so the depth map is that of the visible surface, exactly.

Every scene is a pure function of (seed, split, index): the train, validation and held-out splits draw from
disjoint seed sequences, and the class and depth maps are the very arrays the image is painted through.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageDraw

from distill.data.sample import CAPTION_KEYS, Sample
from common.errors import UserError

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 210, 40),
    "purple": (150, 50, 200),
}
SHAPES = ("circle", "square", "triangle")


@dataclass(frozen=True)
class Material:
    tone: tuple[int, int, int]  # low saturation: far from every object colour
    texture: str  # striped | checkered | dotted | noisy
    contrast: tuple[float, float]  # texture amplitude range


MATERIALS: dict[str, Material] = {
    "snow": Material((228, 230, 236), "noisy", (4, 9)),
    "asphalt": Material((62, 62, 68), "noisy", (10, 18)),
    "sand": Material((198, 176, 124), "dotted", (14, 22)),
    "wood": Material((118, 82, 50), "striped", (14, 22)),
    "stone": Material((128, 128, 130), "checkered", (14, 22)),
}
STUFF_CLASSES: tuple[str, ...] = tuple(MATERIALS)
THING_CLASSES: tuple[str, ...] = tuple(COLOURS)
SCENE_CLASSES: tuple[str, ...] = (*STUFF_CLASSES, *THING_CLASSES)
# Disjoint seed streams: train for training, validation for every choice (step counts, recipes, the lab's
# settings), heldout only for the figures reported after the choices are made.
SPLITS = {"train": 0, "heldout": 1, "validation": 2}

CAMERA_HEIGHT = 1.5  # metres
_HORIZON = (0.05, 0.2)  # horizon row as a fraction of the image height
_WALL_DEPTH = (6.0, 10.0)  # metres
_OBJECT_DEPTH = (1.8, 3.6)  # metres: near enough that objects span several 8-px patches at 64 px
_OBJECT_RADIUS = (0.45, 0.65)  # metres
# Base of each shape below its centre, in radii (the shapes drawn by `_shape_polygon`).
_BASE_BELOW_CENTRE = {"circle": 1.0, "square": 0.85, "triangle": 0.55}
_SIZE_WORDS = ((13.0, "small"), (18.0, "medium"), (float("inf"), "large"))  # pixel radius at 64 px
# P(0, 1, 2, 3 objects): some empty rooms, so the surfaces are also seen alone.
_OBJECT_COUNT_P = (0.1, 0.35, 0.35, 0.2)


@dataclass(frozen=True)
class SceneObject:
    colour: str
    shape: str
    cx: float  # pixels
    cy: float
    radius: float  # pixels
    depth: float  # metres

    @property
    def class_id(self) -> int:
        return SCENE_CLASSES.index(self.colour)


@dataclass(frozen=True)
class Scene:
    image: Image.Image
    mask: np.ndarray  # (H, W) uint8, k = SCENE_CLASSES[k]
    depth: np.ndarray  # (H, W) float32, metres along the optical axis
    objects: tuple[SceneObject, ...]  # far to near (paint order)
    wall: str  # a MATERIALS name
    floor: str
    captions: dict[str, str]


def _rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, SPLITS[split], index]))


def _surface(rng: np.random.Generator, size: int, material: Material) -> np.ndarray:
    """(size, size, 3) float32 surface: the material's tone (jittered per scene) and texture; pattern scales
    follow the image size."""
    base = np.asarray(material.tone, dtype=np.float32) * rng.uniform(0.92, 1.08)
    texture = material.texture
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    scale = size / 64
    if texture == "striped":
        angle = rng.uniform(0, np.pi)
        period = rng.uniform(6, 14) * scale
        pattern = np.sign(np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period))
    elif texture == "checkered":
        cell = max(2, int(rng.integers(5, 11) * scale))
        pattern = (((xx // cell) + (yy // cell)) % 2) * 2 - 1
    elif texture == "dotted":
        spacing = rng.uniform(6, 10) * scale
        radius = rng.uniform(0.18, 0.28) * spacing
        dy, dx = (yy % spacing) - spacing / 2, (xx % spacing) - spacing / 2
        pattern = np.where(dx * dx + dy * dy <= radius * radius, 1.0, -0.4)
    else:
        pattern = rng.uniform(-1, 1, (size, size)).astype(np.float32)
    contrast = rng.uniform(*material.contrast)
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


def _object_region(obj: SceneObject, size: int) -> np.ndarray:
    """(size, size) bool: the pixels PIL paints for this object."""
    layer = Image.new("1", (size, size), 0)
    draw = ImageDraw.Draw(layer)
    polygon = _shape_polygon(obj)
    if polygon is None:
        r = obj.radius
        draw.ellipse([obj.cx - r, obj.cy - r, obj.cx + r, obj.cy + r], fill=1)
    else:
        draw.polygon(polygon, fill=1)
    return np.asarray(layer, dtype=bool)


def floor_row(depth: float, horizon: float, size: int) -> float:
    """The image row (continuous, pixel centres at k + 0.5) where the floor is at `depth` metres."""
    return horizon + size * CAMERA_HEIGHT / depth


def _place_objects(rng: np.random.Generator, size: int, horizon: float) -> tuple[SceneObject, ...]:
    count = int(rng.choice(len(_OBJECT_COUNT_P), p=_OBJECT_COUNT_P))
    colours = rng.choice(list(COLOURS), size=count, replace=False)
    objects: list[SceneObject] = []
    for colour in colours:
        shape = str(rng.choice(SHAPES))
        for _ in range(30):  # rejection sampling: objects overlap at most slightly, may leave the frame a little
            depth = rng.uniform(*_OBJECT_DEPTH)
            radius = size * rng.uniform(*_OBJECT_RADIUS) / depth
            cy = floor_row(depth, horizon, size) - _BASE_BELOW_CENTRE[shape] * radius
            cx = rng.uniform(0.75 * radius, size - 0.75 * radius)
            if all(np.hypot(cx - o.cx, cy - o.cy) > 0.9 * (radius + o.radius) for o in objects):
                objects.append(SceneObject(str(colour), shape, float(cx), float(cy), float(radius), float(depth)))
                break
    return tuple(sorted(objects, key=lambda o: -o.depth))


def _size_word(obj: SceneObject, size: int) -> str:
    r64 = obj.radius * 64 / size
    return next(word for bound, word in _SIZE_WORDS if r64 <= bound)


def _position_words(obj: SceneObject, size: int) -> str:
    def third(v: float) -> int:
        return min(2, max(0, int(3 * v / size)))

    vertical = ("top", "middle", "bottom")[third(obj.cy)]
    horizontal = ("left", "center", "right")[third(obj.cx)]
    if vertical == "middle" and horizontal == "center":
        return "in the center"
    if vertical == "middle":
        return f"on the {horizontal}"
    if horizontal == "center":
        return f"at the {vertical}"
    return f"at the {vertical} {horizontal}"


def _article(word: str) -> str:
    return f"{'an' if word[0] in 'aeiou' else 'a'} {word}"


def _captions(objects: tuple[SceneObject, ...], wall: str, floor: str, size: int) -> dict[str, str]:
    room = f"{_article(floor)} floor in front of {_article(wall)} wall"
    room_long = (f"a {MATERIALS[floor].texture} {floor} floor in front of a {MATERIALS[wall].texture} {wall} wall")
    if not objects:
        # Alt-text is terse and partial on the web: it names the most prominent thing only.
        return {"short": f"{_article(floor)} floor", "medium": f"an empty room: {room}",
                "long": f"no objects, only {room_long}"}
    near_first = objects[::-1]
    names = [f"a {o.colour} {o.shape}" for o in near_first]
    largest = max(objects, key=lambda o: o.radius)
    long_parts = [f"a {_size_word(o, size)} {o.colour} {o.shape} {_position_words(o, size)}" for o in near_first]
    return {
        "short": f"a {largest.colour} {largest.shape}",
        "medium": f"{' and '.join(names)} on {room}",
        "long": f"{' and '.join(long_parts)}, standing on {room_long}",
    }


def make_scene(seed: int, split: str, index: int, size: int = 64) -> Scene:
    if split not in SPLITS:
        raise UserError(f"scene split {split!r} is unknown; expected one of {sorted(SPLITS)}")
    if size < 32:
        raise UserError(f"scene size {size} is too small; expected at least 32 px")
    rng = _rng(seed, split, index)
    horizon = rng.uniform(*_HORIZON) * size
    wall_depth = rng.uniform(*_WALL_DEPTH)
    wall, floor = (str(m) for m in rng.choice(STUFF_CLASSES, size=2, replace=False))
    rows = np.arange(size, dtype=np.float64) + 0.5
    with np.errstate(divide="ignore"):
        floor_depth = np.where(rows > horizon, size * CAMERA_HEIGHT / (rows - horizon), np.inf)
    is_floor = np.broadcast_to((floor_depth < wall_depth)[:, None], (size, size))
    depth = np.where(is_floor, floor_depth[:, None], wall_depth).astype(np.float32)
    mask = np.where(is_floor, SCENE_CLASSES.index(floor), SCENE_CLASSES.index(wall)).astype(np.uint8)
    pixels = np.where(is_floor[..., None], _surface(rng, size, MATERIALS[floor]), _surface(rng, size, MATERIALS[wall]))
    objects = _place_objects(rng, size, horizon)
    for obj in objects:  # far to near: nearer objects occlude farther ones
        region = _object_region(obj, size)
        # A little shading per object so colour, not one exact RGB value, is what identifies it.
        shade = np.asarray(COLOURS[obj.colour], np.float32) * rng.uniform(0.85, 1.1) + rng.normal(0, 6, (size, size, 3))
        pixels[region] = shade[region]
        mask[region] = obj.class_id
        depth[region] = obj.depth
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    return Scene(image, mask, depth, objects, wall, floor, _captions(objects, wall, floor, size))


class SceneDataset(torch.utils.data.Dataset):
    """`length` deterministic scenes of one split; item i is always the same image, captions, classes and depth."""

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
        return Sample(scene.image, captions=dict(scene.captions), index=index)

    def caption_counts(self) -> dict[str, int]:
        return dict.fromkeys(CAPTION_KEYS, self.length)  # every scene has all three granularities

    def item_name(self, index: int) -> str:
        return f"{self.split}_{self.seed}_{index:06d}"


def caption_corpus(length: int = 2000, seed: int = 0, size: int = 64) -> list[str]:
    """Every caption granularity of `length` train scenes plus class-name prompts: the tokenizer's corpus."""
    # Prompts put the evaluation's words and punctuation ("a photo of a red.") into the vocabulary.
    corpus = [f"a photo of a {name}." for name in SCENE_CLASSES]
    for i in range(length):
        corpus.extend(make_scene(seed, "train", i, size).captions.values())
    return corpus
