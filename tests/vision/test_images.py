"""Our preprocessing equals transformers' CLIPImageProcessor and BlipImageProcessor on real photographs
shipped offline by scikit-image, scikit-learn and matplotlib; load_image's errors name the file."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from openseason.errors import DataError
from openseason.vision import ImageProcessorConfig, load_image, preprocess
from openseason.vision.images import from_hf_preprocessor

transformers = pytest.importorskip("transformers")


def _real_images() -> dict[str, Image.Image]:
    images = {}
    skimage_data = pytest.importorskip("skimage.data")
    images["skimage-astronaut"] = Image.fromarray(skimage_data.astronaut())          # 512x512 RGB
    images["skimage-camera"] = Image.fromarray(skimage_data.camera())                # 512x512 greyscale
    images["skimage-coffee"] = Image.fromarray(skimage_data.coffee())                # 600x400 landscape
    from sklearn.datasets import load_sample_images
    for name, array in zip(("china", "flower"), load_sample_images().images):        # 640x427
        images[f"sklearn-{name}"] = Image.fromarray(array)
    import matplotlib.cbook
    with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as handle:              # 512x600 portrait JPEG
        images["mpl-grace-hopper"] = Image.open(io.BytesIO(handle.read()))
    with matplotlib.cbook.get_sample_data("logo2.png") as handle:                     # RGBA PNG
        images["mpl-logo-rgba"] = Image.open(io.BytesIO(handle.read()))
    return images


IMAGES = _real_images()


def _hf(cls, **kwargs):
    import transformers.image_processing_utils  # noqa: F401  (the PIL backend needs no torchvision)
    return getattr(transformers, cls)(**kwargs)


@pytest.mark.parametrize("name", sorted(IMAGES))
@pytest.mark.parametrize("size", [224, 30])
def test_clip_processor_equal(name, size):
    ref = _hf("CLIPImageProcessor", size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    expected = ref(images=IMAGES[name], return_tensors="pt")["pixel_values"]
    ours = preprocess(IMAGES[name], ImageProcessorConfig.clip(size))
    assert ours.shape == expected.shape == (1, 3, size, size)
    assert torch.equal(ours, expected)


@pytest.mark.parametrize("name", sorted(IMAGES))
@pytest.mark.parametrize("size", [224, 28])
def test_blip_processor_equal(name, size):
    ref = _hf("BlipImageProcessor", size={"height": size, "width": size})
    expected = ref(images=IMAGES[name], return_tensors="pt")["pixel_values"]
    ours = preprocess(IMAGES[name], ImageProcessorConfig.blip(size))
    assert torch.equal(ours, expected)


def test_clip_crop_larger_than_resize_pads_like_transformers():
    image = IMAGES["sklearn-china"]
    ref = _hf("CLIPImageProcessor", size={"shortest_edge": 20}, crop_size={"height": 24, "width": 24})
    expected = ref(images=image, return_tensors="pt")["pixel_values"]
    ours = preprocess(image, ImageProcessorConfig(mode="clip", size=20, crop_size=24))
    assert torch.equal(ours, expected)


def test_saved_preprocessor_config_is_read(tmp_path):
    ref = _hf("CLIPImageProcessor", size={"shortest_edge": 40}, crop_size={"height": 36, "width": 36},
              image_mean=[0.5, 0.4, 0.3], image_std=[0.2, 0.25, 0.3], resample=2)
    ref.save_pretrained(tmp_path)
    import json
    config = from_hf_preprocessor(json.loads((tmp_path / "preprocessor_config.json").read_text()), 36, "clip")
    image = IMAGES["mpl-grace-hopper"]
    assert torch.equal(preprocess(image, config), ref(images=image, return_tensors="pt")["pixel_values"])


def test_batch_of_paths_and_bytes(tmp_path):
    path = tmp_path / "a.png"
    IMAGES["skimage-coffee"].save(path)
    config = ImageProcessorConfig.clip(32)
    batch = preprocess([str(path), path.read_bytes(), IMAGES["skimage-coffee"]], config)
    assert batch.shape == (3, 3, 32, 32)
    assert torch.equal(batch[0], batch[1]) and torch.equal(batch[0], batch[2])


def test_load_image_errors(tmp_path):
    with pytest.raises(DataError, match="image file not found"):
        load_image(tmp_path / "missing.png")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image at all")
    with pytest.raises(DataError, match=r"bad\.png.*not a readable image"):
        load_image(bad)
    with pytest.raises(DataError, match="more than the limit"):
        load_image(_png_bytes(64, 64), max_pixels=100)
    assert load_image(_png_bytes(5, 7, "RGBA")).mode == "RGB"


def _png_bytes(w, h, mode="RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (w, h)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_bad_processor_config():
    from openseason.errors import ConfigError
    with pytest.raises(ConfigError, match="unknown image processor mode"):
        ImageProcessorConfig(mode="vit")
    with pytest.raises(ConfigError, match="does not crop"):
        ImageProcessorConfig(mode="blip", crop_size=10)
