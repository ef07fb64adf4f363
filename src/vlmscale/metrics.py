"""Benchmark metrics in the forms LLaVA's evaluation scripts use.

* exact             the prediction equals the answer, character for character (the synthetic grid's:
                    there "a" is a glyph's name, which the VQA normalisation would drop as an article).
* exact_match       GQA-style: the normalised prediction equals the normalised answer.
* vqa               VQAv2/TextVQA soft accuracy: with the standard answer normalisation, a prediction
                    scores min(1, matches/3) against each leave-one-out subset of the 10 annotators'
                    answers, averaged over the 10 subsets.
* multiple_choice   MMBench/ScienceQA/SEED-style: the option letter read from the prediction ("B",
                    "(B)", "B.", "The answer is B") or the option text it repeats, against the answer letter.
* yes_no            POPE-style: the prediction read as yes/no; accuracy, precision, recall, F1 (yes is
                    the positive class) and the yes-ratio.

Every metric returns {"accuracy": ..., ...}: `accuracy` is what the family error 1 - mean accuracy uses.
"""

from __future__ import annotations

import re
from typing import Sequence

from vlmscale.choices import METRICS

# The VQA evaluation's normalisation tables (a faithful subset of the official script's).
CONTRACTIONS = {
    "aint": "ain't",
    "arent": "aren't",
    "cant": "can't",
    "couldnt": "couldn't",
    "didnt": "didn't",
    "doesnt": "doesn't",
    "dont": "don't",
    "hadnt": "hadn't",
    "hasnt": "hasn't",
    "havent": "haven't",
    "isnt": "isn't",
    "itd": "it'd",
    "itll": "it'll",
    "its": "it's",
    "shouldnt": "shouldn't",
    "thats": "that's",
    "theres": "there's",
    "theyre": "they're",
    "wasnt": "wasn't",
    "werent": "weren't",
    "whats": "what's",
    "wont": "won't",
    "wouldnt": "wouldn't",
    "youre": "you're",
}
NUMBER_WORDS = {
    "none": "0",
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
}
ARTICLES = {"a", "an", "the"}
PUNCTUATION = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!"]
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
_COMMA_STRIP = re.compile(r"(\d)(,)(\d)")


def normalize_vqa(answer: str) -> str:
    """The VQA answer normalisation: punctuation, number words to digits, articles and contractions."""
    text = answer.replace("\n", " ").replace("\t", " ").strip().lower()
    text = _process_punctuation(text)
    words = []
    for word in text.split():
        word = NUMBER_WORDS.get(word, word)
        if word in ARTICLES:
            continue
        words.append(CONTRACTIONS.get(word, word))
    return " ".join(words)


def _process_punctuation(text: str) -> str:
    out = text
    for p in PUNCTUATION:
        # As the official script: a mark next to a space (or a comma inside a number) is dropped,
        # elsewhere it splits words ("yes/no" -> "yes no").
        if (p + " " in text or " " + p in text) or re.search(_COMMA_STRIP, text) is not None:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD_STRIP.sub("", out)


def vqa_soft_accuracy(prediction: str, annotator_answers: Sequence[str]) -> float:
    """Mean over the leave-one-out subsets of min(1, matches / 3), on normalised answers."""
    if not annotator_answers:
        raise ValueError("VQA accuracy needs the annotators' answers (usually 10)")
    pred = normalize_vqa(prediction)
    gts = [normalize_vqa(a) for a in annotator_answers]
    scores = []
    for i in range(len(gts)):
        others = gts[:i] + gts[i + 1 :]
        scores.append(min(1.0, sum(g == pred for g in others) / 3.0))
    return sum(scores) / len(scores)


def exact_match(prediction: str, answer: str) -> float:
    return float(normalize_vqa(prediction) == normalize_vqa(answer))


_LETTER_PATTERNS = [
    re.compile(r"^\s*\(?([A-Z])\)?(?:[.:)\s]|$)"),  # "B", "(B)", "B.", "B: text"
    re.compile(r"answer(?: is|:)?\s*\(?([A-Z])\)?(?:[.:)\s]|$)", re.IGNORECASE),  # "The answer is B"
]


def choice_letter(prediction: str, options: Sequence[str] = ()) -> str | None:
    """The option letter a prediction names, or whose option text it repeats; None if neither."""
    limit = chr(ord("A") + (len(options) or 26))
    for pattern in _LETTER_PATTERNS:
        match = pattern.search(prediction)
        if match and match.group(1).upper() < limit:
            return match.group(1).upper()
    said = normalize_vqa(prediction)
    hits = [chr(ord("A") + i) for i, option in enumerate(options) if said and normalize_vqa(option) == said]
    return hits[0] if len(hits) == 1 else None


def multiple_choice(prediction: str, answer: str, options: Sequence[str] = ()) -> float:
    return float(choice_letter(prediction, options) == answer.strip().upper())


def yes_no(prediction: str) -> str:
    """POPE's reading: the first sentence; 'no' or 'not' anywhere in it means no, otherwise yes."""
    first = re.split(r"[.\n]", prediction.strip().lower(), maxsplit=1)[0]
    words = re.findall(r"[a-z']+", first)
    return "no" if ("no" in words or "not" in words) else "yes"


def yes_no_scores(predictions: Sequence[str], answers: Sequence[str]) -> dict:
    said = [yes_no(p) for p in predictions]
    truth = [a.strip().lower() for a in answers]
    tp = sum(s == "yes" and t == "yes" for s, t in zip(said, truth))
    fp = sum(s == "yes" and t == "no" for s, t in zip(said, truth))
    fn = sum(s == "no" and t == "yes" for s, t in zip(said, truth))
    tn = sum(s == "no" and t == "no" for s, t in zip(said, truth))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "accuracy": (tp + tn) / len(truth),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "yes_ratio": (tp + fp) / len(truth),
    }


def score(
    metric: str, predictions: Sequence[str], references: Sequence, options: Sequence[Sequence[str]] | None = None
) -> dict:
    """One benchmark's score. references: an answer per question (a list of annotator answers for vqa)."""
    if len(predictions) != len(references) or not predictions:
        raise ValueError(f"{metric}: {len(predictions)} predictions for {len(references)} references")
    if metric == "yes_no":
        return yes_no_scores(predictions, references)
    if metric == "vqa":
        per = [
            vqa_soft_accuracy(p, r if isinstance(r, (list, tuple)) else [r]) for p, r in zip(predictions, references)
        ]
    elif metric == "multiple_choice":
        opts = options or [()] * len(predictions)
        per = [multiple_choice(p, r, o) for p, r, o in zip(predictions, references, opts)]
    elif metric == "exact_match":
        per = [exact_match(p, r) for p, r in zip(predictions, references)]
    elif metric == "exact":
        per = [float(p.strip() == r.strip()) for p, r in zip(predictions, references)]
    else:
        raise ValueError(f"unknown metric {metric!r}; choose from {', '.join(METRICS)}")
    return {"accuracy": sum(per) / len(per)}
