"""Model pieces: compressor shapes for every V, the VLM forward, one training step, FLOP accounting."""

from __future__ import annotations

import pytest
import torch
from conftest import SMALL_VISION

from vlmscale.analysis import cost, flops
from vlmscale.data import batching
from vlmscale.model import build_adapter
from vlmscale.model import cell as cell_model
from vlmscale.model import vlm as model
from vlmscale.training import trainer as train

LLM = {
    "name": "t",
    "source": "config",
    "arch": "qwen2",
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_layers": 2,
    "num_heads": 2,
}


def avgpool(v: int, grid: int | None = 8):
    return build_adapter("avgpool", visual_tokens=v, vision_dim=16, lm_dim=8, patch_grid=grid)


@pytest.mark.parametrize("v", [k * k for k in range(1, 9)])  # every k x k pooling of an 8x8 grid
def test_avgpool_makes_exactly_v_tokens(v):
    feats = torch.randn(3, 64, 16)
    adapter = avgpool(v)
    pooled = []
    adapter.projector.register_forward_hook(lambda m, args, out: pooled.append(args[0]))
    assert adapter(feats).shape == (3, v, 8)
    if v == 64:
        assert torch.allclose(pooled[0], feats)
    if v == 1:
        assert torch.allclose(pooled[0][:, 0], feats.mean(1), atol=1e-6)


def test_non_square_or_too_many_tokens_are_refused():
    with pytest.raises(ValueError, match="square"):
        avgpool(5)
    with pytest.raises(ValueError, match="grid.visual_tokens"):
        avgpool(81)


def word_batch(vlm, questions, answers, features):
    from vlmscale.data.samples import Sample
    from vlmscale.data.tokenizer import WordTokenizer

    tok = WordTokenizer("what colour is it now which side red left".split())
    samples = [Sample(f"img{i}", q, a) for i, (q, a) in enumerate(zip(questions, answers))]
    return batching.make_batch(samples, tok, vlm.visual_tokens, lambda paths: features[: len(paths)]), tok


@pytest.mark.parametrize("v", [1, 4, 16, 64])
def test_vlm_forward_gives_logits_for_each_answer_token(v):
    vlm = model.VLM(model.build_llm(LLM, vocab_size=40), vision_dim=16, visual_tokens=v)
    batch, tok = word_batch(vlm, ["what colour is it", "which side"], ["red", "left"], torch.randn(2, 64, 16))
    assert batch.input_ids.shape == (2, v + 4 + 1)  # V placeholders, the longest question, the answer
    logits, targets = vlm(batch)
    assert logits.shape == (2, 40) and targets.tolist() == [tok.answer_id("red"), tok.answer_id("left")]


def test_right_padding_does_not_change_logits():
    torch.manual_seed(0)
    vlm = model.VLM(model.build_llm(LLM, vocab_size=40), vision_dim=16, visual_tokens=4).eval()
    feats = torch.randn(2, 64, 16)
    both, _ = word_batch(vlm, ["which side", "what colour is it"], ["left", "red"], feats)
    alone, _ = word_batch(vlm, ["which side", "which side"], ["left", "left"], feats)
    assert torch.allclose(vlm(both)[0][0], vlm(alone)[0][0], atol=1e-5)


def test_greedy_generation_with_left_padding_agrees_with_the_training_forward():
    torch.manual_seed(0)
    vlm = model.VLM(model.build_llm(LLM, vocab_size=40), vision_dim=16, visual_tokens=4).eval()
    batch, _ = word_batch(vlm, ["which side", "what colour is it now"], ["left", "red"], torch.randn(2, 64, 16))
    logits, _ = vlm(batch)
    assert vlm.generate(batch, 1, None) == [[i] for i in logits.argmax(-1).tolist()]
    assert [len(row) for row in vlm.generate(batch, 3, None)] == [3, 3]  # no end token: runs to the limit


def test_training_steps_reduce_loss_on_real_data(small_data, small_vision):
    from vlmscale.data.samples import load_llava_conversations, with_image_root
    from vlmscale.fileio import read_json
    from vlmscale.model.vision import feature_source

    torch.manual_seed(0)
    features, summary = feature_source(small_vision, str(small_data))
    spec = {"llm": LLM, "visual_tokens": 16, "compressor": "avgpool", "train": {}}
    vlm, tok = cell_model.build_cell_model(
        spec, read_json(small_data / "manifest.json")["vocabulary"], summary["hidden_size"]
    )
    samples = with_image_root(load_llava_conversations(small_data / "train.json"), str(small_data))
    batch = batching.make_batch(samples[:64], tok, 16, features)
    opt = torch.optim.AdamW(vlm.parameters(), lr=3e-3)
    first, _ = train.step_loss(vlm, batch)
    for _ in range(30):
        loss, _ = train.step_loss(vlm, batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.7 * first.item()


def test_lr_schedule_warms_up_then_decays():
    lrs = [train.lr_at(s, 100, 1.0, 0.1) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and max(lrs) == pytest.approx(1.0)
    assert lrs[-1] < 0.01 and all(a >= b for a, b in zip(lrs[10:], lrs[11:]))


def test_paper_flops_by_hand():
    # 2 * N * (Q + V): a 0.5B model, 50 text tokens, 16 visual tokens.
    assert cost.paper_flops(5e8, 50, 16) == 2 * 5e8 * 66
    assert cost.paper_flops(7e9, 0, 1) == 1.4e10


def test_measured_prefill_matches_2n_tokens_plus_attention():
    spec = {"cell": "t/v16", "llm": LLM, "visual_tokens": 16, "compressor": "avgpool"}
    counted = flops.count_cell(spec, SMALL_VISION, [f"w{i}" for i in range(40)], [0, 50])
    for row in counted["rows"]:
        expected = row["flops_paper"] + row["flops_attention"]
        assert row["flops_llm_measured"] == pytest.approx(expected, rel=0.05)
        assert row["flops_vision"] > 0 and row["flops_projector"] > 0


@pytest.mark.parametrize("compressor", ["tokenpacker", "quecc"])
def test_learned_compressors_flops_are_measured_and_reported_apart(compressor):
    spec = {"cell": "t/v4", "llm": LLM, "visual_tokens": 4, "compressor": compressor}
    pooled = flops.count_cell({**spec, "compressor": "avgpool"}, SMALL_VISION, [f"w{i}" for i in range(40)], [0])
    learned = flops.count_cell(spec, SMALL_VISION, [f"w{i}" for i in range(40)], [0])
    row, base = learned["rows"][0], pooled["rows"][0]
    # at least the key/value projection of every patch: 2 * P * D * 2D multiply-adds
    n_patches, dim = (SMALL_VISION["image_size"] // SMALL_VISION["patch_size"]) ** 2, SMALL_VISION["hidden_size"]
    assert row["flops_compressor"] >= 2 * n_patches * dim * 2 * dim > base["flops_compressor"]
    assert row["flops_llm_measured"] == base["flops_llm_measured"]  # the LLM's cost does not include it


def test_quecc_question_pass_is_its_own_flop_column():
    spec = {"cell": "t/v4", "llm": LLM, "visual_tokens": 4, "compressor": "quecc"}
    counted = flops.count_cell(spec, SMALL_VISION, [f"w{i}" for i in range(40)], [0, 50])
    n = counted["llm_params"]["total"]
    assert [r["flops_quecc_question"] for r in counted["rows"]] == [0.0, 2.0 * n * 50]
    assert all(r["flops_paper"] == 2.0 * n * (r["text_tokens"] + 4) for r in counted["rows"])  # the law's axis
    plain = flops.count_cell({**spec, "compressor": "avgpool"}, SMALL_VISION, [f"w{i}" for i in range(40)], [50])
    assert "flops_quecc_question" not in plain["rows"][0]


def test_the_tiny_tower_is_the_same_bits_whatever_threads_its_job_gets(small_data, tmp_path):
    """Snakemake gives the vision job as many threads as --cores allows; the tiny tower trains in one
    whatever it gets, so its weights and features (and every cell downstream) do not depend on the machine."""
    from vlmscale.model import vision
    from vlmscale.specs import TowerJob

    spec = {**SMALL_VISION, "hidden_size": 64, "num_layers": 2, "num_heads": 4}  # the default tower's shape
    towers = {}
    for threads in (1, 2):
        out = tmp_path / f"threads{threads}"
        vision.main(TowerJob(spec, data_root=str(small_data), out=str(out), threads=threads))
        towers[threads] = (torch.load(out / "tower.pt"), torch.load(out / "features.pt")["features"])
    (weights_1, features_1), (weights_2, features_2) = towers[1], towers[2]
    assert weights_1.keys() == weights_2.keys()
    assert all(torch.equal(weights_1[k], weights_2[k]) for k in weights_1)
    assert torch.equal(features_1, features_2)
