"""Pillow decode/validate/resize/encode of single images, and the image-tree builders the other
ImageNet pipeline tests share (every kind of good and bad file ImageNet-like data holds)."""

from __future__ import annotations

import io
import struct
import tarfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data_pipeline.imagenet.process import ImageOptions, Rejected, process_image, target_size

# ---------------------------------------------------------------- builders (shared with other tests)


def _pixels(w: int, h: int, seed: int) -> np.ndarray:
    """Smooth colour gradients plus a little noise: compresses like a photo, differs per seed."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 255 / max(w - 1, 1), y * 255 / max(h - 1, 1), (x + y) * 127 / max(w + h, 1)], -1)
    return np.clip(base + rng.integers(-12, 12, base.shape), 0, 255).astype(np.uint8)


def rgb_image(w: int, h: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(_pixels(w, h, seed), "RGB")


def encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def exif_rotated_jpeg(w: int, h: int, orientation: int = 6, seed: int = 0) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(rgb_image(w, h, seed), "JPEG", quality=90, exif=exif.tobytes())


def bomb_png(w: int = 100_000, h: int = 100_000) -> bytes:
    """A tiny PNG whose header declares ``w`` x ``h`` pixels."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def palette_png(w: int, h: int, transparent: bool) -> bytes:
    im = rgb_image(w, h, 7).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    return encode(im, "PNG", **({"transparency": 0} if transparent else {}))


def image_kinds(seed: int) -> dict[str, tuple[bytes, str | None]]:
    """name -> (file bytes, expected rejection reason or None). Sizes vary with ``seed``."""
    good_jpeg = encode(rgb_image(90 + seed, 60, seed), "JPEG", quality=90)
    rgba = rgb_image(50, 70, seed).convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize((50, 70)))
    return {
        f"big_{seed}.JPEG": (good_jpeg, None),
        f"small_{seed}.JPEG": (encode(rgb_image(30, 20 + seed, seed), "JPEG", quality=90), None),
        f"wide_{seed}.png": (encode(rgb_image(120, 40, seed), "PNG"), None),
        f"cmyk_{seed}.JPEG": (encode(rgb_image(64, 64, seed).convert("CMYK"), "JPEG", quality=90), None),
        f"grey_{seed}.JPEG": (encode(rgb_image(40, 56, seed).convert("L"), "JPEG", quality=90), None),
        f"rgba_{seed}.png": (encode(rgba, "PNG"), None),
        f"palette_{seed}.png": (palette_png(33, 47, transparent=bool(seed % 2)), None),
        f"png_named_{seed}.JPEG": (encode(rgb_image(70, 50, seed), "PNG"), None),
        f"rotated_{seed}.JPEG": (exif_rotated_jpeg(80, 40, 6, seed), None),
        f"truncated_{seed}.JPEG": (good_jpeg[: len(good_jpeg) // 2], "truncated"),
        f"empty_{seed}.JPEG": (b"", "empty"),
        f"random_{seed}.JPEG": (np.random.default_rng(seed).bytes(3000), "not_an_image"),
        f"bomb_{seed}.png": (bomb_png(), "decompression_bomb"),
    }


def make_tree(root: Path, wnids=("n01440764", "n01443537", "n09999999"), with_val: bool = True) -> dict:
    """``root/train/<wnid>/*`` (every kind per class), optionally a flat ``root/val`` labelled by
    LOC_val_solution.csv (plus one file the CSV lacks), and LOC_synset_mapping.txt.
    Returns {"train"|"val": {source: (wnid or None, expected reason or None)}}."""
    expected: dict[str, dict] = {"train": {}, "val": {}}
    for ci, wnid in enumerate(wnids):
        for name, (data, reason) in image_kinds(ci).items():
            path = root / "train" / wnid / f"{wnid}_{name}"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            expected["train"][f"{wnid}/{path.name}"] = (wnid, reason)
    (root / "LOC_synset_mapping.txt").write_text("".join(f"{w} name of {w}, alias\n" for w in wnids))
    if with_val:
        rows = ["ImageId,PredictionString"]
        for i in range(7):
            wnid = wnids[i % len(wnids)]
            stem = f"ILSVRC2012_val_{i + 1:08d}"
            data = encode(rgb_image(60 + i, 50, 100 + i), "JPEG", quality=85) if i != 3 else b""
            (root / "val").mkdir(parents=True, exist_ok=True)
            (root / "val" / f"{stem}.JPEG").write_bytes(data)
            rows.append(f"{stem},{wnid} 1 2 30 40 {wnid} 3 4 10 10")
            expected["val"][f"{stem}.JPEG"] = (wnid, "empty" if i == 3 else None)
        (root / "val" / "unlisted.JPEG").write_bytes(encode(rgb_image(20, 20), "JPEG"))
        expected["val"]["unlisted.JPEG"] = (None, "no_label")
        (root / "LOC_val_solution.csv").write_text("\n".join(rows) + "\n")
    return expected


def make_tar_of_tars(train_dir: Path, archive: Path) -> Path:
    """The ILSVRC2012_img_train.tar layout: one uncompressed tar per class, inside one tar."""
    archive.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "w", format=tarfile.USTAR_FORMAT) as outer:
        for class_dir in sorted(p for p in train_dir.iterdir() if p.is_dir()):
            buf = io.BytesIO()
            with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as inner:
                for f in sorted(class_dir.iterdir(), reverse=True):  # member order must not matter
                    inner.add(f, arcname=f.name)
            info = tarfile.TarInfo(f"{class_dir.name}.tar")
            info.size = len(buf.getvalue())
            outer.addfile(info, io.BytesIO(buf.getvalue()))
    return archive


# ---------------------------------------------------------------- tests of process_image

OPTS = ImageOptions(max_size=48, quality=90)


@pytest.mark.parametrize("name", sorted(image_kinds(0)))
def test_every_kind_becomes_rgb_within_max_size_or_is_rejected_with_its_reason(name):
    data, reason = image_kinds(0)[name]
    if reason:
        with pytest.raises(Rejected) as e:
            process_image(data, OPTS)
        assert e.value.reason == reason
        return
    out = process_image(data, OPTS)
    im = Image.open(io.BytesIO(out.jpeg))
    assert im.format == "JPEG" and im.mode == "RGB"
    assert im.size == (out.width, out.height)
    assert min(im.size) <= OPTS.max_size
    assert min(im.size) == min(OPTS.max_size, out.orig_width, out.orig_height)  # never upscaled


def test_small_rgb_jpeg_keeps_original_bytes_and_everything_else_is_reencoded():
    kinds = image_kinds(0)
    small = kinds["small_0.JPEG"][0]
    out = process_image(small, OPTS)
    assert out.jpeg == small and not out.reencoded and not out.resized
    for name in ("grey_0.JPEG", "cmyk_0.JPEG", "png_named_0.JPEG", "rotated_0.JPEG", "big_0.JPEG"):
        assert process_image(kinds[name][0], OPTS).reencoded, name


def test_exif_orientation_is_applied():
    out = process_image(exif_rotated_jpeg(80, 40, orientation=6), ImageOptions(max_size=0))
    assert (out.orig_width, out.orig_height) == (40, 80)  # stored landscape, shown portrait
    im = Image.open(io.BytesIO(out.jpeg))
    assert im.size == (40, 80) and not im.getexif().get(0x0112)
    resized = process_image(exif_rotated_jpeg(200, 100, orientation=8), ImageOptions(max_size=50))
    assert (resized.width, resized.height) == (50, 100)


def test_transparent_pixels_become_white_not_black():
    im = Image.new("RGBA", (20, 20), (0, 0, 0, 0))
    out = process_image(encode(im, "PNG"), OPTS)
    assert Image.open(io.BytesIO(out.jpeg)).getpixel((10, 10)) >= (250, 250, 250)


def test_greyscale_16_bit_png_becomes_rgb():
    a = (np.arange(64 * 48).reshape(48, 64) * 20).astype(np.uint16)
    out = process_image(encode(Image.fromarray(a), "PNG"), OPTS)
    im = Image.open(io.BytesIO(out.jpeg))
    assert im.mode == "RGB" and im.size == (64, 48) and out.reencoded
    r, g, b = im.getpixel((32, 24))
    assert r == g == b and abs(r - int(a[24, 32]) // 256) <= 3


def test_decompression_bomb_below_pillow_limit_is_refused_by_max_pixels():
    data = bomb_png(5000, 5000)  # 25 Mpx: Pillow itself would accept it
    with pytest.raises(Rejected) as e:
        process_image(data, ImageOptions(max_size=48, max_pixels=10_000_000))
    assert e.value.reason == "decompression_bomb"


@pytest.mark.parametrize("w,h,m,expected", [(500, 375, 256, (341, 256)), (375, 500, 256, (256, 341)),
                                            (100, 80, 256, (100, 80)), (300, 300, 300, (300, 300)),
                                            (1000, 10, 5, (500, 5)), (640, 480, 0, (640, 480))])
def test_target_size_reduces_the_shorter_side_and_never_upscales(w, h, m, expected):
    assert target_size(w, h, m) == expected


@pytest.mark.parametrize("name", ["big_0.JPEG", "wide_0.png", "grey_0.JPEG", "rotated_0.JPEG"])
def test_damaged_files_are_processed_or_rejected_never_crash(name):
    """Random byte damage: the result is an RGB JPEG or a documented rejection, never another exception."""
    data = bytearray(image_kinds(0)[name][0])
    rng = np.random.default_rng(1)
    for trial in range(40):
        damaged = bytearray(data)
        for i in rng.integers(0, len(damaged), size=1 + trial % 8):
            damaged[i] = int(rng.integers(0, 256))
        try:
            out = process_image(bytes(damaged), OPTS)
            assert Image.open(io.BytesIO(out.jpeg)).mode == "RGB"
        except Rejected as e:
            assert e.reason in {"corrupt", "truncated", "not_an_image", "unsupported_format", "decompression_bomb"}


def test_resized_rgb_jpeg_keeps_its_icc_profile_and_cmyk_drops_its_own():
    from PIL import ImageCms

    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    out = process_image(encode(rgb_image(120, 90), "JPEG", icc_profile=icc), OPTS)
    assert out.resized and Image.open(io.BytesIO(out.jpeg)).info.get("icc_profile") == icc
    cmyk = encode(rgb_image(64, 64).convert("CMYK"), "JPEG", icc_profile=b"not an rgb profile")
    assert "icc_profile" not in Image.open(io.BytesIO(process_image(cmyk, OPTS).jpeg)).info
