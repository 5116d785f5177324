"""Audit trail: every computed result with exactly what produced it. Filter, open a run
(its view comes back through its share link), add notes / findings and a verdict, compare
two runs side by side, export an HTML report or a ZIP of the raw arrays, delete."""
import streamlit as st

from analysis.audit.trail import NOTE_KINDS, VERDICTS
from dashboard import audit_ui, share
from dashboard.errors import guard
from dashboard.text import plain

st.title("Audit trail")
st.caption("Every result computed on any page is recorded here: when, by whom, on which model, image and "
           "data set, with which layer, method, parameters and seed, its metrics and its arrays.")

with guard("Audit trail"):
    if not audit_ui.enabled():
        st.info("The audit trail is switched off on this server ([audit] enabled = false).")
        st.stop()
    store = audit_ui.store()
    owner = audit_ui.visible_user()
    f1, f2, f3, f4 = st.columns([2, 2, 3, 1])
    page_names = [p for p in share.page_names() if p != "audit"]
    pages = f1.multiselect("Pages", page_names, key="au_pages")
    verdicts = f2.multiselect("Verdict", list(VERDICTS), format_func=audit_ui.verdict_label, key="au_verdicts")
    text = f3.text_input("Search (title, method, layer, model, image, notes)", key="au_text")
    limit = int(f4.number_input("Show", 10, 2000, 200, 10, key="au_limit"))
    runs = store.list_runs(user=owner, pages=pages, verdicts=verdicts, text=text, limit=limit)
    st.caption(f"{len(runs)} run{'s' if len(runs) != 1 else ''} shown"
               + (f" (yours, {owner})" if owner else "") + ".")
    st.dataframe(audit_ui.runs_frame(runs).drop(columns=["uid"]), hide_index=True, width="stretch",
                 height=min(420, 38 + 35 * max(1, len(runs))))

    by_uid = {r.uid: r for r in runs if audit_ui.may_see(r)}
    sel = st.session_state.get("au_sel")
    for uid in audit_ui.visible_uids(sel if isinstance(sel, list) else []):   # opened by link: visible ones only
        by_uid.setdefault(uid, audit_ui.get_visible(uid))
    if isinstance(sel, list) and any(u not in by_uid for u in sel):
        st.session_state["au_sel"] = [u for u in sel if u in by_uid]       # never offer a foreign run
    selected = st.multiselect("Select runs (one: details; two: side by side; any: export or delete)",
                              list(by_uid), key="au_sel", format_func=lambda u: audit_ui.run_label(by_uid[u]))
    chosen = [by_uid[u] for u in selected if u in by_uid]
    if not chosen:
        st.info("Select one or more runs above.")
        st.stop()

    if len(chosen) == 1:
        r = chosen[0]
        st.subheader(plain(audit_ui.run_label(r)))
        left, right = st.columns([3, 2])
        with left:
            audit_ui.show_images(r)
            st.markdown("**Parameters**")
            st.dataframe(audit_ui.params_frame([r]), width="stretch")
        with right:
            st.markdown(f"**{r.when}** · {plain(r.user or '(no login)')} · page {plain(r.page)}  \n"
                        f"Model **{plain(r.model_name)}** (`{r.model_id[:16]}`)  \nImage **{plain(r.image_label)}** "
                        f"(`{r.image_hash[:16]}`)" + (f"  \nData set **{plain(r.dataset_label)}**" if r.dataset_label else ""))
            st.markdown(f"[Open this view in a new tab]({audit_ui.view_link(r)})")
            if st.button("Open this view here", key="au_open_here", icon=":material/open_in_browser:"):
                share.open_view(r.view or {"page": r.page})
            if r.metrics:
                st.markdown("**Metrics**")
                st.dataframe(audit_ui.metrics_frame([r]), width="stretch")
            st.markdown("**Verdict**")
            v1, v2 = st.columns([3, 1])
            verdict = v1.selectbox("Verdict", list(VERDICTS), index=list(VERDICTS).index(r.verdict)
                                   if r.verdict in VERDICTS else 0, format_func=audit_ui.verdict_label,
                                   key=f"_au_verdict_{r.uid}", label_visibility="collapsed")
            if v2.button("Save", key="_au_verdict_save"):
                audit_ui.set_verdict(r.uid, verdict)
                st.rerun()
            st.markdown(f"**Notes and findings** ({len(r.notes)})")
            for n in r.notes:
                st.markdown(f"*{plain(n.kind)} · {plain(n.user or '(no login)')}*: {plain(n.text, one_line=False)}")
            with st.form("_au_note_form", clear_on_submit=True):
                note = st.text_area("Add a note or finding", key="_au_note_text")
                kind = st.radio("Kind", list(NOTE_KINDS), horizontal=True, key="_au_note_kind")
                if st.form_submit_button("Add"):
                    audit_ui.add_note(r.uid, note, kind)
                    st.rerun()
    elif len(chosen) == 2:
        st.subheader("Side by side")
        cols = st.columns(2)
        for col, r in zip(cols, chosen):
            with col:
                st.markdown(f"**{plain(audit_ui.run_label(r))}**  \n[open its view]({audit_ui.view_link(r)})")
                audit_ui.show_images(r, width=200, limit=6)
        st.markdown("**Metrics**")
        st.dataframe(audit_ui.metrics_frame(chosen), width="stretch")
        st.markdown("**Parameters** (≠: differs)")
        st.dataframe(audit_ui.params_frame(chosen), width="stretch")

    st.divider()
    uids = [r.uid for r in chosen]
    links = {r.uid: audit_ui.view_link(r) for r in chosen}
    e1, e2, e3 = st.columns(3)
    e1.download_button("HTML report", lambda: audit_ui.report_html(uids, links=links),
                       "convlens-report.html", "text/html", key="_au_report", icon=":material/description:",
                       help="One self-contained file: images, parameters, metrics, notes, model cards.")
    e2.download_button("ZIP of raw arrays", lambda: audit_ui.export_zip(uids), "convlens-runs.zip",
                       "application/zip", key="_au_zip", icon=":material/folder_zip:")
    if st.session_state.get("_au_confirm") != uids:
        if e3.button(f"Delete {len(uids)} run{'s' if len(uids) > 1 else ''}…", key="_au_delete",
                     icon=":material/delete:"):
            st.session_state["_au_confirm"] = uids
            st.rerun()
    else:
        st.warning(f"Delete {len(uids)} run{'s' if len(uids) > 1 else ''} with their notes and files? "
                   "This cannot be undone.")
        y, n = st.columns([1, 5])
        if y.button("Yes, delete", type="primary", key="_au_delete_yes"):
            done = audit_ui.delete(uids)
            st.session_state.pop("_au_confirm", None)
            st.session_state.pop("au_sel", None)
            st.success(f"Deleted {done} run{'s' if done != 1 else ''}.")
            st.rerun()
        if n.button("Cancel", key="_au_delete_no"):
            st.session_state.pop("_au_confirm", None)
            st.rerun()
