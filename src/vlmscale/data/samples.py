"""LLaVA's file formats, read into `Sample`s: what the synthetic generator writes and the real-data check
reads, so both sides (and training and evaluation) share one reader of each.

* conversations: a JSON list of {"id", "image", "conversations": [{"from": "human", "value": "<image>\\n..."},
  {"from": "gpt", "value": ...}, ...]}; one sample per record, its turns in order (LLaVA trains a
  conversation as one sequence, the loss on every answer);
* benchmarks: a folder with `questions.jsonl` ({"question_id", "image", "text"[, "category", "options"]})
  and `answers.jsonl` ({"question_id", "answer"}; VQA: the list of every annotator's answer).

Readers collect problems (file, record, what is wrong) instead of raising on the first one, so a data
check can report all of them at once; the `load_*` forms raise them as one ValueError.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

MAX_LISTED = 10


@dataclass(frozen=True)
class Sample:
    """A conversation about one image (most often one question), or about none (a text-only record, as
    ~40K of LLaVA-665K: trained with no visual tokens): what every loader (synthetic or real LLaVA) yields."""

    image: str  # path relative to the data root (absolute once a loader joins its image folder); "": none
    question: str  # the first turn's (the one the image comes with; what QueCC conditions on)
    answer: str
    task: str = ""
    references: tuple[str, ...] = ()  # benchmarks: every annotator's answer (VQA soft accuracy)
    options: tuple[str, ...] = ()  # benchmarks: the choices of a multiple-choice question, in letter order
    turns: tuple[tuple[str, str], ...] = ()  # a conversation's later (question, answer) turns
    more_images: tuple[str, ...] = ()  # a question about several images (lmms-eval's MMMU): the 2nd, 3rd, ...

    @property
    def has_image(self) -> bool:
        return bool(self.image)

    @property
    def images(self) -> tuple[str, ...]:
        """Every image, in order: each becomes V visual tokens (none for a text-only sample)."""
        return (self.image, *self.more_images) if self.image else ()

    @property
    def conversation(self) -> tuple[tuple[str, str], ...]:
        return ((self.question, self.answer), *self.turns)


def with_image_root(samples: list[Sample], image_root: str) -> list[Sample]:
    return [dataclasses.replace(s, image=os.path.join(image_root, s.image)) if s.has_image else s for s in samples]


def vocabulary(samples: Iterable[Sample]) -> list[str]:
    """Every word of every question and answer: the word-level tokenizer's vocabulary."""
    words: set[str] = set()
    for s in samples:
        for question, answer in s.conversation:
            words.update(question.split())
            words.update(answer.split())
    return sorted(words)


def _raise_problems(problems: list[str]) -> None:
    if problems:
        raise ValueError("; ".join(problems[:MAX_LISTED]))


# --------------------------------------------------------------------------- conversations


def conversation_samples(records, source: Path, problems: list[str]) -> list[Sample]:
    """Samples from LLaVA conversation records; malformed records become problems, not exceptions."""
    if not isinstance(records, list):
        problems.append(f"{source}: expected a JSON list of conversation records, got {type(records).__name__}")
        return []
    samples = []
    for k, rec in enumerate(records):
        samples += _record_samples(rec, f"{source}: record {k}", problems)
    return samples


def _record_samples(rec, where: str, problems: list[str]) -> list[Sample]:
    if isinstance(rec, dict):
        where = f"{where} (id {rec.get('id')!r})"
    # no "image" key: a text-only record (LLaVA's 665K mix has ~40K), trained with no visual tokens
    if not isinstance(rec, dict) or ("image" in rec and not (isinstance(rec["image"], str) and rec["image"])):
        problems.append(f"{where}: 'image' must be a path (or absent, for a text-only record)")
        return []
    turns = rec.get("conversations")
    if not isinstance(turns, list) or len(turns) < 2 or len(turns) % 2:
        problems.append(f"{where}: needs an even number (>= 2) of conversation turns")
        return []
    pairs = []
    for human, gpt in zip(turns[0::2], turns[1::2]):
        if not (_is_turn(human, "human") and _is_turn(gpt, "gpt")):
            problems.append(f"{where}: turns must alternate human/gpt, each with a string 'value'")
            return []
        pairs.append((human["value"].replace("<image>", "").strip(), gpt["value"].strip()))
    (question, answer), *later = pairs
    return [Sample(rec.get("image", ""), question, answer, rec.get("task", ""), turns=tuple(later))]


def _is_turn(turn, speaker: str) -> bool:
    return isinstance(turn, dict) and turn.get("from") == speaker and isinstance(turn.get("value"), str)


def load_llava_conversations(json_path: str | Path) -> list[Sample]:
    """Read LLaVA conversation JSON into samples, one per record (conversation)."""
    problems: list[str] = []
    samples = conversation_samples(json.loads(Path(json_path).read_text()), Path(json_path), problems)
    _raise_problems(problems)
    return samples


# --------------------------------------------------------------------------- benchmarks


def read_jsonl(path: Path, problems: list[str]) -> list[dict]:
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            problems.append(f"{path}:{number}: not valid JSON ({exc.msg})")
    return rows


def read_benchmark(folder: Path, problems: list[str]) -> list[Sample]:
    """A benchmark folder's questions with their answers, in question order."""
    questions_path, answers_path = folder / "questions.jsonl", folder / "answers.jsonl"
    for path in (questions_path, answers_path):
        if not path.is_file():
            problems.append(f"benchmark {folder.name}: {path} is missing")
            return []
    questions, answers = read_jsonl(questions_path, problems), read_jsonl(answers_path, problems)
    if not questions:
        problems.append(f"benchmark {folder.name}: {questions_path} has no questions")
        return []
    by_id = {a.get("question_id"): a.get("answer") for a in answers}
    samples = []
    for q in questions:
        if not {"question_id", "image", "text"} <= set(q):
            problems.append(
                f"benchmark {folder.name}: question {q.get('question_id')!r} needs question_id, image and text"
            )
        elif by_id.get(q["question_id"]) in (None, []):
            problems.append(f"benchmark {folder.name}: question {q['question_id']!r} has no answer in {answers_path}")
        else:
            samples.append(benchmark_sample(q, by_id[q["question_id"]]))
    return samples


def load_benchmark(folder: str | Path) -> list[Sample]:
    """Read a LLaVA-style benchmark folder into samples, in question order; any problem raises."""
    problems: list[str] = []
    samples = read_benchmark(Path(folder), problems)
    _raise_problems(problems)
    return samples


def benchmark_sample(question: dict, answer) -> Sample:
    """An answer is one string, or (VQA) the list of the annotators' answers; the first is the reference
    shown in examples and used by the single-answer metrics."""
    references = tuple(str(a) for a in answer) if isinstance(answer, list) else (str(answer),)
    return Sample(
        question["image"],
        question["text"],
        references[0],
        question.get("category", ""),
        references,
        tuple(str(o) for o in question.get("options", ())),
    )
