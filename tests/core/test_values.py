"""Captured values are the layer's own output, even when a later in-place operation rewrites
its memory (issue 13): activations, neuron values / gradients, extracted features and the
optimisation engine's activations equal a reference computed on a copy of the model with
every in-place operation turned off."""
import copy

import numpy as np
import pytest
import torch
import torchvision

from analysis.core.datasets import Dataset
from analysis.core.hooks import count_hooks, get_module
from analysis.core.models.bundle import ModelBundle, Preprocessing

CASES = [("alexnet", "features.0", 64), ("vgg11_bn", "features.1", 32), ("resnet18", "bn1", 64),
         ("resnet18", "layer1.0.bn1", 64), ("mobilenet_v2", "features.0.1", 64),
         ("densenet121", "features", 64)]

_BUNDLES: dict = {}


def _bundle(arch: str, size: int) -> ModelBundle:
    if (arch, size) not in _BUNDLES:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = torchvision.models.get_model(arch, weights=None)
        pre = Preprocessing(size, size, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
        _BUNDLES[(arch, size)] = ModelBundle(model, pre, [str(i) for i in range(1000)], arch, arch, "random")
    return _BUNDLES[(arch, size)]


def _images(n: int, size: int) -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    return [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(n)]


class _Stop(Exception):
    pass


def _reference(bundle: ModelBundle, layer: str, x: torch.Tensor) -> torch.Tensor:
    """The layer's output on a copy with every ``inplace`` attribute False, the forward
    stopped right after the layer (so no functional in-place op can run after it)."""
    ref = copy.deepcopy(bundle.model)
    for m in ref.modules():
        if hasattr(m, "inplace"):
            m.inplace = False
    kept = []

    def hook(mod, inp, out):
        kept.append(out)
        raise _Stop

    h = get_module(ref, layer).register_forward_hook(hook)
    try:
        ref(x)
    except _Stop:
        pass
    finally:
        h.remove()
    return kept[0]


@pytest.mark.parametrize("arch,layer,size", CASES)
def test_captured_values_equal_a_copy_without_inplace_ops(arch, layer, size):
    from analysis.embeddings.features import extract
    from analysis.inside.activations import activations, neuron_gradient
    from analysis.optimize.featurevis import layer_features

    b = _bundle(arch, size)
    imgs = _images(2, size)
    x = b.inputs(imgs[:1])
    with torch.no_grad():
        ref = _reference(b, layer, x)[0]
    assert (ref < 0).any(), "the layer must have negative values, or the test proves nothing"

    acts = activations(b, imgs[0], layer)
    np.testing.assert_allclose(acts.maps, ref.numpy(), rtol=1e-4, atol=1e-4)

    # Neuron value and its gradient: those of the pre-in-place output.
    c = int(torch.argmax((ref < 0).float().flatten(1).mean(1)))        # the most negative channel
    ng = neuron_gradient(b, imgs[0], layer, c, guided=False)
    xg = x.clone().requires_grad_(True)
    with torch.enable_grad():
        r = _reference(b, layer, xg)[0, c]
        (g_ref,) = torch.autograd.grad(r.mean(), xg)
    assert ng.value == pytest.approx(float(r.detach().mean()), rel=1e-4, abs=1e-5)
    np.testing.assert_allclose(ng.activation, r.detach().numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(ng.gradient, g_ref[0].numpy(), rtol=1e-3, atol=1e-6)

    # Extracted features (global average of the map) over a two-image data set.
    ds = Dataset("two", "test", ["a"], [0, 0], ["0", "1"], "h" * 64, _loader=lambda i: imgs[i])
    gen = extract(b, ds, layer, save=False)
    try:
        while True:
            next(gen)
    except StopIteration as fin:
        fs = fin.value
    with torch.no_grad():
        ref2 = _reference(b, layer, b.inputs(imgs)).mean(dim=(2, 3))
    np.testing.assert_allclose(fs.features, ref2.numpy(), rtol=1e-4, atol=1e-4)

    # The optimisation engine's captured activations.
    unit = b.preprocess.to_unit(imgs[:1])
    feats = layer_features(b, unit, layer)
    np.testing.assert_allclose(feats[0].numpy(), ref.numpy(), rtol=1e-4, atol=1e-4)
    assert count_hooks(b.model) == 0


def test_gradient_of_a_captured_output_is_the_pre_inplace_gradient():
    """capture(grads=True): the gradient w.r.t. a conv output followed by an in-place ReLU
    is the conv output's gradient (zero where the ReLU clipped), not the ReLU output's."""
    from analysis.core.hooks import capture
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(inplace=True), torch.nn.Flatten(),
                            torch.nn.Linear(4 * 6 * 6, 2)).eval()
    x = torch.randn(1, 3, 8, 8)
    with capture(m, ["0"], grads=True, detach=False) as acts:
        m(x)[0, 1].backward()
    conv = m[0](x).detach()
    assert torch.allclose(acts["0"].detach(), conv)
    expect = m[3].weight[1].detach().view(4, 6, 6) * (conv[0] > 0)
    assert torch.allclose(acts.grads["0"][0], expect)
    assert count_hooks(m) == 0
