"""Precision, recall, F1 and support from the confusion matrix: the numbers and the text of scikit-learn's
classification_report, zero divisions included."""

from __future__ import annotations

import pytest
import torch
from sklearn.metrics import classification_report as sk_report

from kdlab.evaluation.classification import format_precision_recall, format_report, precision_recall_report
from kdlab.evaluation.metrics import confusion_matrix

# 5 classes: "cat" is never predicted (precision 0/0), "ship" never present nor predicted (all 0/0),
# "frog" present and predicted but never right (F1 from 0 / positive)
NAMES = ["plane", "cat", "frog", "ship", "truck"]
Y_TRUE = [0, 0, 0, 1, 1, 2, 2, 4, 4, 4, 4, 0]
Y_PRED = [0, 0, 4, 0, 4, 4, 4, 4, 2, 4, 0, 0]


def _ours(zero_division=0.0):
    cm = confusion_matrix(torch.tensor(Y_PRED), torch.tensor(Y_TRUE), len(NAMES), ignore_index=None)
    return precision_recall_report(cm, NAMES, zero_division=zero_division)


@pytest.mark.parametrize("zero_division", [0.0, 1.0])
def test_numbers_are_sklearns(zero_division):
    ours = _ours(zero_division)
    theirs = sk_report(Y_TRUE, Y_PRED, labels=range(len(NAMES)), target_names=NAMES, output_dict=True,
                       zero_division=zero_division)
    assert list(ours) == list(theirs)
    assert ours["accuracy"] == pytest.approx(theirs["accuracy"])
    for key in NAMES + ["macro avg", "weighted avg"]:
        assert ours[key] == pytest.approx(theirs[key]), key
    assert ours["cat"]["precision"] == zero_division and ours["ship"]["f1-score"] == zero_division
    assert ours["frog"] == {"precision": 0.0, "recall": 0.0, "f1-score": 0.0, "support": 2}


@pytest.mark.parametrize("digits", [2, 4])
def test_text_is_sklearns(digits):
    theirs = sk_report(Y_TRUE, Y_PRED, labels=range(len(NAMES)), target_names=NAMES, zero_division=0, digits=digits)
    assert format_precision_recall(_ours(), digits=digits) == theirs


def test_hand_values():
    # plane: TP 3 of 4 present, predicted 5 times -> P 3/5, R 3/4, F1 2*3/(4+5)
    plane = _ours()["plane"]
    assert plane == pytest.approx({"precision": 0.6, "recall": 0.75, "f1-score": 6 / 9, "support": 4})


def test_eval_text_ends_with_the_table():
    cm = confusion_matrix(torch.tensor(Y_PRED), torch.tensor(Y_TRUE), len(NAMES), ignore_index=None)
    report = {"num_samples": 12, "top1": 50.0, "top5": 100.0, "loss": 1.0, "class_names": NAMES,
              "per_class_acc": dict.fromkeys(NAMES, 0.0), "confusion_matrix": cm.tolist(),
              "classification_report": precision_recall_report(cm, NAMES)}
    text = format_report(report)
    sk_text = sk_report(Y_TRUE, Y_PRED, labels=range(len(NAMES)), target_names=NAMES, zero_division=0)
    assert text.endswith("classification report:\n" + sk_text.rstrip("\n"))
