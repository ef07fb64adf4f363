"""Text-only records (~40K of LLaVA-665K) are trained with no visual tokens, as LLaVA does: read from the
JSON, laid out without IMAGE placeholders, mixed with image records in one batch, and counted by the
step count and the data check."""

from __future__ import annotations

import collections
import dataclasses
import json

import pytest
import torch
from helpers import cell_cfg

from vlmscale.data import batching
from vlmscale.data.samples import Sample, load_llava_conversations, with_image_root
from vlmscale.data.tokenizer import IGNORE, IMAGE, WordTokenizer
from vlmscale.model import vlm as model
from vlmscale.training import trainer as train

LLM = {"name": "t", "source": "config", "arch": "qwen2", "hidden_size": 32, "intermediate_size": 64,
       "num_layers": 2, "num_heads": 2}  # fmt: skip
GRID, DIM = 4, 16


class Features:
    """A feature source as vlmscale.model.vision's: features per image path, and a blank image's."""

    def __init__(self):
        self.asked: list[list[str]] = []

    def __call__(self, paths):
        self.asked.append(list(paths))
        gens = [torch.Generator().manual_seed(len(p)) for p in paths]  # a fixed feature map per image
        return torch.stack([torch.randn(GRID * GRID, DIM, generator=g) for g in gens])

    def blank(self):
        return torch.zeros(GRID * GRID, DIM)


def mixed_samples() -> list[Sample]:
    return [
        Sample("a.png", "what colour is it", "red", more_images=("cc.png",)),  # two images
        Sample("", "which side now", "left"),  # text-only
        Sample("bb.png", "what colour is it now", "red"),
        Sample("", "what colour", "red"),  # text-only
    ]


def test_a_record_without_image_is_a_text_only_sample(tmp_path):
    def turns(question, answer):
        return [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]

    records = [
        {"id": 1, "image": "x.png", "conversations": turns("<image>\nq", "a")},
        {"id": 2, "conversations": turns("hello", "hi")},
        {"id": 3, "image": "", "conversations": turns("q", "a")},
    ]
    (tmp_path / "mix.json").write_text(json.dumps(records[:2]))
    image, text = with_image_root(load_llava_conversations(tmp_path / "mix.json"), "/root")
    assert image.has_image and image.image == "/root/x.png"
    assert not text.has_image and text.image == "" and text.conversation == (("hello", "hi"),)
    (tmp_path / "bad.json").write_text(json.dumps(records[2:]))
    with pytest.raises(ValueError, match="id 3.*'image' must be a path"):
        load_llava_conversations(tmp_path / "bad.json")


@pytest.mark.parametrize("compressor", ["avgpool", "quecc"])
def test_a_batch_mixing_text_only_and_image_records_trains(compressor):
    samples = mixed_samples()
    tok = WordTokenizer("what colour is it now which side red left".split())
    features = Features()
    batch = batching.make_batch(samples, tok, 4, features)
    assert features.asked == [["a.png", "cc.png", "bb.png"]]  # only the images' features, in order
    assert batch.image_counts.tolist() == [2, 0, 1, 0] and len(batch.features) == 5  # a blank row per text row
    for row, labels, s in zip(batch.input_ids, batch.labels, samples):
        assert int((row == IMAGE).sum()) == 4 * len(s.images)
        answer = labels[labels != IGNORE].tolist()
        assert answer == [tok.answer_id(s.answer)]
    assert torch.equal(batch.features[[2, 4]], torch.zeros(2, GRID * GRID, DIM))  # rows: a, cc, blank, bb, blank

    torch.manual_seed(0)
    llm = model.build_llm(LLM, len(tok))
    vlm = model.VLM(llm, DIM, 4, compressor=compressor, patch_grid=GRID)
    embeds = vlm.embed(batch.input_ids, batch.features, batch.question_ids, batch.question_lengths, batch.image_counts)
    plain = llm.get_input_embeddings()(batch.input_ids[1])
    assert torch.equal(embeds[1], plain)  # a text-only row: its tokens' embeddings, nothing visual
    question = vlm.question_state(batch.question_ids, batch.question_lengths)[:1] if vlm.uses_question else None
    each = [vlm.visual_embeds(features([path]), question)[0] for path in ("a.png", "cc.png")]
    assert torch.allclose(embeds[0][batch.input_ids[0] == IMAGE], torch.cat(each), atol=1e-6)  # in order

    loss = train.step_loss(vlm, batch)[0]
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in vlm.adapter.parameters() if p.requires_grad)


def test_a_batch_of_text_only_rows_keeps_the_adapter_in_the_graph():
    """An all-text micro-batch still runs the adapter (on the blank image) and gives it zero gradients,
    so every rank under DeepSpeed reduces the same parameters."""
    samples = [s for s in mixed_samples() if not s.has_image]
    tok = WordTokenizer("what colour is it now which side red left".split())
    features = Features()
    batch = batching.make_batch(samples, tok, 4, features)
    assert features.asked == [] and not (batch.input_ids == IMAGE).any() and batch.features.shape == (2, 16, 16)
    vlm = model.VLM(model.build_llm(LLM, len(tok)), DIM, 4, compressor="quecc", patch_grid=GRID)
    train.step_loss(vlm, batch)[0].backward()
    grads = [p.grad for p in vlm.adapter.parameters() if p.requires_grad]
    assert grads and all(g is not None and not g.any() for g in grads)
    assert any(p.grad is not None and p.grad.any() for p in vlm.llm.parameters())


def with_text_only(samples: list[Sample], every: int = 5) -> list[Sample]:
    """Every `every`-th record made text-only (its image dropped), as the 665K mix interleaves them."""
    return [dataclasses.replace(s, image="") if k % every == 0 else s for k, s in enumerate(samples)]


def test_one_epoch_with_text_only_records_sees_every_record_once(small_data, small_vision, tmp_path, monkeypatch):
    loaded = train.load_stage_samples
    monkeypatch.setattr(
        train, "load_stage_samples", lambda *a: {k: with_text_only(v[:40]) for k, v in loaded(*a).items()}
    )
    seen = collections.defaultdict(collections.Counter)
    rows = collections.Counter()
    original = batching.TrainingData.batch

    def counting(self, stage, indices):
        seen[stage].update(indices.tolist())
        batch = original(self, stage, indices)
        counts = batch.image_counts if batch.image_counts is not None else torch.ones(len(indices), dtype=torch.long)
        has_image = (counts > 0).tolist()
        rows.update("image" if h else "text" for h in has_image)
        for row, h in zip(batch.input_ids, has_image):
            assert int((row == IMAGE).sum()) == (4 if h else 0)
        return batch

    monkeypatch.setattr(batching.TrainingData, "batch", counting)
    one_epoch = {"epochs": 1, "lr": 1e-3}  # 40 records / batch 8: 5 steps per stage, text-only ones counted
    result = train.train_cell(
        cell_cfg(small_data, small_vision, tmp_path, stage1=one_epoch, stage2=one_epoch), log=print
    )
    for stage in ("stage1", "stage2"):
        assert len(seen[stage]) == 40 and set(seen[stage].values()) == {1}, stage
    assert rows == {"text": 16, "image": 64}  # 8 of 40 records text-only, in both stages
    assert result["n_train_samples_by_stage"] == {"stage1": 40, "stage2": 40}
    assert all(h["loss"] == h["loss"] for h in result["history"])
