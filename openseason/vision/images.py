"""Loading images and turning them into pixel tensors the way CLIP's and BLIP-2's processors do.

    load_image(path | bytes | PIL.Image) -> RGB PIL image (transparency composited onto white)
    ImageProcessorConfig("clip", ...)   resize the shortest edge (bicubic), center crop, rescale, normalize
    ImageProcessorConfig("blip", ...)   resize to a square (bicubic), rescale, normalize
    preprocess(images, config) -> float32 tensor (B, 3, H, W)

The arithmetic follows transformers' PIL backend step by step (Pillow resize of the uint8 image,
integer center-crop offsets, rescale in float64 then float32, normalize in float32), so the pixels
equal `CLIPImageProcessor` / `BlipImageProcessor` outputs exactly; tests/vision/test_images.py
checks that on real photographs shipped by scikit-image, scikit-learn and matplotlib.
"""
from __future__ import annotations

import io
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch

from ..errors import DataError

# OpenAI CLIP's normalization constants (also BLIP-2's): the mean and std of its training images.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
RESAMPLE = {"nearest": 0, "lanczos": 1, "bilinear": 2, "bicubic": 3, "box": 4, "hamming": 5}
# Beyond this many pixels an image is refused before it is decoded (a decompression bomb).
MAX_PIXELS = 64 * 1024 * 1024
MODES = ("clip", "blip")

ImageLike = Union[str, Path, bytes, bytearray, "PIL.Image.Image"]  # noqa: F821


def load_image(source: ImageLike, *, max_pixels: int = MAX_PIXELS, where: Optional[str] = None):
    """An RGB PIL image from a path, raw file bytes or a PIL image. Transparency is composited onto
    white (as transformers' convert_to_rgb does); unreadable or oversized images raise DataError."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(source, Image.Image):
        image = source
    else:
        if isinstance(source, (bytes, bytearray)):
            handle, name = io.BytesIO(bytes(source)), where or "<image bytes>"
        else:
            path = Path(source)
            name = where or str(path)
            if not path.is_file():
                raise DataError("image file not found", where=name)
            handle = path
        try:
            image = Image.open(handle)
            if image.width * image.height > max_pixels:
                raise DataError(f"image is {image.width}x{image.height} pixels, more than the limit of {max_pixels}",
                                where=name)
            image.load()
        except DataError:
            raise
        except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
            raise DataError(f"not a readable image ({exc})", where=name) from None
    return to_rgb(image)


def to_rgb(image):
    """RGB copy of a PIL image; any alpha is composited onto a white background."""
    from PIL import Image

    if "A" in image.getbands() or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


@dataclass
class ImageProcessorConfig:
    """How pixels are made from an image. `mode` "clip": resize the shortest edge to `size`, then
    center-crop `crop_size` square; "blip": resize to a `size` x `size` square, no crop."""

    mode: str = "clip"
    size: int = 224
    crop_size: Optional[int] = 224
    resample: str = "bicubic"
    rescale_factor: float = 1 / 255
    mean: tuple = CLIP_MEAN
    std: tuple = CLIP_STD

    def __post_init__(self):
        from ..errors import ConfigError

        if self.mode not in MODES:
            raise ConfigError(f"unknown image processor mode {self.mode!r}; known: {', '.join(MODES)}")
        if self.resample not in RESAMPLE:
            raise ConfigError(f"unknown resample filter {self.resample!r}; known: {', '.join(RESAMPLE)}")
        if self.mode == "blip" and self.crop_size is not None:
            raise ConfigError("the blip processor does not crop (crop_size must be None)")
        if self.mode == "clip" and self.crop_size is None:
            self.crop_size = self.size
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ConfigError("mean and std need 3 values (R, G, B)")
        self.mean, self.std = tuple(float(v) for v in self.mean), tuple(float(v) for v in self.std)

    @property
    def output_size(self) -> int:
        return self.crop_size if self.mode == "clip" else self.size

    @classmethod
    def clip(cls, image_size: int = 224, **overrides) -> "ImageProcessorConfig":
        return cls(mode="clip", size=image_size, crop_size=image_size, **overrides)

    @classmethod
    def blip(cls, image_size: int = 224, **overrides) -> "ImageProcessorConfig":
        return cls(mode="blip", size=image_size, crop_size=None, **overrides)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ImageProcessorConfig":
        return cls(**d)


def shortest_edge_size(height: int, width: int, size: int) -> tuple[int, int]:
    """(height, width) with the shorter side `size` and the longer one scaled and truncated (int()),
    as torchvision's Resize(int) and transformers' get_resize_output_image_size do."""
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(size * long / short)
    return (new_long, size) if width <= height else (size, new_long)


def center_crop(array: np.ndarray, size: int) -> np.ndarray:
    """Crop an (H, W, C) array to `size` x `size` around its center; a smaller image is zero-padded
    first (so the result always has the size asked for)."""
    height, width = array.shape[:2]
    if height < size or width < size:
        new_h, new_w = max(size, height), max(size, width)
        padded = np.zeros((new_h, new_w, *array.shape[2:]), dtype=array.dtype)
        top, left = math.ceil((new_h - height) / 2), math.ceil((new_w - width) / 2)
        padded[top:top + height, left:left + width] = array
        array, height, width = padded, new_h, new_w
    top, left = (height - size) // 2, (width - size) // 2
    return array[top:top + size, left:left + size]


def pixels(image, config: ImageProcessorConfig) -> np.ndarray:
    """One image -> float32 (3, H, W) normalized pixels."""
    image = to_rgb(image)
    resample = RESAMPLE[config.resample]
    if config.mode == "clip":
        height, width = shortest_edge_size(image.height, image.width, config.size)
    else:
        height, width = config.size, config.size
    array = np.asarray(image.resize((width, height), resample=resample))
    if config.mode == "clip":
        array = center_crop(array, config.crop_size)
    scaled = (array.astype(np.float64) * config.rescale_factor).astype(np.float32)
    mean = np.asarray(config.mean, dtype=np.float32)
    std = np.asarray(config.std, dtype=np.float32)
    return np.ascontiguousarray(((scaled - mean) / std).transpose(2, 0, 1))


def preprocess(images: Union[ImageLike, Sequence[ImageLike]], config: ImageProcessorConfig) -> torch.Tensor:
    """Images (paths, bytes or PIL images; one or a list) -> float32 tensor (B, 3, H, W)."""
    if not isinstance(images, (list, tuple)):
        images = [images]
    if not images:
        raise DataError("no images to preprocess")
    return torch.from_numpy(np.stack([pixels(load_image(im), config) for im in images]))


def from_hf_preprocessor(data: dict, image_size: int, default_mode: str) -> ImageProcessorConfig:
    """An ImageProcessorConfig from a Hugging Face preprocessor_config.json dict (or the family's
    default for `image_size` when `data` is empty)."""
    if not data:
        return ImageProcessorConfig.clip(image_size) if default_mode == "clip" else ImageProcessorConfig.blip(image_size)
    size = data.get("size", image_size)
    crop = data.get("crop_size")
    resample = {v: k for k, v in RESAMPLE.items()}.get(int(data.get("resample", 3)), "bicubic")
    common = dict(resample=resample, rescale_factor=float(data.get("rescale_factor", 1 / 255)),
                  mean=tuple(data.get("image_mean", CLIP_MEAN)), std=tuple(data.get("image_std", CLIP_STD)))
    if data.get("do_center_crop", crop is not None) and crop is not None:
        edge = size["shortest_edge"] if isinstance(size, dict) else int(size)
        crop = crop["height"] if isinstance(crop, dict) else int(crop)
        return ImageProcessorConfig(mode="clip", size=edge, crop_size=crop, **common)
    edge = size.get("height", size.get("shortest_edge")) if isinstance(size, dict) else int(size)
    return ImageProcessorConfig(mode="blip", size=edge, crop_size=None, **common)
