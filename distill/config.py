"""Recipes as typed dataclasses: parsing, value checks, `key=value` overrides, saving.

A recipe is plain data describing one run (teacher, student, data, losses, optimiser, loop and the
compute it needs). Every mistake is a `UserError` naming the dotted key: an unknown key, a wrong
type, or a value outside its range. Overrides use the same path syntax (`loss.mask_ratio=0.3`); a
bare leaf name (`max_steps=40`) is accepted when it names exactly one key.

This module sits at the bottom of `distill`: it imports no data, loss or model code (the modules that
implement a choice key import its allowed values from here). Loading a recipe (`distill.recipe_loader`)
parses it here, then checks the rules across keys and against the registries (`distill.recipe_rules`).
"""
from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

import yaml

from common.atomic import write_atomic
from common.errors import UserError
from common.types import PRIMARY_TEACHER, TOKEN_PARTS


# Allowed values of the recipe's choice keys, defined here (the bottom of `distill`) and imported by the modules
# that implement them, so that parsing a recipe imports no data, loss or model code.
CAPTION_KEYS = ("short", "medium", "long")  # caption granularities: alt-text, then longer synthetic captions
MASK_SHAPES = ("block", "random")
DISTANCES = ("cosine", "smooth_l1", "mse")
PATCH_TOKENS = ("all", "masked")
TARGET_NORMS = ("channel", "phi-s")
EMA_MODES = ("heads", "full")
CENTERINGS = ("center", "sinkhorn")


@dataclass(frozen=True)
class CropConfig:
    """The random resized crop + flip, one object for the recipe (`data.crop`), the loaders, the cache and
    the CLI. `scale` is the crop's fraction of the image area, `ratio` its aspect range (w / h)."""

    scale: tuple[float, float] = (0.4, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5

    def __post_init__(self):
        object.__setattr__(self, "scale", tuple(float(v) for v in self.scale))
        object.__setattr__(self, "ratio", tuple(float(v) for v in self.ratio))
        if not (len(self.scale) == 2 and 0 < self.scale[0] <= self.scale[1] <= 1):
            raise UserError(f"crop scale={self.scale}: expected (min, max) with 0 < min <= max <= 1")
        if not (len(self.ratio) == 2 and 0 < self.ratio[0] <= self.ratio[1]):
            raise UserError(f"crop ratio={self.ratio}: expected (min, max) aspect ratios with 0 < min <= max")
        if not 0 <= self.flip_p <= 1:
            raise UserError(f"flip_p={self.flip_p}: expected a probability in [0, 1]")


@dataclass
class TeacherConfig:
    spec: str = ""  # anything `teachers.load_teacher` reads: hub id, directory, .npz pair, timm:<name>, micro
    image_size: int | None = None  # teacher input resolution; None: the run's teacher view (the first teacher's)
    # `teachers:` entries: the name its heads, losses, cache and `student@NAME` go by (`teacher:` is "teacher").
    name: str = ""
    weight: float = 1.0  # this teacher's share of the distillation loss (scales its cls/register/patch weights)
    tokens: list[str] = field(default_factory=lambda: list(TOKEN_PARTS))  # the token kinds it supervises
    target_norm: Literal[(*TARGET_NORMS, "none")] | None = None  # None: loss.target_norm (PHI-S per teacher: RADIOv2.5)
    # The teacher's dtype on a GPU: auto = the run's mixed precision; no = float32 (CPU teachers always run in float32).
    precision: Literal["auto", "no", "bf16", "fp16"] = "auto"


def own_input_size(teachers: list[TeacherConfig], index: int) -> int | None:
    """The input size of a run's teacher `index` when it is not the run's teacher view, else None: the primary sees
    the view (its `image_size` sets the view, `Recipe.view_sizes`), another its own `image_size`, else the view. The
    online run, its checks and the cache all read it here."""
    return teachers[index].image_size if index else None


@dataclass
class StudentConfig:
    name: str = "tipsv2-micro"  # a `students` registry name, or timm:NAME (any timm image model)
    image_size: int = 64
    # A TIPSv2 checkpoint of the same shape to start from (anything the teacher layer reads); timm:NAME: a local
    # weights file for the timm model.
    init: str | None = None
    text_init: str | None = None  # a TIPSv2 checkpoint whose text tower (same width) and tokenizer the student reuses
    tokenizer: str | None = None  # tokenizer dir / hub id for the student's text tower; default: init's, else the teacher's
    head: Literal["linear", "mlp"] = "linear"  # projection heads to the teacher width
    timm_kwargs: dict[str, Any] = field(default_factory=dict)  # timm:NAME only: timm.create_model keywords
    feature_stride: int | None = None  # timm:NAME only: the feature level's stride (null: the last level)


@dataclass
class DataConfig:
    source: str = "scenes"  # `distill.data.build_dataset` spec: folder:PATH, hf:PATH_OR_ID, wds:PATTERN, scenes
    options: dict[str, Any] = field(default_factory=dict)  # source options, e.g. {index: captions.jsonl}
    num_workers: int = 0
    shuffle: bool = True
    crop: CropConfig = field(default_factory=CropConfig)  # random resized crop + flip, shared by both sides


@dataclass
class ContrastiveConfig:
    kind: Literal["infonce", "sigmoid", "none"] = "infonce"
    weight: float = 1.0
    # student: the student's own text tower, trained; teacher: the frozen teacher tower + a trained projection.
    text_tower: Literal["student", "teacher"] = "student"
    # CLS1 always pairs with `short` (alt-text); CLS2 with one caption per image and step drawn with these weights.
    caption_weights: dict[str, float] = field(default_factory=lambda: {"short": 0.2, "medium": 0.4, "long": 0.4})
    temperature_init: float | None = None  # InfoNCE; None: the init checkpoint's temperature, else 0.07
    sigmoid_scale_init: float = 10.0  # SigLIP's initial logit scale and bias
    sigmoid_bias_init: float = -10.0


@dataclass
class LossConfig:
    distance: Literal[(*DISTANCES, "mix")] = "cosine"
    mix: dict[str, float] = field(default_factory=lambda: {"cosine": 0.9, "smooth_l1": 0.1})  # RADIO's patch mix
    cls_weight: float = 1.0
    register_weight: float = 1.0
    patch_weight: float = 1.0
    patch_tokens: Literal[PATCH_TOKENS] = "all"  # all = iBOT++ (TIPSv2); masked = iBOT ablation
    target_norm: Literal[("none", *TARGET_NORMS)] = "none"
    calibration_batches: int = 8  # teacher batches for the target statistics
    mask_ratio: float = 0.0  # fraction of patches hidden from the student; 0 disables masking
    mask_probability: float = 1.0  # fraction of images in a batch that are masked
    mask_shape: Literal[MASK_SHAPES] = "block"
    contrastive: ContrastiveConfig = field(default_factory=ContrastiveConfig)


@dataclass
class OptimConfig:
    lr: float = 1e-3
    min_lr_ratio: float = 0.0  # cosine decays to lr * min_lr_ratio
    weight_decay: float = 0.05
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    warmup_steps: int = 0
    grad_clip: float = 1.0  # max global grad norm; 0 disables


@dataclass
class ResolutionPhase:
    """From optimizer step `from_step` on, the views have these sizes (TIPSv2 models are used at 448 px; a run
    that trains at 224 px for most steps ends with a phase at 448)."""

    from_step: int
    student_size: int
    teacher_size: int | None = None  # None: the student's size


@dataclass
class TrainConfig:
    max_steps: int = 100  # optimizer steps
    batch_size: int = 16  # global images per optimizer step, over all processes and accumulation steps
    grad_accum_steps: int = 1  # the contrastive batch is batch_size / grad_accum_steps
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"  # auto: the Accelerate config decides
    gradient_checkpointing: bool = False
    compile: bool = False  # torch.compile the towers' forward passes (students' and an online TIPSv2 teacher's)
    checkpoint_every: int = 0  # optimizer steps between checkpoints; 0: only the final one
    # Later phases at other view sizes; the first phase (step 0) uses student/teacher.image_size.
    resolution_phases: list[ResolutionPhase] = field(default_factory=list)
    keep_checkpoints: int = 2
    log_every: int = 1


@dataclass
class ComputeConfig:
    """What the run's cost is estimated for; `distill.compute.estimate_compute` (or `python -m distill.compute
    RECIPE`) derives the FLOPs and GPU-hours from it and the recipe."""

    teacher_arch: str = "g14"  # a `teachers.tipsv2_sizes` key: the shape the FLOPs are counted for (the primary's)
    # With `teachers:`, each other teacher's shape by name, as a `teachers.tipsv2_sizes` key of the same vision
    # tower shape (a DINOv2-L/14 is l14); its FLOPs are counted at its own view size.
    teacher_archs: dict[str, str] = field(default_factory=dict)
    gpu: str = "H100 SXM, bf16 dense"
    gpu_peak_tflops: float = 989.0
    mfu: float = 0.4


@dataclass
class PretrainConfig:
    """TIPSv2 stage-1 pretraining (the `pretrain:` section). Masking (`loss.mask_ratio`, ...), the iBOT++/iBOT
    switch (`loss.patch_tokens: all|masked`) and caption weights (`loss.contrastive`) are the distill keys."""

    alpha: float = 1.0  # DINO CLS loss weight
    beta: float = 1.0  # iBOT(++) patch loss weight
    ema: Literal[EMA_MODES] = "heads"  # heads = TIPSv2 head-only EMA, full = EMA backbone too
    ema_momentum: float = 0.99  # cosine-ramped to 1.0 over training
    num_prototypes: int = 128
    head_hidden: int = 128
    head_bottleneck: int = 64
    student_temp: float = 0.1
    teacher_temp: float = 0.04
    centering: Literal[CENTERINGS] = "center"
    local_crops: int = 1
    local_size: int = 32
    global_crop: CropConfig = field(default_factory=lambda: CropConfig(scale=(0.4, 1.0)))  # the teacher's second view
    local_crop: CropConfig = field(default_factory=lambda: CropConfig(scale=(0.1, 0.4)))


@dataclass
class Recipe:
    """One run. Distillation has a `teacher:` section (or a `cache:` that stands in for the teacher);
    pretraining has a `pretrain:` section and no teacher (the model is its own teacher)."""

    name: str = "unnamed"
    seed: int = 0
    teacher: TeacherConfig | None = None
    student: StudentConfig = field(default_factory=StudentConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    compute: ComputeConfig | None = None
    cache: str | None = None  # a `tipsdistill cache` directory: replay its crops and teacher targets
    # Several students trained on one teacher forward (each entry as `student:`; they share its image_size).
    students: list[StudentConfig] = field(default_factory=list)
    # Several teachers distilled into the student at once (AM-RADIO), each with its own heads; the first one is the
    # primary: its view size is the run's teacher view, its text tower (if any) serves the caption term.
    teachers: list[TeacherConfig] = field(default_factory=list)
    pretrain: PretrainConfig | None = None

    @property
    def is_pretraining(self) -> bool:
        return self.pretrain is not None

    @property
    def run_teachers(self) -> list[TeacherConfig]:
        """The teachers the run distils: the `teachers:` entries when set, else `teacher:` (named "teacher")."""
        if self.teachers or self.is_pretraining:
            return self.teachers
        teacher = self.teacher or TeacherConfig()  # a cache without a teacher section stands in for one
        return [dataclasses.replace(teacher, name=teacher.name or PRIMARY_TEACHER)]

    def target_norm(self, teacher: TeacherConfig) -> str:
        return teacher.target_norm or self.loss.target_norm

    @property
    def run_students(self) -> list[StudentConfig]:
        """The students the run trains: the `students:` entries when set, else `student:`."""
        return self.students or [self.student]

    def view_sizes(self, step: int) -> tuple[int, int]:
        """(student, teacher) view sizes at optimizer step `step` (0-based: the step about to run)."""
        teachers = self.run_teachers
        teacher = teachers[0].image_size if teachers else None
        student = self.run_students[0].image_size
        teacher = teacher or student
        for phase in self.train.resolution_phases:
            if step >= phase.from_step:
                student, teacher = phase.student_size, phase.teacher_size or phase.student_size
        return student, teacher

    def phases(self) -> list[tuple[int, int, int, int]]:
        """(first step, last step + 1, student size, teacher size) of each phase."""
        starts = [0, *(p.from_step for p in self.train.resolution_phases)]
        ends = [*starts[1:], self.train.max_steps]
        return [(a, b, *self.view_sizes(a)) for a, b in zip(starts, ends)]


# ---------------------------------------------------------------- typed construction


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return " | ".join(repr(c) for c in typing.get_args(tp))
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _optional_inner(tp: Any) -> Any | None:
    """X for `X | None`, else None."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0]
    return None


def _coerce(value: Any, tp: Any, key: str) -> Any:
    inner = _optional_inner(tp)
    if inner is not None:
        return None if value is None else _coerce(value, inner, key)
    origin = typing.get_origin(tp)
    bad = UserError(f"recipe key {key!r} must be {_type_name(tp)}, got {type(value).__name__} {value!r}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise bad
        return build_section(tp, value, key)
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise bad
        return value
    if origin is dict:
        key_tp, value_tp = typing.get_args(tp)
        if not isinstance(value, dict):
            raise bad
        return {_coerce(k, key_tp, f"{key}.{k}"): _coerce(v, value_tp, f"{key}.{k}") for k, v in value.items()}
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise bad
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is tuple:
        item_tps = typing.get_args(tp)
        if not isinstance(value, (list, tuple)) or len(value) != len(item_tps):
            raise bad
        return tuple(_coerce(v, t, f"{key}[{i}]") for i, (v, t) in enumerate(zip(value, item_tps)))
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads `3e-4` (no dot) as a string
            try:
                return float(value)
            except ValueError:
                raise bad from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise bad
        return value
    raise TypeError(f"recipe field {key} has unsupported type {tp}")


def _fields(cls) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def build_section(cls, data: dict, prefix: str = ""):
    known = _fields(cls)
    kwargs = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else str(name)
        if name not in known:
            raise UserError(f"unknown recipe key {key!r}; expected one of: {', '.join(known)}")
        kwargs[name] = _coerce(value, known[name], key)
    try:
        return cls(**kwargs)
    except UserError as exc:  # a section that checks itself (e.g. the crop) names its recipe key
        raise UserError(f"recipe key {prefix!r}: {exc}") from None


# ---------------------------------------------------------------- value checks


def require(ok: bool, key: str, expected: str, value: Any) -> None:
    """A one-line `UserError` naming the recipe key, its value and what was expected, unless `ok`."""
    if not ok:
        raise UserError(f"recipe key {key!r} is {value!r}; expected {expected}")


def _check_finite(node: Any, prefix: str = "") -> None:
    """No inf or NaN anywhere: `optim.lr=inf` would only fail steps later, as a NaN loss."""
    if dataclasses.is_dataclass(node):
        for f in dataclasses.fields(node):
            _check_finite(getattr(node, f.name), f"{prefix}{f.name}.")
    elif isinstance(node, dict):
        for k, v in node.items():
            _check_finite(v, f"{prefix}{k}.")
    elif isinstance(node, (list, tuple)):
        for i, v in enumerate(node):
            _check_finite(v, f"{prefix.rstrip('.')}[{i}].")
    elif isinstance(node, float) and not math.isfinite(node):
        require(False, prefix.rstrip("."), "a finite number", node)


def validate(recipe: Recipe) -> Recipe:
    """Each key's value on its own (ranges, finiteness); rules across keys or against the registries
    (students, teachers) are `distill.recipe_rules`."""
    loss, c, train, optim = recipe.loss, recipe.loss.contrastive, recipe.train, recipe.optim
    _check_finite(recipe)
    require(recipe.seed >= 0, "seed", "an int >= 0", recipe.seed)
    for key, t in ([("teacher", recipe.teacher)] if recipe.teacher is not None else []) + [
            (f"teachers[{i}]", t) for i, t in enumerate(recipe.teachers)]:
        require(t.image_size is None or t.image_size > 0, f"{key}.image_size", "a positive int or null", t.image_size)
        require(t.weight >= 0, f"{key}.weight", "a weight >= 0", t.weight)
        require(bool(t.tokens) and all(p in TOKEN_PARTS for p in t.tokens) and len(set(t.tokens)) == len(t.tokens),
                f"{key}.tokens", f"a non-empty list of distinct token kinds among {', '.join(TOKEN_PARTS)}", t.tokens)
    for i, s in enumerate([recipe.student, *recipe.students]):
        key = "student" if i == 0 else f"students[{i - 1}]"
        require(s.image_size > 0, f"{key}.image_size", "a positive int", s.image_size)
    require(0.0 <= loss.mask_ratio < 1.0, "loss.mask_ratio", "a value in [0, 1)", loss.mask_ratio)
    require(0.0 <= loss.mask_probability <= 1.0, "loss.mask_probability", "a value in [0, 1]", loss.mask_probability)
    for name in ("cls_weight", "register_weight", "patch_weight"):
        require(getattr(loss, name) >= 0, f"loss.{name}", "a weight >= 0", getattr(loss, name))
    require(loss.calibration_batches >= 1, "loss.calibration_batches", "an int >= 1", loss.calibration_batches)
    for k, w in loss.mix.items():
        require(k in DISTANCES, f"loss.mix.{k}", f"a key among {', '.join(DISTANCES)}", k)
        require(w >= 0, f"loss.mix.{k}", "a weight >= 0", w)
    if loss.distance == "mix":
        require(sum(loss.mix.values()) > 0, "loss.mix", "at least one positive weight", loss.mix)
    require(c.weight >= 0, "loss.contrastive.weight", "a weight >= 0", c.weight)
    for k, w in c.caption_weights.items():
        require(k in CAPTION_KEYS, f"loss.contrastive.caption_weights.{k}",
               f"a key among {', '.join(CAPTION_KEYS)}", k)
        require(w >= 0, f"loss.contrastive.caption_weights.{k}", "a weight >= 0", w)
    if c.kind != "none":
        require(sum(c.caption_weights.values()) > 0, "loss.contrastive.caption_weights",
               "at least one positive weight", c.caption_weights)
    require(c.temperature_init is None or c.temperature_init > 0, "loss.contrastive.temperature_init",
           "a positive float or null", c.temperature_init)
    require(c.sigmoid_scale_init > 0, "loss.contrastive.sigmoid_scale_init", "a positive float", c.sigmoid_scale_init)
    require(recipe.data.num_workers >= 0, "data.num_workers", "an int >= 0", recipe.data.num_workers)
    require(optim.lr > 0, "optim.lr", "a positive float", optim.lr)
    require(0.0 <= optim.min_lr_ratio <= 1.0, "optim.min_lr_ratio", "a value in [0, 1]", optim.min_lr_ratio)
    require(optim.weight_decay >= 0, "optim.weight_decay", "a value >= 0", optim.weight_decay)
    require(len(optim.betas) == 2 and all(0 <= b < 1 for b in optim.betas), "optim.betas",
           "two values in [0, 1)", optim.betas)
    require(optim.warmup_steps >= 0, "optim.warmup_steps", "an int >= 0", optim.warmup_steps)
    require(optim.grad_clip >= 0, "optim.grad_clip", "a value >= 0 (0 disables)", optim.grad_clip)
    require(train.max_steps >= 1, "train.max_steps", "an int >= 1", train.max_steps)
    require(train.batch_size >= 1, "train.batch_size", "an int >= 1", train.batch_size)
    require(train.grad_accum_steps >= 1, "train.grad_accum_steps", "an int >= 1", train.grad_accum_steps)
    require(train.batch_size % train.grad_accum_steps == 0, "train.batch_size",
           f"a multiple of train.grad_accum_steps ({train.grad_accum_steps})", train.batch_size)
    require(train.checkpoint_every >= 0, "train.checkpoint_every", "an int >= 0 (0: final only)",
           train.checkpoint_every)
    require(train.keep_checkpoints >= 1, "train.keep_checkpoints", "an int >= 1", train.keep_checkpoints)
    require(train.log_every >= 1, "train.log_every", "an int >= 1", train.log_every)
    return recipe


# ---------------------------------------------------------------- overrides, saving


def _plain(value: Any) -> Any:
    """Tuples as lists, so the dict dumps as plain YAML and compares equal to a reloaded one."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def recipe_to_dict(recipe: Recipe) -> dict:
    return _plain(dataclasses.asdict(recipe))


def _leaf_paths(tp: Any, prefix: str = "") -> list[str]:
    tp = _optional_inner(tp) or tp
    if not dataclasses.is_dataclass(tp):
        return [prefix]
    return [p for name, sub in _fields(tp).items() for p in _leaf_paths(sub, f"{prefix}.{name}" if prefix else name)]


def _resolve_key(key: str) -> list[str]:
    """Dotted path into the recipe; a bare leaf name is accepted when it is unique."""
    leaves = _leaf_paths(Recipe)
    if "." in key or key in leaves:
        return key.split(".")
    matches = [p for p in leaves if p.rsplit(".", 1)[-1] == key]
    if len(matches) == 1:
        return matches[0].split(".")
    if not matches:
        raise UserError(f"unknown recipe key {key!r}; use a dotted path such as train.max_steps")
    raise UserError(f"recipe key {key!r} is ambiguous ({', '.join(matches)}); use the dotted path")


def _parse_override_value(raw: str, tp: Any) -> Any:
    base = _optional_inner(tp) or tp
    if raw.lower() in ("null", "none", "~") and base is not tp:
        return None
    literal_strings = typing.get_origin(base) is Literal and all(isinstance(c, str) for c in typing.get_args(base))
    if base is str or literal_strings:
        return raw  # `teacher.spec=123` stays a string
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw


def check_overrides_unique(overrides: list[str]) -> None:
    """A key given twice on one command line is a slip (an unquoted `data.source={a,b}` the shell expanded into
    two overrides), not a choice: only one would take effect, silently."""
    seen = {}
    for item in overrides:
        if "=" not in item:
            continue  # apply_overrides says what is wrong with it
        key = ".".join(_resolve_key(item.split("=", 1)[0].strip()))
        if key in seen:
            raise UserError(f"recipe key {key!r} is given twice ({seen[key]!r}, {item!r}); expected it once "
                            "(quote a value with braces: the shell expands {a,b} into two overrides)")
        seen[key] = item


def override_data(recipe: Recipe, overrides: list[str]) -> tuple[dict, set[str]]:
    """`recipe` as a dict with the `key=value` overrides set, and the sections (first two path parts) they
    touched; `distill.recipe_loader.apply_overrides` checks the result."""
    data = recipe_to_dict(recipe)
    overridden = set()
    for item in overrides:
        if "=" not in item:
            raise UserError(f"override {item!r} is not key=value (e.g. train.max_steps=40)")
        key, raw = item.split("=", 1)
        path = _resolve_key(key.strip())
        node, tp = data, Recipe
        for depth, name in enumerate(path[:-1]):
            sub_tp = _optional_inner(tp) or tp
            dotted = ".".join(path[: depth + 1])
            if dataclasses.is_dataclass(sub_tp):
                fields_ = _fields(sub_tp)
                if name not in fields_:
                    raise UserError(f"unknown recipe key {dotted!r}; expected one of: {', '.join(fields_)}")
                tp = fields_[name]
                if node.get(name) is None and dataclasses.is_dataclass(_optional_inner(tp) or tp):
                    node[name] = recipe_to_dict((_optional_inner(tp) or tp)())
                node = node[name]
            else:
                raise UserError(f"recipe key {dotted!r} is not a section")
        leaf = path[-1]
        parent_tp = _optional_inner(tp) or tp
        if dataclasses.is_dataclass(parent_tp):
            fields_ = _fields(parent_tp)
            if leaf not in fields_:
                raise UserError(f"unknown recipe key {'.'.join(path)!r}; expected one of: {', '.join(fields_)}")
            node[leaf] = _parse_override_value(raw, fields_[leaf])
        elif typing.get_origin(parent_tp) is dict:
            node[leaf] = _parse_override_value(raw, typing.get_args(parent_tp)[1])  # e.g. loss.mix.cosine=0.5
        else:
            raise UserError(f"recipe key {'.'.join(path[:-1])!r} is not a section")
        overridden.add(".".join(path[:2]))
    return data, overridden


def dump_recipe(recipe: Recipe) -> str:
    return yaml.safe_dump(recipe_to_dict(recipe), sort_keys=False)


def save_recipe(recipe: Recipe, path: str | os.PathLike) -> None:
    text = dump_recipe(recipe)
    write_atomic(path, lambda tmp: tmp.write_text(text))


def flat_recipe(recipe: Recipe) -> dict[str, Any]:
    """Dotted keys -> scalars (lists, mappings and None as strings), for TensorBoard hparams."""
    out: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        for f in dataclasses.fields(node):
            value, key = getattr(node, f.name), f"{prefix}{f.name}"
            if dataclasses.is_dataclass(value):
                walk(value, f"{key}.")
            else:
                out[key] = value if isinstance(value, (int, float, str, bool)) else str(value)

    walk(recipe, "")
    return out
