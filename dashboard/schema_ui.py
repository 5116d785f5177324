"""Widgets drawn from a parameter schema (``analysis.core.schema.Param``), for any page.

``draw_params(schema, prefix)`` draws one keyed widget per parameter the UI offers
(``Param.ui``), with the schema's range, default, step and help, and returns the values.
Widget keys are ``f"{prefix}_{param.name}"``, so they travel in share links like any
keyed widget. Before a widget is drawn, a value already in session state for its key
(from a share link or a stored view) is checked with the schema's own rules
(``analysis.core.schema.clamp``): out-of-range numbers are clamped, anything else becomes
the default, and a message names the parameter — a bad link never breaks the page.

``sanitize(key, param)`` does only that check, for a page's own controls declared as
``Param`` (e.g. the Saliency page's display controls).
"""
from __future__ import annotations

from typing import Sequence

import streamlit as st

from analysis.core.layers import spatial_layers
from analysis.core.schema import Param, clamp


def sanitize(key: str, param: Param) -> str | None:
    """Make ``st.session_state[key]`` valid for ``param`` before its widget is drawn.
    Returns a message naming the parameter when a value had to change, else None."""
    ss = st.session_state
    if key not in ss or param.kind == "layer":
        return None
    value = ss[key]
    if param.kind == "float" and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)                      # a link writes 1 for 1.0: valid, keep it
    good, msg = clamp(param, value)
    if msg is not None or type(good) is not type(ss[key]):
        ss[key] = good
    return None if msg is None else f"Link value {key}={ss_repr(value)}: {msg}"


def ss_repr(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def draw_param(param: Param, key: str, *, container=None, layers=None, default_layer: str | None = None):
    """One widget for ``param`` under ``key``; returns its value. ``layers`` (a layer
    table) and ``default_layer`` are needed for ``layer`` parameters."""
    c = container if container is not None else st
    label, helptext = param.title, param.help or None
    if param.kind == "int":
        step = int(param.step or 1)
        if param.widget == "slider":
            return int(c.slider(label, int(param.lo), int(param.hi), int(param.default), step, key=key, help=helptext))
        return int(c.number_input(label, int(param.lo), int(param.hi), int(param.default), step, key=key,
                                  help=helptext))
    if param.kind == "float":
        step = float(param.step or (param.hi - param.lo) / 100 or 0.01)
        if param.widget == "number":
            return float(c.number_input(label, float(param.lo), float(param.hi), float(param.default), step,
                                        key=key, help=helptext))
        return float(c.slider(label, float(param.lo), float(param.hi), float(param.default), step, key=key,
                              help=helptext))
    if param.kind == "choice":
        options = list(param.choices)
        index = options.index(param.default)
        if param.widget == "radio":
            return c.radio(label, options, index=index, key=key, help=helptext, horizontal=True)
        return c.selectbox(label, options, index=index, key=key, help=helptext)
    if param.kind == "bool":
        return bool(c.checkbox(label, value=bool(param.default), key=key, help=helptext))
    if layers is None:
        raise ValueError(f"parameter {param.name!r} needs the layer table to draw its picker")
    from dashboard.widgets import layer_picker
    with c if container is not None else _nothing():
        return layer_picker(layers, default_layer or "", key=key, label=label)


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def draw_params(schema: Sequence[Param], prefix: str, *, columns: int = 3, layers=None,
                default_layer: str | None = None) -> tuple[dict, list[str]]:
    """Widgets for every parameter of ``schema`` the UI offers, ``columns`` per row.

    Returns (values, messages): the widgets' values by parameter name, and one message per
    value from session state (a link) that had to be clamped or replaced."""
    shown = [p for p in schema if p.ui]
    messages = [m for p in shown if (m := sanitize(f"{prefix}_{p.name}", p))]
    if layers is not None:
        names = spatial_layers(layers)
        for p in shown:
            key = f"{prefix}_{p.name}"
            if p.kind == "layer" and key in st.session_state and st.session_state[key] not in names:
                messages.append(f"{key}={ss_repr(st.session_state[key])} (from a link or an earlier model) is "
                                "not a layer with a spatial map in this model; using the default.")
                del st.session_state[key]
    values: dict = {}
    if not shown:
        st.caption("No settings.")
        return values, messages
    cols = st.columns(min(columns, len(shown)))
    for i, p in enumerate(shown):
        values[p.name] = draw_param(p, f"{prefix}_{p.name}", container=cols[i % len(cols)],
                                    layers=layers, default_layer=default_layer)
    return values, messages
