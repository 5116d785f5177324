"""CRAFT: NMF recovers planted non-negative factors; gradient x concept ranks a planted
important concept first; the whole pipeline on the digits CNN."""
import numpy as np
import pytest

from analysis.concepts.craft import concept_importance, concept_maps, crops_of, extract_concepts, factorize

RNG = np.random.default_rng(0)


def planted(k=4, c=24, n=300):
    w = np.zeros((k, c))
    for i in range(k):                                 # each concept: its own channels, plus a shared one
        w[i, i * (c // k):(i + 1) * (c // k)] = RNG.uniform(0.5, 1.5, c // k)
        w[i, -1] = 0.2
    u = RNG.exponential(1.0, size=(n, k)) * (RNG.uniform(size=(n, k)) < 0.6)
    return u, w


def test_nmf_recovers_planted_factors_up_to_permutation_and_scale():
    u, w = planted()
    uh, wh, _ = factorize(u @ w, 4, seed=0)
    # match each true concept to its most similar recovered one (cosine); a permutation, all ~1
    cos = (w / np.linalg.norm(w, axis=1, keepdims=True)) @ (wh / np.linalg.norm(wh, axis=1, keepdims=True)).T
    match = cos.argmax(1)
    assert sorted(match) == [0, 1, 2, 3]
    assert cos.max(1).min() > 0.99
    # coefficients recovered up to the same permutation and a positive scale per concept
    for i, j in enumerate(match):
        assert np.corrcoef(u[:, i], uh[:, j])[0, 1] > 0.99


def test_importance_ranks_the_planted_concept_first():
    u, w = planted(n=50)
    # a linear head on the pooled layer that reads mostly concept 2's channels
    head = w[2] + 0.1 * w[0]
    positions = 5
    u_pos = np.repeat(u[:, None, :], positions, axis=1) / positions
    grad = np.broadcast_to(head / positions, (50, positions, w.shape[1]))
    imp = concept_importance(u_pos, grad, w)
    assert int(np.argmax(imp)) == 2
    assert imp[0] > imp[1] and imp[0] > imp[3]


def test_refuses_negative_activations_and_bad_k():
    from analysis.core.errors import ConvlensError
    with pytest.raises(ConvlensError, match="negative activations"):
        factorize(RNG.normal(size=(20, 5)), 2)
    with pytest.raises(ConvlensError, match="k must be"):
        factorize(np.abs(RNG.normal(size=(20, 5))), 9)


def test_crops_cover_the_image():
    im = np.zeros((10, 14, 3), np.uint8)
    cs = crops_of(im, 6, 3)
    assert len(cs) == 9 and all(c.shape == (6, 6, 3) for c, _ in cs)
    assert cs[0][1] == (0, 0, 6, 6) and cs[-1][1] == (4, 8, 10, 14)


def test_extract_concepts_on_digits(digits):
    from analysis.core.datasets import load_digits_dataset
    ds = load_digits_dataset()
    idx = np.flatnonzero(ds.labels == 3)[:12]
    cs = extract_concepts(digits, [ds.get(int(i)) for i in idx], 3, "features.relu2", k=3, grid=2)
    assert cs.bank.shape == (3, 32) and cs.crop_u.shape == (48, 3) and cs.crops.shape[0] == 48
    assert 0 < cs.explained <= 1 and sorted(cs.order) == [0, 1, 2]
    m = concept_maps(digits, cs, ds.get(int(idx[0])))
    assert m.shape == (3, 32, 32) and m.min() >= 0 and m.max() > 0
