"""Incremental occlusion (analysis/saliency/incremental.py): the same score drops as full forward
passes of every occluded copy, on the real default model and on a tiny Lite-shaped model
with odd sizes (asymmetric TF-"same" padding everywhere)."""
import numpy as np
import pytest
import torch

from analysis.core.hooks import count_hooks
from analysis.core.models.bundle import ModelBundle, Preprocessing, weights_sha256
from analysis.core.models.efficientnet_lite import EfficientNetLite
from analysis.saliency.incremental import IncrementalOcclusion, plan_for
from analysis.saliency.methods import _window_grid, attribute, baseline_tensor, occlusion_deltas

# (kernel, stride, expand, in, out, repeats): stride-2 blocks with 3x3 and 5x5 kernels,
# residual blocks, an unexpanded first block, like Lite0 but small.
TINY_STAGES = [(3, 1, 1, 8, 8, 1), (3, 2, 3, 8, 12, 2), (5, 2, 3, 12, 16, 2), (3, 2, 2, 16, 16, 2),
               (5, 1, 2, 16, 24, 1)]


def assert_same_deltas(got: np.ndarray, exact: np.ndarray, clean: float) -> None:
    """Equal up to float32 rounding of the logits (relative 1e-4 of the largest drop,
    and at most 2e-5 of the clean score's magnitude)."""
    err = np.abs(got - exact).max()
    assert err <= 1e-4 * np.abs(exact).max() + 1e-7, (err, np.abs(exact).max())
    assert err <= 2e-5 * max(1.0, abs(clean)), (err, clean)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    m = EfficientNetLite(TINY_STAGES, num_classes=5, stem_ch=8, head_ch=32)
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.5, 0.5)
                mod.running_var.uniform_(0.5, 2.0)
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.uniform_(-0.5, 0.5)
            elif isinstance(mod, torch.nn.Conv2d):
                mod.weight.mul_(3.0)             # keep activations in ReLU6's interesting range
    pre = Preprocessing(61, 61, (0.5,) * 3, (0.25,) * 3)
    return ModelBundle(m, pre, list("abcde"), "tiny", "EfficientNetLite", "random")


def lite_case(bundle, image, window, stride, baseline, picks=None):
    x = bundle.inputs(image)
    with torch.inference_mode():
        target = int(bundle.model(x).argmax(1)[0])
    h = x.shape[-1]
    ys = _window_grid(h, window, stride)
    base = baseline_tensor(bundle, x, baseline)
    pairs = picks if picks is not None else [(a, b) for a in range(len(ys)) for b in range(len(ys))]
    engine = IncrementalOcclusion(plan_for(bundle), x, base, target, window, ys, ys)
    got = engine.deltas(torch.tensor(pairs))
    clean, exact = occlusion_deltas(bundle, x, target, window, stride, base,
                                    [(ys[a], ys[b]) for a, b in pairs], 16)
    return got, exact, clean, engine


@pytest.mark.parametrize("window,stride,baseline", [(16, 8, "mean"), (16, 8, "zero"), (24, 20, "blur"),
                                                    (9, 7, "mean"), (5, 3, "zero")])
def test_lite0_incremental_equals_full_forwards(lite0, chelsea, window, stride, baseline):
    n = len(_window_grid(224, window, stride))
    last = n - 1
    # corners, edges, the centre, neighbours of the border rows and columns, and a few at random
    picks = {(0, 0), (0, last), (last, 0), (last, last), (0, n // 2), (n // 2, last), (n // 2, n // 2),
             (1, 1), (last - 1, 1), (1, last - 1), (last - 1, last - 1)}
    rng = np.random.default_rng(window)
    picks |= {tuple(int(v) for v in rng.integers(0, n, 2)) for _ in range(9)}
    got, exact, clean, engine = lite_case(lite0, chelsea, window, stride, baseline, sorted(picks))
    assert_same_deltas(got, exact, clean)
    assert abs(engine.clean - clean) <= 2e-5 * max(1.0, abs(clean))
    assert np.abs(exact).max() > 1e-3                     # the windows do change the score


@pytest.mark.parametrize("window,stride,baseline", [(8, 4, "mean"), (13, 6, "zero"), (3, 2, "blur"),
                                                    (40, 21, "mean"), (61, 1, "zero")])
def test_tiny_lite_incremental_equals_full_forwards_everywhere(tiny, window, stride, baseline):
    img = np.random.default_rng(3).integers(0, 255, (61, 61, 3), dtype=np.uint8)
    got, exact, clean, _ = lite_case(tiny, img, window, stride, baseline)
    assert_same_deltas(got, exact, clean)
    assert np.abs(exact).max() > 1e-3


def test_tiny_fast_map_equals_exact_map(tiny):
    img = np.random.default_rng(4).integers(0, 255, (61, 61, 3), dtype=np.uint8)
    seen = []
    fast = attribute(tiny, img, 2, "occlusion_fast", window=7, stride=3, batch_size=10,
                     progress=lambda d, t: seen.append((d, t)))
    exact = attribute(tiny, img, 2, "occlusion", window=7, stride=3)
    assert fast.params["fast_method"] == "incremental" and "fast_method" not in exact.params
    assert fast.params["evaluations"] == exact.params["evaluations"] == 19 * 19 + 1
    np.testing.assert_allclose(fast.map, exact.map, rtol=1e-4, atol=1e-4 * np.abs(exact.map).max())
    assert seen[-1] == (361, 361) and len(seen) == 37


def test_oom_halves_the_batch_and_keeps_the_result(tiny, monkeypatch):
    img = np.random.default_rng(5).integers(0, 255, (61, 61, 3), dtype=np.uint8)
    ref = attribute(tiny, img, 1, "occlusion_fast", window=8, stride=6, batch_size=100)
    sizes = []
    real = IncrementalOcclusion.deltas

    def flaky(self, pos):
        sizes.append(len(pos))
        if len(pos) > 20:
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 9 GB")
        return real(self, pos)
    monkeypatch.setattr(IncrementalOcclusion, "deltas", flaky)
    again = attribute(tiny, img, 1, "occlusion_fast", window=8, stride=6, batch_size=100)
    # 10 x 10 windows (corners 0, 6, ..., 48 and 53, flush with the border): 100 fails, then 50
    # and 25 (halved batch sizes), then batches of 12
    assert sizes[:4] == [100, 50, 25, 12] and max(sizes[3:]) == 12 and sum(sizes[3:]) == 100
    np.testing.assert_allclose(again.map, ref.map, rtol=1e-6, atol=1e-7)


def test_plan_only_for_plain_lite_models_and_shared_model_untouched(lite0, chelsea, tiny):
    before = weights_sha256(lite0.model)
    a = attribute(lite0, chelsea, None, "occlusion_fast", window=56, stride=56)
    assert a.params["fast_method"] == "incremental" and a.map.shape == (224, 224)
    assert weights_sha256(lite0.model) == before and count_hooks(lite0.model) == 0
    assert not lite0.model.training
    assert plan_for(lite0) is plan_for(lite0)                  # built once per bundle

    import copy
    changed = copy.deepcopy(tiny.model)
    changed._blocks[2]._relu1 = torch.nn.ReLU()                 # not the structure the plan assumes
    assert plan_for(ModelBundle(changed, tiny.preprocess, list("abcde"), "t2", "E", "random")) is None

    torch.manual_seed(1)
    plain = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU6(),
                                torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 3))
    other = ModelBundle(plain, Preprocessing(32, 32, (0.5,) * 3, (0.5,) * 3), list("abc"), "p", "P", "random")
    assert plan_for(other) is None
    img = np.random.default_rng(6).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    d = attribute(other, img, None, "occlusion_fast", window=8, stride=4)
    assert d.params["fast_method"] == "interpolated"
    assert d.params["evaluations"] == 4 * 4 + 1              # positions 0, 8, 16, 24 of 0..24
