"""Unit tests of the render helpers (dashboard/render.py): clip_map, colorize, overlay."""
import matplotlib
import numpy as np
import pytest

from dashboard.render import clip_map, colorize, overlay


def test_clip_map_scales_by_the_percentile_and_clips():
    m = np.arange(101, dtype=np.float64)            # |m| 98th percentile = 98
    out = clip_map(m, 2.0)
    assert out.min() == 0.0 and out.max() == 1.0
    assert np.isclose(out[49], 49 / 98) and np.all(out[98:] == 1.0)
    np.testing.assert_allclose(clip_map(m, 0.0), m / 100)


def test_clip_map_signed_keeps_negatives_unsigned_drops_them():
    m = np.array([-4.0, -2.0, 0.0, 2.0, 4.0])
    np.testing.assert_allclose(clip_map(m, 0.0, signed=True), [-1, -0.5, 0, 0.5, 1])
    np.testing.assert_allclose(clip_map(m, 0.0), [0, 0, 0, 0.5, 1])


def test_clip_map_all_zero_and_bad_percentile():
    assert np.all(clip_map(np.zeros((3, 3))) == 0)
    with pytest.raises(ValueError):
        clip_map(np.ones(3), 100)
    with pytest.raises(ValueError):
        clip_map(np.ones(3), -1)


def test_colorize_matches_matplotlib_and_centres_signed_maps():
    norm = np.array([[0.0, 0.5, 1.0]])
    rgb = colorize(norm, "viridis")
    assert rgb.dtype == np.uint8 and rgb.shape == (1, 3, 3)
    want = (matplotlib.colormaps["viridis"](norm)[..., :3] * 255 + 0.5).astype(np.uint8)
    assert np.array_equal(rgb, want)
    # out of range values are clipped to the ends of the colormap
    assert np.array_equal(colorize(np.array([[-3.0, 7.0]]), "viridis"), want[:, [0, 2]])
    # signed: -1 -> first colour, 0 -> middle, 1 -> last
    signed = colorize(np.array([[-1.0, 0.0, 1.0]]), "viridis", signed=True)
    assert np.array_equal(signed, want)


def test_overlay_blends_with_alpha_and_per_pixel_weight():
    img = np.zeros((2, 2, 3), np.uint8)
    heat = np.full((2, 2, 3), 200, np.uint8)
    assert np.all(overlay(img, heat, alpha=0.5) == 100)
    assert np.array_equal(overlay(img, heat, alpha=0.0), img)
    w = np.array([[0.0, 1.0], [0.5, 2.0]])          # weights clipped to [0, 1]
    out = overlay(img, heat, alpha=1.0, weight=w)
    assert out.dtype == np.uint8
    assert out[0, 0, 0] == 0 and out[0, 1, 0] == 200 and out[1, 0, 0] == 100 and out[1, 1, 0] == 200
