"""Layer-wise relevance propagation (LRP) with zennit, on a deep copy of the model.

LRP (Bach et al. 2015; Montavon et al. 2019) sends the target's score back through the
network layer by layer with rules that *redistribute* it, so the input relevance sums to
the score (up to what biases and stabilisers absorb). zennit implements the rules as
gradient hooks: inside ``composite.context(model)`` the input gradient of
``output * onehot`` *is* the relevance. convlens adds what a dashboard needs around it:

* **Canonizers chosen per architecture.** Batch norms are merged into the preceding
  convolution (``SequentialMergeBatchNorm``, made exact: the emptied batch norm's ``eps`` is
  set to 0 so the canonized model computes the same score), residual additions become zennit ``Sum``
  modules so the ``Norm`` rule splits relevance between the branches in proportion to
  their contributions (``ResNetCanonizer`` for torchvision ResNets, :class:`MBConvCanonizer`
  for EfficientNet-Lite's ``MBConvBlock``). Canonizers change modules, so LRP always runs on
  ``bundle.copy_model()``, never on the shared model.
* **Refusal instead of a wrong map.** :func:`lrp_plan` walks the model first: a leaf module
  for which zennit has no rule, a container whose forward code zennit cannot see (it may
  add branches), or a batch norm that could not be merged raises :class:`RelevanceError`
  naming the module and the missing rule.

EfficientNet-Lite0 needs nothing else: its ``Conv2dSame`` is an ``nn.Conv2d`` subclass
whose ``forward`` pads; zennit's rules re-run ``module.forward`` with modified weights, so
the padding is respected. ReLU6 is in zennit's ``Activation`` type (``Pass`` rule).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from analysis.core.errors import ParameterError
from analysis.core.models.bundle import ModelBundle

COMPOSITES: dict[str, tuple[str, str]] = {
    "epsilon_plus_flat": (
        "LRP (ε+♭, EpsilonPlusFlat)",
        "Layer-wise relevance propagation with zennit's recommended composite: the flat rule on the "
        "first layer, z⁺ on convolutions, ε on dense layers. Relevance sums to the class score "
        "(Bach et al. 2015; Montavon et al. 2019)."),
    "epsilon_gamma_box": (
        "LRP (ε-γ-box, EpsilonGammaBox)",
        "Layer-wise relevance propagation with the z^B (box) rule on the pixels, γ on convolutions "
        "and ε on dense layers: sharper, more positive maps (Montavon et al. 2019)."),
    "epsilon_alpha2_beta1_flat": (
        "LRP (εα2β1♭, EpsilonAlpha2Beta1Flat)",
        "Layer-wise relevance propagation with α2β1 on convolutions: positive and negative evidence "
        "weighted 2:1 (Bach et al. 2015)."),
    "epsilon": (
        "LRP (ε everywhere)",
        "Layer-wise relevance propagation with the ε rule on every layer: closest to gradient × input, "
        "and exactly conservative on bias-free networks."),
}


class RelevanceError(ParameterError):
    """The model cannot be explained by LRP as built (a missing rule or canonizer)."""


# ------------------------------------------------------------------------------- canonizers

def _mbconv_forward(self, x):
    """MBConvBlock.forward with the skip addition as a zennit ``Sum`` (same values)."""
    y = x
    if self.expand:
        y = self._relu0(self._bn0(self._expand_conv(y)))
    y = self._relu1(self._bn1(self._depthwise_conv(y)))
    y = self._bn2(self._project_conv(y))
    if not self.skip:
        return y
    return self.canonizer_sum(torch.stack([x, y], dim=-1))


def _mbconv_canonizer():
    from zennit.canonizers import AttributeCanonizer
    from zennit.layer import Sum

    from analysis.core.models.efficientnet_lite import MBConvBlock

    class MBConvCanonizer(AttributeCanonizer):
        """EfficientNet-Lite's MBConvBlock: the residual ``y + x`` through a ``Sum`` module."""

        def __init__(self):
            super().__init__(self._attribute_map)

        @staticmethod
        def _attribute_map(name, module):
            if isinstance(module, MBConvBlock):
                return {"forward": _mbconv_forward.__get__(module), "canonizer_sum": Sum()}
            return None

    return MBConvCanonizer()


def _exact_merge_canonizer():
    from zennit.canonizers import SequentialMergeBatchNorm

    class ExactMergeBatchNorm(SequentialMergeBatchNorm):
        """zennit's SequentialMergeBatchNorm, and the emptied batch norm's ``eps`` set to 0 so
        that it really is the identity: zennit leaves ``x / sqrt(1 + eps)``, which on
        EfficientNet-Lite (eps = 1e-3) shrinks the explained score by ~0.3 % behind the rules'
        back (the ``Pass`` rule ignores it)."""

        def register(self, linears, batch_norm):
            self.eps = batch_norm.eps
            super().register(linears, batch_norm)
            batch_norm.eps = 0.0

        def remove(self):
            super().remove()
            self.batch_norm.eps = self.eps

    return ExactMergeBatchNorm()


# ------------------------------------------------------------------------------- the plan

@dataclass
class LRPPlan:
    """How LRP will run on a model: the canonizers to apply and what they cover."""
    family: str
    canonizers: list = field(default_factory=list)
    n_batchnorm: int = 0
    notes: list[str] = field(default_factory=list)


def _leaf_ok(module: nn.Module) -> bool:
    from zennit.layer import Sum
    from zennit.types import Activation, AvgPool, BatchNorm, Linear, MaxPool
    safe = (nn.Dropout, nn.Dropout2d, nn.Dropout1d, nn.AlphaDropout, nn.Identity, nn.Flatten, Sum)
    return isinstance(module, (Linear, Activation, AvgPool, MaxPool, BatchNorm) + safe)


def _missing_rule(module: nn.Module) -> str:
    name = type(module).__name__
    if isinstance(module, (nn.LayerNorm, nn.GroupNorm, nn.InstanceNorm2d, nn.LocalResponseNorm)):
        return f"zennit has no LRP rule for the normalisation layer {name} (only batch norms can be merged)"
    if isinstance(module, (nn.Upsample, nn.PixelShuffle)):
        return f"zennit has no LRP rule for the resampling layer {name}"
    if isinstance(module, nn.Softmax):
        return f"zennit has no LRP rule for {name} (explain the logits, not probabilities)"
    return f"zennit has no LRP rule for {name}"


def _known_containers() -> dict[type, str]:
    """Non-leaf module classes whose forward is understood (a plain chain, or canonized)."""
    from torchvision.models import VGG, AlexNet, ResNet
    from torchvision.models.resnet import BasicBlock, Bottleneck

    from analysis.core.models.digits import DigitsCNN
    from analysis.core.models.efficientnet_lite import EfficientNetLite, MBConvBlock
    return {nn.Sequential: "chain", nn.ModuleList: "chain", nn.ModuleDict: "chain",
            VGG: "vgg", AlexNet: "vgg", DigitsCNN: "digits", ResNet: "resnet", BasicBlock: "resnet",
            Bottleneck: "resnet", EfficientNetLite: "efficientnet_lite", MBConvBlock: "efficientnet_lite"}


def lrp_plan(model: nn.Module) -> LRPPlan:
    """Check that LRP can run on ``model`` and choose its canonizers.

    Args:
        model: the network (not modified).

    Raises:
        RelevanceError: naming the first module zennit has no rule or canonizer for.
    """
    from zennit.canonizers import CompositeCanonizer
    from zennit.torchvision import ResNetBasicBlockCanonizer, ResNetBottleneckCanonizer
    known = _known_containers()
    families = set()
    n_bn = 0
    for name, module in model.named_modules():
        children = list(module.children())
        where = f"'{name}'" if name else "the model itself"
        if isinstance(module, torch.jit.ScriptModule):
            raise RelevanceError("LRP needs the model's Python modules; a TorchScript model has no hooks for "
                                 "zennit's rules.")
        if not children:
            if not _leaf_ok(module):
                raise RelevanceError(f"LRP cannot explain this model: {_missing_rule(module)} (at {where}). "
                                     "No relevance map is shown rather than a wrong one.")
            n_bn += isinstance(module, nn.modules.batchnorm._BatchNorm)
            continue
        fam = known.get(type(module))
        if fam is None:
            raise RelevanceError(
                f"LRP cannot explain this model: no canonizer for the block {type(module).__name__} (at {where}). "
                "Its forward code may add branches (a residual connection) or call functional layers, which "
                "zennit's rules do not see, so the relevance would not be conserved. Supported: plain "
                "Sequential chains, the digits CNN, EfficientNet-Lite, torchvision VGG, AlexNet and ResNet.")
        if fam != "chain":
            families.add(fam)
    family = "chain" if not families else sorted(families)[0]
    if family == "resnet":       # zennit's ResNetCanonizer with the exact batch-norm merge
        canon = [CompositeCanonizer((_exact_merge_canonizer(), ResNetBottleneckCanonizer(),
                                     ResNetBasicBlockCanonizer()))]
    elif family == "efficientnet_lite":
        canon = [_exact_merge_canonizer(), _mbconv_canonizer()]
    else:
        canon = [_exact_merge_canonizer()]
    names = {"resnet": "merge batch norms (exact), ResNet skip as Sum (zennit ResNetCanonizer)",
             "efficientnet_lite": "merge batch norms (exact), MBConv skip as Sum"}
    notes = [f"canonizers: {names.get(family, 'merge batch norms (exact)')}"]
    return LRPPlan(family=family, canonizers=canon, n_batchnorm=n_bn, notes=notes)


def make_composite(name: str, plan: LRPPlan, x: torch.Tensor, lo: torch.Tensor | None = None,
                   hi: torch.Tensor | None = None, *, epsilon: float = 1e-6, gamma: float = 0.25,
                   zero_bias: bool = False):
    """The zennit composite ``name`` (a key of COMPOSITES) with the plan's canonizers.

    Args:
        name: composite key.
        plan: from :func:`lrp_plan`.
        x: the input batch (the box rule needs bounds of its shape).
        lo, hi: per-channel lowest / highest valid input value (1, C, 1, 1), for the box rule.
        epsilon: stabiliser of the ε rule.
        gamma: γ of the γ rule.
        zero_bias: leave biases (and merged batch-norm shifts) out of the rules, zennit's
            ``zero_params=["bias"]``: the relevance is then conserved layer by layer instead of
            being absorbed by the biases (on EfficientNet-Lite they absorb nearly all of it).
    """
    from zennit.composites import (
        EpsilonAlpha2Beta1Flat,
        EpsilonGammaBox,
        EpsilonPlusFlat,
        LayerMapComposite,
        layer_map_base,
    )
    from zennit.rules import Epsilon
    from zennit.types import Linear
    if name not in COMPOSITES:
        raise ParameterError(f"Unknown LRP composite {name!r}; choose from {', '.join(COMPOSITES)}.")
    if not epsilon > 0:
        raise ParameterError("epsilon must be positive")
    zp = ["bias"] if zero_bias else None
    if name == "epsilon_plus_flat":
        return EpsilonPlusFlat(epsilon=epsilon, zero_params=zp, canonizers=plan.canonizers)
    if name == "epsilon_alpha2_beta1_flat":
        return EpsilonAlpha2Beta1Flat(epsilon=epsilon, zero_params=zp, canonizers=plan.canonizers)
    if name == "epsilon_gamma_box":
        if not 0 <= gamma <= 10:
            raise ParameterError("gamma must be between 0 and 10")
        if lo is None or hi is None:
            raise ParameterError("the box rule needs the valid input range")
        return EpsilonGammaBox(low=lo.to(x).expand_as(x), high=hi.to(x).expand_as(x), epsilon=epsilon,
                               gamma=gamma, zero_params=zp, canonizers=plan.canonizers)
    return LayerMapComposite(layer_map=layer_map_base(stabilizer=epsilon) + [(Linear, Epsilon(epsilon=epsilon, zero_params=zp))],
                             canonizers=plan.canonizers)


# ------------------------------------------------------------------------------- attribution

@dataclass
class Relevance:
    """LRP relevance of a batch: ``relevance`` (N, C, H, W) at the input, ``scores`` (N,) the
    explained logits, ``sums`` (N,) the relevance totals (= scores when conserved)."""
    composite: str
    targets: np.ndarray
    relevance: np.ndarray
    scores: np.ndarray
    sums: np.ndarray
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


def _check_merged(plan: LRPPlan, model: nn.Module) -> None:
    """After canonization every batch norm must be the identity (merged into its conv)."""
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
            if not (torch.all(m.running_mean == 0) and torch.all(m.running_var == 1)
                    and (m.weight is None or torch.all(m.weight == 1))
                    and (m.bias is None or torch.all(m.bias == 0))):
                raise RelevanceError(
                    f"LRP cannot explain this model: the batch norm at '{name}' does not directly follow a "
                    "convolution or linear layer, so it cannot be merged, and zennit has no relevance rule for "
                    "a batch norm on its own.")


def lrp_batch(model: nn.Module, x: torch.Tensor, targets, composite: str = "epsilon_plus_flat", *,
              lo: torch.Tensor | None = None, hi: torch.Tensor | None = None, epsilon: float = 1e-6,
              gamma: float = 0.25, zero_bias: bool = False, layer_hooks=None) -> Relevance:
    """LRP relevance of ``targets`` for a batch ``x`` on ``model`` — which this call changes
    while it runs (canonizers, hooks) and restores after: pass a private copy.

    Args:
        model: a private copy of the network (eval mode).
        x: input batch (N, C, H, W) in model space.
        targets: one class index per image (or one int for all).
        composite: a key of COMPOSITES.
        lo, hi: valid input range per channel (1, C, 1, 1), for the box rule.
        epsilon, gamma, zero_bias: rule parameters (:func:`make_composite`).
        layer_hooks: optional callable ``(model) -> context manager`` entered inside the
            composite (CRP uses it to mask one layer's relevance).
    """
    import contextlib
    t0 = time.perf_counter()
    plan = lrp_plan(model)
    tg = torch.as_tensor(targets, dtype=torch.long, device=x.device).reshape(-1)
    if tg.numel() == 1:
        tg = tg.expand(x.shape[0])
    if tg.numel() != x.shape[0]:
        raise ParameterError("one target per image is needed")
    comp = make_composite(composite, plan, x, lo, hi, epsilon=epsilon, gamma=gamma, zero_bias=zero_bias)
    inp = x.detach().clone().requires_grad_(True)
    with torch.enable_grad(), comp.context(model) as modified:
        _check_merged(plan, modified)
        with (layer_hooks(modified) if layer_hooks else contextlib.nullcontext()):
            out = modified(inp)
            if out.dim() != 2:
                raise RelevanceError(f"LRP needs class scores (N, classes); the model returns {tuple(out.shape)}.")
            if int(tg.max()) >= out.shape[1] or int(tg.min()) < 0:
                raise ParameterError(f"target out of range (the model has {out.shape[1]} classes)")
            onehot = torch.zeros_like(out)
            onehot[torch.arange(out.shape[0]), tg] = 1.0
            (rel,) = torch.autograd.grad(out, inp, grad_outputs=out.detach() * onehot)
    scores = out.detach().gather(1, tg[:, None])[:, 0]
    r = rel.detach().float().cpu()
    sums = r.sum(dim=(1, 2, 3))
    bad = not bool(torch.isfinite(r).all()) or bool((sums.abs() > 100 * scores.abs().cpu() + 10).any())
    if bad:
        raise RelevanceError(
            f"LRP with {COMPOSITES[composite][0]} is numerically unstable on this model and image (the relevance "
            f"sums to {float(sums.abs().max()):.3g} for a score of {float(scores.abs().max()):.3g}: some rule's "
            "denominators are close to zero). No map is shown; try another composite or a larger epsilon.")
    return Relevance(composite=composite, targets=tg.cpu().numpy(), relevance=r.numpy(),
                     scores=scores.float().cpu().numpy(), sums=sums.numpy(),
                     seconds=time.perf_counter() - t0, notes=plan.notes)


def lrp(bundle: ModelBundle, x: torch.Tensor, target: int, composite: str = "epsilon_plus_flat", *,
        epsilon: float = 1e-6, gamma: float = 0.25, zero_bias: bool = False) -> tuple[np.ndarray, dict, list[str]]:
    """LRP relevance (C, H, W) of ``target`` for one preprocessed input ``x`` (1, C, H, W) on a
    deep copy of ``bundle.model``, holding ``bundle.lock``.

    Args:
        bundle: the shared model bundle (never modified).
        x: model-space input on the bundle's device.
        target: class index.
        composite: a key of COMPOSITES.
        epsilon, gamma, zero_bias: rule parameters (:func:`make_composite`).

    Returns:
        (relevance, info, warnings): ``info`` holds the score, the relevance sum and the
        canonizers; a warning is added when the relevance is all zero or the sum is far
        from the score (bias absorption).
    """
    lo, hi = bundle.preprocess.valid_range()
    with bundle.lock:
        model = bundle.copy_model()
        res = lrp_batch(model, x, [target], composite, lo=lo, hi=hi, epsilon=epsilon, gamma=gamma,
                        zero_bias=zero_bias)
    score, total = float(res.scores[0]), float(res.sums[0])
    info = {"composite": composite, "zero_bias": zero_bias, "score": score, "relevance_sum": total,
            "conservation": total / score if score else float("nan"), "canonizers": res.notes[0]}
    warnings = []
    if not np.any(res.relevance[0]):
        warnings.append("The relevance is zero everywhere: nothing in the image carries this class's score.")
    elif score and abs(total / score - 1) > 0.25:
        why = ("the rules counted the biases, which absorbed the rest" if not zero_bias else
               "rules such as z⁺, γ, α2β1 and the box rule redistribute only part of a layer's evidence")
        warnings.append(f"The relevance sums to {total:.3g} for a score of {score:.3g} ({total / score:.0%}): {why}.")
    return res.relevance[0], info, warnings
