"""Class mapping: which of the model's classes count as each data-set class.

A model and a data set need not share their classes: the ImageNet model knows "tiger cat",
"Persian cat" and "Egyptian cat" where a data set says "cat", and knows nothing of the
digits' "0" … "9". Accuracy, the confusion matrix and calibration are only meaningful
through a mapping *data-set class → one or more model classes*:

* a prediction is correct when the predicted model class is one of the classes mapped to
  the image's data-set class (top-5: when any of the five is);
* the predicted *data-set* class of an image is the data-set class its predicted model
  class is mapped to, or "unmapped" (-1) when no data-set class claims that model class;
* images of data-set classes without any model class cannot be scored and are left out
  (the count is reported); with no mapped class at all there is no accuracy to show.

:func:`suggest_mapping` proposes a starting mapping by name (exact names first, then model
classes whose last word is the data-set class: "cat" → "tiger cat", "Persian cat", …);
a user edits it from there. :meth:`ClassMapping.to_state` / :meth:`from_state` give a small
JSON-able form (class names → model indices, with fingerprints of both class lists) for
share links and audit records. Pure computation; no Streamlit.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from analysis.core.errors import ParameterError

#: Predicted data-set class of a model class that no data-set class claims.
UNMAPPED = -1


def _norm(name: str) -> str:
    """Case-, space-, underscore- and hyphen-insensitive form of a class name."""
    return re.sub(r"[\s_\-]+", " ", str(name).strip().lower())


def _singular(word: str) -> str:
    return word[:-1] if len(word) > 3 and word.endswith("s") and not word.endswith("ss") else word


def classes_fingerprint(names: Sequence[str]) -> str:
    """12 hex digits identifying an ordered list of class names (for stored mappings).

    Args:
        names: the class names, in index order.
    """
    data = json.dumps([str(n) for n in names], ensure_ascii=False).encode("utf-8")
    return hashlib.sha256(data).hexdigest()[:12]


@dataclass
class ClassMapping:
    """Data-set class index → model class indices.

    Attributes:
        dataset_classes: the data set's class names (labels index into them).
        model_classes: the model's class names (predictions index into them).
        targets: ``{data-set class index: sorted tuple of model class indices}``; classes
            missing or with an empty tuple are unmapped.
        source: how the mapping was made: ``"identity"`` (same classes), ``"suggested"``
            (by name) or ``"edited"`` (by a user).
    """

    dataset_classes: list[str]
    model_classes: list[str]
    targets: dict[int, tuple[int, ...]] = field(default_factory=dict)
    source: str = "suggested"

    def __post_init__(self) -> None:
        nd, nm = len(self.dataset_classes), len(self.model_classes)
        clean: dict[int, tuple[int, ...]] = {}
        owner: dict[int, int] = {}
        for d, ms in dict(self.targets).items():
            d = int(d)
            if not 0 <= d < nd:
                raise ParameterError(f"Data-set class index {d} is out of range ({nd} classes).")
            ms = tuple(sorted({int(m) for m in ms}))
            for m in ms:
                if not 0 <= m < nm:
                    raise ParameterError(f"Model class index {m} is out of range (the model has {nm} classes).")
                if m in owner:
                    raise ParameterError(
                        f"Model class '{self.model_classes[m]}' is mapped to two data-set classes "
                        f"('{self.dataset_classes[owner[m]]}' and '{self.dataset_classes[d]}'); "
                        "a model class can stand for one data-set class only.")
                owner[m] = d
            if ms:
                clean[d] = ms
        self.targets = dict(sorted(clean.items()))

    # ------------------------------------------------------------------ queries

    @property
    def n_mapped(self) -> int:
        """How many data-set classes have at least one model class."""
        return len(self.targets)

    @property
    def is_identity(self) -> bool:
        """True when every data-set class k is exactly model class k (same classes, same order)."""
        return (len(self.dataset_classes) == len(self.model_classes)
                and all(self.targets.get(k) == (k,) for k in range(len(self.dataset_classes))))

    @property
    def status(self) -> str:
        """``"identity"``, ``"complete"`` (every data-set class mapped), ``"partial"`` or ``"none"``."""
        if self.is_identity:
            return "identity"
        if self.n_mapped == 0:
            return "none"
        return "complete" if self.n_mapped == len(self.dataset_classes) else "partial"

    def model_to_dataset(self) -> np.ndarray:
        """(n_model_classes,) int64: the data-set class each model class stands for, or -1."""
        out = np.full(len(self.model_classes), UNMAPPED, dtype=np.int64)
        for d, ms in self.targets.items():
            out[list(ms)] = d
        return out

    def scorable(self, labels: np.ndarray) -> np.ndarray:
        """Boolean mask of the images whose data-set class is mapped (only those can be scored).

        Args:
            labels: (N,) data-set class indices.
        """
        labels = np.asarray(labels, dtype=np.int64)
        mapped = np.zeros(len(self.dataset_classes), dtype=bool)
        mapped[list(self.targets)] = True
        return mapped[labels]

    def predicted_dataset_class(self, preds: np.ndarray) -> np.ndarray:
        """(N,) data-set class of each predicted model class (-1 = unmapped model class).

        Args:
            preds: (N,) predicted model class indices.
        """
        return self.model_to_dataset()[np.asarray(preds, dtype=np.int64)]

    def correct(self, labels: np.ndarray, preds: np.ndarray) -> np.ndarray:
        """(N,) bool: the predicted model class is one mapped to the image's data-set class.

        Args:
            labels: (N,) data-set class indices.
            preds: (N,) predicted model class indices (top-1).
        """
        labels = np.asarray(labels, dtype=np.int64)
        return self.predicted_dataset_class(preds) == labels

    def correct_topk(self, labels: np.ndarray, topk: np.ndarray) -> np.ndarray:
        """(N,) bool: any of the top-k predicted model classes is mapped to the image's class.

        Args:
            labels: (N,) data-set class indices.
            topk: (N, k) predicted model class indices, best first.
        """
        labels = np.asarray(labels, dtype=np.int64)
        topk = np.atleast_2d(np.asarray(topk, dtype=np.int64))
        return (self.model_to_dataset()[topk] == labels[:, None]).any(axis=1)

    def describe(self) -> str:
        """One sentence for the page: what the mapping covers."""
        nd = len(self.dataset_classes)
        if self.status == "identity":
            return f"The model's classes are the data set's {nd} classes."
        if self.status == "none":
            return (f"The model's {len(self.model_classes)} classes and the data set's {nd} classes differ and "
                    "no data-set class is mapped to a model class: accuracy cannot be measured.")
        n_model = sum(len(v) for v in self.targets.values())
        return (f"{self.n_mapped} of {nd} data-set classes are mapped to {n_model} model classes "
                f"({self.source}); images of unmapped classes are left out of the scores.")

    def rows(self) -> list[dict]:
        """One row per data-set class: its model classes by name (for tables and records)."""
        return [{"dataset class": c, "model classes": [self.model_classes[m] for m in self.targets.get(k, ())]}
                for k, c in enumerate(self.dataset_classes)]

    # ------------------------------------------------------------------ state

    def to_state(self) -> dict:
        """A small JSON-able form: ``{"d": fingerprint, "m": fingerprint, "map": {class name: [model
        indices]}, "src": source}`` (share links, audit records)."""
        return {"d": classes_fingerprint(self.dataset_classes), "m": classes_fingerprint(self.model_classes),
                "map": {self.dataset_classes[d]: list(ms) for d, ms in self.targets.items()}, "src": self.source}

    def with_targets(self, targets: Mapping[int, Sequence[int]], source: str = "edited") -> "ClassMapping":
        """A copy with other targets (validated like the constructor).

        Args:
            targets: data-set class index → model class indices.
            source: the new mapping's ``source``.
        """
        return ClassMapping(list(self.dataset_classes), list(self.model_classes),
                            {int(k): tuple(v) for k, v in targets.items()}, source)


def identity_mapping(dataset_classes: Sequence[str], model_classes: Sequence[str]) -> ClassMapping | None:
    """The mapping of a data set whose classes are the model's own, or None.

    The classes are the same when the names agree (normalised) index by index, or when the
    data set's class names are model class names (a subset, in any order: then each maps to
    that model class).

    Args:
        dataset_classes: the data set's class names.
        model_classes: the model's class names.
    """
    ds, mc = list(dataset_classes), list(model_classes)
    nm = [_norm(c) for c in mc]
    if len(ds) == len(mc) and all(_norm(a) == b for a, b in zip(ds, nm)):
        return ClassMapping(ds, mc, {k: (k,) for k in range(len(ds))}, "identity")
    index: dict[str, list[int]] = {}
    for i, n in enumerate(nm):
        index.setdefault(n, []).append(i)
    hits = [index.get(_norm(c), []) for c in ds]
    if ds and all(len(h) == 1 for h in hits) and len({h[0] for h in hits}) == len(ds):
        return ClassMapping(ds, mc, {k: (h[0],) for k, h in enumerate(hits)}, "identity")
    return None


def suggest_mapping(dataset_classes: Sequence[str], model_classes: Sequence[str]) -> ClassMapping:
    """A starting mapping by name.

    For each data-set class: the model classes with the same (normalised) name; if none,
    the model classes whose last word is the class name or its singular ("cats" and "cat"
    → "tiger cat", "Persian cat", …; "cat" does not match "catamaran" or "polecat").
    A model class claimed by two data-set classes goes to the one that names it exactly,
    else to neither. Identical class lists give the identity mapping.

    Args:
        dataset_classes: the data set's class names.
        model_classes: the model's class names.
    """
    ident = identity_mapping(dataset_classes, model_classes)
    if ident is not None:
        return ident
    ds, mc = list(dataset_classes), list(model_classes)
    nm = [_norm(c) for c in mc]
    last = [_singular(n.split(" ")[-1]) if n else "" for n in nm]
    exact: dict[int, set[int]] = {}
    loose: dict[int, set[int]] = {}
    for k, c in enumerate(ds):
        n = _norm(c)
        if not n:
            continue
        e = {i for i, m in enumerate(nm) if m == n}
        if e:
            exact[k] = e
            continue
        word = _singular(n)
        loose[k] = {i for i, w in enumerate(last) if w == word}
    claimed_exact = {m for s in exact.values() for m in s}
    owners: dict[int, list[int]] = {}
    for k, s in loose.items():
        for m in s - claimed_exact:
            owners.setdefault(m, []).append(k)
    targets: dict[int, set[int]] = {k: set(s) for k, s in exact.items()}
    for m, ks in owners.items():
        if len(ks) == 1:
            targets.setdefault(ks[0], set()).add(m)
    return ClassMapping(ds, mc, {k: tuple(v) for k, v in targets.items()}, "suggested")


def mapping_from_state(state: object, dataset_classes: Sequence[str], model_classes: Sequence[str]
                       ) -> ClassMapping | None:
    """A mapping stored by :meth:`ClassMapping.to_state`, if it belongs to these class lists.

    Returns None when ``state`` is not a stored mapping or was made for other classes (a
    different model or data set): the caller then suggests a new one.

    Args:
        state: the stored form (a dict, e.g. decoded from a share link).
        dataset_classes: the current data set's class names.
        model_classes: the current model's class names.

    Raises:
        ParameterError: the stored mapping names unknown classes or out-of-range indices.
    """
    if not isinstance(state, dict) or not isinstance(state.get("map"), dict):
        return None
    ds, mc = list(dataset_classes), list(model_classes)
    if state.get("d") != classes_fingerprint(ds) or state.get("m") != classes_fingerprint(mc):
        return None
    pos = {c: k for k, c in enumerate(ds)}
    targets: dict[int, tuple[int, ...]] = {}
    for name, ms in state["map"].items():
        if name not in pos:
            raise ParameterError(f"The stored class mapping names an unknown data-set class {name!r}.")
        if not isinstance(ms, (list, tuple)) or not all(isinstance(m, int) and not isinstance(m, bool) for m in ms):
            raise ParameterError(f"The stored class mapping of {name!r} must be a list of model class indices.")
        targets[pos[name]] = tuple(ms)
    src = state.get("src") if state.get("src") in ("identity", "suggested", "edited") else "edited"
    return ClassMapping(ds, mc, targets, src)
