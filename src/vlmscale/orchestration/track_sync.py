"""Replay every cell's JSON results into its MLflow run, and the report into the grid's parent run.

Runs once, as the workflow's last rule: evaluation and FLOP jobs stay free of MLflow (fast, and immune to
a store that is down), and anything a training job could not log is filled in here.
"""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd

from vlmscale.fileio import read_json, write_json
from vlmscale.orchestration import track


def cell_metrics(rows: pd.DataFrame) -> dict:
    """Every number of a cell; `error_{family}` and `flops_q{Q}` (the paper's 2·N·(Q+V)) are plain names
    that sort together and chart against each other in the UI's compare view."""
    first = rows.iloc[0]
    metrics = {f"eval/{r.benchmark}/accuracy": r.accuracy for r in rows.itertuples()}
    metrics.update({f"eval/family/{fam}/error": 1 - g.accuracy.mean() for fam, g in rows.groupby("family")})
    metrics.update({f"error_{fam}": 1 - g.accuracy.mean() for fam, g in rows.groupby("family")})
    metrics.update(
        {
            f"flops_q{k[len('flops_paper_q') :]}": float(v)
            for k, v in first.items()
            if k.startswith("flops_paper_q") and pd.notna(v)
        }
    )
    metrics.update(
        {k: float(v) for k, v in first.items() if k.startswith(("flops_", "prefill_latency_ms")) and pd.notna(v)}
    )  # latency: null when not measured
    metrics["llm_params"] = float(first.llm_params)
    return metrics


def benchmark_scores(cell_dir: Path, benchmarks) -> dict:
    """Every number each benchmark's JSON reports beside the law's scalar (lmms-eval's official metrics:
    POPE's F1, MME's cognition score, …; the built-in metrics' precision, recall, …) as eval/{benchmark}/{metric}."""
    metrics = {}
    for bench in benchmarks:
        scores = read_json(cell_dir / "eval" / f"{bench}.json").get("scores", {})
        metrics |= {
            f"eval/{bench}/{name}": float(value)
            for name, value in scores.items()
            if isinstance(value, (int, float)) and not isinstance(value, bool)
        }
    return metrics


def cell_description(rows: pd.DataFrame) -> str:
    """One line: the cell (LLM, compressor, V, seed), its family errors and its inference cost."""
    first = rows.iloc[0]
    errors = ", ".join(f"{fam} error {1 - g.accuracy.mean():.3f}" for fam, g in rows.groupby("family"))
    flops = ", ".join(
        f"{float(v):.3g} at Q = {k[len('flops_paper_q') :]}"
        for k, v in first.items()
        if k.startswith("flops_paper_q") and pd.notna(v)
    )
    seed = f", seed {int(first.seed)}" if "seed" in first else ""
    compressor = f", compressor {first.compressor}" if "compressor" in first else ""
    return (
        f"**{first.llm}** ({float(first.llm_params):.3g} parameters){compressor}, "
        f"V = {int(first.visual_tokens)}{seed}: "
        f"{errors}; inference FLOPs 2·N·(Q+V) {flops}."
    )


def experiment_description(grid: pd.DataFrame, name: str) -> str:
    seeds = grid.seed.nunique() if "seed" in grid else 1
    compressors = sorted(grid.compressor.astype(str).unique()) if "compressor" in grid else []
    named = f" × compressor(s) {{{', '.join(compressors)}}}" if compressors else ""
    return (
        f"vlmscale grid `{name}`: {grid.llm.nunique()} LLMs × "
        f"V ∈ {{{', '.join(map(str, sorted(grid.visual_tokens.unique())))}}}"
        f" × {seeds} seed(s){named}; families: {', '.join(sorted(grid.family.unique()))}. The parent run "
        f"`grid:{name}` holds the fitted laws (one per family and compressor), the frontier, the compressors "
        "compared and the figures."
    )


def grid_description(
    laws: dict[tuple[str, str], dict],
    v_range: tuple[float, float],
    figures: list[str],
    exp: str,
    parent: str,
    compressors: str = "",
) -> str:
    """The parent run's description: the law per (family, compressor), V*, the held-out check, warnings,
    the compressors compared (`compressors`: report.compressor_table's Markdown) and figure links."""
    from vlmscale.analysis import law

    lines = [
        "### Y(N, V) = K·N^-α·V^-β + D",
        "",
        "| family | compressor | α [95 % CI] | β [95 % CI] | R² | V*(Q=0) [95 % CI] | V*(Q=50) [95 % CI] "
        "| held-out largest LLM: mean abs. error |",
        "|---|---|---|---|---|---|---|---|",
    ]
    notes = []
    for (family, compressor), fit in laws.items():
        p, ci = fit["params"], fit.get("ci", {})
        result = law.FitResult.from_dict(fit)
        problems = law.trust_problems(result)
        stars = [(law.optimal_tokens(p["alpha"], p["beta"], q, *v_range), ci.get(f"v_star_q{q}")) for q in (0, 50)]
        star_text = ["not to be trusted"] * 2 if problems else [_v_star_with_ci(v, i) for v, i in stars]
        lines.append(
            f"| {family} | {compressor} | {_with_ci(p['alpha'], ci.get('alpha'))} | "
            f"{_with_ci(p['beta'], ci.get('beta'))} | "
            f"{fit['r2']:.3f} | {star_text[0]} | {star_text[1]} | "
            f"{fit.get('heldout', {}).get('mean_abs_error', float('nan')):.3f} |"
        )
        notes += [f"- **Warning, {family} / {compressor}:** {w}" for w in problems] + [
            f"- {family} / {compressor}: {w}" for w in law.cautions(result)
        ]
    links = [f"[{name}](#/experiments/{exp}/runs/{parent}/artifactPath/figures/{name})" for name in figures]
    compared = ["", "### Compressors compared", "", compressors] if compressors else []
    lines += (
        [""]
        + notes
        + compared
        + [
            "",
            "Figures: " + ", ".join(links),
            "",
            "The whole grid, one row per cell × benchmark: artifact `grid_table.json`.",
        ]
    )
    return "\n".join(lines)


def _v_star_with_ci(value: float, interval) -> str:
    """V* to 3 significant digits (it spans 1 to hundreds), with its bootstrap interval when there is one."""
    return f"{value:.3g} [{interval[0]:.3g}, {interval[1]:.3g}]" if interval else f"{value:.3g}"


def _with_ci(value: float, interval) -> str:
    return f"{value:.3f} [{interval[0]:.3f}, {interval[1]:.3f}]" if interval else f"{value:.3f}"


def ensure_cell_run(client, exp: str, grid: str, row, cell_dir: Path) -> str:
    """The cell's run for its current key; created here, with its training history, when the training
    job could not reach the store."""
    tags = {
        "llm": row.llm,
        "compressor": str(getattr(row, "compressor", "avgpool")),
        "visual_tokens": str(row.visual_tokens),
        "seed": str(getattr(row, "seed", 0)),
        "vlmscale.replayed": "true",
    }
    run_id, created = track.cell_run(client, exp, grid, row.cell, row.run_key, tags)
    if created:
        replay_training(client, run_id, read_json(cell_dir / "train.json"))
    return run_id


def replay_training(client, run_id: str, trained: dict) -> None:
    from mlflow.entities import Metric, Param

    now = int(time.time() * 1000)
    first_stage_steps = max((h["step"] for h in trained["history"] if h["stage"] == "stage1"), default=0)
    metrics = []
    for h in trained["history"]:
        step = h["step"] + (first_stage_steps if h["stage"] == "stage2" else 0)
        metrics += [
            Metric(f"{h['stage']}/loss", h["loss"], now, step),
            Metric(f"{h['stage']}/train_accuracy", h["train_accuracy"], now, step),
        ]
    metrics += [
        Metric("train_seconds", trained["train_seconds"], now, 0),
        Metric("final_loss", trained["final_loss"] or 0.0, now, 0),
    ]
    for i in range(0, len(metrics), 500):
        client.log_batch(run_id, metrics=metrics[i : i + 500])
    params = [Param("config_hash", trained["config_hash"]), Param("llm_params", str(trained["llm_params"]["total"]))]
    client.log_batch(run_id, params=params)


def main(cfg: dict) -> dict:
    from mlflow.entities import Metric

    tracking, results = cfg["tracking"], Path(cfg["results"])
    client = track.client_for(tracking["uri"])
    exp = track.ensure_experiment(client, tracking["experiment"])
    grid = pd.read_parquet(cfg["grid"])
    client.set_experiment_tag(exp, track.NOTE_TAG, experiment_description(grid, tracking["grid"]))
    now = int(time.time() * 1000)
    synced = {}
    for cell, rows in grid.groupby("cell"):
        cell_dir = results / "cells" / cell
        run_id = ensure_cell_run(client, exp, tracking["grid"], rows.iloc[0], cell_dir)
        numbers = benchmark_scores(cell_dir, rows.benchmark) | cell_metrics(rows)
        metrics = [Metric(k, float(v), now, 0) for k, v in numbers.items()]
        client.log_batch(run_id, metrics=metrics)
        client.set_tag(run_id, track.NOTE_TAG, cell_description(rows))
        client.log_artifacts(run_id, str(cell_dir), artifact_path="results")
        if (cell_dir.parent / "flops.json").exists():  # shared by the (LLM, V) pair's seeds
            client.log_artifact(run_id, str(cell_dir.parent / "flops.json"), artifact_path="results")
        client.set_terminated(run_id, "FINISHED")
        synced[cell] = run_id
    parent = track.parent_run_id(client, exp, tracking["grid"])
    log_grid_summary(client, exp, parent, grid, results, Path(cfg["report_dir"]), now)
    summary = {
        "experiment_id": exp,
        "parent_run_id": parent,
        "cell_runs": synced,
        "uri": track.resolve_uri(tracking["uri"]),
    }
    write_json(cfg["out"], summary)
    return summary


def log_grid_summary(
    client, exp: str, parent: str, grid: pd.DataFrame, results: Path, report_dir: Path, now: int
) -> None:
    """On the parent run: figures, report, the grid as a table, the law metrics and a description."""
    from mlflow.entities import Metric

    from vlmscale.analysis import report

    client.log_artifacts(parent, str(report_dir / "figures"), artifact_path="figures")
    client.log_artifact(parent, str(report_dir / "report.md"))
    client.log_table(parent, data=grid, artifact_file="grid_table.json")
    laws = read_laws(results)
    for (family, compressor), fit in laws.items():
        name = f"law/{family}/{compressor}"
        client.log_batch(
            parent,
            metrics=[Metric(f"{name}/{k}", float(v), now, 0) for k, v in fit["params"].items()]
            + [Metric(f"{name}/r2", float(fit["r2"]), now, 0)],
        )
    v_range = (float(grid.visual_tokens.min()), float(grid.visual_tokens.max()))
    figures = sorted(p.name for p in (report_dir / "figures").glob("*.png"))
    description = grid_description(laws, v_range, figures, exp, parent, report.compressor_table(grid))
    client.set_tag(parent, track.NOTE_TAG, description)
    client.set_terminated(parent, "FINISHED")


def read_laws(results: Path) -> dict[tuple[str, str], dict]:
    """Every law, results/law/{family}/{compressor}.json, keyed by (family, compressor) as the report keys it."""
    from vlmscale.analysis.report import fit_key

    laws = {}
    for path in sorted((results / "law").glob("*/*.json")):
        saved = read_json(path)
        laws[fit_key(path, saved)] = saved
    return dict(sorted(laws.items()))
