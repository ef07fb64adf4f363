"""Benchmark metrics against hand-worked examples, and against LLaVA's own scripts where a careful
reading of a benchmark and the official code differ (the official code wins under the official name)."""

from __future__ import annotations

import pytest

from vlmscale.evaluation import metrics


@pytest.mark.parametrize(
    "raw, normalised",
    [
        ("Two", "2"),
        ("the red  car", "red car"),
        ("A dog.", "dog"),
        ("Yes!", "yes"),
        ("3.5", "3.5"),  # a decimal point stays
        ("1,000", "1000"),  # commas are deleted first
        ("yes/no", "yes no"),  # a mark with no space beside it splits words
        ("dont", "don't"),
        ("an apple, and pears", "apple and pears"),
        ("  Ten\n", "10"),
        # where the official processor differs from a careful reading:
        ("1,000-2,000", "1000 2000"),  # commas deleted, then "-" splits: not "1000-2000" nor "10002000"
        ("yes?no", "yesno"),  # "?" is deleted, not a separator
        ("whos", "who's"),  # the full contraction table
        ("its", "its"),  # "its" is not in it
        ("what's", "what 's"),  # "'s" is split off
    ],
)
def test_vqa_normalisation_is_the_official_processor(raw, normalised):
    assert metrics.normalize_vqa(raw) == normalised


def test_more_than_32_periods_are_not_all_removed():
    # The official call passes re.UNICODE (32) as sub()'s count: periods after the 32nd stay.
    assert metrics.normalize_vqa("a." + "b. " * 40).count(".") == 41 - 32


def test_vqa_soft_accuracy_ten_annotators():
    # 2 of 10 annotators said "2": leaving out one of those two leaves 1 match (1/3), leaving out any
    # of the other eight leaves 2 matches (2/3): (2 * 1/3 + 8 * 2/3) / 10 = 0.6
    answers = ["2", "two"] + ["3"] * 8
    assert metrics.vqa_soft_accuracy("Two", answers) == pytest.approx(0.6)
    # 3 of 10: leaving one of them out -> 2/3; leaving out another -> 3/3 capped at 1: (3*2/3 + 7*1)/10
    assert metrics.vqa_soft_accuracy("3", ["3"] * 3 + ["4"] * 7) == pytest.approx(0.9)
    assert metrics.vqa_soft_accuracy("4", ["3"] * 3 + ["4"] * 7) == pytest.approx(1.0)
    assert metrics.vqa_soft_accuracy("five", ["3"] * 10) == 0.0


def test_vqa_refuses_anything_but_ten_answers():
    # One answer per question would score 0 for every question (leave-one-out leaves nothing): refused.
    with pytest.raises(ValueError, match="needs 10 annotator answers, got 1"):
        metrics.score("vqa", ["cat"], [["cat"]])


def test_gqa_exact_match_is_convert_gqa_for_eval_then_equality():
    score = metrics.gqa_match
    assert score("Yes.", "yes") == 1.0 and score("red car", "red car") == 1.0
    # a careful reading would normalise these; GQA's scorer does not
    assert score("The table.", "table") == 0.0
    assert score("two", "2") == 0.0
    assert score("red car!", "red car") == 0.0


@pytest.mark.parametrize(
    "prediction, official, lenient",
    [
        ("B", "B", "B"),
        ("D. a tree", "D", "D"),
        ("The answer is A.", "A", "A"),
        ("A dog is running", None, None),  # a sentence starting with a capital, not option A
        ("(C)", None, "C"),  # ScienceQA's script reads only "C", "C. ..." and "The answer is C."
        ("The answer is (B).", None, "B"),
        ("The answer is B", None, "B"),  # its pattern needs a character after the letter
        ("answer: (b)", None, "B"),
        ("blue", None, "B"),  # repeats option B's text
        ("I cannot tell", None, None),
        ("E", None, None),  # only four options
    ],
)
def test_multiple_choice_official_and_lenient(prediction, official, lenient):
    options = ["red", "blue", "green", "a tree"]
    assert metrics.science_qa_letter(prediction, len(options)) == official
    assert metrics.lenient_letter(prediction, options) == lenient


@pytest.mark.parametrize(
    "prediction, read",
    [
        ("Yes, there is a dog.", "yes"),
        ("No.", "no"),
        ("There is not a cat.", "no"),
        ("No, there is no dog", "no"),
        # eval_pope.py matches "No", "no" and "not" as whole space-separated words of the first sentence:
        ("NO", "yes"),
        ("no!", "yes"),
        ("Not at all", "yes"),
        ("Yes. No dog though.", "yes"),  # only the first sentence counts
    ],
)
def test_pope_reading_is_eval_pope(prediction, read):
    assert metrics.pope_reading(prediction) == read


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
    assert metrics.score("multiple_choice_lenient", ["(B)", "(B)"], ["B", "C"])["accuracy"] == 0.5
    assert metrics.score("exact_match", ["Cat."], ["cat"])["accuracy"] == 1.0
    with pytest.raises(ValueError, match="unknown metric 'bleu'"):
        metrics.score("bleu", ["x"], ["x"])
    with pytest.raises(ValueError, match="2 predictions for 1 references"):
        metrics.score("exact_match", ["x", "y"], ["x"])


def test_exact_is_verbatim_where_normalisation_would_erase_the_answer():
    # On the synthetic grid "a" is a glyph's name: VQA's normalisation would drop it as an article and
    # count "the" (also dropped) as right.
    assert metrics.score("exact", ["the", "a", " b "], ["a", "a", "b"])["accuracy"] == pytest.approx(2 / 3)
    assert metrics.normalize_vqa("the") == metrics.normalize_vqa("a") == ""
