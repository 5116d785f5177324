"""LRP: known answers on hand-weighted networks, parity with zennit called directly, the
canonizers' effect, and clear refusals."""
import pytest
import torch
from torch import nn

from analysis.core.models.bundle import ModelBundle, Preprocessing
from analysis.core.models.efficientnet_lite import EfficientNetLite
from analysis.relevance.lrp import RelevanceError, lrp, lrp_batch, lrp_plan


def _frozen(m):
    m.eval()
    for p in m.parameters():
        p.requires_grad_(False)
    return m


def hand_net():
    """conv(1->2, 2x2, no bias) - ReLU - flatten - linear(2*2*2 -> 2, no bias), hand weights."""
    conv = nn.Conv2d(1, 2, 2, bias=False)
    conv.weight.data = torch.tensor([[[[1.0, 0.5], [0.0, 2.0]]], [[[-1.0, 1.0], [0.5, 0.5]]]])
    fc = nn.Linear(8, 2, bias=False)
    fc.weight.data = torch.tensor([[1.0, 0.5, -0.5, 2.0, 1.0, 0.0, 1.5, -1.0],
                                   [0.5, 0.5, 0.5, 0.5, -1.0, 1.0, 0.0, 2.0]])
    return _frozen(nn.Sequential(conv, nn.ReLU(), nn.Flatten(), fc))


X = torch.tensor([[[[1.0, 2.0, 0.5], [0.0, 1.0, 3.0], [2.0, 1.0, 1.0]]]])


def test_epsilon_lrp_is_conserved_and_equals_gradient_times_input():
    net = hand_net()
    for t in (0, 1):
        r = lrp_batch(net, X, [t], "epsilon", epsilon=1e-9)
        score = float(net(X)[0, t])
        assert abs(score) > 1
        assert r.sums[0] == pytest.approx(score, rel=1e-5)
        # on a bias-free ReLU network, ε-LRP (ε -> 0) is gradient x input (Ancona et al. 2018)
        x = X.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(net(x)[0, t], x)
        assert torch.allclose(torch.from_numpy(r.relevance), (g * X), atol=1e-5)


def test_flat_and_zplus_conserve_on_bias_free_net():
    net = hand_net()
    r = lrp_batch(net, X, [0], "epsilon_plus_flat", epsilon=1e-9)
    assert r.sums[0] == pytest.approx(float(net(X)[0, 0]), rel=1e-4)
    # the flat rule spreads the first layer's relevance uniformly over each receptive field:
    # the map is not gradient x input
    assert not torch.allclose(torch.from_numpy(r.relevance), torch.zeros_like(X))


def tiny_lite(bias_free: bool):
    torch.manual_seed(0)
    stages = [(3, 1, 1, 8, 8, 1), (3, 2, 6, 8, 16, 2), (5, 1, 6, 16, 16, 1)]
    m = EfficientNetLite(stages, num_classes=5, stem_ch=8, head_ch=32)
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.weight.data.uniform_(0.5, 1.5)
            mod.running_var.uniform_(0.5, 2.0)
            if not bias_free:
                mod.running_mean.uniform_(-0.2, 0.2)
                mod.bias.data.uniform_(-0.2, 0.2)
    m._fc.weight.data *= 100          # scores of order 1, far above the rules' stabilisers
    if bias_free:
        m._fc.bias.data.zero_()
    return _frozen(m)


def test_efficientnet_lite_canonizers_conserve_relevance():
    """Merged batch norms + the MBConv skip as a Sum: ε-LRP is conserved on a bias-free Lite;
    without the MBConv canonizer the skip additions double-count relevance."""
    from zennit.canonizers import SequentialMergeBatchNorm
    from zennit.composites import LayerMapComposite, layer_map_base
    from zennit.rules import Epsilon
    from zennit.types import Linear
    m = tiny_lite(bias_free=True)
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    r = lrp_batch(m, x, [2], "epsilon", epsilon=1e-9)
    score = float(m(x)[0, 2])
    assert r.scores[0] == pytest.approx(score, rel=1e-6)    # the exact merge explains the model's own score
    assert r.sums[0] == pytest.approx(score, rel=1e-5)
    assert [type(c).__name__ for c in lrp_plan(m).canonizers] == ["ExactMergeBatchNorm", "MBConvCanonizer"]
    comp = LayerMapComposite(layer_map_base() + [(Linear, Epsilon(epsilon=1e-9))], canonizers=[SequentialMergeBatchNorm()])
    xi = x.clone().requires_grad_(True)
    with comp.context(m) as mm:
        out = mm(xi)
        (rel,) = torch.autograd.grad(out, xi, out * torch.eye(5)[[2]])
    assert abs(float(rel.sum()) - score) > 1e-2 * abs(score)


def test_parity_with_zennit_on_resnet_and_lite():
    import torchvision
    from zennit.attribution import Gradient
    from zennit.canonizers import SequentialMergeBatchNorm
    from zennit.composites import EpsilonGammaBox, EpsilonPlusFlat
    from zennit.torchvision import ResNetCanonizer

    from analysis.relevance.lrp import _mbconv_canonizer
    torch.manual_seed(0)
    r18 = _frozen(torchvision.models.resnet.ResNet(torchvision.models.resnet.BasicBlock, [1, 1, 1, 1], num_classes=7))
    lite = tiny_lite(bias_free=False)
    for model in (r18, lite):      # eps 0: zennit's merge is then exact too, so both paths compute the same
        for mod in model.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.eps = 0.0
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    lo, hi = torch.full((1, 3, 1, 1), -3.0), torch.full((1, 3, 1, 1), 3.0)
    cases = [(r18, [ResNetCanonizer()]), (lite, [SequentialMergeBatchNorm(), _mbconv_canonizer()])]
    for model, canon in cases:
        out = model(x)
        onehot = torch.zeros_like(out)
        onehot[:, 3] = 1
        for name, comp in [("epsilon_plus_flat", EpsilonPlusFlat(canonizers=canon)),
                           ("epsilon_gamma_box", EpsilonGammaBox(low=lo.expand_as(x), high=hi.expand_as(x), canonizers=canon))]:
            with Gradient(model=model, composite=comp) as attributor:
                _, ref = attributor(x.clone(), onehot * out)
            ours = lrp_batch(model, x, [3, 3], name, lo=lo, hi=hi)
            assert torch.allclose(torch.from_numpy(ours.relevance), ref, rtol=1e-4, atol=1e-6 * float(ref.abs().max())), name
            assert torch.equal(model(x), out)        # the model is restored after the call


def test_refuses_unsupported_layers_and_blocks():
    ln = _frozen(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.LayerNorm(4 * 6 * 6), nn.Linear(144, 2)))
    with pytest.raises(RelevanceError, match="no LRP rule for the normalisation layer LayerNorm.*'3'"):
        lrp_batch(ln, torch.randn(1, 3, 8, 8), [0])

    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 3, padding=1)

        def forward(self, x):
            return x + self.conv(x)

    res = _frozen(nn.Sequential(Residual(), nn.Flatten(), nn.Linear(3 * 64, 2)))
    with pytest.raises(RelevanceError, match="no canonizer for the block Residual"):
        lrp_batch(res, torch.randn(1, 3, 8, 8), [0])
    bn_first = _frozen(nn.Sequential(nn.BatchNorm2d(3), nn.Conv2d(3, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(72, 2)))
    bn_first[0].running_mean.fill_(0.3)
    with pytest.raises(RelevanceError, match="batch norm at '0'"):
        lrp_batch(bn_first, torch.randn(1, 3, 8, 8), [0])


def test_bundle_lrp_leaves_the_shared_model_untouched():
    net = hand_net()
    pre = Preprocessing(input_size=3, resize_size=3, mean=(0.0,), std=(1.0,), grayscale=True)
    b = ModelBundle(net, pre, ["a", "b"], "hand", "hand", "random")
    before = {k: v.clone() for k, v in b.model.state_dict().items()}
    rel, info, warnings = lrp(b, X, 0, "epsilon", epsilon=1e-9)
    assert rel.shape == (1, 3, 3)
    assert info["conservation"] == pytest.approx(1.0, rel=1e-5) and not warnings
    after = b.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in b.model.modules())


def test_lrp_methods_on_the_saliency_page_table():
    """The composites are registered saliency methods (signed maps) and run through attribute()."""
    import numpy as np

    from analysis.saliency import registry
    from analysis.saliency.methods import attribute
    net = hand_net()
    pre = Preprocessing(input_size=3, resize_size=3, mean=(0.0,), std=(1.0,), grayscale=True)
    b = ModelBundle(net, pre, ["a", "b"], "hand", "hand", "random")
    assert {"lrp_epsilon_plus_flat", "lrp_epsilon_gamma_box"} <= set(registry.names())
    assert registry.get("lrp_epsilon_plus_flat").signed
    img = (np.stack([X[0, 0].numpy()] * 3, -1) * 80).astype(np.uint8)
    a = attribute(b, img, 0, "lrp_epsilon_plus_flat", epsilon=1e-9)
    assert a.map.shape == (3, 3) and a.signed.shape == (1, 3, 3)
    assert a.params["relevance_sum"] == pytest.approx(float(a.map.sum()), rel=1e-5)
    with pytest.raises(Exception, match="gamma"):
        attribute(b, img, 0, "lrp_epsilon_plus_flat", gamma=0.3)
