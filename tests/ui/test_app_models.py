"""AppTest of the home and saliency pages with models loaded through the sidebar's forms:
a timm CNN (resnet18) and a timm ViT (vit_tiny_patch16_224), random weights, at 64 px,
plus the messages for a refused preprocessing and a Hugging Face model."""
from __future__ import annotations

import pytest
from streamlit.testing.v1 import AppTest

from tests.paths import REPO

APP = str(REPO / "dashboard" / "app.py")


def load_timm(arch: str, size: str = "64", mean: str = "") -> AppTest:
    at = AppTest.from_file(APP, default_timeout=300).run()
    at.selectbox(key="sb_model_kind").set_value("timm").run()
    at.selectbox(key="sb_timm_arch").set_value(arch)
    at.text_input(key="sb_timm_pp_size").input(size)
    if mean:
        at.text_input(key="sb_timm_pp_mean").input(mean)
    at.button(key="sb_load_timm").click().run()
    return at


def card(at: AppTest) -> dict:
    t = at.table[0].value
    return {k: str(v) for k, v in zip(t.index, t.iloc[:, 0])}


@pytest.mark.parametrize("arch", ["resnet18", "vit_tiny_patch16_224"])
def test_timm_model_on_home_and_saliency(arch):
    at = load_timm(arch)
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert any(f"{arch} (timm, random, seed 0)" in c.value for c in at.caption)
    c = card(at)
    assert c["Source"] == "timm" and "64×64" in c["Input"]
    assert "pretrained_cfg" in c["Preprocessing from"] and "input_size 224 → 64" in c["Preprocessing from"]
    assert len(at.dataframe[0].value["class"]) == 5                   # top-5 with timm's ImageNet names
    if arch.startswith("vit"):
        assert any("accepts only 64×64" in i.value for i in at.info)
    at.switch_page("../pages/saliency.py").run()
    methods = ["gradient", "attention_rollout"] if arch.startswith("vit") else ["gradient", "gradcam"]
    at.multiselect(key="sal_methods").set_value(methods)
    at.button(key="sal_compute").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    titles = " ".join(m.value for m in at.markdown if m.value.startswith("**"))
    assert "Vanilla gradient" in titles and ("Attention rollout" in titles or "Grad-CAM" in titles)


def test_a_mean_with_the_wrong_channel_count_is_refused_with_a_message():
    at = load_timm("resnet18", mean="0.5, 0.5")
    assert not at.exception
    assert any("one value per input channel" in e.value for e in at.error), [e.value for e in at.error]
    assert any("EfficientNet-Lite0" in c.value for c in at.caption)      # the old model stays active


def test_hugging_face_form_offers_an_upload_without_a_server_folder():
    at = AppTest.from_file(APP, default_timeout=300).run()
    at.selectbox(key="sb_model_kind").set_value("hf").run()
    assert not at.exception and not at.error
    assert at.radio(key="sb_hf_from").options == ["Upload a zip"]
    assert at.button(key="sb_load_hf_zip").disabled
