"""`build_dataset(spec, **options)`: one string names any supported data source."""
from __future__ import annotations

import importlib
import inspect
import os

from common.errors import UserError

SPEC_HELP = "folder:PATH, hf:PATH_OR_ID, wds:PATTERN, scenes[:train|validation|heldout] or an existing directory"
# kind -> (module, class); imported on use so `datasets` loads only for hf: specs.
SOURCES = {
    "folder": ("distill.data.folder", "FolderSource"),
    "hf": ("distill.data.hf", "HFSource"),
    "wds": ("distill.data.wds", "WebDatasetSource"),
    "scenes": ("distill.data.scenes", "SceneDataset"),
}


def build_dataset(spec: str, **options):
    """A map-style dataset of `Sample`s (or, for `wds:`, an IterableDataset of them), checked to hold
    at least one usable image. `options` go to the source's constructor (see docs/data.md); an option set
    to None or {} counts as not given, so a recipe's unset fields fit every source."""
    options = {key: value for key, value in options.items() if value is not None and value != {}}
    kind, argument = parse_spec(str(spec))
    module, name = SOURCES[kind]
    cls = getattr(importlib.import_module(module), name)
    args = (argument,) if kind != "scenes" else ()
    if kind == "scenes":
        options = {"split": argument or "train", **options}
    try:
        inspect.signature(cls).bind(*args, **options)
    except TypeError:
        allowed = [p for p in inspect.signature(cls).parameters if p not in ("path", "path_or_id", "pattern")]
        bad = next((key for key in options if key not in allowed), None)
        raise UserError(f"data option {bad!r} is not valid for a {kind}: source; expected one of "
                        f"{', '.join(allowed)}") from None
    dataset = cls(*args, **options)
    if hasattr(dataset, "check"):
        dataset.check()
    return dataset


def parse_spec(spec: str) -> tuple[str, str]:
    kind, sep, rest = spec.partition(":")
    if sep and kind in SOURCES:
        if kind == "scenes" or rest:
            return kind, rest
        raise UserError(f"data spec {spec!r} names no path: expected {SPEC_HELP}")
    if spec == "scenes":
        return "scenes", ""
    if os.path.isdir(spec) or (os.path.isfile(spec) and spec.lower().endswith((".jsonl", ".csv"))):
        return "folder", spec
    if not spec:
        raise UserError(f"no data given: expected {SPEC_HELP}")
    if os.path.exists(spec):
        raise UserError(f"data spec {spec!r} is a file: expected {SPEC_HELP}")
    raise UserError(f"data spec {spec!r} is not an existing directory nor a known source: expected {SPEC_HELP}")
