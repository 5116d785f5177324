"""Recording runs in the audit trail from the one job runner (``dashboard.widgets.run_job``;
explicit computations only), and the pieces of the Audit page.

``record(result, key, label)`` adds who, where and on what (user, page, model, image,
data set, the view's share link) to what ``analysis.audit.trail.summarise`` finds in the
result, and stores it. Recording never breaks a page: a failure is logged and shown as a
short notice.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import threading

import numpy as np
import pandas as pd
import streamlit as st

from analysis.audit.trail import AuditError, AuditStore, RunInput, is_result, open_store, summarise
from analysis.core.config import get_config
from dashboard import auth, share, state
from dashboard.text import plain

log = logging.getLogger("convlens")

DATASET_PAGES = {"embeddings", "dataset-audit", "concepts"}   # pages whose results are about the data set
_hash_lock = threading.Lock()
_image_hashes: dict[str, str] = {}


def store() -> AuditStore:
    return open_store(get_config())


def enabled() -> bool:
    return get_config().audit_enabled


@st.cache_resource(show_spinner=False)
def open_at_startup() -> bool:
    """Open the audit store once per server process, at start-up: opening it sweeps the
    orphan run folders a crash left behind (analysis.audit.trail.open_store)."""
    if not enabled():
        return False
    try:
        store()
    except Exception:
        log.exception("audit: could not open the store at start-up")
        return False
    return True


def _image_hash() -> str:
    ref = state.image_ref()
    if ref.kind == "upload":
        return ref.ref                                       # sha256 of the uploaded file
    key = json.dumps(dataclasses.asdict(ref), sort_keys=True)
    with _hash_lock:
        h = _image_hashes.get(key)
    if h is None:
        arr = np.ascontiguousarray(state.current_image())
        h = hashlib.sha256(f"{arr.shape}{arr.dtype}".encode() + arr.tobytes()).hexdigest()
        with _hash_lock:
            _image_hashes[key] = h
    return h


def _uses_image(result, key, page: str) -> bool:
    """Whether the sidebar image is an input of ``result``: always on the image pages; on
    data-set pages (and for data-set results) only when the request names it (a query)."""
    if page not in DATASET_PAGES and not getattr(result, "dataset_hash", None):
        return True
    if key is None:
        return False
    ref = state.image_ref()
    text = repr(key)
    return str(ref) in text or (ref.kind == "upload" and bool(ref.ref) and ref.ref in text)


def run_context(result, key=None, label: str = "", uses_image: bool | None = None) -> RunInput:
    """Who ran what where, for the audit record of ``result``; ``uses_image`` (default:
    inferred) says whether the sidebar image goes into the record."""
    page = share.current_page()
    if uses_image is None:
        uses_image = _uses_image(result, key, page)
    spec = state.model_spec()
    run = RunInput(user=auth.current_user(), page=page)
    ctx: dict = {"model_spec": dataclasses.asdict(spec), "dataset": dataclasses.asdict(state.dataset_ref()),
                 "label": label}
    if uses_image:
        ctx["image"] = dataclasses.asdict(state.image_ref())
    if key is not None:
        ctx["request"] = repr(key)[:4000]
    try:
        bundle = state.current_bundle()
        run.model_id, run.model_name = bundle.model_id, bundle.name
        ctx["model_card"] = bundle.card()
    except Exception:  # noqa: BLE001 - the record still names the spec
        run.model_name = spec.label()
    if uses_image:
        try:
            run.image_hash, run.image_label = _image_hash(), state.image_ref().label
        except Exception:  # noqa: BLE001 - the record keeps the label when the image cannot be hashed
            run.image_label = state.image_ref().label
    ds_hash = getattr(result, "dataset_hash", None)
    if ds_hash or page in DATASET_PAGES:
        try:
            ds = state.current_dataset()
            run.dataset_hash, run.dataset_label = str(ds_hash or ds.content_hash), ds.name
        except Exception:  # noqa: BLE001 - the record keeps the label when the data set cannot load
            run.dataset_label = state.dataset_ref().label
    run.context = ctx
    run.view = share.current_view()
    return run


def record(result, key=None, label: str = "", meta: dict | None = None) -> str | None:
    """Store ``result`` in the audit trail (if it is an analysis result); its uid or None.

    Called by the job runner (``dashboard.widgets.run_job``) for explicit computations
    only. ``label`` is the run's title; ``meta`` sets what the result does not say itself:
    ``target``, ``layer``, ``method``, and ``image`` (False: the sidebar image is no input;
    default: inferred, see ``_uses_image``)."""
    if not enabled() or not is_result(result):
        return None
    meta = dict(meta or {})
    try:
        cfg = get_config()
        summary = summarise(result, label, cfg.limits.max_audit_array_bytes)
        for col in ("target", "layer", "method"):
            if meta.get(col) is not None:
                setattr(summary, col, int(meta[col]) if col == "target" else str(meta[col]))
        if not summary.layer and key is not None:
            summary.layer = _layer_in(key)
        uid = store().record(run_context(result, key, label, meta.get("image")), summary)
    except Exception as exc:
        log.exception("audit: could not record a run")
        try:
            st.toast(f"This run could not be recorded in the audit trail ({type(exc).__name__}); "
                     "the server log has the details.", icon=":material/warning:")
        except Exception:  # noqa: BLE001 - no script context for a toast: the log has it
            pass
        return None
    ids = st.session_state.get(share.RUN_IDS)
    if isinstance(ids, list):
        ids.append(uid)
    st.session_state["_audit_last"] = uid
    return uid


def _layer_in(key) -> str:
    """A layer named in a request key (for results that do not carry their layer)."""
    try:
        names = {i.name for i in state.current_layers()}
    except Exception:  # noqa: BLE001 - no layer table (the model does not load): no layer named
        return ""
    items = list(key) if isinstance(key, (tuple, list)) else [key]
    for it in items:
        for x in (it if isinstance(it, (tuple, list)) else [it]):
            if isinstance(x, str) and x in names:
                return x
    return ""


def finalise_views(uids: list[str], view: dict) -> None:
    """Runs recorded mid-page get the view as it was when the page finished drawing."""
    try:
        store().update_view(uids, view)
    except Exception:
        log.exception("audit: could not update the view of %d runs", len(uids))


# ------------------------------------------------------------------ the Audit page

def visible_user() -> str | None:
    """Whose runs the Audit page lists: None = everyone's."""
    if auth.mode() == "none" or get_config().audit_visibility == "all":
        return None
    return auth.current_user()


def may_see(run) -> bool:
    """Whether the signed-in user may read or change ``run`` (the visibility rule)."""
    u = visible_user()
    return u is None or run.user == u


def _not_found() -> AuditError:
    # the same message as a deleted run: another user's run id reveals nothing
    return AuditError("This run is not in the audit trail (it may have been deleted).")


def get_visible(uid: str):
    """The run ``uid`` if the signed-in user may see it, else AuditError (as if it did not exist).

    Every read and change on the Audit page goes through this, whatever the URL or the
    session state holds (``au_sel`` comes from links)."""
    r = store().get(uid)
    if not may_see(r):
        log.warning("audit: %r asked for run %s of another user", auth.current_user(), uid)
        raise _not_found()
    return r


def visible_uids(uids) -> list[str]:
    """The subset of ``uids`` (run ids) the signed-in user may see, in order."""
    out = []
    for u in uids or []:
        if not isinstance(u, str):
            continue
        try:
            out.append(get_visible(u).uid)
        except Exception:  # noqa: BLE001 - deleted, foreign or malformed: simply not offered
            pass
    return out


def _all_visible(uids) -> list[str]:
    uids = list(uids)
    ok = visible_uids(uids)
    if len(ok) != len(uids):
        raise _not_found()
    return ok


def set_verdict(uid: str, verdict: str) -> None:
    """Set a run's verdict, if the signed-in user may see the run."""
    store().set_verdict(get_visible(uid).uid, verdict)


def add_note(uid: str, text: str, kind: str = "note") -> None:
    """Add a note by the signed-in user, if the user may see the run."""
    store().add_note(get_visible(uid).uid, auth.current_user(), text, kind)


def delete(uids) -> int:
    """Delete runs, all of which the signed-in user must be allowed to see."""
    return store().delete(_all_visible(uids))


def export_zip(uids) -> bytes:
    """ZIP of the visible runs' arrays (every run must be visible)."""
    return store().export_zip(_all_visible(uids))


def report_html(uids, links: dict | None = None) -> str | bytes:
    """The HTML report of the runs (every run must be visible)."""
    from analysis.audit.report import html_report
    return html_report(store(), _all_visible(uids), links=links, author=auth.current_user())


def runs_frame(runs) -> pd.DataFrame:
    return pd.DataFrame([r.row() for r in runs]) if runs else pd.DataFrame(
        columns=["id", "time", "user", "page", "title", "method", "layer", "target", "seed", "model", "image",
                 "verdict", "notes", "uid"])


def run_label(r) -> str:
    bits = [f"#{r.id}", r.when[5:16], r.page, r.title or r.method]
    if r.layer:
        bits.append(r.layer)
    if r.verdict:
        bits.append(f"[{r.verdict}]")
    return " · ".join(bits)


def view_link(r) -> str:
    view = r.view or {}
    return share.url_for(view.get("page") or r.page or "home", dict(view.get("params") or {}))


def show_images(r, width: int = 220, limit: int = 12) -> None:
    names = r.image_files()[:limit]
    if not names:
        st.caption("No images stored for this run.")
        return
    imgs, caps = [], []
    for n in names:
        try:
            imgs.append(store().read_file(r.uid, n))
            caps.append(plain(n.removesuffix(".png")))
        except Exception as exc:  # noqa: BLE001 - one unreadable file is captioned, the others shown
            st.caption(plain(f"{n}: {exc}"))
    if imgs:
        st.image(imgs, width=width, caption=caps)


def metrics_frame(runs) -> pd.DataFrame:
    keys = sorted({k for r in runs for k in r.metrics})
    return pd.DataFrame({f"#{r.id}": [_fmt(r.metrics.get(k)) for k in keys] for r in runs}, index=keys)


def params_frame(runs) -> pd.DataFrame:
    rows = {}
    for r in runs:
        flat = {"page": r.page, "method": r.method, "layer": r.layer, "target": r.target, "seed": r.seed,
                "model": f"{r.model_name} ({r.model_id[:12]})", "image": f"{r.image_label} ({r.image_hash[:12]})"}
        flat.update({f"param: {k}": v for k, v in r.params.items()})
        rows[f"#{r.id}"] = {k: _fmt(v) for k, v in flat.items()}
    df = pd.DataFrame(rows)
    if len(runs) == 2 and not df.empty:
        a, b = df.columns
        df["same"] = ["✓" if x == y else "≠" for x, y in zip(df[a], df[b])]
    return df


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, (list, dict)):
        return json.dumps(v, separators=(",", ":"))[:200]
    return str(v)


def verdict_label(v: str) -> str:
    return v or "(none)"


