"""Decode, validate, orient, resize and (re-)encode one image with Pillow.

``process_image(data, options)`` returns a :class:`Processed` (RGB JPEG bytes plus sizes) or raises
:class:`Rejected` with a short machine-readable reason and a human detail. Reasons:

``empty``               zero-byte file
``not_an_image``        Pillow cannot identify it (random bytes, text, ...)
``unsupported_format``  identified, but not a still-image format we accept
``decompression_bomb``  declared width*height above ``max_pixels`` (refused before decoding)
``truncated``           the pixel data ends early
``corrupt``             any other decode error

Why each step: ImageNet holds CMYK and greyscale JPEGs, a PNG named ``.JPEG`` and a few palette
or alpha images; training code wants plain RGB. JPEGs that are already RGB, upright and small
enough keep their original bytes (no generation loss, no encode cost); they are still fully
decoded first so a truncated file is never passed on. For JPEGs that must shrink, ``draft`` lets
libjpeg decode at 1/2, 1/4 or 1/8 scale (never below the target), which is most of the speed.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from PIL import Image, ImageOps, UnidentifiedImageError

ACCEPTED_FORMATS = frozenset({"JPEG", "MPO", "PNG", "GIF", "BMP", "WEBP", "TIFF", "PPM"})
DEFAULT_MAX_PIXELS = 89_478_485  # Pillow's own MAX_IMAGE_PIXELS default
EXIF_ORIENTATION = 0x0112
RESAMPLE = Image.Resampling.BICUBIC


class Rejected(Exception):
    """The input cannot become a training sample; ``reason`` is one of the module's reason codes."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class ImageOptions:
    max_size: int = 512  # shorter side is reduced to this; 0 disables resizing
    quality: int = 95
    max_pixels: int = DEFAULT_MAX_PIXELS


@dataclass
class Processed:
    jpeg: bytes
    width: int
    height: int
    orig_width: int  # after EXIF orientation, before resizing
    orig_height: int
    reencoded: bool
    resized: bool


def target_size(width: int, height: int, max_size: int) -> tuple[int, int]:
    """Size with the shorter side reduced to ``max_size``, aspect kept; never larger than the input."""
    short = min(width, height)
    if max_size <= 0 or short <= max_size:
        return width, height
    scale = max_size / short
    if width <= height:
        return max_size, max(1, round(height * scale))
    return max(1, round(width * scale)), max_size


def _open(data: bytes, max_pixels: int) -> Image.Image:
    if not data:
        raise Rejected("empty", "zero-byte file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as e:
        raise Rejected("decompression_bomb", str(e)) from None
    except UnidentifiedImageError:
        raise Rejected("not_an_image", "Pillow cannot identify the file") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise Rejected("corrupt", f"header: {e}") from None
    if im.format not in ACCEPTED_FORMATS:
        raise Rejected("unsupported_format", str(im.format))
    w, h = im.size
    if w <= 0 or h <= 0:
        raise Rejected("corrupt", f"size {w}x{h}")
    if w * h > max_pixels:
        raise Rejected("decompression_bomb", f"{w}x{h} = {w * h} pixels > {max_pixels}")
    return im


def _orientation(im: Image.Image) -> int:
    try:
        value = im.getexif().get(EXIF_ORIENTATION, 1)
        return int(value) if value in range(1, 9) else 1
    except Exception:  # malformed EXIF must not reject an otherwise good image
        return 1


def _load(im: Image.Image) -> None:
    try:
        im.load()
    except Image.DecompressionBombError as e:
        raise Rejected("decompression_bomb", str(e)) from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        msg = str(e)
        reason = "truncated" if "truncated" in msg.lower() or isinstance(e, EOFError) else "corrupt"
        raise Rejected(reason, msg) from None


def _to_rgb(im: Image.Image) -> Image.Image:
    """RGB; transparency is composited onto white so transparent pixels do not turn black."""
    if im.mode == "RGB":
        return im
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if im.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        im = im.point(lambda v: v / 256).convert("L") if im.mode != "F" else im.convert("L")
    return im.convert("RGB")


def process_image(data: bytes, options: ImageOptions) -> Processed:
    """One input file's bytes -> an RGB JPEG within ``options.max_size``, or :class:`Rejected`."""
    im = _open(data, options.max_pixels)
    orientation = _orientation(im)
    swap = orientation >= 5  # EXIF orientations 5-8 turn the image by 90 degrees
    raw_w, raw_h = im.size
    orig_w, orig_h = (raw_h, raw_w) if swap else (raw_w, raw_h)
    out_w, out_h = target_size(orig_w, orig_h, options.max_size)
    resize = (out_w, out_h) != (orig_w, orig_h)
    if resize and im.format in ("JPEG", "MPO"):
        im.draft(im.mode, (out_h, out_w) if swap else (out_w, out_h))  # DCT-domain downscale, >= target
    _load(im)
    if im.format == "JPEG" and im.mode == "RGB" and orientation == 1 and not resize:
        return Processed(data, raw_w, raw_h, raw_w, raw_h, reencoded=False, resized=False)
    if orientation != 1:
        im = ImageOps.exif_transpose(im)
    icc = im.info.get("icc_profile") if im.mode == "RGB" else None  # an RGB profile stays valid for RGB pixels
    try:
        rgb = _to_rgb(im)
        if rgb.size != (out_w, out_h):
            rgb = rgb.resize((out_w, out_h), RESAMPLE)
    except (OSError, ValueError) as e:
        raise Rejected("corrupt", f"convert: {e}") from None
    return Processed(encode_jpeg(rgb, options.quality, icc), out_w, out_h, orig_w, orig_h, reencoded=True, resized=resize)


def encode_jpeg(im: Image.Image, quality: int, icc_profile: bytes | None = None) -> bytes:
    """Baseline JPEG without EXIF (orientation is already applied to the pixels)."""
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=quality, **({"icc_profile": icc_profile} if icc_profile else {}))
    return buf.getvalue()


def plain_pillow_loop_step(data: bytes, max_size: int, quality: int) -> bytes:
    """The baseline the benchmark compares against: open, RGB, resize, encode -- no shortcuts."""
    im = Image.open(io.BytesIO(data)).convert("RGB")
    size = target_size(im.width, im.height, max_size)
    if size != im.size:
        im = im.resize(size, RESAMPLE)
    return encode_jpeg(im, quality)
