"""A failed optimisation is flagged (issue 13): ``OptResult.converged`` and its warnings,
and the inversion strip's outliers."""
import numpy as np
import torch
from torch import nn

import analysis.optimize as O
from analysis.core.models.bundle import ModelBundle, Preprocessing
from analysis.optimize.engine import convergence
from analysis.optimize.featurevis import flag_strip_outliers, invert


def _tiny() -> ModelBundle:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(8, 8, 3, padding=1),
                      nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))
    return ModelBundle(m, Preprocessing(16, 16, (0.5,) * 3, (0.5,) * 3), ["a", "b", "c"], "t", "t", "random")


def test_convergence_rule():
    assert convergence([1.0])[0] is False and "one step" in convergence([1.0])[1][0]
    assert convergence([2.0] * 20)[0] is False
    assert convergence(list(np.linspace(-1, 0, 20)))[0] is True
    ok, notes = convergence(list(np.linspace(-1, 0, 5)), steps=50, stopped=True)
    assert ok and "Stopped after 5 of 50" in notes[0]


def test_a_run_that_cannot_converge_is_flagged_and_one_that_does_is_not():
    b = _tiny()
    obj = O.channel("2", 3)

    def go(lr, steps, clip=True):
        return O.run(O.optimize(b, obj, O.PixelImage(b, seed=0), steps=steps, lr=lr, preview_every=0, clip=clip))

    stuck = go(0.0, 10, clip=False)
    assert not stuck.converged and "did not improve" in stuck.warnings[0]
    stuck = go(0.0, 10)                       # clipping the start into range moves it by 2 %
    assert not stuck.converged and "did not improve" in stuck.warnings[0]
    one = go(0.05, 1)
    assert not one.converged and one.warnings
    good = go(0.05, 30)
    assert good.converged and good.warnings == [] and good.history[-1] > good.history[0]


def test_failed_inversion_is_flagged():
    b = _tiny()
    img = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    bad = O.run(invert(b, img, "0", steps=1, lr=0.02, preview_every=0))
    assert bad.params["feature_error"] >= 0.5
    assert not bad.converged and any("did not converge" in w for w in bad.warnings)
    good = O.run(invert(b, img, "0", steps=150, lr=0.05, preview_every=0))
    assert good.params["feature_error"] < 0.2 and good.converged and not good.warnings


def _fake(err: float) -> O.OptResult:
    return O.OptResult(np.zeros((1, 2, 2, 3), np.uint8), np.zeros((1, 3, 2, 2), np.float32),
                       list(np.linspace(-1, -err, 10)), {}, 10, False, 0.1, {"feature_error": err})


def test_strip_outlier_is_flagged():
    rs = [_fake(e) for e in (0.05, 0.04, 0.89, 0.06)]
    assert all(r.converged for r in rs)
    warns = flag_strip_outliers(rs, ["a", "b", "_relu_head", "d"])
    assert [r.converged for r in rs] == [True, True, False, True]
    assert len(warns) == 1 and warns[0].startswith("_relu_head: feature error 0.89")
    assert flag_strip_outliers([_fake(e) for e in (0.05, 0.04, 0.06)], ["a", "b", "c"]) == []
