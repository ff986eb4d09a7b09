"""Training images, offline, as a float tensor [N, C, H, W] in [-1, 1] (plus labels when known):

    digits          scikit-learn's `load_digits` (1,797 8x8 grey images, shipped with scikit-learn)
    fashion-mnist   the Debian package `dataset-fashion-mnist` (60,000 28x28 grey images)
    DIR             every PNG / JPEG under a folder (Pillow), resized to one square size

Nothing is downloaded. Bad input (an empty folder, a file that is not an image, images of
different sizes without `image_size`) raises DataError naming the file and the fix.
"""
from __future__ import annotations

import gzip
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ..errors import DataError

FASHION_MNIST_DIRS = ("/usr/share/datasets/fashion-mnist",)  # where dataset-fashion-mnist installs
FASHION_PACKAGE = "dataset-fashion-mnist"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
BUILTIN = ("digits", "fashion-mnist")


@dataclass
class ImageData:
    """Images in [-1, 1], optional integer labels, and where they came from."""

    images: torch.Tensor             # [N, C, H, W] float32
    labels: Optional[torch.Tensor]   # [N] int64, or None for a folder of images
    source: str

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])


def load_digits_data() -> ImageData:
    """scikit-learn's 8x8 digits; pixel values 0..16 mapped to [-1, 1]."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.tensor(bunch.images, dtype=torch.float32)[:, None] / 8.0 - 1.0
    return ImageData(x, torch.tensor(bunch.target, dtype=torch.int64), "sklearn.datasets.load_digits")


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as handle:
        raw = handle.read()
    magic, = struct.unpack(">I", raw[:4])
    ndim = magic & 0xFF
    if magic >> 8 != 0x08 or ndim not in (1, 3):
        raise DataError("not an IDX file of unsigned bytes", where=str(path))
    dims = struct.unpack(">" + "I" * ndim, raw[4:4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise DataError(f"IDX file holds {data.size} bytes, its header says {dims}", where=str(path))
    return data.reshape(dims)


def fashion_mnist_dir() -> Optional[Path]:
    """The installed Fashion-MNIST folder, or None."""
    env = os.environ.get("OPENSEASON_FASHION_MNIST")
    for d in ([env] if env else []) + list(FASHION_MNIST_DIRS):
        if d and (Path(d) / "train-images-idx3-ubyte.gz").exists():
            return Path(d)
    return None


def load_fashion_mnist(split: str = "train", limit: Optional[int] = None) -> ImageData:
    """Fashion-MNIST from the Debian package; DataError naming the package when it is missing."""
    root = fashion_mnist_dir()
    if root is None:
        raise DataError("Fashion-MNIST is not installed", where=FASHION_MNIST_DIRS[0],
                        hint=f"apt-get install {FASHION_PACKAGE} (Debian/Ubuntu), or pass a folder of images")
    prefix = "train" if split == "train" else "t10k"
    images = _read_idx(root / f"{prefix}-images-idx3-ubyte.gz")
    labels = _read_idx(root / f"{prefix}-labels-idx1-ubyte.gz")
    if limit:
        images, labels = images[:limit], labels[:limit]
    x = torch.tensor(images, dtype=torch.float32)[:, None] / 127.5 - 1.0
    return ImageData(x, torch.tensor(labels, dtype=torch.int64), f"{root} ({FASHION_PACKAGE})")


def load_folder(directory: str | os.PathLike, image_size: Optional[int] = None, channels: int = 3) -> ImageData:
    """Every PNG/JPEG under `directory` (sorted by path), as `channels` (1 grey, 3 RGB) square images."""
    from PIL import Image, UnidentifiedImageError

    directory = Path(directory)
    if not directory.is_dir():
        raise DataError("not a folder of images (and not 'digits' or 'fashion-mnist')", where=str(directory),
                        hint="pass --data digits, --data fashion-mnist or a folder holding PNG/JPEG files")
    files = sorted(p for p in directory.rglob("*") if p.is_file() and not p.name.startswith("."))
    if not files:
        raise DataError("the folder holds no files", where=str(directory),
                        hint="put PNG or JPEG images in it")
    others = [p for p in files if p.suffix.lower() not in IMAGE_SUFFIXES]
    if others:
        raise DataError(f"not a PNG/JPEG image ({len(others)} such file(s) in the folder)", where=str(others[0]),
                        hint="remove files that are not images, or move the images into their own folder")
    if channels not in (1, 3):
        raise DataError(f"channels must be 1 or 3, not {channels}")
    arrays = []
    for path in files:
        try:
            with Image.open(path) as img:
                img = img.convert("L" if channels == 1 else "RGB")
                if image_size is None:
                    image_size = img.width
                if img.size != (image_size, image_size):  # the first image's width sets the size
                    img = img.resize((image_size, image_size), Image.BICUBIC)
                arrays.append(np.asarray(img, dtype=np.uint8))
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            raise DataError(f"cannot read this image ({exc})", where=str(path),
                            hint="remove or re-save the file") from None
    x = torch.tensor(np.stack(arrays), dtype=torch.float32) / 127.5 - 1.0
    x = x[:, None] if channels == 1 else x.permute(0, 3, 1, 2)
    return ImageData(x.contiguous(), None, str(directory))


def load_images(data: str, image_size: Optional[int] = None, channels: Optional[int] = None,
                limit: Optional[int] = None) -> ImageData:
    """`digits`, `fashion-mnist` or a folder (see the module doc); `limit` keeps the first N images."""
    if data == "digits":
        out = load_digits_data()
    elif data == "fashion-mnist":
        out = load_fashion_mnist(limit=limit)
    else:
        out = load_folder(data, image_size, channels or 3)
    if image_size is not None and out.images.shape[-1] != image_size:
        out.images = torch.nn.functional.interpolate(out.images, size=(image_size, image_size), mode="bilinear",
                                                     align_corners=False).clamp(-1, 1)
    if channels is not None and out.images.shape[1] != channels:
        raise DataError(f"{data} has {out.images.shape[1]} channel(s), not {channels}")
    if limit:
        out.images = out.images[:limit]
        out.labels = None if out.labels is None else out.labels[:limit]
    return out
