"""Synthetic LLaVA-format data with two task families (read back by `vlmscale.data.samples`, like real data).

Images are 32x32 RGB; the tiny tower cuts them into 4x4-pixel patches (an 8x8 patch grid).

* visual reasoning: one coloured object (4 shapes x 8 colours = 32 classes), large, at a random place.
  What a question needs from the image is that one global attribute, which a single pooled token
  carries; what it needs from the language model grows with the task:
  - `facts`: "what is rule017": an arbitrary table from the object's class to one of 16 answer words,
    one table per rule, rules asked with Zipf-distributed frequency (Michaud et al.'s quantization
    model: each rule is learned abruptly, but how many are learned grows smoothly with LM size). This
    is the paper's regime: knowledge and reasoning live in the LLM, the image contributes a gist.
  - `colour`, `shape`: perception alone (POPE's and MME-perception's role): nearly flat in N and V.
  - `relation` (optional): which side of the image the object is on (needs positions, i.e. tokens).
* OCR-like: pages of glyphs (ten 6x6 bitmaps, "letters" a-j) printed at three sizes: one glyph filling
  the page, a 2x2 layout, or a 4x4 layout. `read` asks for the glyph at a named place, `next` for the
  one after it in reading order. A glyph is legible only once the tokens resolve its layout's scale
  (V >= 1, 4, 16 respectively), so accuracy climbs with V and the LLM's size matters little: the
  paper's OCR family (TextVQA, DocVQA), where fine detail spread over the image decides. Places are
  named on the 4x4 grid whatever the print size ("which letter is at C3": the glyph printed over C3).

Everything is a pure function of the seed, written as LLaVA conversation JSON + PNG files, and
benchmarks in LLaVA's evaluation layout (questions.jsonl + answers.jsonl).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from vlmscale.data.samples import Sample, conversation_samples, vocabulary
from vlmscale.fileio import atomic_write_bytes, atomic_write_text, write_json

IMAGE_SIZE = 32
PATCH = 4  # the tiny tower's patch size: per-patch labels are on this grid
PATCH_GRID = IMAGE_SIZE // PATCH
SHAPES = ("circle", "square", "triangle", "cross")
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 190, 60),
    "blue": (50, 90, 230),
    "yellow": (230, 215, 40),
    "purple": (150, 60, 200),
    "orange": (240, 140, 30),
    "cyan": (40, 200, 210),
    "pink": (240, 120, 180),
}
LETTERS = tuple("abcdefghij")
FAMILY_OF_TASK = {
    "colour": "reasoning",
    "shape": "reasoning",
    "relation": "reasoning",
    "facts": "reasoning",
    "read": "ocr",
    "next": "ocr",
}
# The rule tables are part of the task, not of the sample: a fixed seed, like the glyph alphabet.
FACT_WORDS = (
    "alfa",
    "bravo",
    "charlie",
    "delta",
    "echo",
    "foxtrot",
    "golf",
    "hotel",
    "india",
    "juliett",
    "kilo",
    "lima",
    "mike",
    "november",
    "oscar",
    "papa",
)
FACTS_SEED = 4321
LAYOUTS = (1, 2, 4)  # glyphs per side of an OCR page: one large glyph, 2x2, 4x4


# --------------------------------------------------------------------------- drawing


def _shape_mask(shape: str, size: int = 8) -> np.ndarray:
    """The shape in a size x size box (drawn in an 8-unit frame, scaled)."""
    y, x = (np.mgrid[0:size, 0:size] + 0.5) * (8 / size)
    c = 4.0
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


def draw_object(obj: dict, rng: np.random.Generator) -> np.ndarray:
    """One object: its box is `size` patches wide, its top-left corner at patch (row, col)."""
    img = _background(rng)
    px = obj["size"] * PATCH
    mask = _shape_mask(obj["shape"], px)
    colour = np.array(COLOURS[obj["colour"]]) + rng.integers(-20, 21, size=3)
    r0, c0 = obj["row"] * PATCH, obj["col"] * PATCH
    img[r0 : r0 + px, c0 : c0 + px][mask] = colour
    return np.clip(img, 0, 255).astype(np.uint8)


def draw_page(letters: np.ndarray, glyphs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A layout x layout page of glyphs, each printed at the scale its layout cell allows."""
    img = _background(rng)
    layout = letters.shape[0]
    cell = IMAGE_SIZE // layout
    scale = cell // 8  # glyph pixels per bitmap pixel: 4, 2 or 1
    for r in range(layout):
        for c in range(layout):
            ink = np.array([220, 220, 220]) + rng.integers(-35, 36, size=3)
            bitmap = np.kron(glyphs[letters[r, c]], np.ones((scale, scale), bool))
            top, left = r * cell + scale, c * cell + scale
            img[top : top + 6 * scale, left : left + 6 * scale][bitmap] = ink
    return np.clip(img, 0, 255).astype(np.uint8)


def patch_labels_object(obj: dict) -> tuple[np.ndarray, np.ndarray]:
    """Per-patch (8x8) shape and colour labels over the object's box, 0 = background."""
    shape = np.zeros((PATCH_GRID, PATCH_GRID), np.int64)
    colour = np.zeros_like(shape)
    box = np.s_[obj["row"] : obj["row"] + obj["size"], obj["col"] : obj["col"] + obj["size"]]
    shape[box] = SHAPES.index(obj["shape"]) + 1
    colour[box] = list(COLOURS).index(obj["colour"]) + 1
    return shape, colour


def patch_labels_glyphs(letters: np.ndarray) -> np.ndarray:
    """Per-patch glyph label (1-10): the glyph whose layout cell covers the patch."""
    per_cell = PATCH_GRID // letters.shape[0]
    return np.kron(letters + 1, np.ones((per_cell, per_cell), np.int64))


# --------------------------------------------------------------------------- questions


def object_class(obj: dict) -> int:
    """The joint (shape, colour) class, 0..31."""
    return SHAPES.index(obj["shape"]) * len(COLOURS) + list(COLOURS).index(obj["colour"])


def fact_tables(rules: int) -> np.ndarray:
    """(rules, 32) answer-word indices: rule r maps the object's class to a word, arbitrarily."""
    rng = np.random.default_rng(FACTS_SEED)
    return rng.integers(0, len(FACT_WORDS), size=(rules, len(SHAPES) * len(COLOURS)))


def rule_word(r: int) -> str:
    return f"rule{r:03d}"


class Questions:
    """Question makers for one data spec (the facts task needs its rule tables and frequencies)."""

    def __init__(self, spec: dict):
        facts = spec.get("facts") or {"rules": 128, "zipf": 1.5}
        self.tables = fact_tables(facts["rules"])
        weights = (np.arange(facts["rules"]) + 1.0) ** -facts["zipf"]
        self.rule_p = weights / weights.sum()

    def ask(self, task: str, content, rng: np.random.Generator) -> tuple[str, str]:
        return getattr(self, task)(content, rng)

    def colour(self, obj, rng):
        return "what colour is it", obj["colour"]

    def shape(self, obj, rng):
        return "what shape is it", obj["shape"]

    def relation(self, obj, rng):
        centre = obj["col"] + obj["size"] / 2
        return "which side is it", "left" if centre <= PATCH_GRID / 2 else "right"

    def facts(self, obj, rng):
        r = int(rng.choice(len(self.rule_p), p=self.rule_p))
        return f"what is {rule_word(r)}", FACT_WORDS[self.tables[r, object_class(obj)]]

    def read(self, letters, rng):
        # A place names one of the 4x4 finest cells whatever the page's print size; the answer is the glyph
        # printed over it. One routing rule for every layout: attend to the token(s) at that place.
        r, c = (int(x) for x in rng.integers(0, FINEST, size=2))
        return f"which letter is at {cell_name(r, c)}", LETTERS[glyph_at(letters, r, c)]

    def next(self, letters, rng):
        # The glyph after the one over a place, in the page's reading order (same row); a one-glyph page has
        # no "after", so there the question is the plain read.
        layout = letters.shape[0]
        if layout == 1:
            return self.read(letters, rng)
        per = FINEST // layout
        r, c = int(rng.integers(0, FINEST)), int(rng.integers(0, FINEST - per))
        return f"which letter follows {cell_name(r, c)}", LETTERS[letters[r // per, c // per + 1]]


FINEST = 4  # places are named on the finest layout's 4x4 grid


def glyph_at(letters: np.ndarray, row: int, col: int) -> int:
    """The glyph printed over finest cell (row, col) of a page of any layout."""
    per = FINEST // letters.shape[0]
    return int(letters[row // per, col // per])


def cell_name(row: int, col: int) -> str:
    """Chess-like place names on the 4x4 grid (rows A-D, columns 1-4): one word per place, like a layout key."""
    return f"{'ABCD'[row]}{col + 1}"


OBJECT_SIZES = (3, 4, 5)  # patches per side: the object covers 14-39 % of the image, salient as a photo's subject


def random_object(rng: np.random.Generator) -> dict:
    size = int(rng.choice(OBJECT_SIZES))
    row, col = (int(x) for x in rng.integers(0, PATCH_GRID - size + 1, size=2))
    return {
        "row": row,
        "col": col,
        "size": size,
        "shape": SHAPES[int(rng.integers(len(SHAPES)))],
        "colour": list(COLOURS)[int(rng.integers(len(COLOURS)))],
    }


def random_page(rng: np.random.Generator) -> np.ndarray:
    layout = LAYOUTS[int(rng.integers(len(LAYOUTS)))]  # print sizes in equal shares
    return rng.integers(0, len(LETTERS), size=(layout, layout))


# --------------------------------------------------------------------------- generation


def _png_bytes(array: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _make_image(family: str, rng: np.random.Generator, glyphs: np.ndarray):
    """Return (pixels, content, (shape, colour, glyph) per-patch labels) for one image of a family."""
    if family == "reasoning":
        obj = random_object(rng)
        shape, colour = patch_labels_object(obj)
        return draw_object(obj, rng), obj, (shape, colour, np.zeros_like(shape))
    letters = random_page(rng)
    glyph = patch_labels_glyphs(letters)
    zeros = np.zeros_like(glyph)
    return draw_page(letters, glyphs, rng), letters, (zeros, zeros, glyph)


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
    ask = Questions(spec)
    tasks_by_family = {f: [t for t in spec["tasks"] if FAMILY_OF_TASK[t] == f] for f in ("reasoning", "ocr")}
    train_records, image_names, labels = [], [], {"shape": [], "colour": [], "glyph": []}
    questions = {t: [] for t in spec["tasks"]}
    split_sizes = {"train": spec["train_images_per_family"], "test": spec["test_images_per_family"]}
    per_test_image = spec.get("test_questions_per_image", 1)
    weights = spec.get("task_weights") or {}
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
                    p = np.array([weights.get(t, 1.0) for t in tasks], float)
                    for q in range(spec["questions_per_image"][family]):
                        task = tasks[int(rng.choice(len(tasks), p=p / p.sum()))] if len(tasks) > 1 else tasks[0]
                        text, answer = ask.ask(task, content, rng)
                        train_records.append(_conversation(f"{name}#{q}", name, text, answer, task))
                    continue
                for task in tasks:
                    for _ in range(per_test_image):
                        text, answer = ask.ask(task, content, rng)
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
        "vocabulary": vocabulary(all_samples(train_records, questions)),
    }
    write_json(out / "manifest.json", manifest)
    return manifest


def all_samples(train_records: list[dict], questions: dict[str, list[dict]]) -> list[Sample]:
    """The training conversations and benchmark questions as samples (what the vocabulary is built from)."""
    train = conversation_samples(train_records, Path("train.json"), [])
    return train + [Sample(it["image"], it["text"], it["answer"]) for items in questions.values() for it in items]


def main(cfg: dict) -> dict:
    """Stage entry point (cfg: {'data': spec, 'out': folder}): generate the synthetic data set, or check a
    real LLaVA-format one and write its manifest."""
    if cfg["data"]["source"] == "llava":
        from vlmscale.data import llava

        return llava.prepare(cfg["data"], cfg["out"])
    return generate(cfg["data"], cfg["out"])
