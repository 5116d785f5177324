"""Faster CPU kernels for the same values: max pooling through channels-last.

torch's CPU max pooling on contiguous (N, C, H, W) tensors runs one plane after the other
and is several times slower than its channels-last kernel, which vectorises over the
channels (torch 2.14, 2 cores, both layout copies included: 2.5–2.9× on a (64, 16, 32, 32) batch,
4.2× on a ResNet's (16, 64, 112, 112) stem, 1.05–1.13× on whole ResNet-18 / ResNet-50 /
VGG-11 forwards; docs/benchmarks.md, bench/fast_pooling.py). A maximum is the same number
whatever the order it is searched in, so routing the pooling through a channels-last copy
and back gives the same tensor, bit for bit, and every later op sees the layout it always
saw. :func:`fast_pooling` does that for a model's ``nn.MaxPool2d`` modules inside a ``with``
block, with two hooks per pooling module (nothing else in the forward is touched, so a
model without max pooling pays nothing), for the calls that need no gradient through the
pooling (``torch.inference_mode``, ``no_grad``, or an input that does not require grad).
Left alone: index-returning pooling, tensors that require grad while grad mode is on (ties
would route gradients by another kernel's choice), other devices, dtypes and layouts
(maps that are channels-last already run the fast kernel anyway), functional
``F.max_pool2d`` calls. A model whose first block routed none of its poolings for their
layout, device or type (maps that are channels-last already, like the digits CNN's), or that
has no such module, is not hooked again: the hooks would cost it a few percent of a small
forward for nothing.
"""
from __future__ import annotations

import contextlib
import threading
import weakref
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import nn

_FLOATS = (torch.float32, torch.float64)


def _needs_grad(x) -> bool:
    return isinstance(x, torch.Tensor) and x.requires_grad and torch.is_grad_enabled()


def _routable(x) -> bool:
    return (type(x) is torch.Tensor and x.dim() == 4 and x.device.type == "cpu" and x.dtype in _FLOATS
            and x.shape[1] > 1 and x.is_contiguous() and not _needs_grad(x))


@dataclass
class PoolingStats:
    """What one :func:`fast_pooling` block did: ``modules`` hooked, ``calls`` of them seen,
    ``routed`` through channels-last, ``grad`` left alone because they needed a gradient."""
    modules: int = 0
    calls: int = 0
    routed: int = 0
    grad: int = 0


_POOLS: "weakref.WeakKeyDictionary[nn.Module, list]" = weakref.WeakKeyDictionary()   # model -> pooling modules, [] = not worth hooking
_POOLS_LOCK = threading.Lock()


@contextlib.contextmanager
def fast_pooling(model: nn.Module) -> Iterator[PoolingStats]:
    """Inside the block, this thread's calls of ``model``'s ``nn.MaxPool2d`` modules on
    contiguous CPU float maps that need no gradient run through the channels-last kernel:
    the same values bit for bit, faster (module docstring). The hooks act on this thread's
    forwards only and are removed on exit, even on error; the output hook runs before any
    other hook of the module, so a capture of the pooling's output sees the usual layout.

    >>> with bundle.lock, fast_pooling(bundle.model), torch.inference_mode():
    ...     logits = bundle.model(x)

    Args:
        model: the (shared, never changed) model.
    """
    with _POOLS_LOCK:
        pools = _POOLS.get(model)
        first = pools is None
    if first:
        pools = [m for m in model.modules()
                 if isinstance(m, nn.MaxPool2d) and type(m).forward is nn.MaxPool2d.forward and not m.return_indices]
    stats = PoolingStats(modules=len(pools))
    if not pools:
        if first:
            with _POOLS_LOCK:
                _POOLS[model] = []
        yield stats
        return
    owner = threading.get_ident()
    routed: dict[int, int] = {}

    def before(mod, args):
        if threading.get_ident() != owner or not args:
            return None
        stats.calls += 1
        if not _routable(args[0]):
            stats.grad += _needs_grad(args[0])
            return None
        routed[id(mod)] = routed.get(id(mod), 0) + 1
        return (args[0].contiguous(memory_format=torch.channels_last), *args[1:])

    def after(mod, args, out):
        if threading.get_ident() != owner or not routed.get(id(mod)):
            return None
        routed[id(mod)] -= 1
        stats.routed += 1
        return out.contiguous()

    handles = []
    try:
        for m in pools:
            handles.append(m.register_forward_pre_hook(before))
            handles.append(m.register_forward_hook(after, prepend=True))
        yield stats
        # the decision for later blocks: hooked while it routes; not hooked when its pooling ran
        # and none of it could be routed for its layout, device or type (not after an error, nor
        # when the poolings were skipped for a gradient: another block may need none)
        if first and (stats.routed or (stats.calls and not stats.grad)):
            with _POOLS_LOCK:
                _POOLS[model] = pools if stats.routed else []
    finally:
        for h in handles:
            h.remove()
