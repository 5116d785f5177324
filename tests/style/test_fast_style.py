"""Fast style transfer (analysis/style/fast.py): the transformer keeps any input size, a
network trained a few steps on a tiny set lowers its loss, saves, reloads and gives the same
output, resumes, and malicious or corrupt network files are refused with a typed error."""
import io
import json
import os
import pickle

import numpy as np
import pytest
import torch

import analysis.optimize as O
import analysis.style.fast as FS
from analysis.core.errors import ParameterError, WeightsError
from analysis.core.hooks import count_hooks
from analysis.core.images import gallery_image
from analysis.core.models.bundle import weights_sha256

TINY = dict(size=32, batch=2, width=8, n_res=1, lr=1e-2, preview_every=0, checkpoint_every=1000, preview_side=48)


@pytest.fixture(scope="module")
def content():
    """A tiny content set: two crops of gallery photos."""
    return [np.ascontiguousarray(gallery_image("coffee")[100:196, 150:246]),
            np.ascontiguousarray(gallery_image("chelsea")[50:146, 100:196])]


@pytest.fixture(scope="module")
def style():
    return np.ascontiguousarray(gallery_image("immunohistochemistry")[:96, :96])


@pytest.mark.parametrize("shape", [(1, 3, 37, 53), (2, 3, 33, 31), (1, 3, 64, 65), (1, 3, 17, 16)])
def test_transformer_keeps_the_input_size_for_odd_sizes(shape):
    torch.manual_seed(0)
    net = FS.TransformerNet(width=8, n_res=2).eval()
    with torch.no_grad():
        y = net(torch.rand(*shape))
    assert tuple(y.shape) == shape


def test_transformer_architecture_is_johnsons():
    net = FS.TransformerNet()
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size[0], c.stride[0]) for c in convs[:3]] == \
        [(3, 32, 9, 1), (32, 64, 3, 2), (64, 128, 3, 2)]
    assert len(net.res) == 5 and (convs[-1].in_channels, convs[-1].out_channels, convs[-1].kernel_size[0]) == (32, 3, 9)
    assert sum(isinstance(m, torch.nn.InstanceNorm2d) for m in net.modules()) == 5 + 2 * 5
    assert sum(isinstance(m, torch.nn.ReflectionPad2d) for m in net.modules()) == len(convs)


def test_stylize_returns_an_image_of_the_input_size():
    torch.manual_seed(0)
    net = FS.TransformerNet(width=4, n_res=1).eval()
    img = np.ascontiguousarray(gallery_image("coffee")[:41, :67])
    out = FS.stylize(net, img)
    assert out.shape == img.shape and out.dtype == np.uint8
    small = FS.stylize(net, gallery_image("coffee"), max_side=50)
    assert max(small.shape[:2]) == 50


def test_training_lowers_the_loss_saves_reloads_and_gives_the_same_output(lite0, content, style):
    before = weights_sha256(lite0.model)
    seen = []
    r = O.run(FS.train_fast_style(lite0, style, "tiny", content=content, steps=24, seed=0, **TINY),
              on_step=seen.append)
    loss = np.asarray(r.history["loss"])
    assert r.steps == 24 and len(loss) == 24 and not r.stopped
    assert loss[-4:].mean() < 0.8 * loss[:4].mean(), loss
    assert set(seen[-1].terms) == {"content", "style", "tv"} and seen[-1].checkpoint
    # saved as safetensors + JSON with the style image and history; reloads to the same output
    files = {p.name for p in r.path.iterdir()}
    assert {"network.safetensors", "optimizer.safetensors", "meta.json", "style.png", "preview.png"} <= files
    meta = json.loads((r.path / "meta.json").read_text())
    assert meta["steps_done"] == 24 and len(meta["history"]["loss"]) == 24 and meta["model_id"] == lite0.model_id
    assert meta["settings"]["width"] == 8 and meta["style_image_sha256"]
    net, meta2 = FS.load_network("tiny")
    img = gallery_image("chelsea")
    np.testing.assert_array_equal(FS.stylize(net, img, max_side=48), FS.stylize(r.net, img, max_side=48))
    np.testing.assert_array_equal(FS.stylize(net, img, max_side=48), r.preview)
    assert [i.name for i in FS.list_networks() if i.name == "tiny"] == ["tiny"]
    # the shared extractor was only read
    assert weights_sha256(lite0.model) == before and count_hooks(lite0.model) == 0
    assert all(not p.requires_grad and p.grad is None for p in lite0.model.parameters())


def test_stop_saves_a_checkpoint_and_resume_continues(lite0, content, style):
    r = O.run(FS.train_fast_style(lite0, style, "resumable", content=content, steps=50, seed=1, **TINY),
              stop_after=3)
    assert r.stopped and r.steps == 3
    assert json.loads((r.path / "meta.json").read_text())["steps_done"] == 3
    with pytest.raises(ParameterError):                     # the name exists: resume, never overwrite silently
        next(FS.train_fast_style(lite0, style, "resumable", content=content, steps=5, **TINY))
    r2 = O.run(FS.train_fast_style(lite0, None, "resumable", content=content, resume=True, steps=5))
    assert r2.steps == 5 and len(r2.history["loss"]) == 5 and r2.meta["resumed_optimizer"]
    assert r2.history["loss"][:3] == r.history["loss"][:3]
    # the same batches as an uninterrupted run (draws depend on (seed, step) only)
    full = O.run(FS.train_fast_style(lite0, style, "uninterrupted", content=content, steps=5, seed=1, **TINY))
    np.testing.assert_allclose(full.history["loss"], r2.history["loss"], rtol=1e-3)


def test_closing_the_generator_saves_a_checkpoint(lite0, content, style):
    gen = FS.train_fast_style(lite0, style, "closed", content=content, steps=50, **TINY)
    next(gen), next(gen)
    gen.close()                                              # what a page rerun does
    _, meta = FS.load_network("closed")
    assert meta["steps_done"] == 2


def _tiny_bytes() -> bytes:
    torch.manual_seed(0)
    return FS.network_bytes(FS.TransformerNet(width=4, n_res=1))


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch /tmp/convlens_fast_style_pwned",))


def test_malicious_and_corrupt_network_files_are_refused():
    good = _tiny_bytes()
    net = FS.read_network(good)
    assert net.width == 4 and net.n_res == 1
    # a pickle that would run code, under a .safetensors name and as .pt
    evil = pickle.dumps({"conv1.conv.weight": _Exploit()})
    for name in ("evil.safetensors", "evil.pt"):
        with pytest.raises(WeightsError):
            FS.read_network(evil, name)
    buf = io.BytesIO()
    torch.save({"conv1.conv.weight": torch.zeros(1)}, buf)
    with pytest.raises(WeightsError, match="pickle"):
        FS.read_network(buf.getvalue(), "model.safetensors")
    assert not os.path.exists("/tmp/convlens_fast_style_pwned")
    # truncated, empty, garbage, absurd header length
    for data in (good[: len(good) // 2], b"", b"\x00" * 64, (2 ** 60).to_bytes(8, "little") + b"{}"):
        with pytest.raises(WeightsError):
            FS.read_network(data)
    # valid safetensors, but not a convlens network / wrong shapes / NaN / bad architecture
    from safetensors.torch import save
    state = FS.TransformerNet(width=4, n_res=1).state_dict()
    with pytest.raises(WeightsError, match="not a convlens style network"):
        FS.read_network(save({k: v.contiguous() for k, v in state.items()}))
    meta = {"format": FS.FORMAT, "width": "4", "n_res": "1"}
    bad_shape = dict(state, **{"conv1.conv.weight": torch.zeros(4, 3, 3, 3)})
    with pytest.raises(WeightsError, match="shape"):
        FS.read_network(save({k: v.contiguous() for k, v in bad_shape.items()}, metadata=meta))
    nan = dict(state, **{"in1.weight": torch.full((4,), float("nan"))})
    with pytest.raises(WeightsError, match="finite"):
        FS.read_network(save({k: v.contiguous() for k, v in nan.items()}, metadata=meta))
    with pytest.raises(WeightsError, match="missing"):
        FS.read_network(save({"conv1.conv.weight": state["conv1.conv.weight"].contiguous()}, metadata=meta))
    with pytest.raises(WeightsError, match="architecture"):
        FS.read_network(save({k: v.contiguous() for k, v in state.items()},
                             metadata=dict(meta, width="100000")))


def test_import_list_and_broken_folders(session_dir):
    info = FS.import_network(_tiny_bytes(), "imported-tiny")
    assert info.error is None and info.settings["width"] == 4
    net, _ = FS.load_network("imported-tiny")
    assert isinstance(net, FS.TransformerNet)
    with pytest.raises(ParameterError):
        FS.import_network(_tiny_bytes(), "imported-tiny")          # exists
    broken = FS.networks_dir() / "broken"
    broken.mkdir(exist_ok=True)
    (broken / "meta.json").write_text("{not json")
    (broken / "network.safetensors").write_bytes(b"garbage")
    listed = {i.name: i for i in FS.list_networks()}
    assert listed["broken"].error and "corrupt" in listed["broken"].error
    with pytest.raises(WeightsError):
        FS.load_network("broken")
    FS.delete_network("broken")
    assert "broken" not in {i.name for i in FS.list_networks()}


@pytest.mark.parametrize("name", ["", "../up", "a/b", ".hidden", "x" * 65, "a b", None])
def test_network_names_are_checked(name):
    with pytest.raises(ParameterError):
        FS.check_name(name)


@pytest.mark.parametrize("bad", [dict(steps=0), dict(size=8), dict(batch=0), dict(width=2), dict(lr=0.0),
                                 dict(style_weight=-1.0), dict(style_weight=0.0, content_weight=0.0),
                                 dict(style_layers={})])
def test_impossible_training_settings_are_refused(lite0, style, bad):
    with pytest.raises(ParameterError):
        next(FS.train_fast_style(lite0, style, "never", **{**TINY, **bad}))
    assert not (FS.networks_dir() / "never").exists()
