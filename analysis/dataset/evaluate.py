"""Evaluation of a model on a data set, and the data-set-level summaries of saliency and trust.

Pure computation on per-image rows (labels, top-k predictions, confidences, maps, AUCs,
features); whoever produced them (the in-process loop or a Ray cluster) does not matter.

* :func:`stratified_sample` — a deterministic per-class sample of a data set.
* :func:`evaluate` — accuracy, top-5, per-class precision / recall / F1 (scikit-learn), the
  confusion matrix (data-set classes × predicted data-set classes + "unmapped"),
  calibration (:func:`reliability`: reliability diagram and expected calibration error),
  the most confident errors and the least confident correct predictions; all through a
  :class:`~analysis.dataset.classmap.ClassMapping`.
* :func:`centre_mask`, :func:`mass_inside`, :func:`class_mean_maps` — where saliency lies.
* :func:`mean_ci`, :func:`trust_verdicts` — deletion / insertion AUC over many images against
  several random maps per image, with a 95 % confidence interval and a verdict per method.
* :func:`randomisation_summary` — the distribution of Spearman ρ per randomised layer.
* :func:`find_slices` — k-means clusters of the feature space ranked by error rate.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from analysis.core.errors import ParameterError
from analysis.dataset.classmap import UNMAPPED, ClassMapping

# ====================================================================== sampling

def stratified_sample(labels: Sequence[int] | np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """``n`` image indices drawn per class in proportion to the class sizes (sorted int64).

    Each class gets ``floor(n * n_c / N)`` images, the remaining ones go to the classes
    with the largest remainders (ties: lower class index first); every class with images
    gets at least one when ``n`` is at least the number of classes. ``n >= N`` returns
    every index. Deterministic for a given ``seed``.

    Args:
        labels: (N,) class index of each image.
        n: how many images to draw (at least 1).
        seed: random seed of the draw inside each class.
    """
    labels = np.asarray(labels, dtype=np.int64)
    if labels.ndim != 1:
        raise ParameterError("labels must be a one-dimensional array")
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ParameterError(f"The sample size must be a positive integer, got {n!r}")
    total = len(labels)
    if n >= total:
        return np.arange(total, dtype=np.int64)
    classes, counts = np.unique(labels, return_counts=True)
    quota = counts * n / total
    take = np.floor(quota).astype(np.int64)
    if n >= len(classes):
        take = np.maximum(take, 1)
    left = n - int(take.sum())
    if left > 0:
        order = sorted(range(len(classes)), key=lambda i: (-(quota[i] - math.floor(quota[i])), i))
        for i in order:
            if left == 0:
                break
            if take[i] < counts[i]:
                take[i] += 1
                left -= 1
    elif left < 0:                                   # the minimum of one per class overshot
        order = sorted(range(len(classes)), key=lambda i: (-take[i], i))
        for i in order:
            while left < 0 and take[i] > 1:
                take[i] -= 1
                left += 1
    rng = np.random.default_rng(seed)
    out = []
    for c, k in zip(classes, take):
        members = np.flatnonzero(labels == c)
        out.append(np.sort(rng.choice(members, size=int(k), replace=False)))
    return np.sort(np.concatenate(out)).astype(np.int64)


# ====================================================================== calibration

@dataclass
class Reliability:
    """A reliability diagram: equal-width confidence bins over [0, 1].

    ``edges`` (n_bins + 1,), per bin ``counts``, mean ``confidence`` and ``accuracy``
    (NaN for empty bins); ``ece`` = Σ_b (n_b / N) · |accuracy_b − confidence_b| over
    non-empty bins (Guo et al. 2017); ``mce`` the largest such gap.
    """
    edges: np.ndarray
    counts: np.ndarray
    confidence: np.ndarray
    accuracy: np.ndarray
    ece: float
    mce: float


def reliability(confidences: np.ndarray, correct: np.ndarray, n_bins: int = 15) -> Reliability:
    """Bin predictions by confidence and compare each bin's accuracy with its mean confidence.

    Bin b holds confidences in (edges[b], edges[b+1]]; a confidence of exactly 0 goes to
    the first bin.

    Args:
        confidences: (N,) top-1 probabilities in [0, 1].
        correct: (N,) bool, whether each top-1 prediction is right.
        n_bins: number of equal-width bins (1 … 100).
    """
    conf = np.asarray(confidences, dtype=np.float64).ravel()
    ok = np.asarray(correct, dtype=bool).ravel()
    if conf.shape != ok.shape:
        raise ParameterError("confidences and correct must have the same length")
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)) or not 1 <= n_bins <= 100:
        raise ParameterError("n_bins must be an integer between 1 and 100")
    if conf.size and (np.nanmin(conf) < 0 or np.nanmax(conf) > 1 or np.isnan(conf).any()):
        raise ParameterError("confidences must be probabilities between 0 and 1")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    b = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, n_bins - 1)
    counts = np.bincount(b, minlength=n_bins)
    sum_conf = np.bincount(b, weights=conf, minlength=n_bins)
    sum_ok = np.bincount(b, weights=ok.astype(np.float64), minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.where(counts > 0, sum_conf / np.maximum(counts, 1), np.nan)
        acc = np.where(counts > 0, sum_ok / np.maximum(counts, 1), np.nan)
    gaps = np.abs(acc - mean_conf)
    n = conf.size
    ece = float(np.nansum(counts * np.nan_to_num(gaps)) / n) if n else float("nan")
    mce = float(np.nanmax(gaps)) if n else float("nan")
    return Reliability(edges=edges, counts=counts.astype(np.int64), confidence=mean_conf, accuracy=acc,
                       ece=ece, mce=mce)


# ====================================================================== evaluation

@dataclass
class Evaluation:
    """The model on a data set (or a sample of it), through a class mapping.

    Per image (aligned with ``indices``, the data-set indices evaluated): ``labels``,
    ``preds`` (top-1 model class), ``topk`` (N, k), ``confidences`` (top-1 probability),
    ``pred_dataset`` (predicted data-set class, -1 = a model class no data-set class
    claims), ``scorable`` (the image's class is mapped) and ``correct``.

    ``accuracy`` / ``top5_accuracy`` are over the scorable images (NaN if none);
    ``precision``, ``recall``, ``f1``, ``support`` are per data-set class (scikit-learn,
    zero_division=0); ``confusion`` is (K, K + 1): rows true data-set class, columns
    predicted data-set class and a last "unmapped" column; ``calibration`` is the
    reliability diagram of the scorable images; ``confident_errors`` and
    ``unsure_correct`` are data-set indices (most confident errors first, least confident
    correct first).
    """
    method: str
    class_names: list[str]
    indices: np.ndarray
    labels: np.ndarray
    preds: np.ndarray
    topk: np.ndarray
    confidences: np.ndarray
    pred_dataset: np.ndarray
    scorable: np.ndarray
    correct: np.ndarray
    accuracy: float
    top5_accuracy: float
    n_images: int
    n_scored: int
    precision: np.ndarray
    recall: np.ndarray
    f1: np.ndarray
    support: np.ndarray
    confusion: np.ndarray
    calibration: Reliability | None
    confident_errors: np.ndarray
    unsure_correct: np.ndarray
    mapping_status: str
    params: dict = field(default_factory=dict)
    dataset_hash: str = ""
    model_id: str = ""
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)

    @property
    def ece(self) -> float:
        """Expected calibration error of the scored images (NaN when none is scored)."""
        return self.calibration.ece if self.calibration is not None else float("nan")

    def summary(self) -> dict:
        """Headline numbers (audit records)."""
        return {"accuracy": self.accuracy, "top5_accuracy": self.top5_accuracy, "ece": self.ece,
                "n_images": self.n_images, "n_scored": self.n_scored,
                "macro_f1": float(np.mean(self.f1[self.support > 0])) if (self.support > 0).any() else float("nan")}

    def per_class_rows(self) -> list[dict]:
        """One row per data-set class: precision, recall, F1, support."""
        return [{"class": c, "precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
                for c, p, r, f, s in zip(self.class_names, self.precision, self.recall, self.f1, self.support)]


def confusion(labels: np.ndarray, pred_dataset: np.ndarray, n_classes: int) -> np.ndarray:
    """(K, K + 1) counts: rows true class, columns predicted data-set class, last column
    "unmapped" (a predicted model class no data-set class claims, coded -1).

    Args:
        labels: (N,) true data-set class indices in 0..K-1.
        pred_dataset: (N,) predicted data-set class indices in -1..K-1.
        n_classes: K.
    """
    from sklearn.metrics import confusion_matrix
    y = np.asarray(labels, dtype=np.int64)
    p = np.asarray(pred_dataset, dtype=np.int64)
    order = list(range(n_classes)) + [UNMAPPED]
    if y.size == 0:
        return np.zeros((n_classes, n_classes + 1), dtype=np.int64)
    cm = confusion_matrix(y, p, labels=order)
    return cm[:n_classes].astype(np.int64)


def cell_members(ev: Evaluation, true_class: int, pred_class: int) -> np.ndarray:
    """Data-set indices of the scored images in one confusion cell (pred_class -1 = unmapped).

    Args:
        ev: an :class:`Evaluation`.
        true_class: the row (data-set class index).
        pred_class: the column (data-set class index, or -1 for "unmapped").
    """
    sel = ev.scorable & (ev.labels == int(true_class)) & (ev.pred_dataset == int(pred_class))
    return ev.indices[sel]


def evaluate(labels: np.ndarray, topk: np.ndarray, confidences: np.ndarray, mapping: ClassMapping, *,
             indices: np.ndarray | None = None, n_bins: int = 15, n_extremes: int = 24,
             dataset_hash: str = "", model_id: str = "", params: Mapping | None = None) -> Evaluation:
    """Score predictions against labels through ``mapping``.

    Args:
        labels: (N,) data-set class of each image.
        topk: (N, k) predicted model classes, best first (k ≥ 1; top-5 accuracy uses up to 5).
        confidences: (N,) probability of the top-1 class.
        mapping: data-set class → model classes (:mod:`analysis.dataset.classmap`).
        indices: (N,) data-set index of each row (default 0..N-1).
        n_bins: reliability-diagram bins.
        n_extremes: how many most-confident errors / least-confident correct images to list.
        dataset_hash, model_id: identify the inputs in the result (audit records, caches).
        params: extra parameters to record (sample size, seed, …).
    """
    labels = np.asarray(labels, dtype=np.int64)
    topk = np.asarray(topk, dtype=np.int64)
    if topk.ndim == 1:
        topk = topk[:, None]
    conf = np.asarray(confidences, dtype=np.float64)
    n = len(labels)
    if topk.shape[0] != n or conf.shape != (n,):
        raise ParameterError("labels, top-k predictions and confidences must describe the same images")
    if n == 0:
        raise ParameterError("There are no predictions to evaluate.")
    k = len(mapping.dataset_classes)
    if labels.min() < 0 or labels.max() >= k:
        raise ParameterError("A label is outside the data set's classes.")
    if topk.min() < 0 or topk.max() >= len(mapping.model_classes):
        raise ParameterError("A prediction is outside the model's classes.")
    idx = np.arange(n, dtype=np.int64) if indices is None else np.asarray(indices, dtype=np.int64)
    if idx.shape != (n,):
        raise ParameterError("indices must have one entry per image")
    preds = topk[:, 0]
    pred_ds = mapping.predicted_dataset_class(preds)
    scorable = mapping.scorable(labels)
    correct = (pred_ds == labels) & scorable
    top5 = mapping.correct_topk(labels, topk[:, :5]) & scorable
    n_scored = int(scorable.sum())
    warnings: list[str] = []
    if n_scored == 0:
        warnings.append(mapping.describe())
        acc = top5_acc = float("nan")
    else:
        acc = float(correct[scorable].mean())
        top5_acc = float(top5[scorable].mean())
        if topk.shape[1] < 5:
            warnings.append(f"Only the top {topk.shape[1]} predictions are known: top-5 accuracy is top-{topk.shape[1]}.")
    from sklearn.metrics import precision_recall_fscore_support
    ys, ps = labels[scorable], pred_ds[scorable]
    if n_scored:
        prec, rec, f1, sup = precision_recall_fscore_support(ys, ps, labels=list(range(k)), zero_division=0)
    else:
        prec = rec = f1 = np.zeros(k)
        sup = np.zeros(k, dtype=np.int64)
    cal = reliability(conf[scorable], correct[scorable], n_bins) if n_scored else None
    err = np.flatnonzero(scorable & ~correct)
    err = err[np.argsort(-conf[err], kind="stable")][:n_extremes]
    ok = np.flatnonzero(correct)
    ok = ok[np.argsort(conf[ok], kind="stable")][:n_extremes]
    p = {"n_bins": n_bins, "mapping": mapping.to_state(), "mapping_status": mapping.status}
    p.update(dict(params or {}))
    return Evaluation(method="evaluation", class_names=list(mapping.dataset_classes), indices=idx, labels=labels,
                      preds=preds, topk=topk, confidences=conf.astype(np.float32), pred_dataset=pred_ds,
                      scorable=scorable, correct=correct, accuracy=acc, top5_accuracy=top5_acc, n_images=n,
                      n_scored=n_scored, precision=np.asarray(prec, np.float64), recall=np.asarray(rec, np.float64),
                      f1=np.asarray(f1, np.float64), support=np.asarray(sup, np.int64),
                      confusion=confusion(ys, ps, k), calibration=cal, confident_errors=idx[err],
                      unsure_correct=idx[ok], mapping_status=mapping.status, params=p,
                      dataset_hash=dataset_hash, model_id=model_id, warnings=warnings)


# ====================================================================== where saliency lies

def centre_mask(h: int, w: int, fraction: float = 0.5) -> np.ndarray:
    """(h, w) bool mask of the centred box whose sides are ``fraction`` of the image's
    (0.5: the middle quarter of the area).

    Args:
        h, w: map size.
        fraction: side fraction in (0, 1].
    """
    if not 0 < float(fraction) <= 1:
        raise ParameterError("The centre fraction must be in (0, 1].")
    bh, bw = max(1, int(round(h * fraction))), max(1, int(round(w * fraction)))
    top, left = (h - bh) // 2, (w - bw) // 2
    m = np.zeros((h, w), dtype=bool)
    m[top:top + bh, left:left + bw] = True
    return m


def mass_inside(smap: np.ndarray, mask: np.ndarray) -> float:
    """Share of the positive saliency mass that falls inside ``mask`` (NaN for a map with no
    positive mass). Negative values (evidence against the class) do not count.

    Args:
        smap: (H, W) saliency map.
        mask: (H, W) bool region.
    """
    a = np.clip(np.nan_to_num(np.asarray(smap, dtype=np.float64)), 0, None)
    m = np.asarray(mask, dtype=bool)
    if a.shape != m.shape:
        raise ParameterError(f"The map is {a.shape} and the mask {m.shape}: they must match.")
    total = a.sum()
    return float(a[m].sum() / total) if total > 0 else float("nan")


def _normalised(smap: np.ndarray) -> np.ndarray | None:
    a = np.clip(np.nan_to_num(np.asarray(smap, dtype=np.float64)), 0, None)
    s = a.sum()
    return a / s if s > 0 else None


def class_mean_maps(maps: Sequence[np.ndarray], classes: Sequence[int]) -> dict[int, np.ndarray]:
    """Mean map per class of maps each normalised to unit positive mass (so every image
    weighs the same); maps without positive mass are left out.

    Args:
        maps: (H, W) maps, all the same size.
        classes: the class each map belongs to.
    """
    if len(maps) != len(classes):
        raise ParameterError("maps and classes must have the same length")
    sums: dict[int, np.ndarray] = {}
    counts: dict[int, int] = {}
    for m, c in zip(maps, classes):
        nm = _normalised(m)
        if nm is None:
            continue
        c = int(c)
        if c in sums:
            if sums[c].shape != nm.shape:
                raise ParameterError("All maps must have the same size.")
            sums[c] += nm
        else:
            sums[c] = nm.copy()
        counts[c] = counts.get(c, 0) + 1
    return {c: (sums[c] / counts[c]).astype(np.float32) for c in sorted(sums)}


@dataclass
class SaliencyMass:
    """Where one method's saliency lies on a set of images.

    ``inside`` (N,) share of each map's positive mass inside the region (NaN for empty
    maps); ``area`` the region's share of the image (what a uniform map would score);
    ``mean_inside`` / ``ci`` over the images with mass; ``n_empty`` maps without mass.
    """
    method: str
    region: str
    inside: np.ndarray
    area: float
    mean_inside: float
    ci: tuple[float, float]
    n_empty: int


def saliency_mass(maps: Sequence[np.ndarray], method: str, masks: Sequence[np.ndarray] | None = None,
                  centre_fraction: float = 0.5) -> SaliencyMass:
    """Share of saliency inside the image centre (or inside each image's own mask).

    Args:
        maps: (H, W) saliency maps.
        method: the method's name (recorded).
        masks: optional (H, W) bool masks, one per map (object masks of the data set).
        centre_fraction: side fraction of the centre box when no masks are given.
    """
    if not len(maps):
        raise ParameterError("No maps to summarise.")
    if masks is not None and len(masks) != len(maps):
        raise ParameterError("Give one mask per map.")
    inside, areas = [], []
    for i, m in enumerate(maps):
        mk = np.asarray(masks[i], dtype=bool) if masks is not None else centre_mask(*np.shape(m), centre_fraction)
        inside.append(mass_inside(m, mk))
        areas.append(mk.mean())
    arr = np.asarray(inside, dtype=np.float64)
    ok = arr[~np.isnan(arr)]
    mean, lo, hi = mean_ci(ok) if ok.size else (float("nan"), float("nan"), float("nan"))
    return SaliencyMass(method=method, region="mask" if masks is not None else f"centre {centre_fraction:g}",
                        inside=arr, area=float(np.mean(areas)), mean_inside=mean, ci=(lo, hi),
                        n_empty=int(np.isnan(arr).sum()))


# ====================================================================== trust over many images

def mean_ci(values: Sequence[float] | np.ndarray, level: float = 0.95) -> tuple[float, float, float]:
    """Mean and two-sided ``level`` confidence interval of the mean (Student's t); NaN
    bounds with fewer than two finite values.

    Args:
        values: the sample (NaNs are ignored).
        level: confidence level in (0, 1).
    """
    from scipy import stats
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if not 0 < level < 1:
        raise ParameterError("level must be between 0 and 1")
    if v.size == 0:
        return float("nan"), float("nan"), float("nan")
    m = float(v.mean())
    if v.size < 2:
        return m, float("nan"), float("nan")
    se = float(v.std(ddof=1) / math.sqrt(v.size))
    if se == 0:
        return m, m, m
    h = float(stats.t.ppf(0.5 + level / 2, v.size - 1) * se)
    return m, m - h, m + h


@dataclass
class TrustVerdict:
    """One method's deletion or insertion AUC over many images against random maps.

    ``auc`` (N,) the method's AUC per image; ``random_auc`` (N, R) the AUCs of R random
    maps per image; ``mean`` / ``ci`` of the method's AUC and ``random_mean`` /
    ``random_ci`` of the per-image mean random AUC; ``gain`` / ``gain_ci`` the paired
    per-image advantage over the random mean (random − method for deletion, where lower
    is better; method − random for insertion); ``beats`` the fraction of images on which
    the method is better than *every* one of the R random maps; ``verdict`` one of
    "better than random", "worse than random", "not distinguishable from random" (by the
    gain's 95 % interval), and ``sentence`` the line shown on the page.
    """
    method: str
    kind: str
    n: int
    n_random: int
    auc: np.ndarray
    random_auc: np.ndarray
    mean: float
    ci: tuple[float, float]
    random_mean: float
    random_ci: tuple[float, float]
    gain: float
    gain_ci: tuple[float, float]
    beats: float
    verdict: str
    sentence: str


def trust_verdicts(aucs: Mapping[str, Mapping[str, np.ndarray]], random_aucs: Mapping[str, np.ndarray],
                   level: float = 0.95) -> list[TrustVerdict]:
    """Verdicts per method and curve kind from per-image AUCs.

    Args:
        aucs: ``{method: {"deletion": (N,), "insertion": (N,)}}`` (either kind may be missing).
        random_aucs: ``{"deletion": (N, R), "insertion": (N, R)}``: R random maps per image,
            on the same images in the same order.
        level: confidence level of the intervals.
    """
    out: list[TrustVerdict] = []
    for method, kinds in aucs.items():
        for kind, a in kinds.items():
            if kind not in ("deletion", "insertion"):
                raise ParameterError(f"Unknown curve kind {kind!r}")
            if kind not in random_aucs:
                raise ParameterError(f"No random-map AUCs for {kind}.")
            a = np.asarray(a, dtype=np.float64).ravel()
            r = np.asarray(random_aucs[kind], dtype=np.float64)
            if r.ndim == 1:
                r = r[:, None]
            if r.shape[0] != a.size or r.shape[1] < 1:
                raise ParameterError("Random-map AUCs must have one row per image and at least one column.")
            ok = np.isfinite(a) & np.isfinite(r).all(axis=1)
            a, r = a[ok], r[ok]
            n = int(a.size)
            rmean = r.mean(axis=1)
            if kind == "deletion":
                gain = rmean - a
                beat = (a[:, None] < r).all(axis=1)
            else:
                gain = a - rmean
                beat = (a[:, None] > r).all(axis=1)
            m, lo, hi = mean_ci(a, level)
            rm, rlo, rhi = mean_ci(rmean, level)
            g, glo, ghi = mean_ci(gain, level)
            if n >= 2 and glo > 0:
                verdict = "better than random"
            elif n >= 2 and ghi < 0:
                verdict = "worse than random"
            else:
                verdict = "not distinguishable from random"
            frac = float(beat.mean()) if n else float("nan")
            sentence = (f"{method} · {kind}: beats random on {frac:.0%} of {n} images "
                        f"(AUC {m:.3f} vs random {rm:.3f}; gain {g:+.3f}, {int(level * 100)} % CI "
                        f"[{glo:+.3f}, {ghi:+.3f}]) — {verdict}." if n else
                        f"{method} · {kind}: no image could be scored.")
            out.append(TrustVerdict(method=method, kind=kind, n=n, n_random=int(r.shape[1]), auc=a, random_auc=r,
                                    mean=m, ci=(lo, hi), random_mean=rm, random_ci=(rlo, rhi), gain=g,
                                    gain_ci=(glo, ghi), beats=frac, verdict=verdict, sentence=sentence))
    return out


def randomisation_summary(correlations: Sequence[Mapping[str, Sequence[float]]], layers: Sequence[str]
                          ) -> dict[str, dict[str, np.ndarray]]:
    """Distribution of Spearman ρ per randomised layer over many images.

    Args:
        correlations: one ``{method: [ρ per layer]}`` per image (``RandomisationResult.correlations``).
        layers: the layer labels (same order as the ρ lists).

    Returns ``{method: {"rho": (N, L), "median": (L,), "q1": (L,), "q3": (L,)}}`` (NaN ρ of
    constant maps ignored in the quantiles).
    """
    n_layers = len(layers)
    methods = list(dict.fromkeys(m for c in correlations for m in c))
    out: dict[str, dict[str, np.ndarray]] = {}
    for m in methods:
        rows = []
        for c in correlations:
            r = list(c.get(m, []))
            if len(r) != n_layers:
                raise ParameterError(f"{m}: every image needs one ρ per layer ({n_layers}).")
            rows.append(r)
        rho = np.asarray(rows, dtype=np.float64).reshape(len(rows), n_layers)
        with np.errstate(all="ignore"):
            import warnings as _w
            with _w.catch_warnings():
                _w.simplefilter("ignore", RuntimeWarning)
                q1, med, q3 = (np.nanpercentile(rho, q, axis=0) if rho.size else np.full(n_layers, np.nan)
                               for q in (25, 50, 75))
        out[m] = {"rho": rho, "median": med, "q1": q1, "q3": q3}
    return out


# ====================================================================== slices

@dataclass
class Slice:
    """One cluster of the feature space: ``indices`` (data-set indices), ``size``,
    ``errors``, ``error_rate``, ``lift`` (error rate / overall error rate), ``p_value`` of a
    one-sided binomial test against the overall rate, ``top_classes`` (class, count)."""
    cluster: int
    indices: np.ndarray
    size: int
    errors: int
    error_rate: float
    lift: float
    p_value: float
    top_classes: list[tuple[int, int]]


@dataclass
class SliceResult:
    """Clusters ranked by error rate (those of at least ``min_size`` images), the overall
    error rate, and the cluster of every scored image (``assignment``, aligned with
    ``indices``)."""
    method: str
    slices: list[Slice]
    overall_error_rate: float
    indices: np.ndarray
    assignment: np.ndarray
    params: dict = field(default_factory=dict)
    dataset_hash: str = ""

    def summary(self) -> dict:
        """Overall error rate, number of slices and the worst slice's error rate (audit records)."""
        top = self.slices[0] if self.slices else None
        return {"overall_error_rate": self.overall_error_rate, "n_slices": len(self.slices),
                "worst_error_rate": top.error_rate if top else float("nan")}


def find_slices(features: np.ndarray, wrong: np.ndarray, labels: np.ndarray, *, indices: np.ndarray | None = None,
                n_clusters: int = 12, min_size: int = 10, seed: int = 0, dataset_hash: str = "") -> SliceResult:
    """Groups of images that share a region of the feature space and fail more often.

    k-means (scikit-learn, ``n_init=4``) on the standardised features; clusters with at
    least ``min_size`` images are ranked by error rate (ties: larger first). Each slice
    has its lift over the overall error rate and a one-sided binomial p-value (scipy).

    Args:
        features: (N, D) feature vectors (e.g. the penultimate layer) of the scored images.
        wrong: (N,) bool, the model's prediction is wrong.
        labels: (N,) data-set classes (for each slice's most common classes).
        indices: (N,) data-set indices of the rows (default 0..N-1).
        n_clusters: k of k-means (2 … N).
        min_size: smallest cluster to rank.
        seed: k-means seed.
        dataset_hash: recorded with the result.
    """
    from scipy.stats import binomtest
    from sklearn.cluster import KMeans
    x = np.asarray(features, dtype=np.float64)
    w = np.asarray(wrong, dtype=bool).ravel()
    y = np.asarray(labels, dtype=np.int64).ravel()
    if x.ndim != 2 or x.shape[0] != w.size or y.size != w.size:
        raise ParameterError("features, errors and labels must describe the same images")
    n = x.shape[0]
    if isinstance(n_clusters, bool) or not isinstance(n_clusters, (int, np.integer)) or not 2 <= n_clusters <= n:
        raise ParameterError(f"The number of clusters must be between 2 and the number of images ({n}).")
    if min_size < 1:
        raise ParameterError("The minimum slice size must be at least 1.")
    idx = np.arange(n, dtype=np.int64) if indices is None else np.asarray(indices, dtype=np.int64)
    sd = x.std(axis=0)
    z = (x - x.mean(axis=0)) / np.where(sd > 0, sd, 1.0)
    km = KMeans(n_clusters=int(n_clusters), n_init=4, random_state=seed).fit(z)
    assign = km.labels_.astype(np.int64)
    overall = float(w.mean()) if n else float("nan")
    slices = []
    for c in range(int(n_clusters)):
        members = np.flatnonzero(assign == c)
        size = int(members.size)
        if size < min_size:
            continue
        errs = int(w[members].sum())
        rate = errs / size
        p = float(binomtest(errs, size, overall, alternative="greater").pvalue) if 0 < overall < 1 else float("nan")
        cls, cnt = np.unique(y[members], return_counts=True)
        order = np.argsort(-cnt, kind="stable")[:3]
        slices.append(Slice(cluster=c, indices=idx[members], size=size, errors=errs, error_rate=rate,
                            lift=rate / overall if overall > 0 else float("nan"), p_value=p,
                            top_classes=[(int(cls[i]), int(cnt[i])) for i in order]))
    slices.sort(key=lambda s: (-s.error_rate, -s.size, s.cluster))
    return SliceResult(method="slices", slices=slices, overall_error_rate=overall, indices=idx, assignment=assign,
                       params={"n_clusters": int(n_clusters), "min_size": int(min_size), "seed": int(seed)},
                       dataset_hash=dataset_hash)


# ====================================================================== randomisation over many images

@dataclass
class RandomisationDistribution:
    """Cascading model randomisation (Adebayo et al. 2018) repeated over many images.

    ``layers`` the randomisation steps (from the logits down); ``rho[m]`` (N, L) the
    Spearman ρ of each image's randomised map with its original map per step; ``median``,
    ``q1``, ``q3`` per step; ``indices`` the data-set images; ``targets`` the class each
    image's maps explain.
    """
    method: str
    layers: list[str]
    rho: dict[str, np.ndarray]
    median: dict[str, np.ndarray]
    q1: dict[str, np.ndarray]
    q3: dict[str, np.ndarray]
    indices: np.ndarray
    targets: np.ndarray
    params: dict = field(default_factory=dict)
    dataset_hash: str = ""
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)

    def summary(self) -> dict:
        """Median ρ at the last (most randomised) step per method."""
        return {f"median_rho_last.{m}": float(v[-1]) for m, v in self.median.items() if len(v)}


def randomisation_over_images(bundle, images: Sequence[np.ndarray], targets: Sequence[int | None],
                              methods: Sequence[str], *, indices: Sequence[int] | None = None, max_steps: int = 6,
                              seed: int = 0, method_params: Mapping[str, dict] | None = None,
                              progress=None, should_stop=None, dataset_hash: str = "") -> RandomisationDistribution | None:
    """:func:`analysis.saliency.trust.cascading_randomisation` on every image; the ρ per layer
    collected into distributions.

    Args:
        bundle: the model (never modified: randomisation works on copies).
        images: RGB uint8 images.
        targets: class per image (None = the predicted class).
        methods: saliency methods.
        indices: data-set index of each image (recorded).
        max_steps: randomisation steps (see ``cut_points``).
        seed: randomisation seed (the same weights for every image).
        method_params: parameters per method.
        progress: ``progress(done, total)`` after each image.
        should_stop: polled before each image; when true, returns None.
        dataset_hash: recorded with the result.
    """
    import time

    from analysis.saliency.trust import cascading_randomisation
    if len(images) != len(targets):
        raise ParameterError("Give one target per image.")
    if not len(images):
        raise ParameterError("No images to check.")
    t0 = time.perf_counter()
    per_image, layers, tg, warnings = [], None, [], []
    for k, (img, t) in enumerate(zip(images, targets)):
        if should_stop is not None and should_stop():
            return None
        r = cascading_randomisation(bundle, img, t, list(methods), max_steps=max_steps, seed=seed,
                                    method_params=dict(method_params or {}))
        layers = r.layers if layers is None else layers
        per_image.append(r.correlations)
        tg.append(r.target)
        warnings.extend(w for w in r.warnings if w not in warnings)
        if progress is not None:
            progress(k + 1, len(images))
    summ = randomisation_summary(per_image, layers)
    idx = np.arange(len(images)) if indices is None else np.asarray(indices, dtype=np.int64)
    return RandomisationDistribution(
        method="randomisation", layers=list(layers), rho={m: s["rho"] for m, s in summ.items()},
        median={m: s["median"] for m, s in summ.items()}, q1={m: s["q1"] for m, s in summ.items()},
        q3={m: s["q3"] for m, s in summ.items()}, indices=idx, targets=np.asarray(tg, dtype=np.int64),
        params={"methods": list(methods), "max_steps": max_steps, "seed": seed, "n_images": len(images)},
        dataset_hash=dataset_hash, seconds=time.perf_counter() - t0, warnings=warnings)


# ====================================================================== results of the audit page

@dataclass
class BatchSaliency:
    """One method's maps over a subset of the data set, with where they lie.

    ``maps`` (N, H, W) on the model's input crops; ``labels`` / ``preds`` / ``targets``
    per image (data-set class, predicted and explained model class); ``class_means``
    (C, H, W) the mean normalised map of each data-set class in ``class_ids``; ``mass``
    the share inside the centre box (``mask_mass`` inside the data set's masks, when it
    has them).
    """
    method: str
    subset: str
    indices: np.ndarray
    labels: np.ndarray
    preds: np.ndarray
    targets: np.ndarray
    maps: np.ndarray
    class_ids: np.ndarray
    class_means: np.ndarray
    mass: SaliencyMass
    mask_mass: SaliencyMass | None = None
    n_flat: int = 0
    params: dict = field(default_factory=dict)
    dataset_hash: str = ""

    def summary(self) -> dict:
        """Headline numbers (audit records): images, mean share inside the centre, uniform share, flat maps."""
        return {"n_images": int(len(self.indices)), "mean_mass_inside": self.mass.mean_inside,
                "uniform_mass_inside": self.mass.area, "n_flat": self.n_flat}


def summarise_saliency(indices: np.ndarray, labels: np.ndarray, preds: np.ndarray, targets: np.ndarray,
                       maps: np.ndarray, method: str, *, subset: str = "", centre_fraction: float = 0.5,
                       mask_share: np.ndarray | None = None, params: Mapping | None = None,
                       dataset_hash: str = "") -> BatchSaliency:
    """Class-mean maps and the centre share of a batch of maps.

    Args:
        indices, labels, preds, targets: per image (data-set index, data-set class,
            predicted model class, explained model class).
        maps: (N, H, W) saliency maps.
        method: the saliency method.
        subset: how the images were chosen (recorded).
        centre_fraction: side fraction of the centre box.
        mask_share: (N,) share inside the data set's masks (NaN where an image has none).
        params: recorded parameters.
        dataset_hash: recorded with the result.
    """
    maps = np.asarray(maps, dtype=np.float32)
    if maps.ndim != 3 or maps.shape[0] != len(indices):
        raise ParameterError("Give one (H, W) map per image.")
    labels = np.asarray(labels, dtype=np.int64)
    means = class_mean_maps(list(maps), list(labels))
    ids = np.asarray(sorted(means), dtype=np.int64)
    stack = np.stack([means[int(c)] for c in ids]) if len(ids) else np.zeros((0,) + maps.shape[1:], np.float32)
    mass = saliency_mass(list(maps), method, centre_fraction=centre_fraction)
    mm = None
    if mask_share is not None:
        ms = np.asarray(mask_share, dtype=np.float64)
        if np.isfinite(ms).any():
            ok = ms[np.isfinite(ms)]
            m, lo, hi = mean_ci(ok)
            mm = SaliencyMass(method=method, region="mask", inside=ms, area=float("nan"), mean_inside=m,
                              ci=(lo, hi), n_empty=int((~np.isfinite(ms)).sum()))
    flat = int(sum(1 for m in maps if not np.ptp(m) > 0))
    return BatchSaliency(method=method, subset=subset, indices=np.asarray(indices, dtype=np.int64), labels=labels,
                         preds=np.asarray(preds, dtype=np.int64), targets=np.asarray(targets, dtype=np.int64),
                         maps=maps, class_ids=ids, class_means=stack, mass=mass, mask_mass=mm, n_flat=flat,
                         params=dict(params or {}), dataset_hash=dataset_hash)


@dataclass
class TrustReport:
    """Deletion / insertion verdicts of several methods on the same images."""
    method: str
    verdicts: list[TrustVerdict]
    indices: np.ndarray
    params: dict = field(default_factory=dict)
    dataset_hash: str = ""

    def summary(self) -> dict:
        """Fraction of images on which each method beats every random map, per curve (audit records)."""
        return {f"beats_random.{v.method}.{v.kind}": v.beats for v in self.verdicts}
