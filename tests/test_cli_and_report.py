"""The command line on its own: plotting any fit over the paper's cells, typed fit status in FIT.json."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REFERENCE = Path(__file__).resolve().parents[1] / "src/vlmscale/reference/paper_visual_reasoning.csv"


def vlmscale(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vlmscale.cli", *args], capture_output=True, text=True)


def test_fit_reports_a_parameter_on_its_bound_as_a_status_not_an_error(tmp_path):
    out = tmp_path / "fit.json"
    assert vlmscale("fit", str(REFERENCE), "--out", str(out)).returncode == 0
    fit = json.loads(out.read_text())
    # On the paper's table the floor D goes to zero: a soft problem, reported, not raised.
    assert fit["status"] == "at_bound" and any(w.startswith("D = 0") for w in fit["warnings"])
    assert fit["heldout"]["status"] == "ok" and fit["heldout"]["mean_abs_error"] < 0.01


def test_plot_overlays_the_paper_cells(tmp_path):
    fit = tmp_path / "fit.json"
    vlmscale("fit", str(REFERENCE), "--out", str(fit))
    png = tmp_path / "paper.png"
    proc = vlmscale(
        "plot", str(fit), "--table", str(REFERENCE), "--text-tokens", "50", "--overlay-paper", "--out", str(png)
    )
    assert proc.returncode == 0, proc.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_unknown_family_is_a_clear_error(tmp_path):
    proc = vlmscale("fit", str(REFERENCE), "--family", "ocr")
    assert proc.returncode == 2 and "no rows for family 'ocr'" in proc.stderr


def grid_table(errors: dict):
    import pandas as pd

    rows = [
        {
            "family": "reasoning",
            "llm": f"lm{i}",
            "llm_params": n,
            "visual_tokens": v,
            "error": e,
            "error_sd": 0.01,
            "n_seeds": 3,
        }
        for i, (n, by_v) in enumerate(errors.items())
        for v, e in by_v.items()
    ]
    return pd.DataFrame(rows)


def test_frontier_tick_labels_do_not_overprint_at_q50():
    import matplotlib.pyplot as plt

    from vlmscale.analysis import law, report

    table = grid_table(
        {
            1.6e4: {1: 0.36, 4: 0.32, 16: 0.29},
            5.6e4: {1: 0.34, 4: 0.27, 16: 0.22},
            9.5e4: {1: 0.29, 4: 0.25, 16: 0.20},
            3e5: {1: 0.28, 4: 0.23, 16: 0.19},
        }
    )
    fit = law.fit(law.LawData.from_arrays(table.llm_params, table.visual_tokens, table.error))
    for q in (0, 50):
        fig = report.draw_frontier(table, fit, "reasoning", q)
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        ax = fig.axes[0]
        labels = [
            t
            for t in ax.get_xticklabels(which="both")
            if t.get_visible() and t.get_text() and ax.get_xlim()[0] <= t.get_position()[0] <= ax.get_xlim()[1]
        ]
        boxes = sorted((t.get_window_extent(renderer) for t in labels), key=lambda b: b.x0)
        assert len(boxes) >= 2, f"Q={q}: an axis needs at least two labels"
        assert all(a.x1 <= b.x0 for a, b in zip(boxes, boxes[1:])), f"Q={q}: tick labels overlap"
        plt.close(fig)


def test_report_warns_above_the_frontier_and_withholds_v_star_of_an_untrusted_fit():
    import numpy as np
    import pandas as pd

    from vlmscale.analysis import law, report

    rng = np.random.default_rng(0)
    n, v = (a.ravel() for a in np.meshgrid([1e4, 3e4, 1e5, 3e5], [1, 4, 16]))
    good = law.fit(law.LawData.from_arrays(n, v, 0.05 + 2.0 * n**-0.3 * v**-0.05 + rng.normal(0, 1e-4, n.size)))
    poor = law.fit(law.LawData.from_arrays(n, v, rng.uniform(0.3, 0.6, n.size)))
    frontier = pd.DataFrame(
        [
            {
                "family": f,
                "text_tokens": q,
                "flops": 1e6,
                "visual_tokens": 1.0,
                "llm_params": 1e4,
                "error": 0.2,
                "method": "closed_form",
            }
            for f in ("reasoning", "ocr")
            for q in (0, 50)
        ]
    )
    text = "\n".join(report._frontier_section({"reasoning": good, "ocr": poor}, frontier))
    warning = text.index("**Warning — do not read the ocr frontier as an answer.**")
    assert warning < text.index("V* = β·Q/(α−β)") and "below 0.8" in text
    assert "- ocr: not to be trusted as an answer" in text and "- reasoning: V*(Q=0) = 1" in text
    assert "reasoning frontier as an answer" not in text


def test_a_benchmark_scored_without_its_judge_is_marked_rule_based_only_beside_its_numbers(tmp_path):
    """judge: none travels from the result JSON through grid.parquet's judge column to the report."""
    from vlmscale.analysis import aggregate, report

    cell = tmp_path / "cells/q/v4/s0"
    (cell / "eval").mkdir(parents=True)
    train = {"cell": "q/v4/s0", "llm": "q", "llm_params": {"total": 6.2e8, "non_embedding": 3e8},
             "visual_tokens": 4, "seed": 0, "train_seconds": 1.0, "final_loss": 0.5, "config_hash": "h",
             "run_key": "k", "code_version": "c"}  # fmt: skip
    (cell / "train.json").write_text(json.dumps(train))
    (cell.parent / "flops.json").write_text(json.dumps({"rows": [{"text_tokens": 0, "flops_paper": 1e9}]}))
    judged = {"mathvista": "none: rule-based only", "mmbench": "gpt", "gqa": None}
    for name, judge in judged.items():
        result = {"family": "reasoning", "accuracy": 0.4, "n_questions": 10} | ({"judge": judge} if judge else {})
        (cell / "eval" / f"{name}.json").write_text(json.dumps(result))
    rows = aggregate.cell_rows(cell, list(judged))
    assert [r["judge"] for r in rows] == ["none: rule-based only", "gpt", ""]
    assert rows[0]["llm_params"] == 6.2e8 and rows[0]["llm_params_nominal"] == 0.5e9  # both conventions kept
    grid = __import__("pandas").DataFrame(rows)
    table = report._per_cell_table(grid)
    assert "mathvista (rule-based only)" in table and "mmbench (rule" not in table and "gqa (rule" not in table
    assert report._rule_based_note(grid)[0].startswith("*rule-based only*: mathvista scored with `judge: none`")
    assert report._rule_based_note(grid.assign(judge="")) == []


def test_v_star_is_printed_with_its_bootstrap_interval_in_the_report_the_figures_and_the_mlflow_description():
    import matplotlib.pyplot as plt
    import numpy as np
    import pandas as pd
    import pytest

    from vlmscale.analysis import law, report
    from vlmscale.orchestration.track_sync import grid_description

    rng = np.random.default_rng(0)
    n, v = (a.ravel() for a in np.meshgrid([1e4, 3e4, 1e5, 3e5], [1, 4, 16]))
    y = 0.05 + 2.0 * n**-0.3 * v**-0.05 + rng.normal(0, 2e-3, n.size)
    fit = law.fit_with_checks(law.LawData.from_arrays(n, v, y), n_boot=40, seed=0)
    lo, hi = fit.ci["v_star_q50"]
    assert lo < hi, "the noisy grid's resamples give V*(Q=50) a spread"
    v50 = law.optimal_tokens(fit.params["alpha"], fit.params["beta"], 50, 1, 16)
    expected = f"V*(Q=50) = {v50:.3g} [{lo:.3g}, {hi:.3g}]"
    frontier = pd.DataFrame(
        [
            {
                "family": "reasoning",
                "text_tokens": q,
                "flops": 1e6,
                "visual_tokens": law.optimal_tokens(fit.params["alpha"], fit.params["beta"], q, 1, 16),
                "llm_params": 1e4,
                "error": 0.2,
                "method": "closed_form",
            }
            for q in (0, 50)
        ]
    )
    assert expected in "\n".join(report._frontier_section({"reasoning": fit}, frontier))
    assert expected in report._frontier_title(fit, "reasoning", 50, (1, 16))
    description = grid_description({"reasoning": fit.to_dict()}, (1.0, 16.0), [], "1", "p")
    assert f"{v50:.3g} [{lo:.3g}, {hi:.3g}]" in description
    fig, ax = plt.subplots()
    report._v_star_interval_bars(ax, fit, (1.0, 16.0), "k")
    bars = {round(float(seg[0][0])): (seg[0][1], seg[1][1]) for c in ax.containers for seg in c[2][0].get_segments()}
    assert bars[50] == pytest.approx((lo, hi)), "the figure's bar at Q = 50 spans the bootstrap interval"
    plt.close(fig)
