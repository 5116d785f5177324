"""Colour by slice (dashboard/pointmap.slice_colouring, dashboard/embedding_map.slice_assignment):
the colours follow the data-set audit's k-means slices of the same features."""
import numpy as np
import pytest

from analysis.dataset.evaluate import find_slices
from dashboard.embedding_map import slice_assignment
from dashboard.pointmap import OTHER_GREY, slice_colouring


def test_slices_get_their_own_colours_worst_first_and_the_rest_grey():
    a = np.repeat([0, 1, 2, 3], [100, 100, 100, 5])
    wrong = np.zeros(305, bool)
    wrong[:60] = True          # cluster 0: 60 % wrong
    wrong[100:130] = True      # cluster 1: 30 %
    wrong[200:202] = True      # cluster 2: 2 %
    wrong[300:305] = True      # cluster 3: 100 % but only 5 images (< min_size 10)
    mean = wrong.mean()        # 97 / 305 = 0.318: cluster 1 is below 1.5x the mean
    cidx, palette, legend = slice_colouring(a, wrong)
    assert len(palette) == 2 and palette[-1] == OTHER_GREY
    assert (cidx[:100] == 0).all() and (cidx[100:] == 1).all()
    assert legend[0].startswith("slice 0: 100 images, error 60%") and f"{0.6 / mean:.1f}×" in legend[0]
    assert legend[1].startswith("other clusters")
    none_idx, none_pal, none_leg = slice_colouring(a, np.zeros(305, bool))
    assert (none_idx == 0).all() and none_pal == [OTHER_GREY] and none_leg[0].startswith("no cluster")
    with pytest.raises(ValueError):
        slice_colouring(a, wrong[:10])


def _data(n=600, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=6, size=(4, 5))
    y = rng.integers(0, 4, size=n)
    x = (centres[y] + rng.normal(size=(n, 5))).astype(np.float32)
    wrong = (y == 2) & (rng.random(n) < 0.7) | (rng.random(n) < 0.05)
    return x, y, wrong


def test_assignment_is_find_slices_own_for_a_small_map():
    x, y, wrong = _data()
    sa = slice_assignment(x, wrong, y, n_clusters=4)
    ref = find_slices(x, wrong, y, n_clusters=4)
    assert np.array_equal(sa.assignment, ref.assignment)
    cidx, palette, legend = slice_colouring(sa.assignment, wrong)
    worst = max(ref.slices, key=lambda s: s.error_rate)
    assert legend[0].startswith(f"slice {worst.cluster}:") and (cidx[worst.indices] == 0).all()


def test_large_map_slices_fit_the_sample_and_place_the_rest_by_nearest_centre():
    x, y, wrong = _data(n=3000)
    sample = np.sort(np.random.default_rng(1).choice(3000, 600, replace=False))
    sa = slice_assignment(x, wrong, y, n_clusters=4, sample_index=sample)
    ref = find_slices(x[sample], wrong[sample], y[sample], indices=sample, n_clusters=4)
    assert np.array_equal(sa.assignment[sample], ref.assignment) and len(sa.assignment) == 3000
    # the well separated blobs: every point joins the cluster of its own blob
    for c in range(4):
        assert len(np.unique(sa.assignment[y == c])) == 1


def test_embeddings_page_colours_the_digits_map_by_slice():
    """The page's slice colours (plotly map of the 1,797 digits) are slice_colouring of
    find_slices on the page's own features."""
    from streamlit.testing.v1 import AppTest

    from analysis.embeddings.features import load_features
    from dashboard import state
    from tests.paths import REPO
    at = AppTest.from_file(str(REPO / "dashboard" / "app.py"), default_timeout=300).run()
    at.selectbox(key="sb_model_kind").set_value("digits").run()
    at.session_state["em_method"] = "pca"
    at.switch_page("../pages/embeddings.py").run()
    if any(b.key == "em_extract" for b in at.button):
        at.button(key="em_extract").click().run()
    assert "slice" in at.selectbox(key="em_colour").options
    at.selectbox(key="em_colour").set_value("slice").run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    bundle = state.bundle_for(at.session_state["model_spec"])
    from analysis.core.datasets import load_digits_dataset
    ds = load_digits_dataset()
    fs = load_features(bundle, ds, at.selectbox(key=f"em_layer_{bundle.short_id}").value)
    wrong = fs.predictions != fs.labels
    ref = find_slices(fs.features, wrong, fs.labels, n_clusters=8)
    assert np.array_equal(at.session_state["_em_slice_assignment"], ref.assignment)
    want, _, legend = slice_colouring(ref.assignment, wrong)
    assert np.array_equal(at.session_state["_em_colours"], want)
