"""What a new user sees (issue 13): crisp first-layer filters of the digits CNN in one
grid, the grey crop a grey model sees, the Activations layer picker in its row, readable
log-axis ticks of the loss charts."""
import numpy as np
import pytest
from streamlit.testing.v1 import AppTest
from streamlit.testing.v1.element_tree import Block

from tests.paths import REPO

APP = str(REPO / "dashboard" / "app.py")


def _ok(at):
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def _digits(page: str | None = None) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=600).run()
    at.selectbox(key="sb_model_kind").set_value("digits").run()
    if page:
        at.switch_page(f"../pages/{page}.py").run()
    _ok(at)
    return at


def _captions(at) -> list[str]:
    return [im.caption for e in at.get("image") for im in e.proto.imgs]


# ------------------------------------------------------------------ filters

def test_kernel_grid_scales_by_a_whole_factor_without_blur():
    from dashboard.render import kernel_grid
    rng = np.random.default_rng(0)
    kernels = [rng.integers(0, 256, (3, 3), dtype=np.uint8) for _ in range(16)]
    grid = kernel_grid(kernels, cols=16, max_width=800, max_cell=48, pad=2)
    f = 48 // 3
    assert grid.shape == (3 * f, 16 * 3 * f + 15 * 2, 3) and grid.shape[1] <= 800
    for i, k in enumerate(kernels):                              # every weight is one flat f × f square
        x0 = i * (3 * f + 2)
        cell = grid[:, x0:x0 + 3 * f, 0]
        assert np.array_equal(cell, np.repeat(np.repeat(k, f, 0), f, 1))
    wide = kernel_grid([kernels[0]] * 64, cols=64, max_width=800, pad=1)
    assert wide.shape[1] <= 800 and wide.shape[1] == 64 * 3 * ((800 - 63) // (64 * 3)) + 63


def test_digits_first_layer_filters_are_one_grid():
    at = _digits("inside")
    assert any("1 × 3 × 3" in c.value for c in at.caption)
    assert any(c.startswith("all 16 filters") for c in _captions(at))      # every filter at once
    assert not any(n.key == "in_f_idx" for n in at.number_input)            # no one-filter-at-a-time picker
    at.selectbox(key="in_f_layer").set_value("features.conv2").run()        # 32 × 16: a row per filter
    _ok(at)
    assert any(c.startswith("all 32 filters") and "one column per input channel" in c for c in _captions(at))


# ------------------------------------------------------------------ home

def test_model_view_is_what_the_model_sees(digits, lite0, chelsea):
    from dashboard.render import model_view
    seen = model_view(digits.preprocess, chelsea)
    assert seen.shape[0] >= 224 and seen.shape[0] % digits.input_size == 0
    assert np.array_equal(seen[..., 0], seen[..., 1]) and np.array_equal(seen[..., 1], seen[..., 2])   # grey
    f = seen.shape[0] // digits.input_size
    x = digits.preprocess.to_unit(digits.preprocess.geometry(chelsea))[0, 0].numpy()
    assert np.abs(seen[::f, ::f, 0] / 255.0 - x).max() <= 1 / 255 + 1e-6    # the model's input, pixel for pixel
    rgb = model_view(lite0.preprocess, chelsea)
    assert np.abs(rgb.astype(int) - lite0.preprocess.geometry(chelsea).astype(int)).max() <= 1


def test_digits_home_says_grey():
    at = _digits()
    assert any("grey crop the model sees" in c for c in _captions(at))


# ------------------------------------------------------------------ layout

def _path_to(node, key, path=()):
    """Block types from the root down to the widget ``key``."""
    if getattr(node, "key", None) == key:
        return path
    for c in getattr(node, "children", {}).values():
        kind = getattr(c, "type", None) if isinstance(c, Block) else None
        found = _path_to(c, key, path + ((kind, c),) if kind else path)
        if found is not None:
            return found
    return None


def test_activations_layer_picker_sits_in_the_first_column_of_its_row():
    at = AppTest.from_file(APP, default_timeout=600).run()
    at.switch_page("../pages/inside.py").run()
    _ok(at)
    kinds = [k for k, _ in _path_to(at._tree, "in_a_layer")]
    assert kinds[-1] == "column", kinds                                     # not below an empty column
    row = _path_to(at._tree, "in_a_layer")[-2][1]
    sort_path = [c for _, c in _path_to(at._tree, "in_a_sort")]
    assert row in sort_path                                                 # the same row as "Sort by"


# ------------------------------------------------------------------ loss charts

@pytest.mark.parametrize("lo,hi", [(0.03, 0.9), (1.5, 40.0), (12.0, 95.0), (1e-4, 1e6), (0.2, 0.35), (3.0, 3.01)])
def test_log_ticks_have_full_labels(lo, hi):
    from dashboard.style_ui import log_ticks
    vals = np.geomspace(lo, hi, 50)
    ticks, labels = log_ticks(vals)
    assert ticks and len(ticks) <= 8
    assert all(lo * 0.999 <= t <= hi * 1.001 for t in ticks)
    assert ticks == sorted(set(ticks))
    assert [float(t) for t in labels] == pytest.approx(ticks)               # "0.02", never a bare "2"


def test_losses_figure_uses_them():
    from dashboard.style_ui import losses_figure
    fig = losses_figure({"loss": [40.0, 20.0, 9.0, 4.0, 2.0], "style": [30.0, 10.0, 5.0, 2.0, 1.5]})
    y = fig.layout.yaxis
    assert y.type == "log" and list(y.ticktext) == ["2", "5", "10", "20"] and list(y.tickvals) == [2, 5, 10, 20]
