"""Is this result blank? One test for every family: a map, a score vector or an image that
is constant (all zero included) gets a warning instead of being shown as a plain photo or a
black square."""
from __future__ import annotations

import numpy as np
import torch


def is_constant(values, rtol: float = 1e-6, atol: float = 1e-12) -> bool:
    """True when every finite value of ``values`` (numpy array or tensor) is the same up to
    ``rtol`` of the largest magnitude (plus ``atol``), or when there is no finite value.

    Args:
        values: any array-like of numbers.
        rtol: spread allowed, relative to the largest absolute value.
        atol: spread always allowed (so all-zero and denormal noise count as constant).
    """
    if isinstance(values, torch.Tensor):
        values = values.detach().float().cpu().numpy()
    a = np.asarray(values, dtype=np.float64)
    a = a[np.isfinite(a)]
    if a.size == 0:
        return True
    spread = float(a.max() - a.min())
    return spread <= atol + rtol * float(np.abs(a).max())


def constant_warning(values, what: str = "The map") -> str | None:
    """A sentence for the result's ``warnings`` when ``values`` is constant, else None.

    Args:
        values: the map / scores / image to check.
        what: how to name it in the sentence ("The Grad-CAM map", "The class scores").
    """
    if not is_constant(values):
        return None
    if isinstance(values, torch.Tensor):
        values = values.detach().float().cpu().numpy()
    a = np.asarray(values, dtype=np.float64)
    finite = a[np.isfinite(a)]
    if finite.size == 0:
        return f"{what} has no finite value: nothing to show."
    v = float(finite.flat[0])
    if v == 0.0:
        return f"{what} is zero everywhere: there is nothing to show (a black or empty picture is not a finding)."
    return f"{what} is constant ({v:.4g} everywhere): it carries no information about where."


def output_warning(logits) -> str | None:
    """A sentence when a model gives every class the same score for an input (e.g. a
    zero-initialised classifier head): no explanation of such a model can depend on the
    image. ``logits``: (classes,) or (N, classes)."""
    if isinstance(logits, torch.Tensor):
        logits = logits.detach().float().cpu().numpy()
    a = np.asarray(logits, dtype=np.float64)
    rows = a.reshape(-1, a.shape[-1]) if a.ndim else a.reshape(1, 1)
    if all(is_constant(r) for r in rows):
        return ("The model gives every class the same score for this image (is its classifier head "
                "zero-initialised or untrained?): its output does not depend on the input, so every "
                "explanation of it is blank.")
    return None
