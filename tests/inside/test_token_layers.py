"""Patch scan and receptive fields on token layers (timm ViT, random weights): channels on
the last axis, positions on the patch grid, the class token left out; a token's field is its
patch before any attention and the whole image after (said, not drawn as a false box)."""
import numpy as np
import timm
import torch

from analysis.core.datasets import Dataset
from analysis.core.hooks import count_hooks
from analysis.core.models.bundle import ModelBundle, Preprocessing
from analysis.inside.patches import patch_crops, scan, token_field
from analysis.optimize.engine import run


def test_scan_and_fields_on_token_layers():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = timm.create_model("vit_tiny_patch16_224", pretrained=False)
    b = ModelBundle(model, Preprocessing(224, 224, (0.5,) * 3, (0.5,) * 3), [str(i) for i in range(1000)],
                    "vit", "vit", "random")
    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 256, (224, 224, 3), dtype=np.uint8) for _ in range(3)]
    ds = Dataset("three", "test", ["a"], [0, 0, 0], ["0", "1", "2"], "e" * 64, _loader=lambda i: imgs[i])

    idx = run(scan(b, ds, "blocks.4", k=2, save=False))
    assert idx.channels == 192 and idx.output_shape == (14, 14)
    kept = []
    h = model.blocks[4].register_forward_hook(lambda m, i, o: kept.append(o))
    try:
        with torch.no_grad():
            model(b.inputs(imgs))
    finally:
        h.remove()
    patches = kept[0][:, 1:]                                   # (3, 196, 192), class token dropped
    best = patches.amax(dim=1)                                 # (3, 192)
    np.testing.assert_allclose(idx.values[:, 0], best.max(dim=0).values.numpy(), rtol=1e-5)

    late = token_field(b, "blocks.4")
    assert late.whole and "whole image" in late.note
    crops = patch_crops(b, ds, idx, 5, display_size=32)
    assert all(c.box == (0, 0, 224, 224) for c in crops)

    early = token_field(b, "patch_embed")
    assert not early.whole and early.size == (16.0, 16.0) and early.box(2, 3, 224) == (32, 48, 48, 64)
    idx0 = run(scan(b, ds, "patch_embed", k=1, save=False))
    c0 = patch_crops(b, ds, idx0, 0, display_size=16)[0]
    y, x = c0.position
    assert c0.box == (16 * y, 16 * x, 16 * y + 16, 16 * x + 16)
    assert count_hooks(model) == 0
