"""Remote file operations through fsspec, retried: object stores and web servers fail transiently."""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from common.errors import UserError

T = TypeVar("T")
RETRIES = 3


def retried(operation: Callable[[], T], what: str, doing: str, missing: str = "") -> T:
    """`operation()`, tried RETRIES times with backoff (0.5 s, then 1 s). A missing file is a one-line UserError
    at once ("`what` does not exist`missing`"), a failure that persists one after the last try."""
    for attempt in range(1, RETRIES + 1):
        try:
            return operation()
        except Exception as exc:  # noqa: BLE001 (every file system has its own transient errors: retry, then name it)
            # fsspec's http reports every failed request as FileNotFoundError, caused by the real error.
            cause = exc.__cause__ if isinstance(exc, FileNotFoundError) else exc
            if cause is None or getattr(cause, "status", None) == 404:
                raise UserError(f"{what} does not exist{missing}") from None
            if attempt == RETRIES:
                raise UserError(f"{what} could not be {doing} after {RETRIES} tries: "
                                f"{type(cause).__name__}: {cause}".splitlines()[0]) from None
            time.sleep(0.5 * 2 ** (attempt - 1))
