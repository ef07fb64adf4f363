"""LLM-size conventions: the paper names its LLMs by nominal size (Qwen-1.5 0.5B, 1.8B, 4B, 7B, 14B: its
table `reference/paper_visual_reasoning.csv`, its fit and its `values.py`), the cells count the parameters
they hold (0.62B, 1.84B, 3.95B, 7.72B, 14.2B). The law's N changes with the convention (α is a slope in
log N, and the two conventions differ by 24 % at 0.5B but 1 % at 14B), so every comparison with the paper
puts both sides on nominal sizes, and every number says which convention it uses; the cells' own laws and
columns keep the measured totals.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

QWEN_TABLE = Path(__file__).parents[1] / "reference" / "qwen1.5.json"
MATCH = 0.01  # measured totals are within 0.25 % of the published sizes (tests/test_qwen_sizes.py)

NOMINAL = "nominal"  # the paper's convention: the size in the model's name
TOTAL = "total"  # the cells' convention: every parameter the LLM holds, counted


def _published() -> list[tuple[float, float]]:
    models = json.loads(QWEN_TABLE.read_text())["models"].values()
    return [(m["published_params"], m["nominal_params"]) for m in models]


def nominal_params(total: float) -> float | None:
    """The nominal size of an LLM holding `total` parameters: the Qwen-1.5 model whose published size it
    matches within 1 %; a size that already is a nominal one (the paper's own table) stays; None for any
    other LLM (e.g. the tiny grid's), which has no nominal size."""
    if total is None or not math.isfinite(float(total)):
        return None
    for published, nominal in _published():
        if abs(float(total) - published) <= MATCH * published or abs(float(total) - nominal) <= 1e-3 * nominal:
            return float(nominal)
    return None


def nominal_or_nan(total: float) -> float:
    """nominal_params, NaN where there is none: the grid's llm_params_nominal column stays numeric."""
    nominal = nominal_params(total)
    return float("nan") if nominal is None else nominal
