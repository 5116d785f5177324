"""Receptive fields: hand-computed cases, analytic == gradient support on real
architectures (corner and centre), fallbacks, errors, shared model untouched."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from analysis.core.errors import LayerError, ParameterError
from analysis.core.hooks import count_hooks
from analysis.core.models.bundle import ModelBundle, Preprocessing, weights_sha256
from analysis.core.models.efficientnet_lite import Conv2dSame
from analysis.core.models.loaders import torchvision_bundle
from analysis.inside.receptive import (
    ReceptiveField,
    ReceptiveFieldError,
    _gradient_boxes,
    receptive_field,
)

CPU = torch.device("cpu")


def analytic_receptive_field(bundle: ModelBundle, layer: str) -> ReceptiveField:
    return receptive_field(bundle, layer, "analytic")


def gradient_receptive_field(bundle: ModelBundle, layer: str, y=None, x=None) -> tuple[int, int, int, int]:
    """The input box one output position (default: the centre) depends on, from its gradient
    support on a linearised copy: the independent check of the analytic arithmetic."""
    boxes, _ = _gradient_boxes(bundle, [(layer, y, x)])
    return boxes[0]


def bundle_of(model: nn.Module, size: int = 16) -> ModelBundle:
    pre = Preprocessing(size, size, (0.5,) * 3, (0.5,) * 3)
    return ModelBundle(model, pre, ["a"], "test", type(model).__name__, "random", device=CPU)


def unclipped(rf: ReceptiveField, y: int, x: int, size: int) -> bool:
    cy, cx = rf.center(y, x)
    return (cy - rf.size[0] / 2 >= 0 and cy + rf.size[0] / 2 <= size
            and cx - rf.size[1] / 2 >= 0 and cx + rf.size[1] / 2 <= size)


def assert_all_positions_match(bundle: ModelBundle, layer: str, dilated: bool = False) -> ReceptiveField:
    """Analytic box == gradient support at every output position. With dilation the box
    matches where it is not clipped; at the border the support lies inside it (taps in
    the padding: documented limit)."""
    rf = analytic_receptive_field(bundle, layer)
    h, w = rf.output_shape
    reqs = [(layer, y, x) for y in range(h) for x in range(w)]
    boxes, shapes = _gradient_boxes(bundle, reqs)
    assert shapes[layer] == rf.output_shape
    bad, inside = [], 0
    for (_, y, x), g in zip(reqs, boxes):
        a = rf.box(y, x, bundle.input_size)
        if dilated and not unclipped(rf, y, x, bundle.input_size):
            assert a[0] <= g[0] and a[1] <= g[1] and g[2] <= a[2] and g[3] <= a[3], (y, x, a, g)
            inside += 1
        elif a != g:
            bad.append((y, x, a, g))
    assert not bad, f"{layer}: analytic != gradient at {bad[:4]}"
    assert inside < h * w
    return rf


def conv(cin, cout, k, **kw):
    return nn.Conv2d(cin, cout, k, **kw)


# ------------------------------------------------------------------------ hand-computed

HAND = [
    # (modules, layer, size, jump, start)
    ([conv(3, 4, 3, padding=1), conv(4, 4, 3, padding=1)], "1", (5, 5), (1, 1), (0.5, 0.5)),
    ([conv(3, 4, 3, stride=2, padding=1), conv(4, 4, 3, padding=1)], "0", (3, 3), (2, 2), (0.5, 0.5)),
    ([conv(3, 4, 3, stride=2, padding=1), conv(4, 4, 3, padding=1)], "1", (7, 7), (2, 2), (0.5, 0.5)),
    ([nn.MaxPool2d(2, 2)], "0", (2, 2), (2, 2), (1.0, 1.0)),
    ([conv(3, 4, 3), nn.MaxPool2d(2, 2)], "1", (4, 4), (2, 2), (2.0, 2.0)),
    ([nn.MaxPool2d(2, 2), nn.MaxPool2d(2, 2)], "1", (4, 4), (4, 4), (2.0, 2.0)),
    ([conv(3, 4, 3, padding=2, dilation=2)], "0", (5, 5), (1, 1), (0.5, 0.5)),
    ([conv(3, 4, 3, padding=2, dilation=2), conv(4, 4, 3, padding=2, dilation=2)], "1", (9, 9), (1, 1), (0.5, 0.5)),
    ([conv(3, 4, 3, padding=1), conv(4, 4, 3, padding=3, dilation=3)], "1", (9, 9), (1, 1), (0.5, 0.5)),
    ([conv(3, 4, (3, 5), stride=(1, 2), padding=(1, 0))], "0", (3, 5), (1, 2), (0.5, 2.5)),
    ([conv(3, 4, 4, padding="same")], "0", (4, 4), (1, 1), (1.0, 1.0)),      # extra pad right
    ([nn.AvgPool2d(3, stride=2, padding=1, ceil_mode=True)], "0", (3, 3), (2, 2), (0.5, 0.5)),
    ([nn.MaxPool2d(3, 2, ceil_mode=True), conv(3, 4, 3, padding=1)], "1", (7, 7), (2, 2), (1.5, 1.5)),
    ([Conv2dSame(3, 4, 3, stride=2)], "0", (3, 3), (2, 2), (1.5, 1.5)),      # TF "same": pad right only
    ([Conv2dSame(3, 4, 5, stride=2), nn.ReLU6(), Conv2dSame(4, 4, 3)], "2", (9, 9), (2, 2), (1.5, 1.5)),
]


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
@pytest.mark.parametrize("modules,layer,size,jump,start", HAND)
def test_hand_computed(modules, layer, size, jump, start):
    b = bundle_of(nn.Sequential(*modules))
    dilated = any(getattr(m, "dilation", (1, 1)) != (1, 1) for m in modules)
    rf = assert_all_positions_match(b, layer, dilated)
    assert (rf.size, rf.jump, rf.start, rf.method) == (size, jump, start, "analytic")
    assert receptive_field(b, layer) == rf                       # auto = analytic here


class Tricky(nn.Module):
    """Concatenated branches of different fields, a reused in-place ReLU, TF "same"
    padding, max-pool + strided 1x1 combined with add and mul, a channel shuffle, a
    dilated even kernel with padding="same", ceil-mode pooling, divisible adaptive pooling."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.act = nn.ReLU(inplace=True)
        self.a = nn.Conv2d(8, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 8, 1)
        self.same = Conv2dSame(16, 16, 3, stride=2)
        self.pool = nn.MaxPool2d(3, 2, padding=1)
        self.down = nn.Conv2d(16, 16, 1, stride=2)
        self.even = nn.Conv2d(16, 16, 4, padding="same", dilation=2)
        self.avg = nn.AvgPool2d(3, 2, ceil_mode=True)
        self.adapt = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(16, 2)

    def forward(self, x):
        x = self.act(self.stem(x))                               # 32 -> 16
        y = self.act(torch.cat([self.a(x), self.b(x)], dim=1))   # union of 2 fields
        z = self.same(y) + self.pool(y) * self.down(y)           # 16 -> 8
        n, c, h, w = z.shape
        z = z.view(n, 2, c // 2, h, w).transpose(1, 2).contiguous().view(n, c, h, w)
        z = self.adapt(self.avg(self.even(z)))                   # 8 -> 4 -> 2
        return self.fc(z.mean((2, 3)))


class ChannelsLastBlock(nn.Module):
    """ConvNeXt-style: depthwise 7x7, then LayerNorm / Linear / GELU on N, H, W, C, a
    layer scale and a residual add."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 2, stride=2)
        self.dw = nn.Conv2d(8, 8, 7, padding=3, groups=8)
        self.norm = nn.LayerNorm(8)
        self.fc1 = nn.Linear(8, 16)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(16, 8)
        self.gamma = nn.Parameter(torch.full((8,), 0.1))
        self.out = nn.Identity()

    def forward(self, x):
        x = self.stem(x)
        y = self.dw(x).permute(0, 2, 3, 1)
        y = self.fc2(self.act(self.fc1(self.norm(y)))) * self.gamma
        return self.out(x + y.permute(0, 3, 1, 2))


def test_channels_last_block():
    b = bundle_of(ChannelsLastBlock(), 32)
    rf = assert_all_positions_match(b, "fc1")              # output N, H, W, C
    assert (rf.size, rf.jump, rf.start, rf.output_shape) == ((14, 14), (2, 2), (1.0, 1.0), (16, 16))
    assert assert_all_positions_match(b, "out") == ReceptiveField("out", (14, 14), (2, 2), (1.0, 1.0), (16, 16),
                                                                  "analytic", (0, 0, 32, 32))
    g = receptive_field(b, "fc2", method="gradient")       # the gradient method finds the layout too
    assert (g.size, g.jump, g.start, g.output_shape) == (rf.size, rf.jump, rf.start, rf.output_shape)


def test_dropped_border_pixels():
    """A floor-mode stride leaves the last input row unseen: ``extent`` clips the boxes."""
    b = bundle_of(nn.Sequential(conv(3, 4, 3, stride=2), conv(4, 4, 3, padding=1)), 16)
    rf = assert_all_positions_match(b, "1")
    assert rf.extent == (0, 0, 15, 15) and rf.output_shape == (7, 7)
    assert rf.box(6, 6, 16) == (10, 10, 15, 15)             # theoretical [10, 17), pixel 15 unseen
    g = receptive_field(b, "1", method="gradient")
    assert (g.size, g.jump, g.start, g.extent) == (rf.size, rf.jump, rf.start, rf.extent)


def test_tricky_graph_matches_gradient_everywhere():
    b = bundle_of(Tricky(), 32)
    found = {name: assert_all_positions_match(b, name).size
             for name in ("stem", "a", "b", "act", "same", "pool", "down", "even", "avg", "adapt")}
    # act's last call sees the union of the 3x3 branch (7) and the 1x1 branch (3).
    assert found["stem"] == (3, 3) and found["a"] == (7, 7) and found["act"] == (7, 7)
    # same [-3, 8) | pool [-5, 6) | down [-3, 4) -> 13; even k4 d2 -> 37; avg -> 45; adapt -> 53
    assert found["same"] == (11, 11) and found["pool"] == (11, 11) and found["down"] == (7, 7)
    assert found["even"] == (37, 37) and found["avg"] == (45, 45) and found["adapt"] == (53, 53)
    with pytest.raises(ReceptiveFieldError):
        analytic_receptive_field(b, "fc")
    assert analytic_receptive_field(b, "adapt").size == found["adapt"]


# ------------------------------------------------------------- real architectures

ARCH_LAYERS = {
    "alexnet": ["features.0", "features.3", "features.6", "features.12", "avgpool"],
    "vgg16": ["features.4", "features.16", "features.30"],
    "resnet18": ["conv1", "maxpool", "layer1", "layer1.0.relu", "layer2", "layer3", "layer3.0.conv1",
                 "layer3.0.downsample", "layer4"],
    "lite0": ["_conv_stem", "_blocks.2", "_blocks.7", "_blocks.15", "_relu_head"],
    "squeezenet1_0": ["features.0", "features.2", "features.6", "features.12", "classifier.2"],
}
# Published / hand-checked values (size, jump) for a few layers.
KNOWN = {("alexnet", "features.12"): (195, 32), ("vgg16", "features.30"): (212, 32),
         ("resnet18", "layer1"): (43, 4), ("resnet18", "layer2"): (99, 8), ("resnet18", "layer3"): (211, 16),
         ("resnet18", "layer4"): (435, 32), ("lite0", "_conv_stem"): (3, 2), ("lite0", "_blocks.2"): (19, 4),
         ("lite0", "_blocks.7"): (147, 16), ("lite0", "_blocks.15"): (851, 32),
         ("squeezenet1_0", "classifier.2"): (155, 16)}

_BUNDLES: dict[str, ModelBundle] = {}


def arch_bundle(request, arch: str) -> ModelBundle:
    if arch == "lite0":
        return request.getfixturevalue("lite0")
    if arch not in _BUNDLES:
        _BUNDLES[arch] = torchvision_bundle(arch, pretrained=False, device=CPU)
    return _BUNDLES[arch]


@pytest.fixture(scope="module", autouse=True)
def _free_bundles():
    yield
    _BUNDLES.clear()


@pytest.mark.parametrize("arch", list(ARCH_LAYERS))
def test_analytic_equals_gradient_support(request, arch):
    """The issue's check: at the central position and at the corner (0, 0) the analytic
    box is exactly the support of the gradient on the linearised model."""
    b = arch_bundle(request, arch)
    layers = ARCH_LAYERS[arch]
    rfs = {layer: analytic_receptive_field(b, layer) for layer in layers}
    corner_last = arch != "vgg16"                     # cheap enough to also check (H-1, W-1)
    reqs = []
    for layer in layers:
        h, w = rfs[layer].output_shape
        reqs += [(layer, h // 2, w // 2), (layer, 0, 0)] + ([(layer, h - 1, w - 1)] if corner_last else [])
    boxes, shapes = _gradient_boxes(b, reqs)
    for (layer, y, x), g in zip(reqs, boxes):
        rf = rfs[layer]
        assert shapes[layer] == rf.output_shape
        assert rf.box(y, x, b.input_size) == g, f"{arch} {layer} at ({y}, {x}): {rf}"
    for (a, layer), (size, jump) in KNOWN.items():
        if a == arch:
            assert rfs[layer].size == (size, size) and rfs[layer].jump == (jump, jump), (layer, rfs[layer])
    # Fields grow (weakly) with depth along a chain.
    sizes = [rfs[layer].size[0] for layer in layers if layer.count(".") <= 1 and "relu" not in layer]
    assert sizes == sorted(sizes)


def test_gradient_method_recovers_the_field(request):
    b = arch_bundle(request, "resnet18")
    a = receptive_field(b, "layer2", method="analytic")
    g = receptive_field(b, "layer2", method="gradient")
    assert g.method == "gradient" and (g.size, g.jump, g.start, g.output_shape) == (a.size, a.jump, a.start, a.output_shape)
    # Larger than the image on both sides everywhere: the gradient can only give a lower bound.
    g4 = receptive_field(b, "layer4", method="gradient")
    assert g4.jump == (32, 32) and 224 < g4.size[0] <= 435
    top, left, bottom, right = gradient_receptive_field(b, "layer4", 0, 0)
    assert g4.box(0, 0, 224) == (top, left, bottom, right) == (0, 0, 218, 218)
    # Public single-neuron call, default = central position.
    rf = analytic_receptive_field(b, "layer1")
    assert gradient_receptive_field(b, "layer1") == rf.box(28, 28, 224)
    assert gradient_receptive_field(b, "layer1", 0, 55) == rf.box(0, 55, 224)


def test_non_spatial_layers_raise(request):
    b = arch_bundle(request, "resnet18")
    for layer in ("avgpool", "fc", ""):
        for method in ("auto", "analytic", "gradient"):
            with pytest.raises(ReceptiveFieldError, match="no spatial output"):
                receptive_field(b, layer, method)
    with pytest.raises(ReceptiveFieldError, match="no spatial output"):
        gradient_receptive_field(b, "fc")
    assert gradient_receptive_field(b, "avgpool") == (0, 0, 224, 224)     # 1x1 map: the whole image
    with pytest.raises(ReceptiveFieldError, match="global pooling"):
        receptive_field(request.getfixturevalue("lite0"), "_avg_pooling")


def test_unknown_layer_and_bad_arguments():
    b = bundle_of(nn.Sequential(conv(3, 4, 3, padding=1)))
    for method in ("auto", "analytic", "gradient"):
        with pytest.raises(LayerError) as e:
            receptive_field(b, "nope", method)
        assert not isinstance(e.value, ReceptiveFieldError) and "nope" in str(e.value)
    with pytest.raises(LayerError):
        gradient_receptive_field(b, "nope")
    with pytest.raises(ParameterError):
        receptive_field(b, "0", "magic")
    with pytest.raises(ParameterError):
        gradient_receptive_field(b, "0", 16, 0)
    assert issubclass(ReceptiveFieldError, LayerError)


def test_float64_recompute_near_underflow(monkeypatch):
    import analysis.inside.receptive as receptive
    b = bundle_of(Tricky(), 32)
    reqs = [("avg", 0, 0), ("avg", 2, 1), ("stem", 15, 15)]
    boxes32, _ = _gradient_boxes(b, reqs)
    monkeypatch.setattr(receptive, "_UNDERFLOW_GUARD", float("inf"))   # every layer redone in float64
    calls = []
    real = receptive._layer_boxes
    monkeypatch.setattr(receptive, "_layer_boxes", lambda *a: calls.append(a[4]) or real(*a))
    assert _gradient_boxes(b, reqs)[0] == boxes32
    assert calls == [torch.float32, torch.float64, torch.float64]      # then float64 for the rest


# ------------------------------------------------------------------ fallbacks

class Unshuffle(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = conv(3, 4, 3, padding=1)
        self.c2 = conv(16, 4, 3, padding=1)

    def forward(self, x):
        return self.c2(F.pixel_unshuffle(self.c1(x), 2))      # an op the arithmetic does not know


class SqueezeExcite(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = conv(3, 4, 3, padding=1)
        self.fc = conv(4, 4, 1)
        self.out = nn.Identity()

    def forward(self, x):
        x = self.c1(x)
        return self.out(x * torch.sigmoid(self.fc(F.adaptive_avg_pool2d(x, 1))))


def test_auto_falls_back_to_gradient():
    b = bundle_of(Unshuffle(), 32)
    with pytest.raises(ReceptiveFieldError, match="pixel_unshuffle"):
        analytic_receptive_field(b, "c2")
    rf = receptive_field(b, "c2")
    # conv3 (3, start .5) -> space-to-depth = k2 s2 (4, 1.0, jump 2) -> conv3 (8, 1.0)
    assert rf.method == "gradient"
    assert (rf.size, rf.jump, rf.start, rf.output_shape) == ((8, 8), (2, 2), (1.0, 1.0), (16, 16))
    assert analytic_receptive_field(b, "c1").size == (3, 3)        # before the op: fine

    se = bundle_of(SqueezeExcite(), 16)
    with pytest.raises(ReceptiveFieldError, match="whole image"):
        analytic_receptive_field(se, "out")
    rf = receptive_field(se, "out")
    assert rf.method == "gradient" and rf.box(0, 0, 16) == (0, 0, 16, 16) == rf.box(15, 3, 16)


class Boom(nn.Module):
    def __init__(self):
        super().__init__()
        self.c = conv(3, 4, 3)

    def forward(self, x):
        self.c(x)
        raise RuntimeError("boom")


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")
def test_torchscript_is_refused():
    b = bundle_of(torch.jit.script(nn.Sequential(conv(3, 4, 3, padding=1))))
    for method in ("auto", "analytic", "gradient"):
        with pytest.raises(ReceptiveFieldError, match="TorchScript"):
            receptive_field(b, "0", method)


def test_failing_forward_leaves_no_hooks():
    b = bundle_of(Boom())
    for method in ("analytic", "gradient"):
        with pytest.raises(ReceptiveFieldError, match="boom"):
            receptive_field(b, "c", method)
    assert count_hooks(b.model) == 0


# ------------------------------------------------------------------ box / shared model

def test_box_center_and_clipping():
    rf = ReceptiveField("l", (7, 7), (2, 2), (0.5, 0.5), (16, 16), "analytic")
    assert rf.center(1, 2) == (2.5, 4.5)
    assert rf.box(0, 0, 32) == (0, 0, 4, 4)                        # [-3, 4) clipped at 0
    assert rf.box(8, 8, 32) == (13, 13, 20, 20)                    # unclipped: size 7, centred
    assert rf.box(15, 15, 32) == (27, 27, 32, 32)                  # [27, 34) clipped at 32
    assert rf.box(15, 0, (20, 32)) == (20, 0, 20, 4)               # outside a short image: empty
    top, left, bottom, right = rf.box(8, 3, 32)
    assert ((top + bottom) / 2, (left + right) / 2) == rf.center(8, 3)
    for y, x in ((16, 0), (0, -1)):
        with pytest.raises(ParameterError):
            rf.box(y, x, 32)
    seen = ReceptiveField("l", (7, 7), (2, 2), (0.5, 0.5), (16, 16), "analytic", extent=(0, 0, 31, 30))
    assert seen.box(15, 15, 32) == (27, 27, 31, 30) and seen.box(0, 0, 32) == (0, 0, 4, 4)


def test_shared_model_unchanged(lite0):
    before = weights_sha256(lite0.model)
    lite0.receptive_cache = None                                   # force a fresh trace
    a = receptive_field(lite0, "_blocks.3", "analytic")
    assert a.size == (35, 35) and a.jump == (8, 8) and a.output_shape == (28, 28)
    g = gradient_receptive_field(lite0, "_blocks.3")
    assert g == a.box(14, 14, lite0.input_size)
    assert weights_sha256(lite0.model) == before == lite0.model_id
    assert count_hooks(lite0.model) == 0
    assert not lite0.model.training and not any(m.training for m in lite0.model.modules())
    assert not any(p.requires_grad or p.grad is not None for p in lite0.model.parameters())
    assert all(type(m).__name__ != "Identity" for m in lite0.model.modules())   # ReLU6 still there
