"""Concept relevance propagation (CRP, Achtibat et al. 2023), on zennit.

The idea of zennit-crp's ``CondAttribution``, rebuilt on zennit 0.5 (zennit-crp pins an older
zennit): run LRP, and at a chosen layer L multiply the relevance flowing back by a mask that
keeps one channel. What reaches the pixels is then "where in the image is the evidence that
channel c of L passes on to the decision", and it sums to that channel's share of the score.

* :func:`channel_relevance`: one LRP pass, the relevance of every channel of L (summed over
  positions) and its activation: the top channels of an image for its target.
* :func:`conditional_heatmaps`: one batched pass with one mask per requested channel.

Both run on a deep copy of the model under ``bundle.lock`` (:func:`analysis.relevance.lrp.lrp_batch`).
Relevance-maximisation reference galleries over a data set are the executor job kind
``crp`` (:mod:`analysis.relevance.workers`).
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from analysis.core.errors import LayerError, ParameterError
from analysis.core.hooks import forward_hooks
from analysis.core.models.bundle import ModelBundle
from analysis.relevance.lrp import COMPOSITES, lrp_batch


class _MaskGrad(torch.autograd.Function):
    """Identity forward; backward records the incoming relevance and multiplies it by a mask."""

    @staticmethod
    def forward(ctx, x, mask, sink):
        ctx.save_for_backward(mask)
        ctx.sink = sink
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        (mask,) = ctx.saved_tensors
        ctx.sink.append(g.detach().clone())
        return (g if mask is None or mask.numel() == 0 else g * mask), None, None


def layer_condition(layer: str, mask: torch.Tensor | None, sink: list, acts: list | None = None):
    """``layer_hooks`` for :func:`lrp_batch`: on ``layer``'s output, record the relevance
    arriving from above into ``sink`` (and the activation into ``acts``) and, when ``mask``
    (N, C, 1, 1) is given, let only the masked relevance pass on down."""
    @contextlib.contextmanager
    def hooks(model):
        try:
            module = model.get_submodule(layer)
        except AttributeError:
            raise LayerError(f"The model has no layer {layer!r}.") from None

        def fwd(_m, _i, out):
            if not isinstance(out, torch.Tensor) or out.dim() != 4:
                raise LayerError(f"CRP needs a layer with (channels, height, width) maps; {layer} gives "
                                 f"{tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__}.")
            if acts is not None:
                acts.append(out.detach().float().clone())
            m = torch.empty(0) if mask is None else mask.to(out)
            return _MaskGrad.apply(out, m, sink)
        with forward_hooks([(module, fwd)]):
            yield
    return hooks


@dataclass
class ChannelRelevance:
    """Per-channel relevance of ``layer`` for ``target`` on one image: ``relevance`` (C,) the
    relevance each channel passes on (sums to the layer's total), ``activation`` (C,) its mean
    activation, ``maps`` (C, h, w) the relevance at each position of the layer, ``heatmap``
    (H, W) the plain LRP map of the image, ``score`` the explained logit."""
    layer: str
    target: int
    composite: str
    relevance: np.ndarray
    activation: np.ndarray
    maps: np.ndarray
    heatmap: np.ndarray
    image: np.ndarray
    score: float
    seconds: float = 0.0
    params: dict = field(default_factory=dict)

    def top(self, k: int = 8, by: str = "relevance") -> list[int]:
        """Indices of the ``k`` channels with the highest relevance (or ``by="abs"``: |relevance|,
        ``by="activation"``)."""
        v = {"relevance": self.relevance, "abs": np.abs(self.relevance), "activation": self.activation}[by]
        return [int(i) for i in np.argsort(-v, kind="stable")[:k]]


def _input(bundle: ModelBundle, image: np.ndarray) -> tuple[np.ndarray, torch.Tensor]:
    crop = bundle.preprocess.geometry(image)
    return crop, bundle.preprocess.normalize(bundle.preprocess.to_unit(crop)).to(bundle.device)


def channel_relevance(bundle: ModelBundle, image: np.ndarray, target: int, layer: str,
                      composite: str = "epsilon_plus_flat", **rule_params) -> ChannelRelevance:
    """The relevance of every channel of ``layer`` for class ``target`` on ``image``.

    Args:
        bundle: the shared model (LRP runs on a copy under its lock).
        image: RGB uint8 image of any size (cropped like the model's inputs).
        target: class index.
        layer: dotted name of a layer with (C, H, W) output.
        composite: a key of :data:`analysis.relevance.lrp.COMPOSITES`.
        rule_params: epsilon / gamma / zero_bias for the composite.
    """
    if composite not in COMPOSITES:
        raise ParameterError(f"Unknown LRP composite {composite!r}")
    t0 = time.perf_counter()
    crop, x = _input(bundle, image)
    sink, acts = [], []
    lo, hi = bundle.preprocess.valid_range()
    with bundle.lock:
        model = bundle.copy_model()
        res = lrp_batch(model, x, [target], composite, lo=lo, hi=hi,
                        layer_hooks=layer_condition(layer, None, sink, acts), **rule_params)
    r = sink[-1][0].float().cpu().numpy()
    a = acts[-1][0].cpu().numpy()
    return ChannelRelevance(layer=layer, target=int(target), composite=composite, relevance=r.sum(axis=(1, 2)),
                            activation=a.mean(axis=(1, 2)), maps=r, heatmap=res.relevance[0].sum(0), image=crop,
                            score=float(res.scores[0]), seconds=time.perf_counter() - t0,
                            params={"composite": composite, **rule_params})


@dataclass
class ConditionalMaps:
    """CRP heatmaps (k, H, W) of ``channels`` of ``layer`` for ``target``; ``sums`` (k,) each
    map's total (= that channel's relevance when the rules conserve)."""
    layer: str
    target: int
    channels: list[int]
    maps: np.ndarray
    sums: np.ndarray
    image: np.ndarray
    seconds: float = 0.0
    params: dict = field(default_factory=dict)


def conditional_heatmaps(bundle: ModelBundle, image: np.ndarray, target: int, layer: str, channels,
                         composite: str = "epsilon_plus_flat", batch_size: int = 8, **rule_params) -> ConditionalMaps:
    """CRP: for each channel in ``channels``, the input relevance when only that channel of
    ``layer`` passes relevance down (one batched LRP pass per ``batch_size`` channels).

    Args:
        bundle, image, target, layer, composite, rule_params: as :func:`channel_relevance`.
        channels: channel indices of ``layer``.
        batch_size: conditions per pass.
    """
    chans = [int(c) for c in channels]
    if not chans:
        raise ParameterError("Choose at least one channel.")
    t0 = time.perf_counter()
    crop, x = _input(bundle, image)
    lo, hi = bundle.preprocess.valid_range()
    out_maps, sums = [], []
    with bundle.lock:
        model = bundle.copy_model()
        for a in range(0, len(chans), batch_size):
            part = chans[a:a + batch_size]
            sink, acts = [], []
            # the layer's width: from a first (cheap) forward through the hook
            with torch.inference_mode(), layer_condition(layer, None, sink, acts)(model):
                model(x)
            n_ch = acts[0].shape[1]
            bad = [c for c in part if not 0 <= c < n_ch]
            if bad:
                raise ParameterError(f"{layer} has {n_ch} channels; no channel {bad[0]}.")
            mask = torch.zeros(len(part), n_ch, 1, 1)
            mask[torch.arange(len(part)), torch.tensor(part)] = 1.0
            res = lrp_batch(model, x.expand(len(part), -1, -1, -1), [target] * len(part), composite, lo=lo, hi=hi,
                            layer_hooks=layer_condition(layer, mask, []), **rule_params)
            out_maps.append(res.relevance.sum(1))
            sums.append(res.sums)
    return ConditionalMaps(layer=layer, target=int(target), channels=chans, maps=np.concatenate(out_maps),
                           sums=np.concatenate(sums), image=crop, seconds=time.perf_counter() - t0,
                           params={"composite": composite, **rule_params})
