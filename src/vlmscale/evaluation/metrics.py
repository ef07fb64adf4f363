"""Benchmark metrics that score exactly as LLaVA's evaluation scripts do, plus named lenient readings.

Official (each follows the named script line by line, quirks included; tests/test_metrics.py holds
cases where a careful reading and the script differ):

* vqa               TextVQA / VQAv2 soft accuracy, LLaVA's `llava/eval/m4c_evaluator.py` (from MMF):
                    `EvalAIAnswerProcessor` normalises every answer (its full contraction and number
                    tables, commas and "?" deleted, other marks dropped or turned into spaces), then a
                    prediction scores the mean over the 10 leave-one-out subsets of min(1, matches / 3).
                    Needs exactly ten annotator answers per question (the data check refuses fewer).
* exact_match       GQA: LLaVA's `scripts/convert_gqa_for_eval.py` (trailing periods stripped, lowercased)
                    then GQA's scorer (the prediction equals the gold answer, nothing else normalised).
* multiple_choice   ScienceQA, LLaVA's `llava/eval/eval_science_qa.py`: the prediction is an option letter,
                    or starts with a letter and ". ", or contains "The answer is X." exactly once;
                    anything else is wrong. (MMBench is scored by its own server from the raw text.)
* yes_no            POPE, LLaVA's `llava/eval/eval_pope.py`: the first sentence, commas removed, split at
                    spaces; "No", "no" or "not" among the words means no, anything else yes. Accuracy,
                    precision, recall, F1 (yes is the positive class) and the yes-ratio.
* exact             the prediction equals the answer, character for character (the synthetic grid's:
                    there "a" is a glyph's name, which the VQA normalisation would drop as an article).

Lenient (not in any official script, so only under their own names):

* multiple_choice_lenient   also "(B)", "B: ...", "answer: b", "The answer is (B)", or the text of exactly
                            one option repeated; a capital followed by a lower-case word ("A dog is ...")
                            is a sentence, not a letter.

Every metric returns {"accuracy": ..., ...}: `accuracy` is what the family error 1 - mean accuracy uses.
"""

from __future__ import annotations

import re
from typing import Sequence

from vlmscale.choices import METRICS

# --------------------------------------------------------------------------- VQA (m4c_evaluator.py)

CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's",
    "howd": "how'd", "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm",
    "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll",
    "let's": "let's", "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've",
    "mightn'tve": "mightn't've", "mightve": "might've", "mustnt": "mustn't", "mustve": "must've",
    "neednt": "needn't", "notve": "not've", "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at",
    "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at", "shant": "shan't", "shed've": "she'd've",
    "she'dve": "she'd've", "she's": "she's", "shouldve": "should've", "shouldnt": "shouldn't",
    "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd",
    "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've", "somebodyll": "somebody'll",
    "somebodys": "somebody's", "someoned": "someone'd", "someoned've": "someone'd've",
    "someone'dve": "someone'd've", "someonell": "someone'll", "someones": "someone's",
    "somethingd": "something'd", "somethingd've": "something'd've", "something'dve": "something'd've",
    "somethingll": "something'll", "thats": "that's", "thered": "there'd", "thered've": "there'd've",
    "there'dve": "there'd've", "therere": "there're", "theres": "there's", "theyd": "they'd",
    "theyd've": "they'd've", "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're",
    "theyve": "they've", "twas": "'twas", "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've",
    "weve": "we've", "werent": "weren't", "whatll": "what'll", "whatre": "what're", "whats": "what's",
    "whatve": "what've", "whens": "when's", "whered": "where'd", "wheres": "where's", "whereve": "where've",
    "whod": "who'd", "whod've": "who'd've", "who'dve": "who'd've", "wholl": "who'll", "whos": "who's",
    "whove": "who've", "whyll": "why'll", "whyre": "why're", "whys": "why's", "wont": "won't",
    "wouldve": "would've", "wouldnt": "wouldn't", "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've",
    "yall": "y'all", "yall'll": "y'all'll", "y'allll": "y'all'll", "yall'd've": "y'all'd've",
    "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've", "youd": "you'd", "youd've": "you'd've",
    "you'dve": "you'd've", "youll": "you'll", "youre": "you're", "youve": "you've",
}  # fmt: skip
NUMBER_MAP = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
              "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}  # fmt: skip
ARTICLES = ("a", "an", "the")
PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
COMMA_STRIP = re.compile(r"(?<=\d)(\,)+(?=\d)")
PUNCTUATIONS = [";", r"/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?",
                "!"]  # fmt: skip
VQA_ANSWERS = 10  # annotators per question in TextVQA and VQAv2; the official scorer asserts it


def normalize_vqa(answer: str) -> str:
    """EvalAIAnswerProcessor.__call__: word_tokenize, whitespace, punctuation, digits and articles."""
    text = answer.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    text = text.replace("\n", " ").replace("\t", " ").strip()
    return _digits_and_articles(_punctuation(text))


def _punctuation(text: str) -> str:
    out = text
    for p in PUNCTUATIONS:
        if (p + " " in text or " " + p in text) or re.search(COMMA_STRIP, text) is not None:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    # The official call passes re.UNICODE where sub() takes its count: at most 32 periods are removed.
    return PERIOD_STRIP.sub("", out, re.UNICODE)


def _digits_and_articles(text: str) -> str:
    words = [NUMBER_MAP.get(w, w) for w in text.lower().split()]
    return " ".join(CONTRACTIONS.get(w, w) for w in words if w not in ARTICLES)


def vqa_answer_scores(annotator_answers: Sequence[str]) -> dict[str, float]:
    """TextVQAAccuracyEvaluator._compute_answer_scores: each distinct normalised answer's soft score."""
    if len(annotator_answers) != VQA_ANSWERS:
        raise ValueError(f"VQA accuracy needs {VQA_ANSWERS} annotator answers, got {len(annotator_answers)}")
    answers = [normalize_vqa(a) for a in annotator_answers]
    scores = {}
    for unique in set(answers):
        accs = [min(1.0, sum(a == unique for j, a in enumerate(answers) if j != i) / 3) for i in range(len(answers))]
        scores[unique] = sum(accs) / len(accs)
    return scores


def vqa_soft_accuracy(prediction: str, annotator_answers: Sequence[str]) -> float:
    return vqa_answer_scores(annotator_answers).get(normalize_vqa(prediction), 0.0)


# --------------------------------------------------------------------------- GQA (convert_gqa_for_eval + scorer)


def gqa_match(prediction: str, answer: str) -> float:
    return float(prediction.rstrip(".").lower() == answer)


# --------------------------------------------------------------------------- multiple choice

LETTERS = ("A", "B", "C", "D", "E")  # eval_science_qa.py's --options
_THE_ANSWER_IS = re.compile(r"The answer is ([A-Z]).")


def science_qa_letter(prediction: str, n_options: int = len(LETTERS)) -> str | None:
    """eval_science_qa.py's reading; None where it says FAILED (or names a letter past the options)."""
    if prediction in LETTERS:
        answer = prediction
    elif len(prediction) >= 3 and prediction[0] in LETTERS and prediction[1:3] == ". ":
        answer = prediction[0]
    else:
        found = _THE_ANSWER_IS.findall(prediction)
        answer = found[0] if len(found) == 1 else None
    return answer if answer in LETTERS[:n_options] else None


_LENIENT_LETTER = [
    re.compile(r"^\s*\(?([A-Z])\)?(?:[.:)]|\s*$|\s+(?![a-z]))"),  # "B", "(B)", "B.", "B: text"; not "A dog"
    re.compile(r"answer(?: is|:)?\s*\(?([A-Za-z])\)?(?:[.:)\s]|$)", re.IGNORECASE),  # "The answer is (B)"
]


def lenient_letter(prediction: str, options: Sequence[str] = ()) -> str | None:
    """The option letter a prediction names in any common form, or whose option text it repeats."""
    limit = chr(ord("A") + (len(options) or 26))
    for pattern in _LENIENT_LETTER:
        match = pattern.search(prediction)
        if match and match.group(1).upper() < limit:
            return match.group(1).upper()
    said = normalize_vqa(prediction)
    hits = [chr(ord("A") + i) for i, option in enumerate(options) if said and normalize_vqa(option) == said]
    return hits[0] if len(hits) == 1 else None


# --------------------------------------------------------------------------- POPE (eval_pope.py)


def pope_reading(prediction: str) -> str:
    text = prediction
    if text.find(".") != -1:
        text = text.split(".")[0]
    words = text.replace(",", "").split(" ")
    return "no" if ("No" in words or "not" in words or "no" in words) else "yes"


def yes_no_scores(predictions: Sequence[str], answers: Sequence[str]) -> dict:
    """eval_pope.py's counts; a label other than "no" is yes, as there. Undefined ratios are 0, not a crash."""
    said = [pope_reading(p) for p in predictions]
    truth = ["no" if a == "no" else "yes" for a in answers]
    tp = sum(s == "yes" and t == "yes" for s, t in zip(said, truth))
    fp = sum(s == "yes" and t == "no" for s, t in zip(said, truth))
    fn = sum(s == "no" and t == "yes" for s, t in zip(said, truth))
    tn = sum(s == "no" and t == "no" for s, t in zip(said, truth))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"accuracy": (tp + tn) / len(truth), "precision": precision, "recall": recall, "f1": f1,
            "yes_ratio": (tp + fp) / len(truth)}  # fmt: skip


# --------------------------------------------------------------------------- dispatch


def _per_question(metric: str, prediction: str, reference, options: Sequence[str]) -> float:
    if metric == "vqa":
        return vqa_soft_accuracy(prediction, reference)
    if metric == "multiple_choice":
        return float(science_qa_letter(prediction, len(options) or len(LETTERS)) == reference.strip())
    if metric == "multiple_choice_lenient":
        return float(lenient_letter(prediction, options) == reference.strip().upper())
    if metric == "exact_match":
        return gqa_match(prediction, reference)
    return float(prediction.strip() == reference.strip())  # exact


def score(
    metric: str, predictions: Sequence[str], references: Sequence, options: Sequence[Sequence[str]] | None = None
) -> dict:
    """One benchmark's score. references: an answer per question (the annotators' answers for vqa)."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; choose from {', '.join(METRICS)}")
    if len(predictions) != len(references) or not predictions:
        raise ValueError(f"{metric}: {len(predictions)} predictions for {len(references)} references")
    if metric == "yes_no":
        return yes_no_scores(predictions, references)
    opts = options or [()] * len(predictions)
    per = [_per_question(metric, p, r, o) for p, r, o in zip(predictions, references, opts)]
    return {"accuracy": sum(per) / len(per)}
