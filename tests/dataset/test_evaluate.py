"""Metrics of the data-set audit with known answers (and scikit-learn as a reference)."""
import numpy as np
import pytest

from analysis.core.errors import ParameterError
from analysis.dataset.classmap import ClassMapping, suggest_mapping
from analysis.dataset.evaluate import (
    cell_members,
    centre_mask,
    class_mean_maps,
    confusion,
    evaluate,
    find_slices,
    mass_inside,
    mean_ci,
    randomisation_summary,
    reliability,
    saliency_mass,
    stratified_sample,
    trust_verdicts,
)


def test_stratified_sample_is_proportional_and_deterministic():
    labels = np.array([0] * 50 + [1] * 30 + [2] * 20)
    s = stratified_sample(labels, 10, seed=3)
    assert np.bincount(labels[s]).tolist() == [5, 3, 2]
    assert np.array_equal(s, stratified_sample(labels, 10, seed=3)) and len(set(s)) == 10
    assert np.bincount(labels[stratified_sample(labels, 2)], minlength=3).tolist() == [1, 1, 0]   # largest remainders
    assert np.bincount(labels[stratified_sample(labels, 3)]).tolist() == [1, 1, 1]   # every class once
    assert len(stratified_sample(labels, 500)) == 100
    with pytest.raises(ParameterError):
        stratified_sample(labels, 0)


def test_reliability_known_ece():
    r = reliability(np.array([0.9, 0.9, 0.6, 0.6]), np.array([1, 0, 1, 1], bool), n_bins=10)
    assert r.ece == pytest.approx(0.4)          # half the images 0.4 over-, half 0.4 under-confident
    assert r.mce == pytest.approx(0.4)
    assert r.counts.tolist() == [0, 0, 0, 0, 0, 2, 0, 0, 2, 0]
    assert np.isnan(r.accuracy[0]) and r.accuracy[8] == 0.5
    perfect = reliability(np.array([1.0, 1.0, 0.5, 0.5]), np.array([1, 1, 1, 0], bool), n_bins=4)
    assert perfect.ece == pytest.approx(0.0)
    with pytest.raises(ParameterError):
        reliability(np.array([1.2]), np.array([True]))


def test_evaluate_identity_matches_sklearn():
    from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support
    rng = np.random.default_rng(0)
    k, n = 4, 200
    labels = rng.integers(0, k, n)
    preds = np.where(rng.random(n) < 0.7, labels, rng.integers(0, k, n))
    rest = np.array([[c for c in range(k) if c != p] for p in preds])
    topk = np.concatenate([preds[:, None], rest], axis=1)
    conf = rng.uniform(0.3, 1.0, n)
    names = [f"c{i}" for i in range(k)]
    ev = evaluate(labels, topk, conf, suggest_mapping(names, names), dataset_hash="h")
    assert ev.accuracy == pytest.approx(accuracy_score(labels, preds))
    assert ev.top5_accuracy == 1.0                                   # all 4 classes in the top-4
    p, r, f, s = precision_recall_fscore_support(labels, preds, labels=list(range(k)), zero_division=0)
    assert np.allclose(ev.precision, p) and np.allclose(ev.recall, r) and np.allclose(ev.f1, f)
    assert ev.support.tolist() == s.tolist()
    assert np.array_equal(ev.confusion[:, :k], confusion_matrix(labels, preds))
    assert ev.confusion[:, k].sum() == 0                             # nothing unmapped
    errs = ev.confident_errors
    assert all(preds[i] != labels[i] for i in errs)
    assert np.all(np.diff(conf[errs]) <= 0)                          # most confident first
    assert np.all(np.diff(conf[ev.unsure_correct]) >= 0)
    assert ev.calibration.ece == pytest.approx(reliability(conf, preds == labels).ece)
    row, col = 2, 1
    members = cell_members(ev, row, col)
    assert len(members) == ev.confusion[row, col]
    assert all(labels[i] == row and preds[i] == col for i in members)
    assert ev.summary()["accuracy"] == ev.accuracy and ev.dataset_hash == "h"


def test_evaluate_through_a_partial_mapping():
    model = ["tabby", "tiger cat", "beagle", "clock"]
    m = ClassMapping(["cat", "dog", "bird"], model, {0: (0, 1), 1: (2,)}, "edited")
    labels = np.array([0, 0, 1, 1, 2, 2])
    topk = np.array([[1, 3], [3, 0], [2, 0], [0, 2], [3, 0], [2, 1]])
    conf = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    ev = evaluate(labels, topk, conf, m, indices=np.arange(10, 16))
    assert ev.n_scored == 4 and ev.n_images == 6                     # birds are not mapped
    assert ev.accuracy == pytest.approx(2 / 4)                       # [ok, clock, ok, cat]
    assert ev.top5_accuracy == pytest.approx(4 / 4)
    assert ev.confusion.tolist() == [[1, 0, 0, 1], [1, 1, 0, 0], [0, 0, 0, 0]]
    assert cell_members(ev, 0, -1).tolist() == [11]                 # the cat predicted "clock"
    assert ev.confident_errors.tolist() == [11, 13]
    assert ev.params["mapping"]["map"] == {"cat": [0, 1], "dog": [2]}


def test_evaluate_without_any_mapping_reports_no_accuracy():
    ev = evaluate(np.array([0, 1]), np.array([[5], [6]]), np.array([0.9, 0.8]),
                  suggest_mapping(["0", "1"], [f"m{i}" for i in range(10)]))
    assert np.isnan(ev.accuracy) and ev.n_scored == 0 and ev.calibration is None
    assert ev.warnings and "cannot be measured" in ev.warnings[0]


def test_confusion_unmapped_column():
    cm = confusion(np.array([0, 1, 1]), np.array([-1, 1, 0]), 2)
    assert cm.tolist() == [[0, 0, 1], [1, 1, 0]]


def test_mass_inside_centre():
    m = centre_mask(8, 8)
    assert m.sum() == 16 and m[2:6, 2:6].all()
    assert mass_inside(np.ones((8, 8)), m) == pytest.approx(0.25)      # uniform = the area
    inner = np.zeros((8, 8))
    inner[3, 4] = 2.0
    inner[0, 0] = -5                                                   # negative evidence does not count
    assert mass_inside(inner, m) == 1.0
    assert np.isnan(mass_inside(np.zeros((8, 8)), m))
    s = saliency_mass([np.ones((8, 8)), inner, np.zeros((8, 8))], "x")
    assert s.n_empty == 1 and s.area == pytest.approx(0.25) and s.mean_inside == pytest.approx(0.625)


def test_class_mean_maps_weigh_images_equally():
    a = np.zeros((2, 2))
    a[0, 0] = 10.0
    b = np.zeros((2, 2))
    b[1, 1] = 1.0
    out = class_mean_maps([a, b, np.zeros((2, 2)), b], [0, 0, 0, 1])
    assert np.allclose(out[0], [[0.5, 0], [0, 0.5]]) and np.allclose(out[1], b)


def test_mean_ci_student_t():
    m, lo, hi = mean_ci([1, 2, 3, 4, 5])
    assert m == 3 and hi - m == pytest.approx(2.776445 * np.sqrt(2.5) / np.sqrt(5), rel=1e-5)
    assert np.isnan(mean_ci([1.0])[1]) and mean_ci([2, 2, 2]) == (2, 2, 2)


def test_trust_verdicts_against_random_maps():
    rng = np.random.default_rng(0)
    n, r = 50, 4
    rand_del = 0.30 + 0.02 * rng.standard_normal((n, r))
    rand_ins = 0.40 + 0.02 * rng.standard_normal((n, r))
    good_del = np.full(n, 0.10)
    good_del[:5] = 0.5                                                 # loses on 5 of 50 images
    bad_ins = np.full(n, 0.2)
    noise_del = rand_del[:, 0] + 0.0                                   # one random map against the others
    out = trust_verdicts({"gradcam": {"deletion": good_del, "insertion": bad_ins},
                          "noise": {"deletion": noise_del}},
                         {"deletion": rand_del, "insertion": rand_ins})
    v = {(x.method, x.kind): x for x in out}
    g = v["gradcam", "deletion"]
    assert g.verdict == "better than random" and g.beats == pytest.approx(45 / 50) and g.n == 50
    assert "beats random on 90% of 50 images" in g.sentence and g.n_random == 4
    assert v["gradcam", "insertion"].verdict == "worse than random" and v["gradcam", "insertion"].beats == 0
    assert v["noise", "deletion"].beats == 0.0                         # never below itself
    with pytest.raises(ParameterError):
        trust_verdicts({"m": {"deletion": good_del}}, {"deletion": rand_del[:10]})


def test_randomisation_summary_quartiles():
    corr = [{"gradcam": [1.0, 0.5]}, {"gradcam": [0.0, 0.1]}, {"gradcam": [0.5, float("nan")]}]
    s = randomisation_summary(corr, ["fc", "conv"])
    assert s["gradcam"]["rho"].shape == (3, 2)
    assert s["gradcam"]["median"].tolist() == [0.5, pytest.approx(0.3)]
    assert s["gradcam"]["q1"][0] == 0.25 and s["gradcam"]["q3"][0] == 0.75
    with pytest.raises(ParameterError):
        randomisation_summary([{"g": [1.0]}], ["a", "b"])


def test_find_slices_ranks_the_failing_cluster_first():
    rng = np.random.default_rng(1)
    a = rng.normal(0, 0.1, (40, 3))
    b = rng.normal(5, 0.1, (40, 3))
    c = rng.normal(-5, 0.1, (3, 3))                                   # too small to rank
    x = np.concatenate([a, b, c])
    wrong = np.zeros(83, bool)
    wrong[40:72] = True                                                # 32 of cluster b's 40
    labels = np.r_[np.zeros(40), np.ones(40), np.full(3, 2)].astype(int)
    res = find_slices(x, wrong, labels, n_clusters=3, min_size=5, indices=np.arange(100, 183))
    assert len(res.slices) == 2
    top = res.slices[0]
    assert top.size == 40 and top.error_rate == pytest.approx(0.8) and top.top_classes == [(1, 40)]
    assert set(top.indices.tolist()) == set(range(140, 180))
    assert top.lift == pytest.approx(0.8 / (32 / 83)) and top.p_value < 1e-6
    assert res.slices[1].error_rate == 0
    with pytest.raises(ParameterError):
        find_slices(x, wrong, labels, n_clusters=1)


def test_randomisation_over_images_equals_the_per_image_check(digits):
    from analysis.core.datasets import load_digits_dataset
    from analysis.dataset.evaluate import randomisation_over_images
    from analysis.saliency.trust import cascading_randomisation
    b = digits
    ds = load_digits_dataset()
    imgs = ds.get_many([0, 5, 9])
    seen = []
    res = randomisation_over_images(b, imgs, [None, None, 3], ["gradient"], indices=[0, 5, 9], max_steps=3,
                                    progress=lambda d, t: seen.append((d, t)))
    assert seen[-1] == (3, 3) and res.rho["gradient"].shape == (3, len(res.layers))
    one = cascading_randomisation(b, imgs[2], 3, ["gradient"], max_steps=3)
    assert np.allclose(res.rho["gradient"][2], one.correlations["gradient"], equal_nan=True)
    assert res.targets[2] == 3 and res.layers == one.layers
    assert np.allclose(res.median["gradient"], np.nanmedian(res.rho["gradient"], axis=0))
    assert randomisation_over_images(b, imgs, [None] * 3, ["gradient"], should_stop=lambda: True) is None
