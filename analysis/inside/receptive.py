"""Receptive fields: which input pixels a neuron of a layer can see.

Two independent methods:

* **analytic** (the main one): receptive-field arithmetic (Dang Ha The Hien, "A guide to
  receptive field arithmetic for CNNs", 2017) propagated through the *actual* forward
  graph. One forward of a zero image runs inside a ``TorchFunctionMode`` that attaches
  per-axis ``(size r, jump j, start)`` to every tensor derived from the input, so skip
  connections (ResNet downsample branches, EfficientNet residual adds, concatenations) and
  padding computed at run time (TF "same" padding with ``F.pad``) are accounted for exactly:

      j_out = j_in * s
      r_out = r_in + (k_eff - 1) * j_in,           k_eff = d * (k - 1) + 1
      start_out = start_in + ((k_eff - 1) / 2 - p_left) * j_in

  Several tensor inputs (add, mul, cat, where ...) give the hull of their fields (same
  jump required). Each tensor also carries where its H and W dimensions are (so ConvNeXt's
  N, H, W, C LayerNorm/Linear are followed) and which input pixels the map as a whole is
  connected to (``extent``: a floor-mode stride can leave the last rows unseen).
  Operations that change the spatial layout and are not understood, and global features
  mixed back into a map (squeeze-and-excitation: every position then sees the whole
  image), mark the result "unknown"; asking for such a layer raises ``ReceptiveFieldError``
  and ``method="auto"`` falls back to the gradient method. The whole model is traced once
  per bundle and the table cached on it (``bundle.receptive_cache``).

* **gradient** (the check, and the fallback): on a deep copy made "linear and positive"
  (conv/linear weights ``1/fan_in``, normalisations and activations replaced by the
  identity, max pooling by average pooling; float32, redone in float64 near underflow),
  the support of the gradient of one output position (summed over channels) w.r.t. an
  all-ones input is exactly the set of input pixels connected to it.

Coordinates: pixel ``i`` covers the interval ``[i, i + 1)``, so its centre is ``i + 0.5``.
``start`` is the centre of output position 0 in these units (the input itself has
``start = 0.5``, ``size = jump = 1``). The field of output position ``y`` spans
``[start + y*jump - size/2, start + y*jump + size/2)``, i.e. the pixel rows
``top = start + y*jump - size/2`` to ``bottom = top + size`` (exclusive), before clipping
to the image and to ``extent``.

Layers after global pooling (``AdaptiveAvgPool2d(1)``, ``mean`` over H and W, ``flatten``
to a vector, ``Linear`` on it) have no spatial output: each of their values sees the whole
image, and asking for their receptive field raises ``ReceptiveFieldError`` (the gradient
method alone only recognises outputs that are not N, C, H, W maps).

Known limit (documented, not an error): with dilated convolutions the taps of a border
neuron can fall in the padding while the field they would have seen still reaches into
the image, so the clipped box can include up to ``(d - 1) * jump`` border pixels the neuron
is not connected to (unclipped boxes are exact; the gradient method gives the exact
support). The usual classifiers match the gradient support exactly at every position
checked, corners included (AlexNet, VGG, ResNet, SqueezeNet, GoogLeNet, Inception-v3,
DenseNet, ShuffleNet, MNASNet, ConvNeXt, EfficientNet-Lite). Padding modes other than zeros
(reflect, replicate) are treated like zero padding.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, replace
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from analysis.core.errors import LayerError, ParameterError
from analysis.core.hooks import capture, forward_hooks, get_module
from analysis.core.models.bundle import ModelBundle

METHODS = ("auto", "analytic", "gradient")


class ReceptiveFieldError(LayerError):
    """The receptive field of a layer cannot be computed (no spatial output, or an
    operation the analytic method does not understand)."""


# ------------------------------------------------------------------------------ result

@dataclass(frozen=True)
class ReceptiveField:
    """Receptive field of the neurons of one layer, per axis (height, width).

    ``size``: extent in input pixels (theoretical, not clipped at the image borders);
    ``jump``: input pixels between adjacent output positions (cumulative stride);
    ``start``: input coordinate of the centre of output position (0, 0), where pixel ``i``
    spans ``[i, i + 1)`` (so may be negative or fractional); ``output_shape``: spatial
    (H, W) of the layer output at the bundle's input size; ``method``: "analytic" or
    "gradient" (derived from gradient supports: exact where the field is not clipped on
    both sides at every probed position, otherwise a lower bound of the size);
    ``extent``: (top, left, bottom, right) of the input pixels the layer's map as a whole
    is connected to (a floor-mode stride can leave the last rows unseen), used by ``box``.
    """

    layer: str
    size: tuple[int, int]
    jump: tuple[int, int]
    start: tuple[float, float]
    output_shape: tuple[int, int]
    method: str
    extent: tuple[int, int, int, int] | None = None

    def center(self, y: int, x: int) -> tuple[float, float]:
        """Input coordinate (row, column) of the centre of output position (y, x)."""
        return (self.start[0] + y * self.jump[0], self.start[1] + x * self.jump[1])

    def box(self, y: int, x: int, image_size: tuple[int, int] | int) -> tuple[int, int, int, int]:
        """(top, left, bottom, right) in input pixels of output position (y, x), bottom and
        right exclusive, clipped to an image of ``image_size`` (int or (H, W)) and to
        ``extent``."""
        h, w = (image_size, image_size) if isinstance(image_size, numbers.Integral) else tuple(image_size)
        oh, ow = self.output_shape
        if not (0 <= y < oh and 0 <= x < ow):
            raise ParameterError(f"Position ({y}, {x}) is outside the {oh}x{ow} output of {self.layer}.")
        cy, cx = self.center(y, x)
        top = math.floor(cy - self.size[0] / 2 + 0.5)
        left = math.floor(cx - self.size[1] / 2 + 0.5)
        bottom, right = top + self.size[0], left + self.size[1]
        t0, l0, b0, r0 = 0, 0, h, w
        if self.extent is not None:
            t0, l0 = max(t0, self.extent[0]), max(l0, self.extent[1])
            b0, r0 = min(b0, self.extent[2]), min(r0, self.extent[3])
        top, left = min(max(top, t0), b0), min(max(left, l0), r0)
        return top, left, max(top, min(bottom, b0)), max(left, min(right, r0))

    @property
    def area(self) -> int:
        return self.size[0] * self.size[1]


# ------------------------------------------------------------------- tensor annotations

@dataclass(frozen=True)
class _Spatial:
    r: tuple[int, int]                          # field size per axis (H, W)
    j: tuple[int, int]                          # jump
    s: tuple[float, float]                      # centre of position 0
    hw: tuple[int, int]                         # spatial shape of the annotated tensor
    cov: tuple[tuple[float, float], tuple[float, float]]   # input pixels [lo, hi) the map is connected to
    dims: tuple[int, int] = (-2, -1)            # negative indices of its H and W dimensions

    def fits(self, t: torch.Tensor) -> bool:
        return t.dim() >= -self.dims[0] and (t.shape[self.dims[0]], t.shape[self.dims[1]]) == self.hw

    def nchw(self, t: torch.Tensor) -> bool:
        return self.dims == (-2, -1) and t.dim() in (3, 4)


@dataclass(frozen=True)
class _NonSpatial:               # after global pooling / flatten: sees the whole input
    reason: str


@dataclass(frozen=True)
class _Unknown:                  # derived through an operation we do not understand
    reason: str


_Info = _Spatial | _NonSpatial | _Unknown


def _pair(v) -> tuple[int, int]:
    if isinstance(v, torch.Tensor):
        v = v.tolist()
    if isinstance(v, (list, tuple)):
        if len(v) == 1:
            return int(v[0]), int(v[0])
        if len(v) != 2:
            raise ValueError(f"expected 1 or 2 values, got {v!r}")
        return int(v[0]), int(v[1])
    return int(v), int(v)


def _bind(args, kwargs, names: Sequence[str], defaults: dict) -> dict:
    out = dict(defaults)
    out.update(zip(names, args))
    out.update(kwargs or {})
    return out


def _through(info: _Spatial, k, s, p_left, d, out_hw) -> _Spatial:
    """One sliding-window layer (convolution or pooling), per axis."""
    r, j, st, cov = [], [], [], []
    for a in range(2):
        keff = d[a] * (k[a] - 1) + 1
        r.append(info.r[a] + (keff - 1) * info.j[a])
        st.append(info.s[a] + ((keff - 1) / 2 - p_left[a]) * info.j[a])
        j.append(info.j[a] * s[a])
        # The map only sees what its first and last windows reach inside the previous map
        # (a floor-mode stride can drop the last rows).
        lo = max(info.cov[a][0], st[a] - r[a] / 2)
        hi = min(info.cov[a][1], st[a] + (out_hw[a] - 1) * j[a] + r[a] / 2)
        cov.append((lo, max(lo, hi)))
    return _Spatial(tuple(r), tuple(j), tuple(st), tuple(out_hw), tuple(cov))


_GLOBAL_MIX = ("it mixes a global feature (e.g. squeeze-and-excitation or attention pooling) into "
               "the spatial map, so every position sees the whole image")


def _union(infos: list[_Info]) -> _Info:
    """Several inputs combined position by position: the hull of their fields."""
    for i in infos:
        if isinstance(i, _Unknown):
            return i
    spatial = [i for i in infos if isinstance(i, _Spatial)]
    if not spatial:
        return infos[0]
    if len(spatial) != len(infos):
        return _Unknown(_GLOBAL_MIX)
    first = spatial[0]
    if any(i.hw != first.hw or i.dims != first.dims for i in spatial):
        return _Unknown("it combines feature maps of different spatial sizes or layouts (broadcasting)")
    if any(i.j != first.j for i in spatial):
        return _Unknown("it combines feature maps with different strides")
    r, st, cov = [], [], []
    for a in range(2):
        lo = min(i.s[a] - i.r[a] / 2 for i in spatial)
        hi = max(i.s[a] + i.r[a] / 2 for i in spatial)
        r.append(int(round(hi - lo)))
        st.append((lo + hi) / 2)
        cov.append((min(i.cov[a][0] for i in spatial), max(i.cov[a][1] for i in spatial)))
    return _Spatial(tuple(r), first.j, tuple(st), first.hw, tuple(cov), first.dims)


def _abs_dims(info: _Spatial, nd: int) -> tuple[int, int]:
    return nd + info.dims[0], nd + info.dims[1]


def _with_dims(info: _Spatial, h_abs: int, w_abs: int, nd_out: int) -> _Spatial:
    return replace(info, dims=(h_abs - nd_out, w_abs - nd_out))


# Operations that act on each position separately (or only across channels / batch) and
# keep the spatial shape: one input keeps the field, several give the union (hull).
_POINTWISE = frozenset("""
relu relu_ relu6 hardtanh hardtanh_ elu elu_ selu selu_ celu celu_ leaky_relu leaky_relu_ prelu
rrelu rrelu_ gelu silu silu_ mish mish_ hardswish hardswish_ hardsigmoid hardsigmoid_ sigmoid
sigmoid_ tanh tanh_ softplus softsign threshold threshold_ logsigmoid tanhshrink softshrink
hardshrink clamp clamp_ clip clip_ clamp_min clamp_min_ clamp_max clamp_max_ abs abs_ neg neg_
__neg__ __pos__ __abs__ exp exp_ log log_ log1p expm1 sqrt sqrt_ rsqrt rsqrt_ square square_ pow pow_
__pow__ __rpow__ __ipow__ reciprocal reciprocal_ sign floor ceil round trunc frac erf erfc sin cos
nan_to_num nan_to_num_ batch_norm dropout dropout_ dropout1d dropout2d dropout3d alpha_dropout
feature_alpha_dropout feature_dropout local_response_norm
add add_ __add__ __radd__ __iadd__ sub sub_ subtract __sub__ __rsub__ __isub__ rsub mul mul_
multiply __mul__ __rmul__ __imul__ div div_ divide true_divide __truediv__ __rtruediv__
__itruediv__ __floordiv__ floor_divide fmod remainder __mod__ maximum minimum fmax fmin where
addcmul addcmul_ addcdiv addcdiv_ lerp lerp_ eq ne lt le gt ge __eq__ __ne__ __lt__ __le__
__gt__ __ge__ logical_and logical_or logical_not __and__ __or__ __xor__ __invert__ masked_fill
masked_fill_ to cpu cuda float double half bfloat16 type type_as contiguous clone detach detach_
requires_grad_ retain_grad pin_memory share_memory_ as_subclass
""".split())
# Reinterpret memory (row-major): fine when the H, W dimensions survive with the same
# number of elements in front of them.
_RESHAPES = frozenset("view reshape view_as reshape_as squeeze squeeze_ unsqueeze unsqueeze_ "
                      "channel_shuffle native_channel_shuffle".split())
# Select / repeat along one non-spatial dimension.
_SELECTS = frozenset("__getitem__ narrow select index_select chunk split split_with_sizes tensor_split "
                     "unbind expand expand_as repeat stack".split())
_CATS = frozenset({"cat", "concat", "concatenate"})
_SOFTMAX = frozenset({"softmax", "log_softmax"})
_PERMUTES = frozenset({"permute", "transpose", "swapaxes", "swapdims", "movedim", "moveaxis"})
_REDUCTIONS = frozenset("mean sum amax amin max min std var norm logsumexp prod nansum nanmean "
                        "std_mean var_mean median nanmedian argmax argmin".split())
_CONV = frozenset({"conv2d"})
_MAXPOOL = frozenset({"max_pool2d", "_max_pool2d", "max_pool2d_with_indices"})
_AVGPOOL = frozenset({"avg_pool2d"})
_ADAPTIVE = frozenset({"adaptive_avg_pool2d", "adaptive_max_pool2d", "_adaptive_max_pool2d",
                       "adaptive_max_pool2d_with_indices"})


def _tensors(obj, acc: list) -> list:
    if isinstance(obj, torch.Tensor):
        acc.append(obj)
    elif isinstance(obj, (list, tuple)):
        for o in obj:
            _tensors(o, acc)
    elif isinstance(obj, dict):
        for o in obj.values():
            _tensors(o, acc)
    return acc


class _Tracer(TorchFunctionMode):
    """Attaches receptive-field info to every tensor derived from the traced input.

    Info is keyed by ``id(tensor)``; every annotated tensor is kept alive until the trace
    ends so ids stay unique. In-place ops return the same tensor and simply update its
    entry. Operations on tensors without info (weights, constants) are not tracked."""

    def __init__(self):
        super().__init__()
        self.info: dict[int, _Info] = {}
        self._alive: list[torch.Tensor] = []

    def set(self, t: torch.Tensor, info: _Info) -> None:
        if id(t) not in self.info:
            self._alive.append(t)
        self.info[id(t)] = info

    def get(self, t) -> _Info | None:
        return self.info.get(id(t)) if isinstance(t, torch.Tensor) else None

    def clear(self) -> None:
        self.info.clear()
        self._alive.clear()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = getattr(func, "__name__", "")
        if name in ("dim", "size", "numel") or (name == "__get__" and not isinstance(out, torch.Tensor)):
            return out
        ins = [t for t in _tensors((args, kwargs), []) if id(t) in self.info]
        if not ins:
            return out
        try:
            self._propagate(name, func, args, kwargs, out, ins)
        except Exception as e:  # noqa: BLE001 - never break the forward: mark the result as not understood
            for t in _tensors(out, []):
                self.set(t, _Unknown(f"operation {name!r} could not be analysed ({type(e).__name__}: {e})"))
        return out

    # ------------------------------------------------------------------ rules
    def _propagate(self, name, func, args, kwargs, out, ins):
        infos = [self.info[id(t)] for t in ins]
        outs = _tensors(out, [])
        if name in ("__setitem__", "copy_"):            # in-place write into args[0]
            target = args[0]
            src = [self.info[id(t)] for t in ins if t is not target]
            cur = self.get(target)
            if src:
                self.set(target, _union(([cur] if cur is not None else []) + src))
            return
        if name == "__get__":
            attr = getattr(getattr(func, "__self__", None), "__name__", "")
            for t in outs:
                self.set(t, infos[0] if attr == "data" else _Unknown(f"tensor attribute {attr!r}"))
            return
        if not outs:
            return
        unknown = next((i for i in infos if isinstance(i, _Unknown)), None)
        if unknown is not None:
            res = unknown
        elif all(isinstance(i, _NonSpatial) for i in infos):
            res = infos[0]          # anything computed from global features stays global
        else:
            res = self._rule(name, args, kwargs, infos, ins, outs)
        for t in outs:
            if isinstance(res, _Spatial) and not res.fits(t):
                self.set(t, _Unknown(f"operation {name!r} changed the spatial shape unexpectedly"))
            else:
                self.set(t, res)

    def _rule(self, name, args, kwargs, infos, ins, outs) -> _Info:
        x = args[0] if args and isinstance(args[0], torch.Tensor) else ins[0]
        xi = self.get(x)
        if isinstance(xi, _Spatial) and not xi.fits(x):
            raise ValueError("spatial shape bookkeeping lost")
        if name in _POINTWISE:
            return _union(infos)
        if name in _CATS:
            b = _bind(args, kwargs, ["tensors", "dim"], {"dim": 0})
            return self._cat(infos, ins, b["dim"])
        if not isinstance(xi, _Spatial):
            return _Unknown(f"operation {name!r} on a non-spatial tensor mixed with spatial ones"
                            if isinstance(xi, _NonSpatial) or xi is None else f"operation {name!r}")
        nd = x.dim()
        o = outs[0]
        if name in _CONV:
            return self._conv(args, kwargs, xi, x, o)
        if name in _MAXPOOL or name in _AVGPOOL:
            return self._pool(name, args, kwargs, xi, x, o)
        if name == "pad":
            return self._pad(args, kwargs, xi, x)
        if name in _ADAPTIVE:
            return self._adaptive(xi, x, o)
        if name in _REDUCTIONS:
            if len(args) > 1 and isinstance(args[1], torch.Tensor):     # max(a, b): elementwise
                return _union(infos)
            return self._reduce(name, args, kwargs, xi, x, o)
        if name == "flatten":
            b = _bind(args, kwargs, ["input", "start_dim", "end_dim"], {"start_dim": 0, "end_dim": -1})
            start, end = b["start_dim"] % nd, b["end_dim"] % nd
            h, w = _abs_dims(xi, nd)
            if start <= w and end >= h and end > start:
                return _NonSpatial("the feature map is flattened into a vector") if o.dim() <= 2 \
                    else _Unknown("flatten merges the spatial dimensions")
            shift = lambda a: a if a < start else a - (end - start)  # noqa: E731 - one-line index map
            return _with_dims(xi, shift(h), shift(w), o.dim())
        if name in _PERMUTES:
            return self._permute(name, args, kwargs, xi, x, o)
        if name == "linear":                 # acts on the last dimension
            return xi if -1 not in xi.dims else _Unknown("a linear layer is applied along the width")
        if name == "layer_norm":
            b = _bind(args, kwargs, ["input", "normalized_shape"], {})
            ns = b["normalized_shape"]
            n = 1 if isinstance(ns, int) else len(ns)
            return xi if -min(xi.dims) > n else _Unknown("layer_norm normalises over spatial dimensions")
        if name in _SOFTMAX:
            b = _bind(args, kwargs, ["input", "dim"], {"dim": None})
            if b["dim"] is None or (b["dim"] % nd) in _abs_dims(xi, nd):
                return _Unknown(f"{name} over a spatial dimension")
            return xi
        if name in _RESHAPES or name in _SELECTS:
            return self._reshape(name, xi, x, ins, infos, outs)
        return _Unknown(f"operation {name!r} is not understood by the analytic method")

    def _conv(self, args, kwargs, xi, x, out):
        if not xi.nchw(x):
            return _Unknown("convolution of a tensor that is not laid out N, C, H, W")
        b = _bind(args, kwargs, ["input", "weight", "bias", "stride", "padding", "dilation", "groups"],
                  {"stride": 1, "padding": 0, "dilation": 1})
        k = tuple(b["weight"].shape[-2:])
        s, d = _pair(b["stride"]), _pair(b["dilation"])
        p = b["padding"]
        if isinstance(p, str):
            if p == "valid":
                p = (0, 0)
            elif p == "same":   # torch puts the extra pixel of an odd total on the right
                p = tuple((d[a] * (k[a] - 1)) // 2 for a in range(2))
            else:
                return _Unknown(f"unknown padding {p!r}")
        return _through(xi, k, s, _pair(p), d, tuple(out.shape[-2:]))

    def _pool(self, name, args, kwargs, xi, x, out):
        if not xi.nchw(x):
            return _Unknown("pooling of a tensor that is not laid out N, C, H, W")
        names = ["input", "kernel_size", "stride", "padding", "dilation", "ceil_mode"] if name in _MAXPOOL \
            else ["input", "kernel_size", "stride", "padding", "ceil_mode"]
        b = _bind(args, kwargs, names, {"stride": None, "padding": 0, "dilation": 1})
        k = _pair(b["kernel_size"])
        st = b["stride"]
        s = k if st is None or (isinstance(st, (list, tuple)) and len(st) == 0) else _pair(st)
        return _through(xi, k, s, _pair(b["padding"]), _pair(b["dilation"]), tuple(out.shape[-2:]))

    def _pad(self, args, kwargs, xi, x):
        if not xi.nchw(x):
            return _Unknown("padding of a tensor that is not laid out N, C, H, W")
        b = _bind(args, kwargs, ["input", "pad", "mode", "value"], {"mode": "constant"})
        pad = [int(v) for v in b["pad"]] + [0, 0, 0, 0]
        left, right, top, bottom = pad[:4]
        h, w = xi.hw
        return replace(xi, s=(xi.s[0] - top * xi.j[0], xi.s[1] - left * xi.j[1]),
                       hw=(h + top + bottom, w + left + right))

    def _adaptive(self, xi, x, out):
        if not xi.nchw(x):
            return _Unknown("pooling of a tensor that is not laid out N, C, H, W")
        (ih, iw), (oh, ow) = xi.hw, tuple(out.shape[-2:])
        if (oh, ow) == (ih, iw):
            return xi
        if (oh, ow) == (1, 1):
            return _NonSpatial("global pooling")
        if ih % oh == 0 and iw % ow == 0:      # uniform windows: an ordinary pooling
            k = (ih // oh, iw // ow)
            return _through(xi, k, k, (0, 0), (1, 1), (oh, ow))
        return _Unknown(f"adaptive pooling from {ih}x{iw} to {oh}x{ow} has windows of unequal size")

    def _reduce(self, name, args, kwargs, xi, x, out):
        names = ["input", "p", "dim"] if name == "norm" else ["input", "dim"]
        b = _bind(args, kwargs, names, {"dim": None})
        dim, nd = b["dim"], x.dim()
        if dim is None or (isinstance(dim, (list, tuple)) and len(dim) == 0):
            red = set(range(nd))
        else:
            red = {int(d) % nd for d in (dim if isinstance(dim, (list, tuple)) else [dim])}
        h, w = _abs_dims(xi, nd)
        if {h, w} <= red:
            return _NonSpatial("global pooling (reduction over height and width)")
        if {h, w} & red:
            return _Unknown(f"{name} reduces over one spatial dimension")
        if out.dim() == nd:                                     # keepdim
            return xi
        drop = lambda a: a - sum(1 for r in red if r < a)      # noqa: E731 - one-line index map
        return _with_dims(xi, drop(h), drop(w), out.dim())

    def _permute(self, name, args, kwargs, xi, x, out):
        nd = x.dim()
        if name == "permute":
            rest = args[1:] if len(args) > 1 else (kwargs["dims"],)
            dims = rest[0] if len(rest) == 1 and isinstance(rest[0], (list, tuple, torch.Size)) else rest
            perm = [int(d) % nd for d in dims]
        elif name in ("transpose", "swapaxes", "swapdims"):
            keys = ("dim0", "dim1") if name == "transpose" else ("axis0", "axis1") \
                if name == "swapaxes" else ("dim0", "dim1")
            b = _bind(args, kwargs, ["input", *keys], {})
            perm = list(range(nd))
            d0, d1 = int(b[keys[0]]) % nd, int(b[keys[1]]) % nd
            perm[d0], perm[d1] = perm[d1], perm[d0]
        else:
            return _Unknown(f"{name} moves dimensions")
        h, w = _abs_dims(xi, nd)
        nh, nw = perm.index(h), perm.index(w)
        if nh > nw:
            return _Unknown(f"{name} swaps height and width")
        return _with_dims(xi, nh, nw, nd)

    def _cat(self, infos, ins, dim):
        res = _union(infos)
        if not isinstance(res, _Spatial):
            return res
        for t in ins:
            if t.dim() != ins[0].dim():
                return _Unknown("concatenation of tensors with different dimensions")
        if int(dim) % ins[0].dim() in _abs_dims(res, ins[0].dim()):
            return _Unknown("concatenation along a spatial dimension")
        return res

    def _reshape(self, name, xi, x, ins, infos, outs):
        """Shape ops: fine when every output still has the map's H and W dimensions."""
        base = _union(infos) if name == "stack" else xi
        if not isinstance(base, _Spatial):
            return base
        nd = x.dim()
        h, w = _abs_dims(xi, nd)
        o = outs[0]
        if o.dim() <= 2 < nd and o.numel() == x.numel() and name in _RESHAPES:
            return _NonSpatial("the feature map is reshaped into a vector")
        candidates = [(h - nd + o.dim(), w - nd + o.dim()), (h, w)]   # same place from the end / start
        for ch, cw in candidates:
            if not (0 <= ch < cw < o.dim()) or (o.shape[ch], o.shape[cw]) != xi.hw:
                continue
            if name in _RESHAPES:    # memory reinterpretation: same number of elements in front
                if w != h + 1 or cw != ch + 1 or math.prod(o.shape[:ch]) != math.prod(x.shape[:h]):
                    continue
            if all(t.dim() == o.dim() and (t.shape[ch], t.shape[cw]) == xi.hw for t in outs):
                return _with_dims(base, ch, cw, o.dim())
        return _Unknown(f"{name} changes the spatial layout")


# -------------------------------------------------------------------------- analytic

def _first_tensor(output):
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    return None


def _model_dtype(model: nn.Module) -> torch.dtype:
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


def _trace(bundle: ModelBundle) -> dict[str, _Info]:
    """Receptive-field info of every module's output (last call), from one forward of a
    zero image on the shared model (nothing mutated; hooks removed in ``finally``)."""
    cached = bundle.receptive_cache
    if cached is not None:
        return cached
    with bundle.lock:
        cached = bundle.receptive_cache
        if cached is not None:
            return cached
        model = bundle.model
        size = bundle.input_size
        table: dict[str, _Info] = {}
        tracer = _Tracer()

        def make_hook(name: str):
            def hook(mod, inputs, output):
                t = _first_tensor(output)
                info = tracer.get(t) if t is not None else _Unknown("the layer output is not a tensor")
                if info is None:
                    info = _Unknown("the layer output is not computed from the input by "
                                    "operations the analytic method can follow")
                table[name] = info
            return hook

        with forward_hooks((module, make_hook(name)) for name, module in model.named_modules()):
            x = torch.zeros(1, bundle.preprocess.channels, size, size, device=bundle.device,
                            dtype=_model_dtype(model))
            with torch.inference_mode(), tracer:
                tracer.set(x, _Spatial((1, 1), (1, 1), (0.5, 0.5), (size, size), ((0, size), (0, size))))
                try:
                    model(x)
                except (RuntimeError, ValueError, TypeError, IndexError) as e:
                    raise ReceptiveFieldError(f"The model's forward failed on a blank "
                                              f"{size}x{size} image: {e}") from e
        tracer.clear()
        bundle.receptive_cache = table   # derived data; the shared model is untouched
        return table


def _from_entry(layer: str, info: _Info) -> ReceptiveField:
    if isinstance(info, _NonSpatial):
        raise ReceptiveFieldError(
            f"{layer} has no spatial output (it comes after {info.reason}): each of its values "
            "sees the whole image. Pick a convolutional layer or block before the pooling.")
    if isinstance(info, _Unknown):
        raise ReceptiveFieldError(f"The analytic receptive field of {layer} is not available: {info.reason}.")
    (ylo, yhi), (xlo, xhi) = info.cov
    return ReceptiveField(layer=layer, size=tuple(int(v) for v in info.r), jump=tuple(int(v) for v in info.j),
                          start=tuple(float(v) for v in info.s), output_shape=tuple(int(v) for v in info.hw),
                          method="analytic", extent=(round(ylo), round(xlo), round(yhi), round(xhi)))


def _check_module(bundle: ModelBundle, layer: str) -> None:
    if isinstance(bundle.model, torch.jit.ScriptModule):
        raise ReceptiveFieldError("Receptive fields need a Python (nn.Module) model: the operations of a "
                                  "TorchScript model cannot be followed or hooked.")
    get_module(bundle.model, layer)            # LayerError for an unknown name


def _entry(bundle: ModelBundle, layer: str) -> _Info:
    _check_module(bundle, layer)
    table = _trace(bundle)
    if layer not in table:
        raise ReceptiveFieldError(f"{layer} is not called in the model's forward.")
    return table[layer]


# -------------------------------------------------------------------------- gradient

_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU,
                nn.Mish, nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Sigmoid, nn.Tanh, nn.Softplus,
                nn.Softsign, nn.Threshold, nn.RReLU, nn.LogSigmoid, nn.Tanhshrink, nn.Softshrink,
                nn.Hardshrink, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
                nn.FeatureAlphaDropout)
_NORMS = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm,
          nn.modules.instancenorm._InstanceNorm)

# Functional calls in forward code made linear: identity, or max -> average pooling.
_IDENTITY_FUNCS = frozenset("""
relu relu_ relu6 hardtanh hardtanh_ elu elu_ selu selu_ celu celu_ leaky_relu leaky_relu_ prelu rrelu
rrelu_ gelu silu silu_ mish mish_ hardswish hardswish_ hardsigmoid hardsigmoid_ sigmoid sigmoid_
tanh tanh_ softplus softsign threshold threshold_ logsigmoid clamp clamp_ clip clip_ clamp_min
clamp_min_ clamp_max clamp_max_ dropout dropout_ dropout1d dropout2d dropout3d alpha_dropout
feature_alpha_dropout batch_norm group_norm layer_norm instance_norm local_response_norm
""".split())


class _Linearize(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name in _IDENTITY_FUNCS and args and isinstance(args[0], torch.Tensor):
            return args[0]
        if name in _MAXPOOL:
            b = _bind(args, kwargs, ["input", "kernel_size", "stride", "padding", "dilation", "ceil_mode",
                                     "return_indices"], {"stride": None, "padding": 0, "dilation": 1,
                                                         "ceil_mode": False, "return_indices": False})
            if _pair(b["dilation"]) != (1, 1) or b["return_indices"]:
                raise ReceptiveFieldError("dilated max pooling (or one returning indices) cannot be "
                                          "made linear for the gradient method")
            st = b["stride"]
            return F.avg_pool2d(b["input"], b["kernel_size"], None if st in (None, [], ()) else st,
                                b["padding"], b["ceil_mode"])
        if name in ("adaptive_max_pool2d", "_adaptive_max_pool2d"):
            return F.adaptive_avg_pool2d(args[0], args[1] if len(args) > 1 else kwargs["output_size"])
        return func(*args, **kwargs)


def _linearized_copy(bundle: ModelBundle) -> nn.Module:
    """A float32 copy in which every input pixel connected to an output has a strictly
    positive gradient: positive constant weights, identity activations and norms, average
    instead of max pooling."""
    model = bundle.copy_model()
    for parent in list(model.modules()):
        for cname, child in list(parent.named_children()):
            new = None
            if isinstance(child, _ACTIVATIONS) or isinstance(child, _NORMS):
                new = nn.Identity()
            elif isinstance(child, nn.MaxPool2d):
                if _pair(child.dilation) != (1, 1) or child.return_indices:
                    raise ReceptiveFieldError(f"{cname}: dilated max pooling cannot be made linear "
                                              "for the gradient method")
                new = nn.AvgPool2d(child.kernel_size, child.stride, child.padding, child.ceil_mode)
            elif isinstance(child, nn.AdaptiveMaxPool2d):
                new = nn.AdaptiveAvgPool2d(child.output_size)
            if new is not None:
                setattr(parent, cname, new)
    with torch.no_grad():
        for m in model.modules():
            for pname, p in m.named_parameters(recurse=False):
                if pname == "weight" and p.dim() >= 2:
                    p.fill_(1.0 / max(1, p[0].numel()))
                elif pname == "bias":
                    p.zero_()
                else:
                    p.fill_(1.0)
    model.float()
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def _resolve_pos(p, n: int) -> int:
    if p is None:
        return n // 2
    if callable(p):
        return p(n)
    return int(p)


def _support(g: torch.Tensor) -> tuple[int, int, int, int]:
    m = g > 0
    rows = torch.nonzero(m.any(1)).flatten()
    cols = torch.nonzero(m.any(0)).flatten()
    if rows.numel() == 0:
        return (0, 0, 0, 0)
    return int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1


# Below this, float32 gradients are near underflow (1.2e-38) and some pixels could have
# been lost: the layer is recomputed in float64.
_UNDERFLOW_GUARD = 1e-30


def _layer_boxes(model: nn.Module, bundle: ModelBundle, layer: str, positions: list, dtype: torch.dtype,
                 dims: tuple[int, int]):
    size, ch = bundle.input_size, bundle.preprocess.channels
    x = torch.ones(len(positions), ch, size, size, dtype=dtype, device=bundle.device, requires_grad=True)
    with torch.enable_grad(), capture(model, layer, detach=False) as acts, _Linearize():
        try:
            model(x)
        except (RuntimeError, ValueError, TypeError, IndexError) as e:
            raise ReceptiveFieldError(f"The linearised model's forward failed: {e}") from e
        if layer not in acts:
            raise ReceptiveFieldError(f"{layer} is not called in the model's forward.")
        out = acts[layer]
        nd = out.dim()
        if nd != 4 and (dims == (-2, -1) or nd < 1 - dims[0]):
            raise ReceptiveFieldError(f"{layer} has no spatial output (shape {tuple(out.shape[1:])}): "
                                      "each of its values sees the whole image.")
        out = out.movedim((nd + dims[0], nd + dims[1]), (nd - 2, nd - 1))
        oh, ow = (int(v) for v in out.shape[-2:])
        terms = []
        for b, (py, px) in enumerate(positions):
            y, xx = _resolve_pos(py, oh), _resolve_pos(px, ow)
            if not (0 <= y < oh and 0 <= xx < ow):
                raise ParameterError(f"Position ({y}, {xx}) is outside the {oh}x{ow} output of {layer}.")
            terms.append(out[b, ..., y, xx].sum())
        (g,) = torch.autograd.grad(torch.stack(terms).sum(), x)
    g = g.abs().sum(1)
    pos = g[g > 0]
    smallest = float(pos.min()) if pos.numel() else math.inf
    return [_support(g[b]) for b in range(len(positions))], (oh, ow), smallest


def _layout(bundle: ModelBundle, layer: str) -> tuple[int, int]:
    """Where the layer's H and W dimensions are (N, H, W, C inside ConvNeXt blocks, say), as
    the analytic trace found them; N, C, H, W when it could not follow the layer."""
    try:
        info = _trace(bundle).get(layer)
    except ReceptiveFieldError:
        info = None
    return info.dims if isinstance(info, _Spatial) else (-2, -1)


def _gradient_boxes(bundle: ModelBundle, requests: Sequence[tuple[str, object, object]]
                    ) -> tuple[list[tuple[int, int, int, int]], dict[str, tuple[int, int]]]:
    """Gradient-support boxes of (layer, y, x) requests (y/x: int, None = centre, or a
    callable of the output size). One forward/backward per distinct layer with that layer's
    positions batched (batch items are independent); float32, or float64 where float32
    comes near underflow. Returns the boxes and the layers' output shapes (H, W)."""
    layers = list(dict.fromkeys(r[0] for r in requests))
    for layer in layers:
        _check_module(bundle, layer)             # LayerError before any work
    model = _linearized_copy(bundle)
    dtype = torch.float32
    boxes: dict[int, tuple] = {}
    shapes: dict[str, tuple[int, int]] = {}
    for layer in layers:
        idx = [i for i, r in enumerate(requests) if r[0] == layer]
        positions = [(requests[i][1], requests[i][2]) for i in idx]
        dims = _layout(bundle, layer)
        found, shape, smallest = _layer_boxes(model, bundle, layer, positions, dtype, dims)
        if smallest < _UNDERFLOW_GUARD and dtype != torch.float64:
            dtype = torch.float64
            model.double()
            found, shape, smallest = _layer_boxes(model, bundle, layer, positions, dtype, dims)
        shapes[layer] = shape
        boxes.update(zip(idx, found))
    return [boxes[i] for i in range(len(requests))], shapes


def _axis_from_boxes(pos: list[int], boxes: list[tuple[int, int]], n_out: int):
    """size, jump, start along one axis from (top, bottom) supports at positions ``pos``,
    the first being position 0 and the last position n_out - 1.

    The first top and the last bottom bound what the map sees at all (``lo``, ``hi``). An
    edge strictly inside them is the theoretical edge; one on them may be clipped. Jump
    comes from two unclipped tops (or bottoms), size from a position unclipped on both
    sides or from an unclipped top and bottom at two positions. Where that is impossible
    (the field exceeds the image) size is the smallest that reproduces every clipped
    support: a lower bound.
    """
    lo, hi = boxes[0][0], boxes[-1][1]
    tops = [(p, t) for p, (t, b) in zip(pos, boxes) if t > lo]
    bots = [(p, b) for p, (t, b) in zip(pos, boxes) if b < hi]
    j = None
    for series in (tops, bots):
        pairs = [(p1, v1, p2, v2) for (p1, v1), (p2, v2) in zip(series, series[1:]) if p2 != p1]
        if pairs:
            p1, v1, p2, v2 = pairs[0]
            j = round((v2 - v1) / (p2 - p1))
            break
    if j is None or j <= 0:
        j = max(1, round((hi - lo) / n_out))
    both = [(p, t, b) for p, (t, b) in zip(pos, boxes) if t > lo and b < hi]
    r = max(b - t for t, b in boxes)
    if both:
        p, t, b = both[0]
        r = b - t
        start = t + r / 2 - p * j
    elif tops and bots:
        (pa, ta), (pb, bb) = tops[-1], bots[0]
        r = bb - ta - (pb - pa) * j
        start = ta + r / 2 - pa * j
    elif bots:                 # only bottom edges known: grow r until the clipped tops are reached
        anchor = bots[0][1] - bots[0][0] * j                 # bottom edge of position 0
        r = max([r] + [math.ceil(anchor + p * j - lo) for p, (t, b) in zip(pos, boxes) if t <= lo])
        start = anchor - r / 2
    elif tops:                 # only top edges known: grow r until the clipped bottoms are reached
        anchor = tops[0][1] - tops[0][0] * j                 # top edge of position 0
        r = max([r] + [math.ceil(hi - anchor - p * j) for p, (t, b) in zip(pos, boxes) if b >= hi])
        start = anchor + r / 2
    else:                      # clipped on both sides everywhere: centre the positions
        start = (lo + hi - (n_out - 1) * j) / 2
        for p in pos:
            c = start + p * j
            r = max(r, math.ceil(2 * (c - lo)), math.ceil(2 * (hi - c)))
    return int(r), int(j), float(start)


def _gradient_field(bundle: ModelBundle, layer: str) -> ReceptiveField:
    """size/jump/start from the gradient supports of the first, central, next-to-central
    and last output positions (on the diagonal)."""
    picks = [lambda n: 0, lambda n: n // 2, lambda n: min(n // 2 + 1, n - 1), lambda n: n - 1]
    boxes, shapes = _gradient_boxes(bundle, [(layer, p, p) for p in picks])
    oh, ow = shapes[layer]
    ry, jy, sy = _axis_from_boxes([p(oh) for p in picks], [(b[0], b[2]) for b in boxes], oh)
    rx, jx, sx = _axis_from_boxes([p(ow) for p in picks], [(b[1], b[3]) for b in boxes], ow)
    extent = (boxes[0][0], boxes[0][1], boxes[-1][2], boxes[-1][3])
    return ReceptiveField(layer=layer, size=(ry, rx), jump=(jy, jx), start=(sy, sx),
                          output_shape=(oh, ow), method="gradient", extent=extent)


# ------------------------------------------------------------------------------- API

def receptive_field(bundle: ModelBundle, layer: str, method: str = "auto") -> ReceptiveField:
    """Receptive field of the neurons of ``layer``.

    ``method``: "analytic" (exact arithmetic along the traced graph), "gradient" (derived
    from gradient supports of a few positions on a linearised copy), or "auto" (analytic,
    falling back to gradient when an operation is not understood). Raises LayerError for
    an unknown layer and ReceptiveFieldError for a layer without spatial output (after
    global pooling), with every method.

    Args:
        bundle: the model.
        layer: the layer's qualified name.
        method: "auto", "analytic" or "gradient".
    """
    if method not in METHODS:
        raise ParameterError(f"Unknown receptive-field method {method!r}; choose from {', '.join(METHODS)}.")
    info = _entry(bundle, layer)
    if isinstance(info, _NonSpatial):
        return _from_entry(layer, info)          # raises: no spatial output, whatever the method
    if method == "gradient" or (method == "auto" and isinstance(info, _Unknown)):
        return _gradient_field(bundle, layer)
    return _from_entry(layer, info)
