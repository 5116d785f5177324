"""User-provided text (notes, file names, class names, data-set names, run titles) shown as
text, never as markdown.

Most Streamlit elements (``st.markdown``, ``st.caption``, ``st.error``, ``st.subheader``,
image captions, radio labels, ...) render their string as GitHub-flavoured markdown with
Streamlit's extensions (``:red[...]``, ``:material/icon:``, ``$latex$``). A file named
``![x](http://host/leak.png)`` would then make every viewer's browser fetch that URL.

``plain(s)`` backslash-escapes the markdown-active characters of ``s``, so the rendered
result is the characters of ``s``; pages put it around every piece of
user text they interpolate into a markdown string (``st.caption(f"from {plain(ds.name)}")``).
``st_text(s)`` shows a whole block of user text (a note) with its line breaks.
"""
from __future__ import annotations

import re

import streamlit as st

# What must be escaped so that user text cannot become an image, a link, HTML, a Streamlit
# directive (``:red[...]``), code, emphasis or math: the brackets (every link, image and
# directive needs ``[``), ``<``/``>`` (autolinks and HTML), backticks, ``*``, ``~``, ``$``,
# ``|``, ``@`` (e-mail autolinks) and the backslash itself. ``_`` only at a word boundary (inside a word it never
# emphasises, and file names are full of it). GFM turns bare ``http://…`` and ``www.…`` into
# links: their ``:`` and ``.`` are escaped too. Everything else stays as it is, so ordinary
# text (``cat (3).png``, ``0 / analog clock``) reads unchanged in the page source.
_ALWAYS = re.compile(r"([\\\[\]<>`*~$|@])")
_UNDERSCORE = re.compile(r"(?<![A-Za-z0-9])_|_(?![A-Za-z0-9])")
_URL = re.compile(r"(?i)(\b[a-z][a-z0-9+.\-]*):(?=//)|\b(www)\.")
_BLOCK = re.compile(r"^(#{1,6}|[>+\-=]|\d+[.)])(?=\s|$)")      # a heading, quote, list or rule
_SPACE = re.compile(r"\s+")
MAX_CHARS = 20_000


def _escape_line(s: str) -> str:
    s = _ALWAYS.sub(r"\\\1", s)
    s = _UNDERSCORE.sub(r"\\_", s)
    s = _URL.sub(lambda m: f"{m.group(1)}\\:" if m.group(1) else f"{m.group(2)}\\.", s)
    return _BLOCK.sub(lambda m: m.group(1)[:-1] + "\\" + m.group(1)[-1], s)


def plain(value, *, one_line: bool = True, max_chars: int = MAX_CHARS) -> str:
    """``value`` (any object; str() of it) escaped for display as literal text in markdown.

    ``one_line``: whitespace runs (newlines included) become one space, so the text cannot
    start a table, list or code block. Otherwise line breaks are kept as hard breaks.
    ``max_chars``: longer text is cut (with "…")."""
    s = "" if value is None else str(value)
    if len(s) > max_chars:
        s = s[:max_chars] + "…"
    s = s.replace("\x00", "")
    if one_line:
        return _escape_line(_SPACE.sub(" ", s).strip())
    return "  \n".join(_escape_line(_SPACE.sub(" ", ln).strip()) for ln in s.splitlines())


def st_text(value, container=None) -> None:
    """Show a block of user text (e.g. an audit note) as plain text with its line breaks."""
    (container or st).markdown(plain(value, one_line=False))


