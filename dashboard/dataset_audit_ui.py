"""The Data-set audit page's parts (pages/dataset_audit.py stays a thin script): the
evaluation, confusion view, saliency over many images, data-set trust and failure-slice tabs,
each reading its widgets, running its job through ``run_job`` and drawing the result."""
import json

import numpy as np
import pandas as pd
import streamlit as st

from analysis.core.errors import ConvlensError
from analysis.dataset.evaluate import (
    TrustReport,
    cell_members,
    evaluate,
    find_slices,
    randomisation_over_images,
    stratified_sample,
    summarise_saliency,
    trust_verdicts,
)
from analysis.saliency import registry
from analysis.saliency.trust import default_patch
from dashboard import dataset_ui as dui
from dashboard.widgets import run_job

SAL_METHODS = ["gradcam", "gradient", "guided_backprop", "smoothgrad", "integrated_gradients"]
TABS = ["Evaluation", "Saliency over many images", "Trust over many images", "Failure slices"]
ss = st.session_state
_STOPS_KEY = "_da_stops"     # Stop buttons drawn while a job runs in this run; emptied when the page is done


def new_run() -> None:
    """Start this run's list of Stop buttons (a rerun that interrupted the last run leaves
    that run's buttons to Streamlit, which clears what a run did not redraw)."""
    ss[_STOPS_KEY] = []


def clear_stop_buttons() -> None:
    """Empty the Stop buttons this run drew (its jobs are done): no stale Stop button."""
    for slot in ss.get(_STOPS_KEY) or []:
        slot.empty()
    ss[_STOPS_KEY] = []


def request_button(label: str, key: str, req_key: str, req: dict, help: str | None = None) -> dict | None:
    """A run button that stores the request (part of the link); while this run computes it a
    Stop button beside it clears the request (the click's rerun stops the job)."""
    c1, c2 = st.columns([1, 4])
    if c1.button(label, type="primary", key=key, help=help):
        ss[req_key] = req
        slot = c2.empty()
        slot.button("Stop", key=f"{key}_stop", on_click=lambda: ss.pop(req_key, None),
                    help="Stops the job; finished chunks are kept on disk and a new run resumes from them.")
        ss.setdefault(_STOPS_KEY, []).append(slot)
    return ss.get(req_key)


def evaluation_indices(req: dict, ds) -> np.ndarray:
    if req.get("scope") == "sample":
        return stratified_sample(ds.labels, int(req["n"]), seed=int(req["seed"]))
    return np.arange(len(ds), dtype=np.int64)


def get_evaluation(bundle, ds, mapping):
    """The evaluation requested in this view (None before one is requested)."""
    req = ss.get("da_eval_req")
    if not req:
        return None
    idx = evaluation_indices(req, ds)

    def compute(progress):
        res = dui.dataset_job("predict", bundle, ds, idx, {"top_k": 5}, progress)
        t = res.to_pandas(["index", "label"])
        ev = evaluate(t["label"].to_numpy(), res.array("top_ids"), res.array("confidence"), mapping,
                      indices=t["index"].to_numpy(), dataset_hash=ds.content_hash, model_id=bundle.model_id,
                      params={"scope": req.get("scope"), "n": int(len(idx)), "seed": req.get("seed"),
                              "skipped": len(res.skipped)})
        return ev
    key = ("da_eval", bundle.model_id, ds.content_hash, json.dumps(req, sort_keys=True), dui.mapping_key(mapping))
    return run_job(key, f"Evaluating on {len(idx):,} images", compute)


def caption_of(ds, bundle, ev, i: int) -> str:
    j = int(np.flatnonzero(ev.indices == i)[0])
    return (f"#{i} · {ds.class_names[ev.labels[j]]} → {bundle.categories[ev.preds[j]]} "
            f"({ev.confidences[j]:.0%})")


# ====================================================================== evaluation

def evaluation_tab(bundle, ds, mapping) -> None:
    c1, c2, c3 = st.columns(3)
    scope = c1.radio("Images", ["all", "sample"], horizontal=True, key="da_scope", persist_state="page",
                     format_func={"all": f"whole data set ({len(ds):,})", "sample": "stratified sample"}.get)
    n = int(c2.number_input("sample size", min(10, len(ds)), len(ds), min(500, len(ds)), 50, key="da_n", persist_state="page",
                            disabled=scope != "sample", help="Drawn per class in proportion to its size."))
    seed = int(c3.number_input("seed", 0, 10_000, 0, key="da_seed", persist_state="page", disabled=scope != "sample"))
    req = request_button("Evaluate", "da_eval", "da_eval_req", {"scope": scope, "n": n, "seed": seed})
    if not req:
        st.info("Press **Evaluate** to run the model on the data set (batched; the predictions are stored on "
                "disk, so the next evaluation of the same images is immediate).")
        return
    ev = get_evaluation(bundle, ds, mapping)
    m1, m2, m3, m4 = st.columns(4)
    def fmt(v):
        return "—" if not np.isfinite(v) else f"{v:.1%}"

    m1.metric("Accuracy", fmt(ev.accuracy))
    m2.metric("Top-5 accuracy", fmt(ev.top5_accuracy))
    m3.metric("Calibration error (ECE)", "—" if not np.isfinite(ev.ece) else f"{ev.ece:.3f}")
    m4.metric("Images scored", f"{ev.n_scored:,} / {ev.n_images:,}")
    for w in ev.warnings:
        st.warning(w)
    if ev.n_scored == 0:
        counts = pd.Series([bundle.categories[p] for p in ev.preds]).value_counts().head(10)
        st.markdown("**What the model predicts on this data set** (most frequent model classes):")
        st.dataframe(counts.rename("images"), width="content")
        return
    view = st.radio("Show", ["Confusion matrix", "Per class", "Calibration", "Errors"], horizontal=True,
                    key="da_view", persist_state="page")
    if view == "Confusion matrix":
        confusion_view(bundle, ds, ev)
    elif view == "Per class":
        st.dataframe(pd.DataFrame(ev.per_class_rows()), hide_index=True, width="stretch",
                     column_config={c: st.column_config.NumberColumn(format="%.3f")
                                    for c in ("precision", "recall", "f1")})
        st.caption("scikit-learn's precision / recall / F1 per data-set class, over the scored images; a "
                   "prediction of an unmapped model class counts against recall.")
    elif view == "Calibration":
        st.plotly_chart(dui.reliability_figure(ev.calibration), key="da_rel_fig", width="stretch")
        st.caption(f"Reliability diagram (15 equal-width bins): bars are each bin's accuracy, red dots its mean "
                   f"confidence. Expected calibration error {ev.ece:.3f}, largest gap {ev.calibration.mce:.3f}. "
                   "Bars below the diagonal: over-confident.")
    else:
        st.markdown("**Most confident errors**")
        dui.image_grid(ds, bundle, ev.confident_errors, "da_err",
                       captions=[caption_of(ds, bundle, ev, i) for i in ev.confident_errors])
        st.markdown("**Least confident correct predictions**")
        dui.image_grid(ds, bundle, ev.unsure_correct, "da_unsure",
                       captions=[caption_of(ds, bundle, ev, i) for i in ev.unsure_correct])


def default_cell(ev) -> tuple[int, int]:
    cm = ev.confusion.copy()
    k = cm.shape[0]
    cm[np.arange(k), np.arange(k)] = -1
    r, c = np.unravel_index(int(np.argmax(cm)), cm.shape)
    return int(r), int(c) if c < k else -1


def confusion_view(bundle, ds, ev) -> None:
    k = len(ds.class_names)
    norm = st.toggle("Share of each row", key="da_cm_norm", persist_state="page")
    fig = dui.confusion_figure(ev.confusion, ds.class_names, norm)
    event = st.plotly_chart(fig, key="da_cm_fig", on_select="rerun", selection_mode="points", width="stretch")
    pts = (event or {}).get("selection", {}).get("points", []) if isinstance(event, dict) else \
        getattr(getattr(event, "selection", None), "points", []) or []
    # the invisible scatter (trace 1) has one point per cell, row-major over (K, K + 1)
    hit = next((int(p["point_index"]) for p in pts if p.get("curve_number") == 1 and p.get("point_index") is not None),
               None)
    if hit is not None and hit != ss.get("_da_cm_last"):
        ss["_da_cm_last"] = hit
        row, col = divmod(hit, ev.confusion.shape[1])
        ss["da_cell_r"], ss["da_cell_c"] = int(row), (int(col) if col < k else -1)
    if "da_cell_r" not in ss:
        ss["da_cell_r"], ss["da_cell_c"] = ss.get("da_cell") or default_cell(ev)
    cols_opts = list(range(k)) + [-1]
    c1, c2 = st.columns(2)
    r = c1.selectbox("True class", list(range(k)), key="da_cell_r", persist_state="page", format_func=lambda i: ds.class_names[i])
    c = c2.selectbox("Predicted as", cols_opts, key="da_cell_c", persist_state="page",
                     format_func=lambda i: ds.class_names[i] if i >= 0 else "(a model class no data-set class claims)")
    ss["da_cell"] = [int(r), int(c)]                # kept (and linked) while other tabs are shown
    members = cell_members(ev, r, c)
    st.markdown(f"**{len(members):,} image(s): true {ds.class_names[r]} → predicted "
                f"{ds.class_names[c] if c >= 0 else 'unmapped'}** (click a cell of the matrix or pick it above)")
    dui.image_grid(ds, bundle, members, "da_cell", captions=[caption_of(ds, bundle, ev, i) for i in members[:48]])


# ====================================================================== batch saliency

def subset_indices(req: dict, ds, ev) -> np.ndarray:
    kind, n, seed = req["subset"], int(req["n"]), int(req.get("seed", 0))
    rng = np.random.default_rng(seed)
    if kind == "cell":
        if ev is None:
            raise ConvlensError("Evaluate first: a confusion cell needs the predictions.")
        idx = cell_members(ev, int(req["cell"][0]), int(req["cell"][1]))
    elif kind == "errors":
        if ev is None:
            raise ConvlensError("Evaluate first: the errors need the predictions.")
        idx = ev.indices[ev.scorable & ~ev.correct]
    elif kind == "class":
        idx = np.flatnonzero(ds.labels == int(req["cls"]))
    else:
        idx = stratified_sample(ds.labels, n, seed)
    if len(idx) > n:
        idx = np.sort(rng.choice(idx, size=n, replace=False))
    if not len(idx):
        raise ConvlensError("This subset has no images.")
    return np.asarray(idx, dtype=np.int64)


def batch_saliency(bundle, ds, idx, method: str, target: str, subset: str):
    def compute(progress):
        res = dui.dataset_job("saliency", bundle, ds, idx, {"method": method, "target": target}, progress)
        t = res.to_pandas(["index", "label", "pred", "target", "mass_mask"])
        return summarise_saliency(t["index"].to_numpy(), t["label"].to_numpy(), t["pred"].to_numpy(),
                                  t["target"].to_numpy(), res.array("map"), method, subset=subset,
                                  mask_share=t["mass_mask"].to_numpy(), dataset_hash=ds.content_hash,
                                  params={"method": method, "target": target, "subset": subset, "n": len(idx)})
    key = ("da_sal", bundle.model_id, ds.content_hash, method, target, tuple(int(i) for i in idx))
    return run_job(key, f"{registry.title(method)} on {len(idx)} images", compute)


def saliency_tab(bundle, ds, mapping, ev) -> None:
    c1, c2, c3 = st.columns(3)
    subsets = ["random", "class"] + (["cell", "errors"] if ev is not None else [])
    subset = c1.radio("Images", subsets, horizontal=True, key="da_sal_subset", persist_state="page", format_func={
        "random": "random sample", "class": "a class", "cell": "the confusion cell", "errors": "the errors"}.get)
    cls = c1.selectbox("Class", list(range(len(ds.class_names))), key="da_sal_class", persist_state="page",
                       format_func=lambda i: ds.class_names[i], disabled=subset != "class")
    n = int(c2.number_input("at most N images", 1, 200, 24, key="da_sal_n", persist_state="page"))
    method = c2.selectbox("Method", SAL_METHODS, key="da_sal_method", persist_state="page", format_func=lambda m: registry.title(m))
    can_label = mapping.status == "identity"
    target = c3.radio("Each image's target", ["pred", "label"], key="da_sal_target", persist_state="page", horizontal=True,
                      format_func={"pred": "predicted class", "label": "true class"}.get,
                      disabled=not can_label,
                      help=None if can_label else "The true class needs the model's and the data set's classes to "
                                                  "be the same; with a mapping the predicted class is explained.")
    target = target if can_label else "pred"
    seed = int(c3.number_input("seed", 0, 10_000, 0, key="da_sal_seed", persist_state="page"))
    cell = ss.get("da_cell") or (list(default_cell(ev)) if ev is not None else [0, 0])
    req = request_button("Run batch saliency", "da_sal_run", "da_sal_req",
                         {"subset": subset, "cls": int(cls), "n": n, "method": method, "target": target,
                          "seed": seed, "cell": cell})
    if not req:
        st.info("Choose images and a method, then **Run batch saliency**: one map per image, each for its own "
                "target, with the mean map per class and how much of the saliency lies in the image centre.")
        return
    idx = subset_indices(req, ds, ev)
    bs = batch_saliency(bundle, ds, idx, req["method"], req["target"], req["subset"])
    mass = bs.mass
    st.markdown(f"**{registry.title(bs.method)}** on {len(bs.indices)} images "
                f"({ {'random': 'random sample', 'class': 'class ' + ds.class_names[int(req['cls'])], 'cell': 'confusion cell', 'errors': 'errors'}[req['subset']]})")
    a, b, c = st.columns(3)
    a.metric("Saliency inside the central quarter", "—" if not np.isfinite(mass.mean_inside) else
             f"{mass.mean_inside:.0%}", help="Share of each map's positive mass inside the centre box (half the "
             "width and height), averaged over the images.")
    b.metric("A uniform map would give", f"{mass.area:.0%}")
    c.metric("Constant maps", f"{bs.n_flat}")
    if np.isfinite(mass.ci[0]):
        st.caption(f"95 % confidence interval of the mean share inside: [{mass.ci[0]:.0%}, {mass.ci[1]:.0%}] over "
                   f"{len(mass.inside) - mass.n_empty} maps with positive mass.")
    if bs.mask_mass is not None:
        st.caption(f"Inside the data set's object masks: {bs.mask_mass.mean_inside:.0%} "
                   f"(95 % CI [{bs.mask_mass.ci[0]:.0%}, {bs.mask_mass.ci[1]:.0%}]).")
    if bs.n_flat:
        st.warning(f"{bs.n_flat} map(s) are constant (no evidence for the target anywhere): they carry no "
                   "information and count as empty.")
    st.markdown("**Class-mean maps** (each map normalised to unit mass, so every image weighs the same)")
    if len(bs.class_ids):
        st.image([dui.heat_image(m, 96) for m in bs.class_means], width=96,
                 caption=[f"{ds.class_names[int(k)]} ({int((bs.labels == k).sum())})" for k in bs.class_ids])
    st.markdown("**Maps** (target in brackets)")
    crops = [bundle.preprocess.geometry(ds.get(int(i))) for i in bs.indices[:48]]
    dui.image_grid(ds, bundle, bs.indices, "da_sal", per_row=6, width=112,
                   images=[dui.overlay_map(cr, m, 112) for cr, m in zip(crops, bs.maps)],
                   captions=[f"#{i} · {ds.class_names[l]} ({bundle.categories[t]})"
                             for i, l, t in zip(bs.indices[:48], bs.labels, bs.targets)])


# ====================================================================== trust

def trust_tab(bundle, ds, mapping, ev) -> None:
    st.markdown("**Deletion and insertion over many images** (Petsiuk et al. 2018): each image's map against "
                "several random maps of the same image; the verdict rests on the paired difference's 95 % "
                "interval, and *beats random* counts the images where the method is better than every random map.")
    methods = st.multiselect("Methods", SAL_METHODS, default=["gradcam", "gradient"], key="da_tr_methods", persist_state="page",
                             format_func=lambda m: registry.title(m))
    c1, c2, c3 = st.columns(3)
    n = int(c1.number_input("N images", 2, 200, 40, key="da_tr_n", persist_state="page",
                            help="A stratified sample of the data set."))
    steps = int(c2.number_input("steps", 4, 64, 16, key="da_tr_steps", persist_state="page"))
    # measured (docs/dataset_audit.md, docs/saliency.md): black squares of 1/4 of the side separate real maps
    # from random on the default model and on digits; blur leaves a digit readable and separates nothing.
    subs = ["zero", "blur", "mean"]
    substrate = c2.selectbox("deleted pixels become", subs, key="da_tr_sub", persist_state="page",
                             format_func={"zero": "black", "blur": "blurred", "mean": "mean colour"}.get)
    dp = default_patch(bundle.input_size)
    patch = int(c3.selectbox("delete in", [0, 1, 2, 4, 8, 16, 32, 56], key="da_tr_patch", persist_state="page",
                             format_func=lambda p: f"{dp}×{dp} patches (1/4 of the side, measured)" if p == 0 else
                             ("single pixels" if p == 1 else f"{p}×{p} patches")))
    n_random = int(c3.number_input("random maps per image", 1, 10, 3, key="da_tr_rand", persist_state="page"))
    seed = int(c1.number_input("seed", 0, 10_000, 0, key="da_tr_seed", persist_state="page"))
    req = request_button("Run the trust check", "da_tr_run", "da_tr_req",
                         {"n": n, "methods": methods, "steps": steps, "substrate": substrate, "patch": patch,
                          "n_random": n_random, "seed": seed})
    if req and req.get("methods"):
        idx = stratified_sample(ds.labels, int(req["n"]), seed=int(req["seed"]))
        report = trust_report(bundle, ds, idx, req)
        for v in report.verdicts:
            title = registry.title(v.method)
            (st.success if v.verdict == "better than random" else st.error if v.verdict == "worse than random"
             else st.warning)(f"**{title}** · " + v.sentence.split(" · ", 1)[1])
        f1, f2 = st.columns(2)
        f1.plotly_chart(dui.auc_figure(report.verdicts, "deletion"), key="da_tr_del", width="stretch")
        f2.plotly_chart(dui.auc_figure(report.verdicts, "insertion"), key="da_tr_ins", width="stretch")
        st.dataframe(pd.DataFrame([{"method": registry.title(v.method),
                                    "curve": v.kind, "images": v.n, "mean AUC": v.mean,
                                    "95 % CI": f"[{v.ci[0]:.3f}, {v.ci[1]:.3f}]", "random AUC": v.random_mean,
                                    "beats random on": f"{v.beats:.0%}", "verdict": v.verdict}
                                   for v in report.verdicts]), hide_index=True, width="stretch")
    elif req:
        st.warning("Choose at least one method.")
    st.divider()
    st.markdown("**Model randomisation over many images** (Adebayo et al. 2018): the distribution of the "
                "Spearman ρ between each image's map and its map on a model randomised from the top down. "
                "A method that explains the model falls towards 0 as layers are randomised.")
    r1, r2, r3 = st.columns(3)
    rn = int(r1.number_input("N images", 2, 50, 8, key="da_rn_n", persist_state="page"))
    rmethods = r2.multiselect("Methods", SAL_METHODS, default=["gradcam", "gradient"], key="da_rn_methods", persist_state="page",
                              format_func=lambda m: registry.title(m))
    rsteps = int(r3.slider("randomisation steps", 2, 12, 5, key="da_rn_steps", persist_state="page"))
    rreq = request_button("Run randomisation", "da_rn_run", "da_rn_req",
                          {"n": rn, "methods": rmethods, "steps": rsteps})
    if rreq and rreq.get("methods"):
        idx = stratified_sample(ds.labels, int(rreq["n"]), seed=0)
        key = ("da_rand", bundle.model_id, ds.content_hash, json.dumps(rreq, sort_keys=True))
        res = run_job(key, f"Randomisation check on {len(idx)} images", lambda p: randomisation_over_images(
            bundle, ds.get_many(idx), [None] * len(idx), rreq["methods"], indices=idx, max_steps=int(rreq["steps"]),
            progress=p, dataset_hash=ds.content_hash))
        if res is not None:
            st.plotly_chart(dui.rho_figure(res.layers, {m: {"rho": r} for m, r in res.rho.items()}),
                            key="da_rn_fig", width="stretch")
            st.caption(" · ".join(f"{registry.title(m)}: median ρ {res.median[m][0]:.2f} after the top layer, "
                                  f"{res.median[m][-1]:.2f} fully randomised" for m in res.rho))
            for w in res.warnings:
                st.warning(w)


def trust_report(bundle, ds, idx, req) -> TrustReport:
    def compute(progress):
        aucs, rand = {}, None
        total = len(req["methods"]) * len(idx)
        for k, m in enumerate(req["methods"]):
            params = {"method": m, "steps": int(req["steps"]), "substrate": req["substrate"],
                      "patch": int(req["patch"]), "n_random": int(req["n_random"]), "seed": int(req["seed"])}
            res = dui.dataset_job("trust", bundle, ds, idx, params,
                                  lambda d, t, k=k: progress(k * len(idx) + d, total))
            aucs[m] = {"deletion": res.array("deletion_auc"), "insertion": res.array("insertion_auc")}
            if rand is None:
                rand = {"deletion": res.array("random_deletion_auc"), "insertion": res.array("random_insertion_auc")}
        return TrustReport(method="trust", verdicts=trust_verdicts(aucs, rand), indices=np.asarray(idx),
                           params=dict(req), dataset_hash=ds.content_hash)
    key = ("da_trust", bundle.model_id, ds.content_hash, json.dumps(req, sort_keys=True))
    return run_job(key, f"Deletion / insertion on {len(idx)} images", compute)


# ====================================================================== slices

def slices_tab(bundle, ds, mapping, ev) -> None:
    if ev is None or ev.n_scored == 0:
        st.info("Slices need scored predictions: run **Evaluation** first (with a class mapping if the model's "
                "classes differ from the data set's).")
        return
    st.markdown("Groups of images close together in the model's feature space (k-means on the penultimate "
                "layer) ranked by error rate: where the model fails systematically.")
    c1, c2 = st.columns(2)
    k = int(c1.number_input("clusters (k)", 2, 64, 8, key="da_sl_k", persist_state="page"))
    min_size = int(c2.number_input("minimum slice size", 2, 1000, 10, key="da_sl_min", persist_state="page"))
    req = request_button("Find slices", "da_sl_run", "da_sl_req", {"k": k, "min": min_size})
    if not req:
        return
    scored = ev.indices[ev.scorable]
    wrong = ~ev.correct[ev.scorable]
    labels = ev.labels[ev.scorable]

    def compute(progress):
        res = dui.dataset_job("features", bundle, ds, scored, {}, progress)
        t = res.to_pandas(["index"])
        order = {int(i): j for j, i in enumerate(t["index"].to_numpy())}
        keep = np.array([int(i) in order for i in scored])
        feats = res.array("features")[[order[int(i)] for i in scored[keep]]]
        return find_slices(feats, wrong[keep], labels[keep], indices=scored[keep], n_clusters=min(int(req["k"]), int(keep.sum())),
                           min_size=int(req["min"]), dataset_hash=ds.content_hash)
    key = ("da_slices", bundle.model_id, ds.content_hash, tuple(int(i) for i in scored), tuple(wrong.tolist()),
           json.dumps(req, sort_keys=True))
    sr = run_job(key, f"Features and clusters of {len(scored):,} images", compute)
    st.caption(f"Overall error rate {sr.overall_error_rate:.1%}; {len(sr.slices)} clusters of at least "
               f"{req['min']} images.")
    if not sr.slices:
        st.info("No cluster is large enough; lower the minimum size or the number of clusters.")
        return
    st.dataframe(pd.DataFrame([{"slice": s.cluster, "images": s.size, "errors": s.errors, "error rate": s.error_rate,
                                "× mean": s.lift, "p (binomial)": s.p_value,
                                "main classes": ", ".join(f"{ds.class_names[c]} ({n})" for c, n in s.top_classes)}
                               for s in sr.slices]), hide_index=True, width="stretch",
                 column_config={"error rate": st.column_config.NumberColumn(format="%.1%%"),
                                "× mean": st.column_config.NumberColumn(format="%.2f"),
                                "p (binomial)": st.column_config.NumberColumn(format="%.2g")})
    worst = [s for s in sr.slices[:3] if s.errors > 0]
    shown = np.concatenate([s.indices[:8] for s in worst]) if worst else np.zeros(0, np.int64)
    bs = batch_saliency(bundle, ds, shown, "gradcam", "pred", "slices") if len(shown) else None
    maps = dict(zip(bs.indices.tolist(), bs.maps)) if bs is not None else {}
    for s in worst:
        st.markdown(f"**Slice {s.cluster}**: {s.size} images, error rate {s.error_rate:.0%} "
                    f"({s.lift:.1f}× the mean)")
        show = s.indices[:8]
        dui.image_grid(ds, bundle, show, f"da_sl{s.cluster}", per_row=8,
                       captions=[f"#{i} · {ds.class_names[int(ds.labels[i])]}" + (" ✗" if i in set(ev.indices[ev.scorable & ~ev.correct].tolist()) else "")
                                 for i in show])
        if maps:
            st.image([dui.overlay_map(bundle.preprocess.geometry(ds.get(int(i))), maps[int(i)], 64) for i in show],
                     width=64, caption=["Grad-CAM"] * len(show))
