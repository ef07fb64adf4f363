"""Benchmark metrics against hand-worked examples."""

from __future__ import annotations

import pytest

from vlmscale import metrics


@pytest.mark.parametrize(
    "raw, normalised",
    [
        ("Two", "2"),
        ("the red  car", "red car"),
        ("A dog.", "dog"),
        ("Yes!", "yes"),
        ("3.5", "3.5"),  # a decimal point stays
        ("1,000", "1000"),  # a comma inside a number goes
        ("yes/no", "yes no"),  # a mark with no space beside it splits words
        ("dont", "don't"),
        ("an apple, and pears", "apple and pears"),
        ("  Ten\n", "10"),
    ],
)
def test_vqa_normalisation(raw, normalised):
    assert metrics.normalize_vqa(raw) == normalised


def test_vqa_soft_accuracy_ten_annotators():
    # 2 of 10 annotators said "2": leaving out one of those two leaves 1 match (1/3), leaving out any
    # of the other eight leaves 2 matches (2/3): (2 * 1/3 + 8 * 2/3) / 10 = 0.6
    answers = ["2", "two"] + ["3"] * 8
    assert metrics.vqa_soft_accuracy("Two", answers) == pytest.approx(0.6)
    # 3 of 10: leaving one of them out -> 2/3; leaving out another -> 3/3 capped at 1: (3*2/3 + 7*1)/10
    assert metrics.vqa_soft_accuracy("3", ["3"] * 3 + ["4"] * 7) == pytest.approx(0.9)
    assert metrics.vqa_soft_accuracy("4", ["3"] * 3 + ["4"] * 7) == pytest.approx(1.0)
    assert metrics.vqa_soft_accuracy("five", ["3"] * 10) == 0.0


def test_exact_match_is_normalised():
    assert metrics.exact_match("The Table.", "table") == 1.0
    assert metrics.exact_match("tables", "table") == 0.0


@pytest.mark.parametrize(
    "prediction, letter",
    [
        ("B", "B"),
        ("(C)", "C"),
        ("D. a tree", "D"),
        ("The answer is A.", "A"),
        ("answer: (b)", "B"),
        ("blue", "B"),  # repeats option B's text
        ("I cannot tell", None),
        ("E", None),  # only four options
    ],
)
def test_multiple_choice_reads_the_letter(prediction, letter):
    options = ["red", "blue", "green", "a tree"]
    assert metrics.choice_letter(prediction, options) == letter


def test_yes_no_scores_pope_style():
    predictions = ["Yes, there is a dog.", "No.", "yes", "There is not a cat.", "Yes", "no"]
    answers = ["yes", "no", "no", "yes", "yes", "no"]
    # read as: yes, no, yes, no, yes, no -> tp 2, fp 1, fn 1, tn 2
    scores = metrics.score("yes_no", predictions, answers)
    assert scores["accuracy"] == pytest.approx(4 / 6)
    assert scores["precision"] == pytest.approx(2 / 3) and scores["recall"] == pytest.approx(2 / 3)
    assert scores["f1"] == pytest.approx(2 / 3) and scores["yes_ratio"] == pytest.approx(0.5)


def test_score_dispatch_and_errors():
    assert metrics.score("vqa", ["two"], [["2"] * 10])["accuracy"] == 1.0
    assert metrics.score("multiple_choice", ["B", "A"], ["B", "C"], [["x", "y", "z"]] * 2)["accuracy"] == 0.5
    assert metrics.score("exact_match", ["a cat"], ["cat"])["accuracy"] == 1.0
    with pytest.raises(ValueError, match="unknown metric 'bleu'"):
        metrics.score("bleu", ["x"], ["x"])
    with pytest.raises(ValueError, match="2 predictions for 1 references"):
        metrics.score("exact_match", ["x", "y"], ["x"])


def test_exact_is_verbatim_where_normalisation_would_erase_the_answer():
    # On the synthetic grid "a" is a glyph's name: normalised matching would drop it as an article and
    # count "the" (also dropped) as right.
    assert metrics.score("exact", ["the", "a", " b "], ["a", "a", "b"])["accuracy"] == pytest.approx(2 / 3)
    assert metrics.score("exact_match", ["the"], ["a"])["accuracy"] == 1.0
