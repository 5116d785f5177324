"""Tests of analysis.core.models.loaders and analysis.core.store: reading user weights safely,
class-name files, operator-trusted models, torchvision models (offline), devices and
the load_bundle entry point.

No test touches the network: torchvision's pretrained download is monkeypatched. Every
weights file is generated in memory from small torchvision architectures on the CPU.
"""
from __future__ import annotations

import io
import json
import os
import pickle
import urllib.error
from pathlib import Path

import pytest
import torch
import torchvision
from safetensors.torch import save as st_save
from torch import nn

import analysis.core.store as store
from analysis.core.config import Config, Limits, set_config
from analysis.core.errors import ModelLoadError, ParameterError, WeightsError
from analysis.core.models import loaders
from analysis.core.models.bundle import ModelBundle, weights_sha256
from analysis.core.models.loaders import (
    ModelSpec,
    load_bundle,
    parse_class_names,
    read_state_dict,
    select_device,
    torchvision_bundle,
    trusted_bundle,
    trusted_model_files,
    user_weights_bundle,
)

pytestmark = pytest.mark.filterwarnings("ignore:`torch\\.jit:FutureWarning")

CPU = torch.device("cpu")
MiB = 1024 * 1024


# ----------------------------------------------------------------------------- helpers

def torch_bytes(obj, **kw) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf, **kw)
    return buf.getvalue()


def seeded(arch: str, seed: int = 0, **kw) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return torchvision.models.get_model(arch, weights=None, **kw)


def assert_frozen(bundle: ModelBundle) -> None:
    """The ModelBundle invariant: eval mode everywhere, no parameter requires grad."""
    assert isinstance(bundle, ModelBundle)
    assert not bundle.model.training
    assert all(not m.training for m in bundle.model.modules())
    params = list(bundle.model.parameters())
    assert params, "a classifier without parameters is not a useful fixture"
    assert not any(p.requires_grad for p in params)
    assert len(bundle.model_id) == 64 and int(bundle.model_id, 16) >= 0


def assert_same_weights(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    own = model.state_dict()
    assert list(own) == list(state)
    for k, v in state.items():
        assert own[k].dtype == v.dtype, k
        assert torch.equal(own[k], v), k


# ----------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Small CPU models run faster single-threaded on a busy machine; restored after."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(autouse=True)
def isolated_config(tmp_path, monkeypatch):
    """A known configuration (no trusted folder, default limits, auto device) for every
    test, so a convlens.toml or CONVLENS_* variable of the machine cannot leak in."""
    for var in ("CONVLENS_DEVICE", "CONVLENS_CONFIG", "CONVLENS_TRUSTED_MODEL_DIR",
                "CONVLENS_MAX_WEIGHTS_BYTES"):
        monkeypatch.delenv(var, raising=False)
    set_config(Config(data_dir=tmp_path / "data", cache_dir=tmp_path / "cache", trusted_model_dir=None))
    yield
    set_config(None)


@pytest.fixture(scope="module")
def r18() -> nn.Module:
    return seeded("resnet18", seed=1)


@pytest.fixture(scope="module")
def r18_state(r18) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in r18.state_dict().items()}


@pytest.fixture(scope="module")
def r18_safetensors(r18_state) -> bytes:
    return st_save(r18_state)


@pytest.fixture(scope="module")
def r18_pth(r18_state) -> bytes:
    return torch_bytes(r18_state)


@pytest.fixture(scope="module")
def r18_7cls() -> nn.Module:
    return seeded("resnet18", seed=2, num_classes=7)


# ----------------------------------------------------------------------------- 1. safetensors

def test_safetensors_round_trip_identical_parameters_and_model_id(r18, r18_state, r18_safetensors):
    bundle = user_weights_bundle("resnet18", r18_safetensors, "my.safetensors", device=CPU)
    assert_same_weights(bundle.model, r18_state)
    assert bundle.model_id == weights_sha256(r18)
    assert bundle.source == "upload"
    assert bundle.architecture == "resnet18"
    assert bundle.device == CPU
    assert "my.safetensors" in bundle.name
    # 1000 outputs and no names: the ImageNet categories
    assert bundle.num_classes == 1000
    assert bundle.categories[0] == "tench"
    assert bundle.input_size == 224
    # the loaded model computes what the original computes
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        assert torch.allclose(bundle.model(x), r18.eval()(x), atol=1e-5)
    assert_frozen(bundle)


def test_read_state_dict_safetensors_returns_exact_tensors(r18_state, r18_safetensors):
    state = read_state_dict(r18_safetensors, "W.SAFETENSORS")  # suffix case-insensitive
    assert set(state) == set(r18_state)
    for k, v in r18_state.items():
        assert torch.equal(state[k], v) and state[k].dtype == v.dtype


# ----------------------------------------------------------------------------- 2. .pth variants

def test_pth_state_dict_loads(r18, r18_state, r18_pth):
    bundle = user_weights_bundle("resnet18", r18_pth, "weights.pth", device=CPU)
    assert_same_weights(bundle.model, r18_state)
    assert bundle.model_id == weights_sha256(r18)
    assert_frozen(bundle)


@pytest.mark.parametrize("filename", ["w.pt", "w.bin", "w.PTH"])
def test_other_pickle_suffixes_accepted(r18_state, r18_pth, filename):
    state = read_state_dict(r18_pth, filename)
    assert set(state) == set(r18_state)
    assert torch.equal(state["fc.weight"], r18_state["fc.weight"])


def test_legacy_non_zip_serialisation_loads(r18_state):
    data = torch_bytes(r18_state, _use_new_zipfile_serialization=False)
    assert not data.startswith(b"PK")
    state = read_state_dict(data, "old.pth")
    assert all(torch.equal(state[k], v) for k, v in r18_state.items())


@pytest.mark.parametrize("key", ["state_dict", "model_state_dict", "model"])
def test_checkpoint_dict_is_unwrapped(r18, r18_state, key):
    data = torch_bytes({key: r18_state, "epoch": 3, "best_acc": torch.tensor(0.9)})
    state = read_state_dict(data, "ckpt.pth")
    assert set(state) == set(r18_state)
    assert "epoch" not in state
    assert all(torch.equal(state[k], v) for k, v in r18_state.items())
    if key == "state_dict":  # one full build is enough
        bundle = user_weights_bundle("resnet18", data, "ckpt.pth", device=CPU)
        assert bundle.model_id == weights_sha256(r18)


def test_dataparallel_module_prefix_is_stripped(r18, r18_state):
    wrapped = {f"module.{k}": v for k, v in r18_state.items()}
    data = torch_bytes({"state_dict": wrapped, "epoch": 3})
    state = read_state_dict(data, "dp.pth")
    assert set(state) == set(r18_state)
    assert not any(k.startswith("module.") for k in state)
    bundle = user_weights_bundle("resnet18", data, "dp.pth", device=CPU)
    assert_same_weights(bundle.model, r18_state)
    assert bundle.model_id == weights_sha256(r18)


# ----------------------------------------------------------------------------- 3. fine-tuned

def test_fine_tuned_classifier_detected_without_being_told(r18_7cls):
    data = st_save(r18_7cls.state_dict())
    bundle = user_weights_bundle("resnet18", data, "ft.safetensors", device=CPU)
    assert bundle.num_classes == 7
    assert bundle.categories == [f"class {i}" for i in range(7)]
    assert bundle.model.fc.out_features == 7
    assert bundle.model_id == weights_sha256(r18_7cls)
    with torch.inference_mode():
        assert bundle.model(torch.zeros(1, 3, 64, 64)).shape == (1, 7)
    assert_frozen(bundle)


@pytest.mark.parametrize("arch", ["mobilenet_v3_small", "squeezenet1_0"])
def test_fine_tuned_classifier_other_architectures(arch):
    model = seeded(arch, seed=3, num_classes=5)
    bundle = user_weights_bundle(arch, torch_bytes(model.state_dict()), "ft.pth", device=CPU)
    assert bundle.num_classes == 5
    assert bundle.categories == [f"class {i}" for i in range(5)]
    assert bundle.model_id == weights_sha256(model)
    assert_frozen(bundle)


def test_fine_tuned_with_class_names_from_txt_and_json(r18_7cls):
    data = st_save(r18_7cls.state_dict())
    names = ["cat", "dog", "bird", "fish", "horse", "cow", "sheep"]
    txt = parse_class_names(("\n".join(names) + "\n").encode(), "classes.txt")
    b1 = user_weights_bundle("resnet18", data, "ft.safetensors", class_names=txt, device=CPU)
    assert b1.categories == names and b1.num_classes == 7

    letters = list("abcdefg")
    js = parse_class_names(json.dumps({str(i): c for i, c in enumerate(letters)}).encode(), "classes.json")
    b2 = user_weights_bundle("resnet18", data, "ft.safetensors", class_names=js, device=CPU)
    assert b2.categories == letters
    assert b1.model_id == b2.model_id == weights_sha256(r18_7cls)


def test_wrong_number_of_class_names_is_parameter_error(r18_7cls):
    data = st_save(r18_7cls.state_dict())
    with pytest.raises(ParameterError) as ei:
        user_weights_bundle("resnet18", data, "ft.safetensors", class_names=list("abcdef"), device=CPU)
    msg = str(ei.value)
    assert "6" in msg and "7" in msg and "class names" in msg


def test_class_names_for_1000_outputs(r18_safetensors):
    names = [f"n{i}" for i in range(1000)]
    bundle = user_weights_bundle("resnet18", r18_safetensors, "w.safetensors", class_names=names, device=CPU)
    assert bundle.categories == names


# ----------------------------------------------------------------------------- 4. malicious pickles

SIDE_EFFECTS: list[str] = []


def _record_side_effect(path: str) -> str:
    """What a malicious pickle would call: leaves traces a test can check."""
    SIDE_EFFECTS.append(path)
    Path(path).write_text("pwned")
    return path


class CallsGlobalFunction:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (_record_side_effect, (self.path,))


class CallsOsSystem:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


@pytest.mark.parametrize("payload_cls", [CallsGlobalFunction, CallsOsSystem])
@pytest.mark.parametrize("wrap", ["bare", "in_state_dict", "in_checkpoint"])
def test_malicious_pickle_is_refused_and_never_runs(tmp_path, r18_state, payload_cls, wrap):
    marker = tmp_path / "pwned"
    payload = payload_cls(str(marker))
    obj = {"bare": payload,
           "in_state_dict": {"conv1.weight": r18_state["conv1.weight"], "evil": payload},
           "in_checkpoint": {"state_dict": r18_state, "epoch": 1, "extra": payload}}[wrap]
    data = torch_bytes(obj)
    SIDE_EFFECTS.clear()
    with pytest.raises(WeightsError) as ei:
        read_state_dict(data, "evil.pth")
    msg = str(ei.value)
    assert "refused" in msg and "evil.pth" in msg
    assert not marker.exists()
    assert SIDE_EFFECTS == []
    # the same through the bundle builder
    with pytest.raises(WeightsError, match="refused"):
        user_weights_bundle("resnet18", data, "evil.bin", device=CPU)
    assert not marker.exists()
    assert SIDE_EFFECTS == []


@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")
def test_raw_pickle_stream_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    data = pickle.dumps(CallsGlobalFunction(str(marker)))
    SIDE_EFFECTS.clear()
    with pytest.raises(WeightsError, match="refused"):
        read_state_dict(data, "raw.pt")
    assert not marker.exists() and SIDE_EFFECTS == []


# ----------------------------------------------------------------------------- 5. corrupt / limits

def test_truncated_pth_is_reported_as_corrupt(r18_pth):
    with pytest.raises(WeightsError) as ei:
        read_state_dict(r18_pth[: len(r18_pth) // 2], "half.pth")
    msg = str(ei.value)
    assert "half.pth" in msg and "truncated or corrupt" in msg
    assert "refused" not in msg


def test_truncated_legacy_pth_is_reported_as_corrupt(r18_state):
    data = torch_bytes(r18_state, _use_new_zipfile_serialization=False)
    with pytest.raises(WeightsError, match="truncated or corrupt"):
        read_state_dict(data[: len(data) // 2], "half.pth")


@pytest.mark.parametrize("cut", ["half", "last byte", "inside header"])
def test_truncated_safetensors_is_reported_as_corrupt(r18_safetensors, cut):
    n = {"half": len(r18_safetensors) // 2, "last byte": len(r18_safetensors) - 1, "inside header": 5}[cut]
    with pytest.raises(WeightsError) as ei:
        read_state_dict(r18_safetensors[:n], "half.safetensors")
    msg = str(ei.value)
    assert "half.safetensors" in msg and "truncated or corrupt" in msg


def test_non_pickle_garbage_pth_is_reported_as_corrupt_not_malicious():
    data = b"<!DOCTYPE html><html><body>404 Not Found</body></html>"
    with pytest.raises(WeightsError) as ei:
        read_state_dict(data, "download.pth")
    assert "corrupt" in str(ei.value)
    assert "refused" not in str(ei.value)


@pytest.mark.parametrize("filename", ["w.safetensors", "w.pth"])
def test_empty_file(filename):
    with pytest.raises(WeightsError) as ei:
        read_state_dict(b"", filename)
    assert "empty" in str(ei.value) and filename in str(ei.value)


def test_over_weights_limit(r18_safetensors):
    assert len(r18_safetensors) > 40 * MiB
    with pytest.raises(WeightsError) as ei:
        read_state_dict(r18_safetensors, "big.safetensors", Limits(max_weights_bytes=1 * MiB))
    msg = str(ei.value)
    assert "big.safetensors" in msg and "limit" in msg and "1 MB" in msg
    assert f"{len(r18_safetensors) / MiB:.0f} MB" in msg
    with pytest.raises(WeightsError, match="limit"):
        user_weights_bundle("resnet18", r18_safetensors, "big.safetensors", device=CPU,
                            limits=Limits(max_weights_bytes=1 * MiB))


def test_weights_limit_boundary_and_config_default():
    data = st_save({"w": torch.arange(10, dtype=torch.float32)})
    assert torch.equal(read_state_dict(data, "w.safetensors", Limits(max_weights_bytes=len(data)))["w"],
                       torch.arange(10, dtype=torch.float32))
    with pytest.raises(WeightsError, match="limit"):
        read_state_dict(data, "w.safetensors", Limits(max_weights_bytes=len(data) - 1))
    # without explicit limits the configured ones apply
    set_config(Config(limits=Limits(max_weights_bytes=len(data) - 1)))
    with pytest.raises(WeightsError, match="limit"):
        read_state_dict(data, "w.safetensors")


@pytest.mark.parametrize("filename", ["weights.txt", "weights", "weights.onnx", "weights.pkl"])
def test_unsupported_suffix(r18_pth, filename):
    with pytest.raises(WeightsError) as ei:
        read_state_dict(r18_pth, filename)
    msg = str(ei.value)
    assert "unsupported" in msg and filename in msg and ".safetensors" in msg


@pytest.mark.parametrize("obj, needle", [
    ([torch.zeros(2), torch.ones(2)], "does not contain a state dict"),
    (torch.zeros(3), "does not contain a state dict"),
    ({}, "does not contain a state dict"),
    ({"conv.weight": torch.zeros(2), "note": "hello"}, "note"),
    ({"conv.weight": torch.zeros(2), "steps": 5}, "steps"),
    ({"state_dict": {"fc.weight": torch.zeros(1), "lr": 0.1}}, "lr"),
])
def test_pth_without_a_tensor_state_dict(obj, needle):
    with pytest.raises(WeightsError) as ei:
        read_state_dict(torch_bytes(obj), "odd.pth")
    assert needle in str(ei.value) and "odd.pth" in str(ei.value)


def test_pth_with_non_string_keys_is_weights_error():
    with pytest.raises(WeightsError):
        read_state_dict(torch_bytes({1: torch.zeros(1), 2: torch.ones(1)}), "intkeys.pth")


# ----------------------------------------------------------------------------- 6. mismatch

def test_resnet18_weights_as_resnet34_lists_missing_keys(r18_safetensors):
    with pytest.raises(WeightsError) as ei:
        user_weights_bundle("resnet34", r18_safetensors, "r18.safetensors", device=CPU)
    msg = str(ei.value)
    assert "r18.safetensors" in msg and "resnet34" in msg
    assert "missing" in msg
    assert "layer1.2.conv1.weight" in msg  # resnet34 has 3 blocks in layer1, resnet18 has 2
    assert "Pick the architecture" in msg


def test_other_family_weights_as_resnet_is_weights_error():
    # squeezenet stands in for vgg11 here: same features.N / classifier.N naming, but
    # 5 MB instead of 500 MB of weights, which keeps the test fast.
    other = seeded("squeezenet1_0")
    data = st_save(other.state_dict())
    with pytest.raises(WeightsError) as ei:
        user_weights_bundle("resnet18", data, "squeeze.safetensors", device=CPU)
    msg = str(ei.value)
    assert "'squeeze.safetensors' does not match resnet18" in msg
    assert "122 missing" in msg and "conv1.weight" in msg
    assert f"{len(other.state_dict())} unexpected" in msg and "features." in msg


def test_shape_mismatch_in_backbone_is_weights_error(r18_state):
    state = dict(r18_state)
    state["conv1.weight"] = torch.zeros(64, 3, 3, 3)
    with pytest.raises(WeightsError) as ei:
        user_weights_bundle("resnet18", st_save(state), "w.safetensors", device=CPU)
    assert "shape mismatch" in str(ei.value) and "conv1.weight" in str(ei.value)


def test_scalar_classifier_tensor_is_weights_error(r18_state):
    state = dict(r18_state)
    state["fc.bias"] = torch.tensor(0.0)
    with pytest.raises(WeightsError):
        user_weights_bundle("resnet18", torch_bytes(state), "w.pth", device=CPU)


@pytest.mark.parametrize("arch", ["resnet_9000", "", "../resnet18"])
def test_unknown_architecture_is_parameter_error(r18_safetensors, arch):
    with pytest.raises(ParameterError) as ei:
        user_weights_bundle(arch, r18_safetensors, "w.safetensors", device=CPU)
    assert repr(arch) in str(ei.value) and "Unknown" in str(ei.value)
    with pytest.raises(ParameterError):
        torchvision_bundle(arch, pretrained=False, device=CPU)


# ----------------------------------------------------------------------------- 7. class names

def test_class_names_txt_with_bom_blank_lines_and_crlf():
    data = "\ufeffcat\r\n\r\n  dog  \n\n\t\nbird\n".encode("utf-8")
    assert parse_class_names(data, "classes.txt") == ["cat", "dog", "bird"]


def test_class_names_json_list_and_dict_order():
    assert parse_class_names(b'["a", "b", "c"]', "c.json") == ["a", "b", "c"]
    assert parse_class_names(b'{"2": "c", "0": "a", "1": "b"}', "C.JSON") == ["a", "b", "c"]
    assert parse_class_names('\ufeff["é", "ß"]'.encode(), "c.json") == ["é", "ß"]


@pytest.mark.parametrize("data, needle", [
    (b'{"0": "a", "2": "c"}', "without gaps"),
    (b'{"1": "a", "2": "b"}', "without gaps"),
    (b'{"x": "a"}', "class indices"),
    (b'{"0": "a", "1": "b"', "not valid JSON"),
    (b"not json at all", "not valid JSON"),
    (b'"just a string"', "expected a list"),
    (b"[1, 2, 3]", "expected a list"),
    (b"[]", "no class names"),
])
def test_class_names_json_errors(data, needle):
    with pytest.raises(ParameterError) as ei:
        parse_class_names(data, "classes.json")
    assert needle in str(ei.value) and "classes.json" in str(ei.value)


@pytest.mark.parametrize("data, filename", [(b"\xff\xfe\x00c\x00a", "c.txt"), (b"caf\xe9\n", "c.json")])
def test_class_names_not_utf8(data, filename):
    with pytest.raises(ParameterError) as ei:
        parse_class_names(data, filename)
    assert "UTF-8" in str(ei.value) and filename in str(ei.value)


@pytest.mark.parametrize("data", [b"", b"\n\n  \n", "\ufeff".encode()])
def test_class_names_empty_txt(data):
    with pytest.raises(ParameterError, match="no class names"):
        parse_class_names(data, "c.txt")


# ----------------------------------------------------------------------------- 8. trusted models

def tiny_classifier(n_out: int = 3) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                             nn.Flatten(), nn.Linear(4, n_out)).eval()


@pytest.fixture
def trusted_dir(tmp_path) -> Path:
    root = tmp_path / "trusted"
    (root / "sub").mkdir(parents=True)
    scripted = torch.jit.script(tiny_classifier())
    scripted.save(str(root / "tiny.pt"))
    (root / "tiny.pt.json").write_text(json.dumps(
        {"categories": ["a", "b", "c"], "input_size": 32, "resize_size": 32}))
    scripted.save(str(root / "sub" / "other.ts"))
    (root / "notes.txt").write_text("not a model")
    return root


def test_trusted_torchscript_with_sidecar(trusted_dir):
    bundle = trusted_bundle("tiny.pt", root=trusted_dir, device=CPU)
    assert bundle.categories == ["a", "b", "c"]
    assert bundle.num_classes == 3
    assert bundle.preprocess.input_size == 32 and bundle.preprocess.resize_size == 32
    assert bundle.input_size == 32
    assert bundle.source == "trusted"
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        assert torch.allclose(bundle.model(x), tiny_classifier()(x), atol=1e-6)
    assert bundle.model_id == weights_sha256(tiny_classifier())
    assert_frozen(bundle)


def test_trusted_without_sidecar_uses_imagenet_preprocessing_and_class_names(trusted_dir):
    bundle = trusted_bundle("sub/other.ts", root=trusted_dir, device=CPU)
    assert bundle.categories == ["class 0", "class 1", "class 2"]
    assert bundle.preprocess.input_size == 224
    assert bundle.preprocess.mean == loaders.IMAGENET_PREPROCESS.mean
    assert_frozen(bundle)


def test_trusted_model_files_lists_models_only(trusted_dir, tmp_path):
    assert trusted_model_files(trusted_dir) == ["sub/other.ts", "tiny.pt"]
    assert trusted_model_files(tmp_path / "does-not-exist") == []
    assert trusted_model_files(None) == []  # nothing configured
    set_config(Config(trusted_model_dir=trusted_dir))
    assert trusted_model_files() == ["sub/other.ts", "tiny.pt"]


def test_trusted_from_config_and_load_bundle(trusted_dir):
    set_config(Config(trusted_model_dir=trusted_dir))
    b1 = trusted_bundle("tiny.pt", device=CPU)
    b2 = load_bundle(ModelSpec(kind="trusted", weights="tiny.pt"), device=CPU)
    assert b1.categories == b2.categories == ["a", "b", "c"]
    assert b1.model_id == b2.model_id
    assert_frozen(b2)


def test_trusted_full_pickled_module(trusted_dir):
    torch.save(tiny_classifier(), trusted_dir / "full.pth")
    bundle = trusted_bundle("full.pth", root=trusted_dir, device=CPU)
    assert bundle.architecture == "Sequential"
    assert bundle.num_classes == 3
    assert bundle.model_id == weights_sha256(tiny_classifier())
    assert_frozen(bundle)


def test_trusted_file_that_is_not_a_module(trusted_dir):
    torch.save(tiny_classifier().state_dict(), trusted_dir / "sd.pth")
    with pytest.raises(ModelLoadError, match="not a torch module"):
        trusted_bundle("sd.pth", root=trusted_dir, device=CPU)


def test_trusted_corrupt_file(trusted_dir):
    (trusted_dir / "bad.pt").write_bytes((trusted_dir / "tiny.pt").read_bytes()[:100])
    with pytest.raises(ModelLoadError, match="bad.pt"):
        trusted_bundle("bad.pt", root=trusted_dir, device=CPU)


def test_trusted_path_escapes_are_refused(trusted_dir, tmp_path):
    outside = tmp_path / "outside.pt"
    torch.jit.script(tiny_classifier()).save(str(outside))
    # the file exists and loads: only its location is wrong
    for relname in ("../outside.pt", "sub/../../outside.pt", str(outside)):
        with pytest.raises(ModelLoadError) as ei:
            trusted_bundle(relname, root=trusted_dir, device=CPU)
        assert "not a file inside the trusted model folder" in str(ei.value)
    # a symlink inside the folder pointing outside is refused as well
    (trusted_dir / "link.pt").symlink_to(outside)
    with pytest.raises(ModelLoadError, match="not a file inside"):
        trusted_bundle("link.pt", root=trusted_dir, device=CPU)
    # the folder itself and missing files
    for relname in ("", ".", "sub", "missing.pt"):
        with pytest.raises(ModelLoadError):
            trusted_bundle(relname, root=trusted_dir, device=CPU)


def test_no_trusted_dir_configured_nonexistent_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    set_config(Config(trusted_model_dir=None))
    with pytest.raises(ModelLoadError):
        trusted_bundle("model.pt", root=None, device=CPU)
    with pytest.raises(ModelLoadError):
        load_bundle(ModelSpec(kind="trusted", weights="model.pt"), device=CPU)


def test_no_trusted_dir_configured_refuses_even_files_in_cwd(tmp_path, monkeypatch):
    torch.jit.script(tiny_classifier()).save(str(tmp_path / "model.pt"))
    monkeypatch.chdir(tmp_path)
    set_config(Config(trusted_model_dir=None))
    with pytest.raises(ModelLoadError) as ei:
        trusted_bundle("model.pt", root=None, device=CPU)
    assert "No trusted model folder is configured" in str(ei.value)


def test_trusted_missing_root_dir(tmp_path):
    with pytest.raises(ModelLoadError, match="No trusted model folder"):
        trusted_bundle("tiny.pt", root=tmp_path / "nope", device=CPU)


def test_trusted_sidecar_wrong_category_count(trusted_dir):
    (trusted_dir / "tiny.pt.json").write_text(json.dumps({"categories": ["a", "b"], "input_size": 32}))
    with pytest.raises(ModelLoadError) as ei:
        trusted_bundle("tiny.pt", root=trusted_dir, device=CPU)
    msg = str(ei.value)
    assert "tiny.pt.json" in msg and "2 categories" in msg and "3 outputs" in msg


def test_trusted_sidecar_invalid_json(trusted_dir):
    (trusted_dir / "tiny.pt.json").write_text("{categories: [")
    with pytest.raises(ModelLoadError, match="not valid JSON"):
        trusted_bundle("tiny.pt", root=trusted_dir, device=CPU)


# ----------------------------------------------------------------------------- 9. torchvision

def test_pretrained_offline_names_alternatives(monkeypatch):
    calls = []

    def offline(self, *args, **kwargs):
        calls.append(self)
        raise urllib.error.URLError("offline")

    monkeypatch.setattr(torchvision.models._api.WeightsEnum, "get_state_dict", offline)
    with pytest.raises(ModelLoadError) as ei:
        torchvision_bundle("resnet18", pretrained=True, device=CPU)
    msg = str(ei.value)
    assert calls and calls[0] is torchvision.models.ResNet18_Weights.DEFAULT
    assert "offline" in msg and "resnet18" in msg
    assert "EfficientNet-Lite0" in msg and "random weights" in msg
    assert not isinstance(ei.value, WeightsError)
    # through the entry point as well
    with pytest.raises(ModelLoadError, match="offline"):
        load_bundle(ModelSpec(kind="torchvision", arch="resnet18"), device=CPU)


@pytest.mark.parametrize("exc", [OSError("disk"), TimeoutError("slow"), ConnectionError("reset")])
def test_pretrained_other_download_failures(monkeypatch, exc):
    def fail(self, *args, **kwargs):
        raise exc

    monkeypatch.setattr(torchvision.models._api.WeightsEnum, "get_state_dict", fail)
    with pytest.raises(ModelLoadError, match="Alternatives"):
        torchvision_bundle("squeezenet1_0", pretrained=True, device=CPU)


def test_pretrained_uses_downloaded_state_dict(monkeypatch):
    """With the download replaced by a known state dict, the bundle holds exactly it."""
    fake = seeded("resnet18", seed=42)
    kwargs_seen = {}

    def fake_download(self, *args, **kwargs):
        kwargs_seen.update(kwargs)
        return {k: v.clone() for k, v in fake.state_dict().items()}

    monkeypatch.setattr(torchvision.models._api.WeightsEnum, "get_state_dict", fake_download)
    bundle = torchvision_bundle("resnet18", pretrained=True, device=CPU)
    assert kwargs_seen.get("check_hash") is True
    assert bundle.model_id == weights_sha256(fake)
    assert bundle.source == "torchvision"
    assert bundle.num_classes == 1000 and bundle.categories[0] == "tench"
    assert bundle.input_size == 224
    assert_frozen(bundle)


def test_random_weights_are_seeded_and_do_not_download(monkeypatch):
    def no_network(self, *args, **kwargs):
        raise AssertionError("random weights must not download anything")

    monkeypatch.setattr(torchvision.models._api.WeightsEnum, "get_state_dict", no_network)
    rng_before = torch.random.get_rng_state()
    a = torchvision_bundle("resnet18", pretrained=False, device=CPU, seed=0)
    b = torchvision_bundle("resnet18", pretrained=False, device=CPU, seed=0)
    c = torchvision_bundle("resnet18", pretrained=False, device=CPU, seed=1)
    assert torch.equal(torch.random.get_rng_state(), rng_before)  # global RNG untouched
    assert a.model_id == b.model_id
    assert a.model_id != c.model_id
    assert a.model is not b.model
    assert a.source == "random" and "seed 0" in a.name and "seed 1" in c.name
    d = load_bundle(ModelSpec(kind="random", arch="resnet18", seed=1), device=CPU)
    assert d.model_id == c.model_id
    for bundle in (a, c, d):
        assert_frozen(bundle)


def test_random_small_architectures():
    for arch in ("squeezenet1_0", "mobilenet_v3_small"):
        bundle = torchvision_bundle(arch, pretrained=False, device=CPU, seed=5)
        assert bundle.num_classes == 1000
        assert bundle.model_id == torchvision_bundle(arch, pretrained=False, device=CPU, seed=5).model_id
        assert_frozen(bundle)


# ----------------------------------------------------------------------------- 10. devices

def test_select_device_env_cpu(monkeypatch):
    monkeypatch.setenv("CONVLENS_DEVICE", "cpu")
    assert select_device() == torch.device("cpu")
    assert select_device("cpu") == torch.device("cpu")


def test_select_device_config(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    set_config(Config(device="cpu"))
    assert select_device() == torch.device("cpu")


def test_select_device_auto_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert select_device() == torch.device("cpu")


@pytest.mark.parametrize("how", ["env", "arg", "config"])
def test_select_device_cuda_unavailable(monkeypatch, how):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    if how == "env":
        monkeypatch.setenv("CONVLENS_DEVICE", "cuda")
    elif how == "config":
        set_config(Config(device="cuda"))
    with pytest.raises(ParameterError) as ei:
        select_device("cuda" if how == "arg" else None)
    assert "CUDA is not available" in str(ei.value) and "'cuda'" in str(ei.value)


@pytest.mark.parametrize("name", ["nonsense", "gpu", "cuda:x"])
def test_select_device_nonsense(monkeypatch, name):
    monkeypatch.setenv("CONVLENS_DEVICE", name)
    with pytest.raises(ParameterError) as ei:
        select_device()
    assert repr(name) in str(ei.value) and "not a device" in str(ei.value)


# ----------------------------------------------------------------------------- 11. store + load_bundle

def test_store_round_trip_and_load_bundle_upload(tmp_path, r18, r18_safetensors):
    up = tmp_path / "uploads"
    digest = store.save_upload(r18_safetensors, "some/dir/r18.safetensors", up)
    assert len(digest) == 64
    assert store.save_upload(r18_safetensors, "again.safetensors", up) == digest  # stored once
    data, filename = store.read_upload(digest, up)
    assert data == r18_safetensors and filename == "r18.safetensors"
    assert not list(up.glob(".*.tmp*"))

    bundle = load_bundle(ModelSpec(kind="upload", arch="resnet18", weights=digest), device=CPU, uploads_dir=up)
    assert bundle.model_id == weights_sha256(r18)
    assert bundle.source == "upload" and "r18.safetensors" in bundle.name
    assert_frozen(bundle)


def test_load_bundle_upload_with_class_names(tmp_path, r18_7cls):
    up = tmp_path / "uploads"
    w = store.save_upload(st_save(r18_7cls.state_dict()), "ft.safetensors", up)
    c = store.save_upload(json.dumps(list("abcdefg")).encode(), "names.json", up)
    bundle = load_bundle(ModelSpec(kind="upload", arch="resnet18", weights=w, classes=c),
                         device=CPU, uploads_dir=up)
    assert bundle.categories == list("abcdefg")
    bad = store.save_upload(b"a\nb\n", "names.txt", up)
    with pytest.raises(ParameterError, match="2 class names"):
        load_bundle(ModelSpec(kind="upload", arch="resnet18", weights=w, classes=bad), device=CPU, uploads_dir=up)


def test_load_bundle_upload_defaults_to_configured_data_dir(tmp_path, r18_safetensors):
    set_config(Config(data_dir=tmp_path / "cfgdata"))
    digest = store.save_upload(r18_safetensors, "w.safetensors")
    assert (tmp_path / "cfgdata" / "uploads" / digest).is_file()
    bundle = load_bundle(ModelSpec(kind="upload", arch="resnet18", weights=digest), device=CPU)
    assert bundle.source == "upload"


@pytest.mark.parametrize("digest", ["", "abc", "../../etc/passwd", "A" * 64, "g" * 64, "0" * 63])
def test_read_upload_invalid_digest(tmp_path, digest):
    with pytest.raises(ParameterError, match="sha256"):
        store.read_upload(digest, tmp_path)


def test_read_upload_unknown_digest(tmp_path):
    with pytest.raises(ParameterError, match="not stored"):
        store.read_upload("0" * 64, tmp_path)
    with pytest.raises(ParameterError):
        load_bundle(ModelSpec(kind="upload", arch="resnet18", weights="0" * 64), device=CPU, uploads_dir=tmp_path)


def test_read_upload_without_sidecar_falls_back_to_digest(tmp_path):
    digest = store.save_upload(b"a\nb\n", "names.txt", tmp_path)
    (tmp_path / f"{digest}.json").unlink()
    assert store.read_upload(digest, tmp_path) == (b"a\nb\n", digest)


def test_uploaded_weights_with_wrong_suffix_are_refused(tmp_path, r18_pth):
    digest = store.save_upload(r18_pth, "weights.txt", tmp_path)
    with pytest.raises(WeightsError, match="unsupported"):
        load_bundle(ModelSpec(kind="upload", arch="resnet18", weights=digest), device=CPU, uploads_dir=tmp_path)


def test_load_bundle_unknown_kind():
    with pytest.raises(ParameterError, match="Unknown model kind"):
        load_bundle(ModelSpec(kind="bogus"), device=CPU)


def test_model_spec_is_hashable_and_labelled():
    a = ModelSpec(kind="random", arch="resnet18", seed=3)
    assert a == ModelSpec(kind="random", arch="resnet18", seed=3) and hash(a) == hash(ModelSpec("random", "resnet18", seed=3))
    assert a.label() == "resnet18 (random, seed 3)"
    assert ModelSpec(kind="upload", arch="vgg11").label() == "vgg11 (uploaded weights)"


# ----------------------------------------------------------------------------- 12. frozen bundles

def test_bundle_freezes_a_training_model():
    model = tiny_classifier().train()
    assert model.training and all(p.requires_grad for p in model.parameters())
    bundle = ModelBundle(model=model, preprocess=loaders.IMAGENET_PREPROCESS,
                         categories=["a", "b", "c"], name="t", architecture="t", source="trusted")
    assert_frozen(bundle)
    assert bundle.model_id == weights_sha256(tiny_classifier())


# ------------------------------------------------------------------ inputs that cost more than they look (issue 14)

def test_zero_stride_views_claiming_gigabytes_are_refused_before_allocation():
    """A tiny .pth whose fc is a zero-stride view claiming 2,000,000 × 512 floats (4 GB)."""
    import resource
    row = torch.zeros(512)
    state = {"fc.weight": row.expand(2_000_000, 512), "fc.bias": torch.zeros(1).expand(2_000_000)}
    data = torch_bytes(state)
    assert len(data) < 64 * 1024
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(WeightsError, match="2,000,000"):
        read_state_dict(data, "fc.pth")
    state = {"w": torch.zeros(1024).expand(50_000, 1024)}          # under the class bound, 200 MB claimed
    with pytest.raises(WeightsError, match="in memory"):
        read_state_dict(torch_bytes(state), "w.pth", Limits(max_weights_bytes=100 * 2**20))
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200 * 1024       # KiB: nothing big allocated
    assert read_state_dict(torch_bytes(state), "w.pth", Limits(max_weights_bytes=300 * 2**20))["w"].shape == (50_000, 1024)


def test_class_name_files_are_bounded():
    with pytest.raises(ParameterError, match="limit for class-name files"):
        parse_class_names(b"x\n" * (5 * 2**20), "big.txt")
    with pytest.raises(ParameterError, match="more than 100,000"):
        parse_class_names("\n".join(str(i) for i in range(100_001)).encode(), "many.txt")
    with pytest.raises(ParameterError, match="longer than"):
        parse_class_names(b"cat\n" + b"x" * 1000 + b"\n", "long.txt")
    assert parse_class_names(b"cat\ndog\n", "ok.txt") == ["cat", "dog"]
