"""Texture synthesis and Gatys style transfer (analysis/style/gatys.py): Gram matrices by hand,
losses that fall, colour preservation, mixing, parameters refused, shared model untouched."""
import types

import numpy as np
import pytest
import torch

import analysis.optimize as O
import analysis.style.gatys as S
from analysis.core.errors import LayerError, ParameterError
from analysis.core.hooks import count_hooks
from analysis.core.images import gallery_image
from analysis.core.models.bundle import weights_sha256


def chroma_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference of the chroma (YIQ's I and Q, 0-1 units) of two RGB uint8
    images of equal size: 0 means the same colours."""
    ta = torch.from_numpy(np.array(a, dtype=np.uint8)).permute(2, 0, 1)[None].float() / 255
    tb = torch.from_numpy(np.array(b, dtype=np.uint8)).permute(2, 0, 1)[None].float() / 255
    return float((S.rgb_to_yiq(ta)[:, 1:] - S.rgb_to_yiq(tb)[:, 1:]).abs().mean())


def _run(gen, **kw):
    return O.run(gen, **kw)


def _small(name, side=64):
    from PIL import Image
    img = gallery_image(name)
    h, w = S.fit_size(*img.shape[:2], side)
    return np.asarray(Image.fromarray(img).resize((w, h), Image.LANCZOS))


def test_gram_matrix_equals_a_hand_computation():
    # two channels on a 2x2 map: F = [[1, 2, 3, 4], [0, 1, 0, 1]], G = F Fᵀ / (H·W)
    a = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[0.0, 1.0], [0.0, 1.0]]]])
    g = O.gram(a)
    expected = torch.tensor([[[1 + 4 + 9 + 16, 2 + 4], [2 + 4, 2]]]) / 4.0
    assert g.shape == (1, 2, 2)
    torch.testing.assert_close(g, expected)
    # per image of a batch, symmetric, and blind to where features are (a shuffle of positions)
    b = torch.randn(3, 5, 4, 6)
    gb = O.gram(b)
    torch.testing.assert_close(gb[1], O.gram(b[1:2])[0])
    torch.testing.assert_close(gb, gb.transpose(1, 2))
    perm = torch.randperm(24)
    shuffled = b.reshape(3, 5, 24)[..., perm].reshape(3, 5, 4, 6)
    torch.testing.assert_close(O.gram(shuffled), gb, rtol=1e-5, atol=1e-5)


def test_style_mix_is_the_weighted_mean_of_gram_matrices(lite0):
    a = S.to_unit_tensor(_small("brick", 48))
    b = S.to_unit_tensor(_small("immunohistochemistry", 40))
    layers = ["_relu_stem", "_blocks.3._relu0"]
    ga, gb = (S.gram_targets(lite0, [(x, 1.0)], layers) for x in (a, b))
    mix = S.gram_targets(lite0, [(a, 1.0), (b, 3.0)], layers)
    for l in layers:
        torch.testing.assert_close(mix[l], (ga[l] + 3 * gb[l]) / 4, rtol=1e-5, atol=1e-6)
    with pytest.raises(ParameterError):
        S.gram_targets(lite0, [(a, 0.0)], layers)
    with pytest.raises(ParameterError):
        S.gram_targets(lite0, [(a, -1.0), (b, 2.0)], layers)


def test_texture_synthesis_lowers_every_gram_error_and_keeps_the_size(lite0):
    r = _run(S.synthesize_texture(lite0, _small("brick", 64), size=(40, 56), steps=8, preview_every=4))
    assert r.images.shape == (1, 40, 56, 3) and r.params["kind"] == "texture"
    for layer in r.params["layers"]:
        errs = [-v for v in r.terms[f"gram {layer}"]]
        assert errs[-1] < errs[0], (layer, errs)
    assert r.history[-1] > r.history[0]


def test_style_and_content_losses_fall_from_noise(lite0):
    content, style = _small("chelsea", 64), _small("immunohistochemistry", 64)
    r = _run(S.style_transfer(lite0, content, [(style, 1.0)], size=48, steps=10, init="noise", preview_every=0))
    losses = S.style_losses(r)
    assert losses["content"][-1] < 0.9 * losses["content"][0], losses["content"]        # falls by > 10 %
    assert losses["style"][-1] < 0.9 * losses["style"][0], losses["style"]
    h, w = S.fit_size(*content.shape[:2], 48)
    assert r.images.shape == (1, h, w, 3) and max(h, w) == 48
    p = r.params
    assert p["content_layer"] == S.LITE0.content_layer and p["style_layers"] == S.LITE0.style_layers
    assert p["init"] == "noise" and p["optimizer"] == "lbfgs" and p["content_error"] == pytest.approx(losses["content"][-1])


@pytest.mark.parametrize("optimizer", ["lbfgs", "adam"])
def test_from_the_content_the_style_loss_falls(lite0, optimizer):
    r = _run(S.style_transfer(lite0, _small("chelsea", 64), [(_small("hubble_deep_field", 64), 1.0)], size=40,
                              steps=6, optimizer=optimizer, preview_every=0))
    style = S.style_losses(r)["style"]
    assert style[-1] < style[0] and r.history[-1] > r.history[0]


def test_colour_preservation_keeps_the_contents_chroma(lite0):
    content, style = _small("coffee", 64), _small("hubble_deep_field", 64)
    kw = dict(size=48, steps=6, preview_every=3)
    seen = []
    kept = _run(S.style_transfer(lite0, content, [(style, 1.0)], preserve_colour=True, **kw), on_step=seen.append)
    free = _run(S.style_transfer(lite0, content, [(style, 1.0)], preserve_colour=False, **kw))
    from PIL import Image
    h, w = kept.images.shape[1:3]
    ref = np.asarray(Image.fromarray(content).resize((w, h), Image.BILINEAR))
    d_kept, d_free = chroma_distance(kept.images[0], ref), chroma_distance(free.images[0], ref)
    assert d_kept < 0.02 and d_kept < 0.5 * d_free, (d_kept, d_free)
    assert kept.params["preserve_colour"] and kept.params["param"]["kind"] == "luminance"
    # previews are shown in colour too, and the luminance did change (the style is there)
    assert seen[-1].image.shape == kept.images.shape and chroma_distance(seen[-1].image[0], ref) < 0.02
    y = lambda im: S.luminance(torch.from_numpy(np.array(im)).permute(2, 0, 1)[None].float() / 255)  # noqa: E731
    assert float((y(kept.images[0]) - y(ref)).abs().mean()) > 0.01


def test_yiq_round_trip_and_luminance_matching():
    x = torch.rand(2, 3, 5, 7)
    torch.testing.assert_close(S.yiq_to_rgb(S.rgb_to_yiq(x)), x, rtol=1e-5, atol=1e-5)
    grey = torch.full((1, 3, 2, 2), 0.4)
    torch.testing.assert_close(S.rgb_to_yiq(grey)[:, 1:], torch.zeros(1, 2, 2, 2), atol=1e-6, rtol=0)
    s, c = torch.rand(1, 1, 20, 20) * 0.3, 0.5 + 0.1 * torch.randn(1, 1, 20, 20)
    m = S.match_luminance(s, c.clamp(0, 1))
    assert abs(float(m.mean()) - float(c.clamp(0, 1).mean())) < 0.02
    assert abs(float(m.std()) - float(c.clamp(0, 1).std())) < 0.02


def test_two_styles_mix_and_seeded_runs_repeat(lite0):
    content = _small("chelsea", 48)
    styles = [(_small("brick", 48), 1.0), (_small("immunohistochemistry", 48), 2.0)]
    a = _run(S.style_transfer(lite0, content, styles, size=32, steps=3, init="noise", seed=3, preview_every=0))
    b = _run(S.style_transfer(lite0, content, styles, size=32, steps=3, init="noise", seed=3, preview_every=0))
    c = _run(S.style_transfer(lite0, content, styles, size=32, steps=3, init="noise", seed=4, preview_every=0))
    np.testing.assert_array_equal(a.unit, b.unit)
    assert not np.array_equal(a.unit, c.unit)
    assert a.params["style_mix"] == [1.0, 2.0]


def test_stopping_returns_the_current_image(lite0):
    seen = []
    r = _run(S.synthesize_texture(lite0, _small("gravel", 48), size=32, steps=50, preview_every=1),
             stop_after=2, on_step=seen.append)
    assert r.steps == 2 and r.stopped
    np.testing.assert_array_equal(r.images, seen[-1].image)


def test_texture_strip_runs_cumulative_sets(lite0):
    layers = ["_blocks.0._relu1", "_blocks.3._relu1", "_blocks.5._relu1"]
    assert S.texture_strip_sets(layers) == [layers[:1], layers[:2], layers]
    seen = []
    strip = _run(S.texture_strip(lite0, _small("brick", 48), layers, size=32, steps=2, preview_every=1),
                 on_step=seen.append)
    assert [s.step for s in seen] == list(range(1, 7)) and all(s.total == 6 for s in seen)
    assert strip.images.shape == (3, 32, 32, 3) and [r.params["layers"] for r in strip.results] == \
        [{k: 1.0 for k in s} for s in S.texture_strip_sets(layers)]
    assert strip.steps == 6 and not strip.stopped


def test_default_settings_name_existing_layers(lite0, digits):
    from analysis.core.layers import layer_table
    d = S.default_settings(lite0)
    names = {i.name: i for i in layer_table(lite0)}
    for layer in [d.content_layer, *d.style_layers, *d.texture_layers]:
        assert layer in names and names[layer].spatial, layer
    # VGG: the published layers by torchvision index (Gatys et al.: relu1_1 … relu5_1, relu4_2)
    vgg = lambda arch: types.SimpleNamespace(architecture=arch, preprocess=types.SimpleNamespace(channels=3))  # noqa: E731
    v19 = S.default_settings(vgg("vgg19"))
    assert list(v19.style_layers) == ["features.1", "features.6", "features.11", "features.20", "features.29"]
    assert v19.content_layer == "features.22" and S.default_settings(vgg("vgg16")).content_layer == "features.20"
    # any other model: spatial blocks of its own
    g = S.default_settings(digits)
    dnames = {i.name: i for i in layer_table(digits)}
    assert all(dnames[layer].spatial for layer in [g.content_layer, *g.style_layers])


def test_any_model_works_even_a_grey_one(digits):
    from PIL import Image

    from analysis.core.datasets import load_digits_dataset
    ds = load_digits_dataset()
    content = np.asarray(Image.fromarray(ds.get(0)).resize((32, 32)))
    style = np.asarray(Image.fromarray(ds.get(5)).resize((32, 32)))
    r = _run(S.style_transfer(digits, content, [(style, 1.0)], size=32, steps=3, init="noise", preview_every=0))
    assert r.images.shape == (1, 32, 32, 3)
    r = _run(S.style_transfer(digits, content, [(style, 1.0)], size=32, steps=2, preserve_colour=True,
                              preview_every=0))
    assert r.images.shape == (1, 32, 32, 3)


@pytest.mark.parametrize("bad", [dict(size=4), dict(size=10 ** 5), dict(optimizer="sgd"), dict(init="zeros"),
                                 dict(style_weight=-1.0), dict(content_weight=float("nan")), dict(tv_weight=-1e-3),
                                 dict(style_layers={}), dict(style_layers={"_relu_stem": 0.0}), dict(lr=0.0),
                                 dict(style_scale=100.0), dict(pad=-1), dict(steps=0),
                                 dict(content_weight=0.0, style_weight=0.0)])
def test_impossible_parameters_are_refused(lite0, bad):
    with pytest.raises(ParameterError):
        _run(S.style_transfer(lite0, _small("chelsea", 32), [(_small("brick", 32), 1.0)], **{"size": 32, "steps": 1,
                                                                                              **bad}))


def test_bad_images_and_layers_are_refused(lite0):
    c = _small("chelsea", 32)
    with pytest.raises(ParameterError):
        _run(S.style_transfer(lite0, c, [], size=32, steps=1))
    with pytest.raises(ParameterError):
        _run(S.style_transfer(lite0, c.astype(np.float32), [(c, 1.0)], size=32, steps=1))
    with pytest.raises(ParameterError):
        _run(S.style_transfer(lite0, c, [(c[..., :2].copy(), 1.0)], size=32, steps=1))
    with pytest.raises(ParameterError):
        _run(S.synthesize_texture(lite0, c[:4, :4].copy(), size=32, steps=1))
    with pytest.raises(LayerError):
        _run(S.style_transfer(lite0, c, [(c, 1.0)], style_layers=["_blocks.nope"], size=32, steps=1))
    with pytest.raises(LayerError):                                  # not a feature map: no Gram matrix
        _run(S.synthesize_texture(lite0, c, ["_fc"], size=32, steps=1))


def test_shared_model_unchanged_also_after_errors(lite0):
    model = lite0.model
    before = weights_sha256(model)
    c = _small("chelsea", 32)
    _run(S.style_transfer(lite0, c, [(c, 1.0)], size=32, steps=2, preserve_colour=True, preview_every=1))
    _run(S.synthesize_texture(lite0, c, size=32, steps=2, optimizer="adam"))
    with pytest.raises(LayerError):
        _run(S.style_transfer(lite0, c, [(c, 1.0)], content_layer="_nope", size=32, steps=1))
    assert weights_sha256(model) == before and count_hooks(model) == 0
    assert not model.training and all(not p.requires_grad and p.grad is None for p in model.parameters())
