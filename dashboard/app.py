"""convlens: the Streamlit entry. ``streamlit run dashboard/app.py`` (or ``make run``).

Registers only the pages that work, renders the shared sidebar once for all of them,
then runs the selected page.
"""
from __future__ import annotations

import logging
from pathlib import Path

import streamlit as st

from dashboard.sidebar import render_sidebar

PAGES_DIR = Path(__file__).resolve().parent.parent / "pages"

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
st.set_page_config(page_title="convlens", page_icon=":material/biotech:", layout="wide")

PAGES = [
    st.Page(PAGES_DIR / "home.py", title="Model & prediction", icon=":material/home:", default=True, url_path="home"),
    st.Page(PAGES_DIR / "saliency.py", title="Saliency", icon=":material/local_fire_department:", url_path="saliency"),
    st.Page(PAGES_DIR / "inside.py", title="Inside the network", icon=":material/layers:", url_path="inside"),
    st.Page(PAGES_DIR / "embeddings.py", title="Embeddings", icon=":material/scatter_plot:", url_path="embeddings"),
]

nav = st.navigation(PAGES)
render_sidebar()
nav.run()
