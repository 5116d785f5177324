"""Blank results get a word (issue 13): a constant map or a model whose output does not
depend on the input is flagged in the result."""
import numpy as np
import torch
from torch import nn

from analysis.core.models.bundle import ModelBundle, Preprocessing
from analysis.core.sanity import constant_warning, is_constant, output_warning


def test_is_constant():
    assert is_constant(np.zeros((4, 4))) and is_constant(np.full(5, 3.0)) and is_constant([])
    assert is_constant(np.array([1.0, 1.0 + 1e-9]))
    assert not is_constant(np.array([0.0, 1e-3])) and not is_constant(torch.tensor([1.0, 2.0]))
    assert is_constant(np.array([np.nan, 2.0, 2.0]))
    assert "zero everywhere" in constant_warning(np.zeros(3), "The map")
    assert "constant (0.5" in constant_warning(np.full(3, 0.5), "The map")
    assert constant_warning(np.arange(3.0)) is None
    assert output_warning(torch.zeros(1, 10)) and output_warning(torch.arange(10.0)) is None


def _zero_head_bundle() -> ModelBundle:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                      nn.Linear(4, 3))
    nn.init.zeros_(m[4].weight)
    nn.init.zeros_(m[4].bias)                     # like torchvision's vit_b_16 with random weights
    return ModelBundle(m, Preprocessing(16, 16, (0.5,) * 3, (0.5,) * 3), ["a", "b", "c"], "zero", "zero", "random")


def test_zero_head_model_gets_warnings_in_saliency_results():
    from analysis.saliency.methods import attribute
    b = _zero_head_bundle()
    img = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    for method, params in (("gradient", {}), ("gradcam", {"layer": "0"}),
                           ("occlusion", {"window": 4, "stride": 4})):
        a = attribute(b, img, 1, method, **params)
        assert is_constant(a.map)
        assert any("map is zero everywhere" in w for w in a.warnings), method
        assert any("same score" in w for w in a.warnings), method


def test_informative_map_has_no_blank_warning(lite0, chelsea):
    from analysis.saliency.methods import attribute
    a = attribute(lite0, chelsea, None, "gradient")
    assert not any("everywhere" in w for w in a.warnings)


def test_constant_activations_and_gradients_are_flagged():
    from analysis.inside.activations import activations, neuron_gradient
    b = _zero_head_bundle()
    img = np.full((16, 16, 3), 128, np.uint8)
    with torch.no_grad():
        b.model[0].weight.zero_()          # a private bundle: its conv now outputs zeros
        b.model[0].bias.zero_()
    acts = activations(b, img, "0")
    assert any("zero everywhere" in w for w in acts.warnings)
    ng = neuron_gradient(b, img, "0", 1, guided=False)
    assert any("zero everywhere" in w for w in ng.warnings)
