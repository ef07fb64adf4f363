"""The paper's inference cost, the one convention the law's frontier is drawn under.

FLOPs = 2 · N · (Q + V): the LLM's prefill only, N = the LLM's total parameter count, Q = text tokens,
V = visual tokens, one multiply-add = 2 FLOPs. (What this leaves out is counted beside it, labelled, by
`vlmscale.analysis.flops`.) Works on numbers and on numpy arrays or pandas columns alike.
"""

from __future__ import annotations


def paper_flops(n_params, text_tokens, visual_tokens):
    """FLOPs = 2 · N · (Q + V)."""
    return 2.0 * n_params * (text_tokens + visual_tokens)


def params_for_budget(flops, text_tokens, visual_tokens):
    """The LLM size N that spends exactly `flops` on Q + V tokens: the inverse of `paper_flops`."""
    return flops / (2.0 * (text_tokens + visual_tokens))
