"""Write a file so that readers see either the old content or the new one, never a torn file."""
from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

TMP_PREFIX = ".tmp-"


def write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """`write(tmp)` fills a temp file in the same directory, which then replaces `path`."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX + path.name + ".", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def remove_stale_temps(directory: Path) -> None:
    """Temp files of a killed writer (SIGKILL skips the cleanup above)."""
    for stale in Path(directory).glob(TMP_PREFIX + "*"):
        stale.unlink(missing_ok=True)
