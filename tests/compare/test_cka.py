"""Linear CKA: its known properties, and the layer-matrix path on a real model."""
import numpy as np
import pytest
from scipy.stats import ortho_group

from analysis.compare.cka import cka_matrix, linear_cka

RNG = np.random.default_rng(0)
X = RNG.normal(size=(200, 20))


def test_identical_features_give_one():
    assert linear_cka(X, X) == pytest.approx(1.0, abs=1e-12)


def test_invariant_to_orthogonal_transforms_and_isotropic_scaling():
    q = ortho_group.rvs(20, random_state=1)
    assert linear_cka(X, X @ q) == pytest.approx(1.0, abs=1e-10)
    assert linear_cka(X, 7.5 * X) == pytest.approx(1.0, abs=1e-10)
    y = RNG.normal(size=(200, 12))
    assert linear_cka(X @ q * 3.0, y) == pytest.approx(linear_cka(X, y), abs=1e-10)
    # the Gram form (used when features outnumber images) gives the same number
    wide = np.hstack([X, RNG.normal(size=(200, 400))])
    assert linear_cka(wide, wide @ ortho_group.rvs(420, random_state=2)) == pytest.approx(1.0, abs=1e-9)


def test_not_invariant_to_arbitrary_invertible_linear_maps():
    a = np.diag(np.r_[np.full(10, 10.0), np.full(10, 0.1)])       # invertible, anisotropic
    v = linear_cka(X, X @ a)
    assert v < 0.9
    assert np.linalg.matrix_rank(a) == 20


def test_unrelated_features_give_low_cka_and_matrix_matches_pairs():
    y = RNG.normal(size=(200, 20))
    assert linear_cka(X, y) < 0.2
    m = cka_matrix({"a": X, "b": y}, {"a": X, "b": y, "c": X @ ortho_group.rvs(20, random_state=3)})
    assert m.shape == (2, 3)
    assert m[0, 0] == pytest.approx(1.0) and m[0, 2] == pytest.approx(1.0) and m[1, 1] == pytest.approx(1.0)
    assert m[0, 1] == pytest.approx(linear_cka(X, y))
    assert np.isnan(linear_cka(np.ones((5, 3)), RNG.normal(size=(5, 3))))
