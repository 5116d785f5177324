"""Layer output layouts: which axis holds the channels, known rather than guessed.

A layer's output is one of

* ``nchw``   a channels-first map (N, C, H, W): convolutions, most CNN blocks;
* ``nhwc``   a channels-last map (N, H, W, C): torchvision Swin blocks, the inside of
  ConvNeXt blocks after ``torchvision.ops.misc.Permute``, timm Swin stages;
* ``tokens`` a token sequence (N, L, C) with ``prefix`` class / register tokens first and
  the remaining ``gh * gw`` patch tokens on a (gh, gw) grid: ViT / DeiT blocks;
* ``vector`` (N, C): pooled features, logits;
* ``other``  anything else (attention maps, windows, ...): no channel reading.

The layout comes from a probe, not from the shape: during the layer table's dry forward a
``TorchFunctionMode`` follows every tensor from the input image (``N, C, H, W``) through
the operations that move axes (convolutions, ``permute``/``transpose``, reshapes that merge
or split axes, ``cat`` of class tokens, indexing, reductions) and through those that keep
them (element-wise ops, norms, pooling, linear layers on the channel axis); each module's
output is read off its axis labels. Operations the probe does not follow (attention
internals, window partitions) leave their outputs unlabelled, and a residual sum with a
labelled tensor of the same shape labels them again, which is how every transformer block
ends. Only where no label reaches a module's output is the shape used (3-D -> ``nchw``,
1-D -> ``vector``), and the layer table says so (``layout_source = "shape"``).

Every reader of channels goes through :func:`to_nchw` (maps, channel gradients, Grad-CAM,
patch scan, Gram matrices, feature-visualisation objectives) or :func:`pool` (feature
vectors).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.overrides import TorchFunctionMode
from torch.utils.weak import WeakTensorKeyDictionary

from analysis.core.errors import LayerError

KINDS = ("nchw", "nhwc", "tokens", "vector", "other")


@dataclass(frozen=True)
class Layout:
    """How one layer's output (with its batch axis) is laid out; see the module docstring."""
    kind: str
    prefix: int = 0                          # tokens: class / register tokens before the patches
    grid: tuple[int, int] | None = None      # tokens: the patch grid (gh, gw)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown layout {self.kind!r}")

    @property
    def is_map(self) -> bool:
        """True when the output can be read as a (C, H, W) map."""
        return self.kind in ("nchw", "nhwc") or (self.kind == "tokens" and self.grid is not None)

    def __str__(self) -> str:
        if self.kind == "tokens":
            g = f"{self.grid[0]}×{self.grid[1]}" if self.grid else "?"
            return f"tokens(prefix={self.prefix}, grid={g})"
        return self.kind

    def channels(self, shape: tuple) -> int | None:
        """Number of channels of an output of ``shape`` (without the batch axis)."""
        if self.kind == "nchw" and len(shape) == 3:
            return int(shape[0])
        if self.kind in ("nhwc", "tokens") and len(shape) >= 2:
            return int(shape[-1])
        if self.kind == "vector" and len(shape) == 1:
            return int(shape[0])
        return None

    def map_hw(self, shape: tuple) -> tuple[int, int] | None:
        """(H, W) of the map, for an output of ``shape`` (without the batch axis)."""
        if self.kind == "nchw" and len(shape) == 3:
            return int(shape[1]), int(shape[2])
        if self.kind == "nhwc" and len(shape) == 3:
            return int(shape[0]), int(shape[1])
        if self.kind == "tokens" and self.grid is not None:
            return self.grid
        return None


NCHW = Layout("nchw")
NHWC = Layout("nhwc")
VECTOR = Layout("vector")
OTHER = Layout("other")


def to_nchw(t: torch.Tensor, layout: Layout, layer: str = "this layer") -> torch.Tensor:
    """A layer output (N, ...) as a channels-first map (N, C, H, W), differentiably (a
    permuted view or a reshape); token layers drop their class / register tokens and put the
    patch tokens on their grid. LayerError for outputs that are not maps.

    Args:
        t: the layer's output, batch first.
        layout: its layout (from the layer table).
        layer: the layer's name for error messages.
    """
    if layout.kind == "nchw" and t.dim() == 4:
        return t
    if layout.kind == "nhwc" and t.dim() == 4:
        return t.permute(0, 3, 1, 2)
    if layout.kind == "tokens" and t.dim() == 3 and layout.grid is not None:
        gh, gw = layout.grid
        p = t[:, layout.prefix:layout.prefix + gh * gw]
        if p.shape[1] != gh * gw:
            raise LayerError(f"{layer} has {t.shape[1]} tokens, not {layout.prefix} + {gh}×{gw}.")
        return p.transpose(1, 2).reshape(t.shape[0], t.shape[2], gh, gw)
    raise LayerError(f"{layer} outputs {tuple(t.shape[1:])} ({layout}), not a feature map with "
                     "channels and positions.")


def pool(t: torch.Tensor, layout: Layout, layer: str = "this layer") -> torch.Tensor:
    """A layer output (N, ...) as one feature vector per image (N, C): the global average of a
    map, the class token of a token layer (the mean of the patch tokens when it has none),
    a vector as it is. Arguments ``t``, ``layout`` and ``layer`` as for :func:`to_nchw`.
    """
    if layout.kind == "vector" and t.dim() == 2:
        return t
    if layout.kind == "tokens" and t.dim() == 3:
        return t[:, 0] if layout.prefix > 0 else t.mean(dim=1)
    if layout.is_map:
        return to_nchw(t, layout, layer).mean(dim=(2, 3))
    raise LayerError(f"{layer} outputs {tuple(t.shape[1:])} ({layout}); feature vectors need a map, "
                     "tokens or a vector.")


def shape_guess(shape: tuple | None) -> Layout:
    """The fallback when the probe labels nothing: by the number of axes only.

    Args:
        shape: the output shape without the batch axis, or None when unknown.
    """
    if shape is None:
        return OTHER
    return {3: NCHW, 1: VECTOR}.get(len(shape), OTHER)


# ----------------------------------------------------------------------------- the probe

_KEEP_AXES = {
    "pad", "interpolate", "upsample", "upsample_bilinear", "upsample_nearest", "avg_pool2d", "max_pool2d",
    "adaptive_avg_pool2d", "adaptive_max_pool2d", "max_pool2d_with_indices", "lp_pool2d", "roll",
    "contiguous", "clone", "to", "float", "half", "double", "type", "type_as", "detach",
    "dropout", "dropout2d", "channel_shuffle"}
_RESHAPES = {"reshape", "view", "flatten", "unflatten", "squeeze", "unsqueeze", "view_as", "reshape_as"}
_REDUCTIONS = {"mean", "sum", "amax", "amin", "max", "min", "std", "var", "logsumexp", "norm"}


def _is_token(a) -> bool:
    return isinstance(a, tuple) and a and a[0] == "L"


def _reshape(tag: tuple, ishape: tuple, oshape: tuple) -> tuple | None:
    """Axis labels after a reshape from ``ishape`` to ``oshape``: merged H, W become patch
    tokens, split patch tokens become H, W, other axes carry over; None if unclear."""
    ni, no = len(ishape), len(oshape)
    i = j = 0
    out: list = []
    while i < ni or j < no:
        if j < no and oshape[j] == 1 and (i >= ni or ishape[i] != 1):
            out.append("1")
            j += 1
            continue
        if i < ni and ishape[i] == 1 and (j >= no or oshape[j] != 1):
            i += 1
            continue
        if i >= ni or j >= no:
            return None
        gi, gj, pi, pj = [i], [j], ishape[i], oshape[j]
        i, j = i + 1, j + 1
        while pi != pj:
            if pi < pj and i < ni:
                pi, gi, i = pi * ishape[i], gi + [i], i + 1
            elif pj < pi and j < no:
                pj, gj, j = pj * oshape[j], gj + [j], j + 1
            else:
                return None
        labels = [tag[k] for k in gi if ishape[k] != 1] or [tag[gi[0]]]
        sizes = [oshape[k] for k in gj if oshape[k] != 1]
        if len(gj) == 1:
            if len(labels) == 1:
                out.append(labels[0])
            elif labels == ["H", "W"]:
                out.append(("L", 0, ishape[gi[0]], ishape[gi[-1]]))
            elif labels.count("C") == 1 and all(a in ("C", "C'", "H'", "W'") for a in labels):
                out.append("C")           # space-to-depth (patch merging): sub-positions join channels
            else:
                return None
        elif len(labels) == 1 and _is_token(labels[0]) and labels[0][1] == 0 \
                and sizes == [labels[0][2], labels[0][3]]:
            hw = iter(("H", "W"))
            out.extend(next(hw) if oshape[k] != 1 else "1" for k in gj)
        elif len(labels) == 1 and len(sizes) <= 1:
            out.extend(labels[0] if oshape[k] != 1 else "1" for k in gj)
        elif len(labels) == 1 and labels[0] in ("H", "W", "C"):
            # Split into an outer axis (keeps the label) and inner sub-axes (primed).
            first = next(k for k in gj if oshape[k] != 1)
            out.extend("1" if oshape[k] == 1 else labels[0] if k == first else labels[0] + "'" for k in gj)
        else:
            return None
    return tuple(out)


def _index(tag: tuple, idx) -> tuple | None:
    """Axis labels after ``t[idx]`` for slices, integers, None and Ellipsis."""
    if not isinstance(idx, tuple):
        idx = (idx,)
    n_real = sum(1 for k in idx if k is not None and k is not Ellipsis)
    out, a = [], 0
    for k in idx:
        if k is Ellipsis:
            n = len(tag) - n_real
            out.extend(tag[a:a + n])
            a += n
        elif k is None:
            out.append("1")
        elif isinstance(k, slice):
            out.append(tag[a])
            a += 1
        elif isinstance(k, int) and not isinstance(k, bool):
            a += 1
        else:
            return None
    return tuple(out) + tag[a:]


class LayoutProbe(TorchFunctionMode):
    """Follows axis labels from the input image through a forward (see the module
    docstring); ``layout(t)`` reads a tensor's layout, or None when unlabelled."""

    def __init__(self, image: torch.Tensor):
        super().__init__()
        self.tags = WeakTensorKeyDictionary()
        self.tags[image] = ("N", "C", "H", "W")

    def tag(self, t) -> tuple | None:
        """The axis labels the probe has followed to ``t`` (batch first), or None.

        Args:
            t: any value; only tensors seen during the probed forward have labels.
        """
        return self.tags.get(t) if isinstance(t, torch.Tensor) else None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        try:
            new = self._rule(getattr(func, "__name__", ""), args, kwargs, out)
            if new is not None and isinstance(out, torch.Tensor) and len(new) == out.dim() \
                    and "?" not in new:
                self.tags[out] = new
        except Exception:  # noqa: BLE001 - the probe must never break a forward
            pass
        return out

    def _first_tagged(self, args):
        for a in args:
            if isinstance(a, (list, tuple)):
                for b in a:
                    if self.tag(b) is not None:
                        return b
            elif self.tag(a) is not None:
                return a
        return None

    def _rule(self, name: str, args, kwargs, out):
        name = name.rstrip("_") if not name.startswith("__") else name
        if not isinstance(out, torch.Tensor):
            return None
        if name in ("conv2d", "conv_transpose2d", "_convolution") and out.dim() == 4:
            return ("N", "C", "H", "W")
        x = args[0] if args else None
        tag = self.tag(x)
        if name in ("cat", "concat", "concatenate"):
            return self._cat(args, kwargs, out)
        if tag is not None:
            if name == "permute":
                dims = args[1:] if len(args) > 2 or not isinstance(args[1], (tuple, list)) else args[1]
                dims = kwargs.get("dims", dims)
                return tuple(tag[int(d) % len(tag)] for d in dims)
            if name in ("transpose", "swapaxes", "swapdims"):
                a, b = (int(d) % len(tag) for d in args[1:3])
                t = list(tag)
                t[a], t[b] = t[b], t[a]
                return tuple(t)
            if name in _RESHAPES:
                return _reshape(tag, tuple(x.shape), tuple(out.shape))
            if name == "__getitem__":
                return _index(tag, args[1])
            if name in _REDUCTIONS:
                dim = kwargs.get("dim", args[1] if len(args) > 1 else None)
                if dim is None or out.dim() == x.dim():
                    return tag if out.shape == x.shape else None
                dims = {int(d) % len(tag) for d in (dim if isinstance(dim, (tuple, list)) else (dim,))}
                return tuple(a for k, a in enumerate(tag) if k not in dims)
            if name == "linear":
                if out.dim() == x.dim() and tag[-1] == "C":
                    return tag
                return None
            if name in _KEEP_AXES and out.dim() == x.dim():
                return tag
        same = [a for a in _flat(args) if self.tag(a) is not None and a.shape == out.shape]
        return self.tag(same[0]) if same else None

    def _cat(self, args, kwargs, out):
        tensors = list(args[0]) if args else list(kwargs.get("tensors", ()))
        dim = kwargs.get("dim", args[1] if len(args) > 1 else 0)
        tagged = [k for k, t in enumerate(tensors) if self.tag(t) is not None]
        if not tagged or any(t.dim() != out.dim() for t in tensors):
            return None
        k0 = tagged[0]
        tag = self.tag(tensors[k0])
        d = int(dim) % out.dim()
        if _is_token(tag[d]):
            before = sum(int(t.shape[d]) for t in tensors[:k0])
            _, p, gh, gw = tag[d]
            t = list(tag)
            t[d] = ("L", p + before, gh, gw)
            return tuple(t)
        return tag


def _flat(args):
    for a in args:
        if isinstance(a, (list, tuple)):
            yield from (b for b in a if isinstance(b, torch.Tensor))
        elif isinstance(a, torch.Tensor):
            yield a


def classify(tag: tuple | None) -> Layout | None:
    """The layout named by a tensor's axis labels (batch first), or None.

    Args:
        tag: axis labels such as ``("N", "C", "H", "W")``; a token axis is
            ``("L", prefix, grid_h, grid_w)`` (prefix: class / register tokens before the patches).
    """
    if not tag or tag[0] != "N":
        return None
    body = tuple(tag[1:])
    if body == ("C", "H", "W"):
        return NCHW
    if body == ("H", "W", "C"):
        return NHWC
    if len(body) == 2 and _is_token(body[0]) and body[1] == "C":
        _, p, gh, gw = body[0]
        return Layout("tokens", int(p), (int(gh), int(gw)))
    if body == ("C",):
        return VECTOR
    return OTHER
