"""`tipsdistill cache --teacher SPEC --data DATA --out DIR --augmentations K`: teacher targets, computed once.

Under `accelerate launch` or torchrun (one node or several, sharing --out) every process computes its share
of the shards; the result is the one-process build's, byte for byte.

With `--recipe RECIPE [key=value ...]` the teacher, data, crop options, seed and teacher resolution come
from the distill recipe (the flags still win), so the cache matches that run by construction. A recipe with
`teachers:` gets every teacher's targets, each in its own cache in OUT/NAME/ (`distill.cache.teacher_set`).
"""
from __future__ import annotations

import argparse


def _pair(text: str) -> tuple[float, float]:
    try:
        low, high = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not MIN,MAX (two numbers)") from None
    return low, high


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "cache", help="run the teacher once and store its targets for K crops per image",
        description="Store a teacher's CLS, register and patch tokens for K augmentations of every image "
                    "(with the crop parameters), so `tipsdistill distill cache=DIR` trains without the teacher. "
                    "Rerunning the same command finishes an interrupted build. Under `accelerate launch` "
                    "the processes share the shards.")
    parser.add_argument("--recipe", help="take teacher (or teachers:), data, crops, seed and resolution from this "
                                         "distill recipe")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="recipe overrides (with --recipe)")
    parser.add_argument("--teacher", help="teacher spec (as for distill: dir, hub id, npz:, timm:); not with a "
                                          "recipe's teachers:, which are all cached")
    parser.add_argument("--data", help="data spec (folder:PATH, hf:PATH, wds:PATTERN, scenes[:split], DIR)")
    parser.add_argument("--data-option", action="append", default=[], metavar="KEY=VALUE",
                        help="a data source option, as the recipe's data.options (repeatable), e.g. length=512")
    parser.add_argument("--out", required=True, help="cache directory or fsspec URL (s3://, gs://, hf://, ...); "
                                                     "created; an existing cache is resumed")
    parser.add_argument("--augmentations", type=int, required=True, metavar="K", help="crops stored per image")
    parser.add_argument("--dtype", default="bf16", help="storage precision: bf16 (default) or fp16")
    parser.add_argument("--compress", default="none", metavar="none|int8|pca:N",
                        help="patch-token storage: none, per-token int8, or N PCA components")
    parser.add_argument("--shard-size", type=int, default=256, metavar="N",
                        help="images per shard (default 256); a wds: cache has one shard per data shard")
    parser.add_argument("--image-size", type=int, default=None, metavar="S",
                        help="teacher input resolution (default: the recipe's teacher/student size, else the "
                             "teacher's native size); must equal the distill run's")
    parser.add_argument("--seed", type=int, default=None, help="crop seed (default: the recipe's, else 0); the "
                                                                "distill run's seed replays its first K epochs exactly")
    parser.add_argument("--crop-scale", type=_pair, default=None, metavar="MIN,MAX")
    parser.add_argument("--crop-ratio", type=_pair, default=None, metavar="MIN,MAX")
    parser.add_argument("--flip-p", type=float, default=None)
    parser.add_argument("--batch-size", type=int, default=32, help="teacher batch size")
    parser.add_argument("--device", default=None, help="default: this process's GPU when there is one, else cpu")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from distill.cache.writer import CacheSettings
    from distill.config import DataConfig, Recipe
    from distill.recipe_loader import load_recipe
    from distill.processes import launched
    from distill.cache.store import is_remote
    from common.errors import UserError
    from common.lock import OutputLock

    if args.overrides and not args.recipe:
        raise UserError(f"recipe overrides {' '.join(args.overrides)} need --recipe")
    recipe = load_recipe(args.recipe, args.overrides) if args.recipe else Recipe(data=DataConfig(source=""))
    if recipe.teachers and args.teacher:
        raise UserError("--teacher with a recipe that lists teachers:; name the teachers in the recipe")
    recipe_teacher = recipe.run_teachers[0].spec if recipe.run_teachers else ""
    teacher_spec, data = args.teacher or recipe_teacher, args.data or recipe.data.source
    if not teacher_spec or not data:
        raise UserError("cache needs a teacher and data: --teacher SPEC --data DATA, or --recipe with "
                        "teacher.spec and data.source")
    settings = CacheSettings(args.augmentations, args.dtype, args.compress, args.shard_size, args.batch_size)
    settings.validate()
    processes, device = launched(cpu=args.device == "cpu")
    # A URL has no lock (an object store has no flock): one build at a time there.
    lock = None if is_remote(args.out) else OutputLock(args.out)
    try:
        if lock is not None:
            # Before the teacher loads: a busy or unwritable --out fails at once; the main process alone holds it.
            processes.main_first(lambda: lock.acquire() and None)
        return _build(args, recipe, teacher_spec, data, settings, processes, args.device or device)
    finally:
        if lock is not None:
            lock.release()


def _build(args: argparse.Namespace, recipe, teacher_spec: str, data: str, settings, processes, device) -> int:
    import time

    from torch.utils.data import IterableDataset

    from distill.cache.manifest import Preprocessing, dataset_identity
    from distill.cache.teacher_set import build_teacher_set
    from distill.cache.writer import build_cache
    from distill.commands import data_options
    from distill.data import CropConfig, DataStats, build_dataset
    from teachers import load_teacher, teacher_dtype
    from common.errors import UserError

    d = recipe.data
    crop = CropConfig(args.crop_scale or d.crop.scale, args.crop_ratio or d.crop.ratio,
                      d.crop.flip_p if args.flip_p is None else args.flip_p)
    options = {**(d.options if args.data is None else {}), **data_options(args.data_option)}
    dataset = build_dataset(data, **options)
    stream = isinstance(dataset, IterableDataset)

    def load(spec: str):
        return load_teacher(spec, dtype=teacher_dtype(str(device), "bf16"), device=device)

    def preprocessing(size: int) -> Preprocessing:
        return Preprocessing(dataset=dataset_identity(data), data_options=options,
                             dataset_length=None if stream else len(dataset), teacher_image_size=size, crop=crop,
                             seed=recipe.seed if args.seed is None else args.seed)

    stats = DataStats()
    build = dict(device=device, stats=stats, processes=processes, show_progress=True)
    recipe_size = recipe.view_sizes(0)[1] if args.recipe else None
    if recipe.teachers:  # every teacher's targets, on the crops of one view (the primary's); each loads in its turn
        pre = preprocessing(args.image_size or recipe_size)
        start = time.perf_counter()
        manifests = build_teacher_set(recipe.teachers, load, dataset, args.out, pre, settings, **build)
    else:
        teacher = load(teacher_spec)
        size = args.image_size or recipe_size or teacher.image_size
        if size % teacher.patch_size:
            raise UserError(f"--image-size {size} is not a multiple of the teacher's patch size {teacher.patch_size}")
        pre = preprocessing(size)
        start = time.perf_counter()
        manifests = {"teacher": build_cache(teacher, dataset, args.out, pre, settings, teacher_spec=teacher_spec,
                                            **build)}
    for other in processes.gather(stats)[1:]:
        stats.merge(other)
    if not processes.is_main:
        return 0
    seconds = time.perf_counter() - start
    manifest, k = next(iter(manifests.values())), settings.augmentations
    rows = (f"targets for every valid sample x {k} crops" if stream else
            f"{pre.dataset_length * k} targets ({pre.dataset_length} images x {k} crops)")
    shards = f"{len(manifest.shards)} shard{'s' if len(manifest.shards) != 1 else ''}"
    if recipe.teachers:  # the images are read once per teacher: the images/s below count every teacher's pass
        held = f"{shards} per teacher, teachers " + ", ".join(f"{name} {m.teacher_fingerprint[:12]}"
                                                               for name, m in manifests.items())
    else:
        held = f"{shards}, teacher {manifest.teacher_fingerprint[:12]}"
    print(f"cache {args.out}: {rows} in {held}; this build: {stats.samples} images in {seconds:.1f} s, "
          f"{stats.samples / seconds:.1f} images/s ({processes.count} process{'es' if processes.count > 1 else ''})")
    if stats.items:  # a skipped image's targets are those of the next valid one: the user must hear of it
        print(stats.summary())
    return 0
