"""Objectives of the optimisation engine: terms that add and scale (lucent style).

``class_logit(1) - 1e-3 * l2()``, ``channel("_blocks.9", 12) + 0.5 * diversity("_blocks.9")``,
``feature_match(layer, target) - 1e-4 * total_variation()``; every term's value is reported
separately. Activations are read through a ``Context`` of captured layer outputs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F

from analysis.core.errors import LayerError, ParameterError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# ===================================================================== objectives

@dataclass
class Context:
    """What an objective sees for one step: captured activations (with graph), the model
    output (``None`` when the forward stopped early), the image in [0, 1] before the
    transforms, and the raw pixel parameter (plain-pixel parameterisation only)."""
    acts: dict[str, torch.Tensor]
    logits: torch.Tensor | None
    image: torch.Tensor
    pixels: torch.Tensor | None
    pixel_scale: torch.Tensor | None = None

    def act(self, layer: str) -> torch.Tensor:
        """The captured activation of one layer (channels-first for feature maps).

        Args:
            layer: the layer's qualified name; one not captured raises ``LayerError``.
        """
        if layer not in self.acts:
            raise LayerError(f"Layer {layer!r} did not run in the forward pass.")
        return self.acts[layer]


@dataclass(frozen=True)
class Term:
    name: str
    fn: Callable[[Context], torch.Tensor]
    layers: frozenset = frozenset()
    needs_output: bool = False


class Objective:
    """A weighted sum of terms; maximised. ``a + b``, ``a - b``, ``k * a`` and ``-a`` work."""

    def __init__(self, terms: Sequence[tuple[float, Term]]):
        self.terms = list(terms)

    @classmethod
    def of(cls, name: str, fn, layers: Iterable[str] = (), needs_output: bool = False) -> "Objective":
        """An objective of one term with coefficient 1.

        Args:
            name: the term's display name (its value is reported under it each step).
            fn: ``fn(ctx: Context) -> scalar tensor``, the value to maximise.
            layers: the layers ``fn`` reads through ``ctx.act``; they are captured in the forward.
            needs_output: ``fn`` reads ``ctx.logits``, so the forward must run to the end (without
                it the forward stops after the last captured layer).
        """
        return cls([(1.0, Term(name, fn, frozenset(layers), needs_output))])

    @property
    def layers(self) -> frozenset:
        return frozenset().union(*(t.layers for _, t in self.terms)) if self.terms else frozenset()

    @property
    def needs_output(self) -> bool:
        return any(t.needs_output for _, t in self.terms)

    def __add__(self, other):
        if not isinstance(other, Objective):
            return NotImplemented
        return Objective(self.terms + other.terms)

    def __mul__(self, k):
        if not isinstance(k, (int, float)):
            return NotImplemented
        return Objective([(c * float(k), t) for c, t in self.terms])

    __rmul__ = __mul__

    def __neg__(self):
        return self * -1.0

    def __sub__(self, other):
        if not isinstance(other, Objective):
            return NotImplemented
        return self + (-other)

    def evaluate(self, ctx: Context) -> tuple[torch.Tensor, dict[str, float]]:
        """The weighted sum of the terms on one step's context.

        Args:
            ctx: the step's activations, logits and image (from ``forward_context``).

        Returns:
            (total with graph, term name -> its unweighted value as a float).
        """
        total, values = 0.0, {}
        for c, t in self.terms:
            v = t.fn(ctx)
            values[t.name] = values.get(t.name, 0.0) + float(v.detach())
            total = total + c * v
        return total, values

    def describe(self) -> str:
        """The objective as text, e.g. ``logit[3] - 0.1·TV``."""
        parts = []
        for c, t in self.terms:
            sign = "-" if c < 0 else "+"
            mag = abs(c)
            parts.append(f"{sign} {'' if mag == 1 else f'{mag:g}·'}{t.name}")
        s = " ".join(parts)
        return s[2:] if s.startswith("+ ") else s

    def __repr__(self):
        return f"Objective({self.describe()})"


def _channels_of(a: torch.Tensor, c: int, layer: str) -> torch.Tensor:
    if a.dim() < 2 or not 0 <= c < a.shape[1]:
        raise ParameterError(f"Channel {c} is out of range for layer {layer!r} "
                             f"({a.shape[1] if a.dim() >= 2 else 0} channels).")
    return a[:, c]


def class_logit(c: int) -> Objective:
    """The class score before the softmax (the CS231n / Simonyan objective).

    Args:
        c: class index (checked against the model's class count on the first step).
    """
    def fn(ctx):
        if not 0 <= c < ctx.logits.shape[1]:
            raise ParameterError(f"Class {c} is out of range (the model has {ctx.logits.shape[1]} classes).")
        return ctx.logits[:, c].mean()
    return Objective.of(f"logit[{c}]", fn, needs_output=True)


def class_prob(c: int, log: bool = True) -> Objective:
    """The class probability (log-softmax by default: its gradient does not vanish near 1).

    Args:
        c: class index.
        log: maximise the log-probability (default) instead of the probability.
    """
    def fn(ctx):
        if not 0 <= c < ctx.logits.shape[1]:
            raise ParameterError(f"Class {c} is out of range (the model has {ctx.logits.shape[1]} classes).")
        p = F.log_softmax(ctx.logits.float(), dim=1)[:, c]
        return (p if log else p.exp()).mean()
    return Objective.of(f"{'log ' if log else ''}p[{c}]", fn, needs_output=True)


def channel(layer: str, c: int) -> Objective:
    """Mean activation of channel ``c`` of ``layer`` (over positions and the batch)."""
    return Objective.of(f"{layer}:{c}", lambda ctx: _channels_of(ctx.act(layer), c, layer).mean(), [layer])


def neuron(layer: str, c: int, y: int | None = None, x: int | None = None) -> Objective:
    """One unit: channel ``c`` at position (y, x) of a conv layer (default the centre)."""
    def fn(ctx):
        a = _channels_of(ctx.act(layer), c, layer)
        if a.dim() == 1:
            return a.mean()
        h, w = a.shape[-2:]
        yy, xx = (h // 2 if y is None else y), (w // 2 if x is None else x)
        if not (0 <= yy < h and 0 <= xx < w):
            raise ParameterError(f"Position ({yy}, {xx}) is outside {layer!r}'s {h}x{w} map.")
        return a[:, yy, xx].mean()
    return Objective.of(f"{layer}:{c}@centre" if y is None and x is None else f"{layer}:{c}@({y},{x})", fn, [layer])


def layer_l2(layer: str) -> Objective:
    """DeepDream: the mean squared activation of a whole layer (amplify what it sees)."""
    return Objective.of(f"‖{layer}‖²", lambda ctx: ctx.act(layer).float().pow(2).mean(), [layer])


def feature_match(layer: str, target: torch.Tensor) -> Objective:
    """Feature inversion: minus the squared error to ``target`` features, relative to the
    target's energy (Mahendran & Vedaldi 2015); 0 is a perfect reconstruction.

    Args:
        layer: the layer whose features are matched.
        target: the target features (1 or B, C, H, W), detached; the optimised image must give
            the same (C, H, W).
    """
    t = target.detach()
    energy = float(t.float().pow(2).sum().clamp_min(1e-12))

    def fn(ctx):
        a = ctx.act(layer)
        if a.shape[1:] != t.shape[1:]:
            raise ParameterError(f"Feature shapes differ at {layer!r}: {tuple(a.shape[1:])} vs {tuple(t.shape[1:])}; "
                                 "invert at the image's own size.")
        return -(a.float() - t.float()).pow(2).sum() / (energy * a.shape[0] / t.shape[0])
    return Objective.of(f"match {layer}", fn, [layer])


def gram(a: torch.Tensor) -> torch.Tensor:
    """Gram matrices (B, C, C) of feature maps (B, C, H, W), divided by the positions H·W.

    Args:
        a: feature maps (B, C, H, W), channels-first.
    """
    b, c = a.shape[:2]
    f = a.float().reshape(b, c, -1)
    return f @ f.transpose(1, 2) / f.shape[-1]


def gram_match(layer: str, target_gram: torch.Tensor) -> Objective:
    """Texture / style: minus the squared error of Gram matrices at ``layer``, relative to the
    target's energy.

    Args:
        layer: the layer whose Gram matrix is matched.
        target_gram: target Gram matrices (1 or B, C, C), e.g. from :func:`gram`.
    """
    t = target_gram.detach().float()
    energy = float(t.pow(2).sum().clamp_min(1e-12)) / max(1, t.shape[0])

    def fn(ctx):
        g = gram(ctx.act(layer))
        return -(g - t).pow(2).sum() / (energy * g.shape[0])
    return Objective.of(f"gram {layer}", fn, [layer])


def diversity(layer: str) -> Objective:
    """Batch diversity (lucent): minus the mean cosine similarity between the images'
    Gram matrices at ``layer``; only meaningful for a batch of several images."""
    def fn(ctx):
        a = ctx.act(layer)
        b = a.shape[0]
        if b < 2:
            return a.sum() * 0.0
        g = F.normalize(gram(a).reshape(b, -1), dim=1)
        sim = g @ g.T
        return -(sim.sum() - sim.diagonal().sum()) / (b * (b - 1))
    return Objective.of(f"diversity {layer}", fn, [layer])


def l2() -> Objective:
    """Squared L2 norm of the image: of the pixel parameter (CS231n's ``img.norm()**2``) for
    plain pixels, of ``image - 0.5`` otherwise. Subtract it to regularise."""
    def fn(ctx):
        p = ctx.pixels if ctx.pixels is not None else ctx.image - 0.5
        return p.float().pow(2).sum() / p.shape[0]
    return Objective.of("L2", fn)


def total_variation(beta: float = 2.0) -> Objective:
    """Total variation of the [0, 1] image, sum over pixels of (dx² + dy²)^(β/2), in 0–255
    units (Mahendran & Vedaldi's R_TV^β). Subtract it to regularise.

    Args:
        beta: the exponent β (2 = squared gradient magnitude; smaller values favour sharp edges).
    """
    def fn(ctx):
        x = ctx.image.float() * 255.0
        dx = x[..., :-1, 1:] - x[..., :-1, :-1]
        dy = x[..., 1:, :-1] - x[..., :-1, :-1]
        return (dx.pow(2) + dy.pow(2) + 1e-8).pow(beta / 2).sum() / x.shape[0]
    return Objective.of("TV", fn)

