"""Saliency: which pixels matter for a class score — one call for every method.

``attribute(bundle, image, target, method, **params) -> Attribution`` (Captum's shape of
interface). Captum does the vanilla gradient, Integrated Gradients, SmoothGrad
(NoiseTunnel) and Grad-CAM; convlens adds what Captum lacks:

* guided backprop that really is guided on ReLU6 / Hardtanh / LeakyReLU networks (Captum's
  GuidedBackprop hooks only ``nn.ReLU``, so on EfficientNet-Lite it silently returns the
  plain gradient), on a copy of the model, with a warning for functional rectifiers;
* occlusion with progress, out-of-memory back-off and a "fast" mode, checked against
  Captum's ``Occlusion``: on EfficientNet-Lite the fast mode is exact, by incremental
  inference (analysis/saliency/incremental.py); on other models it computes every other window
  position and interpolates in between.

Every method reports progress as ``progress(done, total)``, holds ``bundle.lock`` while it
hooks or runs backward on the shared model, and returns small CPU numpy arrays.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from analysis.core.batching import halve_after_oom, run_batched
from analysis.core.errors import LayerError, ParameterError
from analysis.core.filters import gaussian_blur
from analysis.core.guided import guided_model
from analysis.core.layers import check_layer, last_conv_block, layer_table
from analysis.core.models.bundle import ModelBundle
from analysis.core.schema import Param
from analysis.saliency import registry
from analysis.saliency.registry import MapOutput, as_map, register

Progress = Callable[[int, int], None]

BASELINES = ("zero", "mean", "blur")


@dataclass
class Attribution:
    """One saliency map for one image, target and method.

    ``map`` (H, W) is the 2-D importance on the model's input crop ``image``: higher means
    more evidence for the target (occlusion keeps its sign: negative = hiding the region
    raised the score). ``signed`` (C, H, W) is the per-channel signed attribution where the
    method has one. Everything is CPU numpy.
    """
    method: str
    target: int
    target_label: str
    map: np.ndarray
    image: np.ndarray
    signed: np.ndarray | None = None
    params: dict = field(default_factory=dict)
    seconds: float = 0.0
    layer: str | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def title(self) -> str:
        return registry.get(self.method).title


# ------------------------------------------------------------------------------- helpers

def resolve_target(bundle: ModelBundle, x: torch.Tensor, target: int | str | None) -> int:
    """None -> the predicted class; int -> checked index; str -> class by (unique) name.

    Args:
        bundle: the model (its ``categories`` for names; a forward for None).
        x: the model-space input (1, C, H, W), used only when ``target`` is None.
        target: None, a class index in ``[0, num_classes)``, or a class name (an exact,
            case-insensitive match first, then a unique substring); else ``ParameterError``.
    """
    if target is None:
        with bundle.lock, torch.inference_mode():
            return int(bundle.model(x).argmax(1)[0])
    if isinstance(target, str):
        exact = [i for i, c in enumerate(bundle.categories) if c.lower() == target.strip().lower()]
        if len(exact) == 1:
            return exact[0]
        part = [i for i, c in enumerate(bundle.categories) if target.strip().lower() in c.lower()]
        if len(part) == 1:
            return part[0]
        raise ParameterError(f"Class {target!r} matches {len(exact) or len(part)} classes; be more specific.")
    t = int(target)
    if not 0 <= t < bundle.num_classes:
        raise ParameterError(f"Target class {t} is out of range (the model has {bundle.num_classes} classes).")
    return t


def baseline_tensor(bundle: ModelBundle, x: torch.Tensor, kind: str, blur_sigma: float = 10.0) -> torch.Tensor:
    """Baseline in model space: "zero" = black image, "mean" = the data set's mean colour
    (the normalisation mean, i.e. model-space zero), "blur" = the image Gaussian-blurred.

    Args:
        bundle: the model (its normalisation turns black into model space).
        x: the model-space input (B, C, H, W); the baseline has its shape.
        kind: "zero", "mean" or "blur"; else ``ParameterError``.
        blur_sigma: Gaussian sigma in pixels for "blur".
    """
    if kind == "zero":
        return bundle.preprocess.normalize(torch.zeros_like(x))
    if kind == "mean":
        return torch.zeros_like(x)
    if kind == "blur":
        return gaussian_blur(x, blur_sigma)
    raise ParameterError(f"Unknown baseline {kind!r}; use one of {', '.join(BASELINES)}.")


# ------------------------------------------------------------------------------- occlusion

def _window_grid(size: int, window: int, stride: int) -> list[int]:
    """Top-left corners along one axis: 0, stride, 2·stride, ... while the window fits, plus a
    last corner flush with the border when the stride leaves a strip that no window covers
    (Captum leaves that strip at 0, which reads as "no effect" without being measured)."""
    if window > size:
        raise ParameterError(f"Occlusion window {window} is larger than the image ({size}).")
    corners = list(range(0, size - window + 1, stride))
    if corners[-1] != size - window:
        corners.append(size - window)
    return corners


def occlusion_deltas(bundle: ModelBundle, x: torch.Tensor, target: int, window: int, stride: int,
                     baseline: torch.Tensor, positions: list[tuple[int, int]], batch: int,
                     progress: Progress | None = None) -> tuple[float, np.ndarray]:
    """Score of the clean image and score drops when each window (top-left corners
    ``positions``) is replaced by ``baseline``; forward passes batched.

    Args:
        bundle: the model (held under ``bundle.lock``).
        x: the model-space input (1, C, H, W).
        target: class index whose logit is read.
        window: side of the square window in pixels.
        stride: unused here (the caller's ``positions`` already follow it).
        baseline: the values pasted into a window, (1, C, H, W) in model space.
        positions: the windows' top-left (row, column) corners.
        batch: occluded copies per forward (halved on out-of-memory by ``run_batched``).
        progress: ``progress(done, total)`` callback, or None.

    Returns:
        (clean logit, the drop per position in ``positions`` order, float64).
    """
    out = np.zeros(len(positions), np.float64)
    model = bundle.model
    with bundle.lock, torch.inference_mode():
        clean = float(model(x)[0, target])

        def run(a, b):
            xs = x.repeat(b - a, 1, 1, 1)
            for k, (i, j) in enumerate(positions[a:b]):
                xs[k, :, i:i + window, j:j + window] = baseline[0, :, i:i + window, j:j + window]
            out[a:b] = (clean - model(xs)[:, target]).double().cpu().numpy()
        run_batched(len(positions), batch, run, progress)
    return clean, out


def _compose(deltas: np.ndarray, ys: list[int], xs: list[int], window: int, h: int, w: int) -> np.ndarray:
    """Per-pixel mean of the deltas of all windows covering it (Captum's convention)."""
    acc = np.zeros((h, w), np.float64)
    cnt = np.zeros((h, w), np.float64)
    for a, i in enumerate(ys):
        for b, j in enumerate(xs):
            acc[i:i + window, j:j + window] += deltas[a, b]
            cnt[i:i + window, j:j + window] += 1
    return (acc / np.maximum(cnt, 1)).astype(np.float32)


def _interp_axis(values: np.ndarray, known: list[int], n: int, axis: int) -> np.ndarray:
    full_idx = np.arange(n)
    return np.apply_along_axis(lambda v: np.interp(full_idx, known, v), axis, values)


def incremental_deltas(bundle: ModelBundle, x: torch.Tensor, target: int, window: int, ys: list[int],
                       xs: list[int], baseline: torch.Tensor, batch: int,
                       progress: Progress | None = None) -> tuple[float, np.ndarray] | None:
    """Exact score drops of every window (ys × xs), by incremental inference
    (analysis/saliency/incremental.py); None when the model is not an EfficientNet-Lite.

    Args:
        bundle: the model; only an EfficientNet-Lite has a plan.
        x: the model-space input (1, C, H, W).
        target: class index whose logit is read.
        window: side of the square window in pixels.
        ys: the windows' top rows.
        xs: the windows' left columns.
        baseline: the values pasted into a window, (1, C, H, W) in model space.
        batch: windows per incremental batch.
        progress: ``progress(done, total)`` callback, or None.

    Returns:
        (clean logit, the drops as a (len(ys), len(xs)) float64 array), or None.
    """
    from analysis.saliency.incremental import IncrementalOcclusion, plan_for
    plan = plan_for(bundle)
    if plan is None:
        return None
    engine = IncrementalOcclusion(plan, x, baseline, target, window, ys, xs)
    pos = torch.cartesian_prod(torch.arange(len(ys)), torch.arange(len(xs)))
    out = np.zeros(len(pos), np.float64)

    def run(a, b):
        out[a:b] = engine.deltas(pos[a:b])
    run_batched(len(pos), batch, run, progress)
    return engine.clean, out.reshape(len(ys), len(xs))


def occlusion(bundle: ModelBundle, x: torch.Tensor, target: int, *, window: int = 16, stride: int = 8,
              baseline: str = "mean", batch_size: int = 32, fast: bool = False,
              progress: Progress | None = None, incremental: bool = True) -> tuple[np.ndarray, dict]:
    """Occlusion map (H, W), by full forward passes of every occluded copy.

    Args:
        bundle: the model.
        x: the model-space input (1, C, H, W).
        target: class index whose logit drop is mapped.
        window: side of the square occluding patch in pixels.
        stride: step between window positions in pixels: corners 0, stride, 2·stride, ... while
            the window fits, plus one corner flush with the right / bottom border when the
            stride does not reach it, so that every pixel is covered by a window.
        baseline: what a window pastes: "mean", "zero" or "blur" (see :func:`baseline_tensor`).
        batch_size: occluded copies (or windows) per batch.
        fast: on EfficientNet-Lite models, the same exact deltas by incremental inference (only
            the activations each window changes are recomputed; ``batch_size`` windows per
            batch); on other models, exact deltas on every other window position per axis
            (about 1/4 of them, always including the last) and linear interpolation for the rest.
        progress: ``progress(done, total)`` callback, or None.
        incremental: with ``fast``, use incremental inference where possible; False forces the
            interpolated variant on any model (for comparisons).

    Returns:
        (the (H, W) map, info on how it was computed).
    """
    h, w = x.shape[-2:]
    ys, xs = _window_grid(h, window, stride), _window_grid(w, window, stride)
    base = baseline_tensor(bundle, x, baseline)
    if fast:
        got = incremental_deltas(bundle, x, target, window, ys, xs, base, batch_size, progress) \
            if incremental else None
        if got is not None:
            clean, d = got
            info = {"evaluations": len(ys) * len(xs) + 1, "clean_score": clean, "fast_method": "incremental"}
            return _compose(d, ys, xs, window, h, w), info
        ky = sorted(set(range(0, len(ys), 2)) | {len(ys) - 1})
        kx = sorted(set(range(0, len(xs), 2)) | {len(xs) - 1})
    else:
        ky, kx = list(range(len(ys))), list(range(len(xs)))
    positions = [(ys[a], xs[b]) for a in ky for b in kx]
    clean, d = occlusion_deltas(bundle, x, target, window, stride, base, positions, batch_size, progress)
    d = d.reshape(len(ky), len(kx))
    info = {"evaluations": len(positions) + 1, "clean_score": clean}
    if fast:
        d = _interp_axis(_interp_axis(d, ky, len(ys), 0), kx, len(xs), 1)
        info["fast_method"] = "interpolated"
    return _compose(d, ys, xs, window, h, w), info


def _input_grad(model: nn.Module, x: torch.Tensor, target: int) -> torch.Tensor:
    x = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        score = model(x)[:, target].sum()
        (g,) = torch.autograd.grad(score, x)
    return g


def guided_backprop(bundle: ModelBundle, x: torch.Tensor, target: int) -> tuple[torch.Tensor, list[str]]:
    """Guided backpropagation on the bundle's guided copy; returns (attribution, warnings).

    Args:
        bundle: the model (its shared copy is untouched).
        x: the normalised input batch (N, C, H, W).
        target: the class index.
    """
    gm, n_guided, n_functional = guided_model(bundle)
    warnings = []
    if n_guided == 0:
        warnings.append("No ReLU-like modules found: guided backprop equals the plain gradient here.")
    from analysis.saliency.transformer import guided_note
    if (note := guided_note(bundle.model)) is not None:      # GELU / SiLU models: say what it does
        warnings.append(note)
    if n_functional:
        warnings.append(f"{n_functional} functional rectifier call(s) (F.relu in forward code) cannot be "
                        "guided; those pass gradients like the plain gradient.")
    with bundle.lock:
        g = _input_grad(gm, x, target)
    return g, warnings


# ------------------------------------------------------------------------------- Captum methods

class _CountingForward:
    """Forward function for Captum that reports progress in input rows evaluated."""

    def __init__(self, model: nn.Module, total: int, progress: Progress | None):
        self.model, self.total, self.progress, self.done = model, total, progress, 0

    def __call__(self, x):
        out = self.model(x)
        self.done += x.shape[0]
        if self.progress:
            self.progress(min(self.done, self.total), self.total)
        return out


def _captum_batched(run: Callable[[int], torch.Tensor], batch: int) -> torch.Tensor:
    """Run a Captum call with an internal batch size, halving it after out-of-memory."""
    while True:
        try:
            return run(batch)
        except Exception as exc:  # noqa: BLE001 - only OOM is handled, the rest re-raised
            batch = halve_after_oom(exc, batch)


def integrated_gradients(bundle, x, target, *, steps=50, baseline="zero", batch_size=25, progress=None):
    """Integrated gradients from a baseline to the input (Captum ``IntegratedGradients``).

    Args:
        bundle: the model.
        x: the normalised input batch (N, C, H, W).
        target: the class index.
        steps: points on the path (Riemann steps).
        baseline: the baseline's name ("zero", "blur", ...; see ``baseline_tensor``).
        batch_size: path points per forward.
        progress: optional ``progress(done, total)`` callback.
    """
    from captum.attr import IntegratedGradients
    fwd = _CountingForward(bundle.model, steps, progress)
    base = baseline_tensor(bundle, x, baseline)
    with bundle.lock, torch.enable_grad():
        return _captum_batched(lambda b: IntegratedGradients(fwd).attribute(
            x, baselines=base, target=target, n_steps=steps, internal_batch_size=b), batch_size)


def smoothgrad(bundle, x, target, *, samples=25, noise=0.15, batch_size=25, seed=0, progress=None):
    """SmoothGrad: gradients averaged over noisy copies of the input (Captum ``NoiseTunnel``).

    Args:
        bundle: the model.
        x: the normalised input batch (N, C, H, W).
        target: the class index.
        samples: number of noisy copies.
        noise: noise standard deviation, as a fraction of the input's valid range.
        batch_size: copies per forward.
        seed: the noise seed.
        progress: optional ``progress(done, total)`` callback.
    """
    from captum.attr import NoiseTunnel, Saliency
    fwd = _CountingForward(bundle.model, samples, progress)
    lo, hi = bundle.preprocess.valid_range()
    sigma = float(noise * (hi.max() - lo.min()))            # Smilkov: σ = noise × (max − min)
    with bundle.lock, torch.enable_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _captum_batched(lambda b: NoiseTunnel(Saliency(fwd)).attribute(
            x, nt_type="smoothgrad", nt_samples=samples, nt_samples_batch_size=b, stdevs=sigma,
            target=target, abs=True), batch_size)


def gradcam(bundle, x, target, layer: str) -> torch.Tensor:
    """Grad-CAM at ``layer``, upsampled (bilinear) to the input size; (1, 1, H, W).

    The layer's output and its gradient are read channels-first by the layer's layout
    (channels-last maps permuted, token layers' patch tokens put on their grid with the
    class / register tokens dropped), and are the layer's own values even when an in-place
    op follows it (``capture`` continues the forward on a copy). On channels-first maps
    this is Captum's ``LayerGradCam`` with ``relu_attributions=True``.

    Args:
        bundle: the model (held under ``bundle.lock`` for the forward and backward).
        x: the model-space input (B, C, H, W); the scores of ``target`` are summed over the batch.
        target: class index.
        layer: the layer's qualified name; it must have a spatial or token layout.
    """
    from analysis.core.hooks import graph_from
    from analysis.core.layers import layer_layout
    from analysis.core.layout import to_nchw
    layout = layer_layout(bundle, layer)
    # the graph starts at the layer: the network before it runs without one (graph_from)
    with bundle.lock, graph_from(bundle.model, layer) as acts:
        score = bundle.model(x)[:, target].sum()
        if layer not in acts:
            raise ParameterError(f"{layer} did not run in the forward pass.")
        grad = torch.autograd.grad(score, acts[layer], allow_unused=True)[0] if score.requires_grad else None
    if grad is None:
        raise ParameterError(f"The class score does not depend on {layer}.")
    try:
        a, g = to_nchw(acts[layer].detach(), layout, layer), to_nchw(grad, layout, layer)
    except LayerError:
        raise ParameterError(f"Grad-CAM needs a layer with a spatial feature map; {layer} gives "
                             f"{tuple(acts[layer].shape[1:])} ({layout}).") from None
    weights = g.mean(dim=(2, 3), keepdim=True)
    cam = torch.relu((weights * a).sum(dim=1, keepdim=True))
    return F.interpolate(cam.float(), size=tuple(x.shape[-2:]), mode="bilinear", align_corners=False)


def vanilla_gradient(bundle, x, target) -> torch.Tensor:
    """Gradient of the target logit w.r.t. the input (Simonyan et al.; Captum ``Saliency``).

    Args:
        bundle: the model.
        x: the normalised input batch (N, C, H, W).
        target: the class index.
    """
    from captum.attr import Saliency
    with bundle.lock, torch.enable_grad():
        return Saliency(bundle.model).attribute(x, target=target, abs=False)


# ------------------------------------------------------------------------------- the table

_WINDOW = Param("window", "int", 16, 2, 112, help="Side of the square patch, in pixels of the model's input.")
_STRIDE = Param("stride", "int", 8, 1, 112, help="Step between patch positions, in pixels.")
_BATCH = Param("batch_size", "int", 32, 1, 128, ui=False,
               help="Images per forward pass (halved after an out-of-memory error).")


def _baseline(default: str) -> Param:
    return Param("baseline", "choice", default, choices=(default,) + tuple(b for b in BASELINES if b != default),
                 help="mean: the data set's mean colour; zero: black; blur: the image blurred.")


_LAYER = Param("layer", "layer", None, help="Layer whose feature maps are weighted (default: the last conv block).")
_OCCLUSION_PARAMS = (_WINDOW, _STRIDE, _baseline("mean"), _BATCH)


@register("occlusion", "Occlusion",
          "How much the class score drops when a grey/black/blurred patch hides each region "
          "(Zeiler & Fergus 2014).",
          params=_OCCLUSION_PARAMS, signed=True, perturbation=True, reference="Zeiler & Fergus 2014")
def _occlusion_map(bundle, x, target, *, progress=None, **params) -> MapOutput:
    m, info = occlusion(bundle, x, target, progress=progress, **params)
    return MapOutput(map=m, info=info)


@register("occlusion_fast", "Occlusion (fast)",
          "The same occlusion map, faster: on EfficientNet-Lite exact, recomputing only the "
          "activations each patch changes (incremental inference, Krypton); on other models exact "
          "on every other window position and interpolated in between.",
          params=_OCCLUSION_PARAMS, signed=True, perturbation=True, reference="Nakandala et al. 2019")
def _occlusion_fast_map(bundle, x, target, *, progress=None, **params) -> MapOutput:
    m, info = occlusion(bundle, x, target, fast=True, progress=progress, **params)
    return MapOutput(map=m, info=info)


@register("gradient", "Vanilla gradient",
          "The gradient of the class score with respect to each pixel, max of its absolute value "
          "over colour channels (Simonyan et al. 2014).", reference="Simonyan et al. 2014")
def _gradient_map(bundle, x, target, *, progress=None) -> MapOutput:
    g = vanilla_gradient(bundle, x, target)
    return MapOutput(map=as_map(g[0].abs().amax(0)), signed=as_map(g[0]))


@register("guided_backprop", "Guided backprop",
          "The gradient with only positive signals passed back through every rectifier, which "
          "keeps edges of the object (Springenberg et al. 2015).", reference="Springenberg et al. 2015")
def _guided_backprop_map(bundle, x, target, *, progress=None) -> MapOutput:
    g, warnings = guided_backprop(bundle, x, target)
    return MapOutput(map=as_map(g[0].abs().amax(0)), signed=as_map(g[0]), warnings=warnings)


@register("integrated_gradients", "Integrated Gradients",
          "Gradients averaged along the straight path from a baseline image to the input, times "
          "the difference (Sundararajan et al. 2017).",
          params=(Param("steps", "int", 50, 2, 300, help="Points on the path from the baseline to the image."),
                  _baseline("zero"), dataclasses.replace(_BATCH, default=25)),
          perturbation=True, reference="Sundararajan et al. 2017")
def _integrated_gradients_map(bundle, x, target, *, progress=None, **params) -> MapOutput:
    a = integrated_gradients(bundle, x, target, progress=progress, **params)
    return MapOutput(map=as_map(a[0].abs().sum(0)), signed=as_map(a[0]))


@register("smoothgrad", "SmoothGrad",
          "The gradient averaged over noisy copies of the image, which removes much of its "
          "speckle (Smilkov et al. 2017).",
          params=(Param("samples", "int", 25, 1, 200, help="Noisy copies averaged."),
                  Param("noise", "float", 0.15, 0.0, 0.5, step=0.01, widget="slider", label="noise level (σ / range)",
                        help="Standard deviation of the noise as a fraction of the input range (Smilkov: 0.1-0.2)."),
                  dataclasses.replace(_BATCH, default=25),
                  Param("seed", "int", 0, 0, 2**31 - 1, ui=False, help="Seed of the noise.")),
          perturbation=True, reference="Smilkov et al. 2017")
def _smoothgrad_map(bundle, x, target, *, progress=None, **params) -> MapOutput:
    a = smoothgrad(bundle, x, target, progress=progress, **params)
    return MapOutput(map=as_map(a[0].amax(0)), signed=as_map(a[0]))


def _cam(bundle, x, target, layer):
    infos = layer_table(bundle)
    layer = layer or last_conv_block(infos)
    info = check_layer(infos, layer)
    if not info.spatial:
        raise ParameterError(f"Grad-CAM needs a layer with a spatial feature map; {layer} outputs {info.output_shape}.")
    return gradcam(bundle, x, target, layer), layer


@register("gradcam", "Grad-CAM",
          "A layer's feature maps weighted by their average gradient, rectified and upsampled: "
          "where the class evidence is in that layer (Selvaraju et al. 2017).",
          params=(_LAYER,), reference="Selvaraju et al. 2017")
def _gradcam_map(bundle, x, target, *, progress=None, layer=None) -> MapOutput:
    cam, layer = _cam(bundle, x, target, layer)
    return MapOutput(map=as_map(cam[0, 0]), info={"layer": layer}, layer=layer)


@register("guided_gradcam", "Guided Grad-CAM",
          "Guided backprop multiplied by Grad-CAM: fine detail, restricted to the class's region.",
          params=(_LAYER,), reference="Selvaraju et al. 2017")
def _guided_gradcam_map(bundle, x, target, *, progress=None, layer=None) -> MapOutput:
    cam, layer = _cam(bundle, x, target, layer)
    g, warnings = guided_backprop(bundle, x, target)
    prod = g * cam
    return MapOutput(map=as_map(prod[0].abs().amax(0)), signed=as_map(prod[0]), info={"layer": layer},
                     warnings=warnings, layer=layer)


# ------------------------------------------------------------------------------- one interface

def blank_warnings(bundle: ModelBundle, x: torch.Tensor, m: np.ndarray, title: str) -> list[str]:
    """Warnings for a constant map ``m`` (all-zero included), naming the cause when the
    model gives every class the same score for the input ``x``.

    Args:
        bundle: the model (one extra forward when the map is constant).
        x: the model-space input the map was computed on.
        m: the map.
        title: the method's display name for the message.
    """
    from analysis.core.sanity import constant_warning, output_warning
    w = constant_warning(m, f"The {title} map")
    if w is None:
        return []
    with bundle.lock, torch.inference_mode():
        cause = output_warning(bundle.model(x))
    return [w] + ([cause] if cause else [])




def attribute(bundle: ModelBundle, image: np.ndarray, target: int | str | None = None,
              method: str = "gradient", *, progress: Progress | None = None, **params) -> Attribution:
    """Saliency of ``target`` for an RGB uint8 ``image`` of any size, by any registered method.

    bundle: the model; image: RGB uint8 (cropped and normalised like the model's inputs);
    target: class index, class name, or None for the predicted class; method: a name from
    ``analysis.saliency.registry.names()``; progress: ``progress(done, total)`` callback;
    params: the method's parameters, checked against its schema (unknown names, bools, NaN
    and out-of-range values raise ParameterError naming the parameter; defaults fill the
    rest). The result's ``params`` records the checked values (plus what the method
    reports, e.g. the layer it used). Built-in parameters: occlusion / occlusion_fast:
    window, stride, baseline ("mean"|"zero"|"blur"), batch_size; integrated_gradients:
    steps, baseline, batch_size; smoothgrad: samples, noise, batch_size, seed; gradcam /
    guided_gradcam: layer (default: the last convolutional block).
    """
    spec = registry.get(method)
    checked = spec.validate(params)
    t0 = time.perf_counter()
    crop = bundle.preprocess.geometry(image)
    x = bundle.preprocess.normalize(bundle.preprocess.to_unit(crop)).to(bundle.device)
    tgt = resolve_target(bundle, x, target)
    out = spec.fn(bundle, x, tgt, progress=progress, **checked)
    m = np.asarray(out.map, np.float32)
    warnings = list(out.warnings) + blank_warnings(bundle, x, m, spec.title)
    used = {**checked, **out.info}
    signed = None if out.signed is None else np.asarray(out.signed, np.float32)
    warnings += blank_warnings(bundle, x, m, spec.title)
    return Attribution(method=method, target=tgt, target_label=bundle.categories[tgt], map=m,
                       image=crop, signed=signed, params=used, seconds=time.perf_counter() - t0,
                       layer=out.layer, warnings=warnings)
