"""The Workers compute what the per-image methods compute (batched where they can)."""
from __future__ import annotations

import numpy as np
import pytest

from analysis.core.datasets import load_digits_dataset
from analysis.core.errors import ModelLoadError, ParameterError
from analysis.dataset.workers import FeaturesWorker, PredictWorker, SaliencyWorker, TrustWorker
from analysis.saliency.methods import attribute
from analysis.saliency.trust import deletion_insertion, random_map


def _batch(idx, masks=None):
    ds = load_digits_dataset()
    images = np.empty(len(idx), dtype=object)
    for k, i in enumerate(idx):
        images[k] = ds.get(i)
    m = np.empty(len(idx), dtype=object)
    for k in range(len(idx)):
        m[k] = None if masks is None else masks[k]
    return {"index": np.asarray(idx, np.int64), "path": np.asarray([ds.ids[i] for i in idx], dtype=object),
            "label": ds.labels[list(idx)], "image": images, "mask": m}


IDX = list(range(0, 240, 20))


@pytest.mark.parametrize("target", ["pred", "label"])
def test_batched_gradcam_equals_per_image_attribute(digits, target):
    w = SaliencyWorker("digits", {"method": "gradcam", "target": target}, bundle=digits)
    out = w(_batch(IDX))
    assert out["map"].shape == (len(IDX), 32, 32) and w.params["layer"]
    if target == "label":
        assert np.array_equal(out["target"], out["label"])
    else:
        assert np.array_equal(out["target"], out["pred"])
    for k, i in enumerate(IDX):
        a = attribute(digits, load_digits_dataset().get(i), int(out["target"][k]), "gradcam", layer=w.params["layer"])
        np.testing.assert_allclose(out["map"][k], a.map, rtol=1e-4, atol=1e-6)


def test_batched_gradient_and_per_image_methods_equal_attribute(digits):
    ds = load_digits_dataset()
    g = SaliencyWorker("digits", {"method": "gradient"}, bundle=digits)(_batch(IDX[:4]))
    ig = SaliencyWorker("digits", {"method": "integrated_gradients", "method_params": {"steps": 8}},
                        bundle=digits)(_batch(IDX[:4]))
    for k, i in enumerate(IDX[:4]):
        a = attribute(digits, ds.get(i), int(g["target"][k]), "gradient")
        np.testing.assert_allclose(g["map"][k], a.map, rtol=1e-4, atol=1e-7)
        b = attribute(digits, ds.get(i), int(ig["target"][k]), "integrated_gradients", steps=8)
        np.testing.assert_allclose(ig["map"][k], b.map, rtol=1e-5, atol=1e-7)


def test_mass_inside_centre_and_mask_known_answers(digits):
    w = SaliencyWorker("digits", {"method": "gradcam", "centre": 0.5}, bundle=digits)
    uniform = np.ones((1, 32, 32), np.float32)
    left = np.zeros((8, 8), bool)
    left[:, :4] = True
    s = w.scalars(_batch([0], masks=[left]), uniform)
    assert s["mass_centre"][0] == pytest.approx(0.25) and s["mass_mask"][0] == pytest.approx(0.5)
    assert s["flat"][0]
    peaked = np.zeros((1, 32, 32), np.float32)
    peaked[0, 16, 4] = 2.0          # centre row, left edge: outside the centre box, inside the mask
    s = w.scalars(_batch([0], masks=[left]), peaked)
    assert s["mass_centre"][0] == 0 and s["mass_mask"][0] == 1 and not s["flat"][0]
    assert np.isnan(w.scalars(_batch([0]), peaked)["mass_mask"][0])        # no mask: NaN


def test_trust_worker_equals_deletion_insertion(digits):
    w = TrustWorker("digits", {"steps": 8, "n_random": 2, "seed": 5}, bundle=digits)
    out = w(_batch([3, 40]))
    crop = digits.preprocess.geometry(load_digits_dataset().get(40))
    m = SaliencyWorker("digits", {"method": "gradcam"}, bundle=digits)(_batch([3, 40]))["map"][1]
    kw = {"steps": 8, "substrate": "zero", "patch": 8}
    assert (w.params["patch"], w.params["substrate"]) == (8, "zero")     # the measured default: black, 1/4 side
    c = deletion_insertion(digits, m, crop, int(out["target"][1]), kind="deletion", **kw)
    assert out["deletion_auc"][1] == pytest.approx(c.auc, abs=1e-9)
    np.testing.assert_allclose(out["deletion_scores"][1], c.scores, atol=1e-9)
    r = deletion_insertion(digits, random_map((32, 32), 5 + 1009 * 40 + 1), crop, int(out["target"][1]),
                           kind="insertion", **kw)
    assert out["random_insertion_auc"][1, 1] == pytest.approx(r.auc, abs=1e-9)


def test_features_worker_equals_embeddings_extract(digits):
    from analysis.core.datasets import Dataset
    from analysis.embeddings.features import run_extract
    ds = load_digits_dataset()
    sub = Dataset(name="sub", source="digits", class_names=ds.class_names, labels=ds.labels[IDX],
                  ids=[ds.ids[i] for i in IDX], content_hash="f" * 64, _loader=lambda k: ds.get(IDX[k]))
    fs = run_extract(digits, sub, batch_size=len(IDX), save=False)
    out = FeaturesWorker("digits", {}, bundle=digits)(_batch(IDX))
    np.testing.assert_allclose(out["features"], fs.features, rtol=1e-5, atol=1e-6)
    assert np.array_equal(out["pred"], fs.predictions)


def test_worker_params_and_identity_are_checked(digits):
    with pytest.raises(ParameterError, match="no parameter"):
        PredictWorker("digits", {"topk": 3}, bundle=digits)
    with pytest.raises(ParameterError, match="Unknown saliency method"):
        SaliencyWorker("digits", {"method": "magic"}, bundle=digits)
    with pytest.raises(ParameterError, match="target"):
        SaliencyWorker("digits", {"target": "mine"}, bundle=digits)
    with pytest.raises(ModelLoadError, match="weights differ"):
        PredictWorker("digits", {}, bundle=digits, model_id="0" * 64)
    assert PredictWorker("digits", {"top_k": 50}, bundle=digits).params["top_k"] == 10
