"""The Saliency page's parts (pages/saliency.py stays a thin script): link validation of
the page's request, cached rendering of maps, the trust checks.

Everything the page draws from a method comes from the method table
(``analysis.saliency.registry``): its name, description, sign, and a widget per parameter
(``dashboard.schema_ui``). A request from a share link (``sal_active``) goes through the
same schemas as the widgets before anything is computed.
"""
from __future__ import annotations

import numpy as np
import streamlit as st

from analysis.core.layers import spatial_layers
from analysis.core.lru import LockedLRU
from analysis.core.schema import Param
from analysis.saliency import registry
from dashboard import schema_ui
from dashboard.render import COLORMAPS, clip_map, colorize, display_cmap, heatmap_figure, npy_bytes, overlay, png_bytes

ACTIVE = "sal_active"
VIEWS = ("overlay", "heatmap", "interactive")
DISPLAY = (
    Param("view", "choice", "overlay", choices=VIEWS, widget="radio", label="View"),
    Param("cmap", "choice", "inferno", choices=COLORMAPS, label="Colormap"),
    Param("alpha", "float", 0.6, 0.0, 1.0, step=0.05, label="Opacity"),
    Param("outlier", "float", 2.0, 0.0, 10.0, step=0.5, label="Clip top % (outliers)",
          help="Like Captum's outlier_perc: the top % of |values| saturate the colour scale."),
)
TRUST_TABS = ("Deletion / insertion", "Model randomisation")
TRUST_TAB = Param("trust", "choice", TRUST_TABS[0], choices=TRUST_TABS, label="Trust check")

_pngs = LockedLRU(256)          # (result key, display) -> PNG bytes, all sessions
_preds = LockedLRU(64)          # (model id, image key) -> Prediction


def cached_prediction(bundle, image, image_key: str):
    """Top-5 of the sidebar image, computed once per (model, image) for all sessions, so a
    display-only rerun does not run the model again."""
    from analysis.core.predict import predict
    return _preds.get_or_compute((bundle.model_id, image_key), lambda: predict(bundle, image, k=5))


def spatial_layer_names(infos) -> list[str]:
    """Layers a ``layer`` parameter may name (those the layer picker offers)."""
    return spatial_layers(infos)


# ------------------------------------------------------------------ the request from a link

def parse_request(raw, num_classes: int, layer_names: list[str]) -> tuple[dict | None, list[str]]:
    """Validate the page's request (``{"methods": [...], "target": int, "params": {method:
    {...}}}``, from the Compute button or a share link) against the method table.

    Returns (request or None, messages naming what was changed or refused). Unknown
    methods are dropped; a bad target becomes the predicted class (None); each method's
    parameters go through its schema as values from outside (only parameters that have a
    widget; numbers clamped into range; anything else the default); an unknown layer
    becomes the method's default layer."""
    where = "Share link (sal_active)"
    if raw is None:
        return None, []
    if not isinstance(raw, dict):
        return None, [f"{where}: expected an object with methods, target and params; got "
                      f"{type(raw).__name__}. Nothing was computed."]
    msgs: list[str] = []
    methods = raw.get("methods")
    if not isinstance(methods, list):
        return None, [f"{where}: methods must be a list of method names. Nothing was computed."]
    known = []
    for m in methods:
        if isinstance(m, str) and m in registry.names():
            if m not in known:
                known.append(m)
        else:
            msgs.append(f"{where}: unknown method {m!r} ignored; known: {', '.join(registry.names())}.")
    if not known:
        return None, msgs + [f"{where}: no known method left. Nothing was computed."]
    target = raw.get("target")
    if target is not None and (isinstance(target, bool) or not isinstance(target, int)
                               or not 0 <= target < num_classes):
        msgs.append(f"{where}: target {target!r} is not a class index from 0 to {num_classes - 1}; "
                    "using the predicted class.")
        target = None
    given = raw.get("params", {})
    if not isinstance(given, dict):
        msgs.append(f"{where}: params must be an object; using the defaults.")
        given = {}
    params = {}
    for m in known:
        spec = registry.get(m)
        clean, more = spec.coerce(given.get(m, {}))
        for p in spec.params:
            if p.kind == "layer" and p.name in clean and clean[p.name] is not None \
                    and clean[p.name] not in layer_names:
                more.append(f"{spec.title}: {p.name} {clean[p.name]!r} is not a layer with a spatial map "
                            "here; using the default.")
                clean[p.name] = p.default
        msgs += [f"{where}: {x}" for x in more]
        params[m] = clean
    return {"methods": known, "target": target, "params": params}, msgs


# ------------------------------------------------------------------ maps

def display_controls() -> tuple[dict, list[str]]:
    """The display controls (keys ``sal_<name>``), checked like any schema widget."""
    msgs = [m for p in DISPLAY if (m := schema_ui.sanitize(f"sal_{p.name}", p))]
    cols = st.columns(len(DISPLAY))
    values = {p.name: schema_ui.draw_param(p, f"sal_{p.name}", container=c) for p, c in zip(DISPLAY, cols)}
    return values, msgs


def fast_png(rgb: np.ndarray) -> bytes:
    """PNG for the screen: zlib level 1 (about 10x faster than the default level for a
    224 px map, ~30 % larger; the downloads keep the default)."""
    import io

    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _render(a, signed: bool, view: str, cmap: str, alpha: float, outlier: float, encode=fast_png) -> bytes:
    norm = clip_map(a.map, outlier, signed=signed)
    heat = colorize(norm, display_cmap(cmap, signed), signed=signed)
    shown = heat if view == "heatmap" else overlay(a.image, heat, alpha, weight=np.abs(norm))
    return encode(shown)


def rendered_png(result_key, a, signed: bool, view: str, cmap: str, alpha: float, outlier: float) -> bytes:
    """The overlay / heatmap of one result as PNG bytes, cached by result and display
    settings (a display change re-encodes only what it changes; switching back is free)."""
    disp = (view, cmap, round(alpha, 4) if view == "overlay" else None, round(outlier, 4))
    return _pngs.get_or_compute((result_key, disp), lambda: _render(a, signed, view, cmap, alpha, outlier))


def draw_map(a, result_key, display: dict, key: str) -> None:
    """One result: title, description, the map in the chosen view, warnings, downloads."""
    spec = registry.get(a.method)
    view, cmap, alpha, outlier = display["view"], display["cmap"], display["alpha"], display["outlier"]
    st.markdown(f"**{spec.title}** · {a.seconds:.2f} s")
    st.caption(spec.description)
    if view == "interactive":
        norm = clip_map(a.map, outlier, signed=spec.signed)
        st.plotly_chart(heatmap_figure(a.map, norm, display_cmap(cmap, spec.signed), spec.signed),
                        key=f"fig_{key}", width="stretch")
    else:
        # output_format="PNG": Streamlit would otherwise decode these PNG bytes and re-encode
        # them as JPEG on every rerun (its "auto" picks JPEG for pictures without alpha)
        st.image(rendered_png(result_key, a, spec.signed, view, cmap, alpha, outlier), width="stretch",
                 output_format="PNG")
    for w in a.warnings:
        st.warning(w)
    d1, d2 = st.columns(2)
    d1.download_button("PNG", lambda: _render(a, spec.signed, "heatmap", cmap, alpha, outlier, png_bytes),
                       f"{a.method}_{a.target}.png", "image/png", key=f"png_{key}", on_click="ignore")
    d2.download_button(".npy", lambda: npy_bytes(a.map), f"{a.method}_{a.target}.npy", key=f"npy_{key}",
                       on_click="ignore")


def trust_tab() -> str:
    """The trust check shown (a keyed control, so a share link reopens the same one)."""
    msg = schema_ui.sanitize("sal_trust", TRUST_TAB)
    if msg:
        st.warning(f"Share link: {msg}")
    choice = st.segmented_control(TRUST_TAB.title, list(TRUST_TABS), default=TRUST_TAB.default,
                                  key="sal_trust", required=True, label_visibility="collapsed")
    return choice or TRUST_TAB.default


STRIP_WIDTH = 110               # px: the randomisation strip's thumbnails


def strip_pngs(result_key, maps, outlier: float, cmap: str = "inferno", width: int = STRIP_WIDTH) -> list[bytes]:
    """PNG thumbnails of the randomisation strip, cached by result, clip and colormap, at
    most ``width`` px wide (Streamlit would otherwise resize and re-encode each one on every
    rerun). Args: result_key, maps (2-D arrays), outlier (clip %), cmap, width (px)."""
    def thumb(rgb: np.ndarray) -> np.ndarray:
        if rgb.shape[1] <= width:
            return rgb
        from PIL import Image
        im = Image.fromarray(rgb)
        return np.asarray(im.resize((width, max(1, round(im.height * width / im.width))), Image.BILINEAR))
    return _pngs.get_or_compute(("strip", result_key, round(outlier, 4), cmap, width),
                                lambda: [fast_png(thumb(colorize(clip_map(x, outlier), cmap))) for x in maps])
