"""FLOP accounting for the paper's LLMs from their configs alone (meta device: no weights, no network):
parameter counts against the published model sizes, and the measured prefill against 2N(Q+V)."""

from __future__ import annotations

import json
from importlib import resources

import pytest
import torch

from vlmscale.analysis import cost, flops
from vlmscale.model import vlm as model

QWEN = json.loads(resources.files("vlmscale").joinpath("reference/qwen1.5.json").read_text())["models"]


def qwen_on_meta(arch: dict):
    from transformers import AutoModelForCausalLM, Qwen2Config

    config = Qwen2Config(
        **{k: v for k, v in arch.items() if k != "published_params"},
        num_key_value_heads=arch["num_attention_heads"],
        tie_word_embeddings=False,
    )
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def closed_form(arch: dict) -> dict:
    """Parameters by hand: per layer q,k,v,o (d x d, biases on q,k,v), the SwiGLU MLP (3 d x i) and two
    RMSNorms; a final norm; input embedding and untied output head (V x d each)."""
    d, i, layers, vocab = arch["hidden_size"], arch["intermediate_size"], arch["num_hidden_layers"], arch["vocab_size"]
    non_embedding = layers * (4 * d * d + 3 * d + 3 * d * i + 2 * d) + d
    return {"total": non_embedding + 2 * vocab * d, "non_embedding": non_embedding}


@pytest.mark.parametrize("name", sorted(QWEN))
def test_parameter_counts_match_the_published_sizes(name):
    arch = QWEN[name]
    counted = model.count_llm_params(qwen_on_meta(arch))
    assert counted == closed_form(arch)
    assert counted["total"] == pytest.approx(arch["published_params"], rel=0.01)
    # non-embedding: the published size without the two vocab x d tables
    assert counted["non_embedding"] == pytest.approx(
        arch["published_params"] - 2 * arch["vocab_size"] * arch["hidden_size"], rel=0.01
    )


@pytest.mark.parametrize("name", ["Qwen1.5-0.5B", "Qwen1.5-7B"])
def test_measured_prefill_of_a_paper_llm_is_its_matmul_parameters_times_tokens_plus_attention(name):
    arch = QWEN[name]
    llm = qwen_on_meta(arch)
    llm.set_attn_implementation("eager")
    counted = model.count_llm_params(llm)
    tokens = 50 + 16
    embeds = torch.zeros(1, tokens, arch["hidden_size"], device="meta")
    mask = torch.ones(1, tokens, dtype=torch.long, device="meta")
    measured = flops.measure_flops(lambda: llm(inputs_embeds=embeds, attention_mask=mask, use_cache=False))
    # The input embedding is a lookup (no FLOPs); every other parameter is one multiply-add per token.
    matmul_params = counted["total"] - arch["vocab_size"] * arch["hidden_size"]
    expected = 2 * matmul_params * tokens + flops.attention_flops(
        arch["num_hidden_layers"], arch["hidden_size"], tokens
    )
    assert measured == pytest.approx(expected, rel=0.01)
    # so the paper's 2N(Q+V) with N = all parameters overstates a Qwen-1.5 prefill by the embedding table
    assert cost.paper_flops(counted["total"], 50, 16) > measured
