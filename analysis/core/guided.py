"""Guided backprop (Springenberg et al. 2015) as a model transformation: a deep copy of a
model whose ReLU-like modules (ReLU, ReLU6/Hardtanh, LeakyReLU; in-place ones too) pass back
only positive gradients where their forward was linear. The shared model is never changed.
Used by the saliency family and by channel gradients in the inside family."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from analysis.core.models.bundle import ModelBundle


class _GuidedClamp(torch.autograd.Function):
    """Forward: a (leaky) clamp like ReLU/ReLU6/Hardtanh/LeakyReLU. Backward: only positive
    gradients, only where the forward was in its linear range (guided backprop)."""

    @staticmethod
    def forward(ctx, x, lo, hi, slope):
        ctx.save_for_backward(x)
        ctx.lo, ctx.hi, ctx.slope = lo, hi, slope
        y = x.clamp(min=lo, max=hi)
        if slope:
            y = torch.where(x < lo, x * slope, y)
        return y

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        local = ((x > ctx.lo) & (x < ctx.hi)).to(g.dtype)
        if ctx.slope:
            local = local + (x <= ctx.lo).to(g.dtype) * ctx.slope
        return g.clamp(min=0) * local, None, None, None


class GuidedRectifier(nn.Module):
    def __init__(self, lo: float = 0.0, hi: float = math.inf, slope: float = 0.0, kind: str = "ReLU"):
        super().__init__()
        self.lo, self.hi, self.slope, self.kind = lo, hi, slope, kind

    def forward(self, x):
        """The rectifier's own output (clamp to [lo, hi], leaky slope below lo); its backward
        passes only positive gradients where the rectifier is open (guided backprop).

        Args:
            x: any tensor.
        """
        return _GuidedClamp.apply(x, self.lo, self.hi, self.slope)

    def extra_repr(self) -> str:
        """``guided <kind>`` in the module's repr, naming the rectifier it replaced."""
        return f"guided {self.kind}"


def _guided_replacement(m: nn.Module) -> GuidedRectifier | None:
    if isinstance(m, nn.ReLU):
        return GuidedRectifier(0.0, math.inf, 0.0, "ReLU")
    if isinstance(m, nn.Hardtanh):            # includes ReLU6
        return GuidedRectifier(float(m.min_val), float(m.max_val), 0.0, type(m).__name__)
    if isinstance(m, nn.LeakyReLU):
        return GuidedRectifier(0.0, math.inf, float(m.negative_slope), "LeakyReLU")
    return None


def guided_copy(model: nn.Module) -> tuple[nn.Module, int]:
    """A deep copy of ``model`` with every ReLU-like module replaced by its guided version
    (in-place ones included: the replacement is out-of-place). Returns (copy, count)."""
    import copy
    m = copy.deepcopy(model)
    n = 0
    for name, mod in list(m.named_modules()):
        rep = _guided_replacement(mod)
        if rep is not None and name:
            parent_name, _, child = name.rpartition(".")
            setattr(m.get_submodule(parent_name) if parent_name else m, child, rep)
            n += 1
    return m, n


_RECTIFIER_FUNCS = {F.relu, F.relu_, F.relu6, F.hardtanh, F.hardtanh_, F.leaky_relu, F.leaky_relu_,
                    torch.relu, torch.relu_, torch.Tensor.relu, torch.Tensor.relu_}


class _CountRectifiers(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in _RECTIFIER_FUNCS:
            self.calls += 1
        return func(*args, **(kwargs or {}))


def guided_model(bundle: ModelBundle) -> tuple[nn.Module, int, int]:
    """Guided copy of the bundle's model, cached on the bundle; with the number of guided
    modules and of functional rectifier calls that could not be guided."""
    cached = bundle.guided_cache
    if cached is None:
        gm, n = guided_copy(bundle.model)
        x = torch.zeros(1, bundle.preprocess.channels, bundle.input_size, bundle.input_size, device=bundle.device)
        counter = _CountRectifiers()
        with torch.inference_mode(), counter:
            gm(x)
        cached = (gm, n, counter.calls)
        bundle.guided_cache = cached         # a derived copy; the shared model is untouched
    return cached
