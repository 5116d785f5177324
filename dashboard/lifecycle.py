"""One run of the app, from the URL to the audit trail: the only module that knows the order.

``run(nav, pages, sidebar)``: a share link opened in a fresh session restores its state
(share.begin), the sidebar and the page run, then the view is published into the URL and
the audit runs recorded during this run get that view (audit_ui.finalise_views). A page
that calls ``st.stop()`` ends the same way: the stop is caught here, the view published,
and the stop passed on. Nothing replaces ``st.stop`` process-wide.
"""
from __future__ import annotations

from typing import Callable

import streamlit as st

from dashboard import audit_ui, share
from dashboard.st_internals import StopException, stop_suspended


def _end() -> None:
    view = share.publish()
    ids = st.session_state.get(share.RUN_IDS) or []
    if view is not None and ids:
        audit_ui.finalise_views(ids, view)
        st.session_state[share.RUN_IDS] = []


def run(nav, pages, sidebar: Callable[[], None]) -> None:
    share.begin(nav, pages)
    try:
        sidebar()
        nav.run()
    except StopException:
        with stop_suspended():          # session state (and a link's rerun) work again meanwhile
            _end()
        raise
    _end()
