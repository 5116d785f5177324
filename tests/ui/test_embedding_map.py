"""The Embeddings map component (dashboard/embedding_map.py) without a browser: sprite
sheets (layout, files, reuse), the component folder (offline plotly.js), selection values,
the figure id, and the background warm-up switch (dashboard/warmup.py). The browser test
(tests/ui/test_e2e_browser.py) hovers and clicks the real thing."""
from __future__ import annotations

import json

import numpy as np
import plotly
import plotly.graph_objects as go
import pytest
from PIL import Image

from dashboard import embedding_map as em
from dashboard import warmup


def _thumbs(n: int, s: int = 4) -> np.ndarray:
    """Thumbnail i is filled with a colour that encodes i."""
    t = np.zeros((n, s, s, 3), np.uint8)
    for i in range(n):
        t[i] = (i % 256, (i // 256) % 256, 77)
    return t


def test_tile_sheets_layout():
    t = _thumbs(2500, 4)
    sheets = em.tile_sheets(t, cols=32, per_sheet=1024)
    assert len(sheets) == 3
    assert sheets[0].shape == (32 * 4, 32 * 4, 3) and sheets[1].shape == (32 * 4, 32 * 4, 3)
    assert sheets[2].shape == (15 * 4, 32 * 4, 3)          # 452 thumbnails: 15 rows
    for i in (0, 1, 31, 32, 1023, 1024, 2047, 2048, 2499):
        k, pos = divmod(i, 1024)
        r, c = divmod(pos, 32)
        cell = sheets[k][r * 4:(r + 1) * 4, c * 4:(c + 1) * 4]
        assert np.array_equal(cell, t[i]), i
    # padding after the last thumbnail is black
    assert not sheets[2][14 * 4:, 4 * 4:].any()


@pytest.mark.parametrize("bad", [np.zeros((3, 4, 4), np.uint8), np.zeros((3, 4, 5, 3), np.uint8),
                                 np.zeros((3, 4, 4, 3), np.float32), np.zeros((3, 4, 4, 4), np.uint8)])
def test_tile_sheets_refuses_bad_input(bad):
    with pytest.raises(ValueError):
        em.tile_sheets(bad)


def test_write_sheets_files_and_reuse(tmp_path):
    t = _thumbs(1500, 8)
    args = em.write_sheets(t, "k1", tmp_path)
    assert args["n"] == 1500 and args["cols"] == 32 and args["per_sheet"] == 1024
    assert args["base"] == "thumbs/k1" and args["display"] == em.DISPLAY_PX
    files = sorted(p.name for p in (tmp_path / "thumbs" / "k1").iterdir())
    assert files == sorted([f"0.{args['ext']}", f"1.{args['ext']}", "done.json"])
    im = np.asarray(Image.open(tmp_path / "thumbs" / "k1" / f"1.{args['ext']}").convert("RGB"))
    assert im.shape == (15 * 8, 32 * 8, 3)                # 476 thumbnails: 15 rows
    # thumbnail 1024 + 33 = row 1, column 1 of sheet 1: its colour survives (lossy) encoding
    cell = im[8:16, 8:16].reshape(-1, 3).mean(axis=0)
    assert np.allclose(cell, [1057 % 256, 1057 // 256, 77], atol=12)
    # a second call reuses the finished sheets (no rewrite)
    mtime = (tmp_path / "thumbs" / "k1" / f"0.{args['ext']}").stat().st_mtime_ns
    assert em.write_sheets(t, "k1", tmp_path) == args
    assert (tmp_path / "thumbs" / "k1" / f"0.{args['ext']}").stat().st_mtime_ns == mtime
    # a different number of thumbnails under the same key is written again
    assert em.write_sheets(_thumbs(10, 8), "k1", tmp_path)["n"] == 10


def test_sheets_key_names_everything():
    k = em.sheets_key("d" * 64, "pre", 32)
    assert k == em.sheets_key("d" * 64, "pre", 32) and len(k) == 40
    assert len({k, em.sheets_key("e" * 64, "pre", 32), em.sheets_key("d" * 64, "pre2", 32),
                em.sheets_key("d" * 64, "pre", 16)}) == 4


def test_component_folder_is_offline(tmp_path):
    root = em.ensure_assets(tmp_path / "c")
    html = (root / "index.html").read_text()
    js = f"plotly-{plotly.__version__}.min.js"
    assert f'<script src="{js}"></script>' in html and "__PLOTLY_JS__" not in html
    assert "http://" not in html and "https://" not in html        # no CDN, nothing remote
    assert (root / js).read_bytes() == em._plotly_js_source().read_bytes()
    assert "streamlit:componentReady" in html and "streamlit:setComponentValue" in html
    before = (root / "index.html").stat().st_mtime_ns
    em.ensure_assets(root)                                            # idempotent
    assert (root / "index.html").stat().st_mtime_ns == before


@pytest.mark.parametrize("value, expected", [
    (None, []),
    ([1, 2], []),
    ({"points": "1,2"}, []),
    ({"points": [3, 1, 3, 2], "seq": 4}, [3, 1, 2]),
    ({"points": [0, 9, 10, -1, 2.0, 2.5, True, "4", None]}, [0, 9, 2]),
])
def test_selection_from_value(value, expected):
    assert em.selection_from_value(value, 10) == expected


def test_figure_args_id_follows_content():
    f1 = go.Figure(go.Scatter(x=[0, 1], y=[1, 0], customdata=np.arange(2)))
    f2 = go.Figure(go.Scatter(x=[0, 1], y=[1, 2], customdata=np.arange(2)))
    t1, id1 = em.figure_args(f1)
    assert em.figure_args(go.Figure(f1))[1] == id1
    assert em.figure_args(f2)[1] != id1
    spec = json.loads(t1)
    assert spec["data"][0]["type"] == "scatter"
    # real colours: not the "streamlit" template's placeholders (#000001...) that only
    # st.plotly_chart replaces; the caller's figure is left as it was
    assert spec["layout"]["template"]["layout"]["colorway"][0] == "#636efa"
    assert spec["layout"]["paper_bgcolor"] == "rgba(0,0,0,0)"
    assert f1.layout.paper_bgcolor is None


def test_embedding_figure_customdata_is_the_dataset_index():
    from dashboard.render import embedding_figure
    n = 1797
    fs, ds = _Fs(n), _Ds(n)
    coords = np.random.default_rng(0).normal(size=(n, 2)).astype(np.float32)
    fig = embedding_figure(coords, fs, ds, _Bundle(), "label", search="7")
    assert all(t.type == "scatter" for t in fig.data)                # 1,797 <= 2,000: SVG
    assert [t.name for t in fig.data[:10]] == [str(c) for c in range(10)]
    seen = np.concatenate([np.asarray(t.customdata) for t in fig.data[:-1]])
    assert sorted(seen.tolist()) == list(range(n))                   # one point per image
    for t in fig.data[:-1]:                                         # coordinates follow the index
        cd = np.asarray(t.customdata)
        assert cd.ndim == 1 and np.allclose(np.asarray(t.x), coords[cd, 0])
        assert (fs.labels[cd] == int(t.name)).all()
        assert list(t.hovertext) == [f"{ds.ids[i]}<br>label {fs.labels[i]}<br>prediction "
                                     f"{fs.predictions[i]} (50%)" for i in cd]
    hl = np.asarray(fig.data[-1].customdata)                         # label 7 or '7' in the file name
    expect = [i for i in range(n) if fs.labels[i] == 7 or "7" in ds.ids[i]]
    assert fig.data[-1].name == f"matches '7' ({len(expect)})" and hl.tolist() == expect
    big = embedding_figure(np.zeros((2500, 3), np.float32), _Fs(2500), _Ds(2500), _Bundle(), "correct")
    assert all(t.type == "scatter3d" for t in big.data)
    big = embedding_figure(np.zeros((2500, 2), np.float32), _Fs(2500), _Ds(2500), _Bundle(), "correct")
    assert all(t.type == "scattergl" for t in big.data)             # WebGL above 2,000 points
    assert sorted(t.name for t in big.data) == ["correct", "wrong"]


class _Bundle:
    categories = [str(i) for i in range(10)]


class _Fs:
    def __init__(self, n):
        self.n = n
        self.labels = np.arange(n) % 10
        self.predictions = (np.arange(n) + (np.arange(n) % 7 == 0)) % 10
        self.confidences = np.full(n, 0.5, np.float32)


class _Ds:
    def __init__(self, n):
        self.class_names = [str(i) for i in range(10)]
        self.ids = [f"img{i}.png" for i in range(n)]


def test_warmup_switch(monkeypatch):
    for v in ("0", "false", "OFF", "no"):
        assert not warmup.enabled({warmup.ENV: v})
    assert warmup.start({warmup.ENV: "0"}) is None
    # this process imported AppTest? then skipped too; otherwise enabled by default
    import sys
    assert warmup.enabled({}) == ("streamlit.testing.v1.app_test" not in sys.modules)


def test_warmup_thread_imports_the_pages_packages_then_runs_warm_up_umap_once(monkeypatch):
    import sys

    import analysis.embeddings.projection as projection
    calls = []
    monkeypatch.setattr(projection, "warm_up_umap", lambda: calls.append(1) or 0.0)
    monkeypatch.delitem(sys.modules, "streamlit.testing.v1.app_test", raising=False)
    t = warmup.start({})
    assert t is not None and t.daemon and t.name == "convlens-warmup"
    t.join(120)
    assert calls == [1] and not t.is_alive()
    assert all(name in sys.modules for name in warmup.PAGE_IMPORTS)


def _map_script():
    import numpy as np
    import plotly.graph_objects as go
    import streamlit as st

    from dashboard.embedding_map import embedding_map
    fig = go.Figure(go.Scatter(x=np.arange(5.0), y=np.arange(5.0), customdata=np.arange(5), mode="markers"))
    sel, live = embedding_map(fig, 5, key="m", thumbs=None)
    st.write(f"selection {sel} live {live}")


def test_embedding_map_in_apptest_and_its_fallback(monkeypatch, tmp_path):
    from pathlib import Path

    from streamlit.testing.v1 import AppTest
    monkeypatch.setattr(em, "component_root", lambda: tmp_path / "web")
    at = AppTest.from_function(_map_script, default_timeout=60).run()
    assert not at.exception
    assert at.markdown[0].value == "selection [] live True"          # the component (no value yet)
    assert (tmp_path / "web" / "index.html").is_file()
    # the component folder cannot be written: st.plotly_chart with selection instead
    monkeypatch.setattr(em, "component_root", lambda: Path("/dev/null/not-a-dir"))
    at = AppTest.from_function(_map_script, default_timeout=60).run()
    assert not at.exception
    assert at.markdown[0].value == "selection [] live False"
    assert len(at.get("plotly_chart")) == 1
