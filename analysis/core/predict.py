"""Predictions: batched forward passes under inference mode."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from analysis.core.models.bundle import ModelBundle


@dataclass
class Prediction:
    indices: np.ndarray     # top-k class indices, best first
    probs: np.ndarray       # their softmax probabilities
    labels: list[str]

    def rows(self) -> list[dict]:
        """One dict per class for a table: rank (1 = top), class name, index, probability."""
        return [{"rank": r + 1, "class": l, "index": int(i), "probability": float(p)}
                for r, (i, p, l) in enumerate(zip(self.indices, self.probs, self.labels))]


def logits(bundle: ModelBundle, images: Sequence[np.ndarray] | np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Raw RGB uint8 image(s) -> logits (N, classes) as float32 numpy.

    Args:
        bundle: the model (held under ``bundle.lock`` for each forward).
        images: one RGB uint8 image (H, W, 3), or a sequence / (N, H, W, 3) array of them (any
            sizes; each is preprocessed like the model's input).
        batch_size: images per forward.
    """
    if isinstance(images, np.ndarray) and images.ndim == 3:
        images = [images]
    out = []
    for s in range(0, len(images), batch_size):
        x = bundle.inputs(list(images[s:s + batch_size]))
        # Every forward on the shared model holds its lock: third-party methods (Captum)
        # register hooks that, unlike ours, are not thread-scoped.
        with bundle.lock, torch.inference_mode():
            out.append(bundle.model(x).float().cpu())
    return torch.cat(out).numpy()


def predict(bundle: ModelBundle, image: np.ndarray, k: int = 5) -> Prediction:
    """Top-k classes and probabilities for one RGB uint8 image.

    Args:
        bundle: the model.
        image: RGB uint8 (H, W, 3).
        k: how many classes (at most the class count).
    """
    p = torch.from_numpy(logits(bundle, image)[0]).softmax(-1)
    k = min(k, p.numel())
    probs, idx = p.topk(k)
    return Prediction(idx.numpy(), probs.numpy(), [bundle.categories[i] for i in idx.tolist()])


def search_classes(bundle: ModelBundle, query: str, limit: int = 20) -> list[tuple[int, str]]:
    """Classes whose name contains ``query`` (case-insensitive), for target pickers.

    Args:
        bundle: the model (its ``categories``).
        query: substring to look for (surrounding spaces ignored; "" matches all).
        limit: at most this many hits, in class-index order.
    """
    q = query.strip().lower()
    hits = [(i, c) for i, c in enumerate(bundle.categories) if q in c.lower()]
    return hits[:limit]
