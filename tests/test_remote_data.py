"""wds: shards and caches beyond local paths: fsspec URLs (a loopback HTTP server, memory://) and pipe: commands."""
import functools
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import fsspec
import pytest
import torch

from common.errors import UserError
from common.types import TOKEN_PARTS
from distill.data import build_dataset
from test_data_sources import image_id, write_shards


class Handler(SimpleHTTPRequestHandler):
    failures: list[str] = []

    def do_GET(self):
        if self.path.startswith("/broken"):
            self.failures.append(self.path)
            self.send_error(503)
        else:
            super().do_GET()

    def log_message(self, *args):
        pass


@pytest.fixture
def server(tmp_path):
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(tmp_path)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def ids(spec: str) -> list[int]:
    return [image_id(s) for s in build_dataset(spec, shuffle=False)]


def test_wds_shards_over_http_memory_and_pipe_read_as_local(tmp_path, server):
    write_shards(tmp_path, shards=2, per_shard=3)
    local = ids(f"wds:{tmp_path}/shard-{{000..001}}.tar")
    assert local == list(range(6))
    assert ids(f"wds:{server}/shard-{{000..001}}.tar") == local
    assert ids(f"wds:pipe:cat {tmp_path}/shard-{{000..001}}.tar") == local
    memory = fsspec.filesystem("memory")
    try:
        for shard in range(2):
            memory.pipe(f"/wds/shard-{shard:03d}.tar", (tmp_path / f"shard-{shard:03d}.tar").read_bytes())
        assert ids("wds:memory://wds/shard-{000..001}.tar") == local
    finally:
        memory.rm("/wds", recursive=True)


def test_a_missing_or_failing_remote_shard_is_one_line(tmp_path, server):
    write_shards(tmp_path, shards=1, per_shard=1)
    with pytest.raises(UserError, match=r"shard-009.tar does not exist") as err:
        ids(f"wds:{server}/shard-{{009,000}}.tar")
    assert "\n" not in str(err.value)
    with pytest.raises(UserError, match=r"broken.tar could not be opened after 3 tries") as err:
        ids(f"wds:{server}/broken.tar")
    assert "\n" not in str(err.value) and Handler.failures == ["/broken.tar"] * 3


def test_a_cache_at_a_url_holds_the_local_bytes_and_trains(tmp_path, tiny_tipsv2_dir, monkeypatch, server):
    from distill.cache.reader import CacheReader
    from distill.cli import main
    from test_cache_distill import losses, recipe_args

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))  # the mirror of remote files
    args = recipe_args(tiny_tipsv2_dir)
    memory = fsspec.filesystem("memory")
    try:
        for out in (str(tmp_path / "local"), "memory://caches/c"):
            assert main(["cache", *args, "--out", out, "--augmentations", "2", "--compress", "pca:4",
                         "--shard-size", "3"]) == 0
        local = {p.name: p.read_bytes() for p in (tmp_path / "local").glob("*.*")}
        assert local == {name: memory.cat(f"/caches/c/{name}") for name in local}
        assert memory.isdir("/caches/c/tokenizer")
        row = CacheReader(tmp_path / "local").targets(7, 1)
        for url in ("memory://caches/c", f"{server}/local"):  # read-only over https too
            remote = CacheReader(url).targets(7, 1)
            assert all(torch.equal(getattr(remote, k), getattr(row, k)) for k in TOKEN_PARTS)
        # The run reads the shards, the PCA basis and the tokenizer through the mirror.
        assert main(["distill", *args, "cache=memory://caches/c", "--out", str(tmp_path / "run")]) == 0
        assert len(losses(tmp_path / "run")) == 4
    finally:
        memory.rm("/caches", recursive=True)
