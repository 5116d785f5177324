"""Faster CPU kernels for the same values: max pooling through channels-last.

torch's CPU max pooling on contiguous (N, C, H, W) tensors runs one plane after the other
and is several times slower than its channels-last kernel, which vectorises over the
channels (torch 2.14, 2 cores, both layout copies included: 2.5× on a (64, 16, 32, 32) batch,
4.2× on a ResNet's (16, 64, 112, 112) stem, 1.05–1.10× on whole ResNet-18 / ResNet-50 /
VGG-11 forwards; docs/benchmarks.md, bench/fast_pooling.py). A maximum
is the same number whatever the order it is searched in, so routing the pooling through a
channels-last copy and back gives the same tensor, bit for bit, and every later op sees the
layout it always saw. :func:`fast_pooling` does that inside a ``with`` block for the
forwards that need no gradient through the pooling (``torch.inference_mode``, ``no_grad``,
or an input that does not require grad); everything else passes through untouched:
index-returning pooling (its indices would have to match too), tensors that require grad
while grad mode is on (ties would route gradients by another kernel's choice), other
devices, other dtypes and layouts.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

_FLOATS = (torch.float32, torch.float64)


def _routable(args: tuple, kwargs: dict) -> bool:
    if kwargs.get("return_indices") or (len(args) > 6 and args[6]):
        return False
    x = args[0] if args else kwargs.get("input")
    return (isinstance(x, torch.Tensor) and type(x) is torch.Tensor and x.dim() == 4
            and x.device.type == "cpu" and x.dtype in _FLOATS and x.shape[1] > 1
            and x.is_contiguous() and not (x.requires_grad and torch.is_grad_enabled()))


class FastPooling(TorchFunctionMode):
    """Routes ``F.max_pool2d`` of contiguous CPU float maps through channels-last;
    ``routed`` counts the calls it routed."""

    def __init__(self):
        super().__init__()
        self.routed = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.max_pool2d and _routable(args, kwargs):
            x = args[0] if args else kwargs.pop("input")
            rest = args[1:] if args else ()
            y = func(x.contiguous(memory_format=torch.channels_last), *rest, **kwargs)
            self.routed += 1
            return y.contiguous()
        return func(*args, **kwargs)


@contextlib.contextmanager
def fast_pooling() -> Iterator[FastPooling]:
    """Inside the block, this thread's ``F.max_pool2d`` calls (``nn.MaxPool2d`` included)
    on contiguous CPU float maps that need no gradient run through the channels-last kernel:
    the same values bit for bit, several times faster (module docstring). Thread-local, like
    grad mode: other sessions' forwards are untouched. Yields the mode (``routed``: how
    many poolings it routed).

    >>> with fast_pooling(), torch.inference_mode():
    ...     logits = model(x)
    """
    mode = FastPooling()
    with mode:
        yield mode
