"""User-provided text (notes, file names, class names, data-set names, run titles) shown as
text, never as markdown.

Most Streamlit elements (``st.markdown``, ``st.caption``, ``st.error``, ``st.subheader``,
image captions, radio labels, ...) render their string as GitHub-flavoured markdown with
Streamlit's extensions (``:red[...]``, ``:material/icon:``, ``$latex$``). A file named
``![x](http://host/leak.png)`` would then make every viewer's browser fetch that URL.

``plain(s)`` escapes every markdown-active character of ``s`` with a backslash, so the
rendered result is exactly the characters of ``s``; pages put it around every piece of
user text they interpolate into a markdown string (``st.caption(f"from {plain(ds.name)}")``).
``st_text(s)`` shows a whole block of user text (a note) with its line breaks.
"""
from __future__ import annotations

import re

import streamlit as st

# Every ASCII punctuation character may be backslash-escaped in CommonMark; escaping all of
# them also defuses GFM autolinks (``http://``, ``www.``), Streamlit's ``:directives:`` and
# ``$math$``, and HTML (shown as text).
_PUNCT = re.compile(r"([!\"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~])")
_SPACE = re.compile(r"\s+")
MAX_CHARS = 20_000


def plain(value, *, one_line: bool = True, max_chars: int = MAX_CHARS) -> str:
    """``value`` (any object; str() of it) escaped for display as literal text in markdown.

    ``one_line``: whitespace runs (newlines included) become one space, so the text cannot
    start a heading, list or code block. Otherwise line breaks are kept as hard breaks.
    ``max_chars``: longer text is cut (with "…")."""
    s = "" if value is None else str(value)
    if len(s) > max_chars:
        s = s[:max_chars] + "…"
    s = s.replace("\x00", "")
    if one_line:
        return _PUNCT.sub(r"\\\1", _SPACE.sub(" ", s).strip())
    lines = [_PUNCT.sub(r"\\\1", _SPACE.sub(" ", ln).strip()) for ln in s.splitlines()]
    return "  \n".join(ln for ln in lines)


def st_text(value, container=None) -> None:
    """Show a block of user text (e.g. an audit note) as plain text with its line breaks."""
    (container or st).markdown(plain(value, one_line=False))


__all__ = ["plain", "st_text"]
