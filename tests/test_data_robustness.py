"""Broken and unusual inputs: skipped or repaired, counted per reason, and a clear error when nothing is left."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from distill.data import DataStats, build_dataset, make_dataloader
from distill.data.clean import decode_image, truncate_at_word
from common.errors import UserError

LONG_CAPTION = " ".join(f"word{i}" for i in range(1500))  # 10,389 characters


def jpeg_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def gradient(size=(40, 30)) -> Image.Image:
    x = np.linspace(0, 255, size[0], dtype=np.uint8)
    return Image.fromarray(np.stack([np.tile(x, (size[1], 1))] * 3, axis=-1))


@pytest.fixture
def messy_folder(tmp_path):
    """Three good RGB images plus every kind of trouble the issue names (and a few more)."""
    for name in ("good0.png", "good1.png", "good2.png"):
        gradient().save(tmp_path / name)
    (tmp_path / "good0.txt").write_text("   \n\t ")  # empty caption: dropped
    (tmp_path / "good1.txt").write_text(LONG_CAPTION)  # 10k characters: cut at a word boundary
    (tmp_path / "good2.txt").write_text("a fine gradient")
    (tmp_path / "truncated.jpg").write_bytes(jpeg_bytes(gradient((64, 64)))[:600])
    (tmp_path / "zero.jpg").write_bytes(b"")
    (tmp_path / "garbage.png").write_bytes(b"\x89PNG this is not really a png")
    Image.new("CMYK", (20, 20), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg")  # red in CMYK
    rgba = Image.new("RGBA", (20, 20), (0, 0, 255, 255))
    rgba.putpixel((0, 0), (0, 0, 0, 0))  # fully transparent: shown as white
    rgba.save(tmp_path / "rgba.png")
    Image.new("L", (20, 20), 77).save(tmp_path / "gray.png")
    Image.fromarray(np.full((20, 20), 65535, np.uint16)).save(tmp_path / "gray16.png")
    Image.new("P", (20, 20), 3).save(tmp_path / "palette.gif")
    return tmp_path


def epoch_stats(dataset, workers: int) -> tuple[DataStats, list[int]]:
    stats, indices = DataStats(), []
    loader = make_dataloader(dataset, batch_size=4, student_size=16, seed=0, num_workers=workers, drop_last=False)
    loader.set_epoch(0)
    for batch in loader:
        stats.merge(batch.stats)
        indices += batch.index.tolist()
        pixels = batch.to("cpu").pixels
        assert pixels.shape[1:] == (3, 16, 16)
        assert 0 <= pixels.min() and pixels.max() <= 1
    return stats, indices


def test_messy_folder_loads_and_reports(messy_folder):
    ds = build_dataset(f"folder:{messy_folder}")
    assert len(ds) == 11
    stats, indices = epoch_stats(ds, workers=0)
    assert stats.samples == 11 and len(indices) == 11
    assert stats.counts == {
        "skipped/truncated": 1, "skipped/empty_file": 1, "skipped/unreadable": 1,
        "converted/CMYK": 1, "converted/RGBA": 1, "converted/L": 1, "converted/I;16": 1, "converted/P": 1,
        "caption_dropped/short": 1, "caption_repaired/short": 1,
    }
    names = [r.image.split("/")[-1] for r in ds._records]
    assert {names[i] for i in indices} <= {"good0.png", "good1.png", "good2.png", "cmyk.jpg", "rgba.png",
                                           "gray.png", "gray16.png", "palette.gif"}
    summary = stats.summary()
    # Per reason: how many files, and which (the first few).
    assert ("skipped 3 (empty_file 1: zero.jpg; truncated 1: truncated.jpg; unreadable 1: garbage.png)"
            in summary)
    assert "captions dropped 1 (short 1: good0.png)" in summary
    assert "captions repaired 1 (short 1: good1.png; longer than max_caption_chars, cut at a word boundary)" in summary
    assert stats.as_dict()["data/skipped/truncated"] == 1
    # Worker processes report through the batches: the same counts, the same samples.
    in_workers, worker_indices = epoch_stats(ds, workers=2)
    assert in_workers == stats and worker_indices == indices
    # A second epoch draws every file again: the samples double, the files counted do not.
    stats.merge(epoch_stats(ds, workers=0)[0])
    assert stats.samples == 22 and stats.total("skipped") == 3 and stats.examples("converted/P") == ["palette.gif"]


def test_conversions_keep_the_picture(messy_folder):
    def pixel(name, xy=(5, 5)):
        image, _ = decode_image(messy_folder / name)
        assert image.mode == "RGB"
        return image.getpixel(xy)

    r, g, b = pixel("cmyk.jpg")
    assert r > 200 and g < 60 and b < 60
    assert pixel("rgba.png") == (0, 0, 255) and pixel("rgba.png", (0, 0)) == (255, 255, 255)
    assert pixel("gray.png") == (77, 77, 77)
    assert pixel("gray16.png") == (255, 255, 255)
    half, _ = decode_image(_png16(32896))
    assert half.getpixel((0, 0)) == (128, 128, 128)  # 16-bit values are rescaled, not clipped


def test_plain_jpegs_decode_to_arrays_with_pillows_pixels(tmp_path):
    """A colour JPEG that no EXIF orientation turns is decoded straight into an (H, W, 3) array (simplejpeg), pixel
    for pixel what Pillow decodes, from a file or from bytes; a rotated, grey or corrupt one takes Pillow's path as
    before (a corrupt one Pillow still decodes, with the grey it fills in)."""
    rng = np.random.default_rng(0)
    smooth = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize((97, 71), Image.Resampling.BICUBIC)
    for name, options in {"420.jpg": dict(quality=90), "444.jpg": dict(quality=95, subsampling=0),
                          "progressive.jpg": dict(progressive=True)}.items():
        smooth.save(tmp_path / name, **options)
        pillow = np.asarray(Image.open(tmp_path / name).convert("RGB"))
        for source in (tmp_path / name, (tmp_path / name).read_bytes()):
            decoded, events = decode_image(source)
            assert isinstance(decoded, np.ndarray) and events == () and np.array_equal(decoded, pillow)
    exif = Image.Exif()
    exif[0x0112] = 6
    smooth.save(tmp_path / "rotated.jpg", exif=exif.tobytes())
    smooth.convert("L").save(tmp_path / "gray.jpg")
    (tmp_path / "cut.jpg").write_bytes((tmp_path / "420.jpg").read_bytes()[:1500] + b"\xff\xd9")  # EOI mid-scan
    for name, size, events in (("rotated.jpg", (71, 97), ()), ("gray.jpg", (97, 71), ("converted/L",)),
                               ("cut.jpg", (97, 71), ())):
        decoded, got = decode_image(tmp_path / name)
        assert isinstance(decoded, Image.Image) and decoded.size == size and got == events


def _png16(value: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((4, 4), value, np.uint16)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_captions_repaired_at_word_boundary(messy_folder):
    ds = build_dataset(f"folder:{messy_folder}", max_caption_chars=1000)
    sample = next(ds[i] for i in range(len(ds)) if ("caption_repaired/short", "good1.png") in ds[i].events)
    text = sample.captions["short"]
    assert len(text) <= 1000 and LONG_CAPTION.startswith(text) and LONG_CAPTION[len(text)] == " "
    assert truncate_at_word("aaaa bbbb", 6) == "aaaa"
    assert truncate_at_word("x" * 10, 4) == "xxxx"
    with pytest.raises(UserError, match="max_caption_chars=0"):
        build_dataset(f"folder:{messy_folder}", max_caption_chars=0)


def test_bad_item_is_replaced_by_the_next_valid_one(messy_folder):
    ds = build_dataset(f"folder:{messy_folder}")
    names = [r.image.split("/")[-1] for r in ds._records]
    bad = names.index("truncated.jpg")
    sample = ds[bad]
    assert sample.events == (("skipped/truncated", "truncated.jpg"),)
    # Sorted order: truncated.jpg, zero.jpg (bad too), then round to the first file.
    assert names[bad + 1] == "zero.jpg" and names[sample.index] == names[0] == "cmyk.jpg"
    again = build_dataset(f"folder:{messy_folder}")[bad]  # a fresh process-like instance agrees
    assert again.index == sample.index and again.events == sample.events


def test_all_bad_folder_is_a_user_error(tmp_path):
    (tmp_path / "zero.jpg").write_bytes(b"")
    (tmp_path / "truncated.jpg").write_bytes(jpeg_bytes(gradient((64, 64)))[:300])
    (tmp_path / "garbage.png").write_bytes(b"nope")
    with pytest.raises(UserError, match=r"no valid image left: all 3 items are unusable "
                                        r"\(empty_file 1, truncated 1, unreadable 1\)"):
        build_dataset(f"folder:{tmp_path}")


def test_exif_orientation_is_applied():
    """A phone photo stored sideways with EXIF orientation 6 (rotate 90 degrees clockwise to display)."""
    stored = np.zeros((20, 40, 3), np.uint8)
    stored[:, :20] = (255, 0, 0)  # red on the left of the stored pixels
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    Image.fromarray(stored).save(buffer, format="JPEG", quality=95, exif=exif.tobytes())
    image, _ = decode_image(buffer.getvalue())
    assert image.size == (20, 40)  # width and height swapped
    top, bottom = np.asarray(image)[:10].mean((0, 1)), np.asarray(image)[-10:].mean((0, 1))
    assert top[0] > 200 and top[1] < 60 and bottom[0] < 60  # clockwise: the stored left half is now on top
