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
