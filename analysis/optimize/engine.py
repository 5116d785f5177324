"""Feature visualisation by optimisation: one engine, many pictures.

Change the pixels, not the weights: find ``I* = argmax_I f(I) + R(I)``. The same loop serves
class visualisation, channel / neuron visualisation, DeepDream, feature inversion and
(texture / style) Gram matching. Its pieces compose, in the spirit of lucent:

* **objectives** add and scale: ``class_logit(1) - 1e-3 * l2()``, ``channel("_blocks.9", 12)
  + 0.5 * diversity("_blocks.9")``, ``feature_match(layer, target) - 1e-4 * total_variation()``;
  every term's value is reported separately;
* **parameterisations** of the image: plain pixels (in a chosen pixel space, so published
  settings keep their meaning), a Fourier spectrum with decorrelated colour (Olah et al.
  2017), or a phase-only spectrum with a natural-image magnitude (MACO, Fel et al. 2023);
* **transforms** for robustness (roll / jitter / pad / scale / rotate, or MACO's batches of
  noisy random crops), applied to the image before each forward;
* **step rules**: Adam, L-BFGS, normalised gradient ascent (CS231n), constant or
  "progress" learning rates (Yosinski et al. 2015), mean-|g| steps (DeepDream);
* **pixel regularisers** between steps (plain pixels): L2 decay, Gaussian blur every N
  steps, clipping to the valid range, zeroing small-norm or small-contribution pixels.

``optimize`` is a generator: it yields an ``OptStep`` after every step (with a preview image
every ``preview_every`` steps) and returns an ``OptResult``; ``send("stop")`` ends it early
and still returns the current image. It runs on the bundle's device (CUDA when the model is
there), is deterministic for a seed on CPU, never changes the shared model, and holds
``bundle.lock`` around each step's hooks, forward and backward.
"""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Generator, Sequence

import numpy as np
import torch

from analysis.core.errors import LayerError, ParameterError
from analysis.core.hooks import forward_hooks, get_module, keep_output
from analysis.core.jobs import drive
from analysis.core.models.bundle import ModelBundle
from analysis.core.schema import check_real
from analysis.core.sizes import fit_to_model
from analysis.optimize.objectives import Context, Objective
from analysis.optimize.params import ImageParam, PixelImage
from analysis.optimize.transforms import Transform

# ========================================================= forward with captures

class _Stop(Exception):
    pass


@contextlib.contextmanager
def _captures(model, layers: frozenset, stop_early: bool):
    """Capture ``layers`` with their graph; with ``stop_early``, abort the forward as soon
    as all of them have run (the rest of the network is not needed). Hooks are
    thread-scoped and always removed."""
    store: dict[str, torch.Tensor] = {}

    def make_hook(name: str):
        def hook(mod, inp, out):
            # The forward continues on a clone: in-place ops after the layer (an
            # in-place ReLU) cannot rewrite the kept activation or its gradient.
            store[name], replacement = keep_output(out, detach=False)
            if stop_early and len(store) == len(layers):
                raise _Stop
            return replacement
        return hook

    with forward_hooks((get_module(model, name), make_hook(name)) for name in sorted(layers)):
        yield store


def forward_context(bundle: ModelBundle, objective: Objective, image: torch.Tensor,
                    transformed: torch.Tensor, pixels: torch.Tensor | None) -> Context:
    """Run the shared model on a transformed [0, 1] image and build the objective's context.
    The caller holds ``bundle.lock``.

    Args:
        bundle: the model.
        objective: says which layers to capture and whether the logits are needed (else the
            forward stops after the last captured layer).
        image: the untransformed image (B, C, H, W) in [0, 1], passed to the context.
        transformed: the transformed image that is normalised and fed to the model.
        pixels: the raw pixel parameter (plain pixels only), or None.
    """
    inp = fit_to_model(bundle, bundle.preprocess.normalize(transformed))   # fixed-size models (ViT)
    need_out = objective.needs_output or not objective.layers
    with _captures(bundle.model, objective.layers, stop_early=not need_out) as acts:
        try:
            logits = bundle.model(inp)
        except _Stop:
            logits = None
    # Outside the captures: channels_first may build the layer table, whose dry forward must
    # not run through (and be stopped by) this objective's hooks.
    missing = objective.layers - set(acts)
    if missing:
        raise LayerError(f"Layer(s) {', '.join(sorted(missing))} did not run in the forward pass.")
    return Context(channels_first(bundle, acts), logits, image, pixels)


def channels_first(bundle: ModelBundle, acts: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Captured activations with every feature map channels-first (N, C, H, W), by the
    layer table's layouts: channels-last maps are permuted, token layers put their patch
    tokens on the grid (class tokens left out). Objectives (channel, neuron, Gram,
    diversity, feature match) then read channels on the right axis for every model.

    Args:
        bundle: the model (its layer table gives each layer's layout).
        acts: layer name -> captured activation.
    """
    from analysis.core.layers import layer_layout
    from analysis.core.layout import to_nchw
    out = {}
    for name, a in acts.items():
        layout = layer_layout(bundle, name)
        out[name] = to_nchw(a, layout, name) if layout.is_map and layout.kind != "nchw" else a
    return out


# =============================================================== the optimiser

STEP_RULES = ("adam", "lbfgs", "normalized", "constant", "progress", "mean_abs")


@dataclass
class OptStep:
    step: int
    total: int
    value: float                       # the whole objective (maximised)
    terms: dict[str, float]
    image: np.ndarray | None           # (B, H, W, 3) uint8 on preview steps, else None
    seconds: float


@dataclass
class OptResult:
    images: np.ndarray                 # (B, H, W, 3) uint8
    unit: np.ndarray                   # (B, C, H, W) float32 in [0, 1]
    history: list[float]
    terms: dict[str, list[float]]
    steps: int
    stopped: bool
    seconds: float
    params: dict = field(default_factory=dict)
    converged: bool = True             # False: the objective did not improve (see ``convergence``)
    warnings: list[str] = field(default_factory=list)

    def __post_init__(self):
        if self.history and self.converged and not self.warnings:
            self.converged, self.warnings = convergence(self.history, self.params.get("steps", self.steps),
                                                        self.stopped)

    def flag(self, message: str) -> None:
        """Mark the result as not converged, with ``message`` for the page."""
        self.converged = False
        if message not in self.warnings:
            self.warnings.append(message)

    @property
    def steps_per_second(self) -> float:
        return self.steps / self.seconds if self.seconds > 0 else 0.0


def convergence(history: Sequence[float], steps: int | None = None, stopped: bool = False,
                rtol: float = 0.05) -> tuple[bool, list[str]]:
    """Did an optimisation get anywhere? ``(converged, warnings)`` from its objective
    ``history`` (maximised, one value per step, the first before any update).

    Not converged: fewer than two steps, or the mean of the last tenth of the steps is not
    above the mean of the first tenth by more than ``rtol`` of their magnitude (the
    result is then about where it started: noise, or the input). A run stopped early
    gets a note. Args: history, steps (planned), stopped, rtol."""
    h = np.asarray([v for v in history if math.isfinite(v)], dtype=np.float64)
    notes: list[str] = []
    if stopped and steps:
        notes.append(f"Stopped after {len(history)} of {steps} steps: the result may not have converged.")
    if len(h) < 2:
        return False, [f"Only {len(h)} step ran: an optimisation cannot converge in one step; "
                       "the result is its starting image."] + notes
    k = max(1, len(h) // 10)
    start, end = float(h[:k].mean()), float(h[-k:].mean())
    scale = max(abs(start), abs(end), 1e-12)
    if end - start <= rtol * scale:
        return False, [f"The objective did not improve over {len(h)} steps (from {start:.4g} to {end:.4g}): "
                       "the result is about where it started (noise or the input), not an optimum. "
                       "Try more steps or a larger learning rate."] + notes
    return True, notes


def to_uint8(unit: torch.Tensor) -> np.ndarray:
    """(B, C, H, W) in [0, 1] -> (B, H, W, 3) uint8.

    Args:
        unit: images (B, C, H, W) in [0, 1] (clamped), C 1 (repeated to grey RGB) or 3.
    """
    u = unit.detach().float().clamp(0, 1).cpu()
    if u.shape[1] == 1:
        u = u.expand(-1, 3, -1, -1)
    return (u.permute(0, 2, 3, 1).numpy() * 255 + 0.5).astype(np.uint8)


def _percentile_mask(v: torch.Tensor, pct: float) -> torch.Tensor:
    """Per image: True where ``v`` (B, H, W) is below its ``pct`` percentile."""
    flat = v.reshape(v.shape[0], -1)
    thr = torch.quantile(flat.float(), pct / 100.0, dim=1).view(-1, 1, 1)
    return v < thr


def _check(name, value, lo, hi=None):
    check_real(name, value, lo, hi, message=f"{name} must be between {lo} and {hi} (got {value!r})."
               if hi is not None else f"{name} must be at least {lo} (got {value!r}).")


def optimize(bundle: ModelBundle, objective: Objective, param: ImageParam, *, steps: int = 100,
             step_rule: str = "adam", lr: float = 0.05, transforms: Sequence[Transform] = (),
             decay: float = 0.0, blur_every: int = 0, blur_sigma: float = 0.0, clip: bool = True,
             small_norm_pct: float = 0.0, small_contrib_pct: float = 0.0, max_lr: float | None = None,
             desired_progress: float | None = None, seed: int = 0, preview_every: int = 10,
             ) -> Generator[OptStep, str | None, OptResult]:
    """Gradient ascent of ``objective`` over the image ``param``; see the module docstring.

    Pixel regularisers (``decay``, ``blur_*``, ``clip``, ``small_*_pct``) apply to plain
    pixels only. Step rules: "adam" and "lbfgs" (torch.optim, ``lr``), "normalized"
    (``p += lr·g/‖g‖``), "constant" (``p += lr·g``), "progress" (``lr = min(max_lr,
    desired_progress/‖g‖²)``), "mean_abs" (``p += lr·g/mean|g|``).

    Args:
        bundle: the model (held under ``bundle.lock`` for each forward and backward).
        objective: what to maximise.
        param: the image parameterisation (its ``tensors`` are optimised).
        steps: 1 to the configured ``max_optimisation_steps``.
        step_rule: "adam", "lbfgs", "normalized", "constant", "progress" or "mean_abs".
        lr: learning rate (> 0).
        transforms: random robustness transforms applied in order before each forward.
        decay: L2 decay of the pixels per step, in [0, 1].
        blur_every: blur the pixels every this many steps (0: never).
        blur_sigma: Gaussian sigma of that blur in pixels.
        clip: clamp the pixels to the valid range after each step.
        small_norm_pct: zero the pixels whose norm over channels is below this percentile.
        small_contrib_pct: zero the pixels whose contribution (|pixel·gradient|) is below this
            percentile.
        max_lr: upper bound of the "progress" rule's step.
        desired_progress: the objective gain per step the "progress" rule aims at.
        seed: seed of the random transforms.
        preview_every: yield a preview image every this many steps and at the last (0: none).
    """
    from analysis.core.config import get_config
    from analysis.core.filters import gaussian_blur

    limit = get_config().limits.max_optimisation_steps
    if not isinstance(steps, int) or not 1 <= steps <= limit:
        raise ParameterError(f"steps must be between 1 and {limit} (got {steps!r}); the limit is "
                             "max_optimisation_steps in the configuration.")
    if step_rule not in STEP_RULES:
        raise ParameterError(f"Unknown step rule {step_rule!r}; use one of {', '.join(STEP_RULES)}.")
    _check("learning rate", lr, 0)
    _check("decay", decay, 0, 1)
    _check("blur sigma", blur_sigma, 0, 50)
    _check("blur every", blur_every, 0)
    _check("small-norm percentile", small_norm_pct, 0, 100)
    _check("small-contribution percentile", small_contrib_pct, 0, 100)
    _check("preview every", preview_every, 0)
    if step_rule == "progress" and (max_lr is None or desired_progress is None):
        raise ParameterError("The progress step rule needs max_lr and desired_progress.")
    if not objective.terms:
        raise ParameterError("The objective is empty.")
    pixel = isinstance(param, PixelImage)
    if not pixel and (decay or blur_every or small_norm_pct or small_contrib_pct):
        raise ParameterError("Decay, blur and pixel clipping apply to the plain-pixel parameterisation only.")

    rng = torch.Generator().manual_seed(int(seed))
    tensors = param.tensors
    opt = None
    if step_rule == "adam":
        opt = torch.optim.Adam(tensors, lr=lr)
    elif step_rule == "lbfgs":
        opt = torch.optim.LBFGS(tensors, lr=lr, max_iter=1, history_size=20)

    record = {"objective": objective.describe(), "param": param.describe(), "steps": steps,
              "step_rule": step_rule, "lr": lr, "transforms": [repr(t) for t in transforms],
              "decay": decay, "blur_every": blur_every, "blur_sigma": blur_sigma, "clip": clip,
              "small_norm_pct": small_norm_pct, "small_contrib_pct": small_contrib_pct,
              "max_lr": max_lr, "desired_progress": desired_progress, "seed": seed,
              "model_id": bundle.model_id}
    history: list[float] = []
    term_hist: dict[str, list[float]] = {}
    t0 = time.perf_counter()
    done, stopped = 0, False
    last: dict = {}

    def evaluate():
        """Forward + backward under the lock; returns (objective, terms, grads)."""
        with bundle.lock, torch.enable_grad():
            img = param.image()
            x = img
            for tf in transforms:
                x = tf(x, rng)
            ctx = forward_context(bundle, objective, img, x, param.pixels)
            total, values = objective.evaluate(ctx)
            if not torch.isfinite(total):
                raise ParameterError("The objective became infinite or NaN; lower the learning rate.")
            grads = torch.autograd.grad(total, tensors)
        return float(total.detach()), values, grads

    for t in range(steps):
        if opt is not None:
            def closure():
                opt.zero_grad(set_to_none=False)
                v, vals, grads = evaluate()
                for p_, g in zip(tensors, grads):
                    p_.grad = -g.contiguous()     # channels_last models give strided grads; L-BFGS views them flat
                last.update(value=v, values=vals, grads=grads)
                return torch.tensor(-v)
            opt.step(closure)
            grads = last["grads"]
        else:
            v, vals, grads = evaluate()
            last.update(value=v, values=vals)
            with torch.no_grad():
                for p_, g in zip(tensors, grads):
                    dims = tuple(range(1, g.dim()))
                    if step_rule == "normalized":
                        p_.add_(lr * g / g.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *[1] * len(dims)))
                    elif step_rule == "constant":
                        p_.add_(lr * g)
                    elif step_rule == "progress":
                        sq = g.pow(2).sum(dim=dims, keepdim=True).clamp_min(1e-24)
                        p_.add_(torch.clamp(desired_progress / sq, max=max_lr) * g)
                    else:  # mean_abs
                        p_.add_(lr * g / g.abs().mean(dim=dims, keepdim=True).clamp_min(1e-12))
        if pixel:
            with torch.no_grad():
                p = param.p
                if decay:
                    p.mul_(1 - decay)
                if blur_every and blur_sigma > 0 and t % blur_every == 0:
                    p.copy_(gaussian_blur(p, blur_sigma))
                if small_norm_pct:
                    p.mul_(~_percentile_mask(p.norm(dim=1), small_norm_pct)[:, None])
                if small_contrib_pct:
                    contrib = (grads[0] * -p).sum(dim=1).abs()
                    p.mul_(~_percentile_mask(contrib, small_contrib_pct)[:, None])
                if clip:
                    param.clip_()
        done = t + 1
        history.append(last["value"])
        for k, val in last["values"].items():
            term_hist.setdefault(k, []).append(val)
        show = preview_every and (done % preview_every == 0 or done == steps)
        with torch.no_grad():
            preview = to_uint8(param.image()) if show else None
        cmd = yield OptStep(done, steps, last["value"], dict(last["values"]), preview, time.perf_counter() - t0)
        if cmd == "stop":
            stopped = done < steps
            break

    with torch.no_grad():
        unit = param.image().detach().float().clamp(0, 1)
    return OptResult(to_uint8(unit), unit.cpu().numpy(), history, term_hist, done, stopped,
                     time.perf_counter() - t0, record)


def run(gen: Generator, stop_after: int | None = None, on_step: Callable[[OptStep], None] | None = None):
    """Drive an engine generator to its end (or stop it after ``stop_after`` steps) and
    return its result.

    Args:
        gen: a generator of this engine (or a preset built on it).
        stop_after: send "stop" once this many steps are done; None runs to the end.
        on_step: called with each ``OptStep``, or None.
    """
    return drive(gen, on_step, lambda s: "stop" if stop_after is not None and s.step >= stop_after else None)
