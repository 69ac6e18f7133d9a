"""Every data source on tiny fixtures written here: folders (sidecars, jsonl, csv), datasets, webdataset."""
from __future__ import annotations

import csv
import io
import json
import os
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from distill.data import build_dataset, make_dataloader
from distill.data.wds import expand_braces
from common.errors import UserError


def colour_image(i: int, size=(20, 12)) -> Image.Image:
    """Image i is a flat colour that encodes i, so a test can tell which file a sample came from."""
    return Image.new("RGB", size, (10 * i, 255 - 10 * i, 7 * i))


def image_id(sample) -> int:
    return int(np.asarray(sample.image)[0, 0, 0]) // 10


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_folder_recursive_with_sidecars(tmp_path):
    (tmp_path / "sub" / "deeper").mkdir(parents=True)
    (tmp_path / ".hidden").mkdir()
    paths = ["a.png", "sub/b.jpg", "sub/deeper/c.png"]
    for i, rel in enumerate(paths):
        colour_image(i).save(tmp_path / rel, quality=100)
    colour_image(9).save(tmp_path / ".hidden" / "x.png")
    (tmp_path / "notes.md").write_text("not an image")
    (tmp_path / "sub" / "loop").symlink_to(tmp_path)  # followed, but never round in circles
    (tmp_path / "a.txt").write_text("  a red\nthing  ")
    (tmp_path / "a.long.txt").write_text("a long description of a red thing")
    (tmp_path / "sub" / "deeper" / "c.medium.txt").write_text("medium c")

    ds = build_dataset(str(tmp_path))  # a bare directory is a folder spec
    assert len(ds) == 3
    assert ds.caption_keys == ("short", "medium", "long")
    assert [image_id(ds[i]) for i in range(3)] == [0, 1, 2]
    assert ds[0].captions == {"short": "a red thing", "long": "a long description of a red thing"}
    assert ds[1].captions == {}
    assert ds[2].captions == {"medium": "medium c"}
    assert ds[0].image.mode == "RGB" and ds[0].image.size == (20, 12)


def test_folder_index_and_webdataset_give_one_order(tmp_path):
    """The README's order: a scanned folder lists sorted relative paths, so an index of the same files in
    sorted() order, and an unshuffled single shard in that order, give the same item at every index."""
    root = tmp_path / "photos"
    (root / "b").mkdir(parents=True)
    names = ["c.png", "b/d.png", "a.png", "b.png", "B.png"]  # a sub-folder's files before c.png; "b.png" < "b/d.png"
    for i, name in enumerate(names):
        colour_image(i).save(root / name)
    ordered = sorted(names)
    (tmp_path / "index.jsonl").write_text("".join(json.dumps({"file_name": f"photos/{n}"}) + "\n" for n in ordered))
    with tarfile.open(tmp_path / "shard-000.tar", "w") as tar:
        for name in ordered:
            add_member(tar, name, (root / name).read_bytes())

    folder = build_dataset(f"folder:{root}")
    index = build_dataset(f"folder:{tmp_path / 'index.jsonl'}")
    assert [os.path.relpath(folder.image_file(i), root) for i in range(len(folder))] == ordered
    assert [os.path.relpath(index.image_file(i), root) for i in range(len(index))] == ordered
    wds = build_dataset(f"wds:{tmp_path / 'shard-000.tar'}", shuffle=False)
    expected = [names.index(n) for n in ordered]
    assert [image_id(s) for s in wds] == [image_id(folder[i]) for i in range(5)] == expected

    def batches(dataset, shuffle):
        loader = make_dataloader(dataset, batch_size=5, student_size=8, shuffle=shuffle)
        return [(b.index.tolist(), b.pixels) for b in loader]

    for (i_a, p_a), (i_b, p_b) in zip(batches(folder, True), batches(index, True), strict=True):
        assert i_a == i_b and torch.equal(p_a, p_b)  # data.shuffle permutes indices alike
    for (i_a, p_a), (i_b, p_b) in zip(batches(folder, False), batches(wds, False), strict=True):
        assert i_a == i_b and torch.equal(p_a, p_b)


def write_images(root, count):
    for i in range(count):
        colour_image(i).save(root / f"img{i}.png")


def test_folder_jsonl_index_with_columns(tmp_path):
    write_images(tmp_path, 3)
    rows = [{"path": "img2.png", "alt": "two", "syn": "image two", "long": None},
            {"path": "img0.png", "alt": "zero", "syn": "image zero", "long": "the zeroth image"}]
    (tmp_path / "captions.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n{broken\n")
    ds = build_dataset(f"folder:{tmp_path}", index="captions.jsonl", image_column="path",
                       caption_columns={"short": "alt", "medium": "syn"})
    assert len(ds) == 2  # the rows of the index, in order; the malformed line is skipped
    assert [image_id(ds[i]) for i in range(2)] == [2, 0]
    assert ds[1].captions == {"short": "zero", "medium": "image zero", "long": "the zeroth image"}
    assert ds[0].captions == {"short": "two", "medium": "image two"}

    with pytest.raises(UserError, match="no column 'nope' for long captions"):
        build_dataset(f"folder:{tmp_path}", index="captions.jsonl", image_column="path",
                      caption_columns={"long": "nope"})
    with pytest.raises(UserError, match="no image column 'file_name'"):
        build_dataset(f"folder:{tmp_path}", index="captions.jsonl")
    with pytest.raises(UserError, match="caption_columns key 'tiny' is unknown"):
        build_dataset(f"folder:{tmp_path}", index="captions.jsonl", image_column="path",
                      caption_columns={"tiny": "alt"})


def test_folder_csv_metadata_found_automatically(tmp_path):
    write_images(tmp_path, 2)
    with open(tmp_path / "metadata.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file_name", "text", "medium"])
        writer.writerow(["img1.png", "one", "image one"])
        writer.writerow(["img0.png", "zero", ""])
        writer.writerow(["missing.png", "gone", ""])
    ds = build_dataset(f"folder:{tmp_path}")
    assert len(ds) == 3
    assert ds.caption_keys == ("short", "medium")  # `text` is the HF imagefolder name for the short caption
    assert ds[0].captions == {"short": "one", "medium": "image one"}
    assert ds[1].captions == {"short": "zero"} and ds[1].events == (("caption_dropped/medium", "img0.png"),)
    # A missing file is skipped and replaced by the next valid row (wrapping round).
    replaced = ds[2]
    assert replaced.index == 0 and replaced.events == (("skipped/missing_file", "missing.png"),)
    # The csv file itself is a valid spec too.
    assert len(build_dataset(str(tmp_path / "metadata.csv"))) == 3


def test_hf_save_to_disk(tmp_path):
    import datasets

    features = datasets.Features({"img": datasets.Image(), "alt": datasets.Value("string"),
                                  "long": datasets.Value("string")})
    data = datasets.Dataset.from_dict(
        {"img": [colour_image(i) for i in range(4)], "alt": [f"alt {i}" for i in range(4)],
         "long": ["", "a long one", None, "x"]}, features=features)
    data.save_to_disk(str(tmp_path / "single"))
    datasets.DatasetDict({"train": data, "validation": data.select([3])}).save_to_disk(str(tmp_path / "dict"))

    ds = build_dataset(f"hf:{tmp_path / 'single'}", caption_columns={"short": "alt"})
    assert len(ds) == 4 and ds.caption_keys == ("short", "long")
    assert [image_id(ds[i]) for i in range(4)] == [0, 1, 2, 3]
    assert ds[1].captions == {"short": "alt 1", "long": "a long one"}
    assert ds[0].events == (("caption_dropped/long", "row 0"),)  # images held as bytes: named by row

    val = build_dataset(f"hf:{tmp_path / 'dict'}", split="validation", caption_columns={"short": "alt"})
    assert len(val) == 1 and image_id(val[0]) == 3
    with pytest.raises(UserError, match="no split 'test'"):
        build_dataset(f"hf:{tmp_path / 'dict'}", split="test")
    with pytest.raises(UserError, match="no column 'caption'"):
        build_dataset(f"hf:{tmp_path / 'single'}", caption_columns={"short": "caption"})


def test_hf_imagefolder_with_metadata(tmp_path):
    root = tmp_path / "imgs"
    root.mkdir()
    write_images(root, 3)
    (root / "metadata.jsonl").write_text("".join(
        json.dumps({"file_name": f"img{i}.png", "text": f"caption {i}", "long": f"long caption {i}"}) + "\n"
        for i in range(3)))
    ds = build_dataset(f"hf:{root}", cache_dir=str(tmp_path / "cache"))
    assert len(ds) == 3 and ds.caption_keys == ("short", "long")
    by_id = {image_id(ds[i]): ds[i].captions for i in range(3)}
    assert by_id == {i: {"short": f"caption {i}", "long": f"long caption {i}"} for i in range(3)}
    explicit = build_dataset(f"hf:{root}", builder="imagefolder", cache_dir=str(tmp_path / "cache"))
    assert len(explicit) == 3


def test_hf_unknown_hub_id_is_a_user_error(tmp_path, monkeypatch):
    import datasets
    import huggingface_hub.constants

    # Offline mode is read at import time; without it the hub lookup retries the network for ~20 s.
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(UserError, match="no-such-user/no-such-dataset"):
        build_dataset("hf:no-such-user/no-such-dataset", cache_dir=str(tmp_path))


def add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_shards(root, shards: int, per_shard: int) -> list[int]:
    """Shard s holds images s * per_shard + k; every other sample has a json caption instead of txt."""
    ids = []
    for s in range(shards):
        with tarfile.open(root / f"shard-{s:03d}.tar", "w") as tar:
            for k in range(per_shard):
                i = s * per_shard + k
                ids.append(i)
                add_member(tar, f"s{i:04d}.png", png_bytes(colour_image(i)))
                if i % 2:
                    add_member(tar, f"s{i:04d}.json", json.dumps({"caption": f"json {i}", "long": "l"}).encode())
                else:
                    add_member(tar, f"s{i:04d}.txt", f"txt {i}".encode())
    return ids


def test_webdataset_shards(tmp_path):
    ids = write_shards(tmp_path, shards=3, per_shard=4)
    with tarfile.open(tmp_path / "shard-003.tar", "w") as tar:  # a bad sample and a caption-only key
        add_member(tar, "bad.jpg", b"\xff\xd8 not a jpeg")
        add_member(tar, "orphan.txt", b"no image")
    ds = build_dataset(f"wds:{tmp_path}/shard-{{000..003}}.tar", shuffle=False)
    assert ds.caption_keys == ("short",)
    samples = list(ds)
    assert [image_id(s) for s in samples] == ids
    assert samples[0].captions == {"short": "txt 0"}
    assert samples[1].captions == {"short": "json 1", "long": "l"}
    assert samples[5].index == (1 << 32) | 1  # (shard << 32) | position
    assert samples[-1].events == ()  # trailing skips have no sample to report them

    shuffled = list(build_dataset(f"wds:{tmp_path}/shard-{{000..002}}.tar", shuffle_buffer=5))
    assert sorted(image_id(s) for s in shuffled) == ids and [image_id(s) for s in shuffled] != ids


def test_webdataset_shards_split_over_workers_and_processes(tmp_path, monkeypatch):
    ids = write_shards(tmp_path, shards=2, per_shard=3)
    ds = build_dataset(f"wds:{tmp_path}/shard-{{000..001}}.tar", shuffle=False)
    seen = []
    for rank in range(2):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        seen.append([image_id(s) for s in ds.stream(seed=0, epoch=0)])
    assert sorted(seen[0] + seen[1]) == ids and not set(seen[0]) & set(seen[1])
    # More (process, worker) slots than shards: every slot reads all shards and keeps every n-th sample.
    monkeypatch.setenv("WORLD_SIZE", "4")
    per_slot = []
    for rank in range(4):
        monkeypatch.setenv("RANK", str(rank))
        per_slot.append([image_id(s) for s in ds.stream(seed=0, epoch=0)])
    assert sorted(sum(per_slot, [])) == ids and all(per_slot)


def test_webdataset_loader_is_reproducible(tmp_path):
    write_shards(tmp_path, shards=2, per_shard=5)
    ds = build_dataset(f"wds:{tmp_path}/shard-{{000..001}}.tar", shuffle_buffer=4)

    def epoch(workers):
        loader = make_dataloader(ds, batch_size=3, student_size=8, seed=5, num_workers=workers, drop_last=False)
        loader.set_epoch(1)
        return [(b.index, b.pixels) for b in loader]

    once = epoch(0)
    assert all(torch.equal(a, b) for x, y in zip(epoch(0), once) for a, b in zip(x, y))
    assert sorted(torch.cat([index for index, _ in once]).tolist()) == [
        (s << 32) | p for s in range(2) for p in range(5)]
    with_workers = epoch(2)  # each worker reads one shard: every sample once, none twice
    assert sorted(torch.cat([index for index, _ in with_workers]).tolist()) == sorted(
        torch.cat([index for index, _ in once]).tolist())


def test_webdataset_skips_bad_samples_and_counts_them(tmp_path):
    with tarfile.open(tmp_path / "a.tar", "w") as tar:
        add_member(tar, "0.png", png_bytes(colour_image(0)))
        add_member(tar, "1.png", b"")
        add_member(tar, "2.jpg", b"\xff\xd8 garbage")
        add_member(tar, "3.txt", b"caption without image")
        add_member(tar, "4.png", png_bytes(colour_image(4)))
        add_member(tar, "4.txt", b"x" * 3000)
    samples = list(build_dataset(f"wds:{tmp_path}/a.tar", shuffle=False, max_caption_chars=100))
    assert [image_id(s) for s in samples] == [0, 4]
    assert samples[1].events == (("skipped/empty_file", "a.tar#1"), ("skipped/unreadable", "a.tar#2"),
                                 ("skipped/no_image", "a.tar#3"), ("caption_repaired/short", "a.tar#4"))
    assert samples[1].captions["short"] == "x" * 100  # no word boundary: cut hard

    # A shard cut off mid-file: what came before is kept, the rest of the shard is reported lost.
    write_shards(tmp_path, shards=2, per_shard=4)
    data = (tmp_path / "shard-001.tar").read_bytes()
    (tmp_path / "shard-001.tar").write_bytes(data[: len(data) // 2 - 100])  # inside a member
    samples = list(build_dataset(f"wds:{tmp_path}/shard-{{000..001}}.tar", shuffle=False))
    assert 4 < len(samples) < 8 and [image_id(s) for s in samples] == list(range(len(samples)))
    tail = list(build_dataset(f"wds:{tmp_path}/shard-{{001,000}}.tar", shuffle=False))
    (event, where), = tail[len(samples) - 4].events  # reported by shard 000's first sample
    assert event == "skipped/corrupt_shard" and where.startswith("shard-001.tar#")


def test_webdataset_errors(tmp_path):
    write_shards(tmp_path, shards=1, per_shard=1)
    with pytest.raises(UserError, match="shard-001.tar does not exist"):
        build_dataset(f"wds:{tmp_path}/shard-{{000..001}}.tar")
    with tarfile.open(tmp_path / "bad.tar", "w") as tar:
        add_member(tar, "0.jpg", b"\xff\xd8 garbage")
        add_member(tar, "1.png", b"")
    with pytest.raises(UserError, match=r"no valid image left.*empty_file 1, unreadable 1"):
        build_dataset(f"wds:{tmp_path}/bad.tar")


def test_brace_expansion():
    assert expand_braces("d/s-{000..002}.tar") == ["d/s-000.tar", "d/s-001.tar", "d/s-002.tar"]
    assert expand_braces("{a,b}-{8..10}.tar") == ["a-8.tar", "a-9.tar", "a-10.tar", "b-8.tar", "b-9.tar", "b-10.tar"]


def test_scenes_spec_and_bad_specs(tmp_path):
    heldout = build_dataset("scenes:heldout", length=3)
    assert len(heldout) == 3 and heldout[0].image.mode == "RGB" and set(heldout[0].captions) <= {
        "short", "medium", "long"}
    assert len(build_dataset("scenes", length=2, caption_columns={}, index=None)) == 2  # unset options
    with pytest.raises(UserError, match="does not exist"):
        build_dataset(f"folder:{tmp_path}/nope")
    with pytest.raises(UserError, match="no images found"):
        build_dataset(f"folder:{tmp_path}")
    with pytest.raises(UserError, match="not an existing directory"):
        build_dataset(f"{tmp_path}/nope")
    with pytest.raises(UserError, match="data option 'colour' is not valid for a folder: source"):
        build_dataset(str(tmp_path), colour="red")
    with pytest.raises(UserError, match="names no path"):
        build_dataset("hf:")
