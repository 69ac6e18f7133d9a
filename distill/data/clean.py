"""Turn one raw record (image bytes or path, caption values) into a clean RGB image and captions.

A bad image raises `BadSample(reason)`; the caller skips it and counts the reason. Fixable problems
(non-RGB modes, empty or over-long captions) are repaired and reported as event strings.
"""
from __future__ import annotations

import io
import os
import warnings
from typing import Any

import numpy as np
import simplejpeg
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from distill.data.sample import CAPTION_KEYS
from common.errors import UserError

DEFAULT_MAX_CAPTION_CHARS = 1000


class BadSample(Exception):
    """An item that cannot be used; `reason` is a short key such as `truncated` or `empty_file`."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def check_max_image_pixels(value: int | None) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise UserError(f"data option max_image_pixels={value!r}: expected a positive number of pixels")


def decode_image(source: bytes | str | os.PathLike, max_pixels: int | None = None
                 ) -> tuple[Image.Image | np.ndarray, tuple[str, ...]]:
    """Decode fully (so truncation shows here, not later in a worker) and convert to RGB: a PIL image, or for a JPEG
    that needs neither (`plain_jpeg`) an (H, W, 3) uint8 array.

    An image of more than `max_pixels` (None: PIL's `Image.MAX_IMAGE_PIXELS` at call time) is refused from its
    header, before a pixel is decoded: PIL by itself only warns below twice its limit, and refuses above it
    whatever `max_pixels` says."""
    if isinstance(source, (bytes, bytearray)):
        if not source:
            raise BadSample("empty_file")
        stream = io.BytesIO(source)
    else:
        try:
            if os.path.getsize(source) == 0:
                raise BadSample("empty_file")
        except OSError:
            raise BadSample("missing_file") from None
        stream = source
    budget = Image.MAX_IMAGE_PIXELS if max_pixels is None else max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # refused below, as a skip
            opened = Image.open(stream)
        with opened:
            if budget is not None and opened.width * opened.height > budget:
                raise BadSample("decompression_bomb")
            pixels = plain_jpeg(opened)
            if pixels is not None:
                return pixels, ()
            opened.load()
            image = ImageOps.exif_transpose(opened)
            mode = image.mode
            rgb = to_rgb(image)
    except BadSample:
        raise
    except Image.DecompressionBombError:
        raise BadSample("decompression_bomb") from None
    except UnidentifiedImageError:
        raise BadSample("unreadable") from None
    except OSError as exc:
        raise BadSample("truncated" if "truncated" in str(exc).lower() else "unreadable") from None
    except Exception:  # noqa: BLE001 - decoders raise many types on corrupt input; none may stop a run
        raise BadSample("unreadable") from None
    if rgb.width < 1 or rgb.height < 1:
        raise BadSample("unreadable")
    return rgb, (() if mode == "RGB" else (f"converted/{mode}",))


def plain_jpeg(opened: Image.Image) -> np.ndarray | None:
    """The pixels of an opened JPEG stored as colour (YCbCr or RGB) that no EXIF orientation turns, decoded by
    simplejpeg: libjpeg-turbo, as in Pillow, with Pillow's settings (accurate integer DCT, smooth chroma
    upsampling), so the same pixels, written straight into an array instead of Pillow's 4-byte pixels and the
    copies out of them (a 640x480 photo costs half). None for any other image, and for a JPEG libjpeg-turbo warns
    about (corrupt or truncated data): Pillow decodes those, or says why not, as for every other image."""
    if (opened.format != "JPEG" or opened.mode != "RGB"
            or opened.getexif().get(ExifTags.Base.Orientation, 1) in range(2, 9)):  # what exif_transpose turns
        return None
    opened.fp.seek(0)
    try:
        return simplejpeg.decode_jpeg(opened.fp.read(), colorspace="RGB", fastdct=False, fastupsample=False,
                                      strict=True)
    except ValueError:
        return None


def to_rgb(image: Image.Image) -> Image.Image:
    if image.mode == "RGB":
        return image
    if image.mode in ("I", "I;16", "I;16L", "I;16B", "I;16N", "F"):
        # Pillow's own convert clips 16-bit values at 255 (a white image); rescale the range instead.
        values = np.asarray(image, dtype=np.float64)
        scale = 1.0 if image.mode == "F" else 257.0
        return Image.fromarray(np.clip(values / scale, 0, 255).round().astype(np.uint8)).convert("RGB")
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "RGBa", "La", "PA"):
        # Transparent pixels hold arbitrary colours; show them as white, like a viewer would.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def clean_captions(raw: dict[str, Any], max_chars: int = DEFAULT_MAX_CAPTION_CHARS
                   ) -> tuple[dict[str, str], tuple[str, ...]]:
    """Whitespace is normalised; None means "no caption" and is not an event."""
    captions: dict[str, str] = {}
    events: list[str] = []
    for key in CAPTION_KEYS:
        value = raw.get(key)
        if value is None:
            continue
        if isinstance(value, bytes):
            value = value.decode("utf-8", errors="replace")
        text = " ".join(value.split()) if isinstance(value, str) else ""
        if not text:
            events.append(f"caption_dropped/{key}")
            continue
        if len(text) > max_chars:
            text = truncate_at_word(text, max_chars)
            events.append(f"caption_repaired/{key}")
        captions[key] = text
    return captions, tuple(events)


def truncate_at_word(text: str, max_chars: int) -> str:
    head = text[: max_chars + 1]
    cut = head.rfind(" ")
    # One giant "word" (no space in the window) has no boundary to respect: cut it hard.
    return (head[:cut] if cut > 0 else text[:max_chars]).rstrip()
