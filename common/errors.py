"""The one exception type users see: a one-line message naming the bad value and what was expected.

The CLI prints it as `error: <message>` and exits non-zero, with no traceback; anything else that
escapes is a bug and keeps its traceback. A write that fails for reasons of the disk, not of the program
(full, over quota, read-only, no permission) is such a user-facing error too: `writing(path)` says so.
"""
from __future__ import annotations

import errno
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager


class UserError(ValueError):
    pass


_OUTPUT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EACCES, errno.EPERM, errno.EROFS})
# safetensors' Rust writer reports the OS error only in its message: "I/O error: ... (os error 28)".
_RUST_OS_ERROR = re.compile(r"\(os error (\d+)\)")


def _write_failure(exc: BaseException) -> str | None:
    """Why a write failed when the disk is to blame (None: a bug, which keeps its traceback)."""
    if isinstance(exc, UserError):
        return None
    if isinstance(exc, OSError) and exc.errno in _OUTPUT_ERRNOS:
        return os.strerror(exc.errno)
    found = _RUST_OS_ERROR.search(str(exc))
    if found and int(found.group(1)) in _OUTPUT_ERRNOS:
        return os.strerror(int(found.group(1)))
    if isinstance(exc, RuntimeError) and "inline_container.cc" in str(exc):
        # torch.save's zip writer drops the errno: "[enforce fail at inline_container.cc:672] . unexpected pos".
        return f"the write stopped short ({str(exc).splitlines()[0]}); is the disk full?"
    return None


class WriteError(UserError):
    def __init__(self, path: str | os.PathLike, reason: str):
        super().__init__(f"cannot write {path}: {reason}")
        self.reason = reason


@contextmanager
def writing(path: str | os.PathLike) -> Iterator[None]:
    """Turns a disk failure inside the block into a WriteError naming `path`; what was written before stays.
    Nested, the outermost path is named: the user's output, not a temp inside it."""
    try:
        yield
    except WriteError as exc:
        raise WriteError(path, exc.reason) from exc.__cause__
    except Exception as exc:
        reason = _write_failure(exc)
        if reason is None:
            raise
        raise WriteError(path, reason) from exc
