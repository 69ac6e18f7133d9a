"""Loading a recipe: a packaged name or a YAML file, with `key=value` overrides, parsed and value-checked by
`distill.config`, then checked against the rules (`distill.recipe_rules`). The CLI and `run_training`'s callers
load recipes here, and a resume reloads the checkpoint's recipe the same way.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import yaml

from distill.config import Recipe, build_section, override_data, validate
from distill.data.build import parse_spec
from distill.recipe_rules import check_rules
from common.errors import UserError

RECIPES_DIR = Path(__file__).resolve().parent.parent / "recipes"
log = logging.getLogger(__name__)


def recipe_from_dict(data: Any, source: str = "recipe") -> Recipe:
    if not isinstance(data, dict):
        raise UserError(f"{source} must be a YAML mapping of recipe sections, got {type(data).__name__}")
    return check_rules(validate(build_section(Recipe, data)))


def resolve_recipe_path(name_or_path: str | os.PathLike) -> Path:
    """A path, or the name of a packaged recipe (`micro`, `b14`, ...)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    packaged = RECIPES_DIR / f"{name_or_path}.yaml"
    if packaged.is_file():
        return packaged
    names = sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))
    raise UserError(f"recipe {str(name_or_path)!r} is neither a file nor a packaged recipe ({', '.join(names)})")


def load_recipe(name_or_path: str | os.PathLike, overrides: list[str] = ()) -> Recipe:
    path = resolve_recipe_path(name_or_path)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise UserError(f"{path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    return apply_overrides(recipe_from_dict(data, str(path)), overrides)


def apply_overrides(recipe: Recipe, overrides: list[str]) -> Recipe:
    data, overridden = override_data(recipe, overrides)
    if "data.source" in overridden:
        _drop_foreign_data_options(data, recipe.data.source, overridden)
    return recipe_from_dict(data, "recipe with overrides")


def _source_kind(spec: str) -> str | None:
    try:
        return parse_spec(spec)[0]
    except UserError:
        return None  # a bad spec is reported when the run opens its data


def _drop_foreign_data_options(data: dict, old_source: str, overridden: set[str]) -> None:
    """Options of the recipe's own source kind (e.g. the scenes' `size`) do not fit another kind: when an
    override switches `data.source` to another kind and leaves `data.options` alone, they are dropped."""
    new_source = data["data"]["source"]
    if "data.options" in overridden or not data["data"]["options"]:
        return
    if _source_kind(old_source) != _source_kind(new_source):
        log.info("data.source changed from %s to %s: dropping the recipe's data.options %s (they belong to the "
                 "other source kind); pass data.options=... to set new ones", old_source, new_source,
                 data["data"]["options"])
        data["data"]["options"] = {}
