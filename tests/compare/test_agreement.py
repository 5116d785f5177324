"""Agreement of two models: known answers on made-up predictions, and the executor path."""
import numpy as np
import pytest

from analysis.compare.agreement import compare_predictions, label_to_model


def test_agreement_disagreement_and_per_class_accuracy():
    cats = ["cat", "dog", "fox"]
    labels = [0, 0, 1, 1, 2, 2]
    a = [0, 0, 1, 0, 2, 1]
    b = [0, 1, 1, 0, 2, 2]
    r = compare_predictions(a, b, labels, ["cat", "dog", "fox"], cats, cats)
    assert r.agreement == pytest.approx(4 / 6)
    assert list(r.disagree) == [1, 5]
    assert r.accuracy_a == pytest.approx(4 / 6) and r.accuracy_b == pytest.approx(4 / 6)
    assert [c["accuracy A"] for c in r.per_class] == [1.0, 0.5, 0.5]
    assert [c["accuracy B"] for c in r.per_class] == [0.5, 0.5, 1.0]
    assert list(r.errors_a) == [3, 5] and list(r.errors_b) == [1, 3]


def test_class_lists_matched_by_name_and_unknown_classes():
    assert list(label_to_model(["Dog", "cat", "owl"], ["cat", "dog"])) == [1, 0, -1]
    assert list(label_to_model(["0", "1"], ["zero", "one"])) == [0, 1]
    # B orders its classes differently: same names = agreement
    r = compare_predictions([0, 1], [1, 0], [0, 1], ["cat", "dog"], ["cat", "dog"], ["dog", "cat"])
    assert r.agreement == 1.0 and r.accuracy_b == 1.0
    r = compare_predictions([0, 1], [0, 1], [0, 1], ["x", "y"], ["cat", "dog"], ["cat", "dog"])
    assert np.isnan(r.accuracy_a) and any("undefined" in w for w in r.warnings)
