"""Do two models agree on a data set? Agreement rate, the disagreement set, per-class accuracy.

Predictions come from the data-set executor (``predict`` jobs, cached by model hash + data
hash); this module is the pure comparison. A data set's labels are compared with a model's
predictions by class *name* (data-set class "cat" = the model's class named "cat"), or by
index when the data set's classes are ``0..k-1`` numbers; classes a model does not have
count as errors of that model, and when no class matches at all accuracy is not defined.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from analysis.core.errors import ParameterError


def label_to_model(class_names, categories) -> np.ndarray:
    """For each data-set class, the index of the model's class of the same name (case and
    spaces ignored), or -1. Data sets with numbered classes ("0", "1", ...) map by number.

    Args:
        class_names: the data set's class names.
        categories: the model's class names.
    """
    norm = {str(c).strip().lower(): i for i, c in enumerate(categories)}
    out = []
    for name in class_names:
        s = str(name).strip().lower()
        if s in norm:
            out.append(norm[s])
        elif s.isdigit() and int(s) < len(categories) and not any(k.isdigit() for k in norm):
            out.append(int(s))
        else:
            out.append(-1)
    return np.asarray(out, np.int64)


@dataclass
class Agreement:
    """Comparison of models A and B on ``n`` images (``index`` their data-set positions).

    ``agreement``: share of images where both predict the same class name; ``disagree``:
    positions (into ``index``) where they differ; ``accuracy_a`` / ``accuracy_b``: overall
    (NaN when no data-set class maps to the model); ``per_class``: rows of class name, images,
    accuracy of A, accuracy of B; ``errors_a`` / ``errors_b``: positions each model gets wrong.
    """
    n: int
    index: np.ndarray
    pred_a: np.ndarray
    pred_b: np.ndarray
    labels: np.ndarray
    agreement: float
    disagree: np.ndarray
    accuracy_a: float
    accuracy_b: float
    per_class: list[dict]
    errors_a: np.ndarray
    errors_b: np.ndarray
    method: str = "agreement"
    warnings: list[str] = field(default_factory=list)


def compare_predictions(pred_a, pred_b, labels, class_names, categories_a, categories_b, index=None) -> Agreement:
    """Agreement of two models' predictions over the same images.

    Args:
        pred_a, pred_b: predicted class indices of A and B (each in its own class list).
        labels: data-set labels (indices into ``class_names``).
        class_names: the data set's classes.
        categories_a, categories_b: the models' class names (A and B may differ: agreement
            compares class names).
        index: data-set positions of the rows (default 0..n-1).
    """
    pa, pb, y = (np.asarray(v, np.int64) for v in (pred_a, pred_b, labels))
    if not (len(pa) == len(pb) == len(y)):
        raise ParameterError("Both models must be compared on the same images.")
    n = len(y)
    if n == 0:
        raise ParameterError("No images to compare.")
    idx = np.arange(n) if index is None else np.asarray(index, np.int64)
    name_a = np.asarray([str(categories_a[i]).strip().lower() for i in pa])
    name_b = np.asarray([str(categories_b[i]).strip().lower() for i in pb])
    same = name_a == name_b
    warnings = []
    if list(categories_a) != list(categories_b):
        warnings.append("The two models have different class lists; predictions are matched by class name.")
    map_a, map_b = label_to_model(class_names, categories_a), label_to_model(class_names, categories_b)
    true_a, true_b = map_a[y], map_b[y]
    ok_a, ok_b = pa == true_a, pb == true_b
    acc_a = float(ok_a.mean()) if (map_a >= 0).any() else float("nan")
    acc_b = float(ok_b.mean()) if (map_b >= 0).any() else float("nan")
    for tag, m in (("A", map_a), ("B", map_b)):
        if not (m >= 0).any():
            warnings.append(f"None of the data set's classes is a class of model {tag}: its accuracy is undefined.")
        elif (m < 0).any():
            warnings.append(f"{int((m < 0).sum())} data-set class(es) are not classes of model {tag}; their images "
                            "count as its errors.")
    per_class = []
    for c, name in enumerate(class_names):
        sel = y == c
        if sel.any():
            per_class.append({"class": str(name), "images": int(sel.sum()),
                              "accuracy A": float(ok_a[sel].mean()) if map_a[c] >= 0 else float("nan"),
                              "accuracy B": float(ok_b[sel].mean()) if map_b[c] >= 0 else float("nan"),
                              "agreement": float(same[sel].mean())})
    return Agreement(n=n, index=idx, pred_a=pa, pred_b=pb, labels=y, agreement=float(same.mean()),
                     disagree=np.flatnonzero(~same), accuracy_a=acc_a, accuracy_b=acc_b, per_class=per_class,
                     errors_a=np.flatnonzero(~ok_a) if (map_a >= 0).any() else np.zeros(0, np.int64),
                     errors_b=np.flatnonzero(~ok_b) if (map_b >= 0).any() else np.zeros(0, np.int64),
                     warnings=warnings)


def predict_dataset(bundle, model_spec, dataset, *, n: int | None = None, batch_size: int = 64, progress=None,
                    should_stop=None):
    """Predictions of ``bundle`` on every image of ``dataset`` through the data-set executor
    (a ``predict`` job: cached by model hash + data hash; in-process).

    Args:
        bundle: the model (its ``model_spec`` describes it for the job record).
        model_spec: the model's :class:`analysis.core.models.loaders.ModelSpec`.
        dataset: an opened :class:`analysis.core.datasets.Dataset`.
        n: only the first ``n`` images (default: all).
        batch_size: images per forward.
        progress, should_stop: executor callbacks.

    Returns:
        (index, pred, labels) int64 arrays over the images that could be read.
    """
    from analysis.dataset.executor import JobSpec, run
    idx = None if n is None or n >= len(dataset) else tuple(range(int(n)))
    spec = JobSpec("predict", model_spec, "digits", params={"top_k": 1}, batch_size=batch_size, indices=idx)
    res = run(spec, engine="local", dataset=dataset, bundle=bundle, progress=progress, should_stop=should_stop)
    if not res.complete:
        raise ParameterError("The prediction job was stopped before it finished.")
    df = res.to_pandas(["index", "pred", "label"])
    return df["index"].to_numpy(np.int64), df["pred"].to_numpy(np.int64), df["label"].to_numpy(np.int64)
