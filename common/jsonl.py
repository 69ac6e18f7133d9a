"""Rows of the append-only JSON-lines files a run and a captioning job write (metrics, captions)."""
from __future__ import annotations

import json


def json_record(line: str | bytes, key: str, kind: type) -> dict | None:
    """`line` as a JSON object whose `key` holds a `kind`; None for a line torn by a kill mid-append, or not a row
    of this file (another tool's line, a value of another type)."""
    try:
        row = json.loads(line)
    except ValueError:
        return None
    return row if isinstance(row, dict) and isinstance(row.get(key), kind) else None
