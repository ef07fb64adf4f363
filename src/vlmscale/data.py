"""Synthetic LLaVA-format data with two task families, and the loader shared with real LLaVA data.

Images are 32x32 RGB made of a 4x4 layout of 8x8-pixel cells (2x2 vision patches each).

* visual reasoning: 2-4 coloured shapes in distinct cells (each shape and colour at most once). The
  questions name one object and ask for another of its attributes (colour, shape, side): the language
  model must route the named attribute to the right visual token, several hops deep; a coarse summary
  of the image already answers many of them.
* OCR-like: every cell holds one of ten small glyphs (6x6 bitmaps, "letters" a-j). Reading a glyph at a
  given row/column needs fine, spatially resolved detail spread over the whole image.

Everything is a pure function of the seed, written as LLaVA conversation JSON + PNG files, and
benchmarks in LLaVA's evaluation layout (questions.jsonl + answers.jsonl).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vlmscale.fileio import atomic_write_bytes, atomic_write_text, write_json

CELL = 8  # pixels per layout cell
GRID = 4  # layout cells per side
IMAGE_SIZE = CELL * GRID
SHAPES = ("circle", "square", "triangle", "cross")
COLOURS = {"red": (220, 40, 40), "green": (40, 190, 60), "blue": (50, 90, 230), "yellow": (230, 215, 40)}
LETTERS = tuple("abcdefghij")
FAMILY_OF_TASK = {"colour": "reasoning", "shape": "reasoning", "relation": "reasoning", "read": "ocr", "next": "ocr"}
TASKS = tuple(FAMILY_OF_TASK)


@dataclass(frozen=True)
class Sample:
    """One question about one image: what every loader (synthetic or real LLaVA) yields."""

    image: str  # path relative to the data root (absolute once a loader joins its image folder)
    question: str
    answer: str
    task: str = ""
    references: tuple[str, ...] = ()  # benchmarks: every annotator's answer (VQA soft accuracy)
    options: tuple[str, ...] = ()  # benchmarks: the choices of a multiple-choice question, in letter order


# --------------------------------------------------------------------------- drawing

def _shape_mask(shape: str) -> np.ndarray:
    y, x = np.mgrid[0:CELL, 0:CELL] + 0.5
    c = CELL / 2
    if shape == "circle":
        return (x - c) ** 2 + (y - c) ** 2 <= 3.1**2
    if shape == "square":
        return (abs(x - c) <= 3) & (abs(y - c) <= 3)
    if shape == "triangle":
        return (y >= 1) & (y <= 7) & (abs(x - c) <= (y - 1) / 2 + 0.3)
    if shape == "cross":
        return ((abs(x - c) <= 1) | (abs(y - c) <= 1)) & (abs(x - c) <= 3.5) & (abs(y - c) <= 3.5)
    raise ValueError(f"unknown shape {shape!r}")


def glyph_bitmaps(n: int = len(LETTERS), seed: int = 1234) -> np.ndarray:
    """Ten distinct 6x6 binary glyphs (fixed seed: the alphabet is part of the task, not of the sample)."""
    rng = np.random.default_rng(seed)
    glyphs: list[np.ndarray] = []
    while len(glyphs) < n:
        g = rng.random((6, 6)) < 0.5
        if all(np.sum(g != h) >= 12 for h in glyphs):
            glyphs.append(g)
    return np.stack(glyphs)


def _background(rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, 40, size=(IMAGE_SIZE, IMAGE_SIZE, 3)).astype(np.int16)


def draw_shapes(objects: list[dict], rng: np.random.Generator) -> np.ndarray:
    img = _background(rng)
    for obj in objects:
        mask = _shape_mask(obj["shape"])
        colour = np.array(COLOURS[obj["colour"]]) + rng.integers(-20, 21, size=3)
        r0, c0 = obj["row"] * CELL, obj["col"] * CELL
        img[r0 : r0 + CELL, c0 : c0 + CELL][mask] = colour
    return np.clip(img, 0, 255).astype(np.uint8)


def draw_glyphs(letters: np.ndarray, glyphs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    img = _background(rng)
    for r in range(GRID):
        for c in range(GRID):
            ink = np.array([220, 220, 220]) + rng.integers(-35, 36, size=3)
            cell = img[r * CELL + 1 : r * CELL + 7, c * CELL + 1 : c * CELL + 7]
            cell[glyphs[letters[r, c]]] = ink
    return np.clip(img, 0, 255).astype(np.uint8)


def patch_labels_shapes(objects: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """Per-patch (8x8) shape and colour labels, 0 = background."""
    shape = np.zeros((2 * GRID, 2 * GRID), np.int64)
    colour = np.zeros_like(shape)
    for obj in objects:
        sl = np.s_[2 * obj["row"] : 2 * obj["row"] + 2, 2 * obj["col"] : 2 * obj["col"] + 2]
        shape[sl] = SHAPES.index(obj["shape"]) + 1
        colour[sl] = list(COLOURS).index(obj["colour"]) + 1
    return shape, colour


def patch_labels_glyphs(letters: np.ndarray) -> np.ndarray:
    """Per-patch glyph label (1-10) and, to make position inside a glyph learnable, nothing else."""
    return np.kron(letters + 1, np.ones((2, 2), np.int64))


# --------------------------------------------------------------------------- questions

def _colour_question(objects, rng):
    # Name an object by one attribute, ask for another. The naming word comes last, where the next-token
    # prediction is made, so answering is one attention hop from that word to the right visual token.
    obj = objects[int(rng.integers(len(objects)))]
    return f"what colour is the {obj['shape']}", obj["colour"]


def _shape_question(objects, rng):
    obj = objects[int(rng.integers(len(objects)))]
    return f"what shape is {obj['colour']}", obj["shape"]


def _relation_question(objects, rng):
    obj = objects[int(rng.integers(len(objects)))]
    if rng.random() < 0.5:
        return f"which side is {obj['colour']}", "left" if obj["col"] < GRID // 2 else "right"
    return f"top or bottom for {obj['colour']}", "top" if obj["row"] < GRID // 2 else "bottom"


def cell_name(row: int, col: int) -> str:
    """Chess-like cell names (rows A-D, columns 1-4): one token per position, as a document's layout key."""
    return f"{'ABCD'[row]}{col + 1}"


def _read_question(letters, rng):
    r, c = rng.integers(0, GRID, size=2)
    return f"which letter is at {cell_name(r, c)}", LETTERS[letters[r, c]]


def _next_question(letters, rng):
    # The letter after a cell in reading order (same row, next column): a lookup at a fixed offset.
    r, c = rng.integers(0, GRID), rng.integers(0, GRID - 1)
    return f"which letter follows {cell_name(r, c)}", LETTERS[letters[r, c + 1]]


QUESTION_MAKERS = {
    "colour": _colour_question,
    "shape": _shape_question,
    "relation": _relation_question,
    "read": _read_question,
    "next": _next_question,
}


def _random_objects(rng: np.random.Generator) -> list[dict]:
    n = int(rng.integers(2, 5))  # two or more, so relations are always askable
    cells = rng.choice(GRID * GRID, size=n, replace=False)
    shapes = rng.permutation(len(SHAPES))[:n]  # each shape and each colour at most once per image,
    colours = rng.permutation(len(COLOURS))[:n]  # so "the circle" or "the red one" names one object
    return [
        {"row": int(cell // GRID), "col": int(cell % GRID), "shape": SHAPES[s], "colour": list(COLOURS)[c]}
        for cell, s, c in zip(cells, shapes, colours)
    ]


# --------------------------------------------------------------------------- generation

def _png_bytes(array: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _make_image(family: str, rng: np.random.Generator, glyphs: np.ndarray):
    """Return (pixels, content, patch labels dict) for one image of a family."""
    if family == "reasoning":
        objects = _random_objects(rng)
        shape, colour = patch_labels_shapes(objects)
        glyph = np.zeros_like(shape)
        return draw_shapes(objects, rng), objects, (shape, colour, glyph)
    letters = rng.integers(0, len(LETTERS), size=(GRID, GRID))
    glyph = patch_labels_glyphs(letters)
    zeros = np.zeros_like(glyph)
    return draw_glyphs(letters, glyphs, rng), letters, (zeros, zeros, glyph)


def _conversation(record_id: str, image: str, question: str, answer: str, task: str) -> dict:
    return {
        "id": record_id,
        "image": image,
        "task": task,
        "conversations": [
            {"from": "human", "value": f"<image>\n{question}"},
            {"from": "gpt", "value": answer},
        ],
    }


def generate(spec: dict, out_dir: str | Path) -> dict:
    """Write the synthetic data set for `spec` under out_dir; return the manifest (also written)."""
    out = Path(out_dir)
    rng = np.random.default_rng(spec["seed"])
    glyphs = glyph_bitmaps()
    tasks_by_family = {f: [t for t in spec["tasks"] if FAMILY_OF_TASK[t] == f] for f in ("reasoning", "ocr")}
    train_records, image_names, labels = [], [], {"shape": [], "colour": [], "glyph": []}
    questions = {t: [] for t in spec["tasks"]}
    split_sizes = {"train": spec["train_images_per_family"], "test": spec["test_images_per_family"]}
    for split, n_images in split_sizes.items():
        for family, tasks in tasks_by_family.items():
            if not tasks:
                continue
            for i in range(n_images):
                pixels, content, patch = _make_image(family, rng, glyphs)
                name = f"images/{split}_{family}_{i:05d}.png"
                atomic_write_bytes(out / name, _png_bytes(pixels))
                image_names.append(name)
                for key, value in zip(("shape", "colour", "glyph"), patch):
                    labels[key].append(value)
                if split == "train":
                    for q in range(spec["questions_per_image"][family]):
                        task = tasks[int(rng.integers(len(tasks)))]
                        text, answer = QUESTION_MAKERS[task](content, rng)
                        train_records.append(_conversation(f"{name}#{q}", name, text, answer, task))
                else:
                    for task in tasks:
                        text, answer = QUESTION_MAKERS[task](content, rng)
                        questions[task].append({"image": name, "text": text, "answer": answer})
    _write_outputs(out, spec, train_records, questions, image_names, labels)
    return build_manifest(out, spec, image_names, train_records, questions)


def _write_outputs(out, spec, train_records, questions, image_names, labels) -> None:
    write_json(out / "train.json", train_records)
    for task, items in questions.items():
        write_benchmark(out / "benchmarks" / task, items, category=FAMILY_OF_TASK[task])
    buffer = __import__("io").BytesIO()
    np.savez_compressed(
        buffer,
        images=np.array(image_names),
        **{k: np.stack(v) for k, v in labels.items()},
    )
    atomic_write_bytes(out / "patch_labels.npz", buffer.getvalue())


def write_benchmark(folder: Path, items: list[dict], category: str) -> None:
    """LLaVA evaluation layout: questions.jsonl (question_id, image, text, category) + answers.jsonl."""
    q_lines = [
        json.dumps({"question_id": i, "image": it["image"], "text": it["text"], "category": category})
        for i, it in enumerate(items)
    ]
    a_lines = [json.dumps({"question_id": i, "answer": it["answer"]}) for i, it in enumerate(items)]
    atomic_write_text(folder / "questions.jsonl", "\n".join(q_lines) + "\n")
    atomic_write_text(folder / "answers.jsonl", "\n".join(a_lines) + "\n")


def build_manifest(out: Path, spec: dict, image_names, train_records, questions) -> dict:
    manifest = {
        "spec": spec,
        "root": str(out),
        "train": "train.json",
        "images": sorted(image_names),
        "n_train_samples": len(train_records),
        "benchmarks": {t: {"path": f"benchmarks/{t}", "n_questions": len(q)} for t, q in questions.items()},
        "vocabulary": sorted(vocabulary(train_records, questions)),
    }
    write_json(out / "manifest.json", manifest)
    return manifest


def vocabulary(train_records, questions) -> set[str]:
    words: set[str] = set()
    for rec in train_records:
        for turn in rec["conversations"]:
            words.update(turn["value"].replace("<image>", " ").split())
    for items in questions.values():
        for it in items:
            words.update(it["text"].split())
            words.update(it["answer"].split())
    return words


# --------------------------------------------------------------------------- loading (synthetic and real)

def conversation_samples(records, source: Path, problems: list[str]) -> list[Sample]:
    """Samples from LLaVA conversation records; malformed records become problems, not exceptions."""
    if not isinstance(records, list):
        problems.append(f"{source}: expected a JSON list of conversation records, got {type(records).__name__}")
        return []
    samples = []
    for k, rec in enumerate(records):
        where = f"{source}: record {k} (id {rec.get('id')!r})" if isinstance(rec, dict) else f"{source}: record {k}"
        turns = rec.get("conversations") if isinstance(rec, dict) else None
        if isinstance(rec, dict) and "image" not in rec:
            continue  # a text-only record (the 665K mix has ~40K): no visual tokens to train; counted by llava.prepare
        if not isinstance(rec, dict) or not isinstance(rec.get("image"), str):
            problems.append(f"{where}: needs an 'image' path")
            continue
        if not isinstance(turns, list) or len(turns) < 2 or len(turns) % 2:
            problems.append(f"{where}: needs an even number (>= 2) of conversation turns")
            continue
        for human, gpt in zip(turns[0::2], turns[1::2]):
            ok = isinstance(human, dict) and isinstance(gpt, dict)
            if not ok or human.get("from") != "human" or gpt.get("from") != "gpt" or \
                    not isinstance(human.get("value"), str) or not isinstance(gpt.get("value"), str):
                problems.append(f"{where}: turns must alternate human/gpt, each with a string 'value'")
                break
            question = human["value"].replace("<image>", "").strip()
            samples.append(Sample(rec["image"], question, gpt["value"].strip(), rec.get("task", "")))
    return samples


def load_llava_conversations(json_path: str | Path) -> list[Sample]:
    """Read LLaVA conversation JSON into (image, question, answer) samples, one per human/gpt turn pair."""
    problems: list[str] = []
    samples = conversation_samples(json.loads(Path(json_path).read_text()), Path(json_path), problems)
    if problems:
        raise ValueError("; ".join(problems[:10]))
    return samples


def load_benchmark(folder: str | Path) -> list[Sample]:
    """Read a LLaVA-style benchmark (questions.jsonl + answers.jsonl) into samples, in question order."""
    folder = Path(folder)
    questions = [json.loads(line) for line in (folder / "questions.jsonl").read_text().splitlines() if line.strip()]
    answers = {
        a["question_id"]: a["answer"]
        for a in map(json.loads, (folder / "answers.jsonl").read_text().splitlines())
    }
    if not questions:
        raise ValueError(f"benchmark {folder} has no questions")
    missing = [q["question_id"] for q in questions if q["question_id"] not in answers]
    if missing:
        raise ValueError(f"benchmark {folder}: {len(missing)} questions have no answer (first: {missing[0]})")
    return [benchmark_sample(q, answers[q["question_id"]]) for q in questions]


def benchmark_sample(question: dict, answer) -> Sample:
    """An answer is one string, or (VQA) the list of the annotators' answers; the first is the reference
    shown in examples and used by the single-answer metrics."""
    references = tuple(str(a) for a in answer) if isinstance(answer, list) else (str(answer),)
    return Sample(question["image"], question["text"], references[0], question.get("category", ""),
                  references, tuple(str(o) for o in question.get("options", ())))


def main(cfg: dict) -> dict:
    """Stage entry point (cfg: {'data': spec, 'out': folder}): generate the synthetic data set, or check a
    real LLaVA-format one and write its manifest."""
    if cfg["data"]["source"] == "llava":
        from vlmscale import llava

        return llava.prepare(cfg["data"], cfg["out"])
    return generate(cfg["data"], cfg["out"])
