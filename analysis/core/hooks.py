"""Hooks that never outlive their use.

Every hook is registered inside a context manager and removed in ``finally``, so an
exception in the forward, a bad layer name or a raising module leaves the (shared)
model exactly as it was. ``count_hooks`` lets tests assert that.

Hooks are thread-scoped: they act only on forwards run by the thread that registered
them, so a plain inference of another browser session on the same shared model neither
triggers nor disturbs them. Callers still hold ``bundle.lock`` around hooks and backward.
"""
from __future__ import annotations

import contextlib
import threading
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch
from torch import nn

from analysis.core.errors import LayerError


def get_module(model: nn.Module, name: str) -> nn.Module:
    """The submodule with dotted ``name``; "" is the model itself. LayerError if absent."""
    if name == "":
        return model
    if isinstance(model, torch.jit.ScriptModule):
        raise LayerError("TorchScript models cannot be hooked layer by layer; only whole-model "
                         "methods (predictions, saliency of the input) work on them.")
    try:
        return model.get_submodule(name)
    except AttributeError:
        raise LayerError(f"The model has no layer named {name!r}.") from None


def _resolve(model: nn.Module, layers: Sequence[str] | str) -> list[tuple[str, nn.Module]]:
    if isinstance(layers, str):
        layers = [layers]
    # Resolve all names before registering anything: a bad name registers nothing.
    return [(n, get_module(model, n)) for n in layers]


def _first_tensor(output):
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise LayerError(f"Layer output of type {type(output).__name__} is not a tensor.")


def _replace_first(output, new: torch.Tensor):
    """``output`` with its (first) tensor replaced by ``new``."""
    if isinstance(output, torch.Tensor):
        return new
    if type(output) is tuple:
        return (new,) + output[1:]
    if type(output) is list:
        return [new] + output[1:]
    if isinstance(output, tuple) and hasattr(output, "_replace"):      # namedtuple
        return output._replace(**{output._fields[0]: new})
    return None                 # unknown container: keep it (the kept tensor is still a copy)


def keep_output(output, *, detach: bool = True):
    """What a forward hook keeps of a module's ``output``, safe from in-place operations.

    A module's output often shares storage with a tensor that a later in-place operation
    rewrites (``nn.ReLU(inplace=True)`` after a conv, ``out += identity`` after a
    BatchNorm, densenet's ``F.relu(features, inplace=True)``). Returns ``(kept,
    replacement)``: with ``detach`` the kept tensor is a detached copy and ``replacement``
    is None (the forward is unchanged); without ``detach`` the kept tensor is the module's
    own output (with its graph) and ``replacement`` is a clone that the hook returns, so
    the rest of the forward (and any in-place op in it) works on the clone: the kept value
    and the gradient w.r.t. it are those of the module's output before any in-place op.
    The cost is one copy of the layer's output.
    """
    out = _first_tensor(output)
    if detach:
        return out.detach().clone(), None
    twin = out.clone()
    replacement = _replace_first(output, twin)
    if replacement is None:
        return out.clone(), None
    return out, replacement


ForwardHook = Callable[[nn.Module, Any, Any], Any]


def _scoped(fn: ForwardHook, owner: int) -> ForwardHook:
    def hook(mod, inputs, output):
        if threading.get_ident() != owner:
            return None   # another session's forward on the shared model: not ours
        return fn(mod, inputs, output)
    return hook


@contextlib.contextmanager
def forward_hooks(hooks: Iterable[tuple[nn.Module, ForwardHook]], *,
                  this_thread_only: bool = True) -> Iterator[None]:
    """Register forward hooks for the duration of a ``with`` block; all are removed on exit,
    even when the registration itself, the forward or the block raises.

    >>> with forward_hooks((m, fn) for m in blocks):
    ...     model(x)

    Args:
        hooks: ``(module, hook)`` pairs; each hook has torch's signature
            ``hook(module, inputs, output)`` and may return a replacement output.
        this_thread_only: call the hooks only for forwards run by the thread that entered the
            block (another session's inference on the shared model passes untouched).
    """
    owner = threading.get_ident()
    handles = []
    try:
        for module, fn in hooks:
            handles.append(module.register_forward_hook(_scoped(fn, owner) if this_thread_only else fn))
        yield
    finally:
        for h in handles:
            h.remove()


class Captured(dict):
    """name -> tensor captured during the forward (the last call if a module is reused),
    plus ``calls[name]``: how many times the module ran."""

    def __init__(self):
        super().__init__()
        self.calls: dict[str, int] = {}
        self.grads: dict[str, torch.Tensor] = {}


@contextlib.contextmanager
def capture(model: nn.Module, layers: Sequence[str] | str, *, grads: bool = False,
            detach: bool = True) -> Iterator[Captured]:
    """Record the outputs (and optionally output gradients) of ``layers``.

    >>> with capture(model, ["features.3"]) as acts:
    ...     model(x)
    >>> acts["features.3"].shape

    The kept tensors are the values the modules output, even when a later in-place
    operation rewrites that memory (see ``keep_output``). ``detach=False`` keeps the
    graph (to build objectives on activations). With
    ``grads=True`` the gradient w.r.t. each output lands in ``acts.grads[name]`` after
    ``backward()``; tensor hooks die with the graph, module hooks are removed on exit.
    """
    store = Captured()

    def make_hook(name: str) -> ForwardHook:
        def hook(mod, inputs, output):
            # with grads the module's own output stays in the graph (the rest of the
            # forward runs on a clone), so its gradient is the one before any in-place op
            out, replacement = keep_output(output, detach=detach and not grads)
            store.calls[name] = store.calls.get(name, 0) + 1
            store[name] = out.detach() if detach else out
            if grads and out.requires_grad:
                def save_grad(g):
                    store.grads[name] = g.detach()
                out.register_hook(save_grad)
            return replacement
        return hook

    with forward_hooks((module, make_hook(name)) for name, module in _resolve(model, layers)):
        yield store


@contextlib.contextmanager
def graph_from(model: nn.Module, layer: str) -> Iterator[Captured]:
    """Forwards inside the block record the autograd graph only from ``layer``'s output on,
    for gradients at that layer (Grad-CAM, CRAFT's importance):

    >>> with graph_from(model, "layer4") as acts:
    ...     score = model(x)[:, target].sum()
    ...     (g,) = torch.autograd.grad(score, acts["layer4"])

    The network before the layer runs as under ``no_grad`` (no autograd nodes, no tensors
    saved for a backward that never goes there, max-pooling without its indices); at the
    layer, ``acts[layer]`` becomes the layer's output as a leaf that requires grad, grad mode
    is switched on for the rest of the forward, and the forward continues on a copy (so an
    in-place op after the layer rewrites neither the kept value nor the leaf). The values and
    the gradient are those of a forward from an input that requires grad (the gradient at a
    tensor depends only on what follows it; tested bit for bit on the embedded models),
    for less time and memory: docs/benchmarks.md. Grad mode inside the block is off until
    the layer has run and on after it; the previous mode is back on exit, hooks removed,
    even on error. A model that also passed the layer's output on by a side way (kept in a
    module attribute and read later) would lose that path's share of the gradient; no
    torchvision or timm model does that.

    Args:
        model: the model (the hook acts on this thread's forwards only).
        layer: the layer's qualified name.
    """
    module = get_module(model, layer)
    store = Captured()

    def hook(mod, inputs, output):
        leaf = _first_tensor(output).detach().requires_grad_(True)
        torch.set_grad_enabled(True)           # the rest of this forward records the graph
        replacement = _replace_first(output, leaf.clone())
        if replacement is None:
            raise LayerError(f"{layer} returns a {type(output).__name__}, whose tensor cannot be "
                             "followed through the rest of the forward.")
        store[layer] = leaf
        store.calls[layer] = store.calls.get(layer, 0) + 1
        return replacement

    with torch.no_grad(), forward_hooks([(module, hook)]):
        yield store


class _StopForward(Exception):
    pass


@contextlib.contextmanager
def truncate_after(model: nn.Module, layer: str) -> Iterator[Captured]:
    """Capture ``layer`` and abort the forward right after it, saving the rest of the
    network when only an intermediate layer is needed:

    >>> with truncate_after(model, "layer2") as acts:
    ...     run_truncated(model, x)
    """
    store = Captured()
    module = get_module(model, layer)

    def hook(mod, inputs, output):
        # No copy needed: the forward stops here, so no later in-place op can rewrite it.
        store[layer] = _first_tensor(output).detach()
        store.calls[layer] = store.calls.get(layer, 0) + 1
        raise _StopForward

    with forward_hooks([(module, hook)]):
        yield store


def run_truncated(model: nn.Module, x: torch.Tensor) -> None:
    """Run the forward inside ``truncate_after``; returns when the layer has been captured.

    Args:
        model: the model ``truncate_after`` is active on.
        x: its input batch.
    """
    try:
        model(x)
    except _StopForward:
        return


def count_hooks(model: nn.Module) -> int:
    """Number of module hooks of every kind on the model and all its submodules."""
    total = 0
    for m in model.modules():
        for attr in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks",
                     "_backward_pre_hooks", "_state_dict_hooks", "_load_state_dict_pre_hooks"):
            total += len(getattr(m, attr, {}) or {})
    return total
