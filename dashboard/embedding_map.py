"""The interactive map of the Embeddings page: hover shows the image, selection goes back.

``st.plotly_chart`` cannot show images on hover (plotly's hover label is text only) and
runs no custom JavaScript. So the map is drawn by a small custom component
(``embedding_map.html``, the streamlit-component-lib protocol written by hand, no build
step): plotly.js itself plus

* **hover**: a floating box with the image's thumbnail and its text (id, label,
  prediction). Thumbnails are NOT sent with the figure: they are the 32 x 32 pixel-space
  thumbnails the neighbour search already caches (``analysis.embeddings.neighbors.pixel_thumbnails``),
  tiled into WebP sprite sheets of 1,024 images that the component's own file route serves.
  The browser fetches a sheet the first time a point on it is hovered (and keeps it), so
  the payload of the figure does not grow with the thumbnails and there is no cap on the
  points that have one: 100,000 points are 98 sheets on disk (WebP: ~130-180 kB per sheet
  of digits, ~400 kB of photos), fetched only where the mouse goes. The figure itself
  (coordinates as binary arrays, one hover text per point) is ~0.2 MB for the 1,797
  digits, ~1.1 MB for 10,000 points and ~11 MB for 100,000;
* **selection**: click (shift-click adds), box or lasso in 2-D, click / shift-click in 3-D
  (plotly has no box or lasso there); the selected data-set indices are the component's
  value, so the page shows their images below.

The component's folder is generated under ``<cache_dir>/web/embedding_map`` (index.html,
plotly.js copied from the plotly Python package: offline, no CDN, and the sprite sheets
under ``thumbs/<key>/``); Streamlit serves files only from inside it. If the folder cannot
be written, the map falls back to ``st.plotly_chart`` (selection works, hover is text only,
and the caption says so).

The figure is sent once per change of its content: the arguments carry an id (hash of
the figure), the component redraws only when it changes, so a selection round trip
keeps zoom and lasso. WebGL (``scattergl``) above 2,000 points is kept from
``embedding_figure``.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import threading
from pathlib import Path

import numpy as np
import plotly
import plotly.graph_objects as go
import streamlit as st

from analysis.core.config import get_config
from analysis.core.fsio import atomic_write

log = logging.getLogger("convlens")

HTML_SOURCE = Path(__file__).with_name("embedding_map.html")
THUMB_PX = 32              # the pixel-space thumbnails of analysis.embeddings.neighbors (shared cache)
SHEET_COLS = 32            # thumbnails per sheet row
PER_SHEET = 1024           # thumbnails per sheet (32 x 32 grid: 1,024 x 1,024 pixels)
DISPLAY_PX = 96            # thumbnail size in the hover box
_SHEET_FORMAT = 1          # bump when the sheet layout changes
_LOCK = threading.Lock()
_COMPONENTS: dict[str, object] = {}


# ------------------------------------------------------------------ component folder

def component_root() -> Path:
    return Path(get_config().cache_dir) / "web" / "embedding_map"


def _plotly_js_source() -> Path:
    return Path(plotly.__file__).resolve().parent / "package_data" / "plotly.min.js"



def ensure_assets(root: Path | None = None) -> Path:
    """Write index.html and copy plotly.min.js into the component folder (once per
    content: files are replaced only when they differ). Returns the folder."""
    root = component_root() if root is None else root
    js_name = f"plotly-{plotly.__version__}.min.js"
    html = HTML_SOURCE.read_text(encoding="utf-8").replace("__PLOTLY_JS__", js_name).encode()
    with _LOCK:
        js = root / js_name
        src = _plotly_js_source()
        if not js.exists() or js.stat().st_size != src.stat().st_size:
            root.mkdir(parents=True, exist_ok=True)
            atomic_write(js, src.read_bytes())
        write_page(root, html)
    return root


def write_if_changed(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` (atomically) unless the file already holds exactly that."""
    if not path.exists() or path.read_bytes() != data:
        atomic_write(path, data)


HOVERTIP = ("hovertip.css", "hovertip.js")     # the hover box both map components load


def write_page(root: Path, html: bytes) -> None:
    """Write a map component's index.html and the shared hover-box files into ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    for name in HOVERTIP:
        write_if_changed(root / name, Path(__file__).with_name(name).read_bytes())
    write_if_changed(root / "index.html", html)


def _component(root: Path):
    key = str(root)
    with _LOCK:
        fn = _COMPONENTS.get(key)
        if fn is None:
            import streamlit.components.v1 as components
            fn = components.declare_component("embedding_map", path=key)
            _COMPONENTS[key] = fn
    return fn


# ------------------------------------------------------------------ thumbnail sheets

def tile_sheets(thumbs: np.ndarray, cols: int = SHEET_COLS, per_sheet: int = PER_SHEET) -> list[np.ndarray]:
    """Cut (N, s, s, 3) uint8 thumbnails into sprite sheets: thumbnail ``i`` is on sheet
    ``i // per_sheet`` at row ``(i % per_sheet) // cols``, column ``(i % per_sheet) % cols``.
    Sheets are ``cols * s`` wide and as tall as their rows need."""
    thumbs = np.asarray(thumbs)
    if thumbs.ndim != 4 or thumbs.shape[3] != 3 or thumbs.dtype != np.uint8 or thumbs.shape[1] != thumbs.shape[2]:
        raise ValueError(f"thumbnails must be (N, s, s, 3) uint8, got {thumbs.shape} {thumbs.dtype}")
    if per_sheet % cols:
        raise ValueError("per_sheet must be a multiple of cols")
    n, s = thumbs.shape[0], thumbs.shape[1]
    sheets = []
    for start in range(0, n, per_sheet):
        block = thumbs[start:start + per_sheet]
        rows = -(-len(block) // cols)
        pad = rows * cols - len(block)
        if pad:
            block = np.concatenate([block, np.zeros((pad, s, s, 3), np.uint8)])
        sheet = block.reshape(rows, cols, s, s, 3).transpose(0, 2, 1, 3, 4).reshape(rows * s, cols * s, 3)
        sheets.append(np.ascontiguousarray(sheet))
    return sheets


def _encode(sheet: np.ndarray) -> tuple[bytes, str]:
    from PIL import Image, features
    im = Image.fromarray(sheet)
    buf = io.BytesIO()
    if features.check("webp"):
        im.save(buf, format="WEBP", quality=85, method=4)
        return buf.getvalue(), "webp"
    im.save(buf, format="PNG", optimize=True)
    return buf.getvalue(), "png"


def sheets_key(dataset_hash: str, preprocess_id: str, size: int) -> str:
    h = hashlib.sha256(json.dumps(["thumb-sheets", _SHEET_FORMAT, dataset_hash, preprocess_id, size,
                                   SHEET_COLS, PER_SHEET]).encode()).hexdigest()
    return h[:40]


def write_sheets(thumbs: np.ndarray, key: str, root: Path | None = None) -> dict:
    """Write the sprite sheets of ``thumbs`` under ``root/thumbs/key/`` (skipped when a
    previous call finished them) and return the component's ``thumbs`` argument."""
    root = component_root() if root is None else root
    folder = root / "thumbs" / key
    done = folder / "done.json"
    n, s = int(thumbs.shape[0]), int(thumbs.shape[1])
    meta = None
    if done.exists():
        try:
            meta = json.loads(done.read_text())
            if meta.get("n") != n or meta.get("size") != s:
                meta = None
        except (OSError, ValueError):
            meta = None
    if meta is None:
        ext = "png"
        for k, sheet in enumerate(tile_sheets(thumbs)):
            data, ext = _encode(sheet)
            atomic_write(folder / f"{k}.{ext}", data)
        meta = {"n": n, "size": s, "ext": ext}
        atomic_write(done, json.dumps(meta).encode())
    return {"base": f"thumbs/{key}", "ext": meta["ext"], "n": n, "cols": SHEET_COLS,
            "per_sheet": PER_SHEET, "display": DISPLAY_PX, "pixelated": s <= 16}


def _thumbs_arg(key: str, meta: dict) -> dict:
    return {"base": f"thumbs/{key}", "ext": meta["ext"], "n": meta["n"], "cols": SHEET_COLS,
            "per_sheet": PER_SHEET, "display": DISPLAY_PX, "pixelated": meta["size"] <= 16}


def stored_sheets(key: str, n: int, root: Path) -> dict | None:
    """The ``thumbs`` argument of sheets that :func:`stream_sheets` finished for ``n``
    thumbnails under ``root/thumbs/key``, or None."""
    try:
        meta = json.loads((root / "thumbs" / key / "done.json").read_text())
    except (OSError, ValueError):
        return None
    return _thumbs_arg(key, meta) if meta.get("n") == n else None


def stream_sheets(n: int, read_rows, key: str, root: Path, size: int = THUMB_PX, progress=None) -> dict:
    """Sprite sheets of ``n`` thumbnails written one sheet at a time (never more than
    ``PER_SHEET`` thumbnails in memory): ``read_rows(start, stop)`` returns the (m, size,
    size, 3) uint8 thumbnails of rows start..stop. A sheet already on disk (an earlier,
    stopped run) is kept; ``done.json`` is written last. Returns the ``thumbs`` argument."""
    got = stored_sheets(key, n, root)
    if got is not None:
        return got
    folder = root / "thumbs" / key
    ext = "png"
    for k, start in enumerate(range(0, n, PER_SHEET)):
        stop = min(n, start + PER_SHEET)
        have = sorted(folder.glob(f"{k}.*"))
        if have:
            ext = have[0].suffix[1:]
        else:
            block = np.asarray(read_rows(start, stop), np.uint8)
            if block.shape != (stop - start, size, size, 3):
                raise ValueError(f"read_rows gave {block.shape}, expected {(stop - start, size, size, 3)}")
            data, ext = _encode(tile_sheets(block)[0])
            atomic_write(folder / f"{k}.{ext}", data)
        if progress is not None:
            progress(stop, n)
    meta = {"n": int(n), "size": int(size), "ext": ext}
    atomic_write(folder / "done.json", json.dumps(meta).encode())
    return _thumbs_arg(key, meta)


def hover_thumbnails(bundle, ds, progress=None) -> dict | None:
    """The ``thumbs`` argument for ``ds``: the cached pixel-space thumbnails (computed now
    if the neighbour search has not yet) as sprite sheets. None, logged, when the
    component folder cannot be written (the map then hovers text only)."""
    from analysis.embeddings.neighbors import pixel_thumbnails
    thumbs = pixel_thumbnails(bundle, ds, THUMB_PX, progress=progress)
    try:
        root = ensure_assets()
        return write_sheets(thumbs, sheets_key(ds.content_hash, bundle.preprocess.spec_id, thumbs.shape[1]), root)
    except OSError as exc:
        log.warning("hover thumbnails unavailable: %s", exc)
        return None


# ------------------------------------------------------------------ the map

def selection_from_value(value, n: int) -> list[int]:
    """Data-set indices from the component's value (``{"points": [...], "seq": k}``):
    integers in [0, n), first occurrence kept, anything else dropped."""
    if not isinstance(value, dict):
        return []
    return valid_indices(value.get("points"), n)


def valid_indices(pts, n: int) -> list[int]:
    """The whole numbers in ``pts`` (a list from the browser) that index ``range(n)``, first
    occurrence kept, in order; anything else (bools, fractions, text, out of range) dropped."""
    if not isinstance(pts, list):
        return []
    out, seen = [], set()
    for p in pts:
        if isinstance(p, bool) or not isinstance(p, (int, float)) or p != int(p):
            continue
        i = int(p)
        if 0 <= i < n and i not in seen:
            seen.add(i)
            out.append(i)
    return out


def figure_args(fig: go.Figure) -> tuple[str, str]:
    """(figure JSON, id): the id is a hash of the JSON, so the component redraws only when
    the figure really changed. The template is plotly's "plotly_white" on a transparent
    background: the "streamlit" template that importing streamlit makes the default has
    placeholder colours that only ``st.plotly_chart`` fills in (the component adapts grid
    and text colours to a dark theme itself)."""
    fig = go.Figure(fig)
    fig.update_layout(template="plotly_white", paper_bgcolor="rgba(0,0,0,0)", plot_bgcolor="rgba(0,0,0,0)",
                      modebar=dict(bgcolor="rgba(0,0,0,0)", color="#999", activecolor="#444"))
    text = fig.to_json()
    return text, hashlib.sha256(text.encode()).hexdigest()[:24]


def embedding_map(fig: go.Figure, n: int, key: str, thumbs: dict | None) -> tuple[list[int], bool]:
    """Draw ``fig`` with hover thumbnails (``thumbs`` from ``hover_thumbnails``, or None
    for text only) and return (selected data-set indices, whether the component drew it).
    Falls back to ``st.plotly_chart`` when the component folder cannot be prepared."""
    try:
        root = ensure_assets()
        comp = _component(root)
    except OSError as exc:
        log.warning("embedding map component unavailable (%s); using st.plotly_chart", exc)
        event = st.plotly_chart(fig, key=f"{key}_fallback", on_select="rerun",
                                selection_mode=("points", "box", "lasso"), width="stretch")
        pts = event.selection.points if event else []
        cds = [p.get("customdata") for p in pts]
        idx = [c[0] if isinstance(c, list) else c for c in cds if c is not None]
        return selection_from_value({"points": idx}, n), False
    text, fig_id = figure_args(fig)
    value = comp(figure=text, fig_id=fig_id, thumbs=thumbs, key=key, default=None)
    return selection_from_value(value, n), True


# ------------------------------------------------------------------ slices of a map

def slice_assignment(features, wrong, labels, *, n_clusters: int = 8, min_size: int = 10,
                     sample_index=None, progress=None, should_stop=None):
    """The data-set audit's failure slices (:func:`analysis.dataset.evaluate.find_slices`:
    k-means on the standardised features) for every point of a map.

    Up to ``max_dataset_images`` points (``sample_index`` None) k-means runs on all of them
    and the result is find_slices' own. Past it, k-means runs on the map's reference sample
    (``sample_index``) and every other point joins the nearest cluster centre in the
    sample's standardised space (:func:`analysis.embeddings.large.nearest_centroid`, chunked
    over the memory-mapped features); the sample keeps find_slices' assignment. Returns
    find_slices' SliceResult with ``assignment`` and ``indices`` covering every point."""
    from analysis.dataset.evaluate import find_slices
    from analysis.embeddings.large import nearest_centroid
    wrong = np.asarray(wrong, bool)
    labels = np.asarray(labels)
    n = len(wrong)
    if sample_index is None or len(sample_index) >= n:
        x = np.asarray(features, np.float32)
        return find_slices(x, wrong, labels, n_clusters=min(n_clusters, n), min_size=min_size)
    s = np.asarray(sample_index, np.int64)
    sub = np.asarray(features[s], np.float64)
    sr = find_slices(sub, wrong[s], labels[s], indices=s, n_clusters=min(n_clusters, len(s)), min_size=min_size)
    mu, sd = sub.mean(0), sub.std(0)
    z = (sub - mu) / np.where(sd > 0, sd, 1.0)
    k = int(sr.assignment.max()) + 1
    centres = np.stack([z[sr.assignment == c].mean(0) if (sr.assignment == c).any() else np.full(z.shape[1], np.inf)
                        for c in range(k)])
    assign = nearest_centroid(features, np.nan_to_num(centres, posinf=1e30), mean=mu, scale=sd,
                              progress=progress, should_stop=should_stop)
    assign[s] = sr.assignment
    sr.assignment = assign
    sr.indices = np.arange(n, dtype=np.int64)
    return sr
