"""The few Streamlit internals convlens relies on, in one place.

Share links need to know which keyed widgets a run drew (Streamlit has no public API for
that), and the run's life cycle (dashboard/lifecycle.py) must publish the view when a page
calls ``st.stop()``. ``check()`` verifies that these internals are still where this module
expects them; tests/ui/test_st_internals.py calls it, so a Streamlit upgrade that moves them
fails there with a message naming what moved, not somewhere deep inside share links.
"""
from __future__ import annotations

from streamlit.runtime.scriptrunner_utils.exceptions import StopException  # noqa: F401 (re-exported)
from streamlit.runtime.scriptrunner_utils.script_run_context import get_script_run_ctx


def session_internals():
    """(script run context, SessionState) of the current run."""
    ctx = get_script_run_ctx()
    return ctx, ctx.session_state._state


def check() -> list[str]:
    """What is missing of the internals used here (empty when all is in place)."""
    import inspect

    from streamlit.runtime.scriptrunner_utils import script_run_context, shared_run_state
    from streamlit.runtime.state import session_state

    missing = []
    if "shared" not in getattr(script_run_context.ScriptRunContext, "__dataclass_fields__", {}):
        missing.append("ScriptRunContext.shared (the run's shared state)")
    if "widget_ids_this_run" not in inspect.getsource(shared_run_state):
        missing.append("SharedRunState.widget_ids_this_run (ids of the widgets drawn in this run)")
    src = inspect.getsource(session_state.SessionState)
    if "_key_id_mapper" not in src or "id_key_mapping" not in inspect.getsource(session_state):
        missing.append("SessionState._key_id_mapper.id_key_mapping (widget key <-> id)")
    if "_force_yield_point" not in inspect.getsource(__import__("streamlit.commands.execution_control",
                                                                fromlist=["x"])):
        missing.append("st.stop raising StopException at a yield point (dashboard/lifecycle.py catches it)")
    return missing
