"""Layer layouts are known, not guessed from a shape (issue 13 / 17): channels-last Swin
and ConvNeXt internals, ViT tokens; every reader reads channels on the right axis."""
import numpy as np
import pytest
import timm
import torch
import torchvision

from analysis.core.hooks import count_hooks, get_module
from analysis.core.layers import check_layer, layer_table
from analysis.core.layout import NCHW, Layout, to_nchw
from analysis.core.models.bundle import ModelBundle, Preprocessing

_B: dict = {}


def _bundle(name: str) -> ModelBundle:
    if name not in _B:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            if name == "vit_tiny":
                model, size = timm.create_model("vit_tiny_patch16_224", pretrained=False), 224
            else:
                model, size = torchvision.models.get_model(name, weights=None), 64
        pre = Preprocessing(size, size, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
        _B[name] = ModelBundle(model, pre, [str(i) for i in range(1000)], name, name, "random")
    return _B[name]


def _image(size: int) -> np.ndarray:
    return np.random.default_rng(3).integers(0, 256, (size, size, 3), dtype=np.uint8)


@pytest.mark.parametrize("arch,layer,kind,channels", [
    ("swin_t", "features.0", "nhwc", 96), ("swin_t", "features.5", "nhwc", 384),
    ("swin_t", "features.5.0.attn", "nhwc", 384),            # attention keeps its input's axes
    ("swin_t", "permute", "nchw", 768), ("swin_t", "head", "vector", 1000),
    ("convnext_tiny", "features.1.0", "nchw", 96), ("convnext_tiny", "features.1.0.block.2", "nhwc", 96),
    ("convnext_tiny", "features.1.0.block.3", "nhwc", 384), ("convnext_tiny", "features.1.0.block.6", "nchw", 96),
    ("vit_tiny", "blocks.5", "tokens", 192), ("vit_tiny", "patch_embed", "tokens", 192),
    ("vit_tiny", "fc_norm", "vector", 192),
])
def test_layer_table_knows_layouts_and_real_channel_counts(arch, layer, kind, channels):
    info = check_layer(layer_table(_bundle(arch)), layer)
    assert info.layout.kind == kind and info.layout_source == "probe"
    assert info.channels == channels and info.as_row()["channels"] == channels
    if kind == "tokens":
        assert info.layout.grid == (14, 14)
        assert info.layout.prefix == (0 if layer == "patch_embed" else 1)   # the class token
        assert info.spatial and info.map_hw == (14, 14)


def test_no_layer_is_left_to_a_shape_guess():
    for arch in ("swin_t", "convnext_tiny", "vit_tiny"):
        infos = [i for i in layer_table(_bundle(arch)) if i.calls > 0]
        assert all(i.layout_source == "probe" for i in infos), arch


def _manual_gradcam(bundle, layer, target, to_map):
    """Grad-CAM by hand: raw output and gradient of ``layer`` on the model, put
    channels-first by ``to_map``, weights = mean gradient, ReLU, bilinear upsampling."""
    x = bundle.inputs(_image(bundle.input_size)).requires_grad_(True)
    kept = []
    h = get_module(bundle.model, layer).register_forward_hook(lambda m, i, o: kept.append(o))
    try:
        with torch.enable_grad():
            score = bundle.model(x)[0, target]
            (g,) = torch.autograd.grad(score, kept[0])
    finally:
        h.remove()
    a, g = to_map(kept[0].detach()), to_map(g)
    cam = torch.relu((g.mean(dim=(2, 3), keepdim=True) * a).sum(1, keepdim=True))
    return torch.nn.functional.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[0, 0]


@pytest.mark.parametrize("arch,layer,to_map", [
    ("swin_t", "features.5", lambda t: t.permute(0, 3, 1, 2)),
    ("convnext_tiny", "features.3.0.block.2", lambda t: t.permute(0, 3, 1, 2)),
    ("vit_tiny", "blocks.10", lambda t: t[:, 1:].reshape(t.shape[0], 14, 14, t.shape[2]).permute(0, 3, 1, 2)),
])
def test_gradcam_on_channels_last_and_token_layers_equals_a_channels_first_reference(arch, layer, to_map):
    from analysis.saliency.methods import attribute
    b = _bundle(arch)
    a = attribute(b, _image(b.input_size), 7, "gradcam", layer=layer)
    ref = _manual_gradcam(b, layer, 7, to_map).numpy()
    assert ref.max() > 0
    np.testing.assert_allclose(a.map, ref, rtol=1e-4, atol=1e-6 * float(ref.max()))
    assert count_hooks(b.model) == 0


def test_readers_use_the_layout(tmp_path):
    """Activations, channel gradients, feature vectors and the optimisation objectives read
    a channels-last layer's channels on its last axis, and a token layer's patch grid."""
    from analysis.inside.activations import activations, neuron_gradient
    from analysis.optimize.engine import forward_context
    from analysis.optimize.objectives import channel
    b = _bundle("swin_t")
    img = _image(64)
    x = b.inputs(img)
    with torch.no_grad():
        raw = b.model.features[:6](x)                                    # (1, 4, 4, 384) NHWC
    acts = activations(b, img, "features.5")
    assert acts.maps.shape == (384, 4, 4)
    np.testing.assert_allclose(acts.maps, raw[0].permute(2, 0, 1).numpy(), rtol=1e-4, atol=1e-5)
    ng = neuron_gradient(b, img, "features.5", 300, guided=False)
    assert ng.value == pytest.approx(float(raw[0, :, :, 300].mean()), rel=1e-4, abs=1e-6)
    unit = b.preprocess.to_unit([img])
    with torch.no_grad():
        ctx = forward_context(b, channel("features.5", 300), unit, unit, None)
    assert ctx.acts["features.5"].shape == (1, 384, 4, 4)

    v = _bundle("vit_tiny")
    va = activations(v, _image(224), "blocks.3")
    assert va.maps.shape == (192, 14, 14)


def test_feature_vectors_of_a_token_layer_are_its_class_token():
    from analysis.core.datasets import Dataset
    from analysis.embeddings.features import extract
    from analysis.optimize.engine import run
    v = _bundle("vit_tiny")
    imgs = [_image(224)]
    ds = Dataset("one", "test", ["a"], [0], ["0"], "f" * 64, _loader=lambda i: imgs[i])
    fs = run(extract(v, ds, "blocks.11", save=False))
    kept = []
    h = v.model.blocks[11].register_forward_hook(lambda m, i, o: kept.append(o))
    try:
        with torch.no_grad():
            v.model(v.inputs(imgs))
    finally:
        h.remove()
    np.testing.assert_allclose(fs.features[0], kept[0][0, 0].numpy(), rtol=1e-4, atol=1e-5)


def test_to_nchw_round_trips():
    t = torch.randn(2, 5, 3, 4)
    assert to_nchw(t, NCHW) is t
    assert torch.equal(to_nchw(t.permute(0, 2, 3, 1), Layout("nhwc")), t)
    tok = torch.cat([torch.randn(2, 1, 5), t.flatten(2).transpose(1, 2)], dim=1)
    assert torch.equal(to_nchw(tok, Layout("tokens", 1, (3, 4))), t)


def test_gradcam_default_on_a_vit_is_the_last_attention_input():
    from analysis.core.layers import last_conv_block
    from analysis.saliency.methods import attribute
    v = _bundle("vit_tiny")
    assert last_conv_block(layer_table(v)) == "blocks.11.norm1"
    a = attribute(v, _image(224), 3, "gradcam")
    assert a.layer == "blocks.11.norm1" and a.map.max() > 0
    # The last block's output feeds the class-token head through the class token only:
    # its patch tokens get no gradient, and the blank map is named.
    z = attribute(v, _image(224), 3, "gradcam", layer="blocks.11")
    assert z.map.max() == 0 and any("zero everywhere" in w for w in z.warnings)
