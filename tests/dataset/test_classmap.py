"""Class mapping: identity, name suggestions, scoring through a mapping, stored state."""
import numpy as np
import pytest

from analysis.core.errors import ParameterError
from analysis.core.models.loaders import imagenet_categories
from analysis.dataset.classmap import (
    UNMAPPED,
    ClassMapping,
    classes_fingerprint,
    identity_mapping,
    mapping_from_state,
    suggest_mapping,
)

DIGITS = [str(k) for k in range(10)]


def test_digits_model_on_digits_is_identity():
    m = suggest_mapping(DIGITS, DIGITS)
    assert m.status == "identity" and m.is_identity and m.n_mapped == 10
    assert m.model_to_dataset().tolist() == list(range(10))


def test_imagenet_model_on_digits_maps_nothing():
    m = suggest_mapping(DIGITS, list(imagenet_categories()))
    assert m.status == "none" and m.n_mapped == 0
    assert "differ" in m.describe() and "cannot be measured" in m.describe()
    assert not m.scorable(np.array([0, 3, 9])).any()
    assert (m.predicted_dataset_class(np.array([409, 0])) == UNMAPPED).all()   # analog clock, tench


def test_cat_suggests_the_cat_classes_by_last_word():
    cats = list(imagenet_categories())
    m = suggest_mapping(["cat", "goldfish", "Dogs"], cats)
    names = {r["dataset class"]: r["model classes"] for r in m.rows()}
    assert {"tiger cat", "Persian cat", "Siamese cat", "Egyptian cat"} <= set(names["cat"])
    assert "catamaran" not in names["cat"] and "polecat" not in names["cat"]
    assert names["goldfish"] == ["goldfish"]                                    # exact name
    assert "Maltese dog" in names["Dogs"] and "hotdog" not in names["Dogs"]     # plural, last word
    assert m.status == "complete"


def test_subset_of_model_classes_in_any_order_is_identity():
    model = ["a", "b", "c", "d"]
    m = identity_mapping(["c", "a"], model)
    assert m is not None and m.targets == {0: (2,), 1: (0,)} and m.status != "none"
    assert identity_mapping(["c", "zz"], model) is None


def test_scoring_through_a_many_to_one_mapping():
    model = ["tabby", "tiger cat", "beagle", "pug", "clock"]
    m = ClassMapping(["cat", "dog"], model, {0: (0, 1), 1: (2, 3)}, "edited")
    labels = np.array([0, 0, 1, 1, 0])
    preds = np.array([1, 2, 3, 4, 0])
    assert m.correct(labels, preds).tolist() == [True, False, True, False, True]
    assert m.predicted_dataset_class(preds).tolist() == [0, 1, 1, UNMAPPED, 0]
    top = np.array([[4, 1], [2, 3], [4, 0], [4, 0], [2, 4]])
    assert m.correct_topk(labels, top).tolist() == [True, False, False, False, False]


def test_a_model_class_cannot_stand_for_two_dataset_classes():
    with pytest.raises(ParameterError, match="mapped to two data-set classes"):
        ClassMapping(["cat", "dog"], ["x", "y"], {0: (0,), 1: (0, 1)})
    with pytest.raises(ParameterError, match="out of range"):
        ClassMapping(["cat"], ["x"], {0: (5,)})


def test_state_round_trip_and_fingerprints():
    model = ["tabby", "tiger cat", "beagle"]
    m = ClassMapping(["cat", "dog"], model, {0: (0, 1), 1: (2,)}, "edited")
    st = m.to_state()
    assert st["map"] == {"cat": [0, 1], "dog": [2]} and st["src"] == "edited"
    back = mapping_from_state(st, ["cat", "dog"], model)
    assert back.targets == m.targets and back.source == "edited"
    # made for another model: ignored (the caller suggests a new one)
    assert mapping_from_state(st, ["cat", "dog"], model + ["pug"]) is None
    assert mapping_from_state("nonsense", ["cat"], model) is None
    bad = dict(st, map={"cow": [0]})
    with pytest.raises(ParameterError, match="unknown data-set class"):
        mapping_from_state(bad, ["cat", "dog"], model)
    assert classes_fingerprint(["a", "b"]) != classes_fingerprint(["b", "a"])
