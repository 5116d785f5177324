"""Record a finished data-set job in the audit trail (page "dataset"), so the dashboard
lists it and can open it (the run's ``context["job"]`` is the JobSpec, ``context["result"]``
the output folder, ``view`` points the data-set audit page at the job key)."""
from __future__ import annotations

import numpy as np

from analysis.audit.trail import AuditStore, RunInput, Summary, open_store
from analysis.dataset.executor import JobResult

PAGE = "dataset"


def job_metrics(result: JobResult) -> dict:
    """Headline numbers of a job's rows (read from only the columns they need).

    Args:
        result: a job result; counts are always given (images, rows, skipped), means
            (confidence, mass in the centre / mask, deletion / insertion AUC, share that beats
            every random map) only for the columns its kind has and when it has rows.
    """
    m = {"n_images": result.n_images, "n_rows": result.n_rows, "n_skipped": len(result.skipped)}
    cols = set(result.meta.get("columns", []))
    if not result.n_rows:
        return m
    if "confidence" in cols:
        m["mean_confidence"] = float(np.mean(result.array("confidence")))
    if "mass_centre" in cols:
        mc = result.array("mass_centre")
        m["mean_mass_centre"] = float(np.nanmean(mc)) if np.isfinite(mc).any() else float("nan")
    if "mass_mask" in cols:
        mm = result.array("mass_mask")
        if np.isfinite(mm).any():
            m["mean_mass_mask"] = float(np.nanmean(mm))
    if "deletion_auc" in cols:
        d, i = result.array("deletion_auc"), result.array("insertion_auc")
        m["mean_deletion_auc"], m["mean_insertion_auc"] = float(d.mean()), float(i.mean())
        rd = result.array("random_deletion_auc")
        if rd.size:
            # share of images whose map deletes faster (lower AUC) than every random map
            m["beats_random_deletion"] = float(np.mean(np.all(d[:, None] < rd.reshape(len(d), -1), axis=1)))
    return m


def record_job(result: JobResult, *, user: str = "", store: AuditStore | None = None, source: str = "cli") -> str:
    """Write ``result`` (complete or not) to the audit trail; returns the run's uid.

    Args:
        result: the job's result.
        user: who ran it (the CLI uses the login name).
        store: the audit store (default: the configured one).
        source: where it ran from ("cli", "dashboard").
    """
    store = store or open_store()
    meta, spec = result.meta, result.spec
    params = dict(result.params)
    run = RunInput(
        user=user, page=PAGE, model_id=meta.get("model_id", ""), model_name=meta.get("model_name", ""),
        dataset_hash=meta.get("dataset_hash", ""), dataset_label=meta.get("dataset_label", ""),
        context={"job": spec.to_dict(), "key": result.key, "result": str(result.path), "complete": result.complete,
                 "engine": meta.get("engine", ""), "source": source, "skipped": result.skipped[:200],
                 "warnings": result.warnings()},
        view={"page": PAGE, "params": {"job": result.key}})
    title = f"{spec.kind} over {meta.get('dataset_label', '')} ({result.n_rows} images)"
    if not result.complete:
        title += " (stopped, incomplete)"
    summary = Summary(title=title, method=str(params.get("method", spec.kind)), layer=str(params.get("layer", "")),
                      seed=params.get("seed"), seconds=meta.get("seconds"),
                      params={**params, "kind": spec.kind, "batch_size": spec.batch_size},
                      metrics=job_metrics(result))
    return store.record(run, summary)
