"""The embedded models, the bundle invariants and preprocessing."""
import copy

import numpy as np
import pytest
import torch

from analysis.core.hooks import count_hooks
from analysis.core.models.bundle import ModelBundle, Preprocessing, weights_sha256
from analysis.core.models.efficientnet_lite import Conv2dSame, efficientnet_lite0
from analysis.core.predict import logits, predict, search_classes

CATS = {"tabby", "tiger cat", "Egyptian cat"}


def test_lite0_loads_strict_and_predicts_cats(lite0, chelsea):
    pred = predict(lite0, chelsea, k=3)
    assert set(pred.labels) == CATS


def test_lite0_espresso_confident(lite0, coffee):
    pred = predict(lite0, coffee, k=1)
    assert pred.labels[0] == "espresso"
    assert pred.probs[0] > 0.9


def test_lite0_preprocessing_matters(lite0, coffee):
    """The shipped (x-127)/128 normalisation is the right one: ImageNet mean/std is worse."""
    wrong = Preprocessing(224, 256, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    x_wrong = wrong(coffee)
    with torch.inference_mode():
        p_wrong = lite0.model(x_wrong).softmax(-1)[0, 967].item()
    assert predict(lite0, coffee, k=1).probs[0] > p_wrong + 0.05


def test_lite0_architecture_facts(lite0):
    m = lite0.model
    assert isinstance(m._conv_stem, Conv2dSame)
    assert all(bn.eps == 1e-3 for bn in m.modules() if isinstance(bn, torch.nn.BatchNorm2d))
    acts = [type(a).__name__ for a in m.modules() if isinstance(a, (torch.nn.ReLU, torch.nn.ReLU6, torch.nn.SiLU))]
    assert acts and set(acts) == {"ReLU6"}
    assert len(m._blocks) == 16
    assert lite0.num_parameters == sum(p.numel() for p in m.parameters()) > 4_000_000
    assert len(lite0.categories) == 1000 and lite0.categories[281] == "tabby"


def test_same_padding_matches_tf_shapes():
    conv = Conv2dSame(3, 4, 3, stride=2)
    for size in (223, 224, 225):
        assert conv(torch.zeros(1, 3, size, size)).shape[-1] == -(-size // 2)


def test_bundle_is_frozen(lite0):
    assert not lite0.model.training
    assert all(not p.requires_grad for p in lite0.model.parameters())
    assert count_hooks(lite0.model) == 0
    assert len(lite0.model_id) == 64 and lite0.model_id == weights_sha256(lite0.model)


def test_model_id_changes_with_weights():
    m = efficientnet_lite0(num_classes=10)
    a = weights_sha256(m)
    m2 = copy.deepcopy(m)
    with torch.no_grad():
        m2._fc.bias[0] += 1e-3
    assert weights_sha256(m2) != a and weights_sha256(copy.deepcopy(m)) == a


def test_copy_model_is_independent(lite0):
    before = lite0.model_id
    c = lite0.copy_model()
    with torch.no_grad():
        next(c.parameters()).add_(1.0)
    assert weights_sha256(lite0.model) == before


def test_preprocessing_roundtrip_and_geometry():
    pre = Preprocessing(32, 40, (0.5, 0.4, 0.3), (0.2, 0.25, 0.3))
    img = np.random.default_rng(0).integers(0, 256, (50, 80, 3), dtype=np.uint8)
    view = pre.geometry(img)
    assert view.shape == (32, 32, 3)
    x = pre.normalize(pre.to_unit(view))
    assert np.array_equal(pre.to_display(x[0]), view)      # exact inverse after rounding
    lo, hi = pre.valid_range()
    assert torch.all(x >= lo - 1e-6) and torch.all(x <= hi + 1e-6)
    assert pre.spec_id != Preprocessing(32, 40, (0.5, 0.4, 0.3), (0.2, 0.25, 0.31)).spec_id


def test_grayscale_preprocessing_displays_rgb():
    pre = Preprocessing(8, 8, (0.5,), (0.5,), grayscale=True)
    img = np.full((8, 8, 3), 200, np.uint8)
    x = pre(img)
    assert x.shape == (1, 1, 8, 8)
    out = pre.to_display(x)
    assert out.shape == (1, 8, 8, 3) and int(out[0, 0, 0, 0]) == 200


def test_preprocessing_rejects_bad_input():
    from analysis.core.errors import ParameterError
    pre = Preprocessing(8, 8, (0.5,) * 3, (0.5,) * 3)
    with pytest.raises(ParameterError):
        pre.geometry(np.zeros((8, 8), np.uint8))
    with pytest.raises(ParameterError):
        Preprocessing(8, 4, (0.5,) * 3, (0.5,) * 3)


def test_batched_logits_equal_single(lite0, chelsea, coffee):
    both = logits(lite0, [chelsea, coffee], batch_size=2)
    one = logits(lite0, [coffee], batch_size=1)
    np.testing.assert_allclose(both[1], one[0], rtol=1e-4, atol=1e-4)


def test_search_classes(lite0):
    hits = search_classes(lite0, "CAT")
    assert (281, "tabby") not in hits and (282, "tiger cat") in hits and (285, "Egyptian cat") in hits


# ------------------------------------------------------------------ digits CNN

def test_digits_model_accuracy_and_cache(digits, session_dir):
    from analysis.core.models.digits import digits_weights_path, load_digits_model
    path = digits_weights_path()
    assert path.is_file() and str(session_dir) in str(path)
    model, info = load_digits_model()                 # second call: from the cache
    assert info["test_accuracy"] >= 0.95
    assert info["n_test"] >= 350 and info["n_train"] + info["n_test"] == 1797
    assert weights_sha256(model) == digits.model_id


def test_digits_model_predicts_dataset(digits):
    from analysis.core.datasets import load_digits_dataset, train_test_split_indices
    ds = load_digits_dataset()
    _, test_idx = train_test_split_indices(ds.labels, 0.2, 0)
    out = logits(digits, ds.get_many(test_idx)).argmax(1)
    assert (out == ds.labels[test_idx]).mean() >= 0.95


def test_digits_training_is_deterministic():
    from analysis.core.models.digits import DigitsTrainConfig, train_digits_cnn
    cfg = DigitsTrainConfig(epochs=1)
    a, ia = train_digits_cnn(cfg)
    b, ib = train_digits_cnn(cfg)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert ia["losses"] == ib["losses"]


def test_digits_corrupt_cache_is_retrained(tmp_path):
    from analysis.core.models.digits import DigitsTrainConfig, digits_weights_path, load_digits_model
    cfg = DigitsTrainConfig(epochs=1)
    path = digits_weights_path(cfg, tmp_path)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a safetensors file")
    model, info = load_digits_model(cfg, tmp_path)
    assert path.stat().st_size > 10_000 and "test_accuracy" in info


def test_bundle_digits_is_grayscale(digits):
    assert digits.preprocess.grayscale and digits.input_size == 32
    assert isinstance(digits, ModelBundle) and digits.categories == [str(i) for i in range(10)]
