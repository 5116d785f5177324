"""A map of up to millions of points in the browser (dashboard/pointmap.html).

The Embeddings page's plotly map sends every point as JSON with its hover text (~11 MB for
100,000 points) and plotly's WebGL scatter needs ~30 s to draw and minutes to lasso a
million points in a software-rendered browser (measured: docs/benchmarks.md). This
component sends no point through the websocket: ``point_map`` writes two binary files into
the component's own folder, which Streamlit serves and the browser caches —

* the geometry, once per map: positions quantised to uint16 over the map's bounds (the
  quantisation step is 1/65,535 of the map's width, far below a screen pixel), the label
  and prediction of each point (uint16 class indices, 65,535 = none) and the confidence
  (uint8, 255 = none): 9 bytes a point, 9 MB for a million;
* the colours, once per colouring: one uint8 palette index a point (label, prediction,
  correctness, confidence bins, slice: whatever the page computes).

The page draws them on a 2-D canvas (a typed-array loop into an ImageData buffer: no WebGL
needed), with pan, zoom, lasso / box / click selection (shift adds) and a hover box with
the image (the sprite sheets of :mod:`dashboard.embedding_map`). The value is
``{"points": first 10,000 selected indices, "count": exact count, "seq": k}``.
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from analysis.core.config import get_config
from analysis.core.fsio import atomic_write
from dashboard.embedding_map import valid_indices, write_page, write_sheets

log = logging.getLogger("convlens")

HTML_SOURCE = Path(__file__).with_name("pointmap.html")
NONE16, NONE8 = 65535, 255
MAX_PALETTE = 255
_COMPONENT = {}


def component_root() -> Path:
    return Path(get_config().cache_dir) / "web" / "pointmap"


def ensure_assets(root: Path | None = None) -> Path:
    root = component_root() if root is None else root
    html = HTML_SOURCE.read_bytes()
    write_page(root, html)
    return root


def _component(root: Path):
    key = str(root)
    fn = _COMPONENT.get(key)
    if fn is None:
        import streamlit.components.v1 as components
        fn = components.declare_component("pointmap", path=key)
        _COMPONENT[key] = fn
    return fn


@dataclass(frozen=True)
class Geometry:
    """What the browser decodes: ``data`` (bytes of the file) and ``meta`` (n, bounds)."""
    data: bytes
    meta: dict


def encode_geometry(coords, labels=None, preds=None, confidence=None) -> Geometry:
    """Binary geometry of a 2-D map: uint16 (x, y) pairs quantised over the bounds, then
    uint16 labels, uint16 predictions (65,535 = none) and uint8 confidence (0-254, 255 =
    none). ``coords`` (N, 2) finite; labels / preds non-negative integers < 65,535."""
    c = np.asarray(coords, dtype=np.float64)
    if c.ndim != 2 or c.shape[1] != 2 or len(c) == 0:
        raise ValueError(f"coords must be (N, 2), got {c.shape}")
    if not np.isfinite(c).all():
        raise ValueError("coords contain NaN or infinite values")
    n = len(c)
    lo, hi = c.min(0), c.max(0)
    span = np.where(hi > lo, hi - lo, 1.0)
    q = np.rint((c - lo) / span * 65535).astype("<u2")

    def ints(a, name):
        if a is None:
            return np.full(n, NONE16, "<u2")
        a = np.asarray(a)
        if a.shape != (n,) or (a < 0).any() or (a >= NONE16).any():
            raise ValueError(f"{name} must be {n} integers in [0, 65535)")
        return a.astype("<u2")

    if confidence is None:
        conf = np.full(n, NONE8, np.uint8)
    else:
        cf = np.asarray(confidence, dtype=np.float64)
        if cf.shape != (n,):
            raise ValueError(f"confidence must have shape ({n},)")
        conf = np.where(np.isfinite(cf), np.rint(np.clip(cf, 0, 1) * 254), NONE8).astype(np.uint8)
    data = q.tobytes() + ints(labels, "labels").tobytes() + ints(preds, "preds").tobytes() + conf.tobytes()
    meta = {"n": int(n), "xmin": float(lo[0]), "xmax": float(lo[0] + span[0]),
            "ymin": float(lo[1]), "ymax": float(lo[1] + span[1])}
    return Geometry(data, meta)


def decode_positions(geom: Geometry) -> np.ndarray:
    """The (N, 2) float32 positions the browser sees (for tests and for mapping screen
    selections back to data coordinates)."""
    m = geom.meta
    q = np.frombuffer(geom.data, dtype="<u2", count=2 * m["n"]).reshape(-1, 2).astype(np.float64)
    lo = np.array([m["xmin"], m["ymin"]])
    span = np.array([m["xmax"] - m["xmin"], m["ymax"] - m["ymin"]])
    return (lo + q / 65535 * span).astype(np.float32)


def _store(root: Path, folder: str, data: bytes) -> str:
    key = hashlib.sha256(data).hexdigest()[:32]
    path = root / folder / f"{key}.bin"
    if not path.exists():
        atomic_write(path, data)
    return f"{folder}/{key}.bin"


PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22", "#17becf", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94",
           "#f7b6d2", "#c7c7c7", "#dbdb8d", "#9edae5"]
VIRIDIS5 = ["#440154", "#3b528b", "#21918c", "#5ec962", "#fde725"]


def colouring(kind: str, labels, preds, confidence, label_names, pred_names, correct=None):
    """(palette index per point, palette, legend) for colouring a map by "label",
    "prediction", "correct" (``correct`` a boolean array) or "confidence" (5 bins); for
    "slice" see :func:`slice_colouring`. Up to 20
    categories keep their own colour; more share the palette cyclically (the legend says so)."""
    if kind == "confidence":
        c = np.clip(np.asarray(confidence, dtype=np.float64), 0, 1)
        bins = np.minimum((c * 5).astype(int), 4)
        return bins, VIRIDIS5, [f"confidence {k * 20}-{k * 20 + 20} %" for k in range(5)]
    if kind == "correct":
        ok = np.asarray(correct, bool)
        return np.where(ok, 0, 1), ["#2ca02c", "#d62728"], ["correct", "wrong"]
    idx = np.asarray(labels if kind == "label" else preds)
    names = label_names if kind == "label" else pred_names
    used = np.unique(idx)
    pos = np.searchsorted(used, idx)
    k = min(len(used), len(PALETTE))
    legend = [str(names[int(u)]) for u in used[:k]]
    if len(used) > len(PALETTE):
        legend[-1] += f" (and {len(used) - k} more classes, colours repeat)"
    return pos % len(PALETTE), PALETTE[:k] if len(used) <= len(PALETTE) else PALETTE, legend


SLICE_LIFT = 1.5              # a cluster is a slice when its error rate is at least this times the mean
SLICE_COLOURS = ["#d62728", "#ff7f0e", "#9467bd", "#e377c2", "#8c564b", "#bcbd22", "#17becf", "#1f77b4",
                 "#2ca02c", "#7f7f7f"]
OTHER_GREY = "#c7c7c7"


def slice_colouring(assignment, wrong, *, lift: float = SLICE_LIFT, min_size: int = 10):
    """(palette index per point, palette, legend) for colouring a map by failure slice.

    ``assignment`` (N,) cluster of every point (the data-set audit's k-means clusters,
    :func:`dashboard.embedding_map.slice_assignment`), ``wrong`` (N,) whether the model's
    prediction is wrong. Clusters of at least ``min_size`` points whose error rate is at
    least ``lift`` times the mean (and above it) are slices: each gets its own colour, worst
    first; every other point is grey ("other clusters"), always the last palette entry."""
    a = np.asarray(assignment, np.int64)
    w = np.asarray(wrong, bool)
    if a.shape != w.shape:
        raise ValueError("assignment and wrong must have one entry per point")
    overall = float(w.mean()) if w.size else 0.0
    found = []
    for c in np.unique(a):
        m = a == c
        size, rate = int(m.sum()), float(w[m].mean())
        if size >= min_size and rate > overall and rate >= lift * overall:
            found.append((rate, size, int(c)))
    found.sort(key=lambda t: (-t[0], -t[1], t[2]))
    found = found[:len(SLICE_COLOURS)]
    lut = np.full(int(a.max()) + 1 if a.size else 1, len(found), np.int64)
    legend = []
    for j, (rate, size, c) in enumerate(found):
        lut[c] = j
        legend.append(f"slice {c}: {size:,} images, error {rate:.0%} ({rate / overall:.1f}× the mean)")
    legend.append(f"other clusters (error rate below {lift:g}× the mean {overall:.1%})" if found else
                  f"no cluster fails at {lift:g}× the mean error rate {overall:.1%}")
    return lut[a], SLICE_COLOURS[:len(found)] + [OTHER_GREY], legend


def thumbnail_sheets(thumbs: np.ndarray, key: str) -> dict:
    """Write (N, s, s, 3) uint8 thumbnails as sprite sheets into this component's folder
    (once per ``key``, e.g. the data set's hash and the thumbnail size) and return the
    ``thumbs`` argument of :func:`point_map`."""
    return write_sheets(np.asarray(thumbs), hashlib.sha256(key.encode()).hexdigest()[:32], ensure_assets())


def selection(value, n: int) -> tuple[list[int], int]:
    """(selected indices as sent — at most 10,000, in [0, n) —, exact count) from the
    component's value; ([], 0) for anything else."""
    if not isinstance(value, dict):
        return [], 0
    pts = value.get("points")
    count = value.get("count")
    out = valid_indices(pts, n)
    if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count <= n:
        count = len(out)
    return out, int(count)


def point_map(coords, colour_index, palette: list[str], legend: list[str], *, key: str,
              labels=None, preds=None, confidence=None, label_names: list[str] | None = None,
              pred_names: list[str] | None = None, thumbs: dict | None = None,
              height: int = 600) -> tuple[list[int], int]:
    """Draw the map; returns (selected indices, up to 10,000; exact selected count).

    ``colour_index`` (N,) palette indices; ``palette`` hex colours ("#rrggbb"), ``legend`` a
    name per palette entry; ``labels`` / ``preds`` (N,) class indices into ``label_names`` /
    ``pred_names`` and ``confidence`` (N,) in [0, 1] for the hover box; ``thumbs`` the result of
    :func:`thumbnail_sheets` (the hover box's images), or None.
    """
    geom = encode_geometry(coords, labels, preds, confidence)
    n = geom.meta["n"]
    ci = np.asarray(colour_index)
    if ci.shape != (n,) or len(palette) == 0 or len(palette) > MAX_PALETTE or (ci < 0).any() or \
            (ci >= len(palette)).any():
        raise ValueError(f"colour_index must be {n} indices into a palette of 1-{MAX_PALETTE} colours")
    root = ensure_assets()
    geometry = _store(root, "points", geom.data)
    colours = _store(root, "colours", ci.astype(np.uint8).tobytes())
    comp = _component(root)
    value = comp(geometry=geometry, meta=geom.meta, colours=colours, palette=list(palette),
                 legend=[str(x) for x in legend], label_names=[str(x) for x in (label_names or [])],
                 pred_names=[str(x) for x in (pred_names or [])],
                 thumbs=thumbs, height=int(height), key=key, default=None)
    return selection(value, n)
