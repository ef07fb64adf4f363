"""The synthetic generator: deterministic, LLaVA-format, readable by the same loader as real data."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from conftest import SMALL_DATA
from PIL import Image

from vlmscale.data import samples as samples_io
from vlmscale.data import synthetic as data


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
    samples = samples_io.load_llava_conversations(small_data / "train.json")
    assert len(samples) == len(records) and "<image>" not in samples[0].question


def test_benchmarks_in_llava_eval_layout_have_both_families(small_data):
    manifest = json.loads((small_data / "manifest.json").read_text())
    assert set(manifest["benchmarks"]) == set(SMALL_DATA["tasks"])
    for task in SMALL_DATA["tasks"]:
        samples = samples_io.load_benchmark(small_data / "benchmarks" / task)
        assert len(samples) == SMALL_DATA["test_images_per_family"]
        assert {s.task for s in samples} == {data.FAMILY_OF_TASK[task]}


def test_answers_are_what_the_image_shows():
    rng = np.random.default_rng(3)
    ask = data.Questions({"facts": {"rules": 16, "zipf": 1.5}})
    obj = data.random_object(rng)
    assert ask.ask("colour", obj, rng) == ("what colour is it", obj["colour"])
    assert ask.ask("shape", obj, rng) == ("what shape is it", obj["shape"])
    question, answer = ask.ask("facts", obj, rng)
    rule = int(question.split()[-1][len("rule") :])
    assert answer == data.FACT_WORDS[data.fact_tables(16)[rule, data.object_class(obj)]]
    letters = rng.integers(0, len(data.LETTERS), size=(4, 4))
    question, answer = ask.ask("read", letters, rng)
    cell = question.split()[-1]
    assert answer == data.LETTERS[letters["ABCD".index(cell[0]), int(cell[1]) - 1]]
    quadrants = rng.integers(0, len(data.LETTERS), size=(2, 2))
    for _ in range(20):  # on a 2x2 page a place names the quadrant it lies in
        question, answer = ask.ask("read", quadrants, rng)
        cell = question.split()[-1]
        assert answer == data.LETTERS[quadrants["ABCD".index(cell[0]) // 2, (int(cell[1]) - 1) // 2]]
        question, answer = ask.ask("next", quadrants, rng)
        cell = question.split()[-1]
        assert (int(cell[1]) - 1) // 2 == 0 and answer == data.LETTERS[quadrants["ABCD".index(cell[0]) // 2, 1]]


def test_facts_rules_are_asked_with_zipf_frequency(tmp_path):
    spec = {
        **SMALL_DATA,
        "tasks": ["facts"],
        "train_images_per_family": 400,
        "test_images_per_family": 1,
        "questions_per_image": {"reasoning": 10, "ocr": 0},
        "facts": {"rules": 32, "zipf": 1.5},
    }
    data.generate(spec, tmp_path)
    rules = [s.question.split()[-1] for s in samples_io.load_llava_conversations(tmp_path / "train.json")]
    counts = np.array([rules.count(data.rule_word(r)) for r in range(32)])
    expected = (np.arange(32) + 1.0) ** -1.5 / ((np.arange(32) + 1.0) ** -1.5).sum() * len(rules)
    assert counts[0] > counts[3] > counts[15]  # frequent rules first
    assert abs(counts[:4].sum() - expected[:4].sum()) < 4 * np.sqrt(expected[:4].sum())


def test_patch_labels_cover_the_object_box_and_each_glyph_cell():
    obj = {"row": 1, "col": 2, "size": 3, "shape": "circle", "colour": "blue"}
    shape, colour = data.patch_labels_object(obj)
    assert shape.sum() == 9 * (data.SHAPES.index("circle") + 1)
    assert (shape[1:4, 2:5] > 0).all() and colour[2, 4] == list(data.COLOURS).index("blue") + 1
    quadrants = np.array([[0, 1], [2, 3]])
    glyph = data.patch_labels_glyphs(quadrants)
    assert glyph.shape == (8, 8) and (glyph[:4, 4:] == 2).all() and (glyph[4:, :4] == 3).all()


def test_pages_print_each_layout_at_its_own_scale():
    glyphs = data.glyph_bitmaps()
    rng = np.random.default_rng(0)
    for layout in data.LAYOUTS:
        letters = np.zeros((layout, layout), int)
        page = data.draw_page(letters, glyphs, rng)
        ink = page.max(axis=2) > 100
        cell = data.IMAGE_SIZE // layout
        assert ink[:cell, :cell].sum() == glyphs[0].sum() * (cell // 8) ** 2  # one glyph per cell, scaled


def test_glyphs_are_pairwise_distinct():
    glyphs = data.glyph_bitmaps()
    for i in range(len(glyphs)):
        for j in range(i):
            assert (glyphs[i] != glyphs[j]).sum() >= 12


def test_malformed_llava_json_names_the_record(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"id": "x1", "image": "a.png", "conversations": [{"from": "gpt", "value": "hi"}]}]))
    with pytest.raises(ValueError, match="x1"):
        samples_io.load_llava_conversations(bad)


def test_benchmark_without_questions_is_an_error(tmp_path):
    (tmp_path / "questions.jsonl").write_text("")
    (tmp_path / "answers.jsonl").write_text("")
    with pytest.raises(ValueError, match="no questions"):
        samples_io.load_benchmark(tmp_path)
