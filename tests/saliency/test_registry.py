"""The method table and its parameter schemas: one rule set for attribute(), widgets and links."""
import math

import numpy as np
import pytest
import torch
from torch import nn

from analysis.core.errors import ParameterError
from analysis.core.models.bundle import ModelBundle, Preprocessing
from analysis.core.schema import Param, check, clamp, coerce, validate
from analysis.saliency import registry
from analysis.saliency.methods import attribute
from analysis.saliency.registry import DESCRIPTION_WIDTH, MapOutput, register


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean((2, 3)))


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return ModelBundle(Tiny(), Preprocessing(16, 16, (0.5,) * 3, (0.5,) * 3), ["a", "b", "c"], "tiny", "Tiny", "random")


@pytest.fixture(scope="module")
def img():
    return np.random.default_rng(0).integers(0, 255, (16, 16, 3), dtype=np.uint8)


# ------------------------------------------------------------------ the rules

def test_one_rule_set_bools_nan_ranges_types():
    n = Param("window", "int", 16, 2, 112)
    f = Param("noise", "float", 0.15, 0.0, 0.5)
    c = Param("baseline", "choice", "mean", choices=("mean", "zero"))
    assert check(n, 3) == 3 and check(n, 3.0) == 3 and isinstance(check(n, 3.0), int)
    assert check(f, 0) == 0.0 and isinstance(check(f, 0), float)
    for p, bad in [(n, True), (n, False), (f, True), (n, 3.5), (n, math.nan), (f, math.nan), (f, math.inf),
                   (n, "16"), (n, None), (n, 1), (n, 113), (f, 0.51), (f, -0.01), (c, "black"), (c, True),
                   (Param("flag", "bool", False), 1)]:
        with pytest.raises(ParameterError, match=p.name):
            check(p, bad)
    with pytest.raises(ValueError):
        Param("x", "int", 500, 1, 10)                   # a default outside its own range


def test_validate_and_coerce():
    schema = (Param("window", "int", 16, 2, 112), Param("batch_size", "int", 32, 1, 128, ui=False))
    assert validate(schema, {"window": 8}) == {"window": 8, "batch_size": 32}
    with pytest.raises(ParameterError, match="colour"):
        validate(schema, {"colour": 1}, owner="Occlusion")
    with pytest.raises(ParameterError, match="batch_size"):
        validate(schema, {"batch_size": 729})
    # from a link: only what has a widget; numbers clamped; the rest the default; a message each
    got, msgs = coerce(schema, {"window": 5000, "batch_size": 729})
    assert got == {"window": 112} and len(msgs) == 2
    assert any("batch_size" in m for m in msgs) and any("window" in m and "112" in m for m in msgs)
    got, msgs = coerce(schema, {"window": math.nan})
    assert got == {"window": 16} and "window" in msgs[0]
    got, msgs = coerce(schema, [1, 2, 3])
    assert got == {"window": 16} and "list" in msgs[0]
    assert clamp(schema[0], True) == (16, clamp(schema[0], True)[1]) and "window" in clamp(schema[0], True)[1]


# ------------------------------------------------------------------ the table

def test_every_method_declares_its_schema_and_description():
    assert {"occlusion", "occlusion_fast", "gradient", "guided_backprop", "integrated_gradients", "smoothgrad",
            "gradcam", "guided_gradcam"} <= set(registry.names())
    for m in registry.methods():
        assert m.title and m.description and callable(m.fn)
        assert all(len(line) <= DESCRIPTION_WIDTH for line in m.wrapped.splitlines())
        assert " ".join(m.wrapped.split()) == " ".join(m.description.split())
    assert registry.get("occlusion").signed and not registry.get("gradient").signed
    assert not registry.get("occlusion").param("batch_size").ui            # no widget: never from a link
    with pytest.raises(ParameterError, match="Unknown saliency method"):
        registry.get("magic")
    with pytest.raises(ParameterError):
        registry.get(["gradient"])


def test_attribute_validates_against_the_schema(tiny, img):
    for bad, name in [(dict(window=True), "window"), (dict(window=math.nan), "window"),
                      (dict(batch_size=729), "batch_size"), (dict(stride=0), "stride"),
                      (dict(baseline="black"), "baseline"), (dict(colour=3), "colour")]:
        with pytest.raises(ParameterError, match=name):
            attribute(tiny, img, 0, "occlusion", **bad)
    with pytest.raises(ParameterError, match="noise"):
        attribute(tiny, img, 0, "smoothgrad", noise=float("nan"))
    a = attribute(tiny, img, 0, "occlusion", window=8, stride=8.0)
    assert a.params["window"] == 8 and a.params["stride"] == 8 and isinstance(a.params["stride"], int)
    assert a.params["batch_size"] == 32 and a.params["baseline"] == "mean"      # recorded with defaults


def test_a_method_is_one_entry(tiny, img):
    """A toy method registered from another module: attribute() runs it with validated
    parameters, and it is listed in the table (the page test sees it on the page)."""
    seen = {}

    @register("toy_centre", "Toy centre", "A disc around the centre, for tests. " * 5,
              params=(Param("radius", "int", 4, 1, 8, help="disc radius"),), signed=False)
    def toy(bundle, x, target, *, progress=None, radius=4):
        seen["radius"], seen["target"] = radius, target
        h, w = x.shape[-2:]
        yy, xx = np.mgrid[:h, :w]
        return MapOutput(map=((yy - h / 2) ** 2 + (xx - w / 2) ** 2 <= radius ** 2).astype(np.float32))
    try:
        assert "toy_centre" in registry.names()
        a = attribute(tiny, img, 2, "toy_centre", radius=3)
        assert seen == {"radius": 3, "target": 2} and a.map.sum() > 0 and a.title == "Toy centre"
        assert a.params == {"radius": 3}
        assert attribute(tiny, img, 2, "toy_centre").params == {"radius": 4}
        with pytest.raises(ParameterError, match="radius"):
            attribute(tiny, img, 2, "toy_centre", radius=9)
        with pytest.raises(ValueError):
            register("toy_centre", "again", "dup")(toy)                  # one name, one method
        with pytest.raises(ValueError):
            register("Bad Name", "x", "y")(toy)
    finally:
        registry.unregister("toy_centre")
    assert "toy_centre" not in registry.names()
