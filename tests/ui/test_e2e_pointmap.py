"""The point map (dashboard/pointmap.py) in real Chromium with 200,000 points: first draw,
hover box, lasso selection, and the exact count reaching Python."""
import numpy as np
import pytest

from dashboard.pointmap import decode_positions, encode_geometry
from tests.ui.pointmap_browser import drive, serve

pytestmark = pytest.mark.browser
N = 200_000


def _expected_count(view, poly) -> int:
    """Points of tests/ui/pointmap_app.py inside the screen polygon, recomputed here from
    the same seeded data, quantised as the browser sees it."""
    rng = np.random.default_rng(0)
    lab = rng.integers(0, 10, N)
    ang = lab * (2 * np.pi / 10)
    xy = (np.stack([np.cos(ang) * 10, np.sin(ang) * 10], 1) + rng.normal(size=(N, 2)) * 1.5).astype(np.float32)
    pos = decode_positions(encode_geometry(xy)).astype(np.float64)
    k, ox, oy = view
    px, py = ox + k * pos[:, 0], oy - k * pos[:, 1]
    xs, ys = np.array([p[0] for p in poly]), np.array([p[1] for p in poly])
    inside = (px >= xs.min()) & (px <= xs.max()) & (py >= ys.min()) & (py <= ys.max())
    return int(inside.sum())


def test_pointmap_200k_hover_lasso_and_count(session_dir, output_dir):
    with serve(N, session_dir / "pointmap.log", session_dir / "pointmap-cache") as url:
        r = drive(url, shot=output_dir / "pointmap_200k.png")
    assert r["n"] == N
    assert 0 <= r["hover_index"] < N
    expected = _expected_count(r["view"], r["polygon"])
    assert expected > 1000
    # the square's edges are the lasso's: points exactly on an edge may go either way
    assert abs(r["selected_js"] - expected) <= max(3, expected // 2000), (r["selected_js"], expected)
