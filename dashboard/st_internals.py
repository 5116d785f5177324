"""The few Streamlit internals convlens relies on, in one place.

Share links need to know which keyed widgets a run drew and their options or bounds
(Streamlit has no public API for that; values from a URL are checked against them), and the run's life cycle (dashboard/lifecycle.py) must publish the view when a page
calls ``st.stop()``. ``check()`` verifies that these internals are still where this module
expects them; tests/ui/test_st_internals.py calls it, so a Streamlit upgrade that moves them
fails there with a message naming what moved, not somewhere deep inside share links.
"""
from __future__ import annotations

import contextlib

from streamlit.runtime.scriptrunner_utils.exceptions import StopException  # noqa: F401 (re-exported)
from streamlit.runtime.scriptrunner_utils.script_run_context import get_script_run_ctx


def session_internals():
    """(script run context, SessionState) of the current run."""
    ctx = get_script_run_ctx()
    return ctx, ctx.session_state._state


def drawn_widgets() -> tuple[dict[str, tuple[str, object]], set[str]]:
    """({user key: (value type, serde)} of the keyed widgets drawn in this run, every user
    key that belongs to a widget in this session). The serde is the object whose bound
    ``deserialize`` Streamlit registered for the widget: it carries the widget's options
    (``options``) or bounds (``min_value`` / ``max_value``), which share links validate
    URL values against (dashboard/share.py)."""
    ctx, ss = session_internals()
    ids = ctx.shared.widget_ids_this_run.snapshot()
    id_key = dict(ss._key_id_mapper.id_key_mapping)
    drawn: dict[str, tuple[str, object]] = {}
    for wid in ids:
        key = id_key.get(wid)
        if key is None:
            continue
        meta = ss._new_widget_state.widget_metadata.get(wid)
        drawn[key] = (getattr(meta, "value_type", ""), getattr(getattr(meta, "deserializer", None), "__self__", None))
    return drawn, set(id_key.values())


def session_id() -> str:
    """The current Streamlit session's id (the one in its upload URLs)."""
    return get_script_run_ctx().session_id


def set_max_upload_mb(mb: int) -> None:
    """``server.maxUploadSize`` (MB), which Streamlit's upload route reads per request."""
    from streamlit import config
    config.set_option("server.maxUploadSize", int(mb))


@contextlib.contextmanager
def stop_suspended():
    """Inside: the current run works again after the page called ``st.stop()``.

    ``st.stop()`` puts the run's script requests in the terminal STOP state, in which every
    later session-state access raises StopException again and a rerun request is ignored.
    The run's life cycle (dashboard/lifecycle.py) still has to publish the view, and a share
    link being restored may need one more run (dashboard/share.py). Inside this block the
    state is CONTINUE; on a normal exit STOP is requested again, so the run ends as the page
    asked. An exception inside (``st.rerun()``'s) passes on with its own request. Only this
    session's run is affected; nothing process-wide changes."""
    from streamlit.runtime.scriptrunner_utils.script_requests import ScriptRequestType

    ctx = get_script_run_ctx()
    req = ctx.script_requests if ctx is not None else None
    stopped = False
    if req is not None:
        with req._lock:
            if req._state == ScriptRequestType.STOP:
                req._state = ScriptRequestType.CONTINUE
                stopped = True
    yield
    if stopped:
        req.request_stop()


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
    if "session_id" not in getattr(script_run_context.ScriptRunContext, "__dataclass_fields__", {}):
        missing.append("ScriptRunContext.session_id")
    from streamlit import config as st_config
    if "maxUploadSize" not in inspect.getsource(__import__("streamlit.web.server.starlette.starlette_routes",
                                                           fromlist=["x"])) \
            or not hasattr(st_config, "set_option"):
        missing.append("server.maxUploadSize read by the upload route per request (set_max_upload_mb)")
    from streamlit.runtime.scriptrunner_utils import script_requests
    req_src = inspect.getsource(script_requests.ScriptRequests)
    if not ("self._lock" in req_src and "self._state" in req_src
            and {"STOP", "CONTINUE"} <= set(script_requests.ScriptRequestType.__members__)):
        missing.append("ScriptRequests._lock/_state and ScriptRequestType.STOP/CONTINUE (stop_suspended)")
    from streamlit.elements.widgets import number_input, selectbox, slider
    from streamlit.runtime.state import common
    if "deserializer" not in getattr(common.WidgetMetadata, "__dataclass_fields__", {}):
        missing.append("WidgetMetadata.deserializer (a widget's serde, for share-link validation)")
    if "_new_widget_state" not in src or "widget_metadata" not in inspect.getsource(session_state):
        missing.append("SessionState._new_widget_state.widget_metadata (widget metadata by id)")
    for cls, attrs in ((selectbox.SelectboxSerde, ("options", "deserialize")),
                       (slider.SliderSerde, ("min_value", "max_value", "deserialize")),
                       (number_input.NumberInputSerde, ("min_value", "max_value", "deserialize"))):
        fields = set(getattr(cls, "__dataclass_fields__", {})) | set(dir(cls))
        if "options" in attrs and "options" not in fields:
            fields |= set(inspect.signature(cls.__init__).parameters)
        lost = [a for a in attrs if a not in fields]
        if lost:
            missing.append(f"{cls.__name__}.{', '.join(lost)} (share links validate URL values against them)")
    return missing
