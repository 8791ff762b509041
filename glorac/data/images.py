"""Image preprocessing from the model's own config, image datasets, and the up-front check
that finds corrupt files before training starts (not in the middle of an epoch).

The check decodes every file exactly as :class:`ImageFileDataset` will (open, decode all
pixels, convert to the model's channels), so a file it lets through cannot fail later
unless it changes on disk. Files are checked on a few threads (PIL decodes without the GIL).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn

from glorac.errors import DataError

from .core import Batch, LabeledDataset, few, short_error

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX, "hamming": Image.Resampling.HAMMING,
}
# Threads for the up-front check; decoding dominates and releases the GIL.
_CHECK_THREADS = 8
_CHECK_CHUNK = 32  # files per task: a thread-pool task costs about as much as a tiny image


@dataclass(frozen=True)
class ImagePrep:
    """Deterministic eval-style preprocessing: resize to ``size`` (the VTAB-1k recipe of the
    GLoRA/NOAH code resizes straight to the square size, no crop), scale to [0, 1],
    normalise. Grayscale and palette images become ``channels`` channels."""

    size: tuple[int, int]  # (height, width)
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str = "bilinear"
    channels: int = 3

    @property
    def mode(self) -> str:
        """The PIL mode every image is converted to."""
        return "L" if self.channels == 1 else "RGB"

    def __call__(self, image: Image.Image) -> torch.Tensor:
        if image.mode != self.mode:
            image = image.convert(self.mode)
        height, width = self.size
        if image.size != (width, height):
            image = image.resize((width, height), resample=_RESAMPLE.get(self.interpolation,
                                                                         Image.Resampling.BILINEAR))
        pixels = torch.from_numpy(np.array(image, dtype=np.uint8, copy=True))
        x = pixels.view(height, width, -1).permute(2, 0, 1).float().div_(255)
        mean = torch.tensor(self.mean, dtype=torch.float32).view(-1, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).view(-1, 1, 1)
        return x.sub_(mean).div_(std)


def image_prep(model: nn.Module | None, image_size: int | None) -> ImagePrep:
    """Preprocessing from ``timm.data.resolve_data_config`` for a timm model; ImageNet
    statistics and ``image_size`` for anything else. ``image_size`` overrides the size."""
    if image_size is not None and (isinstance(image_size, bool) or not isinstance(image_size, int)
                                   or image_size < 1):
        raise DataError(f"image size must be a positive integer, got {image_size!r}.")
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None)
    if not (isinstance(cfg, dict) and cfg):
        if image_size is None:
            name = type(model).__name__ if model is not None else "no model"
            raise DataError(
                f"cannot tell which image size the model ({name}) expects: it is not a timm model "
                "with a data config. Pass the input size explicitly (--image-size N, or "
                "image_size=N); ImageNet mean and std are used for normalisation."
            )
        return ImagePrep((image_size, image_size), IMAGENET_MEAN, IMAGENET_STD)
    import timm.data

    config = timm.data.resolve_data_config({}, model=model)
    channels, height, width = config["input_size"]
    # A timm ViT built with img_size=... keeps its default config; the patch embedding knows.
    own = getattr(getattr(model, "patch_embed", None), "img_size", None)
    if own is not None:
        height, width = own
    if image_size is not None:
        height = width = image_size
    mean, std = _per_channel(config["mean"], channels), _per_channel(config["std"], channels)
    return ImagePrep((int(height), int(width)), mean, std, config.get("interpolation", "bilinear"),
                     int(channels))


def _per_channel(values, channels: int) -> tuple[float, ...]:
    values = tuple(float(v) for v in (values if isinstance(values, (tuple, list)) else [values]))
    if len(values) == channels:
        return values
    if len(values) == 1:
        return values * channels
    if channels == 1:  # a grayscale model with RGB statistics: their average
        return (sum(values) / len(values),)
    return values[:channels]


def collate_images(samples: list[tuple[torch.Tensor, int]]) -> Batch:
    images, labels = zip(*samples)
    return Batch((torch.stack(images),), torch.tensor(labels, dtype=torch.int64))


class ImageFileDataset(LabeledDataset):
    """Image files, decoded lazily (each was decoded once by the check at load time)."""

    def __init__(self, paths: Sequence[Path], targets: Sequence[int], prep: ImagePrep):
        super().__init__(list(paths), targets)
        self.prep = prep

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path = self.items[index]
        try:
            x = self.prep(decode_image(path, self.prep.mode))
        except Exception as exc:  # anything PIL raises on a user's file is a data problem
            raise DataError(
                f"cannot decode image {path} ({short_error(exc)}); it decoded when the data was "
                "loaded, so the file has changed on disk since. Restore or remove it and restart."
            ) from None
        return x, self.targets[index]


class ArrayImageDataset(LabeledDataset):
    """In-memory uint8 images, (N, H, W) grayscale or (N, H, W, 3) RGB."""

    def __init__(self, images: np.ndarray, targets: Sequence[int], prep: ImagePrep):
        super().__init__(images, targets)
        self.prep = prep

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.prep(Image.fromarray(self.items[index])), self.targets[index]


def decode_image(path: Path, mode: str = "RGB") -> Image.Image:
    """``path`` fully decoded and converted to ``mode``: what training does with a file."""
    with Image.open(path) as image:
        image.load()
        return image.convert(mode)


def image_problem(path: Path, mode: str = "RGB") -> str | None:
    """Why ``path`` is not a usable image (None when it is). PIL's verify() checks the file's
    structure and checksums (it does not decode); then every pixel is decoded and converted
    as :class:`ImageFileDataset` does, which catches truncated or corrupt pixel data in any
    format (a truncated JPEG passes verify())."""
    try:
        with Image.open(path) as image:
            image.verify()
        decode_image(path, mode)
    except Exception as exc:
        return _reason(exc)
    return None


def _reason(exc: BaseException) -> str:
    if isinstance(exc, PermissionError):
        return "permission denied"
    if type(exc).__name__ == "UnidentifiedImageError":
        return "not an image PIL can identify"
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text.lower() if len(text) < 80 else text[:80] + " …"


def drop_unreadable(
    paths: Sequence[Path], targets: Sequence[int], on_corrupt: Literal["skip", "stop"], where: str,
    cache: dict[Path, str | None], mode: str = "RGB",
) -> tuple[list[Path], list[int], list[str]]:
    """Check every file (each path once per ``cache``); skip the bad ones (reported as
    ``path: reason``) or stop."""
    todo = list(dict.fromkeys(p for p in paths if p not in cache))
    chunks = [todo[i:i + _CHECK_CHUNK] for i in range(0, len(todo), _CHECK_CHUNK)]
    threads = min(_CHECK_THREADS, os.cpu_count() or 1, len(chunks))

    def check(chunk: list[Path]) -> list[str | None]:
        return [image_problem(p, mode) for p in chunk]

    if threads > 1:
        with ThreadPoolExecutor(threads) as pool:
            results = [r for rs in pool.map(check, chunks) for r in rs]
    else:
        results = check(todo)
    cache.update(zip(todo, results))
    kept_paths, kept_targets, bad = [], [], []
    for path, target in zip(paths, targets):
        if cache[path] is None:
            kept_paths.append(path)
            kept_targets.append(target)
        else:
            bad.append(f"{path}: {cache[path]}")
    if bad and on_corrupt == "stop":
        raise DataError(
            f"{len(bad)} image file(s) in {where} cannot be read: {few(bad)}. Fix or remove them, "
            "or let glorac skip them (on_corrupt='skip', --on-corrupt skip)."
        )
    return kept_paths, kept_targets, bad
