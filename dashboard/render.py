"""Pure rendering helpers: plotly figures and tables from analysis results."""
from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

# PNG / .npy encoders are shared with the audit store (one implementation), re-exported here
from analysis.audit.trail import npy_bytes, png_bytes  # noqa: F401 - re-exported for the pages
from analysis.core.images import colormap_rgb
from analysis.core.lru import LockedLRU
from analysis.core.predict import Prediction


def topk_figure(pred: Prediction, title: str = "Top-5 predictions") -> go.Figure:
    """Horizontal bar chart, best class on top, probabilities as percentages."""
    labels = [f"{l} ({int(i)})" for l, i in zip(pred.labels, pred.indices)][::-1]
    probs = [float(p) for p in pred.probs][::-1]
    fig = go.Figure(go.Bar(x=probs, y=labels, orientation="h", text=[f"{p:.1%}" for p in probs],
                           textposition="auto", hovertemplate="%{y}: %{x:.2%}<extra></extra>",
                           marker_color="#4C78A8"))
    fig.update_layout(title=title, xaxis=dict(range=[0, 1], tickformat=".0%", title="probability"),
                      height=60 + 40 * len(labels), margin=dict(l=10, r=10, t=40, b=10))
    return fig


def model_card_rows(card: dict) -> list[tuple[str, str]]:
    pre = card["preprocessing"]
    return [
        ("Architecture", card["architecture"]),
        ("Source", card["source"]),
        ("Parameters", f"{card['parameters']:,}"),
        ("Input", f"{pre['input_size']}×{pre['input_size']} "
                  f"({'grey' if pre['grayscale'] else 'RGB'}; resize {pre['resize_size']}, centre crop)"),
        ("Normalisation", f"mean {tuple(round(m, 3) for m in pre['mean'])}, std {tuple(round(s, 3) for s in pre['std'])}"),
        ("Classes", str(card["classes"])),
        ("Device", card["device"]),
        ("model_id (sha256 of weights)", card["model_id"]),
    ]


# ------------------------------------------------------------------ saliency maps


COLORMAPS = ("inferno", "viridis", "jet", "hot", "magma", "RdBu_r", "gray")


def clip_map(m: np.ndarray, outlier_perc: float = 2.0, signed: bool = False) -> np.ndarray:
    """Scale a map like Captum's visualiser: divide by the (100 - outlier_perc) percentile of
    |m| and clip, giving [0, 1] (or [-1, 1] when ``signed``; else negatives become 0)."""
    if not 0 <= outlier_perc < 100:
        raise ValueError("outlier percentage must be in [0, 100)")
    m = np.asarray(m, np.float64)
    scale = np.percentile(np.abs(m), 100 - outlier_perc) if m.size else 0.0
    if scale <= 0:
        scale = np.abs(m).max() or 1.0
    out = np.clip(m / scale, -1, 1)
    return out if signed else np.clip(out, 0, 1)


def colorize(norm: np.ndarray, cmap: str = "inferno", signed: bool = False) -> np.ndarray:
    """[0, 1] (or [-1, 1] if signed) map -> RGB uint8 with a matplotlib colormap."""
    return colormap_rgb((norm + 1) / 2 if signed else norm, cmap)


def overlay(image: np.ndarray, heat_rgb: np.ndarray, alpha: float = 0.5, weight: np.ndarray | None = None) -> np.ndarray:
    """Blend a coloured heatmap over the image; ``weight`` (H, W in [0, 1]) modulates alpha
    per pixel so unimportant regions keep the photo visible."""
    a = np.full(image.shape[:2], alpha, np.float64) if weight is None else alpha * np.clip(weight, 0, 1)
    out = image.astype(np.float64) * (1 - a[..., None]) + heat_rgb.astype(np.float64) * a[..., None]
    return (out + 0.5).astype(np.uint8)


def display_cmap(cmap: str, signed: bool) -> str:
    """The colormap a map is drawn with: a signed map shown with the default sequential
    "inferno" switches to the diverging "RdBu_r" (so zero is white, not mid-orange)."""
    return "RdBu_r" if signed and cmap == "inferno" else cmap


def plotly_colorscale(cmap: str, n: int = 64) -> list[list]:
    """A matplotlib colormap as a plotly colorscale of ``n`` stops, with the same uint8
    colours as :func:`colorize` at each stop (so both views draw a value alike)."""
    pos = np.linspace(0.0, 1.0, n)
    rgb = colormap_rgb(pos, cmap)
    return [[float(p), f"rgb({r},{g},{b})"] for p, (r, g, b) in zip(pos, rgb)]


def heatmap_figure(m: np.ndarray, norm: np.ndarray | None = None, cmap: str = "inferno", signed: bool = False,
                   title: str = "") -> go.Figure:
    """Interactive heatmap with hover values (row, column, raw value).

    Colours come from ``norm`` (the map as :func:`clip_map` scaled it: [0, 1], or [-1, 1]
    when ``signed``) and the matplotlib colormap ``cmap`` on the same fixed range, so
    the interactive view matches the overlay and heatmap views and follows the Colormap
    and Clip controls. ``norm`` None = ``clip_map(m, 0, signed)``."""
    m = np.asarray(m, np.float32)
    norm = clip_map(m, 0.0, signed=signed) if norm is None else np.asarray(norm)
    fig = go.Figure(go.Heatmap(z=norm.astype(np.float32), customdata=m, colorscale=plotly_colorscale(cmap),
                               zmin=-1.0 if signed else 0.0, zmax=1.0, zauto=False,
                               colorbar=dict(title="scaled"),
                               hovertemplate="row %{y}, col %{x}: %{customdata:.4g}<extra></extra>"))
    fig.update_layout(title=title, height=360, margin=dict(l=10, r=10, t=40, b=10),
                      yaxis=dict(scaleanchor="x", showticklabels=False, autorange="reversed"),
                      xaxis=dict(showticklabels=False))
    return fig


_previews = LockedLRU(64)       # (image key, max width) -> JPEG bytes, all sessions


def preview_jpeg(key: str, rgb: np.ndarray, max_width: int = 640) -> bytes:
    """A picture for ``st.image(..., output_format="JPEG")``: at most ``max_width`` px wide
    (Pillow's bilinear resize), JPEG quality 90, cached by ``key`` (which must identify the
    picture, e.g. the image reference). Streamlit would otherwise encode the array, and
    resize a large one, on every rerun of every page.

    Args: key: cache key naming the picture; rgb: (H, W, 3) uint8 array; max_width: pixels.
    """
    def encode() -> bytes:
        import io

        from PIL import Image
        im = Image.fromarray(np.ascontiguousarray(rgb))
        if im.width > max_width:
            im = im.resize((max_width, max(1, round(im.height * max_width / im.width))), Image.BILINEAR)
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=90)
        return buf.getvalue()
    return _previews.get_or_compute((key, max_width), encode)



def curves_figure(comparison, kind: str) -> go.Figure:
    """Deletion or insertion curves of several methods together with the random maps' mean
    curve and a band of ± one standard deviation (``comparison``: a
    ``analysis.saliency.trust.CurveComparison``)."""
    fig = go.Figure()
    f, mean, sd = comparison.random_summary(kind)
    aucs = [r[kind].auc for r in comparison.random]
    fig.add_trace(go.Scatter(x=np.concatenate([f, f[::-1]]), y=np.concatenate([mean + sd, (mean - sd)[::-1]]),
                             fill="toself", fillcolor="rgba(128,128,128,0.25)", line=dict(width=0),
                             hoverinfo="skip", name="random ± 1 sd", showlegend=True))
    fig.add_trace(go.Scatter(x=f, y=mean, mode="lines", line=dict(dash="dot", color="gray"),
                             name=f"random, mean of {len(aucs)} (AUC {np.mean(aucs):.3f})"))
    for name, by_kind in comparison.curves.items():
        c = by_kind[kind]
        fig.add_trace(go.Scatter(x=c.fractions, y=c.scores, mode="lines", name=f"{name} (AUC {c.auc:.3f})"))
    fig.update_layout(title=f"{kind.capitalize()} curve", xaxis_title="fraction of pixels "
                      + ("removed" if kind == "deletion" else "inserted"), yaxis_title="target probability",
                      height=360, margin=dict(l=10, r=10, t=40, b=10), yaxis=dict(range=[0, 1.02]))
    return fig


def correlation_range(correlations: dict[str, list[float]]) -> list[float]:
    """The y range of the randomisation chart: down to -0.2 at least, lower when a point is
    lower (Spearman's rho can reach -1), so no point falls off the chart."""
    vals = [v for vs in correlations.values() for v in vs if v is not None and np.isfinite(v)]
    low = min([-0.2] + [v - 0.05 for v in vals])
    return [max(low, -1.05), 1.05]


def correlation_figure(layers: list[str], correlations: dict[str, list[float]]) -> go.Figure:
    """Spearman rank correlation of each method's map with its original, per randomisation step."""
    fig = go.Figure()
    for name, vals in correlations.items():
        fig.add_trace(go.Scatter(x=layers[:len(vals)], y=vals, mode="lines+markers", name=name))
    fig.update_layout(title="Spearman rank correlation with the original map",
                      xaxis_title="randomised from the top down to", yaxis=dict(range=correlation_range(correlations)),
                      height=360, margin=dict(l=10, r=10, t=40, b=10))
    return fig


def image_grid(images: list[np.ndarray], cols: int, pad: int = 2, cell: int | None = None,
               background: int = 255) -> np.ndarray:
    """Tile RGB uint8 images (all the same size, or resized to ``cell`` with nearest
    neighbour so small filters stay crisp) into one image with ``pad``-pixel gaps."""
    from PIL import Image
    if not images:
        raise ValueError("no images to tile")
    if cell is not None:
        images = [np.asarray(Image.fromarray(im).resize((cell, cell), Image.NEAREST)) for im in images]
    h, w = images[0].shape[:2]
    rows = -(-len(images) // cols)
    out = np.full((rows * h + (rows - 1) * pad, cols * w + (cols - 1) * pad, 3), background, np.uint8)
    for k, im in enumerate(images):
        r, c = divmod(k, cols)
        im = im if im.ndim == 3 else np.repeat(im[..., None], 3, axis=2)
        out[r * (h + pad):r * (h + pad) + h, c * (w + pad):c * (w + pad) + w] = im
    return out


def embedding_figure(coords: np.ndarray, fs, ds, bundle, colour: str = "label", search: str = "",
                     categories: np.ndarray | None = None) -> go.Figure:
    """Scatter of a 2-D / 3-D map: WebGL above 2,000 points, one trace per category (so the
    legend toggles classes), hover with id / label / prediction, the data-set index of each
    point as its (1-D) customdata (hover thumbnails and selections, see
    dashboard/embedding_map.py), and the points matching ``search`` ringed on top.
    ``categories`` (N,) names colour the points instead of ``colour`` (e.g. the slices)."""
    n, d = coords.shape
    idx = np.arange(n)
    labels = np.array([ds.class_names[int(l)] for l in fs.labels])
    preds = np.array([bundle.categories[int(p)] for p in fs.predictions])
    hover = np.array([f"{ds.ids[i]}<br>label {labels[i]}<br>prediction {preds[i]} ({fs.confidences[i]:.0%})"
                      for i in idx])
    if d == 3:
        trace_cls = go.Scatter3d
    else:
        trace_cls = go.Scattergl if n > 2000 else go.Scatter

    def trace(mask, name, marker):
        xyz = dict(x=coords[mask, 0], y=coords[mask, 1])
        if d == 3:
            xyz["z"] = coords[mask, 2]
        return trace_cls(mode="markers", name=name, customdata=idx[mask], hovertext=hover[mask],
                         hovertemplate="%{hovertext}<extra></extra>", marker=marker, **xyz)

    size = 3 if n > 20000 else 5 if n > 2000 else 7
    fig = go.Figure()
    if colour == "confidence":
        fig.add_trace(trace(idx >= 0, "confidence", dict(size=size, color=fs.confidences, colorscale="Viridis",
                                                            colorbar=dict(title="confidence"), cmin=0, cmax=1)))
    else:
        cats = np.asarray(categories).astype(str) if categories is not None else {
            "label": labels, "prediction": preds,
            "correct": np.where(fs.predictions == fs.labels, "correct", "wrong")}[colour]
        for c in sorted(set(cats.tolist()), key=str):
            fig.add_trace(trace(cats == c, str(c), dict(size=size)))
    if search.strip():
        q = search.strip().lower()
        hit = np.array([q in labels[i].lower() or q in str(ds.ids[i]).lower() for i in idx])
        if hit.any():
            fig.add_trace(trace(hit, f"matches '{search}' ({int(hit.sum())})",
                                dict(size=size + 6, color="rgba(0,0,0,0)", line=dict(color="black", width=2))))
    fig.update_layout(height=620, margin=dict(l=10, r=10, t=30, b=10), legend=dict(itemsizing="constant"),
                      dragmode="lasso" if d == 2 else "orbit")
    return fig


def kernel_grid(kernels: list[np.ndarray], cols: int, max_width: int = 800, max_cell: int = 48,
                pad: int = 2) -> np.ndarray:
    """Small grey kernels (each kh × kw uint8) tiled ``cols`` per row, each scaled up by one
    whole factor with nearest neighbour (every weight a crisp square, no blur) so that the
    grid fits ``max_width`` pixels: show it at its own width, not stretched."""
    if not kernels:
        raise ValueError("no kernels to tile")
    kh, kw = kernels[0].shape[:2]
    cols = max(1, min(cols, len(kernels)))
    factor = max(1, min(max_cell // max(kh, kw), (max_width - (cols - 1) * pad) // (cols * kw)))
    big = [np.repeat(np.repeat(k, factor, 0), factor, 1) for k in kernels]
    return image_grid(big, cols=cols, pad=pad)


def model_view(preprocess, image: np.ndarray, min_side: int = 224) -> np.ndarray:
    """The crop exactly as the model sees it (resized, cropped, grey for a grey model) as
    RGB uint8, enlarged by a whole factor with nearest neighbour to at least ``min_side``
    pixels so that a tiny input (8 × 8 digits) shows its pixels instead of a blur."""
    seen = preprocess.to_display(preprocess(image)[0])
    f = max(1, -(-min_side // max(seen.shape[:2])))
    return np.repeat(np.repeat(seen, f, 0), f, 1) if f > 1 else seen
