"""The command line on its own: plotting any fit over the paper's cells, typed fit status in FIT.json."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

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
    text = "\n".join(report._frontier_section({("reasoning", "avgpool"): good, ("ocr", "avgpool"): poor}, frontier))
    warning = text.index("**Warning — do not read the ocr frontier as an answer.**")
    assert warning < text.index("V* = β·Q/(α−β)") and "below 0.8" in text
    assert "- ocr: not to be trusted as an answer" in text and "- reasoning: V*(Q=0) = 1" in text
    assert "reasoning frontier as an answer" not in text


def test_a_held_out_miss_and_a_floor_on_its_bound_are_said_beside_the_frontier_and_in_mlflow():
    """The OCR-like staircase in V: a trusted fit with D on 0 and a held-out miss. The report's caution
    explains the floor right after the floor warning and says where the held-out check misses; the MLflow
    description lists the same caution."""
    import numpy as np
    import pandas as pd

    from vlmscale.analysis import law, report
    from vlmscale.orchestration.track_sync import grid_description

    n, v = (a.ravel() for a in np.meshgrid([2e4, 3e4, 4e4, 6e4], [1, 4, 16]))
    fit = law.fit_with_checks(law.LawData.from_arrays(n, v, np.select([v < 4, v < 16], [0.6, 0.3], 0.0) * n**-0.03))
    assert law.trust_problems(fit) == [] and fit.params["D"] == 0
    frontier = pd.DataFrame(
        [
            {"family": "ocr", "text_tokens": q, "flops": 1e6, "visual_tokens": 16.0, "llm_params": 1e4,
             "error": 0.2, "method": "closed_form"}
            for q in (0, 50)
        ]
    )  # fmt: skip
    caution = next(x for x in report._frontier_section({("ocr", "avgpool"): fit}, frontier) if "Caution" in x)
    floor = caution.index("D = 0 sits on its lower bound")
    assert caution.index("(V* does not depend on the floor") > floor
    assert caution.index("(V* does not depend on the floor") < caution.index("fitted without the largest LLM")
    assert "observed minus predicted" in caution and "alternate in sign along V" in caution
    description = grid_description({("ocr", "avgpool"): fit.to_dict()}, (1.0, 16.0), [], "1", "p")
    assert law.heldout_caution(fit) in description


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
    assert expected in "\n".join(report._frontier_section({("reasoning", "avgpool"): fit}, frontier))
    assert expected in report._frontier_title(fit, "reasoning", 50, (1, 16))
    description = grid_description({("reasoning", "avgpool"): fit.to_dict()}, (1.0, 16.0), [], "1", "p")
    assert f"{v50:.3g} [{lo:.3g}, {hi:.3g}]" in description
    fig, ax = plt.subplots()
    report._v_star_interval_bars(ax, fit, (1.0, 16.0), "k")
    bars = {round(float(seg[0][0])): (seg[0][1], seg[1][1]) for c in ax.containers for seg in c[2][0].get_segments()}
    assert bars[50] == pytest.approx((lo, hi)), "the figure's bar at Q = 50 spans the bootstrap interval"
    plt.close(fig)


# ----------------------------------------------------------------------------- compressors compared

LLMS = {"lm0": 1e4, "lm1": 3e4, "lm2": 1e5, "lm3": 3e5}
VS = (1, 4, 16, 64)
BENCHMARKS = {"reasoning": ("colour", "relation"), "ocr": ("read", "next")}
# The laws the synthetic cells follow, Y = K·N^-α·V^-β + D as (K, α, β, D): quecc below avgpool everywhere on
# reasoning; on ocr avgpool follows a law and quecc's cells are noise (an untrusted fit).
TRUE_LAWS = {
    ("reasoning", "avgpool"): (2.0, 0.3, 0.05, 0.05),
    ("reasoning", "quecc"): (1.5, 0.3, 0.05, 0.05),
    ("ocr", "avgpool"): (1.8, 0.25, 0.08, 0.1),
    ("ocr", "quecc"): None,
}


def compressor_grid(path: Path, laws: dict = TRUE_LAWS, seeds=(0, 1)):
    """A grid parquet with the aggregate stage's columns: two benchmarks per family (one above and one
    below the family's error), every (LLM, compressor, V) cell trained with each seed."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(0)
    rows = []
    for (family, compressor), true in laws.items():
        for (llm, n), v, seed in ((item, v, s) for item in LLMS.items() for v in VS for s in seeds):
            k, alpha, beta, d = true or (0, 0, 0, 0)
            error = rng.uniform(0.3, 0.6) if true is None else k * n**-alpha * v**-beta + d + rng.normal(0, 2e-3)
            cell = f"{llm}/{compressor}/v{v}/s{seed}"
            for bench, offset in zip(BENCHMARKS[family], (0.01, -0.01)):
                rows.append(
                    {
                        "cell": cell,
                        "llm": llm,
                        "llm_params": n,
                        "llm_params_non_embedding": n / 2,
                        "llm_params_nominal": float("nan"),
                        "visual_tokens": v,
                        "seed": seed,
                        "compressor": compressor,
                        "benchmark": bench,
                        "family": family,
                        "accuracy": 1 - (error + offset),
                        "error": error + offset,
                        "n_questions": 30,
                        "judge": "",
                        "train_seconds": 1.0,
                        "final_loss": 0.5,
                        "config_hash": f"h-{cell}",
                        "run_key": f"k-{cell}",
                        "code_version": "c",
                        "mlflow_run_id": None,
                        "flops_paper_q0": 2 * n * v,
                        "flops_paper_q50": 2 * n * (50 + v),
                    }  # fmt: skip
                )
    grid = pd.DataFrame(rows)
    grid.to_parquet(path)
    return grid


def fit_frontier_and_report(results: Path, grid_path: Path) -> list[str]:
    """What the workflow runs after aggregate: one law per (family, compressor), the frontier, the report."""
    import pandas as pd

    keys = sorted(set(pd.read_parquet(grid_path, columns=["family", "compressor"]).itertuples(index=False)))
    laws = [str(results / "law" / family / f"{compressor}.json") for family, compressor in keys]
    for (family, compressor), out in zip(keys, laws):
        proc = vlmscale("fit", str(grid_path), "--family", family, "--compressor", compressor, "--out", out)
        assert proc.returncode == 0, proc.stderr
    frontier = str(results / "law" / "frontier.csv")
    proc = vlmscale("frontier", *laws, "--text-tokens", "0", "50", "--v-min", "1", "--v-max", "64", "--out", frontier)
    assert proc.returncode == 0, proc.stderr
    proc = vlmscale("report", "--grid", str(grid_path), "--laws", *laws, "--frontier", frontier,
                    "--text-tokens", "0", "50", "--out-dir", str(results))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return laws


def md_table(text: str, after: str) -> list[dict]:
    """The first Markdown table after the line containing `after`, as dicts keyed by its header."""
    lines = text[text.index(after) :].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    block = [line for line in lines[start:]]
    block = block[: next((i for i, line in enumerate(block) if not line.startswith("|")), len(block))]
    header, *rows = ([cell.strip() for cell in line.strip("|").split("|")] for line in block)
    return [dict(zip(header, row)) for row in rows if not set("".join(row)) <= set(":-")]


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    results = tmp_path_factory.mktemp("compared")
    grid = compressor_grid(results / "grid.parquet")
    fit_frontier_and_report(results, results / "grid.parquet")
    return results, grid


def test_each_family_and_compressor_gets_its_figures_and_each_family_a_compressors_figure(compared):
    results, _ = compared
    expected = [f"{f}_{c}_q{q}.png" for f, c in TRUE_LAWS for q in (0, 50)]
    expected += [f"{f}_{c}_residuals.png" for f, c in TRUE_LAWS] + ["reasoning_compressors.png", "ocr_compressors.png"]
    for name in expected + ["optimal_tokens.png"]:
        png = results / "figures" / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    assert sorted(p.name for p in (results / "figures").glob("*.png")) == sorted(expected + ["optimal_tokens.png"])
    report = (results / "report.md").read_text()
    assert all(f"(figures/{name})" in report for name in expected)


def test_the_compressors_table_shows_each_family_and_compressor_at_the_largest_llm(compared):
    from vlmscale.analysis.aggregate import family_table

    results, _ = compared
    report = (results / "report.md").read_text()
    assert "## Compressors compared" in report and "One compressor in this grid" not in report
    rows = md_table(report, "at the largest LLM, lm3 (N = 3e+05), mean ± s.d. over 2 seeds")
    assert [(r["family"], r["compressor"]) for r in rows] == sorted(TRUE_LAWS)
    for row in rows:
        table = family_table(results / "grid.parquet", row["family"], row["compressor"])
        largest = table[table.llm_params == 3e5].set_index("visual_tokens")
        for v in VS:
            assert row[f"V={v}"] == f"{largest.error[v]:.3f} ± {largest.error_sd[v]:.3f}"
    smallest = md_table(report, "at the smallest LLM, lm0 (N = 1e+04)")
    assert len(smallest) == 4 and smallest[0]["V=1"] != rows[0]["V=1"]


def test_the_compute_optimal_compressor_per_budget_is_the_one_whose_law_is_lower(compared):
    import pandas as pd

    results, _ = compared
    report = (results / "report.md").read_text()
    section = report[report.index("### Compute-optimal compressor per budget") :]
    assert "- ocr: left out of the comparison, not trusted: quecc." in section
    rows = md_table(section, "### Compute-optimal compressor per budget")
    frontier = pd.read_csv(results / "law/frontier.csv")
    budgets = frontier[(frontier.method != "best_trained_cell")].groupby(["family", "text_tokens"]).flops.nunique()
    assert len(rows) == budgets.sum() == 2 * 2 * 5  # each family, Q and default budget named once
    for row in rows:
        # reasoning: quecc's law lies below avgpool's everywhere; ocr: quecc's cells are noise, avgpool stands
        assert row["compressor"] == {"reasoning": "quecc", "ocr": "avgpool"}[row["family"]]
        assert row["runner-up"].startswith("avgpool (") if row["family"] == "reasoning" else row["runner-up"] == "—"
        law_row = frontier[
            (frontier.family == row["family"])
            & (frontier.compressor == row["compressor"])
            & (frontier.text_tokens == int(row["Q"]))
            & (frontier.method != "best_trained_cell")
            & (abs(frontier.flops / float(row["budget (FLOPs)"]) - 1) < 1e-3)
        ]
        assert len(law_row) == 1 and float(row["predicted error"]) == pytest.approx(law_row.error.iloc[0], rel=1e-3)
        assert float(row["V*"]) == pytest.approx(law_row.visual_tokens.iloc[0], rel=1e-3)
    assert "| reasoning | quecc " in report and "| ocr | quecc " in report  # the law table's compressor column
    assert "**Warning — do not read the ocr / quecc frontier as an answer.**" in report
    assert "- ocr / quecc: not to be trusted as an answer" in report and "- reasoning / quecc: V*(Q=0) = 1" in report


def test_the_compressors_figure_draws_each_law_frontier_and_dashes_an_untrusted_one(compared):
    import matplotlib.pyplot as plt
    import numpy as np

    from vlmscale.analysis import law, report

    results, _ = compared
    fits = report.load_fits(sorted((results / "law").glob("*/*.json")))
    laws = {
        c: (report.compressor_cells(results / "grid.parquet", "ocr", c), fits[("ocr", c)]) for c in ("avgpool", "quecc")
    }
    fig = report.draw_compressors(laws, "ocr", [0, 50], order=["avgpool", "quecc"])
    assert len(fig.axes) == 2
    for ax, q in zip(fig.axes, (0, 50)):
        lines = {line.get_label(): line for line in ax.get_lines()}
        assert set(lines) == {"avgpool: law frontier", "quecc: law frontier (not trusted)"}
        assert lines["avgpool: law frontier"].get_linestyle() == "-"
        assert lines["quecc: law frontier (not trusted)"].get_linestyle() == "--"
        x, y = lines["avgpool: law frontier"].get_data()
        expected = [r["error"] for r in law.frontier(fits[("ocr", "avgpool")], q, x, (1, 64))]
        assert np.allclose(y, expected) and x.min() == pytest.approx(2 * 1e4 * (q + 1))
        points = np.vstack([c.get_offsets() for c in ax.collections])
        assert len(points) == 2 * len(LLMS) * len(VS)  # every trained cell of both compressors
    plt.close(fig)


def test_a_grid_of_one_compressor_says_so_and_still_shows_the_table(tmp_path):
    one = {("reasoning", "avgpool"): TRUE_LAWS[("reasoning", "avgpool")]}
    compressor_grid(tmp_path / "grid.parquet", one, seeds=(0,))
    fit_frontier_and_report(tmp_path, tmp_path / "grid.parquet")
    report = (tmp_path / "report.md").read_text()
    assert "One compressor in this grid (avgpool): nothing to compare it with." in report
    rows = md_table(report, "at the largest LLM, lm3 (N = 3e+05), one seed")
    assert [(r["family"], r["compressor"]) for r in rows] == [("reasoning", "avgpool")] and "±" not in rows[0]["V=4"]
    assert [r["compressor"] for r in md_table(report, "### Compute-optimal compressor per budget")] == ["avgpool"] * 10
    assert (tmp_path / "figures/reasoning_compressors.png").exists()
    assert "- reasoning: V*(Q=0) = 1" in report  # one compressor: fits are named by their family alone


def test_a_family_without_a_trusted_fit_names_no_compressor():
    import pandas as pd

    from vlmscale.analysis import law, report

    poor = law.FitResult("paper", {"K": 1.0, "alpha": 0.1, "beta": 0.05, "D": 0.1}, 1.0, 0.2, 16, "converged")
    frontier = pd.DataFrame(
        [{"family": "ocr", "compressor": c, "text_tokens": 0, "flops": 1e6, "visual_tokens": 1.0, "llm_params": 5e5,
          "error": e, "method": "closed_form", "optimal": False} for c, e in (("avgpool", 0.3), ("quecc", 0.2))]
    )  # fmt: skip
    lines = report.optimal_compressor_lines({("ocr", "avgpool"): poor, ("ocr", "quecc"): poor}, frontier)
    assert lines[0] == "- ocr: no fit of this family is trusted (see the warnings above); no compressor named."
    assert "(no trusted fit: no compressor named)" in lines


def test_the_report_says_what_quecc_s_question_pass_adds_to_its_flops():
    """QueCC's question pass (2·N·Q, counted apart by the FLOP stage) is stated beside the comparison, as the
    ratio of its cells' FLOPs with the pass to the paper's 2·N·(Q+V): 1 at Q = 0, (2Q+V)/(Q+V) at Q > 0."""
    import pandas as pd

    from vlmscale.analysis import report

    n, v, q = 1e5, [1, 16], 50
    grid = pd.DataFrame(
        {
            "compressor": ["quecc", "quecc", "avgpool"],
            "flops_paper_q0": [2 * n * v[0], 2 * n * v[1], 2 * n],
            "flops_paper_q50": [2 * n * (q + v[0]), 2 * n * (q + v[1]), 2 * n * (q + 1)],
            "flops_quecc_question_q0": [0.0, 0.0, None],
            "flops_quecc_question_q50": [2 * n * q, 2 * n * q, None],
        }
    )
    [note, _] = report._question_pass_note(grid)
    assert (
        f"×{(2 * q + 16) / (q + 16):.2f}–{(2 * q + 1) / (q + 1):.2f} at Q = 50" in note
        and "×1.00–1.00 at Q = 0" in note
    )
    assert report._question_pass_note(grid.drop(columns=["flops_quecc_question_q0", "flops_quecc_question_q50"])) == []


def step_grid(errors: dict, seeds=(0,), n_questions: int = 2000):
    """Rows as the aggregate stage writes them: one benchmark, the given error per (LLM, V) and seed."""
    import pandas as pd

    rows = [
        {"llm": llm, "llm_params": params, "visual_tokens": v, "seed": s, "compressor": "avgpool",
         "family": "reasoning", "benchmark": "facts", "error": by_v[v][i], "n_questions": n_questions}
        for (llm, params), by_v in errors.items() for v in by_v for i, s in enumerate(seeds)
    ]  # fmt: skip
    return pd.DataFrame(rows)


def test_the_report_names_each_step_of_the_grid_that_does_not_lower_the_error_beyond_its_noise():
    from vlmscale.analysis import steps

    # Three seeds: every larger V helps; the top LLM step gains 0.001 at V = 1 (below the margin) and
    # 0.010 at V = 4 with a seed s.d. of 0.02 (below the noise); every other step gains clearly.
    errors = {
        ("lm-a", 1e4): {1: (0.30, 0.30, 0.30), 4: (0.25, 0.25, 0.25)},
        ("lm-b", 3e4): {1: (0.20, 0.20, 0.20), 4: (0.15, 0.15, 0.15)},
        ("lm-c", 1e5): {1: (0.199, 0.199, 0.199), 4: (0.12, 0.14, 0.16)},
    }
    text = "\n".join(steps.report_lines(step_grid(errors, seeds=(0, 1, 2))))
    assert "- reasoning (avgpool), each larger V: helps at every step (3)." in text
    llm_line = next(line for line in text.splitlines() if "each larger LLM" in line)
    assert "**2 of 4 steps do not help**" in llm_line
    assert "lm-b → lm-c at V = 1 (0.200 → 0.199" in llm_line and "lm-b → lm-c at V = 4 (0.150 → 0.140" in llm_line
    assert "lm-a → lm-b" not in llm_line

    # One seed: the noise is the sampling error of the gap, so the same 0.02 gain helps over 20,000
    # questions per benchmark and not over 30.
    one = {("lm-a", 1e4): {1: (0.30,), 4: (0.28,)}, ("lm-b", 3e4): {1: (0.28,), 4: (0.26,)}}
    assert all(s.helps for s in steps.steps(step_grid(one, n_questions=20000)))
    assert not any(s.helps for s in steps.steps(step_grid(one, n_questions=30)))
