"""Data-set audit: where does the model fail, does it look at the object, and is a saliency
method better than chance on *these* images? Evaluation, batch saliency, data-set-level
trust and failure slices, all on the sidebar's model and data set (parts in
dashboard/dataset_audit_ui.py)."""
import streamlit as st

from dashboard import dataset_ui as dui
from dashboard import state
from dashboard.dataset_audit_ui import (
    TABS,
    clear_stop_buttons,
    evaluation_tab,
    get_evaluation,
    new_run,
    saliency_tab,
    slices_tab,
    trust_tab,
)
from dashboard.errors import guard
from dashboard.text import plain

st.title("Data-set audit")
st.caption("The model on a whole data set: accuracy, confusions and calibration; saliency over many "
           "images; deletion / insertion and randomisation checks with a verdict over N images; and the "
           "slices of the feature space where it fails. Click any image's **Explain** to make it the "
           "subject of every page.")
ss = st.session_state
new_run()

# ====================================================================== page

with guard("Data-set audit"):
    bundle = state.current_bundle()
    ds = state.current_dataset()
    st.caption(f"Model **{plain(bundle.name)}** ({bundle.num_classes:,} classes) on data set **{plain(ds.name)}** "
               f"({len(ds):,} images, {len(ds.class_names)} classes) — change either in the sidebar.")
    mapping = dui.current_mapping(bundle, ds)
    with st.expander(f"Class mapping · {mapping.status}", expanded=mapping.status in ("none", "partial"),
                     icon=":material/swap_horiz:"):
        mapping = dui.mapping_editor(bundle, ds)
    dui.engine_choice()
    if mapping.status == "identity":
        pass
    elif mapping.status == "none":
        st.warning("The model's classes and the data set's differ: no accuracy is shown until classes are mapped "
                   "(open **Class mapping**).")
    tab = st.tabs(TABS, key="da_tab", on_change="rerun")
    with guard("Evaluation"):
        ev = get_evaluation(bundle, ds, mapping) if ss.get("da_eval_req") else None
    for t, name in zip(tab, TABS):
        if not t.open:
            continue
        with t, guard(name):
            if name == TABS[0]:
                evaluation_tab(bundle, ds, mapping)
            elif name == TABS[1]:
                saliency_tab(bundle, ds, mapping, ev)
            elif name == TABS[2]:
                trust_tab(bundle, ds, mapping, ev)
            else:
                slices_tab(bundle, ds, mapping, ev)
    clear_stop_buttons()          # the jobs of this run are done: no stale Stop button
