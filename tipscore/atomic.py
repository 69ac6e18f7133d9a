"""Atomic writes shared by every layer: readers see the old content or the new one, never a torn file or a
half-written directory.

What they publish gets the modes a plain `open()` / `mkdir()` gives (0o666 / 0o777 less the umask), so outputs
are as readable as the user's umask says: `tempfile` creates 0o600 files and 0o700 directories, and so does
safetensors >= 0.8 for every file it saves (safetensors/safetensors#782).
"""
from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from tipscore.errors import UserError

TMP_PREFIX = ".tmp-"


def write_atomic(path: str | os.PathLike, write: Callable[[Path], None]) -> None:
    """`write(tmp)` fills a temp file in the same directory, which then replaces `path`."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX + path.name + ".", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        _share(Path(tmp), current_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def current_umask() -> int:
    """Python reads the umask only by setting it: the short window uses 0o077, which can make a file another
    thread creates meanwhile more private, never more open."""
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def _share(path: Path, umask: int) -> None:
    if not path.is_symlink():  # chmod would follow it out of the output
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


def remove_stale_temps(directory: str | os.PathLike) -> None:
    """Temp files of a killed writer (SIGKILL skips the cleanup above)."""
    for stale in Path(directory).glob(TMP_PREFIX + "*"):
        stale.unlink(missing_ok=True)


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
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield tmp
        umask = current_umask()
        for directory, _, files in os.walk(tmp):  # every directory is walked, as "."
            for name in (".", *files):
                _share(Path(directory, name), umask)
        _swap_in(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _swap_in(new: Path, target: Path) -> None:
    if not target.exists():
        os.rename(new, target)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
    os.rename(target, old / "dir")
    try:
        os.rename(new, target)
    except BaseException:
        os.rename(old / "dir", target)
        raise
    shutil.rmtree(old, ignore_errors=True)
