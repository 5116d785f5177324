"""Concepts discovered from data, CRAFT-style (Fel et al. 2023, "CRAFT: Concept Recursive
Activation FacTorization for Explainability").

For one class: cut its images into crops, resize each crop to the model's input, take the
activations of a layer (channels, averaged over positions), and factorise the
(crops x channels) matrix A ≈ U W with non-negative matrix factorisation (scikit-learn
``NMF``). The k rows of W are the concepts (directions in the layer's channel space); U says
how much of each concept each crop holds, so a concept's most typical crops are those with
the largest U. The importance of a concept for the class is **gradient × concept**: on the
class's whole images, the layer's activations at every position are projected on the
concepts (``NMF.transform``: U(x) ≥ 0), and the class score's gradient with respect to the
activations is carried onto the concepts (∂S/∂U = ∂S/∂A · Wᵀ); the importance is
Σ_positions U · ∂S/∂U, averaged over images (Fel et al.'s gradient-input estimator). A
concept's map on any image is its U at every position of the layer, upsampled.

NMF needs non-negative activations: a layer after a ReLU / ReLU6 (or a pooling of one).
A layer with negative values is refused with a message, never clipped silently.
Results are cached on disk by model, preprocessing, layer, data set, class, k, crops and seed
(:mod:`analysis.core.diskcache`).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from analysis.core.errors import LayerError, ParameterError
from analysis.core.hooks import capture, graph_from
from analysis.core.models.bundle import ModelBundle

Progress = Callable[[int, int], None]


def factorize(acts: np.ndarray, k: int, seed: int = 0, max_iter: int = 400):
    """Non-negative factorisation ``acts`` (n, C) ≈ U (n, k) · W (k, C) with scikit-learn's NMF.

    Args:
        acts: non-negative activations, one row per crop.
        k: number of concepts.
        seed: NMF's random state (``init="nndsvda"`` is deterministic; the seed breaks ties).
        max_iter: iterations of the solver.

    Returns:
        (U, W, model): the coefficients, the concept bank and the fitted ``NMF`` (its
        ``transform`` projects new activations on the concepts).
    """
    from sklearn.decomposition import NMF
    a = np.asarray(acts, np.float64)
    if a.ndim != 2:
        raise ParameterError(f"expected (crops, channels) activations, got {a.shape}")
    if not 1 <= k <= min(a.shape):
        raise ParameterError(f"k must be between 1 and {min(a.shape)} (crops and channels), got {k}")
    if a.min() < -1e-6:
        raise LayerError("This layer has negative activations; concepts by non-negative factorisation need a layer "
                         "after a ReLU (or ReLU6). Choose an activation layer.")
    a = np.clip(a, 0, None)
    if not a.any():
        raise ParameterError("The activations are all zero for these crops: there is nothing to factorise.")
    model = NMF(n_components=k, init="nndsvda", random_state=seed, max_iter=max_iter, tol=1e-5)
    u = model.fit_transform(a)
    return u.astype(np.float32), model.components_.astype(np.float32), model


def concept_importance(u_pos: np.ndarray, grad_pos: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Gradient × concept: Σ_positions U · (∂S/∂A · Wᵀ), averaged over images.

    Args:
        u_pos: (images, positions, k) concept coefficients at each position.
        grad_pos: (images, positions, C) gradient of the class score w.r.t. the activations.
        w: (k, C) the concept bank.
    """
    dsdu = np.einsum("npc,kc->npk", np.asarray(grad_pos, np.float64), np.asarray(w, np.float64))
    return (np.asarray(u_pos, np.float64) * dsdu).sum(axis=1).mean(axis=0)


def crops_of(image: np.ndarray, size: int, grid: int) -> list[tuple[np.ndarray, tuple[int, int, int, int]]]:
    """``grid`` x ``grid`` square crops of side ``size`` spread evenly over ``image``
    (overlapping when they must), with their boxes (top, left, bottom, right).

    Args:
        image: RGB uint8 (H, W, 3).
        size: crop side in pixels (at most the shorter side).
        grid: crops per axis.
    """
    h, w = image.shape[:2]
    s = min(size, h, w)
    ys = np.linspace(0, h - s, grid).round().astype(int) if grid > 1 else [(h - s) // 2]
    xs = np.linspace(0, w - s, grid).round().astype(int) if grid > 1 else [(w - s) // 2]
    return [(image[y:y + s, x:x + s], (int(y), int(x), int(y + s), int(x + s))) for y in ys for x in xs]


@dataclass
class ConceptSet:
    """k concepts of class ``target`` at ``layer``.

    ``bank`` (k, C): the concepts; ``importance`` (k,): gradient × concept for the class
    (higher = more of the class score); ``order``: concepts by importance; ``crop_u`` (n, k)
    and ``crops`` (n, s, s, 3) the crops (thumbnails) with their coefficients; ``crop_image``
    (n,) which image each crop comes from; ``explained`` the share of the activations' squared
    norm the factorisation reconstructs."""
    layer: str
    target: int
    target_label: str
    k: int
    bank: np.ndarray
    importance: np.ndarray
    crop_u: np.ndarray
    crops: np.ndarray
    crop_image: np.ndarray
    explained: float
    n_images: int
    seconds: float = 0.0
    method: str = "craft"
    params: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @property
    def order(self) -> list[int]:
        return [int(i) for i in np.argsort(-self.importance, kind="stable")]

    def typical(self, concept: int, n: int = 6) -> list[int]:
        """Indices of the ``n`` crops holding the most of ``concept``."""
        return [int(i) for i in np.argsort(-self.crop_u[:, concept], kind="stable")[:n]]


def _activations(bundle: ModelBundle, images: Sequence[np.ndarray], layer: str, batch: int) -> np.ndarray:
    out = []
    for a in range(0, len(images), batch):
        x = bundle.inputs(list(images[a:a + batch]))
        with bundle.lock, torch.inference_mode(), capture(bundle.model, layer) as acts:
            bundle.model(x)
        t = acts[layer]
        if t.dim() != 4:
            raise LayerError(f"Concepts need a layer with (C, H, W) maps; {layer} gives {tuple(t.shape[1:])}.")
        out.append(t.float().mean(dim=(2, 3)).cpu().numpy())
    return np.concatenate(out)


def _positions_and_grads(bundle: ModelBundle, images: Sequence[np.ndarray], layer: str, target: int):
    """Activations (n, h*w, C) at ``layer`` and the gradient of the target's logit w.r.t. them."""
    x = bundle.inputs(list(images))
    with bundle.lock, graph_from(bundle.model, layer) as acts:    # the graph starts at the layer
        out = bundle.model(x)
        if layer not in acts:
            raise LayerError(f"{layer} did not run in the forward pass.")
        a = acts[layer]
        (g,) = torch.autograd.grad(out[:, target].sum(), a)
    a, g = a.detach().float(), g.detach().float()
    n, c, h, w = a.shape
    return (a.permute(0, 2, 3, 1).reshape(n, h * w, c).cpu().numpy(),
            g.permute(0, 2, 3, 1).reshape(n, h * w, c).cpu().numpy(), (h, w))


def extract_concepts(bundle: ModelBundle, images: Sequence[np.ndarray], target: int, layer: str, k: int = 6, *,
                     grid: int = 3, crop_fraction: float = 0.5, seed: int = 0, batch_size: int = 32,
                     max_images: int = 64, progress: Progress | None = None) -> ConceptSet:
    """CRAFT concepts of class ``target`` from ``images`` (that class's images).

    Args:
        bundle: the model.
        images: RGB uint8 images of the class.
        target: the class index (for the importance).
        layer: a layer with non-negative (C, H, W) activations.
        k: number of concepts.
        grid: crops per axis of each image (grid² crops per image).
        crop_fraction: crop side as a fraction of the image's shorter side.
        seed: NMF seed.
        batch_size: crops per forward.
        max_images: use at most this many images (the first ones).
        progress: ``progress(done, total)``.
    """
    t0 = time.perf_counter()
    if not images:
        raise ParameterError("This class has no images in the data set.")
    if not 0.1 <= crop_fraction <= 1.0:
        raise ParameterError("crop_fraction must be between 0.1 and 1")
    if not 1 <= grid <= 8:
        raise ParameterError("grid must be between 1 and 8")
    imgs = [np.asarray(im) for im in images[:max_images]]
    crops, owner = [], []
    for i, im in enumerate(imgs):
        size = max(4, int(round(crop_fraction * min(im.shape[:2]))))
        for c, _box in crops_of(im, size, grid):
            crops.append(np.ascontiguousarray(c))
            owner.append(i)
    total = len(crops) + len(imgs)
    acts = []
    for a in range(0, len(crops), batch_size):
        acts.append(_activations(bundle, crops[a:a + batch_size], layer, batch_size))
        if progress:
            progress(min(a + batch_size, len(crops)), total)
    acts = np.concatenate(acts)
    u, w, model = factorize(acts, k, seed)
    explained = float(1 - np.linalg.norm(acts - u @ w) ** 2 / max(np.linalg.norm(acts) ** 2, 1e-12))
    imp = np.zeros(k)
    for a in range(0, len(imgs), batch_size):
        pos, grad, _hw = _positions_and_grads(bundle, imgs[a:a + batch_size], layer, target)
        upos = model.transform(np.clip(pos.reshape(-1, pos.shape[-1]), 0, None).astype(np.float64))
        upos = upos.reshape(pos.shape[0], pos.shape[1], k)
        imp += concept_importance(upos, grad, w) * pos.shape[0]
        if progress:
            progress(len(crops) + min(a + batch_size, len(imgs)), total)
    imp /= len(imgs)
    thumb = [np.asarray(_thumb(c, 64)) for c in crops]
    warnings = []
    if explained < 0.5:
        warnings.append(f"The {k} concepts reconstruct only {explained:.0%} of the activations; try more concepts.")
    return ConceptSet(layer=layer, target=int(target), target_label=bundle.categories[target], k=k, bank=w,
                      importance=imp.astype(np.float32), crop_u=u, crops=np.stack(thumb),
                      crop_image=np.asarray(owner, np.int32), explained=explained, n_images=len(imgs),
                      seconds=time.perf_counter() - t0,
                      params={"k": k, "grid": grid, "crop_fraction": crop_fraction, "seed": seed,
                              "max_images": max_images}, warnings=warnings)


def _thumb(img: np.ndarray, side: int) -> np.ndarray:
    from PIL import Image
    return np.asarray(Image.fromarray(img).resize((side, side), Image.BILINEAR))


def concept_maps(bundle: ModelBundle, concepts: ConceptSet, image: np.ndarray) -> np.ndarray:
    """Each concept's coefficient at every position of the layer on ``image``, upsampled to
    the model's input crop: (k, H, W), non-negative.

    Args:
        bundle: the model the concepts were extracted from.
        concepts: the concept set.
        image: RGB uint8 image of any size.
    """
    from scipy.optimize import nnls
    x = bundle.inputs([image])
    with bundle.lock, torch.inference_mode(), capture(bundle.model, concepts.layer) as acts:
        bundle.model(x)
    a = acts[concepts.layer][0].float().clamp(min=0)
    c, h, w = a.shape
    pos = a.permute(1, 2, 0).reshape(h * w, c).cpu().numpy().astype(np.float64)
    bank = concepts.bank.astype(np.float64).T                        # (C, k)
    u = np.stack([nnls(bank, p)[0] for p in pos])                    # (h*w, k)
    m = torch.from_numpy(u.T.reshape(concepts.k, 1, h, w)).float()
    s = bundle.input_size
    return F.interpolate(m, size=(s, s), mode="bilinear", align_corners=False)[:, 0].numpy()


_ARRAYS = ("bank", "importance", "crop_u", "crops", "crop_image")


def cached_concepts(bundle: ModelBundle, dataset_hash: str, images: Sequence[np.ndarray], target: int, layer: str,
                    k: int = 6, *, progress: Progress | None = None, **params) -> ConceptSet:
    """:func:`extract_concepts`, cached on disk by model, preprocessing, layer, data set,
    class, k and the other parameters (kind ``craft`` of :mod:`analysis.core.diskcache`).

    Args:
        bundle, images, target, layer, k, progress, params: as :func:`extract_concepts`.
        dataset_hash: the data set's content hash (part of the key).
    """
    from analysis.core.diskcache import cache_key, load_arrays, save_arrays
    key = cache_key("craft", bundle.model_id, bundle.preprocess.spec_id, layer, dataset_hash, int(target), int(k),
                    sorted(params.items()), len(images))
    hit = load_arrays("craft", key)
    if hit is not None:
        arrays, meta = hit
        return ConceptSet(**{n: arrays[n] for n in _ARRAYS}, **meta)
    cs = extract_concepts(bundle, images, target, layer, k, progress=progress, **params)
    meta = {f: getattr(cs, f) for f in ("layer", "target", "target_label", "k", "explained", "n_images",
                                         "seconds", "method", "params", "warnings")}
    save_arrays("craft", key, {n: getattr(cs, n) for n in _ARRAYS}, meta)
    return cs
