"""What the pages run on the engine (analysis/optimize.py): class visualisation presets,
channel / neuron visualisation, DeepDream with octaves, and feature inversion.

Every function returns the engine's generator (``OptStep`` per step, ``OptResult`` at the
end), so pages show a live preview and can stop; every result's ``params`` records what
produced it (objective, parameterisation, step rule, regularisers, seed, model_id).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Generator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

import analysis.optimize as O
from analysis.core.errors import ParameterError
from analysis.core.models.bundle import ModelBundle

# ------------------------------------------------------------ class visualisation

@dataclass(frozen=True)
class Preset:
    name: str
    source: str
    parameterisation: str = "pixels"     # or "fourier", "maco"
    space: str = "standard"
    init_std: float = 1.0
    steps: int = 100
    step_rule: str = "normalized"
    lr: float = 25.0
    l2: float = 0.0                      # weight of the L2 objective term (CS231n)
    decay: float = 0.0                   # multiplicative decay between steps (Yosinski)
    roll: int = 0
    robust: bool = False                 # lucent's transformation-robustness stack
    blur_every: int = 0
    blur_sigma: float = 0.0
    small_norm_pct: float = 0.0
    small_contrib_pct: float = 0.0
    max_lr: float | None = None
    desired_progress: float | None = None
    size: int | None = None
    canvas: float = 1.0                  # image side / model input side when no size is given
    crops: int = 0                       # MACO's noisy random crops per step (0: off)
    crop_min: float = 0.4                # crop side range, fraction of the image side
    crop_max: float = 0.6
    crop_noise: float = 0.05

    def as_dict(self) -> dict:
        """The preset's settings as a plain dict, one entry per field."""
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


PRESETS: dict[str, Preset] = {p.name: p for p in [
    Preset("MACO (Fel et al. 2023)", "Magnitude-constrained optimisation: only the phase of the image's "
           "spectrum is optimised, its amplitude is that of natural photographs; 4 noisy random crops of "
           "40-60 % per step, Adam 0.5, 256 steps, a 384 px canvas for a 224 px model",
           parameterisation="maco", steps=256, step_rule="adam", lr=0.5, crops=4, canvas=12 / 7),
    Preset("Fourier + robustness (lucent)", "Olah et al. 2017, lucent defaults: decorrelated Fourier "
           "image, pad/jitter/scale/rotate, Adam 0.05", parameterisation="fourier", steps=256,
           step_rule="adam", lr=0.05, robust=True),
    Preset("CS231n", "CS231n assignment 3: L2 1e-3, normalised step lr 25, jitter 16, blur σ 0.5 every 10, "
           "100 steps, ImageNet-standardised pixels", l2=1e-3, roll=16, blur_every=10, blur_sigma=0.5),
    Preset("Yosinski 1", "Yosinski et al. 2015 Table 1 row 1: decay 0, blur 0.5 every 4, small-norm 50 %, "
           "progress lr (max 100, Δ 2), 500 steps", space="caffe", init_std=10, steps=500, step_rule="progress",
           lr=0.0, max_lr=100.0, desired_progress=2.0, blur_every=4, blur_sigma=0.5, small_norm_pct=50),
    Preset("Yosinski 2", "Table 1 row 2: decay 0.3, no blur, small-norm 20 %, constant lr 100, 750 steps",
           space="caffe", init_std=10, steps=750, step_rule="constant", lr=100.0, decay=0.3, small_norm_pct=20),
    Preset("Yosinski 3", "Table 1 row 3 (most of the paper's images): decay 1e-4, blur 1.0 every 4, "
           "constant lr 100, 1000 steps", space="caffe", init_std=10, steps=1000, step_rule="constant",
           lr=100.0, decay=1e-4, blur_every=4, blur_sigma=1.0),
    Preset("Yosinski 4", "Table 1 row 4: decay 0, blur 0.5 every 4, small-contribution 90 %, progress lr "
           "(max 1e8, Δ 2), 1000 steps", space="caffe", init_std=10, steps=1000, step_rule="progress", lr=0.0,
           max_lr=1e8, desired_progress=2.0, blur_every=4, blur_sigma=0.5, small_contrib_pct=90),
]}


def default_size(preset: Preset, bundle: ModelBundle) -> int:
    """The image side a preset uses when none is given: its own, else its canvas × the model's input.

    Args:
        preset: the preset.
        bundle: the model (its ``input_size``).
    """
    return int(preset.size or max(8, round(bundle.input_size * preset.canvas)))


# a preset's parameterisation -> its image: (bundle, preset, size, batch, seed) -> ImageParam
PARAMETERISATIONS = {
    "pixels": lambda bundle, preset, size, batch, seed: O.PixelImage(
        bundle, size, batch=batch, space=preset.space, init_std=preset.init_std, seed=seed),
    "fourier": lambda bundle, preset, size, batch, seed: O.FourierImage(bundle, size, batch=batch, seed=seed),
    "maco": lambda bundle, preset, size, batch, seed: O.MacoImage(bundle, size, batch=batch, seed=seed),
}


def _param(bundle: ModelBundle, preset: Preset, batch: int, seed: int, size: int | None):
    make = PARAMETERISATIONS.get(preset.parameterisation)
    if make is None:
        raise ParameterError(f"Unknown parameterisation {preset.parameterisation!r}: use "
                             f"{', '.join(PARAMETERISATIONS)}.")
    return make(bundle, preset, size or default_size(preset, bundle), batch, seed)


def _transforms(bundle: ModelBundle, preset: Preset) -> list:
    tf = O.standard_transforms() if preset.robust else ([O.Roll(preset.roll)] if preset.roll else [])
    if preset.crops:
        tf.append(O.RandomCrops(preset.crops, preset.crop_min, preset.crop_max, bundle.input_size,
                                noise=preset.crop_noise))
    return tf


def _run_preset(bundle, objective, preset: Preset, *, steps, batch, seed, size, preview_every, **extra):
    obj = objective - preset.l2 * O.l2() if preset.l2 else objective
    transforms = _transforms(bundle, preset)
    gen = O.optimize(bundle, obj, _param(bundle, preset, batch, seed, size), steps=steps or preset.steps,
                     step_rule=preset.step_rule, lr=preset.lr, transforms=transforms, decay=preset.decay,
                     blur_every=preset.blur_every, blur_sigma=preset.blur_sigma,
                     small_norm_pct=preset.small_norm_pct, small_contrib_pct=preset.small_contrib_pct,
                     max_lr=preset.max_lr, desired_progress=preset.desired_progress, seed=seed,
                     preview_every=preview_every, **extra)
    result = yield from gen
    result.params["preset"] = preset.name
    return result


def class_visualization(bundle: ModelBundle, classes: int | list[int], preset: str | Preset = "MACO (Fel et al. 2023)",
                        *, steps: int | None = None, seed: int = 0, size: int | None = None,
                        preview_every: int = 10, probability: bool = False) -> Generator:
    """I* = argmax_I S_c(I) + R(I) for one class (or the mean of several), with a preset's
    parameterisation, step rule and regularisers.

    Args:
        bundle: the model.
        classes: a class index, or several whose mean score is maximised.
        preset: a name in ``PRESETS`` or a :class:`Preset`.
        steps: optimisation steps; None for the preset's.
        seed: seed of the initialisation and the random transforms.
        size: image side in pixels; None for :func:`default_size`.
        preview_every: yield a preview image every this many steps (0: none).
        probability: maximise the log-probability instead of the logit.
    """
    p = PRESETS[preset] if isinstance(preset, str) else preset
    cs = [classes] if isinstance(classes, int) else list(classes)
    if not cs:
        raise ParameterError("Choose at least one class.")
    objective = sum((O.class_prob(c) if probability else O.class_logit(c) for c in cs[1:]),
                    O.class_prob(cs[0]) if probability else O.class_logit(cs[0]))
    objective = objective * (1.0 / len(cs)) if len(cs) > 1 else objective
    return _run_preset(bundle, objective, p, steps=steps, batch=1, seed=seed, size=size, preview_every=preview_every)


# ---------------------------------------------------------- channel / neuron

def channel_visualization(bundle: ModelBundle, layer: str, channel: int, *, neuron: bool = False,
                          batch: int = 1, diversity: float = 0.0, steps: int = 256, lr: float = 0.05,
                          size: int | None = 128, seed: int = 0, preview_every: int = 16) -> Generator:
    """The image a channel (mean over positions) or its centre neuron wants, lucent-style:
    Fourier + decorrelated colour + robustness; ``batch`` > 1 with ``diversity`` > 0 gives
    several different images of the same channel.

    Args:
        bundle: the model.
        layer: the layer's qualified name.
        channel: channel index in the layer's (channels-first) output.
        neuron: the centre position's value instead of the channel mean.
        batch: images optimised together.
        diversity: weight of the diversity term (needs ``batch`` ≥ 2).
        steps: Adam steps.
        lr: Adam learning rate.
        size: image side in pixels (None: the model's input size).
        seed: seed of the spectrum initialisation and the random transforms.
        preview_every: yield a preview image every this many steps (0: none).
    """
    obj = O.neuron(layer, channel) if neuron else O.channel(layer, channel)
    if diversity:
        if batch < 2:
            raise ParameterError("The diversity term needs a batch of at least 2 images.")
        obj = obj + diversity * O.diversity(layer)
    return O.optimize(bundle, obj, O.FourierImage(bundle, size, batch=batch, seed=seed), steps=steps,
                      step_rule="adam", lr=lr, transforms=O.standard_transforms(), seed=seed,
                      preview_every=preview_every)


# ------------------------------------------------------------------- DeepDream

DEEPDREAM_DEFAULTS = dict(octaves=4, octave_scale=1.4, steps_per_octave=10, step_size=1.5, jitter=32, clip=True)


def deepdream(bundle: ModelBundle, image: np.ndarray, layer: str, *, channel: int | None = None,
              octaves: int = 4, octave_scale: float = 1.4, steps_per_octave: int = 10, step_size: float = 1.5,
              jitter: int = 32, clip: bool = True, max_side: int = 512, seed: int = 0,
              preview_every: int = 5) -> Generator:
    """google/deepdream on any image: maximise the L2 norm of ``layer`` (or one channel's mean)
    with normalised steps (``step_size / mean|g|`` in 0-255 units), random roll jitter and
    clipping, over an octave pyramid whose detail is carried up from small to full size.

    Args:
        bundle: the model.
        image: RGB uint8 (H, W, 3).
        layer: the layer whose activations are amplified.
        channel: one channel of it (its mean) instead of the whole layer's L2 norm.
        octaves: 1-8 pyramid levels (fewer if a level would fall below 16 px).
        octave_scale: size ratio between levels, in (1, 4].
        steps_per_octave: steps at each level (steps × octaves within the configured limit).
        step_size: in (0, 100], in 0-255 units per mean absolute gradient.
        jitter: maximum random roll in pixels (≥ 0) before each step.
        clip: clamp the image to [0, 1] after each step.
        max_side: the image is first scaled down so its longer side is at most this.
        seed: seed of the jitter.
        preview_every: yield a preview image every this many steps (0: none).
    """
    from analysis.core.config import get_config
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ParameterError("DeepDream needs an RGB uint8 image.")
    if not (1 <= octaves <= 8):
        raise ParameterError("octaves must be between 1 and 8.")
    if not (1.0 < octave_scale <= 4.0):
        raise ParameterError("octave scale must be in (1, 4].")
    limit = get_config().limits.max_optimisation_steps
    if not (1 <= steps_per_octave and steps_per_octave * octaves <= limit):
        raise ParameterError(f"steps × octaves must be between 1 and {limit}.")
    if not (0 < step_size <= 100):
        raise ParameterError("step size must be in (0, 100].")
    if jitter < 0:
        raise ParameterError("jitter must be ≥ 0.")
    h, w = image.shape[:2]
    s = min(1.0, max_side / max(h, w))
    base = torch.from_numpy(np.array(image, copy=True)).permute(2, 0, 1)[None].float() / 255.0
    if s < 1:
        base = F.interpolate(base, size=(round(h * s), round(w * s)), mode="bilinear", antialias=True,
                             align_corners=False)
    if bundle.preprocess.channels == 1:
        base = base.mean(1, keepdim=True)
    base = base.to(bundle.device)
    pyramid = [base]
    for _ in range(octaves - 1):
        hh, ww = pyramid[-1].shape[-2:]
        nh, nw = round(hh / octave_scale), round(ww / octave_scale)
        if min(nh, nw) < 16:
            break
        pyramid.append(F.interpolate(pyramid[-1], size=(nh, nw), mode="bilinear", antialias=True, align_corners=False))
    obj = O.channel(layer, channel) if channel is not None else O.layer_l2(layer)
    record = {"kind": "deepdream", "layer": layer, "channel": channel, "octaves": len(pyramid),
              "octave_scale": octave_scale, "steps_per_octave": steps_per_octave, "step_size": step_size,
              "jitter": jitter, "clip": clip, "max_side": max_side, "seed": seed, "model_id": bundle.model_id,
              "size": list(base.shape[-2:])}
    total = steps_per_octave * len(pyramid)
    history, done, stopped, t0 = [], 0, False, time.perf_counter()
    detail = torch.zeros_like(pyramid[-1])
    cur = pyramid[0]
    step_unit = step_size / 255.0
    for o, octave_base in enumerate(reversed(pyramid)):
        if o > 0:
            detail = F.interpolate(detail, size=octave_base.shape[-2:], mode="bilinear", align_corners=False)
        p = O.PixelImage(bundle, init=(octave_base + detail), space="unit")
        gen = O.optimize(bundle, obj, p, steps=steps_per_octave, step_rule="mean_abs", lr=step_unit,
                         transforms=[O.Roll(jitter)] if jitter else [], clip=clip, seed=seed + o, preview_every=0)
        try:
            st = next(gen)
            while True:
                done += 1
                history.append(st.value)
                show = preview_every and (done % preview_every == 0 or done == total)
                cmd = yield O.OptStep(done, total, st.value, st.terms,
                                      O.to_uint8(p.image().detach()) if show else None, time.perf_counter() - t0)
                if cmd == "stop":
                    stopped = done < total
                    gen.close()
                    break
                st = gen.send(None)
        except StopIteration:
            pass
        cur = p.image().detach()
        detail = cur - octave_base
        if stopped:
            break
    unit = cur.clamp(0, 1)
    return O.OptResult(O.to_uint8(unit), unit.float().cpu().numpy(), history, {obj.terms[0][1].name: history},
                       done, stopped, time.perf_counter() - t0, record)


# ---------------------------------------------------------------- inversion

def layer_features(bundle: ModelBundle, unit: torch.Tensor, layer: str) -> torch.Tensor:
    """Features of ``layer`` for [0, 1] images (B, C, H, W), no graph.

    Args:
        bundle: the model (held under ``bundle.lock``).
        unit: image batch (B, C, H, W) in [0, 1], on the bundle's device.
        layer: the layer's qualified name.
    """
    with bundle.lock, torch.no_grad():
        ctx = O.forward_context(bundle, O.channel(layer, 0), unit, unit, None)
    return ctx.acts[layer].detach()


def invert(bundle: ModelBundle, image: np.ndarray, layer: str, *, steps: int = 200, tv_weight: float = 1e-8,
           lr: float = 0.02, step_rule: str = "adam", seed: int = 0, preview_every: int = 10) -> Generator:
    """Feature inversion (Mahendran & Vedaldi 2015): from noise, find the image whose features
    at ``layer`` match those of ``image`` (cropped like the model's input), with a total
    variation prior. The result's params hold the relative feature error and pixel RMSE.

    Args:
        bundle: the model.
        image: RGB uint8 (H, W, 3).
        layer: the layer whose features are matched.
        steps: optimisation steps.
        tv_weight: total-variation weight (≥ 0; 0-255 units, summed over pixels).
        lr: learning rate.
        step_rule: a step rule of :func:`analysis.optimize.engine.optimize`.
        seed: seed of the noise initialisation.
        preview_every: yield a preview image every this many steps (0: none).
    """
    if tv_weight < 0:
        raise ParameterError("TV weight must be ≥ 0.")
    target_img = bundle.preprocess.to_unit(bundle.preprocess.geometry(image)).to(bundle.device)
    target = layer_features(bundle, target_img, layer)
    obj = O.feature_match(layer, target)
    if tv_weight:
        obj = obj - tv_weight * O.total_variation()
    param = O.PixelImage(bundle, space="unit", init="noise", init_std=0.05, seed=seed)
    with torch.no_grad():
        param.p.add_(0.5)
    result = yield from O.optimize(bundle, obj, param, steps=steps, step_rule=step_rule, lr=lr, seed=seed,
                                   preview_every=preview_every)
    rec = torch.from_numpy(result.unit).to(bundle.device)
    result.params.update(kind="inversion", layer=layer, tv_weight=tv_weight,
                         feature_error=-result.terms[f"match {layer}"][-1],
                         pixel_rmse=float((rec - target_img).pow(2).mean().sqrt()))
    err = result.params["feature_error"]
    if err >= INVERSION_NOT_CONVERGED:
        result.flag(f"{layer}: relative feature error {err:.2f} at the end (noise gives about 1, a "
                    "reconstruction well under 0.2): this inversion did not converge and its picture "
                    "is mostly its starting noise. Try more steps or another learning rate.")
    return result


INVERSION_NOT_CONVERGED = 0.5        # relative feature error at or above which an inversion failed


def flag_strip_outliers(results: Sequence[O.OptResult], layers: Sequence[str], factor: float = 4.0,
                        floor: float = 0.2) -> list[str]:
    """Flag the inversions of a strip (one per layer) whose relative feature error is an
    outlier: above ``floor`` and more than ``factor`` times the median error of the others
    (e.g. 0.89 next to 0.04–0.06). Flagged results get ``converged=False`` and a warning;
    returns all the strip's warnings (each once), for the page.

    Args:
        results: inversion results, in the order of ``layers``.
        layers: the inverted layer of each result.
        factor: how many times the others' median error counts as an outlier.
        floor: errors below this are never outliers.
    """
    errs = [float(r.params.get("feature_error", float("nan"))) for r in results]
    for i, (r, ly) in enumerate(zip(results, layers)):
        others = [e for j, e in enumerate(errs) if j != i and math.isfinite(e)]
        if not others or not math.isfinite(errs[i]):
            continue
        med = float(np.median(others))
        if errs[i] > floor and errs[i] > factor * med:
            r.flag(f"{ly}: feature error {errs[i]:.2f} is far above the other layers' (median {med:.2f}): "
                   "this inversion did not converge; do not read its picture as what the layer keeps.")
    out: list[str] = []
    for r in results:
        out.extend(w for w in r.warnings if w not in out)
    return out
