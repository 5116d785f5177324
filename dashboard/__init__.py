"""convlens' Streamlit layer: the app entry (app.py), shared widgets, caching and rendering.
Analysis lives in ``analysis/`` and never imports streamlit."""
