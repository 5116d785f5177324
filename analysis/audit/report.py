"""A self-contained HTML report of audit runs: one file, no external resources (images
embedded as base64 PNG), readable offline and printable. Per run: what ran (page, model,
image, data set, layer, method, target, seed), its parameters and metrics, its images,
notes and verdict, the model card, and the link that reopens its view."""
from __future__ import annotations

import base64
import html
import json
from datetime import datetime, timezone
from typing import Sequence

from analysis.audit.trail import AuditStore, RunRecord

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1100px;color:#222;
line-height:1.4;padding:0 1rem}
h1{margin-bottom:.2rem}h2{border-top:2px solid #ddd;padding-top:1rem;margin-top:2rem}
table{border-collapse:collapse;margin:.5rem 0;font-size:.9rem}td,th{border:1px solid #ddd;padding:.25rem .5rem;
text-align:left;vertical-align:top}th{background:#f5f5f5}
.imgs{display:flex;flex-wrap:wrap;gap:.75rem}.imgs figure{margin:0}.imgs img{max-width:260px;image-rendering:pixelated;
border:1px solid #ccc}.imgs figcaption{font-size:.8rem;color:#555}
pre{background:#f7f7f7;padding:.5rem;overflow-x:auto;font-size:.8rem}.verdict{font-weight:bold}
.note{border-left:3px solid #999;padding-left:.5rem;margin:.4rem 0}.finding{border-color:#c60}
.muted{color:#666;font-size:.85rem}a{overflow-wrap:anywhere;word-break:break-all}td{overflow-wrap:anywhere}
"""


def _e(v) -> str:
    return html.escape("" if v is None else str(v))


def _table(rows: Sequence[tuple[str, object]]) -> str:
    body = "".join(f"<tr><th>{_e(k)}</th><td>{_e(_fmt(v))}</td></tr>" for k, v in rows)
    return f"<table>{body}</table>"


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, (dict, list)):
        return json.dumps(v, sort_keys=True)
    return "" if v is None else str(v)


def _run_html(store: AuditStore, r: RunRecord, link: str | None) -> str:
    parts = [f'<section class="run" id="run-{r.id}" data-uid="{_e(r.uid)}">',
             f"<h2>Run #{r.id}: {_e(r.title or r.method)} <span class='muted'>({_e(r.page)})</span></h2>"]
    if r.verdict:
        parts.append(f"<p class='verdict'>Verdict: {_e(r.verdict)}</p>")
    parts.append(_table([
        ("time", r.when), ("user", r.user or "(no login)"), ("page", r.page),
        ("model", f"{r.model_name} · model_id {r.model_id}"),
        ("image", f"{r.image_label} · sha256 {r.image_hash}"),
        *([("data set", f"{r.dataset_label} · {r.dataset_hash}")] if r.dataset_hash or r.dataset_label else []),
        ("layer", r.layer), ("method", r.method), ("target", r.target), ("seed", r.seed),
        ("seconds", r.seconds), ("run id", r.uid)]))
    if link:
        parts.append(f'<p>Reopen this view: <a href="{_e(link)}">{_e(link)}</a></p>')
    images = []
    for f in r.files:
        if f.get("kind") != "image":
            continue
        try:
            b64 = base64.b64encode(store.read_file(r.uid, f["name"])).decode()
        except Exception as exc:  # noqa: BLE001 - a missing file is reported, not fatal
            images.append(f"<figure><figcaption>{_e(f['name'])}: {_e(exc)}</figcaption></figure>")
            continue
        images.append(f'<figure><img alt="{_e(f.get("label", f["name"]))}" src="data:image/png;base64,{b64}">'
                      f"<figcaption>{_e(f.get('label', f['name']))}</figcaption></figure>")
    if images:
        parts.append("<h3>Images</h3><div class='imgs'>" + "".join(images) + "</div>")
    if r.metrics:
        parts.append("<h3>Metrics</h3>" + _table(sorted(r.metrics.items())))
    if r.params:
        parts.append("<h3>Parameters</h3><pre>" + _e(json.dumps(r.params, indent=2, sort_keys=True)) + "</pre>")
    arrays = [f for f in r.files if f.get("kind") == "array"]
    if arrays:
        parts.append("<h3>Arrays (in the ZIP export)</h3>" + _table(
            [(f["name"], f"{f.get('dtype', '')} {'×'.join(map(str, f.get('shape', [])))}") for f in arrays]))
    if r.notes:
        parts.append("<h3>Notes and findings</h3>")
        for n in r.notes:
            when = datetime.fromtimestamp(n.created, tz=timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
            parts.append(f"<div class='note {_e(n.kind)}'><span class='muted'>{_e(n.kind)} · {_e(n.user or '(no login)')}"
                         f" · {when}</span><br>{_e(n.text)}</div>")
    card = r.context.get("model_card")
    if isinstance(card, dict):
        rows = [(k, v) for k, v in card.items() if k != "description"]
        parts.append("<details><summary>Model card</summary>" + _table(rows)
                     + (f"<p>{_e(card.get('description'))}</p>" if card.get("description") else "") + "</details>")
    req = r.context.get("request")
    if req:
        parts.append(f"<details><summary>Request (cache key)</summary><pre>{_e(req)}</pre></details>")
    parts.append("</section>")
    return "\n".join(parts)


def html_report(store: AuditStore, uids: Sequence[str], *, title: str = "convlens audit report",
                links: dict[str, str] | None = None, author: str = "") -> str:
    """The report of ``uids`` (in the given order). ``links``: uid -> URL of its view.

    Args:
        store: the audit trail the runs are read from.
        uids: the runs' uids, in report order (an unknown uid raises ``AuditError``).
        title: the report's heading and HTML title.
        links: uid -> URL of the run's view in the dashboard, or None for no links.
        author: who made the report, shown under the title ("" for nobody).
    """
    runs = [store.get(u) for u in uids]
    made = datetime.now(tz=timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    index = "".join(f"<li><a href='#run-{r.id}'>#{r.id}</a> {_e(r.when)} · {_e(r.page)} · "
                    f"{_e(r.title or r.method)}{' · ' + _e(r.verdict) if r.verdict else ''}</li>" for r in runs)
    body = "\n".join(_run_html(store, r, (links or {}).get(r.uid)) for r in runs)
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{_e(title)}</title>"
            f"<meta name='generator' content='convlens'><style>{_CSS}</style></head><body>"
            f"<h1>{_e(title)}</h1><p class='muted'>{len(runs)} run{'s' if len(runs) != 1 else ''} · made {made}"
            f"{' by ' + _e(author) if author else ''}</p><ol>{index}</ol>{body}</body></html>")
