"""Every hook registration goes through analysis.core.hooks.forward_hooks: no hook is left on
the shared model after an exception, in the hooks module itself and in each user of it."""
import threading

import pytest
import torch
from torch import nn

from analysis.core.errors import LayerError
from analysis.core.hooks import count_hooks, forward_hooks, get_module
from analysis.core.models.bundle import ModelBundle, Preprocessing


class Boom(nn.Module):
    def forward(self, x):
        raise RuntimeError("boom")


def _model(raising: bool) -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), Boom() if raising else nn.Identity(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)).eval()


def _bundle(raising: bool) -> ModelBundle:
    return ModelBundle(_model(raising), Preprocessing(16, 16, (0.5,) * 3, (0.5,) * 3), ["a", "b"],
                       "boom" if raising else "ok", "Seq", "random")


def test_forward_hooks_removed_after_error_in_block_and_in_registration():
    m = _model(raising=True)
    seen = []
    with pytest.raises(RuntimeError, match="boom"):
        with forward_hooks([(m[0], lambda mod, i, o: seen.append(o.shape))]):
            assert count_hooks(m) == 1
            m(torch.zeros(1, 3, 8, 8))
    assert seen == [(1, 4, 8, 8)] and count_hooks(m) == 0

    def pairs():   # the second layer name is wrong: the first hook is already registered
        yield m[0], lambda mod, i, o: None
        yield get_module(m, "no.such.layer"), lambda mod, i, o: None
    with pytest.raises(LayerError):
        with forward_hooks(pairs()):
            pass
    assert count_hooks(m) == 0


def test_forward_hooks_are_thread_scoped_unless_asked():
    m = _model(raising=False)
    mine, anyone = [], []
    with forward_hooks([(m[0], lambda mod, i, o: mine.append(1))]), \
            forward_hooks([(m[0], lambda mod, i, o: anyone.append(1))], this_thread_only=False):
        t = threading.Thread(target=lambda: m(torch.zeros(1, 3, 8, 8)))
        t.start()
        t.join()
        m(torch.zeros(1, 3, 8, 8))
    assert mine == [1] and anyone == [1, 1] and count_hooks(m) == 0


def test_layer_table_leaves_no_hook_when_the_forward_raises():
    from analysis.core.layers import layer_table
    b = _bundle(raising=True)
    infos = layer_table(b)
    assert count_hooks(b.model) == 0
    assert {i.name: i.calls for i in infos}["0"] == 1     # what ran before the error is kept


def test_receptive_field_leaves_no_hook_when_the_forward_raises():
    from analysis.inside.receptive import ReceptiveFieldError, receptive_field
    b = _bundle(raising=True)
    with pytest.raises(ReceptiveFieldError):
        receptive_field(b, "0", "analytic")
    assert count_hooks(b.model) == 0


def test_optimisation_captures_leave_no_hook_on_error():
    from analysis.optimize.engine import _captures
    m = _model(raising=True)
    with pytest.raises(RuntimeError, match="boom"):
        with _captures(m, frozenset({"0", "1"}), stop_early=False) as store:
            assert count_hooks(m) == 2
            m(torch.zeros(1, 3, 8, 8))
    assert set(store) == {"0", "1"} and count_hooks(m) == 0
    with pytest.raises(LayerError):
        with _captures(m, frozenset({"0", "zz.missing"}), stop_early=False):
            pass
    assert count_hooks(m) == 0
