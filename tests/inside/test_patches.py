"""Maximally activating patches: top-k against brute force and hand-made answers, crop
boxes, the disk index (reuse after a restart, invalidation), stopping, the gallery data
set, and the shared model left untouched. Plus the generic disk cache."""
from __future__ import annotations

import hashlib
import os

import numpy as np
import pytest
import torch
from torch import nn

import analysis.core.diskcache as diskcache
import analysis.inside.patches as patches
from analysis.core.datasets import Dataset, load_digits_dataset
from analysis.core.errors import LayerError, ParameterError
from analysis.core.hooks import capture, count_hooks
from analysis.core.models.bundle import ModelBundle, Preprocessing

# ------------------------------------------------------------------------------ helpers

def _subset(ds: Dataset, n: int) -> Dataset:
    """The first n images of ds as a Dataset of its own (its own content hash)."""
    h = hashlib.sha256(f"{ds.content_hash}|first {n}".encode()).hexdigest()
    return Dataset(name=f"{ds.name}[:{n}]", source=ds.source, class_names=list(ds.class_names),
                   labels=ds.labels[:n], ids=list(ds.ids[:n]), content_hash=h, _loader=ds.get)


def _array_dataset(images: np.ndarray, tag: str = "") -> Dataset:
    images = np.ascontiguousarray(images, dtype=np.uint8)
    images.setflags(write=False)
    h = hashlib.sha256(tag.encode() + images.tobytes()).hexdigest()
    n = len(images)
    return Dataset(name="arrays", source="test", class_names=["x"], labels=np.zeros(n, np.int64),
                   ids=[f"img/{i:03d}" for i in range(n)], content_hash=h, _loader=images.__getitem__)


def _tiny_bundle(model: nn.Module, name: str = "tiny") -> ModelBundle:
    return ModelBundle(model, Preprocessing(16, 16, (0.5,) * 3, (0.5,) * 3), ["a", "b"], name,
                       "tiny", "random")


class Boom(nn.Module):
    """Fails if the forward ever gets past the scanned layer."""

    def forward(self, x):
        raise AssertionError("the forward was not truncated")


def _snapshot(model: nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_untouched(model: nn.Module, before: dict) -> None:
    assert count_hooks(model) == 0
    assert not model.training
    assert all(not p.requires_grad for p in model.parameters())
    after = model.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], before[k]) for k in before)


def _brute_force(bundle: ModelBundle, ds: Dataset, layer: str):
    """Full activations (N, C, H, W) of all images in one forward."""
    x = bundle.preprocess(ds.get_many(range(len(ds))))
    with bundle.lock, torch.inference_mode(), capture(bundle.model, layer) as acts:
        bundle.model(x)
    return acts[layer].float().contiguous().numpy()


@pytest.fixture(scope="module")
def digits200():
    return _subset(load_digits_dataset(), 200)


# ------------------------------------------------------------------------------ top-k

@pytest.mark.parametrize("layer,batch_size", [("features.relu2", 32), ("features.conv3", 23)])
def test_topk_matches_brute_force(digits, digits200, layer, batch_size):
    k = 9
    index = patches.run_scan(digits, digits200, layer, k=k, batch_size=batch_size, save=False)
    acts = _brute_force(digits, digits200, layer)                       # (N, C, H, W)
    n, c, h, w = acts.shape
    maxima = acts.reshape(n, c, h * w).max(axis=2)                      # (N, C)
    assert index.channels == c and index.output_shape == (h, w) and index.n_images == n
    assert index.values.shape == (c, k) and index.values.dtype == np.float32
    assert np.all(np.diff(index.values, axis=1) <= 0)
    exact = 0
    for ch in range(c):
        order = np.lexsort((np.arange(n), -maxima[:, ch]))[:k]          # value desc, index asc
        np.testing.assert_allclose(index.values[ch], maxima[order, ch], rtol=1e-5, atol=1e-5)
        for j in range(k):
            i = index.image_idx[ch, j]
            if i == order[j]:
                exact += 1
            else:  # only a float near-tie between two images may swap them
                assert abs(maxima[i, ch] - maxima[order[j], ch]) < 1e-5
            # the stored position holds the image's maximum
            assert acts[i, ch, index.ys[ch, j], index.xs[ch, j]] == pytest.approx(maxima[i, ch], abs=1e-5)
    assert exact >= 0.98 * c * k


def test_topk_known_answer_with_ties():
    """1x1 conv: channel 0 = red, channel 1 = -red; each image one bright pixel."""
    conv = nn.Conv2d(3, 2, 1, bias=False)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, 0] = 1.0
        conv.weight[1, 0] = -1.0
    bundle = _tiny_bundle(nn.Sequential(conv, Boom()))
    rng = np.random.default_rng(0)
    intensity = [50, 200, 120, 200, 10, 250, 120, 90, 30, 200]         # ties: 200 x3, 120 x2
    imgs = np.zeros((10, 16, 16, 3), np.uint8)
    pos = []
    for i, v in enumerate(intensity):
        y, x = int(rng.integers(1, 16)), int(rng.integers(1, 16))
        imgs[i, y, x, 0] = v
        pos.append((y, x))
    ds = _array_dataset(imgs, "known")
    before = _snapshot(bundle.model)
    index = patches.run_scan(bundle, ds, "0", k=4, batch_size=3, save=False)   # 3 does not divide 10
    assert index.image_idx[0].tolist() == [5, 1, 3, 9]                # 250, then the 200s by index
    np.testing.assert_allclose(index.values[0], (np.array([250, 200, 200, 200]) / 255 - 0.5) / 0.5, atol=1e-6)
    assert [(index.ys[0, j], index.xs[0, j]) for j in range(4)] == [pos[i] for i in [5, 1, 3, 9]]
    # channel 1: every image's max is +1 on the background: a full tie -> lowest indices,
    # first position in row-major order
    assert index.image_idx[1].tolist() == [0, 1, 2, 3]
    np.testing.assert_allclose(index.values[1], 1.0)
    assert index.ys[1].tolist() == [0] * 4 and index.xs[1].tolist() == [0] * 4
    # k larger than the data set: all images, still sorted
    big = patches.run_scan(bundle, ds, "0", k=20, batch_size=4, save=False)
    assert big.values.shape == (2, 10) and big.k == 20
    assert big.image_idx[0].tolist() == [5, 1, 3, 9, 2, 6, 7, 0, 8, 4]
    _assert_untouched(bundle.model, before)


def test_bad_layers_raise_and_leave_no_hooks(digits, digits200):
    before = _snapshot(digits.model)
    with pytest.raises(LayerError, match="not a \\(channels"):
        patches.run_scan(digits, digits200, "fc", k=3, save=False)
    with pytest.raises(LayerError):
        patches.run_scan(digits, digits200, "no.such.layer", k=3, save=False)
    with pytest.raises(ParameterError):
        patches.run_scan(digits, digits200, "features.conv1", k=0, save=False)
    _assert_untouched(digits.model, before)


# ------------------------------------------------------------------------------ crops

def _two_conv_bundle():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    return _tiny_bundle(model, "two convs")


def test_crop_box_and_pixels():
    bundle = _two_conv_bundle()                                       # RF 5x5, jump 1, at (y, x)
    rng = np.random.default_rng(1)
    ds = _array_dataset(rng.integers(0, 256, (6, 16, 16, 3)), "crops")
    index = patches.PatchIndex(
        layer="2", model_id=bundle.model_id, dataset_hash=ds.content_hash,
        preprocess_id=bundle.preprocess.spec_id, k=3, channels=1,
        values=np.array([[3.0, 2.0, 1.0]], np.float32), image_idx=np.array([[4, 1, 2]]),
        ys=np.array([[8, 0, 15]]), xs=np.array([[8, 0, 3]]), output_shape=(16, 16), n_images=6, seconds=0.0)
    crops = patches.patch_crops(bundle, ds, index, 0, display_size=10)
    assert [c.box for c in crops] == [(6, 6, 11, 11), (0, 0, 3, 3), (13, 1, 16, 6)]
    assert [c.image_idx for c in crops] == [4, 1, 2] and crops[0].image_id == "img/004"
    assert crops[0].value == 3.0 and crops[0].label_name == "x" and crops[2].position == (15, 3)
    for c in crops:
        assert c.image.shape == (10, 10, 3) and c.image.dtype == np.uint8
    view = bundle.preprocess.geometry(ds.get(4))
    # 5x5 field enlarged 2x with nearest: every second pixel is the field
    np.testing.assert_array_equal(crops[0].image[::2, ::2], view[6:11, 6:11])
    # clipped at the top-left corner: padded back to 5x5 on the clipped sides (mean grey)
    corner = crops[1].image[::2, ::2]
    np.testing.assert_array_equal(corner[2:, 2:], bundle.preprocess.geometry(ds.get(1))[0:3, 0:3])
    assert (corner[:2] == 128).all() and (corner[:, :2] == 128).all()
    # clipped at the bottom: padding below
    bottom = crops[2].image[::2, ::2]
    np.testing.assert_array_equal(bottom[:3], bundle.preprocess.geometry(ds.get(2))[13:16, 1:6])
    assert (bottom[3:] == 128).all()
    # without padding the clipped crop is stretched to the display size
    raw = patches.patch_crops(bundle, ds, index, 0, display_size=9, pad=False)
    assert raw[1].image.shape == (9, 9, 3)
    np.testing.assert_array_equal(raw[1].image[::3, ::3], bundle.preprocess.geometry(ds.get(1))[0:3, 0:3])
    # a scanned index crops boxes centred on its maxima
    scanned = patches.run_scan(bundle, ds, "2", k=2, batch_size=4, save=False)
    for c in range(scanned.channels):
        for pc in patches.patch_crops(bundle, ds, scanned, c, display_size=8):
            y, x = pc.position
            assert pc.box == (max(0, y - 2), max(0, x - 2), min(16, y + 3), min(16, x + 3))
    grid = patches.patch_grid(bundle, ds, scanned, [0, 3, 1], display_size=8)
    assert grid.shape == (3 * 8 + 2 * 2, 2 * 8 + 2, 3) and grid.dtype == np.uint8
    assert (grid[8:10] == 255).all() and (grid[:, 8:10] == 255).all()
    np.testing.assert_array_equal(grid[10:18, 0:8], patches.patch_crops(bundle, ds, scanned, 3, display_size=8)[0].image)
    with pytest.raises(ParameterError):
        patches.patch_crops(bundle, ds, scanned, 4)
    with pytest.raises(ParameterError, match="another data set"):
        patches.patch_crops(bundle, _subset(ds, 5), scanned, 0)


def test_digit_crops_are_display_size(digits, digits200):
    index = patches.run_scan(digits, digits200, "features.relu3", k=4, batch_size=64, save=False)
    crops = patches.patch_crops(digits, digits200, index, int(index.channel_ranking()[0]), display_size=48)
    assert len(crops) == 4
    for c in crops:
        assert c.image.shape == (48, 48, 3) and c.image.dtype == np.uint8
        t, l, b, r = c.box
        assert 0 <= t < b <= 32 and 0 <= l < r <= 32
        assert c.label_name == str(digits200.labels[c.image_idx])


def test_lite0_scan_on_gallery_crops(lite0):
    ds = patches.gallery_dataset(crops_per_image=1, size=256)
    before = _snapshot(lite0.model)
    index = patches.run_scan(lite0, ds, "_blocks.10", k=3, batch_size=4, save=False)
    acts = _brute_force(lite0, ds, "_blocks.10")
    n, c, h, w = acts.shape
    assert index.output_shape == (h, w) and index.channels == c
    np.testing.assert_allclose(index.values[:, 0], acts.reshape(n, c, -1).max(axis=(0, 2)), rtol=1e-4, atol=1e-4)
    crops = patches.patch_crops(lite0, ds, index, 7, display_size=64)
    assert len(crops) == 3 and all(p.image.shape == (64, 64, 3) for p in crops)
    assert crops[0].label_name == ds.class_names[ds.labels[crops[0].image_idx]]
    _assert_untouched(lite0.model, before)


# ------------------------------------------------------------------------------ disk index

def test_index_reused_after_restart_and_invalidated(digits, digits200, monkeypatch):
    layer, k = "features.relu2", 5
    first = patches.run_scan(digits, digits200, layer, k=k, batch_size=50)
    # "restart": new data-set object, no in-memory state; scanning is forbidden
    patches._RF_CACHE.clear()
    fresh = _subset(load_digits_dataset(), 200)

    def no_scan(*a, **kw):
        raise AssertionError("scanned although a stored index exists")
    monkeypatch.setattr(patches, "scan", no_scan)
    monkeypatch.setattr(patches, "_layer_maxima", no_scan)
    loaded = patches.load_index(digits, fresh, layer, k)
    assert loaded is not None and loaded is not first and loaded.same_as(first)
    assert patches.patch_crops(digits, fresh, loaded, 0, display_size=16)[0].image.shape == (16, 16, 3)
    monkeypatch.undo()

    other_model = ModelBundle(digits.copy_model(), digits.preprocess, digits.categories, "copy",
                              digits.architecture, "random", model_id="0" * 64)
    assert patches.load_index(other_model, fresh, layer, k) is None          # other weights
    assert patches.load_index(digits, fresh, "features.relu3", k) is None    # other layer
    assert patches.load_index(digits, _subset(load_digits_dataset(), 199), layer, k) is None  # other data
    assert patches.load_index(digits, fresh, layer, k + 1) is None           # other k
    calls = []
    real_scan = patches.scan
    monkeypatch.setattr(patches, "scan", lambda *a, **kw: calls.append(1) or real_scan(*a, **kw))
    again = patches.run_scan(other_model, fresh, layer, k=k, batch_size=100)
    assert calls == [1] and again.model_id == "0" * 64 and again.same_as(first) is False
    np.testing.assert_array_equal(again.image_idx, first.image_idx)         # same weights, new key
    assert patches.load_index(other_model, fresh, layer, k) is not None


def test_corrupt_index_is_dropped(digits, digits200):
    layer, k = "features.conv1", 2
    patches.run_scan(digits, digits200, layer, k=k)
    path = diskcache.cache_path("patches", patches.index_key(digits, digits200, layer, k))
    assert path.is_file()
    path.write_bytes(path.read_bytes()[:100])
    assert patches.load_index(digits, digits200, layer, k) is None
    assert not path.exists()


def test_stop_after_first_batch_saves_nothing(digits, digits200):
    before = _snapshot(digits.model)
    layer, k = "features.conv4", 3
    seen = []
    result = patches.run_scan(digits, digits200, layer, k=k, batch_size=16,
                              progress=lambda d, t: seen.append(d), should_stop=lambda: len(seen) >= 2)
    assert result is None and seen == [0, 16]
    assert patches.load_index(digits, digits200, layer, k) is None
    assert not diskcache.cache_path("patches", patches.index_key(digits, digits200, layer, k)).exists()
    # abandoning the generator half-way leaves nothing either
    gen = patches.scan(digits, digits200, layer, k=k, batch_size=16)
    assert next(gen).done == 0 and next(gen).done == 16
    gen.close()
    assert patches.load_index(digits, digits200, layer, k) is None
    _assert_untouched(digits.model, before)


# ------------------------------------------------------------------------------ gallery

def test_gallery_dataset_deterministic():
    from analysis.core.images import gallery_names
    names = gallery_names("photo")
    a = patches.gallery_dataset(crops_per_image=2, size=64)
    patches.gallery_dataset.cache_clear()
    b = patches.gallery_dataset(crops_per_image=2, size=64)
    assert a is not b and a.content_hash == b.content_hash
    assert len(a) == 2 * len(names) and a.class_names == names
    assert a.ids[:3] == [f"{names[0]}/crop000", f"{names[0]}/crop001", f"{names[1]}/crop000"]
    assert a.labels.tolist() == [i for i in range(len(names)) for _ in range(2)]
    for i in range(len(a)):
        img = a.get(i)
        assert img.shape == (64, 64, 3) and img.dtype == np.uint8
        np.testing.assert_array_equal(img, b.get(i))
    c = patches.gallery_dataset(crops_per_image=2, seed=1, size=64)
    assert c.content_hash != a.content_hash
    assert sum(np.array_equal(a.get(i), c.get(i)) for i in range(len(a))) == 0
    # more crops per photo: the first ones are unchanged, the hash is not
    d = patches.gallery_dataset(crops_per_image=3, size=64)
    assert d.content_hash != a.content_hash
    np.testing.assert_array_equal(d.get(4), a.get(3))                 # photo 1, crop 1
    assert patches.gallery_dataset(crops_per_image=2, size=96).content_hash != a.content_hash
    with pytest.raises(ParameterError):
        patches.gallery_dataset(crops_per_image=0)


# ------------------------------------------------------------------------------ diskcache

def test_diskcache_roundtrip_keys_and_clear(tmp_path):
    assert diskcache.cache_key("a", (1, 2), {"x": 1, "y": [2.5]}) == diskcache.cache_key("a", [1, 2], {"y": [2.5], "x": 1})
    assert diskcache.cache_key("a", 1) != diskcache.cache_key("a", "1")
    assert diskcache.cache_key(np.int64(3)) == diskcache.cache_key(3)
    key = diskcache.cache_key("test", 1)
    arrays = {"v": np.arange(6, dtype=np.float32).reshape(2, 3), "s": np.array(["a", "bc"])}
    path = diskcache.save_arrays("things", key, arrays, {"n": 2, "t": (1, 2)}, cache_dir=tmp_path)
    assert path == tmp_path / "things" / f"{key}.npz" and path.is_file()
    assert [p.name for p in path.parent.iterdir()] == [path.name]          # no temp files left
    got, meta = diskcache.load_arrays("things", key, cache_dir=tmp_path)
    assert meta == {"n": 2, "t": [1, 2]} and got.keys() == arrays.keys()
    for name in arrays:
        np.testing.assert_array_equal(got[name], arrays[name])
    assert diskcache.load_arrays("things", "f" * 64, cache_dir=tmp_path) is None
    path.write_bytes(b"not a zip")
    assert diskcache.load_arrays("things", key, cache_dir=tmp_path) is None and not path.exists()
    diskcache.save_arrays("things", key, arrays, {}, cache_dir=tmp_path)
    assert diskcache.clear("things", cache_dir=tmp_path) == 1
    assert diskcache.load_arrays("things", key, cache_dir=tmp_path) is None
    # default folder: the configured cache dir
    p2 = diskcache.save_arrays("things", key, arrays)
    assert str(p2).startswith(os.environ["CONVLENS_CACHE_DIR"])
    diskcache.clear("things")
    for bad_kind, bad_key in (("../x", key), ("things", "../../etc"), ("", key)):
        with pytest.raises(ParameterError):
            diskcache.save_arrays(bad_kind, bad_key, arrays, {}, cache_dir=tmp_path)
    with pytest.raises(ParameterError):
        diskcache.save_arrays("things", key, {"o": np.array([object()])}, {}, cache_dir=tmp_path)
