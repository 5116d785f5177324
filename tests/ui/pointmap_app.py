"""A page with only the point map, for the browser test and bench/pointmap.py:
CONVLENS_POINTMAP_N points in 10 seeded clusters (default 200,000)."""
import os

import numpy as np
import streamlit as st

from dashboard.pointmap import point_map, thumbnail_sheets


@st.cache_data
def points(n: int):
    rng = np.random.default_rng(0)
    lab = rng.integers(0, 10, n)
    ang = lab * (2 * np.pi / 10)
    xy = np.stack([np.cos(ang) * 10, np.sin(ang) * 10], 1) + rng.normal(size=(n, 2)) * 1.5
    pred = np.where(rng.random(n) < 0.9, lab, (lab + 1) % 10)
    conf = rng.random(n)
    return xy.astype(np.float32), lab, pred, conf


n = int(os.environ.get("CONVLENS_POINTMAP_N", "200000"))
xy, lab, pred, conf = points(n)
names = [f"class {k}" for k in range(10)]
palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22", "#17becf"]
th = np.zeros((min(n, 2048), 8, 8, 3), np.uint8)
th[:, :, :, 0] = (np.arange(len(th)) % 256)[:, None, None]
sheets = thumbnail_sheets(th, f"test-{len(th)}")
sel, count = point_map(xy, lab, palette, names, key="pm", labels=lab, preds=pred, confidence=conf,
                       label_names=names, pred_names=names, thumbs=sheets, height=500)
st.write(f"selected {count} first {sel[:3]}")
