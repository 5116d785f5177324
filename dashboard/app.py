"""convlens: the Streamlit entry. ``streamlit run dashboard/app.py`` (or ``make run``).

Registers only the pages that work, renders the shared sidebar once for all of them,
then runs the selected page.
"""
from __future__ import annotations

import logging
from pathlib import Path

import streamlit as st

from dashboard.sidebar import render_sidebar
from dashboard.warmup import start_once as start_warmups

PAGES_DIR = Path(__file__).resolve().parent.parent / "pages"

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
st.set_page_config(page_title="convlens", page_icon=":material/biotech:", layout="wide")

PAGES = [
    st.Page(PAGES_DIR / "home.py", title="Model & prediction", icon=":material/home:", default=True, url_path="home"),
    st.Page(PAGES_DIR / "saliency.py", title="Saliency", icon=":material/local_fire_department:", url_path="saliency"),
    st.Page(PAGES_DIR / "inside.py", title="Inside the network", icon=":material/layers:", url_path="inside"),
    st.Page(PAGES_DIR / "embeddings.py", title="Embeddings", icon=":material/scatter_plot:", url_path="embeddings"),
    st.Page(PAGES_DIR / "classvis.py", title="Class visualisation", icon=":material/auto_awesome:", url_path="classvis"),
    st.Page(PAGES_DIR / "channelvis.py", title="Channel visualisation", icon=":material/grain:", url_path="channelvis"),
    st.Page(PAGES_DIR / "deepdream.py", title="DeepDream", icon=":material/cloud:", url_path="deepdream"),
    st.Page(PAGES_DIR / "inversion.py", title="Feature inversion", icon=":material/flip:", url_path="inversion"),
]

start_warmups()          # UMAP's numba compile, once per process, in a background thread
nav = st.navigation(PAGES)
render_sidebar()
nav.run()
