"""Rendering of saliency maps as pure functions: the interactive view uses the same colours,
colormap and clip as the image views; the randomisation chart shows every point."""
import numpy as np

from dashboard.render import (
    clip_map,
    colorize,
    correlation_figure,
    correlation_range,
    display_cmap,
    heatmap_figure,
    plotly_colorscale,
)


def _rgb(s: str) -> tuple[int, ...]:
    return tuple(int(v) for v in s[4:-1].split(","))


def _plotly_colour(scale, v: float) -> np.ndarray:
    """What plotly draws for v in [0, 1]: linear interpolation between the stops."""
    pos = np.array([p for p, _ in scale])
    cols = np.array([_rgb(c) for _, c in scale], np.float64)
    return np.array([np.interp(v, pos, cols[:, k]) for k in range(3)])


def test_colorscale_equals_colorize():
    for cmap in ("inferno", "viridis", "RdBu_r", "gray"):
        scale = plotly_colorscale(cmap)
        for v in np.linspace(0, 1, 23):
            want = colorize(np.array([[v]]), cmap)[0, 0].astype(np.float64)
            assert np.abs(_plotly_colour(scale, v) - want).max() <= 6, (cmap, v)


def test_interactive_view_follows_colormap_and_clip():
    m = np.zeros((8, 8))
    m[0, 0], m[1, 1], m[2, 2] = 1e-4, 0.5, 100.0                        # near zero, mid, outlier
    norm = clip_map(m, 2.0)
    fig = heatmap_figure(m, norm, "viridis", signed=False)
    tr = fig.data[0]
    assert np.allclose(np.asarray(tr.z), norm) and (tr.zmin, tr.zmax) == (0.0, 1.0)
    assert np.allclose(np.asarray(tr.customdata), m)                      # hover shows raw values
    got = [[p, c] for p, c in tr.colorscale]
    assert got[0][1] == plotly_colorscale("viridis")[0][1]              # the chosen colormap, not "Inferno"
    # a near-zero value gets the colormap's zero colour, as in the heatmap view
    assert np.abs(_plotly_colour(got, float(norm[0, 0])) - colorize(norm[:1, :1], "viridis")[0, 0]).max() <= 6


def test_signed_near_zero_is_neutral_not_salmon():
    m = np.array([[-2.0, -1e-6, 0.0, 1e-6, 2.0]])
    cmap = display_cmap("inferno", signed=True)
    assert cmap == "RdBu_r"
    norm = clip_map(m, 0.0, signed=True)
    fig = heatmap_figure(m, norm, cmap, signed=True)
    tr = fig.data[0]
    assert (tr.zmin, tr.zmax) == (-1.0, 1.0)
    mid = _plotly_colour(list(tr.colorscale), (0 + 1) / 2)               # zero sits mid-scale
    assert np.abs(mid - colorize(np.array([[0.0]]), cmap, signed=True)[0, 0]).max() <= 6
    assert mid.min() > 230                                               # near white; plotly's RdBu put
    #                                                                      salmon (220, 170, 132) near 0


def test_randomisation_chart_shows_every_point():
    corr = {"gradient": [0.3, 0.1], "gradcam": [0.53, -0.351, 0.38]}
    lo, hi = correlation_range(corr)
    assert lo <= -0.351 - 0.04 and hi >= 1.0
    assert correlation_range({"a": [0.5, float("nan")]}) == [-0.2, 1.05]
    assert correlation_range({"a": [-1.0]})[0] >= -1.05
    fig = correlation_figure(["_fc", "_blocks.10", "x"], corr)
    assert list(fig.layout.yaxis.range)[0] <= -0.351
