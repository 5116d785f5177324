"""No traceback ever reaches the page: known errors become messages, unknown ones a
short message (details go to the server log), and the rest of the page keeps working."""
from __future__ import annotations

import contextlib
import logging

import streamlit as st

from analysis.core.errors import ConvlensError
from dashboard.text import plain

log = logging.getLogger("convlens")


def report(exc: BaseException, what: str = "") -> None:
    prefix = f"{plain(what)}: " if what else ""           # file names, user text: never markdown
    if isinstance(exc, ConvlensError):
        st.error(f"{prefix}{plain(exc)}")
    elif isinstance(exc, MemoryError):
        st.error(f"{prefix}out of memory. Try a smaller image, batch or data set.")
    else:
        log.exception("Unexpected error%s", f" in {what}" if what else "", exc_info=exc)
        st.error(f"{prefix}unexpected error ({type(exc).__name__}: {plain(str(exc)[:300])}). "
                 "The app keeps working; the details are in the server log.")


@contextlib.contextmanager
def guard(what: str = ""):
    """Show any error raised inside as a message instead of a traceback.

    Streamlit's own control flow (st.rerun, st.stop) derives from BaseException and
    passes through untouched.
    """
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - this is the app's last line of defence
        report(exc, what)
