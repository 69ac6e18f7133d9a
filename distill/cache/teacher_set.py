"""A cache of several teachers' targets (a recipe's `teachers:`): one ordinary cache per teacher, in `DIR/NAME/`,
all on the same crops, and `DIR/teachers.json` naming the set, in order (the primary first), with each teacher's spec.

Each teacher's cache is built, resumed, verified and read as a one-teacher cache is (`writer`, `reader`): only its
`Preprocessing.teacher_input_size` differs, the size the shared view is resized to for it, as an online run resizes
it. The teachers are built one after the other, so only one of them is in memory at a time. `teachers.json` is
written (atomically) before any of them: a resumed build, or a run replaying the cache, is checked against it first.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from distill.cache.manifest import MANIFEST, TEACHERS, CacheManifest, Preprocessing
from distill.cache.store import open_store
from distill.cache.writer import CacheSettings, build_cache
from distill.config import TeacherConfig, own_input_size
from distill.processes import Processes
from common.errors import UserError
from common.lock import LOCK_NAME

FORMAT = "tipsdistill-teachers/1"


def member(directory: str | Path, name: str) -> str:
    """The location of teacher `name`'s cache in the set at `directory` (a path or a URL)."""
    return f"{str(directory).rstrip('/')}/{name}"


def recorded(teachers: list[TeacherConfig]) -> list[dict]:
    """What `teachers.json` holds of each teacher: what the set is checked against."""
    return [{"name": t.name, "spec": t.spec} for t in teachers]


def describe(entries: list[dict]) -> str:
    return ", ".join(f"{e['name']} ({e['spec']})" for e in entries)


def member_preprocessing(teachers: list[TeacherConfig], pre: Preprocessing) -> dict[str, Preprocessing]:
    """Each teacher's preprocessing: the shared crops at its input size (the primary's is the view's; another's its
    `image_size`, else the view's), as the online run feeds them."""
    view = pre.teacher_image_size
    return {t.name: replace(pre, teacher_input_size=own_input_size(teachers, i) or view)
            for i, t in enumerate(teachers)}


def read_teacher_set(directory: str | Path) -> list[dict] | None:
    """The teachers recorded in the cache at `directory`; None for a one-teacher cache (or no cache)."""
    store = open_store(directory)
    if not store.exists(TEACHERS):
        return None
    try:
        data = json.loads(store.read_text(TEACHERS))
        if data.get("format") != FORMAT:
            raise UserError(f"cache {directory} has a {TEACHERS} of format {data.get('format')!r}; expected {FORMAT!r}")
        return [{"name": e["name"], "spec": e["spec"]} for e in data["teachers"]]
    except (json.JSONDecodeError, TypeError, KeyError) as exc:
        raise UserError(f"cache {directory} has an unreadable {TEACHERS} ({exc}); rebuild it with `tipsdistill cache`")


def _start_or_resume(store, entries: list[dict]) -> None:
    """The main process's claim on `--out`: a new set, or the same set resumed; anything else is refused untouched."""
    out, names = store.location, store.names()
    if TEACHERS in names:
        found = read_teacher_set(out)
        if found != entries:
            raise UserError(f"--out {out} holds the cache of other teachers ({describe(found)}; now "
                            f"{describe(entries)}); choose another directory")
        return
    if MANIFEST in names:
        raise UserError(f"--out {out} holds one teacher's cache ({MANIFEST}); a recipe with teachers: needs a "
                        "directory of its own")
    found = sorted(names - {LOCK_NAME})
    if found:
        raise UserError(f"--out {out} is a non-empty directory without a cache ({TEACHERS}; it holds {found[0]}); "
                        "choose a new or empty directory")
    store.put(TEACHERS, lambda tmp: tmp.write_text(json.dumps({"format": FORMAT, "teachers": entries}, indent=2)
                                                   + "\n"))


def build_teacher_set(teachers: list[TeacherConfig], load: Callable[[str], object], dataset, out: str | Path,
                      pre: Preprocessing, settings: CacheSettings, processes: Processes = Processes(),
                      **options) -> dict[str, CacheManifest]:
    """Build (or finish) the cache of every teacher of `teachers`, each loaded by `load(spec)` in its turn, on the
    crops of `pre`; `options` go to each `build_cache` (device, on_shard, stats, show_progress). Every process of
    `processes` calls it. Returns each teacher's manifest, by name."""
    settings.validate()
    processes.main_first(lambda: _start_or_resume(open_store(out), recorded(teachers)))
    manifests, pres = {}, member_preprocessing(teachers, pre)
    for t in teachers:
        teacher, size = load(t.spec), pres[t.name].input_size
        if size % teacher.patch_size:
            raise UserError(f"teacher {t.name}'s input size {size} is not a multiple of its patch size "
                            f"{teacher.patch_size}")
        manifests[t.name] = build_cache(teacher, dataset, member(out, t.name), pres[t.name], settings,
                                        teacher_spec=t.spec, processes=processes, **options)
        del teacher  # before the next one loads: one teacher in memory at a time
    return manifests


def cache_members(directory: str | Path, recipe) -> dict[str, str]:
    """The caches a recipe's run replays, by teacher name (the primary first): `directory` itself for a `teacher:`
    recipe, each teacher's own for a `teachers:` one. A cache of another teacher set is a one-line UserError."""
    found = read_teacher_set(directory)
    if not recipe.teachers:
        if found is not None:
            raise UserError(f"cache {directory} holds the targets of several teachers ({describe(found)}); a recipe "
                            "listing them in teachers: replays it")
        return {recipe.run_teachers[0].name: directory}
    wanted = recorded(recipe.teachers)
    if found is None:
        raise UserError(f"cache {directory} holds one teacher's targets (no {TEACHERS}); the recipe's teachers: "
                        f"({describe(wanted)}) need a cache built from that recipe (tipsdistill cache --recipe ...)")
    if found != wanted:
        raise UserError(f"cache {directory} holds the targets of other teachers ({describe(found)}); the recipe "
                        f"names {describe(wanted)}")
    members = {e["name"]: member(directory, e["name"]) for e in found}
    for name, location in members.items():
        if not open_store(location).exists(MANIFEST):
            raise UserError(f"cache {directory} is incomplete: teacher {name}'s targets are not built yet; rerun the "
                            "same `tipsdistill cache` command to finish it")
    return members
