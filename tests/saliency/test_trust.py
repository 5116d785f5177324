"""Trust checks: deletion/insertion curves and cascading model randomisation."""
import numpy as np
import pytest
import torch
from torch import nn

from analysis.core.errors import ParameterError
from analysis.core.hooks import count_hooks
from analysis.core.models.bundle import ModelBundle, Preprocessing, weights_sha256
from analysis.saliency.methods import attribute
from analysis.saliency.trust import (
    Curve,
    cascading_randomisation,
    compare_curves,
    cut_points,
    deletion_insertion,
    pixel_ranks,
    random_map,
    randomisation_layers,
    rank_correlation,
)

STEPS = 8


# ----------------------------------------------------------------------------- a known answer

class QuadrantNet(nn.Module):
    """Class 1 logit = 4 x mean of the red channel (model space) over the top-left 8x8
    quadrant of a 16x16 input; class 0 logit = 0."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 1, bias=False)
        mask = torch.zeros(1, 1, 16, 16)
        mask[..., :8, :8] = 1
        self.register_buffer("mask", mask)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[1, 0] = 4.0

    def forward(self, x):
        return (self.conv(x) * self.mask).sum((2, 3)) / self.mask.sum()


@pytest.fixture(scope="module")
def quadrant():
    pre = Preprocessing(16, 16, (0.5,) * 3, (0.5,) * 3)
    return ModelBundle(QuadrantNet(), pre, ["other", "red top-left"], "quadrant", "QuadrantNet", "random")


@pytest.fixture(scope="module")
def red_image():
    img = np.zeros((16, 16, 3), np.uint8)
    img[..., 0] = 255
    img[..., 1] = np.arange(16, dtype=np.uint8)[:, None] * 10
    return img


PERFECT = np.zeros((16, 16), np.float32)
PERFECT[:8, :8] = 1.0


def test_perfect_map_beats_random_and_inverted(quadrant, red_image):
    for substrate in ("zero", "mean"):
        auc = {}
        for name, m in (("perfect", PERFECT), ("random", random_map((16, 16), seed=3)), ("inverted", 1 - PERFECT)):
            auc[name] = {k: deletion_insertion(quadrant, m, red_image, 1, kind=k, steps=STEPS, substrate=substrate).auc
                         for k in ("deletion", "insertion")}
        assert auc["perfect"]["deletion"] < auc["random"]["deletion"] < auc["inverted"]["deletion"]
        assert auc["perfect"]["insertion"] > auc["random"]["insertion"] > auc["inverted"]["insertion"]
    # the perfect map's deletion is finished once the quadrant (1/4 of the pixels) is gone
    c = deletion_insertion(quadrant, PERFECT, red_image, 1, kind="deletion", steps=STEPS, substrate="zero")
    p_black = 1 / (1 + np.exp(4.0))
    assert np.allclose(c.scores[2:], p_black, atol=1e-6)


def test_curve_shape_and_endpoints(quadrant, red_image):
    x = quadrant.inputs(red_image)
    with torch.no_grad():
        clean = float(torch.softmax(quadrant.model(x), 1)[0, 1])
    m = random_map((16, 16), seed=1)
    for kind in ("deletion", "insertion"):
        for substrate in ("blur", "zero", "mean"):
            c = deletion_insertion(quadrant, m, red_image, 1, kind=kind, steps=STEPS, substrate=substrate,
                                   method_name="r")
            assert isinstance(c, Curve) and c.method == "r" and c.kind == kind and c.target == 1
            assert len(c.fractions) == len(c.scores) == STEPS + 1
            assert c.fractions[0] == 0 and c.fractions[-1] == 1 and np.all(np.diff(c.fractions) > 0)
            assert np.isclose(c.auc, np.sum((c.scores[1:] + c.scores[:-1]) / 2 * np.diff(c.fractions)))
            assert np.isclose(c.scores[0 if kind == "deletion" else -1], clean, atol=1e-6)


def test_curves_from_attribution_on_digits(digits):
    from analysis.core.datasets import load_digits_dataset
    img = load_digits_dataset().get(3)
    a = attribute(digits, img, None, "gradient")
    x = digits.inputs(img)
    with torch.no_grad():
        clean = float(torch.softmax(digits.model(x), 1)[0, a.target])
    dele = deletion_insertion(digits, a, kind="deletion", steps=STEPS)
    ins = deletion_insertion(digits, a, kind="insertion", steps=STEPS)
    assert dele.method == "gradient" and dele.target == a.target
    assert np.isclose(dele.scores[0], clean, atol=1e-5) and np.isclose(ins.scores[-1], clean, atol=1e-5)
    # batched == one image at a time, progress reported to the end
    calls = []
    one = deletion_insertion(digits, a, kind="deletion", steps=STEPS, batch_size=1,
                             progress=lambda d, t: calls.append((d, t)))
    assert np.allclose(one.scores, dele.scores, atol=1e-5)
    assert calls[-1] == (STEPS + 1, STEPS + 1) and len(calls) == STEPS + 1


def test_bad_inputs_raise(quadrant, red_image):
    with pytest.raises(ParameterError):
        deletion_insertion(quadrant, np.zeros((8, 8)), red_image, 1)
    with pytest.raises(ParameterError):
        deletion_insertion(quadrant, PERFECT, red_image, 1, kind="sideways")
    with pytest.raises(ParameterError):
        deletion_insertion(quadrant, PERFECT, red_image, 1, substrate="noise")
    with pytest.raises(ParameterError):
        deletion_insertion(quadrant, PERFECT, np.zeros((32, 32, 3), np.uint8), 1)
    with pytest.raises(ParameterError):
        deletion_insertion(quadrant, PERFECT, red_image, 1, steps=0)


def test_pixel_ranks_deterministic_ties():
    m = np.array([[1.0, 3.0], [3.0, np.nan]])
    assert pixel_ranks(m).tolist() == [2, 0, 1, 3]
    assert pixel_ranks(np.zeros((2, 3))).tolist() == list(range(6))
    assert np.array_equal(random_map((4, 5), 7), random_map((4, 5), 7))
    assert not np.array_equal(random_map((4, 5), 7), random_map((4, 5), 8))


def test_compare_curves(quadrant, red_image):
    a = attribute(quadrant, red_image, 1, "gradient")
    b = attribute(quadrant, red_image, 1, "occlusion", window=4, stride=4)
    calls = []
    res = compare_curves(quadrant, [a, b], steps=STEPS, substrate="zero", patch=1, n_random=3,
                         progress=lambda d, t: calls.append((d, t)))
    assert list(res.curves) == ["gradient", "occlusion"] and len(res.random) == 3
    assert all(set(v) == {"deletion", "insertion"} for v in [*res.curves.values(), *res.random])
    rnd = [r["deletion"].auc for r in res.random]
    assert len(set(rnd)) == 3                                          # three different random maps
    assert res.curves["gradient"]["deletion"].auc < min(rnd)
    assert res.curves["gradient"]["insertion"].auc > max(r["insertion"].auc for r in res.random)
    f, mean, sd = res.random_summary("deletion")
    assert np.allclose(mean, np.mean([r["deletion"].scores for r in res.random], 0)) and (sd >= 0).all()
    assert calls[-1] == (10 * (STEPS + 1),) * 2 and [d for d, _ in calls] == sorted(d for d, _ in calls)
    assert set(res.verdicts) == {"gradient", "occlusion"}
    other_target = attribute(quadrant, red_image, 0, "gradient")
    with pytest.raises(ParameterError):
        compare_curves(quadrant, [a, other_target], steps=STEPS)
    other_image = attribute(quadrant, red_image[::-1].copy(), 1, "gradient")
    with pytest.raises(ParameterError):
        compare_curves(quadrant, [a, other_image], steps=STEPS)
    with pytest.raises(ParameterError):
        compare_curves(quadrant, [], steps=STEPS)
    for bad in (1, 0, True, 2.5, 65):
        with pytest.raises(ParameterError, match="n_random"):
            compare_curves(quadrant, [a], steps=STEPS, n_random=bad)


def test_default_patch_scales_with_the_input(quadrant, red_image):
    from analysis.saliency.trust import default_patch
    assert (default_patch(224), default_patch(28), default_patch(16), default_patch(3)) == (56, 7, 4, 1)
    a = attribute(quadrant, red_image, 1, "gradient")
    res = compare_curves(quadrant, [a], steps=4, substrate="zero", n_random=2)
    assert res.patch == 4


def _as_attribution(template, m, name):
    import dataclasses
    return dataclasses.replace(template, method=name, map=np.asarray(m, np.float32))


@pytest.mark.parametrize("patch", [1, 2])
def test_verdicts_real_map_beats_random_and_random_map_does_not(quadrant, red_image, patch):
    """On a model whose evidence is known (the red top-left quadrant), the perfect map is
    "better than random", a random map (not one of the baseline's seeds) is "not
    distinguishable from random" and the inverted map is "worse than random"."""
    a = attribute(quadrant, red_image, 1, "gradient")
    maps = [_as_attribution(a, PERFECT, "gradient"), _as_attribution(a, random_map((16, 16), 1234), "guided_backprop"),
            _as_attribution(a, 1 - PERFECT, "smoothgrad")]
    res = compare_curves(quadrant, maps, steps=16, substrate="zero", patch=patch, n_random=8, seed=0)
    v = res.verdicts
    assert v["gradient"].label == "better than random", v["gradient"]
    assert v["gradient"].z["deletion"] >= 2 and v["gradient"].z["insertion"] >= 2
    assert v["guided_backprop"].label == "not distinguishable from random", v["guided_backprop"]
    assert v["smoothgrad"].label == "worse than random", v["smoothgrad"]
    for verdict_ in v.values():
        assert verdict_.random_std["deletion"] > 0 and len(res.random) == 8


def test_verdict_of_a_map_on_a_model_that_ignores_its_input():
    """A constant model: every curve is flat, so no map can be better than random."""
    from analysis.saliency.trust import verdict

    class Flat(nn.Module):
        def __init__(self):
            super().__init__()
            self.b = nn.Parameter(torch.tensor([0.0, 1.0]))

        def forward(self, x):
            return self.b.expand(x.shape[0], 2) + 0 * x.sum((1, 2, 3))[:, None]

    pre = Preprocessing(16, 16, (0.5,) * 3, (0.5,) * 3)
    flat = ModelBundle(Flat(), pre, ["a", "b"], "flat", "Flat", "random")
    img = np.full((16, 16, 3), 200, np.uint8)
    a = attribute(flat, img, 1, "gradient")
    res = compare_curves(flat, [_as_attribution(a, PERFECT, "gradient")], steps=8, substrate="zero", patch=1,
                         n_random=4)
    assert res.verdicts["gradient"].label == "not distinguishable from random"
    with pytest.raises(ParameterError):
        verdict("x", res.curves["gradient"], res.random[:1])


# ----------------------------------------------------------------------------- randomisation

def test_randomisation_layers_generic_rule():
    from analysis.core.models.loaders import torchvision_bundle
    r18 = randomisation_layers(torchvision_bundle("resnet18", pretrained=False, device=torch.device("cpu")))
    assert r18 == ["fc", "layer4.1", "layer4.0", "layer3.1", "layer3.0", "layer2.1", "layer2.0",
                   "layer1.1", "layer1.0", "conv1"]

    class Vggish(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
                                          nn.Conv2d(4, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(2))
            self.unused = nn.Linear(2, 2)
            self.classifier = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Dropout(), nn.Linear(8, 3))

        def forward(self, x):
            return self.classifier(self.features(x).flatten(1))

    b = ModelBundle(Vggish(), Preprocessing(16, 16, (0.5,) * 3, (0.5,) * 3), list("abc"), "v", "v", "random")
    assert randomisation_layers(b) == ["classifier.3", "classifier.0", "features.4", "features.0"]


def test_cut_points():
    assert cut_points(5, 8) == [1, 2, 3, 4, 5]
    pts = cut_points(19, 6)
    assert pts[0] == 1 and pts[-1] == 19 and len(pts) == 6 and pts == sorted(set(pts))
    assert cut_points(19, 1) == [19]
    with pytest.raises(ParameterError):
        cut_points(5, 0)


def test_cascading_randomisation_digits(digits):
    from analysis.core.datasets import load_digits_dataset
    img = load_digits_dataset().get(7)
    before = weights_sha256(digits.model)
    layers = randomisation_layers(digits)
    assert layers == ["fc", "features.conv4", "features.conv3", "features.conv2", "features.conv1"]
    calls = []
    res = cascading_randomisation(digits, img, None, ["gradient", "gradcam"], max_steps=8, seed=0,
                                  progress=lambda d, t: calls.append((d, t)))
    assert res.layers == layers                     # one label per randomised step
    assert res.randomised[-1] == ["fc", "features.conv4", "features.conv3", "features.bn3",
                                  "features.conv2", "features.bn2", "features.conv1", "features.bn1"]
    assert len(res.randomised) == len(layers) and res.randomised[0] == ["fc"]
    for m in ("gradient", "gradcam"):
        assert len(res.maps[m]) == len(layers) + 1   # the original first
        assert len(res.correlations[m]) == len(layers)
        assert all(mp.shape == (32, 32) for mp in res.maps[m])
        for k, r in enumerate(res.correlations[m]):
            assert np.isclose(r, rank_correlation(res.maps[m][0], res.maps[m][k + 1]), equal_nan=True)
    assert res.image.shape == (32, 32, 3)
    assert calls[-1] == (2 * 6, 2 * 6)
    # the original map is the plain attribution
    assert np.allclose(res.maps["gradient"][0], attribute(digits, img, res.target, "gradient").map)
    # everything randomised: the gradient no longer resembles the original
    assert res.correlations["gradient"][-1] < 0.5
    # the shared model is untouched
    assert weights_sha256(digits.model) == before
    assert count_hooks(digits.model) == 0 and not digits.model.training
    assert not any(p.requires_grad for p in digits.model.parameters())
    # deterministic for a seed, different for another
    again = cascading_randomisation(digits, img, res.target, ["gradient"], max_steps=2, seed=0)
    other = cascading_randomisation(digits, img, res.target, ["gradient"], max_steps=2, seed=1)
    assert again.layers == ["fc", "features.conv1"]
    # cut at "fc" is the same model whatever max_steps: per-block seeds
    assert np.array_equal(again.maps["gradient"][1], res.maps["gradient"][1])
    assert np.array_equal(again.maps["gradient"][2], res.maps["gradient"][-1])
    assert not np.array_equal(other.maps["gradient"][2], again.maps["gradient"][2])
    assert weights_sha256(digits.model) == before


def test_cascading_randomisation_bad_input(digits):
    img = np.zeros((32, 32, 3), np.uint8)
    with pytest.raises(ParameterError):
        cascading_randomisation(digits, img, 0, ["nonsense"])
    with pytest.raises(ParameterError):
        cascading_randomisation(digits, img, 0, [])
    with pytest.raises(ParameterError):
        cascading_randomisation(digits, img, 0, ["gradient"], max_steps=0)


def test_rank_correlation():
    a = np.arange(16.0).reshape(4, 4)
    assert np.isclose(rank_correlation(a, -a), 1.0)          # absolute values
    assert np.isclose(rank_correlation(a, a.ravel()[::-1].reshape(4, 4)), -1.0)
    assert np.isnan(rank_correlation(a, np.zeros((4, 4))))


def test_lite0_layers_and_cheap_randomisation(lite0, chelsea):
    layers = randomisation_layers(lite0)
    assert layers == ["_fc", "_conv_head"] + [f"_blocks.{i}" for i in range(15, -1, -1)] + ["_conv_stem"]
    before = weights_sha256(lite0.model)
    res = cascading_randomisation(lite0, chelsea, 281, ["gradient"], max_steps=3)
    assert res.layers == ["_fc", "_blocks.8", "_conv_stem"]
    assert len(res.maps["gradient"]) == 4 and len(res.correlations["gradient"]) == 3
    assert np.allclose(res.maps["gradient"][0], attribute(lite0, chelsea, 281, "gradient").map)
    assert weights_sha256(lite0.model) == before
    assert count_hooks(lite0.model) == 0 and not lite0.model.training


# ---------------------------------------------------------------- added by the lead

def test_patch_ranks_delete_whole_patches():
    from analysis.saliency.trust import patch_ranks
    m = np.zeros((8, 8))
    m[4:8, 0:4] = 5.0          # bottom-left patch most salient
    m[0, 7] = 9.0              # a single very salient pixel inside the top-right patch
    r = patch_ranks(m, 4).reshape(8, 8)
    assert set(r[4:8, 0:4].ravel()) == set(range(16))          # first 16 ranks: the whole patch
    assert set(r[0:4, 4:8].ravel()) == set(range(16, 32))      # then the top-right one (mean 9/16)
    assert np.array_equal(np.sort(r.ravel()), np.arange(64))
    assert np.array_equal(patch_ranks(m, 1), __import__("analysis.saliency.trust", fromlist=["pixel_ranks"]).pixel_ranks(m))


def test_adebayo_split_on_default_model(lite0, chelsea):
    """Measured (docs/saliency.md): randomising the top of EfficientNet-Lite0 decorrelates
    the gradient and Grad-CAM at once, while guided backprop stays almost unchanged."""
    from analysis.saliency.trust import cascading_randomisation
    res = cascading_randomisation(lite0, chelsea, None, ["gradient", "guided_backprop", "gradcam"],
                                  max_steps=6, seed=0)
    assert res.layers[:2] == ["_fc", "_blocks.13"]
    c = res.correlations
    assert c["guided_backprop"][0] > 0.95 and c["guided_backprop"][1] > 0.9
    assert c["gradient"][0] < 0.5 and c["gradient"][1] < 0.5
    assert c["gradcam"][1] < 0.5
    assert max(c["gradient"]) < min(c["guided_backprop"][:3])
