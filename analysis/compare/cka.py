"""Linear centred kernel alignment (CKA; Kornblith et al. 2019) between layers of two models.

For features X (n, p) and Y (n, q) of the same n images, centred over images,

    CKA(X, Y) = ||Yᵀ X||_F² / (||Xᵀ X||_F · ||Yᵀ Y||_F)

which is 1 for identical representations, invariant to orthogonal transforms and
isotropic scaling of either side, and *not* invariant to arbitrary invertible linear maps
(that is what separates it from CCA). With p, q much larger than n the Gram form
``<K, L>_F / (||K||_F ||L||_F)`` with K = X Xᵀ, L = Y Yᵀ (centred) is used instead; both are
the same number.

Features of convolutional layers are global-average-pooled per channel
(:func:`layer_features`), the representation the executor's ``features`` job stores.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch

from analysis.core.errors import ParameterError
from analysis.core.hooks import capture
from analysis.core.models.bundle import ModelBundle


def _centre(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    if x.ndim != 2:
        raise ParameterError(f"CKA needs (images, features) matrices, got shape {x.shape}")
    return x - x.mean(axis=0, keepdims=True)


def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear CKA between feature matrices ``x`` (n, p) and ``y`` (n, q) of the same n images.

    Args:
        x, y: features, one row per image (same order).

    Returns:
        CKA in [0, 1]; NaN when one side is constant over the images (no variance to align).
    """
    if len(x) != len(y):
        raise ParameterError(f"CKA needs the same images on both sides ({len(x)} vs {len(y)} rows)")
    if len(x) < 2:
        raise ParameterError("CKA needs at least 2 images")
    xc, yc = _centre(x), _centre(y)
    if xc.shape[1] + yc.shape[1] > 2 * len(xc):            # Gram form: n x n
        k, l_ = xc @ xc.T, yc @ yc.T
        num, dx, dy = (k * l_).sum(), np.linalg.norm(k), np.linalg.norm(l_)
    else:
        num = np.linalg.norm(yc.T @ xc) ** 2
        dx, dy = np.linalg.norm(xc.T @ xc), np.linalg.norm(yc.T @ yc)
    if dx == 0 or dy == 0:
        return float("nan")
    return float(num / (dx * dy))


@dataclass
class CKAResult:
    """CKA between ``layers_a`` (rows) and ``layers_b`` (columns) over ``n_images`` images."""
    model_a: str
    model_b: str
    layers_a: list[str]
    layers_b: list[str]
    matrix: np.ndarray
    n_images: int
    seconds: float = 0.0
    method: str = "linear_cka"
    params: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def cka_matrix(feats_a: dict[str, np.ndarray], feats_b: dict[str, np.ndarray]) -> np.ndarray:
    """CKA of every layer of ``feats_a`` against every layer of ``feats_b`` (dicts layer ->
    (n, d) features, same images in the same order).

    Args:
        feats_a, feats_b: features per layer.
    """
    # centre and form Gram matrices once per layer: the pairs then cost O(n^2) each
    def grams(feats):
        out = {}
        for k, v in feats.items():
            c = _centre(v)
            g = c @ c.T
            out[k] = (g, np.linalg.norm(g))
        return out
    ga, gb = grams(feats_a), grams(feats_b)
    m = np.full((len(ga), len(gb)), np.nan)
    for i, (a, na) in enumerate(ga.values()):
        for j, (b, nb) in enumerate(gb.values()):
            if na > 0 and nb > 0:
                m[i, j] = float((a * b).sum() / (na * nb))
    return m


def layer_features(bundle: ModelBundle, images: Sequence[np.ndarray], layers: Sequence[str], *,
                   batch_size: int = 64, progress: Callable[[int, int], None] | None = None) -> dict[str, np.ndarray]:
    """Features of ``images`` at each of ``layers`` (C, H, W maps average-pooled to C), from
    batched forwards with one capture of all layers.

    Args:
        bundle: the model.
        images: RGB uint8 images.
        layers: dotted layer names.
        batch_size: images per forward.
        progress: ``progress(done, total)``.
    """
    if not layers:
        raise ParameterError("Choose at least one layer.")
    out: dict[str, list] = {name: [] for name in layers}
    n = len(images)
    for a in range(0, n, batch_size):
        x = bundle.inputs(list(images[a:a + batch_size]))
        with bundle.lock, torch.inference_mode(), capture(bundle.model, list(layers)) as acts:
            bundle.model(x)
        for name in layers:
            t = acts[name]
            t = t.float().mean(dim=(2, 3)) if t.dim() == 4 else t.float().flatten(1)
            out[name].append(t.cpu().numpy())
        if progress:
            progress(min(a + batch_size, n), n)
    return {k: np.concatenate(v) for k, v in out.items()}


def compare_layers(bundle_a: ModelBundle, bundle_b: ModelBundle, images: Sequence[np.ndarray],
                   layers_a: Sequence[str], layers_b: Sequence[str], *, batch_size: int = 64,
                   progress: Callable[[int, int], None] | None = None) -> CKAResult:
    """Linear CKA between ``layers_a`` of model A and ``layers_b`` of model B (or the same
    model) over ``images``.

    Args:
        bundle_a, bundle_b: the two models (may be the same bundle).
        images: RGB uint8 images (each model applies its own preprocessing).
        layers_a, layers_b: layer names of each model.
        batch_size: images per forward.
        progress: ``progress(done, total)`` over both models' forwards.
    """
    t0 = time.perf_counter()
    n = len(images)
    tot = 2 * n

    def prog_a(d, _t):
        if progress:
            progress(d, tot)

    def prog_b(d, _t):
        if progress:
            progress(n + d, tot)
    fa = layer_features(bundle_a, images, layers_a, batch_size=batch_size, progress=prog_a)
    fb = fa if (bundle_b is bundle_a and list(layers_b) == list(layers_a)) else \
        layer_features(bundle_b, images, layers_b, batch_size=batch_size, progress=prog_b)
    m = cka_matrix(fa, fb)
    warnings = []
    if np.isnan(m).any():
        warnings.append("Some layers are constant over these images: their CKA is undefined (shown blank).")
    return CKAResult(model_a=bundle_a.model_id, model_b=bundle_b.model_id, layers_a=list(layers_a),
                     layers_b=list(layers_b), matrix=m, n_images=n, seconds=time.perf_counter() - t0,
                     params={"batch_size": batch_size}, warnings=warnings)
