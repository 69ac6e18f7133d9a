"""Where a cache's files live: a local directory, or a URL of an fsspec file system (s3://, gs://, hf://,
memory://, ...).

A remote file is written whole to a local temp, then uploaded in one put (an object store publishes an object
atomically), so a remote cache, like a local one, only ever holds complete files. Remote operations are retried
(`distill.data.remote`); one that keeps failing is a one-line error. Remote files are read from a
local mirror (safetensors memory-maps local files only), downloaded once per machine into
`$XDG_CACHE_HOME/tipsdistill/mirror/`, keyed by the URL and the manifest (a rebuilt cache gets a new mirror).
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from common.atomic import atomic_directory, write_atomic
from common.errors import UserError
from distill.data.remote import retried


def is_remote(location: str | os.PathLike) -> bool:
    return "://" in str(location)


class LocalStore:
    def __init__(self, directory: str | os.PathLike):
        self.root = Path(directory)
        self.location = str(directory)

    def names(self) -> set[str]:
        return {p.name for p in self.root.iterdir()} if self.root.is_dir() else set()

    def exists(self, name: str) -> bool:
        return (self.root / name).exists()

    def read_text(self, name: str) -> str:
        return (self.root / name).read_text()

    def put(self, name: str, write: Callable[[Path], None]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        write_atomic(self.root / name, write)

    def put_dir(self, name: str, write: Callable[[Path], None]) -> None:
        with atomic_directory(self.root / name) as tmp:
            write(tmp)

    def local(self, name: str, key: str = "") -> Path:
        """A local path of the file or directory `name` (`key`: what identifies its content, for a mirror)."""
        return self.root / name


class RemoteStore:
    def __init__(self, url: str):
        import fsspec

        self.location = url.rstrip("/")
        self.fs, self.root = fsspec.core.url_to_fs(self.location)

    def _path(self, name: str) -> str:
        return f"{self.root}/{name}"

    def _what(self, name: str) -> str:
        return f"cache file {self.location}/{name}"

    def names(self) -> set[str]:
        try:
            return {p.rstrip("/").rsplit("/", 1)[-1] for p in self.fs.ls(self.root, detail=False)}
        except FileNotFoundError:
            return set()

    def exists(self, name: str) -> bool:
        return self.fs.exists(self._path(name))

    def read_text(self, name: str) -> str:
        return retried(lambda: self.fs.cat_file(self._path(name)).decode(), self._what(name), "read")

    def put(self, name: str, write: Callable[[Path], None]) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            write(Path(tmp) / name)
            retried(lambda: self.fs.put_file(str(Path(tmp) / name), self._path(name)), self._what(name), "written")

    def put_dir(self, name: str, write: Callable[[Path], None]) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            write(Path(tmp) / name)
            retried(lambda: self.fs.put(str(Path(tmp) / name), self._path(name), recursive=True), self._what(name),
                    "written")

    def local(self, name: str, key: str = "") -> Path:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tipsdistill" / "mirror"
        path = base / hashlib.sha256(f"{self.location}\n{key}".encode()).hexdigest()[:16] / name
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            if self.fs.isdir(self._path(name)):
                with atomic_directory(path) as tmp:
                    retried(lambda: self.fs.get(self._path(name) + "/", str(tmp), recursive=True), self._what(name),
                            "read")
            else:
                write_atomic(path, lambda tmp: retried(lambda: self.fs.get_file(self._path(name), str(tmp)),
                                                       self._what(name), "read"))
        return path


def open_store(location: str | os.PathLike) -> LocalStore | RemoteStore:
    if not is_remote(location):
        return LocalStore(location)
    try:
        return RemoteStore(str(location))
    except (ImportError, ValueError) as exc:  # an unknown protocol, or its file system not installed
        raise UserError(f"cache {location}: {exc}".splitlines()[0]) from None

