"""Every page opens without an error on a timm CNN and a timm ViT (random weights, 64 px),
loaded through the sidebar's form; pages that compute on a visit (home, inside) compute."""
import pytest

from tests.ui.test_app_models import load_timm

PAGES = ["home", "saliency", "inside", "embeddings", "dataset_audit", "classvis", "channelvis", "deepdream",
         "inversion", "texture", "style_transfer", "fast_style", "relevance", "concepts", "compare", "audit"]


@pytest.mark.parametrize("arch", ["resnet18", "vit_tiny_patch16_224"])
def test_every_page_opens_on_timm_models(arch):
    at = load_timm(arch)
    assert not at.exception and not at.error, [e.value for e in at.error]
    for page in PAGES:
        at.switch_page(f"../pages/{page}.py").run()
        assert not at.exception, (page, [e.value for e in at.exception])
        assert not at.error, (page, [e.value for e in at.error])
        assert any(f"{arch} (timm, random, seed 0)" in c.value for c in at.caption), page   # still the model


def test_layer_pickers_say_which_layers_are_offered_and_why():
    """On a ViT the pickers list token layers with their layout and say why the others (the
    head, attention internals) are not offered."""
    at = load_timm("vit_tiny_patch16_224")
    at.switch_page("../pages/inside.py").run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    picker = at.selectbox(key="in_a_layer")
    assert "Not offered" in picker.help and "layers without one" in picker.help
    assert any(o.startswith("blocks.") for o in picker.options)
