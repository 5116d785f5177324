"""Saliency methods: known answers, parity with autograd and Captum, model untouched."""
import numpy as np
import pytest
import torch
from torch import nn

from analysis.core.batching import run_batched
from analysis.core.errors import LayerError, ParameterError
from analysis.core.guided import GuidedRectifier, guided_copy
from analysis.core.hooks import count_hooks
from analysis.core.models.bundle import ModelBundle, Preprocessing, weights_sha256
from analysis.saliency.methods import _input_grad, attribute
from analysis.saliency.registry import names as method_names

REGION = (slice(8, 16), slice(16, 24))          # rows, cols that the score depends on


class Mask(nn.Module):
    def __init__(self, size=32):
        super().__init__()
        m = torch.zeros(1, 1, size, size)
        m[..., REGION[0], REGION[1]] = 1
        self.register_buffer("mask", m)

    def forward(self, x):
        return x * self.mask


class RegionNet(nn.Module):
    """Class 1 = mean over the known region of relu(R + G + B); class 0 = its negative."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 1, 1, bias=False)
        self.relu = nn.ReLU()
        self.mask = Mask()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(1, 2)
        with torch.no_grad():
            self.conv.weight.fill_(1.0)
            self.fc.weight.copy_(torch.tensor([[-1.0], [1.0]]) * 64)
            self.fc.bias.zero_()

    def forward(self, x):
        return self.fc(self.pool(self.mask(self.relu(self.conv(x)))).flatten(1))


@pytest.fixture(scope="module")
def region_bundle():
    pre = Preprocessing(32, 32, (0.0,) * 3, (1.0,) * 3)
    return ModelBundle(RegionNet(), pre, ["neg", "pos"], "region", "RegionNet", "random")


@pytest.fixture(scope="module")
def region_image():
    rng = np.random.default_rng(0)
    return rng.integers(60, 255, (32, 32, 3), dtype=np.uint8)


def argmax_in_region(m: np.ndarray) -> bool:
    r, c = np.unravel_index(np.argmax(m), m.shape)
    return REGION[0].start <= r < REGION[0].stop and REGION[1].start <= c < REGION[1].stop


@pytest.mark.parametrize("method,params", [
    ("occlusion", {"window": 4, "stride": 2, "baseline": "zero"}),
    ("occlusion_fast", {"window": 4, "stride": 2, "baseline": "zero"}),
    ("gradient", {}), ("integrated_gradients", {"steps": 16, "baseline": "zero"}),
    ("smoothgrad", {"samples": 8}), ("gradcam", {"layer": "mask"}),
    ("guided_backprop", {}), ("guided_gradcam", {"layer": "mask"}),
])
def test_known_region(region_bundle, region_image, method, params):
    a = attribute(region_bundle, region_image, 1, method, **params)
    assert a.map.shape == (32, 32) and a.target == 1 and a.target_label == "pos"
    assert argmax_in_region(a.map)
    outside = np.ones((32, 32), bool)
    outside[REGION] = False
    if method in ("gradient", "integrated_gradients", "gradcam", "guided_backprop", "guided_gradcam"):
        assert np.abs(a.map[outside]).max() <= 1e-6 * max(1.0, np.abs(a.map).max())
    assert count_hooks(region_bundle.model) == 0


def test_vanilla_gradient_equals_autograd(lite0, chelsea):
    a = attribute(lite0, chelsea, 281, "gradient")
    x = lite0.inputs(chelsea).requires_grad_(True)
    with torch.enable_grad():
        lite0.model(x)[0, 281].backward()
    np.testing.assert_allclose(a.signed, x.grad[0].numpy(), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(a.map, np.abs(x.grad[0].numpy()).max(0), rtol=1e-5, atol=1e-7)


def test_occlusion_equals_captum(digits):
    from captum.attr import Occlusion

    from analysis.core.datasets import load_digits_dataset
    img = load_digits_dataset().get(5)
    a = attribute(digits, img, None, "occlusion", window=8, stride=4, baseline="mean", batch_size=7)
    x = digits.inputs(img)
    with torch.inference_mode():
        ref = Occlusion(digits.model).attribute(x, sliding_window_shapes=(1, 8, 8), strides=(1, 4, 4),
                                                baselines=0.0, target=a.target, perturbations_per_eval=16)
    r = np.corrcoef(a.map.ravel(), ref[0, 0].numpy().ravel())[0, 1]
    assert r > 0.999
    np.testing.assert_allclose(a.map, ref[0, 0].numpy(), rtol=1e-4, atol=1e-5)


def test_fast_occlusion_is_exact_on_lite0(lite0, coffee):
    """On EfficientNet-Lite the fast mode is incremental inference: the exact map, not an
    interpolation (analysis/saliency/incremental.py; tests/saliency/test_incremental.py checks the deltas)."""
    kw = dict(window=32, stride=24, baseline="zero")
    exact = attribute(lite0, coffee, None, "occlusion", **kw)
    fast = attribute(lite0, coffee, None, "occlusion_fast", **kw)
    assert fast.params["fast_method"] == "incremental" and fast.target == exact.target
    assert fast.params["evaluations"] == exact.params["evaluations"] == 9 * 9 + 1
    assert np.corrcoef(exact.map.ravel(), fast.map.ravel())[0, 1] > 0.99999
    np.testing.assert_allclose(fast.map, exact.map, rtol=1e-4, atol=1e-4 * np.abs(exact.map).max())


def test_guided_backprop_is_guided_on_relu6(lite0, chelsea):
    """Captum's GuidedBackprop ignores ReLU6 (it equals the gradient); ours does not, and no
    negative gradient passes back through any rectifier."""
    from captum.attr import GuidedBackprop
    x = lite0.inputs(chelsea)
    plain = attribute(lite0, chelsea, 281, "gradient").signed
    ours = attribute(lite0, chelsea, 281, "guided_backprop").signed
    with lite0.lock, torch.enable_grad():
        captum_gbp = GuidedBackprop(lite0.copy_model()).attribute(x.clone(), target=281)[0].numpy()
    np.testing.assert_allclose(captum_gbp, plain, rtol=1e-4, atol=1e-6)   # the silent failure
    assert np.corrcoef(ours.ravel(), plain.ravel())[0, 1] < 0.5
    assert not np.allclose(ours, plain)

    gm, n = guided_copy(lite0.model)
    assert n == sum(isinstance(m, nn.ReLU6) for m in lite0.model.modules()) == 33
    mins, handles = [], []
    try:
        for m in gm.modules():
            if isinstance(m, GuidedRectifier):
                handles.append(m.register_full_backward_hook(
                    lambda mod, gin, gout: mins.append(float(gin[0].min()))))
        _input_grad(gm, x, 281)
    finally:
        for h in handles:
            h.remove()
    assert len(mins) == 33 and min(mins) >= 0.0


def test_functional_relu_is_warned():
    class Functional(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(torch.relu(self.conv(x)).mean((2, 3)))
    b = ModelBundle(Functional(), Preprocessing(16, 16, (0.5,) * 3, (0.5,) * 3), ["a", "b"], "f", "F", "random")
    a = attribute(b, np.full((16, 16, 3), 100, np.uint8), 0, "guided_backprop")
    assert any("functional rectifier" in w for w in a.warnings)
    assert any("No ReLU-like modules" in w for w in a.warnings)


def test_inplace_relu_model_is_guided_on_a_copy():
    from analysis.core.models.loaders import torchvision_bundle
    b = torchvision_bundle("resnet18", pretrained=False)
    before = weights_sha256(b.model)
    img = np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    plain = attribute(b, img, 3, "gradient").signed
    guided = attribute(b, img, 3, "guided_backprop")
    assert not np.allclose(guided.signed, plain) and not guided.warnings
    assert all(m.inplace for m in b.model.modules() if isinstance(m, nn.ReLU))   # shared untouched
    assert weights_sha256(b.model) == before and count_hooks(b.model) == 0


def test_shared_model_unchanged_after_every_method_and_errors(digits):
    from analysis.core.datasets import load_digits_dataset
    img = load_digits_dataset().get(0)
    before = weights_sha256(digits.model)
    params = {"occlusion": {"window": 8, "stride": 8}, "occlusion_fast": {"window": 8, "stride": 4},
              "integrated_gradients": {"steps": 8}, "smoothgrad": {"samples": 4}}
    from analysis.saliency.transformer import ATTENTION_METHODS
    for method in method_names():
        if method in ATTENTION_METHODS:            # vision transformers only: refused with a reason
            with pytest.raises(ParameterError, match="self-attention"):
                attribute(digits, img, None, method)
            continue
        attribute(digits, img, None, method, **params.get(method, {}))
    for bad in [dict(method="gradcam", layer="nope"), dict(method="gradient", target=99),
                dict(method="occlusion", window=64), dict(method="gradient", window=3),
                dict(method="smoothgrad", noise=2.0), dict(method="magic")]:
        with pytest.raises((ParameterError, LayerError)):
            kw = dict(bad)
            attribute(digits, img, kw.pop("target", None), kw.pop("method"), **kw)
    assert weights_sha256(digits.model) == before
    assert count_hooks(digits.model) == 0 and not digits.model.training
    assert all(not p.requires_grad and p.grad is None for p in digits.model.parameters())


def test_gradcam_rejects_non_spatial_layer(digits):
    from analysis.core.datasets import load_digits_dataset
    with pytest.raises(ParameterError, match="spatial"):
        attribute(digits, load_digits_dataset().get(0), None, "gradcam", layer="fc")


def test_progress_reaches_total(digits):
    from analysis.core.datasets import load_digits_dataset
    img = load_digits_dataset().get(3)
    for method, params in [("occlusion", {"window": 8, "stride": 8, "batch_size": 3}),
                           ("integrated_gradients", {"steps": 12, "batch_size": 5}),
                           ("smoothgrad", {"samples": 6, "batch_size": 4})]:
        seen = []
        attribute(digits, img, None, method, progress=lambda d, t: seen.append((d, t)), **params)
        assert seen and seen[-1][0] == seen[-1][1] and len(seen) >= 2, (method, seen)


def test_run_batched_halves_after_oom():
    done, sizes = [], []

    def fn(a, b):
        sizes.append(b - a)
        if b - a > 4:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2 GiB")
        done.extend(range(a, b))
    assert run_batched(21, 16, fn) == 4
    assert done == list(range(21)) and sizes[:3] == [16, 8, 4]
    with pytest.raises(ValueError):
        run_batched(3, 2, lambda a, b: (_ for _ in ()).throw(ValueError("other")))


def test_targets_by_name_and_errors(lite0, coffee):
    a = attribute(lite0, coffee, "espresso", "gradcam")
    assert a.target == 967 and a.layer == "_relu_head"
    with pytest.raises(ParameterError, match="classes"):
        attribute(lite0, coffee, "dog", "gradient")          # many matches
    with pytest.raises(ParameterError, match="out of range"):
        attribute(lite0, coffee, 1000, "gradient")


def test_smoothgrad_is_seeded(digits):
    from analysis.core.datasets import load_digits_dataset
    img = load_digits_dataset().get(7)
    a = attribute(digits, img, None, "smoothgrad", samples=5, seed=3).map
    b = attribute(digits, img, None, "smoothgrad", samples=5, seed=3).map
    c = attribute(digits, img, None, "smoothgrad", samples=5, seed=4).map
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_occlusion_covers_the_border_strip_a_stride_leaves(region_image):
    """Window 8, stride 6 on 32 px: corners 0..18 leave columns/rows 26-31 uncovered (Captum's
    convention maps them to 0, "no effect", without measuring). A last corner flush with the
    border measures them: pixel (31, 31) is covered only by the window at (24, 24), so its map
    value is exactly that window's score drop, computed here by hand."""
    from analysis.saliency.methods import baseline_tensor
    net = RegionNet()
    net.mask.mask.fill_(1.0)                    # the score depends on every pixel
    region_bundle = ModelBundle(net, Preprocessing(32, 32, (0.0,) * 3, (1.0,) * 3), ["neg", "pos"],
                                "whole", "RegionNet", "random")
    a = attribute(region_bundle, region_image, 1, "occlusion", window=8, stride=6, baseline="zero")
    x = region_bundle.inputs(region_image)
    base = baseline_tensor(region_bundle, x, "zero")
    hidden = x.clone()
    hidden[..., 24:32, 24:32] = base[..., 24:32, 24:32]
    with torch.inference_mode():
        drop = (region_bundle.model(x)[0, 1] - region_bundle.model(hidden)[0, 1]).item()
    assert abs(drop) > 1e-3
    assert a.map[31, 31] == pytest.approx(drop, rel=1e-5, abs=1e-6)
