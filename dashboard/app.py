"""convlens: the Streamlit entry. ``streamlit run dashboard/app.py`` (or ``make run``).

Registers only the pages that work, asks for a login when one is configured, restores a
share link in a fresh session, renders the shared sidebar once for all pages, runs the
selected page, then writes the view back into the URL (dashboard/share.py).
"""
from __future__ import annotations

import logging
from pathlib import Path

import streamlit as st

from analysis.core.errors import ConvlensError
from dashboard import audit_ui, auth, lifecycle
from dashboard.sidebar import render_sidebar
from dashboard.st_internals import stop_suspended
from dashboard.warmup import start_once as start_warmups

PAGES_DIR = Path(__file__).resolve().parent.parent / "pages"

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
st.set_page_config(page_title="convlens", page_icon=":material/biotech:", layout="wide")

PAGES = [
    st.Page(PAGES_DIR / "home.py", title="Model & prediction", icon=":material/home:", default=True, url_path="home"),
    st.Page(PAGES_DIR / "saliency.py", title="Saliency", icon=":material/local_fire_department:", url_path="saliency"),
    st.Page(PAGES_DIR / "inside.py", title="Inside the network", icon=":material/layers:", url_path="inside"),
    st.Page(PAGES_DIR / "embeddings.py", title="Embeddings", icon=":material/scatter_plot:", url_path="embeddings"),
    st.Page(PAGES_DIR / "dataset_audit.py", title="Data-set audit", icon=":material/rule:", url_path="dataset-audit"),
    st.Page(PAGES_DIR / "classvis.py", title="Class visualisation", icon=":material/auto_awesome:", url_path="classvis"),
    st.Page(PAGES_DIR / "channelvis.py", title="Channel visualisation", icon=":material/grain:", url_path="channelvis"),
    st.Page(PAGES_DIR / "deepdream.py", title="DeepDream", icon=":material/cloud:", url_path="deepdream"),
    st.Page(PAGES_DIR / "inversion.py", title="Feature inversion", icon=":material/flip:", url_path="inversion"),
    st.Page(PAGES_DIR / "texture.py", title="Texture synthesis", icon=":material/texture:", url_path="texture"),
    st.Page(PAGES_DIR / "style_transfer.py", title="Style transfer", icon=":material/palette:", url_path="style"),
    st.Page(PAGES_DIR / "fast_style.py", title="Fast style transfer", icon=":material/bolt:", url_path="fast-style"),
    st.Page(PAGES_DIR / "relevance.py", title="Relevance (LRP, CRP)", icon=":material/account_tree:", url_path="relevance"),
    st.Page(PAGES_DIR / "concepts.py", title="Concepts (CRAFT)", icon=":material/category:", url_path="concepts"),
    st.Page(PAGES_DIR / "compare.py", title="Compare two models", icon=":material/compare:", url_path="compare"),
]

AUDIT_PAGE = st.Page(PAGES_DIR / "audit.py", title="Audit trail", icon=":material/fact_check:", url_path="audit")
ALL_PAGES = PAGES + [AUDIT_PAGE]

audit_ui.open_at_startup()   # once per process: sweeps orphan audit folders a crash left
try:
    signed_in = auth.signed_in()
except ConvlensError as exc:                 # e.g. a bad convlens.toml: say so, run nothing
    st.error(f"Configuration: {exc}")
    st.stop()
auth.apply_upload_limit()    # once per process: server.maxUploadSize from convlens's limits
nav = st.navigation(ALL_PAGES, position="sidebar" if signed_in else "hidden")
if not signed_in:
    auth.login_screen()
    st.stop()
auth.ensure_media_pass()     # behind dashboard/server.py: this browser's pass for media and uploads
# restore a share link's state, draw the sidebar and the page, publish the view, finalise audit views
try:
    lifecycle.run(nav, ALL_PAGES, render_sidebar)
finally:
    # UMAP's numba compile, once per process, in a background thread; started after the first
    # page has run (also one that stopped early), so that its import and compile, which hold
    # the GIL, do not slow that page
    with stop_suspended():
        start_warmups()
