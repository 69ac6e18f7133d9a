"""One process per output: two runs on one `--out` would interleave their files silently.

The lock is `fcntl.flock` on a lock file holding a JSON record of its holder (pid, host, start time). The
kernel drops a flock when its process dies however it dies, so a lock file left by a killed holder on this
host is stale by construction: it is taken over, with a log line. A record from another host is refused
instead: not every shared file system carries flocks across hosts, and this host cannot see that process.

Taking the lock also removes the temps that killed writers left in the output (safe only now: no other
process writes there), after putting back an output that a killed writer had moved aside to replace it. The lock file is removed on release, and so is the output directory if the lock
created it and nothing was written.
"""
from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import shutil
import socket
from datetime import datetime, timezone
from pathlib import Path

from common.atomic import TMP_PREFIX, is_temp_of, restore_replaced
from common.errors import UserError, writing

log = logging.getLogger(__name__)

LOCK_NAME = ".tipsdistill.lock"


class OutputLock:
    """`OutputLock(directory)`: an output directory written in place (run, cache, evaluation), locked by a
    file inside it. `OutputLock(path, beside=True)`: an output file, or a directory replaced by a rename
    (export), locked by a file beside it. Usable as a context manager; `release` is idempotent."""

    def __init__(self, output: str | os.PathLike, *, beside: bool = False):
        self.output = Path(output)
        self.beside = beside
        self.path = self.output.with_name(f".{self.output.name}{LOCK_NAME}") if beside else self.output / LOCK_NAME
        self._fd: int | None = None
        self._made_directory = False

    def __enter__(self) -> "OutputLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> "OutputLock":
        directory = self.path.parent
        if directory.exists() and not directory.is_dir():
            raise UserError(f"output {directory} exists and is not a directory")
        with writing(self.output):
            self._made_directory = not directory.exists()
            try:
                directory.mkdir(parents=True, exist_ok=True)
            except (FileExistsError, NotADirectoryError):
                raise UserError(f"output {self.output}: a part of its path is a file, not a directory") from None
            fd = self._open_locked()
            try:
                self._take_over(fd)
                _write_record(fd)
            except BaseException:
                os.close(fd)
                self._remove_directory_if_made()
                raise
        self._fd = fd
        if self.beside:
            self._restore_replaced()
        self._remove_stale_temps()
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        # Unlinked while still held: a process that opened the old file sees it is gone and opens again.
        self.path.unlink(missing_ok=True)
        os.close(self._fd)
        self._fd = None
        self._remove_directory_if_made()

    def _open_locked(self) -> int:
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                holder = _read_record(fd)
                os.close(fd)
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise UserError(f"output {self.output} is in use by {_describe(holder)}; wait for it to "
                                    "finish or choose another output") from None
                raise UserError(f"cannot lock {self.path}: {os.strerror(exc.errno)} (the file system must "
                                "support flock)") from None
            if _same_file(fd, self.path):
                return fd
            os.close(fd)  # released and unlinked between our open and our flock

    def _take_over(self, fd: int) -> None:
        holder = _read_record(fd)
        if holder is None:
            return
        if holder.get("host") != socket.gethostname():
            raise UserError(f"output {self.output} was locked by {_describe(holder)}, which this host cannot "
                            f"check; if that process has ended, delete {self.path}")
        log.warning("%s: taking over the stale lock of %s, which has ended", self.output, _describe(holder))

    def _restore_replaced(self) -> None:
        """An output that a killed writer had moved aside to rename its new one in is put back, before the
        temps go: otherwise removing them would delete the only copy."""
        with writing(self.output):
            found = restore_replaced(self.output)
        if found is not None:
            log.warning("%s: restored the previous output from %s, where a process killed while replacing it "
                        "left it; the replacement was lost: run that command again", self.output, found)

    def _remove_stale_temps(self) -> None:
        """What killed writers left (SIGKILL skips their own cleanup)."""
        if self.beside:
            stale = [p for p in self.output.parent.iterdir() if is_temp_of(p.name, self.output)]
        else:
            stale = _temps_under(self.output)
        for path in stale:
            log.info("removing %s, left by an interrupted write", path)
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)

    def _remove_directory_if_made(self) -> None:
        if self._made_directory:
            try:
                self.path.parent.rmdir()  # only if empty: a run that failed before writing leaves nothing
            except OSError:
                pass


def _temps_under(directory: Path) -> list[Path]:
    """Temps anywhere under `directory`, except inside a sub-directory with its own lock file: another
    output (the default job's run inside its evaluation directory), which its own holder tidies."""
    found = []
    for root, dirs, files in os.walk(directory):
        found += [Path(root, name) for name in (*dirs, *files) if name.startswith(TMP_PREFIX)]
        dirs[:] = [d for d in dirs if not d.startswith(TMP_PREFIX) and not Path(root, d, LOCK_NAME).exists()]
    return found


def _write_record(fd: int) -> None:
    record = {"pid": os.getpid(), "host": socket.gethostname(),
              "started": datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds")}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(record).encode(), 0)


def _read_record(fd: int) -> dict | None:
    """The holder's record; None for an empty file (a new lock, or a holder between its open and its write)."""
    data = os.pread(fd, 4096, 0)
    if not data.strip():
        return None
    try:
        record = json.loads(data)
    except ValueError:
        record = None
    # A record torn by a kill while it was written names no one this host could be waiting for.
    return record if isinstance(record, dict) else {"host": socket.gethostname()}


def _describe(holder: dict | None) -> str:
    if holder is None:
        return "another tipsdistill process (starting)"
    return (f"tipsdistill pid {holder.get('pid', '?')} on {holder.get('host', '?')} "
            f"(started {holder.get('started', '?')})")


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        return False
