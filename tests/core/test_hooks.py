"""Hooks live only inside context managers; the shared model never keeps one."""
import threading

import pytest
import torch
from torch import nn

from analysis.core.errors import LayerError
from analysis.core.hooks import capture, count_hooks, get_module, graph_from, run_truncated, truncate_after


class Boom(nn.Module):
    def forward(self, x):
        raise RuntimeError("boom")


def tiny():
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(4, 2)).eval()


def test_capture_records_outputs_and_removes_hooks():
    m = tiny()
    x = torch.randn(2, 3, 8, 8)
    with capture(m, ["0", "1"]) as acts:
        assert count_hooks(m) == 2
        m(x)
    assert count_hooks(m) == 0
    assert acts["0"].shape == (2, 4, 8, 8)
    assert torch.equal(acts["1"], acts["0"].clamp(min=0))
    assert acts.calls == {"0": 1, "1": 1}


def test_no_hook_left_after_bad_layer():
    m = tiny()
    with pytest.raises(LayerError):
        with capture(m, ["0", "does.not.exist"]):
            m(torch.randn(1, 3, 8, 8))
    assert count_hooks(m) == 0


def test_no_hook_left_after_raising_module():
    m = nn.Sequential(nn.Conv2d(3, 4, 3), Boom())
    with pytest.raises(RuntimeError, match="boom"):
        with capture(m, ["0"]):
            m(torch.randn(1, 3, 8, 8))
    assert count_hooks(m) == 0


def test_no_hook_left_after_bad_target(lite0, chelsea):
    x = lite0.inputs(chelsea).requires_grad_(True)
    with lite0.lock:
        with pytest.raises(IndexError):
            with capture(lite0.model, ["_blocks.15"], grads=True):
                lite0.model(x)[0, 5000].backward()          # target class out of range
    assert count_hooks(lite0.model) == 0


def test_gradient_capture_matches_autograd():
    m = tiny()
    x = torch.randn(1, 3, 8, 8, requires_grad=True)
    with capture(m, ["0"], grads=True, detach=False) as acts:
        y = m(x)[0, 1]
        (g_auto,) = torch.autograd.grad(y, acts["0"], retain_graph=True)
        y.backward()
    assert torch.allclose(acts.grads["0"], g_auto)
    assert count_hooks(m) == 0


def test_truncate_after_stops_the_forward():
    seen = []
    m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3))
    m[2].register_forward_hook(lambda *a: seen.append(1))
    with truncate_after(m, "1") as acts:
        run_truncated(m, torch.randn(1, 3, 8, 8))
    assert acts["1"].shape == (1, 4, 6, 6) and not seen
    assert count_hooks(m) == 1                       # only the test's own hook remains


def test_get_module():
    m = tiny()
    assert get_module(m, "") is m and isinstance(get_module(m, "4"), nn.Linear)
    with pytest.raises(LayerError, match="no layer named"):
        get_module(m, "9")


def test_hooks_are_thread_scoped():
    """Another thread's forward on the shared model does not reach this thread's capture."""
    m = tiny()
    mine, other = torch.ones(1, 3, 8, 8), -torch.ones(1, 3, 8, 8)
    with capture(m, ["0"]) as acts:
        m(mine)
        t = threading.Thread(target=lambda: m(other))
        t.start()
        t.join()
    assert acts.calls["0"] == 1
    with torch.no_grad():
        assert torch.equal(acts["0"], m[0](mine))


def test_torchscript_models_give_layer_errors():
    from analysis.core.layers import layer_table
    from analysis.core.models.bundle import ModelBundle, Preprocessing
    sm = torch.jit.script(nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten()))
    with pytest.raises(LayerError, match="TorchScript"):
        get_module(sm, "0")
    b = ModelBundle(sm, Preprocessing(8, 8, (0.5,) * 3, (0.5,) * 3), [str(i) for i in range(4)], "ts", "TS", "trusted")
    infos = layer_table(b)
    assert [i.name for i in infos] == ["0", "1", "2"] and all(i.output_shape is None for i in infos)


# -- graph_from: the graph starts at the layer -------------------------------------------

def _grad_from_input(model, layer, x, target):
    """The reference: a forward from an input that requires grad, gradient at the layer."""
    xg = x.detach().requires_grad_(True)
    with torch.enable_grad(), capture(model, layer, detach=False) as acts:
        out = model(xg)
        (g,) = torch.autograd.grad(out[:, target].sum(), acts[layer])
    return out.detach(), acts[layer].detach(), g


def _grad_from_layer(model, layer, x, target):
    with graph_from(model, layer) as acts:
        out = model(x)
        (g,) = torch.autograd.grad(out[:, target].sum(), acts[layer])
    return out.detach(), acts[layer].detach(), g


class InplaceAfter(nn.Module):
    """conv -> in-place ReLU -> pool -> (conv output reused by a skip) -> linear."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        a = self.conv(x)
        b = self.relu(a)                       # rewrites conv's output in place
        c = self.conv2(b) * torch.sigmoid(x.mean(1, keepdim=True)) + b
        return self.fc(c.mean(dim=(2, 3)))


class TupleOut(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        y = self.conv(x)
        return y, y.detach().sum()


class UsesTuple(nn.Module):
    def __init__(self):
        super().__init__()
        self.block = TupleOut()
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        y, _ = self.block(x)
        return self.fc(torch.tanh(y).mean(dim=(2, 3)))


@pytest.mark.parametrize("make, layer", [(tiny, "0"), (InplaceAfter, "conv"), (InplaceAfter, "relu"),
                                          (InplaceAfter, "conv2"), (UsesTuple, "block")])
def test_graph_from_gives_the_gradient_of_a_forward_from_the_input(make, layer):
    torch.manual_seed(0)
    m = make().eval()
    for p in m.parameters():
        p.requires_grad_(False)
    x = torch.randn(3, 3, 8, 8)
    ref = _grad_from_input(m, layer, x, 1)
    got = _grad_from_layer(m, layer, x, 1)
    for r, g in zip(ref, got):
        assert torch.equal(r, g)
    assert float(got[2].abs().sum()) > 0
    assert count_hooks(m) == 0


def test_graph_from_matches_on_the_embedded_models(lite0, digits, chelsea):
    from analysis.core.layers import last_conv_block, layer_table
    for bundle in (lite0, digits):
        layer = last_conv_block(layer_table(bundle))
        x = bundle.inputs([chelsea, chelsea[::-1].copy()])
        with bundle.lock:
            ref = _grad_from_input(bundle.model, layer, x, 3)
            got = _grad_from_layer(bundle.model, layer, x, 3)
        for r, g in zip(ref, got):
            assert torch.equal(r, g), bundle.name
        assert count_hooks(bundle.model) == 0


def test_graph_from_records_nothing_before_the_layer_and_restores_grad_mode():
    m = InplaceAfter().eval()
    seen = {}

    def spy(name):
        def hook(mod, inputs, output):
            seen[name] = (output.requires_grad, torch.is_grad_enabled())
        return hook
    handles = [m.conv.register_forward_hook(spy("conv")), m.fc.register_forward_hook(spy("fc"))]
    for p in m.parameters():
        p.requires_grad_(False)
    with torch.enable_grad():
        with graph_from(m, "relu") as acts:
            assert not torch.is_grad_enabled()
            out = m(torch.randn(1, 3, 8, 8))
            assert torch.is_grad_enabled()              # on after the layer, for the score
        assert torch.is_grad_enabled()                  # the caller's mode is back
    assert seen["conv"] == (False, False)               # before the layer: no graph
    assert seen["fc"] == (True, True)                   # after it: the graph from the leaf
    assert acts["relu"].is_leaf and acts["relu"].requires_grad and out.requires_grad
    for h in handles:
        h.remove()
    with torch.no_grad():
        with graph_from(m, "relu"):
            m(torch.randn(1, 3, 8, 8))
            assert torch.is_grad_enabled()
        assert not torch.is_grad_enabled()              # the caller's no_grad is back


def test_graph_from_leaves_no_hook_and_the_mode_after_errors():
    m = nn.Sequential(nn.Conv2d(3, 4, 3), Boom())
    for bad in ("1", "0"):
        with pytest.raises(RuntimeError, match="boom"):
            with graph_from(m, bad):
                m(torch.randn(1, 3, 8, 8))
        assert count_hooks(m) == 0 and torch.is_grad_enabled()
    with pytest.raises(LayerError):
        with graph_from(m, "nope"):
            pass
    assert count_hooks(m) == 0 and torch.is_grad_enabled()
