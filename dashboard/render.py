"""Pure rendering helpers: plotly figures and tables from analysis results."""
from __future__ import annotations

import plotly.graph_objects as go

from analysis.predict import Prediction


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

import io  # noqa: E402

import numpy as np  # noqa: E402

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
    import matplotlib
    cm = matplotlib.colormaps[cmap]
    v = (norm + 1) / 2 if signed else norm
    return (cm(np.clip(v, 0, 1))[..., :3] * 255 + 0.5).astype(np.uint8)


def overlay(image: np.ndarray, heat_rgb: np.ndarray, alpha: float = 0.5, weight: np.ndarray | None = None) -> np.ndarray:
    """Blend a coloured heatmap over the image; ``weight`` (H, W in [0, 1]) modulates alpha
    per pixel so unimportant regions keep the photo visible."""
    a = np.full(image.shape[:2], alpha, np.float64) if weight is None else alpha * np.clip(weight, 0, 1)
    out = image.astype(np.float64) * (1 - a[..., None]) + heat_rgb.astype(np.float64) * a[..., None]
    return (out + 0.5).astype(np.uint8)


def heatmap_figure(m: np.ndarray, title: str = "", colorscale: str = "Inferno", zmid: float | None = None) -> go.Figure:
    """Interactive heatmap with hover values (row, column, value)."""
    fig = go.Figure(go.Heatmap(z=m[::-1], colorscale=colorscale, zmid=zmid,
                               hovertemplate="row %{customdata}, col %{x}: %{z:.4g}<extra></extra>",
                               customdata=np.repeat(np.arange(m.shape[0])[::-1, None], m.shape[1], 1)))
    fig.update_layout(title=title, height=360, margin=dict(l=10, r=10, t=40, b=10),
                      yaxis=dict(scaleanchor="x", showticklabels=False), xaxis=dict(showticklabels=False))
    return fig


def png_bytes(rgb: np.ndarray) -> bytes:
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.asarray(arr), allow_pickle=False)
    return buf.getvalue()


def curves_figure(curves: dict, kind: str) -> go.Figure:
    """Deletion or insertion curves of several methods (and the random baseline) together."""
    fig = go.Figure()
    for name, by_kind in curves.items():
        c = by_kind[kind]
        fig.add_trace(go.Scatter(x=c.fractions, y=c.scores, mode="lines", name=f"{name} (AUC {c.auc:.3f})",
                                 line=dict(dash="dot" if name == "random" else "solid")))
    fig.update_layout(title=f"{kind.capitalize()} curve", xaxis_title="fraction of pixels "
                      + ("removed" if kind == "deletion" else "inserted"), yaxis_title="target probability",
                      height=360, margin=dict(l=10, r=10, t=40, b=10), yaxis=dict(range=[0, 1.02]))
    return fig


def correlation_figure(layers: list[str], correlations: dict[str, list[float]]) -> go.Figure:
    fig = go.Figure()
    for name, vals in correlations.items():
        fig.add_trace(go.Scatter(x=layers[:len(vals)], y=vals, mode="lines+markers", name=name))
    fig.update_layout(title="Spearman rank correlation with the original map",
                      xaxis_title="randomised from the top down to", yaxis=dict(range=[-0.2, 1.05]),
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
