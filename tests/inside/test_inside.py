"""Filters, activation maps and channel/neuron gradients."""
import numpy as np
import pytest
import torch
from torch import nn

from analysis.core.errors import LayerError, ParameterError
from analysis.core.hooks import count_hooks
from analysis.core.models.bundle import ModelBundle, Preprocessing, weights_sha256
from analysis.inside.activations import activations, conv_layers, filters, neuron_gradient


def test_first_layer_filters_lite0(lite0):
    f = filters(lite0)
    assert f.layer == "_conv_stem" and f.shape == (32, 3, 3, 3) and f.is_rgb
    w = lite0.model._conv_stem.weight.detach().numpy()
    np.testing.assert_allclose(f.norms, np.sqrt((w.reshape(32, -1) ** 2).sum(1)), rtol=1e-6)
    order = f.order("norm")
    assert np.all(np.diff(f.norms[order]) <= 0)
    imgs = f.rgb_images()
    assert imgs.shape == (32, 3, 3, 3) and imgs.dtype == np.uint8
    # zero weight maps to mid grey, the largest |weight| of each filter to 0 or 255
    k = int(order[0])
    assert imgs[k].min() == 0 or imgs[k].max() == 255


def test_filter_slices_and_errors(digits):
    f = filters(digits, "features.conv2")
    assert f.shape == (32, 16, 3, 3) and not f.is_rgb
    assert f.slices(3).shape == (16, 3, 3)
    with pytest.raises(ParameterError):
        f.rgb_images()
    with pytest.raises(ParameterError):
        f.slices(99)
    with pytest.raises(LayerError):
        filters(digits, "features.relu1")
    assert conv_layers(digits) == ["features.conv1", "features.conv2", "features.conv3", "features.conv4"]


def test_activations_match_a_direct_forward(lite0, chelsea):
    a = activations(lite0, chelsea, "_blocks.4")
    assert a.maps.shape == (40, 28, 28) and a.image.shape == (224, 224, 3)
    x = lite0.inputs(chelsea)
    with torch.inference_mode():
        m = lite0.model
        y = m._relu_stem(m._bn0(m._conv_stem(x)))
        for b in m._blocks[:5]:
            y = b(y)
    np.testing.assert_allclose(a.maps, y[0].numpy(), rtol=1e-4, atol=1e-4)
    s = a.summary()
    assert s["zero_fraction"] == pytest.approx(float((a.maps <= 0).mean()))
    assert s["max"] == pytest.approx(float(a.maps.max()))
    order = a.order("max")
    assert np.all(np.diff(a.channel_stats()["max"][order]) <= 0)
    assert a.upsampled(0).shape == (224, 224)
    assert count_hooks(lite0.model) == 0


def test_activations_reject_non_spatial(digits):
    img = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(LayerError):
        activations(digits, img, "fc")
    with pytest.raises(LayerError):
        activations(digits, img, "nope")
    assert count_hooks(digits.model) == 0


class TwoPath(nn.Module):
    """Channel 0 of 'conv' sees only the red input channel at 1x1: its gradient is known."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 1, bias=False)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(2, 2)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[0, 0] = 2.0
            self.conv.weight[1, 1] = -1.0

    def forward(self, x):
        return self.fc(self.relu(self.conv(x)).mean((2, 3)))


def test_neuron_gradient_known_answer():
    b = ModelBundle(TwoPath(), Preprocessing(4, 4, (0.0,) * 3, (1.0,) * 3), ["a", "b"], "t", "T", "random")
    img = np.full((4, 4, 3), 128, np.uint8)
    g = neuron_gradient(b, img, "conv", 0, guided=False)
    # d mean(2 * red) / d red = 2 / 16 at every pixel; zero for green and blue
    np.testing.assert_allclose(g.gradient[0], np.full((4, 4), 2 / 16), rtol=1e-6)
    assert np.all(g.gradient[1:] == 0)
    n = neuron_gradient(b, img, "conv", 0, position=(1, 2), guided=False)
    expected = np.zeros((4, 4))
    expected[1, 2] = 2.0
    np.testing.assert_allclose(n.gradient[0], expected)
    with pytest.raises(ParameterError):
        neuron_gradient(b, img, "conv", 5)
    with pytest.raises(ParameterError):
        neuron_gradient(b, img, "conv", 0, position=(9, 9))
    assert count_hooks(b.model) == 0


def test_guided_channel_gradient_differs_and_model_unchanged(lite0, chelsea):
    before = weights_sha256(lite0.model)
    plain = neuron_gradient(lite0, chelsea, "_blocks.10", 7, guided=False)
    guided = neuron_gradient(lite0, chelsea, "_blocks.10", 7, guided=True)
    assert plain.value == pytest.approx(guided.value, rel=1e-4)      # same forward, different backward
    assert np.corrcoef(plain.gradient.ravel(), guided.gradient.ravel())[0, 1] < 0.9
    assert guided.as_image().shape == (224, 224, 3)
    assert weights_sha256(lite0.model) == before and count_hooks(lite0.model) == 0
