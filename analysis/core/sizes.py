"""Input sizes a model accepts.

Many transformers (timm ViT/DeiT/Swin with a strict image size, torchvision's vit_*,
Hugging Face ViT) accept only the input side they were built for and raise an
AssertionError or a shape error at any other. Pages that optimise images of their own size
(class and channel visualisation, DeepDream, inversion, texture and style) ask
``fixed_input_size`` once and feed such models through ``fit_to_model``, which resizes
(bilinear, differentiable) to the accepted side; convolutional networks are left alone.
"""
from __future__ import annotations

import threading

import torch
import torch.nn.functional as F

from analysis.core.models.bundle import ModelBundle

_LOCK = threading.Lock()
_FIXED: dict[tuple[str, str, int], int | None] = {}


def fixed_input_size(bundle: ModelBundle) -> int | None:
    """The one input side the bundle's model accepts, or None when it accepts others.

    Probed once per (model, preprocessing): a forward at the bundle's input size plus 16
    pixels (and, for small inputs, half of it) under inference mode; a failure at a size
    other than its own means the model is fixed-size. Args: bundle.
    """
    key = (bundle.model_id, bundle.preprocess.spec_id, id(bundle.model))
    with _LOCK:
        if key in _FIXED:
            return _FIXED[key]
    s = bundle.input_size
    fixed = None
    for other in (s + 16, max(8, s // 2 + 8)):
        if other == s:
            continue
        x = torch.zeros(1, bundle.preprocess.channels, other, other, device=bundle.device)
        try:
            with bundle.lock, torch.inference_mode():
                bundle.model(x)
        except Exception:  # noqa: BLE001 - any failure at another size means "fixed size"
            fixed = s
            break
    with _LOCK:
        _FIXED[key] = fixed
    return fixed


def fit_to_model(bundle: ModelBundle, x: torch.Tensor) -> torch.Tensor:
    """``x`` (N, C, H, W, model space) resized to the side the model accepts when it is a
    fixed-size model and ``x`` has another size; otherwise ``x`` itself. Args: bundle, x."""
    side = fixed_input_size(bundle)
    if side is None or tuple(x.shape[-2:]) == (side, side):
        return x
    return F.interpolate(x, size=(side, side), mode="bilinear", align_corners=False,
                         antialias=bool(x.shape[-1] > side or x.shape[-2] > side))


def size_note(bundle: ModelBundle) -> str | None:
    """A sentence for pages when the model takes only one input size, else None.

    Args:
        bundle: the model.
    """
    side = fixed_input_size(bundle)
    if side is None:
        return None
    return (f"{bundle.architecture} accepts only {side}×{side} inputs: images of other sizes are resized "
            f"to {side}×{side} before each forward pass (so details finer than that are not seen).")
