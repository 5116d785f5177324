"""Model sources: the registry, timm and Hugging Face models, preprocessing you can change,
and every page's analysis call on the models people bring (random weights, offline).

Models are built small: 64 px inputs where the architecture allows (ViT/DeiT take
``img_size`` at creation), 112 px for Swin (its windows), a 2-layer Hugging Face ViT with
hidden size 32 saved with ``save_pretrained``.
"""
from __future__ import annotations

import io
import json
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save as st_save

import analysis.core.models.timm_source as timm_source
from analysis.core.config import Config, set_config
from analysis.core.errors import ModelLoadError, ParameterError, WeightsError
from analysis.core.models import registry
from analysis.core.models.bundle import ModelBundle, Preprocessing, weights_sha256
from analysis.core.models.hf_source import hf_bundle_from_dir, hf_bundle_from_zip, processor_preprocessing
from analysis.core.models.loaders import ModelSpec, load_bundle
from analysis.core.models.registry import SOURCES, overrides_json, register_source
from analysis.core.sizes import fit_to_model, fixed_input_size
from analysis.core.store import save_upload

CPU = torch.device("cpu")
RNG = np.random.default_rng(0)
IMAGE = (RNG.random((72, 88, 3)) * 255).astype(np.uint8)

TIMM = [("resnet18", 64), ("convnext_atto", 64), ("efficientnet_b0", 64), ("vit_tiny_patch16_224", 64),
        ("deit_tiny_patch16_224", 64), ("swin_tiny_patch4_window7_224", 112)]


@pytest.fixture(autouse=True)
def isolated_config(tmp_path):
    set_config(Config(data_dir=tmp_path / "data", cache_dir=tmp_path / "cache", trusted_model_dir=tmp_path / "trusted"))
    (tmp_path / "trusted").mkdir()
    yield
    set_config(None)


def timm_spec(arch: str, size: int, **kw) -> ModelSpec:
    return ModelSpec(kind="timm", arch=arch, preprocess=overrides_json({"input_size": size}), **kw)


def save_hf_vit(folder: Path, *, labels: int = 5, size: int = 64, processor: dict | None = None) -> Path:
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor
    cfg = ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                    image_size=size, patch_size=16, num_labels=labels,
                    id2label={i: f"kind {i}" for i in range(labels)}, label2id={f"kind {i}": i for i in range(labels)})
    torch.manual_seed(0)
    ViTForImageClassification(cfg).save_pretrained(folder)
    ViTImageProcessor(size={"height": size, "width": size}).save_pretrained(folder)
    if processor is not None:
        (folder / "preprocessor_config.json").write_text(json.dumps(processor))
    return folder


def hooks_left(model: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
               + len(getattr(m, "_backward_pre_hooks", {})) for m in model.modules())


# ------------------------------------------------------------------ registry

def test_every_source_has_a_sidebar_form():
    from dashboard.model_forms import FORMS
    registry.offered_sources()                    # imports every source module
    assert {"default", "digits", "torchvision", "random", "upload", "trusted", "timm", "hf"} <= set(SOURCES)
    missing = [s.kind for s in SOURCES.values() if s.form not in FORMS]
    assert not missing, f"sources without a sidebar form: {missing}"


def test_a_new_source_is_one_entry_and_load_bundle_uses_it():
    pre = Preprocessing(16, 16, (0.5,) * 3, (0.5,) * 3)

    @register_source("toy_test", "Toy", lambda spec: "toy", editable_preprocessing=True)
    def _toy(spec, device, uploads_dir):
        torch.manual_seed(spec.seed)
        model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                    torch.nn.Linear(4, 3))
        return ModelBundle(model, pre, list("abc"), "toy", "Toy", "toy_test", device=device)
    try:
        b = load_bundle(ModelSpec(kind="toy_test", seed=1), device=CPU)
        assert b.name == "toy" and b.input_size == 16
        assert "toy_test" in [s.kind for s in registry.offered_sources()]
        b2 = load_bundle(ModelSpec(kind="toy_test", seed=1, preprocess=overrides_json({"input_size": 20})), device=CPU)
        assert b2.input_size == 20 and b2.model_id == b.model_id and "input_size 16 → 20" in b2.preprocess_note
        with pytest.raises(ValueError, match="twice"):
            register_source("toy_test", "again")(_toy)
    finally:
        SOURCES.pop("toy_test")
    with pytest.raises(ParameterError, match="Unknown model kind 'toy_test'"):
        load_bundle(ModelSpec(kind="toy_test"), device=CPU)


def test_fixed_preprocessing_sources_refuse_changes():
    with pytest.raises(ParameterError, match="fixed"):
        load_bundle(ModelSpec(kind="digits", preprocess=overrides_json({"input_size": 40})), device=CPU)


# ------------------------------------------------------------------ preprocessing you can change

def test_overrides_are_checked_with_messages():
    base = Preprocessing(224, 256, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    with pytest.raises(ParameterError, match="one value per input channel"):
        registry.apply_overrides(base, registry.parse_overrides(overrides_json({"mean": [0.5, 0.5]})))
    with pytest.raises(ParameterError, match="Grey input needs one mean"):
        registry.apply_overrides(base, {"grayscale": True})
    with pytest.raises(ParameterError, match="outside"):
        overrides_json({"input_size": 100000})
    with pytest.raises(ParameterError, match="Unknown preprocessing setting"):
        registry.parse_overrides('{"mean": [0.5, 0.5, 0.5], "exec": "rm -rf /"}')
    with pytest.raises(ParameterError, match="std value must be positive"):
        registry.apply_overrides(base, {"std": [0.2, 0.0, 0.2]})
    with pytest.raises(ParameterError, match="crop mode"):
        registry.apply_overrides(base, {"crop_mode": "border"})
    out = registry.apply_overrides(base, {"input_size": 112, "channel_order": "bgr", "crop_mode": "squash"})
    assert (out.input_size, out.resize_size, out.channel_order, out.crop_mode) == (112, 128, "bgr", "squash")
    assert out.spec_id != base.spec_id and base.spec_id == Preprocessing(224, 256, base.mean, base.std).spec_id


def test_bgr_flips_channels_into_the_model_and_back_for_display():
    pre = Preprocessing(8, 8, (0.1, 0.2, 0.3), (0.5, 0.5, 0.5), channel_order="bgr")
    img = np.zeros((8, 8, 3), np.uint8)
    img[..., 0] = 255                                        # pure red
    x = pre(img)
    assert torch.allclose(x[0, 2], torch.full((8, 8), (1 - 0.3) / 0.5))   # red is the model's last channel
    assert torch.allclose(x[0, 0], torch.full((8, 8), (0 - 0.1) / 0.5))
    assert np.array_equal(pre.to_display(x)[0], img)


def test_squash_ignores_aspect_ratio():
    pre = Preprocessing(16, 16, (0.5,) * 3, (0.5,) * 3, crop_mode="squash")
    img = np.zeros((20, 80, 3), np.uint8)
    img[:, :40] = 255                                        # left half white
    g = pre.geometry(img)
    assert g.shape == (16, 16, 3) and g[:, :7].min() == 255 and g[:, 9:].max() == 0


def test_upload_weights_say_what_they_assume_and_can_change_it(tmp_path):
    import torchvision
    torch.manual_seed(0)
    m = torchvision.models.get_model("resnet18", weights=None, num_classes=4)
    ref = save_upload(st_save(m.state_dict()), "mine.safetensors")
    b = load_bundle(ModelSpec(kind="upload", arch="resnet18", weights=ref), device=CPU)
    assert "Assumed" in b.preprocess_note and "ImageNet" in b.preprocess_note
    assert b.card()["preprocessing_source"] == b.preprocess_note
    own = overrides_json({"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "input_size": 96})
    b2 = load_bundle(ModelSpec(kind="upload", arch="resnet18", weights=ref, preprocess=own), device=CPU)
    assert b2.preprocess.mean == (0.5, 0.5, 0.5) and b2.input_size == 96 and "Changed by the user" in b2.preprocess_note
    assert b2.model_id == b.model_id and b2.preprocess.spec_id != b.preprocess.spec_id
    with pytest.raises(ParameterError, match="one value per input channel"):
        load_bundle(ModelSpec(kind="upload", arch="resnet18", weights=ref,
                              preprocess=overrides_json({"mean": [0.5, 0.5]})), device=CPU)
    with pytest.raises(ModelLoadError, match="does not accept 1×"):   # grey input to an RGB stem
        load_bundle(ModelSpec(kind="upload", arch="resnet18", weights=ref, preprocess=overrides_json(
            {"grayscale": True, "mean": [0.5], "std": [0.5]})), device=CPU)


# ------------------------------------------------------------------ timm

def test_timm_preprocessing_and_class_names_from_timm_metadata():
    b = load_bundle(ModelSpec(kind="timm", arch="resnet18"), device=CPU)
    pre = b.preprocess
    assert (pre.input_size, pre.resize_size, pre.interpolation) == (224, 235, "bicubic")   # crop_pct 0.95
    assert pre.mean == (0.485, 0.456, 0.406) and "pretrained_cfg" in b.preprocess_note
    assert len(b.categories) == 1000 and b.categories[1].startswith("goldfish")
    assert len(timm_source.timm_categories(11821)) == 11821 and len(timm_source.timm_categories(21841)) == 21841
    assert timm_source.timm_categories(10) is None
    again = load_bundle(ModelSpec(kind="timm", arch="resnet18"), device=CPU)
    assert again.model_id == b.model_id                                  # seeded
    assert load_bundle(ModelSpec(kind="timm", arch="resnet18", seed=1), device=CPU).model_id != b.model_id


def test_timm_unknown_name_and_offline_pretrained(monkeypatch):
    with pytest.raises(ParameterError, match="Unknown timm architecture"):
        load_bundle(ModelSpec(kind="timm", arch="resnet18; import os"), device=CPU)
    import timm
    real = timm.create_model

    def offline(name, pretrained=False, **kw):
        if pretrained:
            raise OSError("We couldn't connect to 'https://huggingface.co'")
        return real(name, pretrained=False, **kw)
    monkeypatch.setattr(timm, "create_model", offline)
    monkeypatch.setattr(timm_source, "_hub_reachable", lambda timeout=2.0: True)   # the client's own failure
    with pytest.raises(ModelLoadError, match="offline"):
        load_bundle(ModelSpec(kind="timm", arch="resnet18", pretrained=True), device=CPU)
    monkeypatch.setattr(timm_source, "_hub_reachable", lambda timeout=2.0: False)  # no hub: fail at once
    with pytest.raises(ModelLoadError, match="not in the local cache"):
        load_bundle(ModelSpec(kind="timm", arch="resnet18", pretrained=True), device=CPU)


def test_timm_user_weights_with_own_classes_and_names():
    import timm
    torch.manual_seed(3)
    m = timm.create_model("resnet18", num_classes=3)
    ref = save_upload(st_save(m.state_dict()), "r18.safetensors")
    names = save_upload(b"cat\ndog\nbird\n", "names.txt")
    b = load_bundle(ModelSpec(kind="timm", arch="resnet18", weights=ref, classes=names), device=CPU)
    assert b.categories == ["cat", "dog", "bird"] and b.model_id == weights_sha256(m)
    two = save_upload(b"cat\ndog\n", "two.txt")
    with pytest.raises(ParameterError, match="2 class names"):
        load_bundle(ModelSpec(kind="timm", arch="resnet18", weights=ref, classes=two), device=CPU)
    with pytest.raises(WeightsError, match="does not match timm's convnext_atto"):
        load_bundle(ModelSpec(kind="timm", arch="convnext_atto", weights=ref), device=CPU)


def test_timm_vit_weights_load_at_another_input_size():
    import timm
    torch.manual_seed(4)
    m = timm.create_model("vit_tiny_patch16_224", num_classes=3, depth=2)
    ref = save_upload(st_save(m.state_dict()), "vit224.safetensors")
    # depth 2 is not the registered architecture's 12 blocks: refused with the mismatch named
    with pytest.raises(WeightsError, match="missing"):
        load_bundle(timm_spec("vit_tiny_patch16_224", 64, weights=ref), device=CPU)
    full = timm.create_model("vit_tiny_patch16_224", num_classes=3)
    ref = save_upload(st_save(full.state_dict()), "vit224full.safetensors")
    b = load_bundle(timm_spec("vit_tiny_patch16_224", 64, weights=ref), device=CPU)   # position embeddings resampled
    assert b.input_size == 64 and b.num_classes == 3
    assert b.model.pos_embed.shape[1] == 1 + 4 * 4
    torch.testing.assert_close(b.model.blocks[0].attn.qkv.weight, full.blocks[0].attn.qkv.weight)


class _Payload:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (Path.write_text, (Path(self.path), "pwned"))


def test_pickle_payload_in_a_timm_weights_file_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    buf = io.BytesIO()
    torch.save({"fc.weight": torch.zeros(2, 2), "evil": _Payload(str(marker))}, buf)
    ref = save_upload(buf.getvalue(), "evil.pth")
    with pytest.raises(WeightsError, match="refused"):
        load_bundle(ModelSpec(kind="timm", arch="resnet18", weights=ref), device=CPU)
    raw = save_upload(pickle.dumps(_Payload(str(marker))), "raw.pt")
    with pytest.raises(WeightsError):
        load_bundle(ModelSpec(kind="timm", arch="resnet18", weights=raw), device=CPU)
    assert not marker.exists()


# ------------------------------------------------------------------ Hugging Face

def test_hf_vit_from_a_folder_and_a_zip(tmp_path):
    folder = save_hf_vit(tmp_path / "trusted" / "tiny-vit")
    b = load_bundle(ModelSpec(kind="hf", weights="dir:tiny-vit"), device=CPU)
    assert b.categories == [f"kind {i}" for i in range(5)] and b.source == "hf"
    assert (b.input_size, b.preprocess.crop_mode, b.preprocess.mean) == (64, "squash", (0.5, 0.5, 0.5))
    out = b.model(b.inputs(IMAGE))
    assert isinstance(out, torch.Tensor) and out.shape == (1, 5)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for f in folder.iterdir():
            zf.write(f, f"tiny-vit/{f.name}")
        zf.writestr("../../escape.txt", "ignored")
    z = load_bundle(ModelSpec(kind="hf", weights=f"zip:{save_upload(buf.getvalue(), 'tiny-vit.zip')}"), device=CPU)
    assert z.model_id == b.model_id
    assert not (tmp_path / "escape.txt").exists()
    from analysis.core.models.hf_source import hf_model_folders
    assert hf_model_folders() == ["tiny-vit"]
    with pytest.raises(ModelLoadError, match="not a folder inside"):
        load_bundle(ModelSpec(kind="hf", weights="dir:../"), device=CPU)


def test_hf_folder_naming_remote_code_is_refused_and_runs_nothing(tmp_path):
    folder = save_hf_vit(tmp_path / "evil")
    marker = tmp_path / "pwned"
    (folder / "modeling_evil.py").write_text(f"open({str(marker)!r}, 'w').write('pwned')\n")
    cfg = json.loads((folder / "config.json").read_text())
    cfg["auto_map"] = {"AutoModelForImageClassification": "modeling_evil.EvilModel"}
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match="custom code"):
        hf_bundle_from_dir(folder, device=CPU)
    cfg.pop("auto_map")
    cfg["model_type"] = "evil"
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match="not a model type built into transformers"):
        hf_bundle_from_dir(folder, device=CPU)
    assert not marker.exists()


def test_hf_absurd_or_inconsistent_files_get_messages(tmp_path):
    with pytest.raises(ModelLoadError, match="size height 100000"):
        processor_preprocessing({"size": {"height": 100000, "width": 100000}})
    with pytest.raises(ModelLoadError, match="image_mean must be 3"):
        processor_preprocessing({"size": {"height": 64, "width": 64}, "image_mean": [0.5, 0.5]})
    with pytest.raises(ModelLoadError, match="not square"):
        processor_preprocessing({"size": {"height": 64, "width": 96}})
    folder = save_hf_vit(tmp_path / "absurd", processor={"size": {"height": 10**9, "width": 10**9}})
    with pytest.raises(ModelLoadError, match="size height"):
        hf_bundle_from_dir(folder, device=CPU)
    bad = save_hf_vit(tmp_path / "mismatch", labels=5)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["hidden_size"] = 64
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError):
        hf_bundle_from_dir(bad, device=CPU)
    (bad / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match="missing model.safetensors"):
        hf_bundle_from_dir(bad, device=CPU)
    with pytest.raises(ModelLoadError, match="lacks"):
        hf_bundle_from_zip(_zip({"config.json": "{}"}), "x.zip", device=CPU)
    with pytest.raises(ModelLoadError, match="not a zip"):
        hf_bundle_from_zip(b"PK nope", "x.zip", device=CPU)


def _zip(files: dict) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for k, v in files.items():
            zf.writestr(k, v)
    return buf.getvalue()


# ------------------------------------------------------------------ sizes

def test_fixed_size_models_are_found_and_fed_their_size():
    vit = load_bundle(timm_spec("vit_tiny_patch16_224", 64), device=CPU)
    cnn = load_bundle(timm_spec("resnet18", 64), device=CPU)
    assert fixed_input_size(vit) == 64 and fixed_input_size(cnn) is None
    x = torch.rand(1, 3, 40, 52)
    assert fit_to_model(vit, x).shape[-2:] == (64, 64) and fit_to_model(cnn, x) is x
    with pytest.raises(AssertionError):                     # what the page used to show
        vit.model(x)


# ------------------------------------------------------------------ every page's analysis call



@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    return save_hf_vit(tmp_path_factory.mktemp("hf") / "vit")


def _finite_varied(a, what):
    a = np.asarray(a, dtype=np.float64)
    assert np.isfinite(a).all(), f"{what}: not finite"
    assert a.std() > 0, f"{what}: constant"


@pytest.mark.parametrize("arch", [a for a, _ in TIMM] + ["hf_vit"])
def test_every_page_analysis_runs_on_the_models_people_bring(arch, hf_dir):
    from analysis.core.predict import predict
    from analysis.embeddings.features import features_for_images
    from analysis.inside.activations import activations
    from analysis.optimize import featurevis as FV
    from analysis.optimize.engine import run
    from analysis.saliency.methods import attribute
    from analysis.saliency.transformer import supports_attention
    torch.set_num_threads(1)
    if arch == "hf_vit":
        b = hf_bundle_from_dir(hf_dir, device=CPU)
    else:
        b = load_bundle(timm_spec(arch, dict(TIMM)[arch]), device=CPU)
    before, own_hooks = weights_sha256(b.model), hooks_left(b.model)   # transformers keeps hooks of its own
    assert before == b.model_id
    pred = predict(b, IMAGE, k=3)
    _finite_varied([r["probability"] for r in pred.rows()] + [0.0], "predict")
    methods = {"gradient": {}, "guided_backprop": {}, "integrated_gradients": {"steps": 4},
               "smoothgrad": {"samples": 2}, "occlusion": {"window": b.input_size // 2, "stride": b.input_size // 2},
               "gradcam": {}}
    if supports_attention(b):
        methods.update(attention_rollout={}, attention_relevance={})
    for m, params in methods.items():
        a = attribute(b, IMAGE, None, m, **params)
        _finite_varied(a.map, f"{arch} {m}")
    from analysis.core.layers import default_layer, layer_table
    layer = default_layer(layer_table(b))
    acts = activations(b, IMAGE, layer)
    _finite_varied(acts.maps, f"{arch} activations {layer}")
    feats, _, _ = features_for_images(b, [IMAGE, IMAGE[::-1].copy()])
    _finite_varied(feats, f"{arch} features")
    r = run(FV.class_visualization(b, 1, steps=1, size=48))      # 48 px: not what a ViT accepts
    _finite_varied(r.unit, f"{arch} class visualisation")
    from analysis.style import gatys
    r = run(gatys.style_transfer(b, IMAGE, [(IMAGE[:, ::-1].copy(), 1.0)], steps=1, size=56))   # not square
    _finite_varied(r.unit, f"{arch} style transfer")
    r = run(FV.deepdream(b, IMAGE, layer, octaves=1, steps_per_octave=1, max_side=64, preview_every=0))
    _finite_varied(r.unit, f"{arch} DeepDream")
    r = run(FV.invert(b, IMAGE, layer, steps=2, preview_every=0))
    _finite_varied(r.unit, f"{arch} feature inversion")
    r = run(gatys.synthesize_texture(b, IMAGE, size=56, steps=1, preview_every=0))
    _finite_varied(r.unit, f"{arch} texture")
    from analysis.core.datasets import Dataset
    from analysis.inside.patches import scan
    imgs = [np.roll(IMAGE, 9 * i, axis=1) for i in range(4)]
    ds = Dataset(name="four", source="folder", class_names=["x"], labels=[0] * 4, ids=[f"x/{i}.png" for i in range(4)],
                 content_hash=f"four-{arch}", _loader=lambda i: imgs[i])
    gen = scan(b, ds, layer, k=2, batch_size=4, save=False)
    try:
        while True:
            next(gen)
    except StopIteration as done:
        index = done.value
    _finite_varied(index.values, f"{arch} patch scan")
    assert hooks_left(b.model) == own_hooks
    assert weights_sha256(b.model) == before


def test_a_spec_with_preprocessing_survives_a_share_link():
    import dataclasses

    from dashboard.share import _parse_ref, encode_value
    spec = ModelSpec(kind="timm", arch="vit_tiny_patch16_224", seed=3, pretrained=False,
                     preprocess=overrides_json({"input_size": 96, "mean": [0.5, 0.5, 0.5]}))
    assert _parse_ref(ModelSpec, encode_value(dataclasses.asdict(spec))) == spec
    assert "own preprocessing" in spec.label() and "vit_tiny_patch16_224 (timm, random, seed 3)" in spec.label()


def test_maxvit_style_transfer_at_a_size_it_does_not_accept():
    """torchvision's MaxViT (fixed 224 px input, window partitions) crashed in style transfer:
    the optimisation image is now resized to what the model accepts."""
    from analysis.core.models.registry import ModelSpec
    from analysis.optimize.engine import run
    from analysis.style import gatys
    b = load_bundle(ModelSpec(kind="random", arch="maxvit_t", seed=0), device=CPU)
    r = run(gatys.style_transfer(b, IMAGE, [(IMAGE[:, ::-1].copy(), 1.0)], steps=1, size=56))
    _finite_varied(r.unit, "maxvit style transfer")
    assert r.unit.shape[-2:] == (46, 56)                 # the user's size, not the model's
