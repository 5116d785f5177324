"""Share links: every page's state lives in the URL.

On each run ``begin`` (before the sidebar and the page) restores, in a fresh session, the
page's widget values and the sidebar's model / image / data-set choice from the URL's
query parameters; ``publish`` (after the page) writes the current values back, so the
address bar is always a link to exactly this view. Opening it in another browser
recomputes the same result (or takes it from the shared cache).

What goes into the URL, without any page having to declare it:

* the values of the keyed widgets drawn in this run (not buttons, uploaders or
  components), e.g. ``sal_methods=["gradient","gradcam"]``;
* non-widget session state with the same key prefixes (``sal_active``: the request a
  button started; ``cv_result``: a marker that a result was shown, so that the link
  recomputes it);
* ``model``, ``image``, ``dataset``: the sidebar's choices (uploads by sha256; the
  files stay on the server, content-addressed, and are never listed).

The page is the URL's path (``/saliency``). Values are JSON, except plain strings that
would not parse as JSON, which are written as they are (``sal_view=overlay``).
``page=<url_path>`` in the query is also honoured (links to the root URL; AppTest).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
from typing import Any
from urllib.parse import urlencode

import streamlit as st

from analysis.core.models.loaders import ModelSpec
from dashboard import state
from dashboard.st_internals import drawn_widgets as _drawn_widgets
from dashboard.st_internals import session_internals as _session_internals
from dashboard.text import plain

log = logging.getLogger("convlens")

REFS = {"model": (state.MODEL_KEY, ModelSpec), "image": (state.IMAGE_KEY, state.ImageRef),
        "dataset": (state.DATASET_KEY, state.DatasetRef)}
PAGE_PARAM = "page"
RESERVED = {"embed", "embed_options", PAGE_PARAM, *REFS, state.MODEL_KEY, state.IMAGE_KEY, state.DATASET_KEY}
MAX_PARAMS, MAX_VALUE_CHARS = 300, 20_000
# Widget value types that can be written back through st.session_state.
VALUE_TYPES = {"bool_value", "double_value", "int_value", "string_value", "double_array_value",
               "int_array_value", "string_array_value"}
_KEY = re.compile(r"^[A-Za-z][A-Za-z0-9]*_[A-Za-z0-9_.\-]*$")

_INIT, _READY, _RESTORING = "_share_init", "_share_ready", "_share_restoring"
_PAGE, _LAST, _BOX = "_share_page", "_share_last", "_share_box"
_PENDING, _APPLY, _ROUNDS, _PROBLEMS = "_share_pending", "_share_apply", "_share_rounds", "_share_problems"
MAX_ROUNDS = 4               # runs a link's values may take to meet their widgets (nested controls)
RUN_IDS = "_audit_run_ids"
_PAGES: dict = {}            # url_path -> st.Page (the same for every session)


# ------------------------------------------------------------------ encoding

def _np_default(v):
    import numpy as np
    if isinstance(v, np.bool_):
        return bool(v)
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, np.floating):
        return float(v)
    raise TypeError(type(v).__name__)


def encode_value(v: Any) -> str | None:
    """Compact JSON; a string that would not parse as JSON stays as it is. None if the
    value cannot be written to a URL (arrays, objects)."""
    if isinstance(v, str):
        try:
            json.loads(v)
        except ValueError:
            return v
        return json.dumps(v, ensure_ascii=False)
    try:
        out = json.dumps(v, default=_np_default, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError):
        return None
    return out if len(out) <= MAX_VALUE_CHARS else None


def decode_value(s: str) -> Any:
    try:
        return json.loads(s)
    except ValueError:
        return s


def _ref_param(obj) -> str:
    """Only the fields that differ from the defaults: ``{"kind":"digits"}``."""
    default = type(obj)()
    d = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)
         if getattr(obj, f.name) != getattr(default, f.name)}
    return json.dumps(d, separators=(",", ":"), sort_keys=True, ensure_ascii=False)


def _parse_ref(cls, text: str):
    d = decode_value(text)
    if not isinstance(d, dict):
        raise ValueError("not an object")
    names = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for k, v in d.items():
        if k not in names:
            raise ValueError(f"unknown field {k}")
        want = type(getattr(cls(), k))
        if not isinstance(v, want) or isinstance(v, bool) != (want is bool):
            raise ValueError(f"{k} must be {want.__name__}")
        kwargs[k] = v
    return cls(**kwargs)


# ------------------------------------------------------------------ what the run drew



def _widgets() -> tuple[dict[str, str], set[str]] | None:
    """({user key: value type} of the keyed widgets drawn in this run, every key that
    belongs to a widget at all); None where Streamlit's internals differ."""
    try:
        ctx, ss = _session_internals()
        ids = ctx.shared.widget_ids_this_run.snapshot()
        id_key = dict(ss._key_id_mapper.id_key_mapping)
        drawn = {}
        for wid in ids:
            key = id_key.get(wid)
            if key is None:
                continue
            meta = ss._new_widget_state.widget_metadata.get(wid)
            drawn[key] = getattr(meta, "value_type", "")
        return drawn, set(id_key.values())
    except Exception:  # noqa: BLE001 - degrade to prefixes below
        log.debug("share: widget introspection unavailable", exc_info=True)
        return None


def _prefix(key: str) -> str:
    return key.split("_", 1)[0] + "_"


def snapshot() -> dict[str, str]:
    """The current view as query parameters (without the page, which is the path)."""
    ss = st.session_state
    found = _widgets()
    params: dict[str, str] = {}
    if found is None:
        drawn, widget_keys = {}, set()
        prefixes = set()
        keys = [k for k in ss.keys() if isinstance(k, str) and _KEY.match(k)]
        for k in keys:                                       # fallback: everything with a prefix
            enc = encode_value(ss[k])
            if enc is not None:
                params[k] = enc
    else:
        drawn, widget_keys = found
        for key, vtype in sorted(drawn.items()):
            if vtype not in VALUE_TYPES or not _KEY.match(key) or key not in ss:
                continue
            enc = encode_value(ss[key])
            if enc is not None:
                params[key] = enc
        prefixes = {_prefix(k) for k in drawn if _KEY.match(k)}
        for key in sorted(k for k in ss.keys() if isinstance(k, str)):
            if key in widget_keys or key in params or not _KEY.match(key) or _prefix(key) not in prefixes:
                continue
            enc = encode_value(ss[key])
            if enc is not None:
                params[key] = enc
    for k in list(params):
        if k in RESERVED:
            params.pop(k)
    refs = {}
    for name, (skey, cls) in REFS.items():
        obj = ss.get(skey, cls())
        if obj != cls():
            refs[name] = _ref_param(obj)
    page_keys = {k: v for k, v in params.items() if not k.startswith("sb_")}
    sidebar = {k: v for k, v in params.items() if k.startswith("sb_")}
    params = {**refs, **page_keys, **sidebar}
    return dict(list(params.items())[:MAX_PARAMS])


# ------------------------------------------------------------------ restoring

_LOADERS = {"model": state.bundle_for, "image": state.image_for, "dataset": state.dataset_for}


def _ref_error(exc: BaseException) -> str:
    from analysis.core.errors import ConvlensError
    if isinstance(exc, ConvlensError):
        return str(exc)
    log.warning("share link: a reference failed to load", exc_info=exc)
    return f"{type(exc).__name__}: {str(exc)[:200]}"


def restore(params: dict[str, str]) -> list[str]:
    """Restore a URL in a fresh session (before any widget is drawn). Returns messages for
    what could not be restored.

    The model, image and data-set references are loaded first and become active only if
    they load (a failed one leaves the previous choice, and says why). Every other value
    waits (``_PENDING``) until the widget it belongs to has been drawn: ``publish`` then
    checks it against that widget's type, options and bounds (``_check_value``) and puts it
    into session state for the next run, so a page never sees a value its control would
    refuse. Values that belong to no widget (a page's own state, e.g. ``sal_active``) are
    applied last; the page validates those itself."""
    ss = st.session_state
    problems = []
    for name, (skey, cls) in REFS.items():
        if name in params:
            try:
                obj = _parse_ref(cls, params[name])
            except (ValueError, TypeError) as e:
                problems.append(f"{name}: {e}")
                continue
            if obj == ss.get(skey, cls()):
                continue
            try:
                _LOADERS[name](obj)
            except Exception as e:  # noqa: BLE001 - a bad link must not break the app
                what = obj.label() if isinstance(obj, ModelSpec) else obj.label
                problems.append(f"{name}: could not load {what} ({_ref_error(e)}); the previous {name} stays active")
                continue
            ss[skey] = obj
    for key, value in _sidebar_for_refs(params).items():
        ss[key] = value
    pending = {}
    for key, raw in list(params.items())[:MAX_PARAMS]:
        if key in RESERVED or not _KEY.match(key):
            continue
        if len(raw) > MAX_VALUE_CHARS:
            problems.append(f"{key}: value longer than {MAX_VALUE_CHARS:,} characters")
            continue
        pending[key] = decode_value(raw)
    ss[_PENDING] = pending or None
    ss[_ROUNDS] = 0
    return problems


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _check_value(value, serde, current) -> str | None:
    """Why ``value`` (from a URL) does not fit the widget with this ``serde`` whose value
    (default) is ``current``; None when it fits."""
    options = getattr(serde, "options", None)
    if options is not None and not getattr(serde, "accept_new_options", False):
        opts = list(options)
        def ok(x):
            try:
                return any(x == o and type(x) is not bool or x is o for o in opts)
            except Exception:  # noqa: BLE001 - exotic option types
                return False
        if isinstance(current, (list, tuple)):
            if not isinstance(value, list):
                return "expected a list of options"
            bad = [x for x in value if not ok(x)]
            return f"{bad[0]!r} is not one of its options" if bad else None
        return None if ok(value) else f"{value!r} is not one of its options"
    if isinstance(current, bool):
        return None if isinstance(value, bool) else "expected true or false"
    if _number(current) or (current is None and _number(value)):
        items = [value]
    elif isinstance(current, (list, tuple)) and current and all(_number(c) for c in current):
        if not isinstance(value, list) or len(value) != len(current):
            return f"expected a list of {len(current)} numbers"
        items = value
    elif isinstance(current, str):
        return None if isinstance(value, str) else "expected text"
    elif current is None:
        return None
    else:
        return None if type(value) is type(current) else f"expected {type(current).__name__}"
    lo, hi = getattr(serde, "min_value", None), getattr(serde, "max_value", None)
    for x in items:
        if not _number(x) or x != x or x in (float("inf"), float("-inf")):
            return "expected a number"
        if isinstance(current, int) and not isinstance(current, bool) and getattr(serde, "data_type", None) is not None \
                and isinstance(x, float) and not x.is_integer():
            return "expected a whole number"
        if _number(lo) and x < lo:
            return f"{x} is below the minimum {lo:g}"
        if _number(hi) and x > hi:
            return f"{x} is above the maximum {hi:g}"
    return None


def _settle_pending() -> bool:
    """After a run of a link being restored: check the pending URL values against the
    widgets drawn in this run. True when the next run must come at once (values accepted
    for it, or refusals to show at the top of the page)."""
    ss = st.session_state
    pending = dict(ss.get(_PENDING) or {})
    rounds = int(ss.get(_ROUNDS) or 0) + 1
    ss[_ROUNDS] = rounds
    try:
        drawn, widget_keys = _drawn_widgets()
    except Exception:  # noqa: BLE001 - internals moved (tests/ui/test_st_internals.py says so)
        log.warning("share: widget introspection unavailable; link values applied unchecked", exc_info=True)
        drawn, widget_keys, rounds = {}, set(), MAX_ROUNDS
    apply, keep, problems = {}, {}, []
    for key, value in pending.items():
        if key in drawn:
            vtype, serde = drawn[key]
            why = ("not a setting a link can carry" if vtype not in VALUE_TYPES
                   else _check_value(value, serde, ss[key] if key in ss else None))
            if why:
                problems.append(f"{key}: {why}")
            else:
                apply[key] = value
        else:
            keep[key] = value
    if not apply or rounds >= MAX_ROUNDS:           # the rest met no widget: a page's own state
        for key, value in keep.items():
            if key in widget_keys:
                problems.append(f"{key}: its control is not shown with these settings")
            else:
                apply[key] = value
        keep = {}
    ss[_PENDING] = keep or None
    _add_problems(problems)
    if apply:
        ss[_APPLY] = apply
    return bool(apply or problems)              # a rerun applies them / shows what was refused


def _add_problems(problems: list[str]) -> None:
    if problems:
        log.info("share link: not restored: %s", "; ".join(problems))
        ss = st.session_state
        ss[_PROBLEMS] = list(ss.get(_PROBLEMS) or []) + problems


def _sidebar_for_refs(params: dict[str, str]) -> dict:
    """Sidebar widget values that agree with the link's refs, set at once (a link's own
    sidebar values wait for their widgets, and a hand-written ``?image=...`` carries none),
    so the sidebar does not switch back to its defaults meanwhile."""
    ss = st.session_state
    out: dict = {}
    if "image" in params:
        ref = ss.get(state.IMAGE_KEY)
        if isinstance(ref, state.ImageRef):
            out["sb_img_src"] = "Upload" if ref.kind == "upload" else "Gallery"
            if ref.kind == "gallery":
                out["sb_gallery"] = ref.ref
    if "model" in params:
        spec = ss.get(state.MODEL_KEY)
        if isinstance(spec, ModelSpec):
            out["sb_model_kind"] = "torchvision" if spec.kind == "random" else spec.kind
            if spec.kind in ("torchvision", "random"):
                out.update(sb_arch=spec.arch, sb_pretrained=spec.kind == "torchvision", sb_seed=spec.seed)
    if "dataset" in params:
        ref = ss.get(state.DATASET_KEY)
        if isinstance(ref, state.DatasetRef):
            out["sb_dataset"] = {"digits": "digits", "zip": "zip"}.get(ref.kind, f"{ref.kind}:{ref.ref}")
    return out


def _query() -> dict[str, str]:
    return {k: st.query_params[k] for k in st.query_params.keys()}


def page_name(page) -> str:
    return page.url_path or getattr(page, "_url_path", "") or "home"


def begin(nav, pages) -> None:
    """Before the sidebar and the page: remember the page, restore a link once per session."""
    ss = st.session_state
    ss[_PAGE] = page_name(nav)
    _PAGES.update({page_name(p): p for p in pages})
    ss[RUN_IDS] = []
    if not ss.get(_INIT):
        ss[_INIT] = True
        params = _query()
        if any(k not in ("embed", "embed_options") for k in params):
            ss[_PROBLEMS] = []
            _add_problems(restore(params))
            ss[_RESTORING] = True
            target = params.get(PAGE_PARAM)
            if target and target != ss[_PAGE] and target in _PAGES:
                st.switch_page(_PAGES[target])
    apply = ss.get(_APPLY)
    if apply:                                   # link values checked against their widgets last run
        ss[_APPLY] = None
        for key, value in apply.items():
            ss[key] = value
    problems = ss.get(_PROBLEMS)
    if problems:
        st.warning("Parts of this link were not used; the defaults are shown instead:  \n"
                   + "  \n".join(f"- {plain(p)}" for p in problems[:10]), icon=":material/link_off:")
    ss[_READY] = True


def open_view(view: dict) -> None:
    """Show a recorded view in this session: reset that page's state to the view's, then
    switch to its page (with the view's query parameters, restored on the next run)."""
    ss = st.session_state
    pages = _PAGES
    page = view.get("page") or "home"
    params = dict(view.get("params") or {})
    prefixes = {_prefix(k) for k in params if _KEY.match(k) and k not in RESERVED}
    prefixes.discard("sb_")
    for k in [k for k in list(ss.keys()) if isinstance(k, str) and _KEY.match(k) and _prefix(k) in prefixes]:
        try:
            del ss[k]
        except Exception:  # noqa: BLE001 - a key Streamlit refuses to delete stays; the rest reset
            pass
    ss[_INIT] = False            # the next run restores from the URL, as a fresh session would
    ss[_READY] = False
    target = pages.get(page)
    if target is None:
        st.error(f"The page '{page}' of this run is not available in this app.")
        return
    st.switch_page(target, query_params=params)


def page_names() -> list[str]:
    """url_paths of the app's pages, in navigation order."""
    return list(_PAGES)


def restoring() -> bool:
    """True in the run(s) that restore a link (until the first complete run)."""
    return bool(st.session_state.get(_RESTORING))


def current_page() -> str:
    return st.session_state.get(_PAGE, "home")


def marker(cache_key) -> str:
    return hashlib.sha256(repr(cache_key).encode()).hexdigest()[:16]


def mark(name: str, cache_key) -> None:
    """Note in the session (and so in the link) that the result of ``cache_key`` is shown."""
    st.session_state[f"{name}_result"] = marker(cache_key)


def unmark(name: str) -> None:
    st.session_state.pop(f"{name}_result", None)


def resume(name: str, cache_key) -> bool:
    """True when a link being restored showed the result of ``cache_key``: compute it
    again without waiting for its button."""
    return restoring() and st.session_state.get(f"{name}_result") == marker(cache_key)


# ------------------------------------------------------------------ publishing

def url_for(page: str, params: dict[str, str]) -> str:
    """An absolute link when the browser told us the app's URL, else a root-relative one."""
    query = urlencode(params)
    base = None
    try:
        base = st.context.url
    except Exception:  # noqa: BLE001 - no browser context (AppTest, bare mode): no base URL
        base = None
    if base:
        root = base.split("?")[0].rstrip("/")
        cur = current_page()
        if cur and root.endswith("/" + cur):
            root = root[: -len(cur) - 1]
        path = "" if page == "home" else page
        return f"{root}/{path}" + (f"?{query}" if query else "")
    return f"/{'' if page == 'home' else page}" + (f"?{query}" if query else "")


_OPEN = "_share_open"          # the link box's open state (not a link parameter: leading "_")


def link_box() -> None:
    """A place in the sidebar for the link to this view (filled by ``publish`` while the box
    is open: its code block makes the browser load Streamlit's syntax highlighter, 1.5 MB of
    JavaScript, which on a closed box only delayed every first page view)."""
    box = st.expander("Share this view", icon=":material/link:", key=_OPEN, on_change="rerun")
    with box:
        st.session_state[_BOX] = st.empty() if box.open else None
        st.caption("The address bar always holds this link too. A teammate on this server sees the same "
                   "model, image, settings and result.")


def publish() -> dict | None:
    """After the page: the URL (and the sidebar's link) become this view's link. Returns the
    view ({"page", "params"}) once per run, None if already published or on failure."""
    ss = st.session_state
    if not ss.get(_READY):
        return None
    ss[_READY] = False                       # once per run (dashboard/lifecycle.py calls it)
    if ss.get(_PENDING) is not None:         # a link being restored: its values meet their widgets
        if _settle_pending():
            st.rerun()
    elif ss.get(_PROBLEMS):
        ss[_PROBLEMS] = []                   # shown at the top of this run; gone on the next action
    try:
        params = snapshot()
        cur = {k: v for k, v in _query().items() if k not in ("embed", "embed_options")}
        if cur != params:
            st.query_params.from_dict(params)
        page = current_page()
        ss[_LAST] = {"page": page, "params": params}
        box = ss.get(_BOX)
        if box is not None:
            url = url_for(page, params)
            box.code(url, language=None, wrap_lines=True)
        return {"page": page, "params": params}
    except Exception:
        log.exception("share: could not publish the view")
    finally:
        ss[_RESTORING] = False
    return None


def current_view() -> dict:
    """The view as far as this run has drawn it (for runs recorded mid-page): the last
    published values updated with the current ones."""
    last = st.session_state.get(_LAST) or {}
    params = dict(last.get("params") or {}) if last.get("page") == current_page() else {}
    try:
        params.update(snapshot())
    except Exception:  # noqa: BLE001 - a link is a convenience: a failed snapshot keeps the last view
        log.debug("share: snapshot failed", exc_info=True)
    return {"page": current_page(), "params": params}


