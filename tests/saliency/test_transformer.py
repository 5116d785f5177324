"""Attention rollout and gradient-weighted attention relevance on vision transformers
(timm ViT/DeiT, torchvision vit, Hugging Face ViT): values against references computed
here independently (attention recomputed from each block's q/k projections; relevance from
``retain_grad`` + ``backward`` on a separately made copy), the shared model untouched, no
hook left, clear refusals for models without class-token attention."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from analysis.core.errors import ParameterError
from analysis.core.models.bundle import ModelBundle, Preprocessing, weights_sha256
from analysis.saliency import registry
from analysis.saliency.methods import attribute
from analysis.saliency.transformer import attention_relevance, attention_rollout, guided_note

CPU = torch.device("cpu")
IMAGE = (np.random.default_rng(1).random((64, 64, 3)) * 255).astype(np.uint8)
PRE = Preprocessing(64, 64, (0.5,) * 3, (0.5,) * 3)


def timm_bundle(name="vit_tiny_patch16_224", **kw) -> ModelBundle:
    import timm
    torch.manual_seed(0)
    m = timm.create_model(name, img_size=64, num_classes=7, depth=3, **kw)
    return ModelBundle(m, PRE, [f"c{i}" for i in range(7)], name, name, "timm", device=CPU)


def hooks(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules())


def reference_attentions(model, x) -> list[torch.Tensor]:
    """Softmax(q k^T / sqrt(d)) of every timm block, recomputed from the input of its
    attention module (captured with a hook on a copy), independent of the code under test."""
    m = copy.deepcopy(model)
    ins = []
    handles = [b.attn.register_forward_pre_hook(lambda mod, a: ins.append((mod, a[0]))) for b in m.blocks]
    try:
        with torch.no_grad():
            m(x)
    finally:
        for h in handles:
            h.remove()
    out = []
    for mod, t in ins:
        b, n, c = t.shape
        qkv = mod.qkv(t).reshape(b, n, 3, mod.num_heads, c // mod.num_heads).permute(2, 0, 3, 1, 4)
        q, k = mod.q_norm(qkv[0]), mod.k_norm(qkv[1])
        out.append(((q * mod.scale) @ k.transpose(-2, -1)).softmax(-1))
    return out


def reference_rollout(atts, prefix, grid, size):
    t = atts[0].shape[-1]
    r = torch.eye(t, dtype=torch.float64)
    for a in atts:
        a = a[0].double().mean(0)
        a = 0.5 * a + 0.5 * torch.eye(t, dtype=torch.float64)
        r = (a / a.sum(-1, keepdim=True)) @ r
    return F.interpolate(r[0, prefix:].reshape(1, 1, *grid).float(), size=(size, size), mode="bilinear",
                         align_corners=False)


@pytest.mark.parametrize("name,prefix", [("vit_tiny_patch16_224", 1), ("deit_tiny_distilled_patch16_224", 2)])
def test_rollout_equals_the_reference_from_recomputed_attention(name, prefix):
    b = timm_bundle(name)
    x = b.inputs(IMAGE)
    fused_before = [blk.attn.fused_attn for blk in b.model.blocks]
    ref = reference_rollout(reference_attentions(b.model, x), prefix, (4, 4), 64)
    got = attention_rollout(b, x)
    assert got.shape == (1, 1, 64, 64)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-7)
    assert [blk.attn.fused_attn for blk in b.model.blocks] == fused_before       # shared model untouched
    assert hooks(b.model) == 0 and weights_sha256(b.model) == b.model_id
    assert torch.equal(attention_rollout(b, x, 3), got)                           # class-agnostic


def test_relevance_equals_an_independent_autograd_reference():
    b = timm_bundle()
    x = b.inputs(IMAGE)
    ref_model = copy.deepcopy(b.model)
    for blk in ref_model.blocks:
        blk.attn.fused_attn = False
    kept = []

    def keep(mod, inp, out):
        out.retain_grad()
        kept.append(out)
    handles = [blk.attn.attn_drop.register_forward_hook(keep) for blk in ref_model.blocks]
    try:
        xi = x.clone().requires_grad_(True)
        ref_model(xi)[0, 5].backward()
    finally:
        for h in handles:
            h.remove()
    r = torch.eye(17, dtype=torch.float64)
    for a in kept:
        cam = (a.grad[0] * a[0]).clamp(min=0).mean(0).double()
        r = r + cam @ r
    ref = F.interpolate(r[0, 1:].reshape(1, 1, 4, 4).float(), size=(64, 64), mode="bilinear", align_corners=False)
    got = attention_relevance(b, x, 5)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-7)
    other = attention_relevance(b, x, 2)
    assert not torch.allclose(other, got)                                          # class-specific
    assert hooks(b.model) == 0 and weights_sha256(b.model) == b.model_id


def test_torchvision_vit_per_head_weights_and_untouched_model():
    from torchvision.models.vision_transformer import VisionTransformer
    torch.manual_seed(0)
    m = VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32,
                          num_classes=5)
    torch.nn.init.normal_(m.heads.head.weight)          # torchvision zero-initialises the head
    pre = Preprocessing(32, 32, (0.5,) * 3, (0.5,) * 3)
    b = ModelBundle(m, pre, list("abcde"), "tv", "vit", "random", device=CPU)
    x = b.inputs(IMAGE)
    # reference: ask each block's attention for its weights on a copy, by hand
    ref_model = copy.deepcopy(m)
    atts = []

    class AskWeights(torch.nn.Module):
        def __init__(self, mha):
            super().__init__()
            self.mha = mha

        def forward(self, q, k, v, need_weights=False):
            out, w = self.mha(q, k, v, need_weights=True, average_attn_weights=False)
            atts.append(w)
            return out, None
    for layer in ref_model.encoder.layers:
        layer.self_attention = AskWeights(layer.self_attention)
    with torch.no_grad():
        ref_model(x)
    ref = reference_rollout(atts, 1, (4, 4), 32)
    torch.testing.assert_close(attention_rollout(b, x), ref, rtol=1e-4, atol=1e-7)
    rel = attention_relevance(b, x, 1)
    assert torch.isfinite(rel).all() and rel.std() > 0
    from analysis.saliency.transformer import _attention_copy
    with torch.no_grad():                     # the written-out attention computes what the model does
        torch.testing.assert_close(_attention_copy(b).forward(x)[0], m(x), rtol=1e-5, atol=1e-6)
    assert type(m.encoder.layers[0].self_attention).__name__ == "MultiheadAttention"
    assert hooks(m) == 0 and weights_sha256(m) == b.model_id


def test_hugging_face_vit_through_attribute(tmp_path):
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    from analysis.core.models.hf_source import hf_bundle_from_dir
    cfg = ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                    image_size=64, patch_size=16, num_labels=4)
    torch.manual_seed(0)
    ViTForImageClassification(cfg).save_pretrained(tmp_path)
    ViTImageProcessor(size={"height": 64, "width": 64}).save_pretrained(tmp_path)
    b = hf_bundle_from_dir(tmp_path, device=CPU)
    x = b.inputs(IMAGE)
    with torch.no_grad():
        atts = b.model.hf(pixel_values=x, output_attentions=True).attentions
    own_hooks = hooks(b.model)                # transformers installs output-recording hooks on first use
    torch.testing.assert_close(attention_rollout(b, x), reference_rollout(atts, 1, (4, 4), 64), rtol=1e-4, atol=1e-7)
    for method in ("attention_rollout", "attention_relevance"):
        a = attribute(b, IMAGE, None, method)
        assert a.map.shape == (64, 64) and np.isfinite(a.map).all() and a.map.std() > 0
    assert hooks(b.model) == own_hooks and weights_sha256(b.model) == b.model_id


def test_models_without_class_token_attention_are_refused_with_a_reason():
    import timm
    torch.manual_seed(0)
    swin = timm.create_model("swin_tiny_patch4_window7_224", img_size=112, depths=(1, 1, 1, 1), num_classes=3)
    b = ModelBundle(swin, Preprocessing(112, 112, (0.5,) * 3, (0.5,) * 3), list("abc"), "s", "swin", "timm", device=CPU)
    with pytest.raises(ParameterError, match="windowed attention"):
        attribute(b, IMAGE, None, "attention_rollout")
    vit = timm_bundle()
    with pytest.raises(ParameterError, match="head_fusion"):
        attribute(vit, IMAGE, None, "attention_rollout", head_fusion="median")
    with pytest.raises(ParameterError):
        attribute(vit, IMAGE, None, "attention_rollout", discard_ratio=1.5)


def test_rollout_parameters_change_the_map_and_are_in_the_table():
    b = timm_bundle()
    mean = attribute(b, IMAGE, None, "attention_rollout")
    mx = attribute(b, IMAGE, None, "attention_rollout", head_fusion="max", discard_ratio=0.5)
    assert not np.allclose(mean.map, mx.map)
    assert mx.params["head_fusion"] == "max" and mx.params["discard_ratio"] == 0.5
    assert {"attention_rollout", "attention_relevance"} <= set(registry.names())


def test_guided_backprop_says_what_it_does_on_gelu_models():
    b = timm_bundle()
    a = attribute(b, IMAGE, None, "guided_backprop")
    assert any("GELU" in w and "ordinary gradient" in w for w in a.warnings)
    assert guided_note(torch.nn.Sequential(torch.nn.Conv2d(3, 3, 1), torch.nn.ReLU())) is None


def test_token_gradcam_equals_pytorch_grad_cam_with_reshape_transform():
    """Token Grad-CAM (analysis.saliency.methods.gradcam on a token layer, the layout
    engineer's implementation) equals pytorch-grad-cam's GradCAM with the usual ViT
    ``reshape_transform`` (drop the class token, tokens -> (N, C, h, w)) on a timm ViT."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from analysis.saliency.methods import gradcam
    b = timm_bundle()
    x = b.inputs(IMAGE)
    layer = "blocks.2.norm1"

    def reshape_transform(t, h=4, w=4):
        return t[:, 1:, :].reshape(t.size(0), h, w, t.size(2)).permute(0, 3, 1, 2)
    ref_model = copy.deepcopy(b.model)
    for p in ref_model.parameters():                       # pytorch-grad-cam needs a graph from the weights
        p.requires_grad_(True)
    with GradCAM(model=ref_model, target_layers=[ref_model.get_submodule(layer)],
                 reshape_transform=reshape_transform) as cam:
        # pytorch-grad-cam resizes with OpenCV and min-max scales each map; compare on the
        # patch grid (its raw per-layer CAM) and after the same scaling of ours.
        ref = cam(input_tensor=x.clone(), targets=[ClassifierOutputTarget(4)])[0]
        acts = cam.activations_and_grads.activations[0]
        grads = cam.activations_and_grads.gradients[0]
    raw_ref = np.maximum((grads.numpy().mean(axis=(2, 3), keepdims=True) * acts.numpy()).sum(1)[0], 0)
    ours = gradcam(b, x, 4, layer)                         # (1, 1, 64, 64), bilinear from the 4x4 grid
    grid = F.interpolate(torch.from_numpy(raw_ref)[None, None].float(), size=(64, 64), mode="bilinear",
                         align_corners=False)
    torch.testing.assert_close(ours, grid, rtol=1e-4, atol=1e-6)
    scaled = ours[0, 0].numpy()
    scaled = (scaled - scaled.min()) / (scaled.max() - scaled.min() + 1e-7)
    assert ref.shape == scaled.shape
    assert np.corrcoef(ref.ravel(), scaled.ravel())[0, 1] > 0.99   # OpenCV's resize vs torch's bilinear
    assert hooks(b.model) == 0
