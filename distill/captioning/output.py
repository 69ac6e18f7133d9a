"""The caption file: one JSON object per image, appended a batch at a time, safe to resume after a kill.

Each batch is one append of whole lines, flushed and fsynced, so a kill can only leave a torn last line;
it is cut off when the file is opened again. A last line that parses is whole, newline or not (a proper prefix
of a JSON object never parses).
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from common.errors import UserError, writing
from common.jsonl import json_record

log = logging.getLogger(__name__)


def checked_out(out: str | os.PathLike) -> Path:
    path = Path(out).expanduser()
    if path.is_dir():
        raise UserError(f"--out {path} is a directory: expected a .jsonl file such as {path / 'metadata.jsonl'}")
    if path.suffix != ".jsonl":
        raise UserError(f"--out {path}: expected a .jsonl file (folder: and imagefolder read metadata.jsonl)")
    return path


def read_written(path: Path) -> dict[str, frozenset[str]]:
    """file_name -> the caption keys of its line, for the lines already in `path`."""
    if not path.exists():
        return {}
    written, complete, unended = {}, 0, False
    with open(path, "rb") as f:
        for number, line in enumerate(f, 1):
            unended = not line.endswith(b"\n")  # only the last line can be
            if unended and _parsed(line) is None:
                break  # the writer was killed mid-append
            complete += len(line)
            if line.strip():
                row = _record(line, path, number)
                written[row["file_name"]] = frozenset(row) - {"file_name"}
    if complete < path.stat().st_size:
        log.warning("%s: dropped a torn last line (an interrupted write); it is captioned again", path)
        _truncate(path, complete)
    elif unended:
        # A whole record without its newline (an editor, another tool): ended, so the next append starts a line.
        with writing(path), open(path, "ab") as f:
            append_bytes(f, b"\n")
    return written


def _parsed(line: bytes) -> dict | None:
    return json_record(line, "file_name", str)


def _record(line: bytes, path: Path, number: int) -> dict:
    row = _parsed(line)
    if row is None:
        raise UserError(f"{path} line {number} is not a caption record ({{\"file_name\": ..., ...}}): fix or "
                        f"remove that line, or write to another --out")
    return row


def _truncate(path: Path, size: int) -> None:
    # In place rather than a rewritten copy: one syscall, so just as atomic, O(1) for a large file, and the
    # file keeps its owner and mode.
    with open(path, "r+b") as f:
        f.truncate(size)
        os.fsync(f.fileno())


def append_rows(file, rows: list[dict]) -> None:
    """`file`: opened with open(path, "ab"). Whole lines in one write, on disk before the next batch starts."""
    with writing(file.name):
        append_bytes(file, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode("utf-8"))


def append_bytes(file, data: bytes) -> None:
    file.write(data)
    file.flush()
    os.fsync(file.fileno())
