"""The start-up paths that avoid heavy imports give exactly what the libraries give.

The default model's class names, the digits data set and the gallery's scikit-image photos
are read without importing torchvision, scikit-learn or skimage.io (seconds of a cold
start); each must equal the library's own answer, and fall back to it when the file is not
where it is expected.
"""
import numpy as np
import pytest

from analysis.core import datasets, images
from analysis.core.models import loaders


def test_imagenet_categories_equal_torchvisions():
    import torchvision
    loaders.imagenet_categories.cache_clear()
    names = loaders.imagenet_categories()
    assert list(names) == torchvision.models.ResNet50_Weights.IMAGENET1K_V1.meta["categories"]
    assert names[281] == "tabby" and len(names) == 1000


def test_imagenet_categories_fall_back_to_torchvision(monkeypatch):
    import importlib.util
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)   # the file is not found
    loaders.imagenet_categories.cache_clear()
    try:
        assert loaders.imagenet_categories()[285] == "Egyptian cat"
    finally:
        loaders.imagenet_categories.cache_clear()


def test_digits_equal_sklearns():
    from sklearn.datasets import load_digits
    raw = load_digits()
    got_images, got_target = datasets._digits_arrays()
    assert got_images.dtype == raw.images.dtype and np.array_equal(got_images, raw.images)
    assert got_target.dtype == raw.target.dtype and np.array_equal(got_target, raw.target)


def test_digits_fall_back_to_sklearn(monkeypatch):
    import importlib.util
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    got_images, got_target = datasets._digits_arrays()
    assert got_images.shape == (1797, 8, 8) and got_target[:10].tolist() == list(range(10))


SKIMAGE_FILES = {"chelsea": "chelsea.png", "coffee": "coffee.png", "astronaut": "astronaut.png",
                 "rocket": "rocket.jpg", "hubble_deep_field": "hubble_deep_field.jpg", "brick": "brick.png",
                 "grass": "grass.png", "gravel": "gravel.png"}


@pytest.mark.parametrize("name", sorted(SKIMAGE_FILES))
def test_gallery_files_equal_skimage_data(name):
    import skimage.data
    fast = images._skimage_file(SKIMAGE_FILES[name])
    assert fast is not None                                   # the fast path is taken
    assert np.array_equal(fast, getattr(skimage.data, name)())
    assert np.array_equal(images.GALLERY[name].loader(), fast)


def test_gallery_file_missing_falls_back():
    assert images._skimage_file("no_such_file.png") is None
    assert images._skimage("chelsea", "no_such_file.png")().shape == (300, 451, 3)
