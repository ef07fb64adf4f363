"""One LLM-size convention in every comparison with the paper: nominal sizes (0.5B, 1.8B, 4B, 7B, 14B) as
the paper's table counts, the cells' measured totals kept in their own columns and laws."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from vlmscale.analysis import law, report, sizes
from vlmscale.analysis.aggregate import family_table
from vlmscale.orchestration import plan

QWEN = json.loads(sizes.QWEN_TABLE.read_text())["models"]
PAPER_TO_TOTAL = {m["nominal_params"]: m["published_params"] for m in QWEN.values()}


@pytest.mark.parametrize("name", sorted(QWEN))
def test_a_qwen_model_counted_in_full_has_its_nominal_size(name):
    arch = QWEN[name]
    shape = plan.LLMShape(arch["hidden_size"], arch["intermediate_size"], arch["num_hidden_layers"],
                          arch["vocab_size"], tied=False)  # fmt: skip
    assert sizes.nominal_params(shape.params) == arch["nominal_params"] == float(name.split("-")[1][:-1]) * 1e9


def test_an_llm_of_no_published_size_has_no_nominal_one():
    assert sizes.nominal_params(4.2e4) is None and math.isnan(sizes.nominal_or_nan(4.2e4))
    assert sizes.nominal_params(0.56e9) is None  # between 0.5B nominal and 0.62B total: neither
    assert sizes.nominal_params(0.5e9) == 0.5e9  # already nominal: the paper's own table


def cells_as_measured() -> pd.DataFrame:
    """The paper's published cells with N as a cell would count it (the models' totals, 0.62B, ...)."""
    table = family_table(report.REFERENCE_TABLE)
    return table.assign(llm_params=table.llm_params.map(PAPER_TO_TOTAL))


def test_the_comparison_refits_the_cells_on_nominal_n_as_the_paper_counts():
    cells = cells_as_measured()
    compared = report.nominal_fit(cells)
    reference = report.reference_fit()
    assert reference["convention"] == sizes.NOMINAL
    assert compared["alpha"] == pytest.approx(reference["alpha"], rel=1e-6)
    assert compared["beta"] == pytest.approx(reference["beta"], rel=1e-6)
    on_totals = law.fit(law.LawData.from_arrays(cells.llm_params, cells.visual_tokens, cells.error))
    assert abs(on_totals.params["alpha"] - reference["alpha"]) > 0.002  # what the mixed comparison misread
    tiny = cells.assign(llm_params=cells.llm_params / 1e4)
    assert "no nominal size for qwen1.5-0.5b" in report.nominal_fit(tiny)["reason"]


def test_the_overlay_draws_cells_at_nominal_n_beside_the_paper_and_says_so():
    import matplotlib.pyplot as plt

    cells = cells_as_measured()
    fit = law.fit(law.LawData.from_arrays(cells.llm_params, cells.visual_tokens, cells.error))
    reference = family_table(report.REFERENCE_TABLE)
    fig = report.draw_frontier(cells, fit, "reasoning", 50, reference)
    ax = fig.axes[0]
    xs = {round(float(x)) for c in ax.collections for x, _ in c.get_offsets()}
    assert xs == {round(2 * n * (50 + v)) for n, v in zip(reference.llm_params, reference.visual_tokens)}
    assert "cells: N nominal" in ax.get_xlabel()
    assert not any("frontier" in line.get_label() for line in ax.get_lines())  # the law's frontier is in total N
    plt.close(fig)

    fig = report.draw_frontier(reference, fit, "reasoning", 50, reference)  # the paper's own table: nominal
    assert "cells: N nominal" in fig.axes[0].get_xlabel()
    assert any("frontier" in line.get_label() for line in fig.axes[0].get_lines())  # the law's own axis
    plt.close(fig)

    tiny = cells.assign(llm_params=cells.llm_params / 1e4)
    fig = report.draw_frontier(tiny, fit, "reasoning", 50, reference)
    assert "paper: N nominal; cells: N total" in fig.axes[0].get_xlabel()
    plt.close(fig)
    fig = report.draw_frontier(cells, fit, "reasoning", 50)  # no overlay: the law's own axis, totals
    assert "cells: N total" in fig.axes[0].get_xlabel() and np.isfinite(fit.params["alpha"])
    assert any("frontier" in line.get_label() for line in fig.axes[0].get_lines())
    plt.close(fig)
