"""Image transforms with Pillow + numpy (torchvision is not a dependency), matching torchvision/timm.

Train: ``RandomResizedCrop(size, scale=(crop_scale_min, 1), ratio=(3/4, 4/3))`` (bilinear) then a
horizontal flip with probability 0.5. Eval: resize the shorter side to ``int(size / 0.875)``
(bicubic, timm's ``crop_pct``) then a centre crop of ``size``. Both end with ImageNet mean/std
normalisation to a ``[3, H, W]`` float32 tensor. ``normalization(size)`` is the record the trainer
stores in checkpoints and the exporter turns into a Hugging Face ``preprocessor_config.json``.

Randomness comes from a per-sample generator the loader seeds with (seed, epoch, rank, position),
so augmentations do not depend on worker count or on what was skipped during a resume.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CROP_PCT = 0.875


def normalization(image_size: int) -> dict:
    """The preprocessing record saved with checkpoints (what an exporter needs to reproduce eval)."""
    return {
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
        "image_size": image_size,
        "crop_pct": CROP_PCT,
        "resize_shorter": int(image_size / CROP_PCT),
        "eval_interpolation": "bicubic",
        "train_interpolation": "bilinear",
        "rescale_factor": 1 / 255,
    }


def random_resized_crop_box(width: int, height: int, rng: np.random.Generator, scale: tuple[float, float],
                            ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop.get_params: ``(left, top, w, h)`` of the crop."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return left, top, w, h
    in_ratio = width / height  # fallback: central crop with the ratio clamped
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


def train_transform(img: Image.Image, size: int, rng: np.random.Generator, scale_min: float,
                    hflip: bool) -> np.ndarray:
    """Random resized crop (+ flip) to ``[size, size, 3]`` uint8."""
    left, top, w, h = random_resized_crop_box(img.width, img.height, rng, (scale_min, 1.0))
    out = img.resize((size, size), Image.BILINEAR, box=(left, top, left + w, top + h))
    arr = np.asarray(out, dtype=np.uint8)
    if hflip and rng.random() < 0.5:
        arr = arr[:, ::-1]
    return arr


def eval_transform(img: Image.Image, size: int) -> np.ndarray:
    """Resize the shorter side to ``int(size / 0.875)``, centre-crop ``size`` -> ``[size, size, 3]``."""
    short = int(size / CROP_PCT)
    w, h = img.size
    if w <= h:
        nw, nh = short, int(short * h / w)
    else:
        nw, nh = int(short * w / h), short
    img = img.resize((nw, nh), Image.BICUBIC)
    left, top = int(round((nw - size) / 2)), int(round((nh - size) / 2))
    return np.asarray(img.crop((left, top, left + size, top + size)), dtype=np.uint8)


_MEAN = np.asarray(IMAGENET_MEAN, dtype=np.float32).reshape(3, 1, 1)
_STD = np.asarray(IMAGENET_STD, dtype=np.float32).reshape(3, 1, 1)


def to_normalized(arrays: list[np.ndarray]) -> torch.Tensor:
    """``[H, W, 3]`` uint8 images -> ``[B, 3, H, W]`` float32 ``(x / 255 - mean) / std``."""
    x = np.stack(arrays).astype(np.float32).transpose(0, 3, 1, 2) / 255.0
    return torch.from_numpy(np.ascontiguousarray((x - _MEAN) / _STD))
