"""Adapters (compressor + projector): exactly V tokens for every V of the paper's grid from a 24x24 patch
grid, gradients to every parameter, QueCC conditioned on the question and TokenPacker not, clear errors
for impossible V. (Equality with the reference code: test_adapters.py.)"""

from __future__ import annotations

import pytest
import torch

from vlmscale.model import build_adapter
from vlmscale.model import vlm as model

PAPER_V = [1, 4, 16, 36, 64, 144, 576]
DIM, GRID, TEXT, H, LEVELS = 32, 24, 48, 40, 2


def make(name: str, v: int):
    torch.manual_seed(0)
    return build_adapter(name, visual_tokens=v, vision_dim=DIM, lm_dim=H, text_dim=TEXT, patch_grid=GRID, levels=LEVELS)


def inputs(batch: int = 2, grad: bool = False):
    single = torch.randn(batch, GRID * GRID, DIM, requires_grad=grad)
    multi = torch.randn(batch, GRID * GRID, LEVELS * DIM, requires_grad=grad)
    return single, multi, torch.randn(batch, 1, TEXT)


@pytest.mark.parametrize("name", ["avgpool", "tokenpacker", "quecc"])
@pytest.mark.parametrize("v", PAPER_V)
def test_every_paper_token_count_has_its_shape(name, v):
    assert make(name, v)(*inputs()).shape == (2, v, H)


@pytest.mark.parametrize("name", ["tokenpacker", "quecc"])
def test_gradients_reach_every_parameter_and_both_feature_levels(name):
    adapter = make(name, 16)
    single, multi, question = inputs(grad=True)
    adapter(single, multi, question).square().mean().backward()
    for x in (single, multi):
        assert x.grad is not None and x.grad.abs().sum() > 0
    for pname, p in adapter.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, pname


def test_quecc_depends_on_the_question_and_tokenpacker_does_not():
    single, multi, q1 = inputs(1)
    q2 = torch.randn(1, 1, TEXT)
    quecc, packer = make("quecc", 36), make("tokenpacker", 36)
    assert not torch.allclose(quecc(single, multi, q1), quecc(single, multi, q2))
    assert torch.equal(packer(single, multi, q1), packer(single, multi, q2))


def test_a_token_reads_only_its_own_region():
    """Token 0 of a 2x2 grid summarises the top-left 12x12 patches: changing the bottom-right ones leaves it."""
    single, multi, question = inputs(1)
    for name in ("tokenpacker", "quecc"):
        adapter = make(name, 4)
        moved = multi.clone().reshape(1, GRID, GRID, -1)
        moved[:, 12:, 12:] += 1.0
        before, after = adapter(single, multi, question), adapter(single, moved.reshape(1, GRID * GRID, -1), question)
        assert torch.allclose(before[:, 0], after[:, 0]) and not torch.allclose(before[:, 3], after[:, 3]), name


def test_token_counts_the_grid_cannot_divide_are_refused_with_the_choices():
    with pytest.raises(
        ValueError,
        match=r"tokenpacker compressor cannot make V=25 .* 24x24 .* choose from \[1, 4, 9, 16, 36, 64, 144, 576\]",
    ):
        make("tokenpacker", 25)
    with pytest.raises(ValueError, match="quecc compressor cannot make V=10"):
        make("quecc", 10)


def test_quecc_trains_a_cell_end_to_end(small_data, small_vision, tmp_path):
    from helpers import cell_cfg

    from vlmscale.training import trainer as train

    cfg = cell_cfg(small_data, small_vision, tmp_path)
    cfg.spec["compressor"] = "quecc"
    result = train.train_cell(cfg, log=lambda m: None)
    assert result["history"][-1]["step"] == 30 and result["final_loss"] < result["history"][0]["loss"]


def quecc_vlm():
    torch.manual_seed(0)
    llm = model.build_llm({"name": "t", "source": "config", "arch": "qwen2", "hidden_size": 32,
                           "intermediate_size": 64, "num_layers": 2, "num_heads": 2}, vocab_size=40)  # fmt: skip
    return model.VLM(llm, vision_dim=DIM, visual_tokens=16, compressor="quecc", patch_grid=8, levels=LEVELS).eval()


def test_quecc_query_is_the_llms_last_hidden_state_at_the_questions_last_token():
    vlm = quecc_vlm()
    questions = torch.tensor([[5, 6, 7, 8, 9], [5, 6, 7, 0, 0]])  # the second row right-padded
    lengths = torch.tensor([5, 3])
    state = vlm.question_state(questions, lengths)
    with torch.no_grad():
        alone = [
            vlm.llm.base_model(input_ids=row[None, :n]).last_hidden_state[0, -1] for row, n in zip(questions, lengths)
        ]
    assert torch.allclose(state, torch.stack(alone), atol=1e-5)  # pads after the last token change nothing


def test_quecc_query_changes_with_a_word_far_from_the_questions_end():
    vlm = quecc_vlm()
    lengths = torch.tensor([6])
    first = vlm.question_state(torch.tensor([[5, 6, 7, 8, 9, 10]]), lengths)
    changed = vlm.question_state(torch.tensor([[11, 6, 7, 8, 9, 10]]), lengths)  # only the first word differs
    assert not torch.allclose(first, changed)
