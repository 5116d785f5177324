"""Hooks live only inside context managers; the shared model never keeps one."""
import threading

import pytest
import torch
from torch import nn

from analysis.core.errors import LayerError
from analysis.core.hooks import capture, count_hooks, get_module, run_truncated, truncate_after


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
