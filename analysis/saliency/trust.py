"""Can a saliency map be trusted? Two standard checks, pure computation.

1. **Deletion / insertion curves** (Petsiuk, Das & Saenko 2018, "RISE"). Rank the pixels
   of a map from most to least important and remove them in that order (deletion), or
   start from an image with nothing of the original and put them back in that order
   (insertion), recording the target class's softmax probability after every step. A map
   that really finds the evidence makes the deletion curve fall fast (low area under the
   curve, AUC) and the insertion curve rise fast (high AUC). A random map is the baseline.

   "Removed" pixels are replaced by a *substrate* in model space: ``"blur"`` (the image
   Gaussian-blurred with sigma = ``10 * input_size / 224`` pixels, i.e. 10 px at 224 like
   :func:`analysis.saliency.methods.baseline_tensor`; Petsiuk used a blur canvas for insertion),
   ``"zero"`` (a black image: ``normalize(0)``; Petsiuk's deletion substrate) or ``"mean"``
   (the data set's mean colour: model-space zero). One substrate serves both curves:
   deletion replaces pixels by it, insertion starts from it (default black for both).

   One random map is one sample: :func:`compare_curves` draws several (``n_random``) and
   :func:`verdict` says, per method, whether its AUCs lie beyond every random map's by at
   least ``Z_THRESHOLD`` standard deviations of theirs ("better than random", "not
   distinguishable from random", "worse than random", or better / worse on one curve
   only). Pixels are removed in black squares of 1/4 of the input side by default: scattered
   single pixels make images unlike any photo and rank random maps first on the default
   model, and this setting separated real maps from random ones most often on the default
   model and the gallery (measured in docs/saliency.md).

2. **Cascading model-parameter randomisation** (Adebayo et al. 2018, "Sanity checks for
   saliency maps"). Re-initialise the model's weights block by block from the logits
   down, recompute the maps, and measure how similar they stay to the original (Spearman
   rank correlation of the absolute maps). A method that explains the *model* should
   change when the model is destroyed; one that stays similar behaves like an edge
   detector. All of this happens on a deep copy; the shared model is never touched
   except by one hooked dry forward (``layer_table``) under its lock.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import nn

from analysis.core.batching import run_batched
from analysis.core.errors import ParameterError
from analysis.core.filters import gaussian_blur
from analysis.core.layers import CONV_TYPES, layer_table
from analysis.core.models.bundle import ModelBundle
from analysis.saliency import registry
from analysis.saliency.methods import Attribution, attribute, resolve_target

Progress = Callable[[int, int], None]

SUBSTRATES = ("blur", "zero", "mean")
KINDS = ("deletion", "insertion")


# =============================================================================== curves

@dataclass
class Curve:
    """One deletion or insertion curve.

    ``fractions`` (steps + 1 values from 0 to 1) is the fraction of pixels removed
    (deletion) or inserted (insertion) at each step; ``scores`` the softmax probability of
    the target there; ``auc`` the trapezoid area under ``scores`` over ``fractions``.
    """
    method: str
    kind: str
    fractions: np.ndarray
    scores: np.ndarray
    auc: float
    substrate: str = "blur"
    target: int = -1

    @property
    def steps(self) -> int:
        return len(self.fractions) - 1


def trapezoid_auc(fractions: np.ndarray, scores: np.ndarray) -> float:
    """Area under ``scores`` over ``fractions`` by the trapezoid rule."""
    f, y = np.asarray(fractions, np.float64), np.asarray(scores, np.float64)
    return float(np.sum((y[1:] + y[:-1]) * np.diff(f)) / 2)


def blur_sigma_for(input_size: int) -> float:
    """The blur substrate's sigma: 10 px at 224 px, proportionally smaller for small inputs.

    Args:
        input_size: the model's input side in pixels.
    """
    return 10.0 * input_size / 224.0


def substrate_tensor(bundle: ModelBundle, x: torch.Tensor, substrate: str) -> torch.Tensor:
    """The image with "nothing" of ``x`` in it, in model space (same shape as ``x``).

    Args:
        bundle: the model (its normalisation gives the black image in model space).
        x: the input (B, C, H, W) in model space.
        substrate: "blur" (Gaussian blur, sigma from ``blur_sigma_for``), "zero" (black) or
            "mean" (the normalisation mean, model-space zero); else ``ParameterError``.
    """
    if substrate == "blur":
        return gaussian_blur(x, blur_sigma_for(x.shape[-1]))
    if substrate == "zero":
        return bundle.preprocess.normalize(torch.zeros_like(x))
    if substrate == "mean":
        return torch.zeros_like(x)
    raise ParameterError(f"Unknown substrate {substrate!r}; use one of {', '.join(SUBSTRATES)}.")


def pixel_ranks(saliency: np.ndarray) -> np.ndarray:
    """Rank (0 = most salient) of every pixel of an (H, W) map, flattened row-major.

    Descending by value; ties (and NaNs, which count as least salient) are broken by
    pixel index, so the order is deterministic.

    Args:
        saliency: the (H, W) map (any real dtype).
    """
    v = np.asarray(saliency, dtype=np.float64).ravel()
    v = np.where(np.isnan(v), -np.inf, v)
    order = np.argsort(-v, kind="stable")
    ranks = np.empty(v.size, dtype=np.int64)
    ranks[order] = np.arange(v.size)
    return ranks


def patch_ranks(saliency: np.ndarray, patch: int) -> np.ndarray:
    """Like :func:`pixel_ranks`, but whole ``patch`` x ``patch`` squares at a time, ranked by
    their mean saliency (region perturbation, Samek et al. 2017). Pixels of one patch get
    consecutive ranks, so each step removes patches rather than scattered pixels."""
    if patch <= 1:
        return pixel_ranks(saliency)
    v = np.asarray(saliency, dtype=np.float64)
    v = np.where(np.isnan(v), -np.inf, v)
    h, w = v.shape
    ph, pw = -(-h // patch), -(-w // patch)
    rows, cols = np.arange(h) // patch, np.arange(w) // patch
    pid = (rows[:, None] * pw + cols[None, :]).ravel()
    sums = np.bincount(pid, weights=np.where(np.isinf(v), -1e30, v).ravel(), minlength=ph * pw)
    means = sums / np.bincount(pid, minlength=ph * pw)
    prank = pixel_ranks(means.reshape(ph, pw))                  # rank of each patch
    order = np.argsort(prank[pid], kind="stable")               # patch by patch, row-major inside
    ranks = np.empty(v.size, dtype=np.int64)
    ranks[order] = np.arange(v.size)
    return ranks


def random_map(shape: tuple[int, int], seed: int = 0) -> np.ndarray:
    """Uniform random (H, W) map: the baseline every real map should beat.

    Args:
        shape: (H, W).
        seed: NumPy generator seed; the same seed gives the same map.
    """
    return np.random.default_rng(seed).random(tuple(shape)).astype(np.float32)


def _crop_tensor(bundle: ModelBundle, crop: np.ndarray) -> torch.Tensor:
    s = bundle.input_size
    crop = np.asarray(crop)
    if crop.ndim != 3 or crop.shape != (s, s, 3) or crop.dtype != np.uint8:
        raise ParameterError(f"Deletion/insertion needs the model's input crop (RGB uint8 {s}x{s}x3), "
                             f"got {crop.dtype} {crop.shape}; use Attribution.image.")
    return bundle.preprocess.normalize(bundle.preprocess.to_unit(crop)).to(bundle.device)


def deletion_insertion(bundle: ModelBundle, attribution_or_map: Attribution | np.ndarray,
                       image_crop: np.ndarray | None = None, target: int | str | None = None, *,
                       kind: str = "deletion", steps: int = 32, substrate: str = "blur",
                       batch_size: int = 16, progress: Progress | None = None,
                       method_name: str = "", patch: int = 1) -> Curve:
    """Deletion or insertion curve of one saliency map.

    Step k (0..steps) removes (deletion) or inserts (insertion) the round(k/steps * H*W)
    most salient pixels, all channels at once; with ``patch`` > 1 pixels go in whole
    ``patch`` x ``patch`` squares ranked by mean saliency (scattered single-pixel deletion
    produces images unlike any training image and favours random maps). The steps + 1 images
    run in batched forwards of ``batch_size`` (halved on out-of-memory) under ``bundle.lock``.

    Args:
        bundle: the model.
        attribution_or_map: an :class:`Attribution` (its ``image``, ``target`` and ``method``
            fill in ``image_crop``, ``target`` and ``method_name`` when those are not given) or
            an (H, W) map on ``image_crop``.
        image_crop: the model's input crop the map was computed on (RGB uint8, input_size x
            input_size); needed with a plain map.
        target: class index or name; None = the class predicted on the crop.
        kind: "deletion" or "insertion".
        steps: 1-10,000 steps between no and all pixels.
        substrate: what a removed pixel becomes: "blur", "zero" or "mean" (see
            :func:`substrate_tensor`); deletion pastes it, insertion starts from it.
        batch_size: images per forward.
        progress: ``progress(done, total)`` callback, or None.
        method_name: the map's method for the curve's label.
        patch: side of the squares removed together (1 = single pixels).
    """
    if kind not in KINDS:
        raise ParameterError(f"Unknown curve kind {kind!r}; use 'deletion' or 'insertion'.")
    if not isinstance(steps, int) or not 1 <= steps <= 10_000:
        raise ParameterError("steps must be an integer between 1 and 10000")
    if substrate not in SUBSTRATES:
        raise ParameterError(f"Unknown substrate {substrate!r}; use one of {', '.join(SUBSTRATES)}.")
    if not isinstance(patch, int) or patch < 1:
        raise ParameterError("patch must be a positive integer (1 = single pixels)")
    if isinstance(attribution_or_map, Attribution):
        a = attribution_or_map
        smap = a.map
        image_crop = a.image if image_crop is None else image_crop
        target = a.target if target is None else target
        method_name = method_name or a.method
    else:
        smap = attribution_or_map
    if image_crop is None:
        raise ParameterError("deletion_insertion needs the image crop the map was computed on.")
    smap = np.asarray(smap)
    x = _crop_tensor(bundle, image_crop)
    h, w = x.shape[-2:]
    if smap.shape != (h, w):
        raise ParameterError(f"The saliency map is {smap.shape}, the image crop {(h, w)}: they must match.")
    tgt = resolve_target(bundle, x, target)

    n_pix = h * w
    counts = np.floor(np.arange(steps + 1) * n_pix / steps + 0.5).astype(np.int64)
    ranks = torch.from_numpy(patch_ranks(smap, patch)).view(1, 1, h, w).to(x.device)
    counts_t = torch.from_numpy(counts).view(-1, 1, 1, 1).to(x.device)
    base = substrate_tensor(bundle, x, substrate)
    scores = np.zeros(steps + 1, np.float64)

    def run(a: int, b: int) -> None:
        chosen = ranks < counts_t[a:b]                     # (b-a, 1, H, W): pixels handled so far
        if kind == "deletion":
            xs = torch.where(chosen, base, x)
        else:
            xs = torch.where(chosen, x, base)
        probs = torch.softmax(bundle.model(xs).float(), dim=1)[:, tgt]
        scores[a:b] = probs.double().cpu().numpy()

    with bundle.lock, torch.inference_mode():
        run_batched(steps + 1, batch_size, run, progress)
    fractions = counts / n_pix
    return Curve(method=method_name, kind=kind, fractions=fractions, scores=scores,
                 auc=trapezoid_auc(fractions, scores), substrate=substrate, target=tgt)


def _check_same_input(attributions: list[Attribution]) -> None:
    if not attributions:
        raise ParameterError("compare_curves needs at least one attribution.")
    first = attributions[0]
    for a in attributions[1:]:
        if a.target != first.target:
            raise ParameterError(f"All maps must explain the same class: {a.method} explains {a.target_label}, "
                                 f"{first.method} explains {first.target_label}.")
        if a.image.shape != first.image.shape or not np.array_equal(a.image, first.image):
            raise ParameterError(f"All maps must be computed on the same image ({a.method} differs).")


def _unique_keys(attributions: list[Attribution]) -> list[str]:
    keys, seen = [], set()
    for a in attributions:
        key = a.method if a.method not in seen else (f"{a.method}@{a.layer}" if a.layer else a.method)
        base, n = key, 2
        while key in seen or key.startswith("random"):
            key, n = f"{base}#{n}", n + 1
        seen.add(key)
        keys.append(key)
    return keys


PATCH_FRACTION = 4          # default patch = input side / 4 (56 px at 224): measured, docs/saliency.md
DEFAULT_SUBSTRATE = "zero"  # black, Petsiuk's deletion substrate: measured, docs/saliency.md
DEFAULT_STEPS = 16
DEFAULT_RANDOM = 8
Z_THRESHOLD = 2.0           # random maps' spread (standard deviations) a method must clear
MIN_GAP = 0.005             # and this much target probability (AUC units), to count


@dataclass
class Verdict:
    """How one map's curves compare with the random maps' on the same image and target.

    ``auc[kind]``: the map's AUC; ``random_mean[kind]`` / ``random_std[kind]``: mean and
    standard deviation over the random maps; ``z[kind]``: the map's advantage over the random
    mean in random standard deviations, signed so that positive is better (deletion: lower
    AUC; insertion: higher); ``better[kind]`` / ``worse[kind]``: beyond every random map by
    at least ``Z_THRESHOLD`` standard deviations and ``MIN_GAP``; ``label``: the verdict in
    words ("better than random", "not distinguishable from random", "worse than random",
    "better than random on deletion only", ...)."""
    method: str
    auc: dict[str, float]
    random_mean: dict[str, float]
    random_std: dict[str, float]
    z: dict[str, float]
    better: dict[str, bool]
    worse: dict[str, bool]
    label: str


def default_patch(input_size: int) -> int:
    """The default deletion unit for an input of ``input_size`` pixels: squares of side
    input_size / 4 (56 px at 224, 7 px at 28), measured on the default model to rank real
    maps ahead of random ones (docs/saliency.md, "Choosing the deletion setting")."""
    return max(1, int(round(input_size / PATCH_FRACTION)))


def verdict(method: str, curves: dict[str, Curve], random_curves: list[dict[str, Curve]]) -> Verdict:
    """Compare one map's deletion and insertion AUCs with those of ``random_curves`` (at
    least 2 random maps on the same image, target and setting). See :class:`Verdict`.

    Args:
        method: the map's method name (recorded in the verdict).
        curves: "deletion" and "insertion" -> the map's curve.
        random_curves: the same two curves for each random map.
    """
    if len(random_curves) < 2:
        raise ParameterError("A verdict needs at least 2 random maps to estimate their spread.")
    auc, mean, std, z, better, worse = {}, {}, {}, {}, {}, {}
    for kind in KINDS:
        r = np.array([c[kind].auc for c in random_curves], np.float64)
        a = float(curves[kind].auc)
        sign = -1.0 if kind == "deletion" else 1.0               # positive advantage = better
        adv = sign * (a - r.mean())
        spread = float(r.std(ddof=1))
        z[kind] = float(adv / spread) if spread > 0 else (0.0 if adv == 0 else float(np.sign(adv)) * np.inf)
        beyond_all = bool(np.all(sign * (a - r) > 0))
        below_all = bool(np.all(sign * (a - r) < 0))
        better[kind] = beyond_all and z[kind] >= Z_THRESHOLD and adv >= MIN_GAP
        worse[kind] = below_all and z[kind] <= -Z_THRESHOLD and -adv >= MIN_GAP
        auc[kind], mean[kind], std[kind] = a, float(r.mean()), spread
    if all(better.values()):
        label = "better than random"
    elif all(worse.values()):
        label = "worse than random"
    elif any(better.values()) and any(worse.values()):
        label = "inconsistent: better than random on " + " and ".join(k for k in KINDS if better[k]) + \
                ", worse on " + " and ".join(k for k in KINDS if worse[k])
    elif any(better.values()):
        label = "better than random on " + " and ".join(k for k in KINDS if better[k]) + " only"
    elif any(worse.values()):
        label = "worse than random on " + " and ".join(k for k in KINDS if worse[k]) + " only"
    else:
        label = "not distinguishable from random"
    return Verdict(method=method, auc=auc, random_mean=mean, random_std=std, z=z, better=better,
                   worse=worse, label=label)


@dataclass
class CurveComparison:
    """Deletion and insertion curves of several maps and of ``n_random`` random maps on one
    image and target, with a verdict per map.

    ``curves[key]`` = {"deletion": Curve, "insertion": Curve} for each attribution (key =
    method name, ``method@layer`` or ``method#2`` when a method appears twice);
    ``random[i]`` the same for random map i (``random_map(shape, seed + i)``);
    ``verdicts[key]`` a :class:`Verdict`; ``steps``, ``substrate``, ``patch``, ``seed``: the
    setting."""
    curves: dict[str, dict[str, Curve]]
    random: list[dict[str, Curve]]
    verdicts: dict[str, Verdict]
    steps: int
    substrate: str
    patch: int
    seed: int
    target: int

    def random_summary(self, kind: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(fractions, mean scores, standard deviation of scores) of the random maps' curves.

        Args:
            kind: "deletion" or "insertion".
        """
        s = np.array([c[kind].scores for c in self.random], np.float64)
        return self.random[0][kind].fractions, s.mean(0), s.std(0, ddof=1) if len(s) > 1 else np.zeros(s.shape[1])


def compare_curves(bundle: ModelBundle, attributions: list[Attribution], *, steps: int = DEFAULT_STEPS,
                   substrate: str = DEFAULT_SUBSTRATE, seed: int = 0, batch_size: int = 16,
                   progress: Progress | None = None, patch: int | None = None,
                   n_random: int = DEFAULT_RANDOM) -> CurveComparison:
    """Deletion and insertion curves of every attribution and of ``n_random`` random maps
    (seeds ``seed`` .. ``seed + n_random - 1``), all on the same image and target, and a
    verdict per attribution (:func:`verdict`).

    bundle: the model; attributions: maps of one image and target; steps, substrate,
    batch_size, patch: as in :func:`deletion_insertion` (defaults: the setting measured to
    separate real maps from random ones on the default model, docs/saliency.md);
    patch None = :func:`default_patch` of the input size; n_random: random maps (2..64);
    progress: ``progress(done, total)`` in curve points.
    Raises ParameterError if the attributions do not share image and target.
    """
    _check_same_input(attributions)
    if isinstance(n_random, bool) or not isinstance(n_random, int) or not 2 <= n_random <= 64:
        raise ParameterError("n_random must be an integer from 2 to 64")
    first = attributions[0]
    if patch is None:
        patch = default_patch(int(first.map.shape[-1]))
    maps = list(zip(_unique_keys(attributions), [a.map for a in attributions]))
    maps += [(f"random#{i}", random_map(first.map.shape, seed + i)) for i in range(n_random)]
    per_curve = steps + 1
    total = len(maps) * 2 * per_curve
    out: dict[str, dict[str, Curve]] = {}
    done = 0
    for key, m in maps:
        out[key] = {}
        for kind in KINDS:
            sub = (lambda d, t, _o=done: progress(_o + d, total)) if progress else None
            out[key][kind] = deletion_insertion(bundle, m, first.image, first.target, kind=kind, steps=steps,
                                                substrate=substrate, batch_size=batch_size, progress=sub,
                                                method_name=key, patch=patch)
            done += per_curve
    random = [out.pop(f"random#{i}") for i in range(n_random)]
    verdicts = {k: verdict(k, c, random) for k, c in out.items()}
    return CurveComparison(curves=out, random=random, verdicts=verdicts, steps=steps, substrate=substrate,
                           patch=patch, seed=seed, target=first.target)


# =============================================================================== randomisation

_PLAIN_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
_NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def _has_params(m: nn.Module) -> bool:
    return next(m.parameters(), None) is not None


def _block_names(model: nn.Module) -> list[str]:
    """Parametrised blocks in definition order.

    A module with parameters is a block if none of its children has parameters (a conv,
    a linear, a batch norm) or if it is an element of a ModuleList / Sequential /
    ModuleDict without being a plain container itself (a resnet BasicBlock, an MBConv
    block, torchvision's Conv2dNormActivation). Otherwise its parametrised children are
    visited. Parameters owned directly by a container that is not a block (e.g. a ViT's
    class token) are not randomised.
    """
    out: list[str] = []

    def visit(name: str, m: nn.Module, in_container: bool) -> None:
        kids = [(n, c) for n, c in m.named_children() if _has_params(c)]
        plain = type(m) in _PLAIN_CONTAINERS
        if not kids or (in_container and not plain and name):
            out.append(name)
            return
        for n, c in kids:
            visit(f"{name}.{n}" if name else n, c, plain)

    if _has_params(model):
        visit("", model, False)
    return out


def _randomisation_steps(bundle: ModelBundle) -> list[tuple[str, list[str]]]:
    """(label, module names) per step, from the logits down.

    Blocks are ordered by when they finish in a dry forward (``layer_table``); blocks that
    never run are dropped. A normalisation layer directly after a conv/linear with the same
    parent is merged into that step ("_conv_stem" + "_bn0" -> step "_conv_stem").
    """
    names = _block_names(bundle.model)
    if names == [""]:
        return [("(model)", [""])]
    finish = {i.name: i.finish_order for i in layer_table(bundle)}
    order = {}
    for n in names:
        f = max([finish.get(n, -1)] + [v for k, v in finish.items() if k.startswith(n + ".")])
        if f >= 0:
            order[n] = f
    ordered = sorted(order, key=order.get)
    steps: list[tuple[str, list[str]]] = []
    for n in ordered:
        mod = bundle.model.get_submodule(n)
        if steps and isinstance(mod, _NORM_TYPES):
            prev = steps[-1][1][-1]
            prev_mod = bundle.model.get_submodule(prev)
            if isinstance(prev_mod, CONV_TYPES + (nn.Linear,)) and prev.rpartition(".")[0] == n.rpartition(".")[0]:
                steps[-1][1].append(n)
                continue
        steps.append((n, [n]))
    return steps[::-1]


def randomisation_layers(bundle: ModelBundle) -> list[str]:
    """Labels of the randomisation steps, from the logits down to the input: e.g.
    EfficientNet-Lite0 ``["_fc", "_conv_head", "_blocks.15", ..., "_blocks.0", "_conv_stem"]``,
    resnet18 ``["fc", "layer4.1", "layer4.0", ..., "layer1.0", "conv1"]``, vgg16
    ``["classifier.6", "classifier.3", "classifier.0", "features.28", ...]``.
    See ``_block_names`` for what counts as a block.

    Args:
        bundle: the model whose blocks are randomised.
    """
    return [label for label, _ in _randomisation_steps(bundle)]


def cut_points(n_blocks: int, max_steps: int) -> list[int]:
    """How many blocks (from the top) are randomised after each step: every block if
    there are at most ``max_steps``, else ``max_steps`` evenly spread counts from 1
    (the logits layer alone) to ``n_blocks`` (everything)."""
    if not isinstance(max_steps, int) or max_steps < 1:
        raise ParameterError("max_steps must be an integer of at least 1")
    if n_blocks < 1:
        raise ParameterError("The model has no parametrised layers to randomise.")
    if max_steps >= n_blocks:
        return list(range(1, n_blocks + 1))
    if max_steps == 1:
        return [n_blocks]
    pts = np.floor(np.linspace(1, n_blocks, max_steps) + 0.5).astype(int)
    return sorted(set(int(p) for p in pts))


def randomise_modules(model: nn.Module, names: list[str], seed: int) -> None:
    """Re-initialise, in place, every parameter inside the named submodules of ``model``
    (a copy!): ``reset_parameters()`` of each submodule that has one (conv, linear, batch
    norm, which also resets its running statistics); parameters of modules without one are
    randomly permuted. Seeded: the same seed gives the same weights.

    Args:
        model: the model to change in place; pass a copy, never the cached model.
        names: qualified submodule names ("" is the whole model).
        seed: torch seed (the global RNG state is restored afterwards).
    """
    device = next(model.parameters()).device
    devices = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), torch.no_grad():
        torch.manual_seed(seed)
        for name in names:
            block = model.get_submodule(name) if name else model
            for sub in block.modules():
                reset = getattr(sub, "reset_parameters", None)
                if callable(reset):
                    reset()
                    if hasattr(sub, "reset_running_stats"):
                        sub.reset_running_stats()
                else:
                    for p in sub.parameters(recurse=False):
                        flat = p.view(-1)
                        flat.copy_(flat[torch.randperm(flat.numel(), device=p.device)])


@dataclass
class RandomisationResult:
    """Cascading randomisation of one image for several methods.

    ``layers[k]`` (k = 0 .. S-1) labels randomisation step k: the model with its top blocks
    re-initialised down to and including ``layers[k]`` (``randomised[k]`` lists every
    module re-initialised by then). ``maps[m]`` has S + 1 entries, the ORIGINAL map
    first, then one per step (``maps[m][k + 1]`` belongs to ``layers[k]``).
    ``correlations[m]`` has S entries, one per step (the original's would be 1 and is
    not listed): Spearman rank correlation of the absolute map with the absolute original
    map (NaN where a map is constant, e.g. an all-zero Grad-CAM).
    """
    layers: list[str]
    correlations: dict[str, list[float]]
    maps: dict[str, list[np.ndarray]]
    image: np.ndarray
    target: int
    target_label: str
    randomised: list[list[str]] = field(default_factory=list)
    seed: int = 0
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)


def rank_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of |a| and |b| (flattened); NaN if either is constant."""
    from scipy.stats import spearmanr
    a = np.abs(np.nan_to_num(np.asarray(a, np.float64))).ravel()
    b = np.abs(np.nan_to_num(np.asarray(b, np.float64))).ravel()
    if a.size != b.size:
        raise ParameterError("maps of different sizes cannot be compared")
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(spearmanr(a, b)[0])


def cascading_randomisation(bundle: ModelBundle, image: np.ndarray, target: int | str | None,
                            methods: list[str], *, max_steps: int = 8, seed: int = 0,
                            method_params: dict[str, dict] | None = None,
                            progress: Progress | None = None) -> RandomisationResult:
    """Adebayo et al.'s cascading randomisation for ``methods`` on one image.

    Block i (0 = top) is always re-initialised with seed ``seed * 1_000_003 + i`` so its
    weights do not depend on ``max_steps``.

    Args:
        bundle: the model; it is copied before its weights are changed.
        image: RGB uint8 of any size (cropped like :func:`attribute`).
        target: class index or name; None = the class the *original* model predicts.
            Randomised models explain that same class.
        methods: saliency method names of the method table.
        max_steps: caps the number of randomised models (see :func:`cut_points`).
        seed: base of the per-block seeds above.
        method_params: method name -> parameters passed to ``attribute`` for it (Grad-CAM
            keeps the layer chosen on the original model).
        progress: ``progress(done, total)`` callback over all maps, or None.

    Returns:
        A :class:`RandomisationResult`: ``maps[m]`` = original + one map per step, ``layers``
        and ``correlations[m]`` = one entry per randomised step (no "original").
    """
    t0 = time.perf_counter()
    methods = list(dict.fromkeys(methods))          # each method once
    if not methods:
        raise ParameterError("Choose at least one saliency method.")
    specs = {m: registry.get(m) for m in methods}      # ParameterError for an unknown method
    params = {m: dict((method_params or {}).get(m, {})) for m in methods}
    steps = _randomisation_steps(bundle)
    cuts = cut_points(len(steps), max_steps)
    total = len(methods) * (len(cuts) + 1)
    done = 0
    warnings: list[str] = []

    def tick():
        nonlocal done
        done += 1
        if progress:
            progress(done, total)

    maps: dict[str, list[np.ndarray]] = {m: [] for m in methods}
    crop, tgt, label = None, None, ""
    for m in methods:
        a = attribute(bundle, image, target if tgt is None else tgt, m, **params[m])
        crop, tgt, label = a.image, a.target, a.target_label
        if a.layer and any(p.name == "layer" for p in specs[m].params):
            params[m]["layer"] = a.layer
        maps[m].append(a.map)
        warnings.extend(w for w in a.warnings if w not in warnings)
        tick()

    model = bundle.copy_model()          # randomised cumulatively, step after step
    layers: list[str] = []
    randomised: list[list[str]] = []
    done_blocks = 0
    for cut in cuts:
        for i in range(done_blocks, cut):
            randomise_modules(model, steps[i][1], seed * 1_000_003 + i)
        done_blocks = cut
        layers.append(steps[cut - 1][0])
        randomised.append([n for _, names in steps[:cut] for n in names])
        tmp = ModelBundle(model=model, preprocess=bundle.preprocess, categories=bundle.categories,
                          name=f"{bundle.name} (top {cut} blocks randomised)",
                          architecture=bundle.architecture, source="random", device=bundle.device,
                          model_id=f"{bundle.model_id}-rand{seed}-{cut}")
        for m in methods:
            a = attribute(tmp, image, tgt, m, **params[m])
            maps[m].append(a.map)
            warnings.extend(w for w in a.warnings if w not in warnings)
            tick()
    correlations = {m: [rank_correlation(maps[m][0], r) for r in maps[m][1:]] for m in methods}
    return RandomisationResult(layers=layers, correlations=correlations, maps=maps, image=crop,
                               target=tgt, target_label=label, randomised=randomised, seed=seed,
                               seconds=time.perf_counter() - t0, warnings=warnings)
