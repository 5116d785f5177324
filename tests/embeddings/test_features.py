"""Feature extraction: the penultimate-layer rule, vectors and predictions against a manual
forward, the disk cache (reuse after a restart, invalidation), stopping, out-of-memory
halving, and the shared model left untouched."""
from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from torch import nn

import analysis.core.diskcache as diskcache
import analysis.embeddings.features as features
from analysis.core.datasets import Dataset, load_digits_dataset
from analysis.core.errors import LayerError, ParameterError
from analysis.core.hooks import capture, count_hooks
from analysis.core.models.bundle import ModelBundle, Preprocessing, weights_sha256
from analysis.core.predict import logits as predict_logits

# ------------------------------------------------------------------------------ helpers

def _subset(ds: Dataset, n: int, start: int = 0) -> Dataset:
    """Images [start, start + n) of ds as a Dataset of its own (its own content hash)."""
    h = hashlib.sha256(f"{ds.content_hash}|{start}:{start + n}".encode()).hexdigest()
    return Dataset(name=f"{ds.name}[{start}:{start + n}]", source=ds.source, class_names=list(ds.class_names),
                   labels=ds.labels[start:start + n], ids=list(ds.ids[start:start + n]), content_hash=h,
                   _loader=lambda i: ds.get(start + i))


def _tiny_bundle(model: nn.Module, name: str = "tiny") -> ModelBundle:
    return ModelBundle(model, Preprocessing(16, 16, (0.5,) * 3, (0.5,) * 3), ["a", "b"], name,
                       "tiny", "random")


def _array_dataset(n: int, seed: int = 0) -> Dataset:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 16, 16, 3), dtype=np.uint8)
    images.setflags(write=False)
    return Dataset(name="arrays", source="test", class_names=["a", "b"], labels=np.arange(n) % 2,
                   ids=[f"img/{i:03d}" for i in range(n)],
                   content_hash=hashlib.sha256(images.tobytes()).hexdigest(), _loader=images.__getitem__)


def _assert_untouched(bundle: ModelBundle, sha: str) -> None:
    assert count_hooks(bundle.model) == 0
    assert not bundle.model.training
    assert all(not p.requires_grad for p in bundle.model.parameters())
    assert weights_sha256(bundle.model) == sha


def _manual(bundle: ModelBundle, ds: Dataset, layer: str):
    """One forward of the whole (small) data set: GAP'd layer output and logits."""
    x = bundle.inputs(ds.get_many(range(len(ds))))
    with bundle.lock, torch.inference_mode(), capture(bundle.model, layer) as acts:
        out = bundle.model(x)
    a = acts[layer].float()
    if a.dim() == 4:
        a = a.mean(dim=(2, 3))
    return a.numpy(), out.float().numpy()


@pytest.fixture(scope="module")
def digits150():
    return _subset(load_digits_dataset(), 150)


# ------------------------------------------------------------------------------ which layer

def test_penultimate_layer_of_real_models(lite0, digits):
    from analysis.core.models.loaders import torchvision_bundle
    assert features.penultimate_layer(lite0) == "_avg_pooling"          # not the Dropout after it
    assert features.penultimate_layer(digits) == "avgpool"
    resnet = torchvision_bundle("resnet18", pretrained=False, device=torch.device("cpu"))
    assert features.penultimate_layer(resnet) == "avgpool"
    vgg = torchvision_bundle("vgg11", pretrained=False, device=torch.device("cpu"))
    assert features.penultimate_layer(vgg) == "classifier.4"            # fc7 after ReLU, not Dropout
    for b in (lite0, digits, resnet, vgg):
        assert count_hooks(b.model) == 0


def test_penultimate_layer_rules():
    torch.manual_seed(0)
    # Flatten and Dropout between the pooling and the classifier are skipped
    m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                      nn.Dropout(0.5), nn.Linear(4, 2))
    assert features.penultimate_layer(_tiny_bundle(m)) == "2"
    # fully convolutional head (SqueezeNet style): the classifier is the last convolution
    head = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Dropout(0.5), nn.Conv2d(8, 2, 1),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten())
    assert features.penultimate_layer(_tiny_bundle(head, "convhead")) == "1"
    # a container holding the classifier finishes after it and is never picked
    m2 = nn.Sequential(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                       nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)))
    assert features.penultimate_layer(_tiny_bundle(m2, "nested")) == "3.1"
    with pytest.raises(LayerError):
        features.penultimate_layer(_tiny_bundle(nn.Sequential(nn.AdaptiveAvgPool2d(2), nn.Flatten()), "none"))


# ------------------------------------------------------------------------------ extraction

def test_extract_matches_manual_forward_and_predict(digits, digits150):
    sha = weights_sha256(digits.model)
    seen = []
    fs = features.run_extract(digits, digits150, batch_size=32, save=False,
                              progress=lambda d, t: seen.append((d, t)))  # 32 does not divide 150
    assert seen == [(0, 150), (32, 150), (64, 150), (96, 150), (128, 150), (150, 150)]
    assert fs.layer == "avgpool" and fs.n == 150 and fs.dim == 64
    assert fs.model_id == digits.model_id and fs.dataset_hash == digits150.content_hash
    assert fs.preprocess_id == digits.preprocess.spec_id and fs.seconds > 0
    assert fs.features.dtype == np.float32 and fs.features.shape == (150, 64)
    assert fs.predictions.dtype == np.int64 and fs.confidences.dtype == np.float32
    np.testing.assert_array_equal(fs.labels, digits150.labels)
    feats, _ = _manual(digits, digits150, "features.relu4")           # GAP by hand of the last map
    np.testing.assert_allclose(fs.features, feats, rtol=1e-5, atol=1e-5)
    lg = predict_logits(digits, digits150.get_many(range(150)))
    np.testing.assert_array_equal(fs.predictions, lg.argmax(1))
    p = torch.from_numpy(lg).softmax(1).max(1).values.numpy()
    np.testing.assert_allclose(fs.confidences, p, rtol=1e-5, atol=1e-6)
    assert fs.accuracy > 0.9                                            # digits classes = model classes
    # an outside image: the same numbers as in the set
    f1, p1, c1 = features.features_for_images(digits, digits150.get(7))
    assert f1.shape == (1, 64) and p1.tolist() == [fs.predictions[7]]
    np.testing.assert_allclose(f1[0], fs.features[7], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(c1[0], fs.confidences[7], rtol=1e-5)
    f3, p3, _ = features.features_for_images(digits, digits150.get_many([3, 4, 5]), "avgpool", batch_size=2)
    np.testing.assert_allclose(f3, fs.features[3:6], rtol=1e-5, atol=1e-5)
    _assert_untouched(digits, sha)


def test_other_layers_spatial_and_flat(digits, digits150):
    small = _subset(digits150, 40)
    fs = features.run_extract(digits, small, "features.conv3", batch_size=16, save=False)
    feats, logits = _manual(digits, small, "features.conv3")
    assert fs.features.shape == (40, 64)
    np.testing.assert_allclose(fs.features, feats, rtol=1e-4, atol=1e-5)
    flat = features.run_extract(digits, small, "fc", batch_size=16, save=False)   # already flat: kept
    np.testing.assert_allclose(flat.features, logits, rtol=1e-5, atol=1e-5)


def test_lite0_on_gallery_crops(lite0):
    from analysis.inside.patches import gallery_dataset
    ds = _subset(gallery_dataset(crops_per_image=1, size=256), 5)
    sha = weights_sha256(lite0.model)
    fs = features.run_extract(lite0, ds, batch_size=3, save=False)
    assert fs.layer == "_avg_pooling" and fs.features.shape == (len(ds), 1280)
    feats, lg = _manual(lite0, ds, "_relu_head")
    np.testing.assert_allclose(fs.features, feats, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(fs.predictions, lg.argmax(1))
    _assert_untouched(lite0, sha)


def test_bad_layers_and_parameters(digits, digits150):
    sha = weights_sha256(digits.model)
    with pytest.raises(LayerError):
        features.run_extract(digits, digits150, "no.such.layer", save=False)
    with pytest.raises(ParameterError):
        features.run_extract(digits, digits150, batch_size=0, save=False)

    class To3D(nn.Module):
        def forward(self, x):
            return x.flatten(2)

    m = nn.Sequential(nn.Conv2d(3, 4, 3), To3D(), nn.Flatten(), nn.Linear(4 * 14 * 14, 2))
    b = _tiny_bundle(m, "3d")
    with pytest.raises(LayerError, match="feature vectors need"):
        features.run_extract(b, _array_dataset(5), "1", save=False)
    assert count_hooks(b.model) == 0
    _assert_untouched(digits, sha)


def test_oom_halves_the_batch(digits, digits150, monkeypatch):
    small = _subset(digits150, 50)
    ref = features.run_extract(digits, small, batch_size=64, save=False)
    real, sizes = features._forward, []

    def fussy(bundle, layer, x):
        sizes.append(len(x))
        if len(x) > 12:
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 GB")
        return real(bundle, layer, x)
    monkeypatch.setattr(features, "_forward", fussy)
    got = features.run_extract(digits, small, batch_size=50, save=False)
    assert sizes[:3] == [50, 25, 12] and max(sizes[3:]) <= 12
    np.testing.assert_allclose(got.features, ref.features, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(got.predictions, ref.predictions)


# ------------------------------------------------------------------------------ disk cache

def test_cache_reused_after_restart_and_invalidated(digits, digits150, monkeypatch):
    first = features.run_extract(digits, digits150, batch_size=64)
    fresh = _subset(load_digits_dataset(), 150)                      # new object, same content

    def no_forward(*a, **kw):
        raise AssertionError("ran the model although stored features exist")
    monkeypatch.setattr(features, "_forward", no_forward)
    loaded = features.load_features(digits, fresh)                  # default layer
    assert loaded is not None and loaded is not first and loaded.same_as(first)
    again = features.load_features(digits, fresh, "avgpool")
    assert again.same_as(first)
    assert features.load_features(digits, fresh, "features.relu4") is None          # other layer
    assert features.load_features(digits, _subset(load_digits_dataset(), 150, start=1)) is None  # other data
    other = ModelBundle(digits.copy_model(), digits.preprocess, digits.categories, "copy",
                        digits.architecture, "random", model_id="0" * 64)
    assert features.load_features(other, fresh) is None                             # other weights
    other_pre = ModelBundle(digits.copy_model(), Preprocessing(32, 32, (0.3,), (0.35,), grayscale=True),
                            digits.categories, "copy", digits.architecture, "random",
                            model_id=digits.model_id)
    assert features.load_features(other_pre, fresh) is None                         # other preprocessing
    monkeypatch.undo()

    calls = []
    real = features._forward
    monkeypatch.setattr(features, "_forward", lambda *a: calls.append(1) or real(*a))
    assert features.load_features(digits, fresh, "features.relu4") is None
    relu4 = features.run_extract(digits, fresh, "features.relu4", batch_size=75)
    assert len(calls) == 2 and relu4.layer == "features.relu4"
    np.testing.assert_allclose(relu4.features, first.features, rtol=1e-5, atol=1e-5)  # GAP of the same map
    assert features.load_features(digits, fresh, "features.relu4") is not None
    # a corrupt file counts as missing and is removed
    path = diskcache.cache_path("features", features.features_key(digits, fresh, "features.relu4"))
    path.write_bytes(path.read_bytes()[:64])
    assert features.load_features(digits, fresh, "features.relu4") is None and not path.exists()


def test_stop_saves_nothing(digits, digits150):
    sha = weights_sha256(digits.model)
    small = _subset(digits150, 60, start=10)
    seen = []
    result = features.run_extract(digits, small, "features.conv4", batch_size=16,
                                  progress=lambda d, t: seen.append(d), should_stop=lambda: len(seen) >= 2)
    assert result is None and seen == [0, 16]
    assert features.load_features(digits, small, "features.conv4") is None
    assert not diskcache.cache_path("features", features.features_key(digits, small, "features.conv4")).exists()
    gen = features.extract(digits, small, "features.conv4", batch_size=16)
    assert next(gen).done == 0 and next(gen).done == 16
    gen.close()                                                     # abandoned half-way
    assert features.load_features(digits, small, "features.conv4") is None
    _assert_untouched(digits, sha)
