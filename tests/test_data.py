"""The synthetic generator: deterministic, LLaVA-format, readable by the same loader as real data."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from PIL import Image

from vlmscale import data
from conftest import SMALL_DATA


def digest(root):
    h = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.name != "manifest.json":
            h.update(path.relative_to(root).as_posix().encode())
            h.update(path.read_bytes())
    return h.hexdigest()


def test_same_seed_same_bytes_other_seed_differs(tmp_path, small_data):
    again = tmp_path / "again"
    data.generate(SMALL_DATA, again)
    assert digest(again) == digest(small_data)
    other = tmp_path / "other"
    data.generate({**SMALL_DATA, "seed": 1}, other)
    assert digest(other) != digest(small_data)


def test_train_set_is_llava_conversation_json(small_data):
    records = json.loads((small_data / "train.json").read_text())
    assert len(records) == SMALL_DATA["train_images_per_family"] * sum(SMALL_DATA["questions_per_image"].values())
    rec = records[0]
    assert rec["conversations"][0]["from"] == "human" and rec["conversations"][0]["value"].startswith("<image>\n")
    assert rec["conversations"][1]["from"] == "gpt"
    image = Image.open(small_data / rec["image"])
    assert image.size == (data.IMAGE_SIZE, data.IMAGE_SIZE) and image.mode == "RGB"
    samples = data.load_llava_conversations(small_data / "train.json")
    assert len(samples) == len(records) and "<image>" not in samples[0].question


def test_benchmarks_in_llava_eval_layout_have_both_families(small_data):
    manifest = json.loads((small_data / "manifest.json").read_text())
    assert set(manifest["benchmarks"]) == set(SMALL_DATA["tasks"])
    for task in SMALL_DATA["tasks"]:
        samples = data.load_benchmark(small_data / "benchmarks" / task)
        assert len(samples) == SMALL_DATA["test_images_per_family"]
        assert {s.task for s in samples} == {data.FAMILY_OF_TASK[task]}


def test_answers_are_what_the_image_shows():
    rng = np.random.default_rng(3)
    objects = data._random_objects(rng)
    assert len({o["shape"] for o in objects}) == len(objects) == len({o["colour"] for o in objects})
    question, answer = data._colour_question(objects, rng)
    shape = question.split()[-1]
    assert answer == next(o["colour"] for o in objects if o["shape"] == shape)
    letters = rng.integers(0, len(data.LETTERS), size=(data.GRID, data.GRID))
    question, answer = data._read_question(letters, rng)
    cell = question.split()[-1]
    assert answer == data.LETTERS[letters["ABCD".index(cell[0]), int(cell[1]) - 1]]


def test_patch_labels_mark_each_object_on_its_two_by_two_patches():
    objects = [{"row": 1, "col": 2, "shape": "circle", "colour": "blue"}]
    shape, colour = data.patch_labels_shapes(objects)
    assert shape.sum() == 4 * (data.SHAPES.index("circle") + 1)
    assert (shape[2:4, 4:6] > 0).all() and colour[2, 4] == list(data.COLOURS).index("blue") + 1


def test_glyphs_are_pairwise_distinct():
    glyphs = data.glyph_bitmaps()
    for i in range(len(glyphs)):
        for j in range(i):
            assert (glyphs[i] != glyphs[j]).sum() >= 12


def test_malformed_llava_json_names_the_record(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"id": "x1", "image": "a.png", "conversations": [{"from": "gpt", "value": "hi"}]}]))
    with pytest.raises(ValueError, match="x1"):
        data.load_llava_conversations(bad)


def test_benchmark_without_questions_is_an_error(tmp_path):
    (tmp_path / "questions.jsonl").write_text("")
    (tmp_path / "answers.jsonl").write_text("")
    with pytest.raises(ValueError, match="no questions"):
        data.load_benchmark(tmp_path)
