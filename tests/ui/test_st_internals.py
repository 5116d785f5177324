"""Streamlit internals that share links and the run life cycle rely on are still in place
(dashboard/st_internals.py). A Streamlit upgrade that moves them fails here, by name."""
from dashboard import st_internals


def test_streamlit_internals_are_where_convlens_expects_them():
    missing = st_internals.check()
    assert not missing, ("Streamlit internals moved; update dashboard/st_internals.py: " + "; ".join(missing))


def test_st_stop_is_not_replaced_process_wide():
    import streamlit as st
    from streamlit.commands.execution_control import stop
    assert st.stop is stop
