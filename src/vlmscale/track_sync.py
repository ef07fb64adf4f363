"""Replay every cell's JSON results into its MLflow run, and the report into the grid's parent run.

Runs once, as the workflow's last rule: evaluation and FLOP jobs stay free of MLflow (fast, and immune to
a store that is down), and anything a training job could not log is filled in here.
"""
from __future__ import annotations

import time
from pathlib import Path

import pandas as pd

from vlmscale import track
from vlmscale.fileio import read_json, write_json


def cell_metrics(rows: pd.DataFrame) -> dict:
    first = rows.iloc[0]
    metrics = {f"eval/{r.benchmark}/accuracy": r.accuracy for r in rows.itertuples()}
    metrics.update({f"eval/family/{fam}/error": 1 - g.accuracy.mean() for fam, g in rows.groupby("family")})
    metrics.update({k: float(v) for k, v in first.items()
                    if k.startswith(("flops_", "prefill_latency_ms")) and pd.notna(v)})  # latency: null when not measured
    metrics["llm_params"] = float(first.llm_params)
    return metrics


def ensure_cell_run(client, exp: str, grid: str, row, cell_dir: Path) -> str:
    """The cell's run for its current key; created here, with its training history, when the training
    job could not reach the store."""
    tags = {"llm": row.llm, "visual_tokens": str(row.visual_tokens), "seed": str(getattr(row, "seed", 0)),
            "vlmscale.replayed": "true"}
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
        metrics += [Metric(f"{h['stage']}/loss", h["loss"], now, step),
                    Metric(f"{h['stage']}/train_accuracy", h["train_accuracy"], now, step)]
    metrics += [Metric("train_seconds", trained["train_seconds"], now, 0),
                Metric("final_loss", trained["final_loss"] or 0.0, now, 0)]
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
    now = int(time.time() * 1000)
    synced = {}
    for cell, rows in grid.groupby("cell"):
        run_id = ensure_cell_run(client, exp, tracking["grid"], rows.iloc[0], results / "cells" / cell)
        metrics = [Metric(k, float(v), now, 0) for k, v in cell_metrics(rows).items()]
        client.log_batch(run_id, metrics=metrics)
        client.log_artifacts(run_id, str(results / "cells" / cell), artifact_path="results")
        client.set_terminated(run_id, "FINISHED")
        synced[cell] = run_id
    parent = track.parent_run_id(client, exp, tracking["grid"])
    report_dir = Path(cfg["report_dir"])
    client.log_artifacts(parent, str(report_dir / "figures"), artifact_path="figures")
    client.log_artifact(parent, str(report_dir / "report.md"))
    for law_file in sorted((results / "law").glob("*.json")):
        fit = read_json(law_file)
        client.log_batch(parent, metrics=[Metric(f"law/{law_file.stem}/{k}", float(v), now, 0) for k, v in fit["params"].items()]
                         + [Metric(f"law/{law_file.stem}/r2", float(fit["r2"]), now, 0)])
    client.set_terminated(parent, "FINISHED")
    summary = {"experiment_id": exp, "parent_run_id": parent, "cell_runs": synced, "uri": track.resolve_uri(tracking["uri"])}
    write_json(cfg["out"], summary)
    return summary
