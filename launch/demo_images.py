"""The demo's labelled image folder: ten classes of shapes and patterns a small ViT learns in minutes.

Written in the ImageNet layout ``pretrain data imagenet`` reads (``<root>/<split>/<wnid>/*.JPEG``,
class names in ``<root>/LOC_synset_mapping.txt``). Deterministic: the same ``seed`` gives the same
bytes. Every image has a random background colour, noise and foreground colour; shapes vary in
place and size and patterns in period and phase, so the class is the shape, not a colour or a pixel.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

CLASSES = ("circle", "triangle", "horizontal stripes", "vertical stripes", "diagonal stripes", "checkerboard",
           "dots", "grid", "rings", "plain")
SHAPES = ("circle", "triangle")
SIZE = 48


def wnid(index: int) -> str:
    return f"n{90000000 + index:08d}"


def _colours(rng: random.Random) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """A light background and a dark foreground, any hue: one polarity, which a small model's
    linear patch embedding picks up in a few thousand images."""
    while True:
        bg = tuple(rng.randrange(256) for _ in range(3))
        fg = tuple(rng.randrange(256) for _ in range(3))
        if sum(bg) - sum(fg) > 200:
            return bg, fg


def _shape(draw, kind: str, rng: random.Random, fg) -> None:
    r = rng.randint(SIZE * 3 // 10, SIZE * 2 // 5)
    cx, cy = rng.randint(r + 2, SIZE - r - 3), rng.randint(r + 2, SIZE - r - 3)
    box = (cx - r, cy - r, cx + r, cy + r)
    if kind == "circle":
        draw.ellipse(box, fill=fg)
    elif kind == "triangle":
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fg)


def _pattern(draw, kind: str, rng: random.Random, fg) -> None:
    period = rng.randint(6, 12)
    half, phase = period // 2, rng.randrange(period)
    if kind == "horizontal stripes":
        for y in range(-phase, SIZE, period):
            draw.rectangle((0, y, SIZE, y + half - 1), fill=fg)
    elif kind == "vertical stripes":
        for x in range(-phase, SIZE, period):
            draw.rectangle((x, 0, x + half - 1, SIZE), fill=fg)
    elif kind == "diagonal stripes":  # either direction: a flip in training turns one into the other
        lean = SIZE if rng.random() < 0.5 else -SIZE
        for d in range(-2 * SIZE - phase, 3 * SIZE, period):
            draw.polygon([(d, SIZE), (d + half, SIZE), (d + half + lean, 0), (d + lean, 0)], fill=fg)
    elif kind == "checkerboard":
        for y in range(-phase, SIZE, period):
            for x in range(-phase, SIZE, period):
                if ((x + phase) // period + (y + phase) // period) % 2 == 0:
                    draw.rectangle((x, y, x + period - 1, y + period - 1), fill=fg)
    elif kind == "dots":
        dot = max(1, period // 4)
        for y in range(-phase + half, SIZE, period):
            for x in range(-phase + half, SIZE, period):
                draw.ellipse((x - dot, y - dot, x + dot, y + dot), fill=fg)
    elif kind == "grid":
        for v in range(-phase, SIZE, period):
            draw.rectangle((v, 0, v + 1, SIZE), fill=fg)
            draw.rectangle((0, v, SIZE, v + 1), fill=fg)
    elif kind == "rings":
        cx, cy = rng.randrange(SIZE), rng.randrange(SIZE)
        for r in range(period - phase // 2, 2 * SIZE, period):
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), outline=fg, width=max(2, half - 1))


def draw_image(kind: str, rng: random.Random):
    """One ``SIZE`` x ``SIZE`` RGB image of class ``kind``."""
    import numpy as np
    from PIL import Image, ImageDraw

    bg, fg = _colours(rng)
    img = Image.new("RGB", (SIZE, SIZE), bg)
    draw = ImageDraw.Draw(img)
    (_shape if kind in SHAPES else _pattern)(draw, kind, rng, fg)
    noise = np.random.default_rng(rng.randrange(2**32)).normal(0, 12, (SIZE, SIZE, 3))
    return Image.fromarray(np.clip(np.asarray(img, dtype=np.float32) + noise, 0, 255).astype(np.uint8))


def write_image_folder(root: str | Path, per_class: dict[str, int], seed: int = 0) -> Path:
    """``root/<split>/<wnid>/<split>_<i>.JPEG`` for ``per_class[split]`` images of every class, plus
    ``LOC_synset_mapping.txt``; written into a temporary sibling renamed at the end, so a folder
    that exists is complete."""
    import shutil

    root = Path(root)
    if root.is_dir():
        return root
    tmp = root.with_name(f".{root.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    for split, n in per_class.items():
        for c, kind in enumerate(CLASSES):
            folder = tmp / split / wnid(c)
            folder.mkdir(parents=True)
            rng = random.Random(f"demo-images:{seed}:{split}:{c}")
            for i in range(n):
                draw_image(kind, rng).save(folder / f"{split}_{i:05d}.JPEG", quality=90)
    (tmp / "LOC_synset_mapping.txt").write_text("".join(f"{wnid(c)} {name}\n" for c, name in enumerate(CLASSES)))
    tmp.rename(root)
    return root
