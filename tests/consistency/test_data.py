"""Offline image sources: scikit-learn digits, Fashion-MNIST from its Debian package, folders; hostile folders."""
import pytest
import torch
from PIL import Image

from openseason.consistency import data as cdata
from openseason.consistency.data import load_images
from openseason.errors import DataError


def test_digits_out_of_the_box():
    d = load_images("digits")
    assert d.images.shape == (1797, 1, 8, 8) and d.labels.shape == (1797,)
    assert d.images.min() == -1.0 and d.images.max() == 1.0


def test_fashion_mnist_from_the_debian_package():
    if cdata.fashion_mnist_dir() is None:
        pytest.skip("dataset-fashion-mnist is not installed (apt-get install dataset-fashion-mnist)")
    d = load_images("fashion-mnist", limit=100)
    assert d.images.shape == (100, 1, 28, 28) and int(d.labels.max()) <= 9
    assert -1.0 <= float(d.images.min()) and float(d.images.max()) <= 1.0


def test_fashion_mnist_missing_names_the_package(monkeypatch, tmp_path):
    monkeypatch.setattr(cdata, "FASHION_MNIST_DIRS", (str(tmp_path / "nowhere"),))
    monkeypatch.delenv("OPENSEASON_FASHION_MNIST", raising=False)
    with pytest.raises(DataError, match="not installed") as err:
        load_images("fashion-mnist")
    assert "dataset-fashion-mnist" in str(err.value)


def _png(path, size=8, value=128, mode="L"):
    Image.new(mode, (size, size), value if mode == "L" else (value, 0, 255)).save(path)


def test_folder_of_images(tmp_path):
    _png(tmp_path / "a.png", value=0)
    _png(tmp_path / "b.png", value=255)
    (tmp_path / "sub").mkdir()
    Image.new("RGB", (16, 16), (10, 20, 30)).save(tmp_path / "sub" / "c.jpg")
    d = load_images(str(tmp_path), channels=1)
    assert d.images.shape == (3, 1, 8, 8) and d.labels is None
    assert torch.all(d.images[0] == -1.0) and torch.all(d.images[1] == 1.0)
    rgb = load_images(str(tmp_path), image_size=4)
    assert rgb.images.shape == (3, 3, 4, 4)


def test_folder_without_images_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="no files") as err:
        load_images(str(tmp_path))
    assert str(tmp_path) in str(err.value)


def test_folder_with_a_non_image_file_names_it(tmp_path):
    _png(tmp_path / "a.png")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match="not a PNG/JPEG") as err:
        load_images(str(tmp_path))
    assert "notes.txt" in str(err.value)


def test_corrupt_image_names_it(tmp_path):
    _png(tmp_path / "a.png")
    (tmp_path / "b.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(DataError, match="cannot read") as err:
        load_images(str(tmp_path))
    assert "b.png" in str(err.value)


def test_missing_folder(tmp_path):
    with pytest.raises(DataError, match="not a folder"):
        load_images(str(tmp_path / "missing"))
