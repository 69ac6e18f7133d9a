"""Atomic writes shared by every layer: readers see the old content or the new one, never a torn file or a
half-written directory.

What they publish gets the modes a plain `open()` / `mkdir()` gives (0o666 / 0o777 less the umask), so outputs
are as readable as the user's umask says: temp directories are created owner-only, and safetensors >= 0.8
saves every file 0o600 (safetensors/safetensors#782).
"""
from __future__ import annotations

import os
import re
import secrets
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from common.errors import UserError, writing
from common.faults import crash_point

# Specific to this tool, so that removing the temps a killed writer left (`common.lock`) never touches a
# user's own files.
TMP_PREFIX = ".tipsdistill-tmp-"
# Inside a temp of `target`: the old `target`, moved aside while the new one is renamed in (see `_swap_in`).
REPLACED = "replaced"


def temp_name(target: Path) -> Path:
    """The temp sibling of `target`: fixed, so that every process of a run can write into it."""
    return target.with_name(TMP_PREFIX + target.name)


def temp_dir(target: Path) -> Path:
    """A new empty owner-only directory beside `target`: `temp_name(target)` plus 8 random hex digits."""
    while True:
        path = Path(f"{temp_name(target)}.{secrets.token_hex(4)}")
        try:
            path.mkdir(mode=0o700)
            return path
        except FileExistsError:
            continue


def is_temp_of(name: str, target: Path) -> bool:
    """Whether the entry `name` beside `target` is one of its temps (not those of an output named `target.x`)."""
    return re.fullmatch(re.escape(temp_name(target).name) + r"(\.[0-9a-f]{8})?", name) is not None


def write_atomic(path: str | os.PathLike, write: Callable[[Path], None]) -> None:
    """`write(tmp)` fills `tmp`, a file of the same name in a temp dir beside `path`, which then replaces `path`.

    Whatever the writer itself puts beside its file (safetensors writes its own temp and renames it) stays
    inside that temp dir, so a kill at any moment leaves nothing but a temp of this tool.
    """
    path = Path(path)
    with writing(path):
        tmp = temp_dir(path)
        try:
            write(tmp / path.name)
            _share(tmp / path.name, current_umask())
            os.replace(tmp / path.name, path)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def current_umask() -> int:
    """Python reads the umask only by setting it: the short window uses 0o077, which can make a file another
    thread creates meanwhile more private, never more open."""
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def _share(path: Path, umask: int) -> None:
    """Outputs are for teams: the modes the umask allows (writers such as safetensors create owner-only files)."""
    if not path.is_symlink():  # chmod would follow it out of the output
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


def share_tree(root: Path) -> None:
    """`root` and everything under it get the modes the umask allows (see `_share`)."""
    umask = current_umask()
    for directory, _, files in os.walk(root):  # every directory is walked, as "."
        for name in (".", *files):
            _share(Path(directory, name), umask)


@contextmanager
def atomic_directory(target: str | os.PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """Yields an empty temp dir beside `target`; on success it becomes `target`.

    A failure (or Ctrl-C) leaves the target as it was; an existing non-empty target is only replaced
    when the caller allows it, and the old one is removed only after the new one is in place.
    """
    target = Path(target)
    if target.exists() and not target.is_dir():
        raise UserError(f"output {target} exists and is not a directory")
    if target.is_dir() and any(target.iterdir()) and not overwrite:
        raise UserError(f"output directory {target} exists and is not empty; pass --overwrite to replace it")
    with writing(target):
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = temp_dir(target)
        try:
            yield tmp
            share_tree(tmp)
            _swap_in(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


def _swap_in(new: Path, target: Path) -> None:
    """Two renames, as POSIX has no portable atomic exchange of two directories: a kill between them leaves
    `target` absent and the old one in a temp, which the next lock on `target` puts back (`restore_replaced`)."""
    if not target.exists():
        os.rename(new, target)
        return
    old = temp_dir(target)
    os.rename(target, old / REPLACED)
    crash_point("output-moved-aside", 1)
    try:
        os.rename(new, target)
    except BaseException:
        os.rename(old / REPLACED, target)
        raise
    shutil.rmtree(old, ignore_errors=True)


def restore_replaced(target: Path) -> Path | None:
    """Puts back the `target` that a writer killed inside `_swap_in` left moved aside; returns the temp it was in.
    Only while `target` is absent: once the new one is in place, the old one is garbage."""
    if target.exists() or target.is_symlink():
        return None
    for path in sorted(target.parent.iterdir()):
        if is_temp_of(path.name, target) and (path / REPLACED).is_dir():
            os.rename(path / REPLACED, target)
            return path
    return None
