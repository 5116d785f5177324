"""The optimisation engine: objectives rise, regularisers do what they say, runs are
deterministic, stopping returns the current image, and the shared model is untouched."""
import numpy as np
import pytest
import torch

import analysis.optimize as O
from analysis.core.errors import LayerError, ParameterError
from analysis.core.hooks import count_hooks
from analysis.core.models.bundle import weights_sha256


def _run(bundle, objective, param, **kw):
    kw.setdefault("preview_every", 0)
    return O.run(O.optimize(bundle, objective, param, **kw))


def _rises(history, factor=1.0):
    h = np.asarray(history)
    return h[-3:].mean() > h[:3].mean() and h.max() > h[0]


@pytest.mark.parametrize("kind", ["logit", "prob", "channel", "neuron", "layer_l2", "diversity"])
def test_objectives_rise_on_the_digits_model(digits, kind):
    obj = {"logit": O.class_logit(3), "prob": O.class_prob(3), "channel": O.channel("features.conv3", 5),
           "neuron": O.neuron("features.conv3", 5), "layer_l2": O.layer_l2("features.conv2"),
           "diversity": O.diversity("features.conv2")}[kind]
    batch = 3 if kind == "diversity" else 1
    r = _run(digits, obj, O.PixelImage(digits, batch=batch, seed=1), steps=30, step_rule="adam", lr=0.05)
    assert r.steps == 30 and len(r.history) == 30
    assert r.history[-1] > r.history[0] + 1e-3, r.history
    assert r.images.shape == (batch, 32, 32, 3) and r.images.dtype == np.uint8


@pytest.mark.parametrize("rule,lr", [("normalized", 2.0), ("constant", 1.0), ("mean_abs", 0.02), ("lbfgs", 0.5)])
def test_every_step_rule_raises_a_class_logit(digits, rule, lr):
    r = _run(digits, O.class_logit(7), O.PixelImage(digits, seed=2), steps=15, step_rule=rule, lr=lr)
    assert r.history[-1] > r.history[0] + 0.5


def test_progress_rule_moves_the_objective_by_about_the_requested_amount(digits):
    r = _run(digits, O.class_logit(2), O.PixelImage(digits, seed=0, space="caffe", init_std=10), steps=6,
             step_rule="progress", lr=0, max_lr=1e8, desired_progress=0.5, clip=False)
    gains = np.diff(r.history)
    assert np.all(gains > 0.1) and np.all(gains < 2.0), gains   # linear prediction 0.5 per step


def test_fourier_parameterisation_rises_and_stays_in_range(lite0):
    p = O.FourierImage(lite0, 64, seed=0)
    img0 = p.image().detach()
    assert img0.shape == (1, 3, 64, 64) and float(img0.min()) >= 0 and float(img0.max()) <= 1
    r = _run(lite0, O.channel("_blocks.2", 3), p, steps=12, lr=0.05, transforms=O.standard_transforms())
    assert r.history[-1] > r.history[0]
    assert r.unit.min() >= 0 and r.unit.max() <= 1 and r.params["param"]["kind"] == "fourier"


def test_maco_optimises_the_phase_only_and_keeps_the_natural_magnitude(lite0):
    """MACO: the amplitude spectrum of the (standardised) image stays the template's, up to
    one scale, however far the phase moves; the class score rises; pixels stay in [0, 1]."""
    p = O.MacoImage(lite0, 96, seed=3)
    mag = O.natural_magnitude(96, 96)
    assert mag.shape == (3, 96, 49) and torch.isfinite(mag).all()
    assert mag[:, 1, 1].mean() > 5 * mag[:, 40, 40].mean()               # natural images: power falls with frequency
    phase0 = p.phase.detach().clone()
    r = _run(lite0, O.class_logit(1), p, steps=8, lr=0.5,
             transforms=[O.RandomCrops(2, 0.5, 0.8, lite0.input_size, noise=0.05)])
    assert r.history[-1] > r.history[0] and r.params["param"]["kind"] == "maco"
    assert (p.phase.detach() - phase0).abs().mean() > 0.05                # the phase moved
    with torch.no_grad():
        amp = torch.fft.rfft2(p.spatial())[0, :, :, 1:-1].abs()            # columns with no Hermitian folding
    ratio = amp / mag[:, :, 1:-1]
    assert float(ratio.std() / ratio.mean()) < 1e-3                       # one scale for every frequency
    assert r.unit.shape == (1, 3, 96, 96) and r.unit.min() >= 0 and r.unit.max() <= 1
    with pytest.raises(ParameterError):
        O.MacoImage(lite0, 64, contrast=0)


def test_random_crops_shape_seed_and_identity():
    x = torch.rand(2, 3, 50, 50)
    tf = O.RandomCrops(3, 0.4, 0.6, 32, noise=0.05)
    a, b = tf(x, torch.Generator().manual_seed(1)), tf(x, torch.Generator().manual_seed(1))
    assert a.shape == (6, 3, 32, 32) and torch.equal(a, b)
    assert not torch.equal(a, tf(x, torch.Generator().manual_seed(2)))
    same = O.RandomCrops(2, 1.0, 1.0, 50, noise=0.0, spread=0.0)(x, torch.Generator().manual_seed(0))
    torch.testing.assert_close(same, x.repeat_interleave(2, 0), atol=1e-5, rtol=0)    # a full, centred crop
    half = O.RandomCrops(1, 0.5, 0.5, 25, noise=0.0, spread=0.0)(x[:1], torch.Generator())
    # the centre half, [12.5, 37.5) px, sampled at its 25 pixel centres: half-way between pixels
    want = torch.nn.functional.avg_pool2d(x[:1, :, 12:38, 12:38], 2, stride=1)
    torch.testing.assert_close(half, want, atol=1e-5, rtol=0)
    for bad in [dict(n=0, lo=0.4, hi=0.6), dict(n=2, lo=0.7, hi=0.6), dict(n=2, lo=0.4, hi=0.6, noise=2)]:
        with pytest.raises(ParameterError):
            O.RandomCrops(out=32, **bad)


def test_feature_match_and_gram_match_rise(digits):
    from analysis.core.datasets import load_digits_dataset
    from analysis.core.images import load_image  # noqa: F401  (the digits images come from sklearn)
    ds = load_digits_dataset()
    x = digits.preprocess.to_unit(digits.preprocess.geometry(ds.get(0)))
    with torch.no_grad(), O.engine._captures(digits.model, frozenset({"features.conv2"}), False) as acts:
        digits.model(digits.preprocess.normalize(x))
        target = acts["features.conv2"].clone()
    for obj in (O.feature_match("features.conv2", target), O.gram_match("features.conv2", O.gram(target))):
        r = _run(digits, obj, O.PixelImage(digits, space="unit", init_std=0.1, seed=0), steps=40, lr=0.05)
        assert r.history[-1] > 0.5 * r.history[0] and r.history[-1] > r.history[0], obj


def test_objective_algebra_and_term_values(digits):
    obj = O.class_logit(1) - 1e-3 * O.l2() + 0.5 * O.channel("features.conv1", 0)
    assert obj.describe() == "logit[1] - 0.001·L2 + 0.5·features.conv1:0"
    assert obj.layers == frozenset({"features.conv1"}) and obj.needs_output
    r = _run(digits, obj, O.PixelImage(digits, seed=0), steps=3, step_rule="normalized", lr=1.0)
    assert set(r.terms) == {"logit[1]", "L2", "features.conv1:0"}
    t = {k: v[-1] for k, v in r.terms.items()}
    assert r.history[-1] == pytest.approx(t["logit[1]"] - 1e-3 * t["L2"] + 0.5 * t["features.conv1:0"], rel=1e-4)


def test_blur_lowers_high_frequencies(digits):
    def hf(r):
        x = r.unit[0, 0]
        return float(np.abs(np.diff(x, axis=0)).mean() + np.abs(np.diff(x, axis=1)).mean())
    kw = dict(steps=20, step_rule="normalized", lr=3.0, seed=0)
    sharp = _run(digits, O.class_logit(4), O.PixelImage(digits, seed=0), **kw)
    blurred = _run(digits, O.class_logit(4), O.PixelImage(digits, seed=0), blur_every=2, blur_sigma=1.0, **kw)
    assert hf(blurred) < 0.7 * hf(sharp)


def test_clipping_keeps_the_valid_range(digits):
    kw = dict(steps=10, step_rule="constant", lr=50.0, seed=0)
    free = O.PixelImage(digits, seed=0)
    _run(digits, O.class_logit(4), free, clip=False, **kw)
    assert float(free.image().detach().min()) < 0 or float(free.image().detach().max()) > 1  # it leaves the range
    clipped = O.PixelImage(digits, seed=0)
    _run(digits, O.class_logit(4), clipped, clip=True, **kw)
    img = clipped.image()
    assert float(img.min()) >= -1e-6 and float(img.max()) <= 1 + 1e-6


def test_total_variation_falls_when_minimised(digits):
    r = _run(digits, -1.0 * O.total_variation(), O.PixelImage(digits, seed=0, space="unit", init_std=0.3),
             steps=25, lr=0.02, clip=False)
    tv = r.terms["TV"]
    assert tv[-1] < 0.5 * tv[0]


def test_decay_and_small_norm_and_small_contribution_clipping(digits):
    p = O.PixelImage(digits, seed=0)
    n0 = float(p.p.norm())
    _run(digits, O.class_logit(0), p, steps=3, step_rule="constant", lr=0.0, decay=0.5, clip=False)
    assert float(p.p.norm()) == pytest.approx(n0 * 0.125, rel=1e-4)
    p = O.PixelImage(digits, seed=0)
    _run(digits, O.class_logit(0), p, steps=1, step_rule="constant", lr=0.0, small_norm_pct=40, clip=False)
    assert 0.38 <= float((p.p[0, 0] == 0).float().mean()) <= 0.42
    p = O.PixelImage(digits, seed=0)
    _run(digits, O.class_logit(0), p, steps=1, step_rule="constant", lr=0.0, small_contrib_pct=70, clip=False)
    assert 0.68 <= float((p.p[0, 0] == 0).float().mean()) <= 0.72


def test_transforms_are_seeded_and_shape_correct():
    x = torch.rand(2, 3, 40, 40)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    for tf in O.standard_transforms() + [O.Roll(6)]:
        a, b = tf(x, g1), tf(x, g2)
        assert torch.equal(a, b)
    assert O.Jitter(8)(x, g1).shape[-1] == 33 and O.Pad(4)(x, g1).shape[-1] == 48
    assert torch.equal(O.Roll(0)(x, g1), x)


def test_determinism_with_a_seed(digits):
    def go(seed):
        return _run(digits, O.channel("features.conv3", 1), O.PixelImage(digits, seed=seed), steps=8,
                    transforms=[O.Roll(3), O.RandomRotate([-5, 0, 5])], seed=seed)
    a, b, c = go(3), go(3), go(4)
    np.testing.assert_array_equal(a.unit, b.unit)
    assert a.history == b.history
    assert not np.array_equal(a.unit, c.unit)


def test_stopping_early_returns_the_current_image(digits):
    seen = []
    gen = O.optimize(digits, O.class_logit(5), O.PixelImage(digits, seed=0), steps=50, preview_every=1)
    r = O.run(gen, stop_after=4, on_step=seen.append)
    assert r.steps == 4 and r.stopped and len(r.history) == 4
    np.testing.assert_array_equal(r.images, seen[-1].image)


def test_preview_every(digits):
    seen = []
    O.run(O.optimize(digits, O.class_logit(5), O.PixelImage(digits), steps=7, preview_every=3), on_step=seen.append)
    assert [s.step for s in seen if s.image is not None] == [3, 6, 7]


def test_shared_model_unchanged_also_after_errors(digits):
    model = digits.model
    before = weights_sha256(model)
    _run(digits, O.layer_l2("features.conv2") + O.class_logit(1), O.PixelImage(digits, batch=2), steps=3)
    with pytest.raises(LayerError):
        _run(digits, O.channel("features.nope", 0), O.PixelImage(digits), steps=2)
    with pytest.raises(ParameterError):
        _run(digits, O.channel("features.conv1", 99), O.PixelImage(digits), steps=2)
    with pytest.raises(ParameterError):
        _run(digits, O.class_logit(10), O.PixelImage(digits), steps=2)
    assert weights_sha256(model) == before and count_hooks(model) == 0
    assert not model.training and all(not p.requires_grad and p.grad is None for p in model.parameters())


def test_truncated_forward_stops_after_the_layer(digits):
    calls = []
    h = digits.model.fc.register_forward_hook(lambda *a: calls.append(1))
    try:
        _run(digits, O.channel("features.conv2", 0), O.PixelImage(digits), steps=2)
        assert calls == []              # the classifier never ran
        _run(digits, O.class_logit(0), O.PixelImage(digits), steps=2)
        assert len(calls) == 2
    finally:
        h.remove()


@pytest.mark.parametrize("bad", [dict(steps=0), dict(steps=10 ** 7), dict(step_rule="rmsprop"), dict(lr=-1.0),
                                 dict(decay=2.0), dict(blur_sigma=-1.0), dict(small_norm_pct=150),
                                 dict(step_rule="progress"), dict(lr=float("nan"))])
def test_impossible_parameters_are_refused(digits, bad):
    with pytest.raises(ParameterError):
        _run(digits, O.class_logit(0), O.PixelImage(digits), **{"steps": 2, **bad})


def test_pixel_only_regularisers_refused_on_fourier(lite0):
    with pytest.raises(ParameterError):
        _run(lite0, O.class_logit(0), O.FourierImage(lite0, 32), steps=2, blur_every=2, blur_sigma=1.0)
    with pytest.raises(ParameterError):
        O.PixelImage(lite0, size=2)
    with pytest.raises(ParameterError):
        O.PixelImage(lite0, space="hsv")


def test_inversion_shallow_layer_reconstructs_closely_deep_layer_less(lite0, chelsea):
    from analysis.optimize.featurevis import invert
    shallow = O.run(invert(lite0, chelsea, "_blocks.1", steps=80, preview_every=0))
    deep = O.run(invert(lite0, chelsea, "_blocks.15", steps=80, preview_every=0))
    assert shallow.history[-1] > shallow.history[0] and deep.history[-1] > deep.history[0]
    assert shallow.params["pixel_rmse"] < 0.12, shallow.params
    assert deep.params["pixel_rmse"] > 1.3 * shallow.params["pixel_rmse"], (shallow.params, deep.params)
    # the starting point (grey) is far from the original: the fit is real
    grey = float((lite0.preprocess.to_unit(lite0.preprocess.geometry(chelsea)) - 0.5).pow(2).mean().sqrt())
    assert shallow.params["pixel_rmse"] < 0.6 * grey, grey


def test_deepdream_raises_the_layer_norm_and_keeps_the_image_size(lite0, chelsea):
    from analysis.optimize.featurevis import deepdream
    r = O.run(deepdream(lite0, chelsea, "_blocks.6", octaves=2, steps_per_octave=3, max_side=128, preview_every=0))
    assert r.steps == 6 and r.images.shape[1:3] == (85, 128)
    h = r.history
    assert h[2] > h[0] and h[5] > h[3]                   # rises within each octave
    assert r.params["octaves"] == 2 and r.params["jitter"] == 32


def test_class_visualisation_presets_raise_the_class_score(lite0):
    from analysis.optimize.featurevis import PRESETS, class_visualization
    for name in PRESETS:
        r = O.run(class_visualization(lite0, 1, name, steps=6, size=64, preview_every=0))
        assert r.history[-1] > r.history[0], name
        assert r.params["preset"] == name and r.params["seed"] == 0
