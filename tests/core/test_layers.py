"""Layer table: names, output shapes, warnings, Grad-CAM's default layer."""
import pytest
from torch import nn

from analysis.core.errors import LayerError
from analysis.core.hooks import count_hooks
from analysis.core.layers import check_layer, last_conv_block, layer_table, spatial_layers
from analysis.core.models.bundle import ModelBundle, Preprocessing
from analysis.core.models.loaders import torchvision_bundle

PRE = Preprocessing(16, 16, (0.5,) * 3, (0.5,) * 3)


def test_lite0_layer_table(lite0):
    infos = layer_table(lite0)
    by = {i.name: i for i in infos}
    assert by["_conv_stem"].output_shape == (32, 112, 112)
    assert by["_blocks.15"].output_shape == (320, 7, 7)
    assert by["_relu_head"].output_shape == (1280, 7, 7)
    assert by["_fc"].output_shape == (1000,)
    assert all(i.calls == 1 for i in infos if i.name != "_blocks")   # nothing reused
    assert by["_blocks"].calls == 0                       # a ModuleList is never called itself
    assert not any(i.warnings for i in infos)
    assert last_conv_block(infos) == "_relu_head"
    assert "_blocks.3._depthwise_conv" in spatial_layers(infos)
    assert count_hooks(lite0.model) == 0


class Reuse(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.act = nn.ReLU(inplace=True)
        self.fc = nn.Linear(3, 2)

    def forward(self, x):
        x = self.act(self.conv(x))
        x = self.act(self.conv(x))
        return self.fc(x.mean((2, 3)))


def test_reuse_and_inplace_warnings():
    b = ModelBundle(Reuse(), PRE, ["a", "b"], "reuse", "Reuse", "random")
    infos = {i.name: i for i in layer_table(b)}
    assert infos["conv"].calls == 2 and any("reused 2x" in w for w in infos["conv"].warnings)
    assert any("in-place" in w for w in infos["act"].warnings)
    assert not infos["fc"].warnings


@pytest.mark.parametrize("arch,expected", [("resnet18", "layer4"), ("vgg11", "features"),
                                           ("googlenet", "inception5b")])
def test_last_conv_block_torchvision(arch, expected):
    infos = layer_table(torchvision_bundle(arch, pretrained=False))
    assert last_conv_block(infos) == expected


def test_check_layer_and_no_spatial():
    b = ModelBundle(nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 2)), PRE, ["a", "b"], "mlp", "MLP", "random")
    infos = layer_table(b)
    with pytest.raises(LayerError):
        last_conv_block(infos)
    with pytest.raises(LayerError, match="no layer named"):
        check_layer(infos, "nope")
    assert check_layer(infos, "1").output_shape == (2,)


def test_block_layers_and_default(lite0):
    from analysis.core.layers import block_layers, default_layer
    infos = layer_table(lite0)
    blocks = block_layers(infos)
    assert "_blocks.10" in blocks and "_blocks.10._bn2" not in blocks
    assert blocks.index("_blocks.0") < blocks.index("_blocks.15")
    assert default_layer(infos, 0.0) == "_conv_stem" and default_layer(infos, 1.0) == "_relu_head"
    assert default_layer(infos, 0.5).startswith("_blocks.")
