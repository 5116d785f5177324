"""Incremental occlusion for EfficientNet-Lite (Krypton-style, Nakandala et al., SIGMOD 2019).

An occluding window changes only a small box of each early feature map. Instead of running
the whole network on every occluded copy, :class:`LitePlan` caches the clean image's
activations once and, for each window, recomputes at every layer only the box that the
window can have changed: the box grows by each convolution's halo and shrinks through its
stride; its surroundings (and the TF-"same" zero padding) are read from the cached clean
activation. All windows of a batch share one box size per layer (the box is shifted inward
at the borders), so each layer is one batched convolution on small tiles, gathered with
one gather and one scatter. Once a box would cover half of its map or more (on
EfficientNet-Lite0 at 224 px with 16-px windows: in the 14×14 stage), the full maps are
materialised and the rest of the network runs batched as usual. The result is exact: the same score drops as full forward passes,
up to float rounding (batch-norm is folded into the convolutions of a private copy of
the weights; the shared model is only read).

This is written for convlens' ``EfficientNetLite`` module structure (Conv2dSame, BN,
ReLU6, MBConv blocks without squeeze-excitation); :func:`plan_for` returns None for any
other model, and ``saliency.occlusion(fast=True)`` then falls back to its generic fast mode
(every other window position, interpolated). docs/saliency.md (Performance) has the
measurements.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from analysis.core.models.efficientnet_lite import Conv2dSame, EfficientNetLite, MBConvBlock

# Materialise the full maps before a convolution whose output box would cover at least
# this fraction of its map (boxes are cheaper only while they are clearly smaller).
DENSE_FRACTION = 0.5


# ------------------------------------------------------------------------------- fused layers

def _onednn_fused_ok() -> bool:
    """Whether oneDNN's fused convolution + hardtanh / + add (``torch.ops.mkldnn.
    _convolution_pointwise``, what torch.compile uses on CPU) exists here and agrees with
    the plain ops; it saves one pass over every activation. Checked once."""
    global _ONEDNN
    if _ONEDNN is None:
        try:
            cl = torch.channels_last
            g = torch.Generator().manual_seed(0)
            x = torch.randn(2, 8, 7, 7, generator=g).contiguous(memory_format=cl)
            w = torch.randn(8, 1, 3, 3, generator=g).contiguous(memory_format=cl)
            w1 = torch.randn(4, 8, 1, 1, generator=g).contiguous(memory_format=cl)
            b, b1 = torch.randn(8, generator=g), torch.randn(4, generator=g)
            o = torch.randn(2, 4, 7, 7, generator=g).contiguous(memory_format=cl)
            op = torch.ops.mkldnn._convolution_pointwise
            with torch.inference_mode():
                y = op(x, w, b, [1, 1], [1, 1], [1, 1], 8, "hardtanh", [0.0, 6.0], "")
                z = op.binary(x, o, w1, b1, [0, 0], [1, 1], [1, 1], 1, "add", None, None, [], None)
                _ONEDNN = bool(torch.allclose(y, F.conv2d(x, w, b, 1, 1, 1, 8).clamp(0, 6), atol=1e-5)
                               and torch.allclose(z, F.conv2d(x, w1, b1) + o, atol=1e-5))
        except Exception:  # noqa: BLE001 - any failure: use the plain ops
            _ONEDNN = False
    return _ONEDNN


_ONEDNN: bool | None = None


@dataclass
class FusedConv:
    """Conv2dSame + eval BatchNorm (+ ReLU6), BN folded into the weights."""
    weight: torch.Tensor
    bias: torch.Tensor
    k: int
    s: int
    groups: int
    relu6: bool

    def axis(self, size: int) -> tuple[int, int, int]:
        """TF "SAME" on one axis: (output size, padding before, padding after)."""
        out = -(-size // self.s)
        total = max((out - 1) * self.s + self.k - size, 0)
        return out, total // 2, total - total // 2

    def _conv(self, x: torch.Tensor, pad: tuple[int, int], add: torch.Tensor | None) -> torch.Tensor:
        """conv(x) (+ add) (then ReLU6), with symmetric zero padding ``pad``."""
        if x.device.type == "cpu" and x.dtype == torch.float32 and _onednn_fused_ok():
            op = torch.ops.mkldnn._convolution_pointwise
            args = (self.weight, self.bias, list(pad), [self.s] * 2, [1, 1], self.groups)
            if add is None:
                return op(x, *args, "hardtanh" if self.relu6 else "none", [0.0, 6.0] if self.relu6 else [], "")
            if not self.relu6:
                return op.binary(x, add, *args, "add", None, None, [], None)
        y = F.conv2d(x, self.weight, self.bias, self.s, pad, 1, self.groups)
        if add is not None:
            y = y.add_(add)
        return y.clamp_(0.0, 6.0) if self.relu6 else y

    def box(self, t: torch.Tensor, add: torch.Tensor | None = None) -> torch.Tensor:
        """On a tile that already holds its halo (no padding).

        Args:
            t: the input tile (N, C_in, h, w) including the halo the kernel needs.
            add: residual (N, C_out, h', w') added before the ReLU6, or None.
        """
        return self._conv(t, (0, 0), add)

    def full(self, x: torch.Tensor, add: torch.Tensor | None = None) -> torch.Tensor:
        """On whole maps, with TF "SAME" padding.

        Args:
            x: whole input maps (N, C_in, H, W).
            add: residual of the output's shape added before the ReLU6, or None.
        """
        _, pt, pb = self.axis(x.shape[-2])
        _, pl, pr = self.axis(x.shape[-1])
        if pt != pb or pl != pr:
            x, pt, pl = F.pad(x, [pl, pr, pt, pb]), 0, 0
        return self._conv(x, (pt, pl), add)


def _fuse(conv: nn.Conv2d, bn: nn.BatchNorm2d, relu6: bool) -> FusedConv:
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    bias = bn.bias - bn.running_mean * scale
    if conv.bias is not None:
        bias = bias + conv.bias * scale
    w = (conv.weight * scale.view(-1, 1, 1, 1)).detach().clone().contiguous(memory_format=torch.channels_last)
    return FusedConv(w, bias.detach().clone(), conv.kernel_size[0], conv.stride[0], conv.groups, relu6)


@dataclass
class FusedBlock:
    expand: FusedConv | None
    dw: FusedConv
    project: FusedConv
    skip: bool


def _is_relu6(m: nn.Module) -> bool:
    return isinstance(m, nn.Hardtanh) and float(m.min_val) == 0.0 and float(m.max_val) == 6.0


def _plain_conv(m: nn.Module) -> bool:
    return (type(m) is Conv2dSame and m.kernel_size[0] == m.kernel_size[1] and m.stride[0] == m.stride[1]
            and m.dilation == (1, 1) and m.padding == (0, 0) and m.padding_mode == "zeros")


def _plain_bn(m: nn.Module) -> bool:
    return (type(m) is nn.BatchNorm2d and not m.training and m.affine and m.running_mean is not None)


class LitePlan:
    """A fused, read-only copy of an ``EfficientNetLite``'s weights with dense and
    incremental (per-window box) forward passes."""

    def __init__(self, model: EfficientNetLite):
        with torch.inference_mode():
            self.stem = _fuse(model._conv_stem, model._bn0, True)
            self.blocks = []
            for b in model._blocks:
                self.blocks.append(FusedBlock(
                    _fuse(b._expand_conv, b._bn0, True) if b.expand else None,
                    _fuse(b._depthwise_conv, b._bn1, True),
                    _fuse(b._project_conv, b._bn2, False), bool(b.skip)))
            self.head = _fuse(model._conv_head, model._bn1, True)
            self.fc_w = model._fc.weight.detach().clone()
            self.fc_b = model._fc.bias.detach().clone()

    def steps(self) -> list[tuple]:
        """The network as a flat list: ("conv", FusedConv), and ("push",) ... ("conv_add",
        FusedConv) around a residual block (its input is added to that conv's output)."""
        out: list[tuple] = [("conv", self.stem)]
        for b in self.blocks:
            if b.skip:
                out.append(("push",))
            if b.expand is not None:
                out.append(("conv", b.expand))
            out.append(("conv", b.dw))
            out.append(("conv_add" if b.skip else "conv", b.project))
        out.append(("conv", self.head))
        return out

    def logits(self, feat: torch.Tensor, target: int) -> torch.Tensor:
        """The target's logit of each image from the head's last feature maps (global mean pool,
        then the classifier row of ``target``).

        Args:
            feat: the head's output (N, C, H, W).
            target: class index.

        Returns:
            (N,) logits.
        """
        pooled = feat.mean((2, 3))
        return pooled @ self.fc_w[target] + self.fc_b[target]

    def forward(self, x: torch.Tensor, target: int) -> torch.Tensor:
        """Dense forward (the target's logit per image), equal to the model's to ~1e-5.

        Args:
            x: model-space input batch (N, C, H, W).
            target: class index whose logit is returned.
        """
        stack = []
        for st in self.steps():
            if st[0] == "push":
                stack.append(x)
            else:
                x = st[1].full(x, stack.pop() if st[0] == "conv_add" else None)
        return self.logits(x, target)


def _supported(model: nn.Module) -> bool:
    """Exactly convlens' EfficientNetLite structure, with nothing swapped in."""
    if type(model) is not EfficientNetLite or model.training:
        return False
    ok = (_plain_conv(model._conv_stem) and _plain_bn(model._bn0) and _is_relu6(model._relu_stem)
          and _plain_conv(model._conv_head) and model._conv_head.kernel_size[0] == 1
          and model._conv_head.stride[0] == 1 and _plain_bn(model._bn1) and _is_relu6(model._relu_head)
          and type(model._avg_pooling) is nn.AdaptiveAvgPool2d and model._avg_pooling.output_size in (1, (1, 1))
          and type(model._fc) is nn.Linear and model._fc.bias is not None)
    for b in model._blocks:
        ok = ok and type(b) is MBConvBlock and _plain_conv(b._depthwise_conv) and _plain_bn(b._bn1) \
            and _is_relu6(b._relu1) and _plain_conv(b._project_conv) and _plain_bn(b._bn2) \
            and b._project_conv.kernel_size[0] == 1 and b._project_conv.stride[0] == 1
        if ok and b.expand:
            ok = _plain_conv(b._expand_conv) and _plain_bn(b._bn0) and _is_relu6(b._relu0) \
                and b._expand_conv.kernel_size[0] == 1 and b._expand_conv.stride[0] == 1
    return bool(ok)


def plan_for(bundle) -> LitePlan | None:
    """The fused plan of the bundle's model (built once, cached on the bundle), or None
    when the model is not convlens' plain ``EfficientNetLite`` (callers then use full
    forward passes). The plan holds its own weights; the shared model is only read."""
    cached = bundle.derived.get("incremental_plan")     # the declared field for derived copies
    if cached is None:
        with bundle.lock:
            plan = LitePlan(bundle.model) if _supported(bundle.model) else None
        cached = bundle.derived["incremental_plan"] = (plan,)
    return cached[0]


# ------------------------------------------------------------------------------- box geometry

@dataclass
class _Axis:
    """Per unique window position on one axis: the changed rows [lo, hi] and the computed
    box [start, start + size) (one size for all positions) of the current feature map."""
    lo: np.ndarray
    hi: np.ndarray
    start: np.ndarray
    size: int
    length: int                      # the map's size on this axis


def _conv_axis(ax: _Axis, k: int, s: int, pad: int, out_len: int) -> tuple[_Axis, np.ndarray, int]:
    """Output axis of a conv (k, s, padding before): output row o reads input rows
    [o·s − pad, o·s − pad + k), so it changes iff that range meets [lo, hi]. Also the
    input tile [tile, tile + T) that the output box reads."""
    lo = np.maximum(0, -((-(ax.lo + pad - k + 1)) // s))
    hi = np.minimum(out_len - 1, (ax.hi + pad) // s)
    size = int((hi - lo + 1).max())
    start = np.minimum(lo, out_len - size)
    return _Axis(lo, hi, start, size, out_len), start * s - pad, (size - 1) * s + k


def _full_axis(ax: _Axis) -> _Axis:
    n = len(ax.lo)
    return _Axis(np.zeros(n, np.int64), np.full(n, ax.length - 1), np.zeros(n, np.int64), ax.length, ax.length)


@dataclass
class _Gather:
    """Indices that build, for every window, a tile of a map: the clean map's values
    (zero-padded by a margin) with the window's current box pasted in. Per axis, so the
    index arrays stay small for any number of windows."""
    rows: np.ndarray                 # (Y, T_r) flat offset of each tile row in the padded map
    cols: np.ndarray                 # (X, T_c) column of each tile column in the padded map
    dst_r: np.ndarray                # (Y, L_r) row of each box row inside the tile, -1 if outside
    dst_c: np.ndarray                # (X, L_c)

    def to(self, device) -> "_Gather":
        self.t_r, self.t_c = self.rows.shape[1], self.cols.shape[1]
        self._rows = torch.as_tensor(self.rows, device=device)
        self._cols = torch.as_tensor(self.cols, device=device)
        self._dr = torch.as_tensor(self.dst_r, device=device)
        self._dc = torch.as_tensor(self.dst_c, device=device)
        self._all_inside = bool((self.dst_r >= 0).all() and (self.dst_c >= 0).all())
        return self

    def clean(self, clean_flat: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """(N, T_r, T_c, C) tiles of the clean map for windows ``pos``."""
        idx = (self._rows[pos[:, 0]].unsqueeze(2) + self._cols[pos[:, 1]].unsqueeze(1)).reshape(-1)
        return clean_flat.index_select(0, idx).view(pos.shape[0], self.t_r, self.t_c, clean_flat.shape[1])

    def tile(self, clean_flat: torch.Tensor, box: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """clean_flat (P, C); box (N, C, L_r, L_c) channels_last; pos (N, 2) indices of the
        windows' row and column positions. Returns (N, C, T_r, T_c) channels_last."""
        n, c = box.shape[0], box.shape[1]
        t = self.clean(clean_flat, pos)
        dr, dc = self._dr[pos[:, 0]], self._dc[pos[:, 1]]             # (N, L_r), (N, L_c)
        dst = (torch.arange(n, device=t.device).view(n, 1, 1) * (self.t_r * self.t_c)
               + dr.unsqueeze(2) * self.t_c + dc.unsqueeze(1)).reshape(-1)
        src = box.permute(0, 2, 3, 1).reshape(-1, c)
        if not self._all_inside:
            valid = ((dr >= 0).unsqueeze(2) & (dc >= 0).unsqueeze(1)).reshape(-1)
            dst, src = dst[valid], src[valid]
        t.view(-1, c).index_copy_(0, dst, src)
        return t.permute(0, 3, 1, 2)


def _gather(rows: _Axis, cols: _Axis, t0_r: np.ndarray, t_r: int, t0_c: np.ndarray, t_c: int,
            margin: int, map_h: int, map_w: int, device) -> _Gather:
    """Tile [t0, t0 + T) per axis of a map padded by ``margin``; the current box of the
    windows is ``rows``/``cols`` (start, size)."""
    wp = map_w + 2 * margin
    r = t0_r[:, None] + margin + np.arange(t_r)[None]        # (Y, T_r) padded rows
    c = t0_c[:, None] + margin + np.arange(t_c)[None]
    assert r.min() >= 0 and r.max() < map_h + 2 * margin and c.min() >= 0 and c.max() < wp

    def dst(ax: _Axis, t0: np.ndarray, t: int) -> np.ndarray:
        d = ax.start[:, None] + np.arange(ax.size)[None] - t0[:, None]
        return np.where((d >= 0) & (d < t), d, -1).astype(np.int64)
    return _Gather((r * wp).astype(np.int64), c.astype(np.int64),
                   dst(rows, t0_r, t_r), dst(cols, t0_c, t_c)).to(device)


def _padded_flat(x: torch.Tensor, margin: int) -> torch.Tensor:
    """(1, C, H, W) -> (H + 2m) * (W + 2m) rows of C values (NHWC), zero margin."""
    if margin:
        x = F.pad(x, [margin] * 4)
    return x[0].permute(1, 2, 0).contiguous().view(-1, x.shape[1])


# ------------------------------------------------------------------------------- the engine

class IncrementalOcclusion:
    """Score drops of occluded copies of one image, by incremental inference.

    ``ys`` / ``xs``: the window's top-left rows / columns; windows are all (ys[a], xs[b]),
    addressed by index pairs (a, b). ``baseline`` (1, C, H, W): the values a window pastes.
    ``dense_fraction``: materialise full maps before a conv whose box would cover at least
    this fraction of its map.
    """

    def __init__(self, plan: LitePlan, x: torch.Tensor, baseline: torch.Tensor, target: int,
                 window: int, ys: list[int], xs: list[int], dense_fraction: float = DENSE_FRACTION):
        self.plan, self.target, self.window = plan, target, window
        dev = self.device = x.device
        h, w = x.shape[-2:]
        ys_a, xs_a = np.asarray(ys, np.int64), np.asarray(xs, np.int64)
        rows = _Axis(ys_a, np.minimum(ys_a + window, h) - 1, ys_a, window, h)
        cols = _Axis(xs_a, np.minimum(xs_a + window, w) - 1, xs_a, window, w)
        # The first box: the baseline's values under each window.
        self.first = _gather(rows, cols, ys_a, window, xs_a, window, 0, h, w, dev)
        self.first_src = _padded_flat(baseline, 0)

        # One dense pass over the clean image records, for each step of the box phase, the
        # clean map it reads and the tile geometry; the rest of the network runs densely.
        self.program: list[tuple] = []
        stack: list[tuple[torch.Tensor, _Axis, _Axis]] = []
        cur, dense = x, False

        def densify():
            full_r, full_c = _full_axis(rows), _full_axis(cols)
            self.program.append(("densify", _padded_flat(cur, 0), _gather(
                rows, cols, full_r.start, full_r.size, full_c.start, full_c.size, 0, *cur.shape[-2:], dev)))
            for j, (s_map, s_rows, s_cols) in enumerate(stack):     # residual inputs waiting too
                fr, fc = _full_axis(s_rows), _full_axis(s_cols)
                self.program.append(("densify_skip", j, _padded_flat(s_map, 0), _gather(
                    s_rows, s_cols, fr.start, fr.size, fc.start, fc.size, 0, *s_map.shape[-2:], dev)))

        with torch.inference_mode():
            for st in plan.steps():
                if st[0] == "push":
                    stack.append((cur, rows, cols))
                    self.program.append(("push",))
                    continue
                conv: FusedConv = st[1]
                skip = s_rows = s_cols = None
                if st[0] == "conv_add":
                    skip, s_rows, s_cols = stack.pop()
                out = conv.full(cur, skip)
                if dense:
                    self.program.append(("dconv", conv, skip is not None))
                elif conv.k == 1 and conv.s == 1:
                    if skip is None:
                        self.program.append(("pconv", conv))
                    else:        # + the block input's values on the output box
                        self.program.append(("pconv_add", conv, _padded_flat(skip, 0), _gather(
                            s_rows, s_cols, rows.start, rows.size, cols.start, cols.size, 0, *skip.shape[-2:], dev)))
                else:
                    if skip is not None:
                        raise NotImplementedError("a residual block must end with a 1x1 convolution")
                    oh, pt, _ = conv.axis(cur.shape[-2])
                    ow, pl, _ = conv.axis(cur.shape[-1])
                    n_rows, t0_r, t_r = _conv_axis(rows, conv.k, conv.s, pt, oh)
                    n_cols, t0_c, t_c = _conv_axis(cols, conv.k, conv.s, pl, ow)
                    if n_rows.size * n_cols.size >= dense_fraction * oh * ow:
                        densify()
                        dense = True
                        self.program.append(("dconv", conv, False))
                    else:
                        margin = conv.k
                        self.program.append(("sconv", conv, _padded_flat(cur, margin), _gather(
                            rows, cols, t0_r, t_r, t0_c, t_c, margin, *cur.shape[-2:], dev)))
                        rows, cols = n_rows, n_cols
                cur = out
            if not dense:                     # the average pool needs the whole map
                densify()
            self.clean = float(plan.logits(cur, target)[0])
        self.dense_from = next(i for i, p in enumerate(self.program) if p[0] == "densify")

    def scores(self, pos: torch.Tensor) -> torch.Tensor:
        """Target logits of the occluded copies for windows ``pos`` (N, 2) = (row index,
        column index) into ``ys`` / ``xs``."""
        pos = pos.to(self.device)
        with torch.inference_mode():
            cur = self.first.clean(self.first_src, pos).permute(0, 3, 1, 2)
            stack = []
            for p in self.program:
                op = p[0]
                if op == "dconv":
                    cur = p[1].full(cur, stack.pop() if p[2] else None)
                elif op == "pconv":
                    cur = p[1].box(cur)
                elif op == "sconv":
                    cur = p[1].box(p[3].tile(p[2], cur, pos))
                elif op == "pconv_add":
                    cur = p[1].box(cur, p[3].tile(p[2], stack.pop(), pos))
                elif op == "push":
                    stack.append(cur)
                elif op == "densify":
                    cur = p[2].tile(p[1], cur, pos)
                elif op == "densify_skip":
                    stack[p[1]] = p[3].tile(p[2], stack[p[1]], pos)
            return self.plan.logits(cur, self.target)

    def deltas(self, pos: torch.Tensor) -> np.ndarray:
        """Clean score minus the occluded copies' scores (float64).

        Args:
            pos: (N, 2) (row index, column index) pairs into ``ys`` / ``xs``.
        """
        return self.clean - self.scores(pos).double().cpu().numpy()
