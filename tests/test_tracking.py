"""MLflow tracking: parallel cells on a fresh sqlite store, a store that is down during training, and
a real `mlflow server` seen through its REST API."""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import sqlite3
import subprocess
import sys
import time
import urllib.request

import pytest
import yaml

from vlmscale.orchestration import track
from vlmscale.training.distributed import free_port

SPEC = {"cell": "x/v1", "llm": {"name": "x"}, "visual_tokens": 1, "train": {"lr": 0.1}}


def _log_cell(uri: str, cell: str) -> None:
    spec = {**SPEC, "cell": cell}
    with track.CellTracker(uri, "parallel", "g", cell, f"key-{cell}", track.flatten(spec), {"llm": "x"}) as t:
        for step in range(20):
            t.log_metrics({"loss": 1.0 / (step + 1)}, step=step)


def test_parallel_cells_on_a_fresh_sqlite_store(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    track.init_store(uri, "parallel", "g")
    cells = [f"m/v{v}" for v in (1, 4, 16, 64)]
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_log_cell, args=(uri, c)) for c in cells]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    con = sqlite3.connect(tmp_path / "mlflow.db")
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    names = sorted(n for (n,) in con.execute("SELECT name FROM runs"))
    assert names == sorted(["grid:g", *cells])
    counts = dict(
        con.execute("SELECT r.name, count(*) FROM metrics m JOIN runs r ON r.run_uuid = m.run_uuid GROUP BY r.name")
    )
    assert all(counts[c] == 20 for c in cells)


def test_unreachable_store_keeps_training_and_is_replayed_later(small_data, small_vision, tmp_path, monkeypatch):
    from helpers import cell_cfg
    from mlflow.tracking import MlflowClient

    from vlmscale.orchestration import track_sync

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    out = tmp_path / "cells/t/v4/train.json"
    short = {"checkpoint_every": 50, "stage1": {"steps": 5, "lr": 1e-3}, "stage2": {"steps": 10, "lr": 3e-3}}
    job = dataclasses.replace(
        cell_cfg(small_data, small_vision, tmp_path / "ckpt", **short),
        out=str(out),
        tracking={"uri": "http://127.0.0.1:9", "experiment": "down", "grid": "g"},
    )
    result = track.train_main(job)  # the store is down: training goes on, the JSON is intact
    assert out.exists() and result["mlflow_run_id"] is None and len(result["history"]) == 3

    uri = f"sqlite:///{tmp_path}/mlflow.db"  # the store is back
    track.init_store(uri, "down", "g")
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("down").experiment_id
    import pandas as pd

    row = pd.Series(
        {"cell": "t/v4", "run_key": result["run_key"], "llm": "t", "visual_tokens": 4, "compressor": "quecc"}
    )
    run_id = track_sync.ensure_cell_run(client, exp, "g", row, out.parent)
    history = client.get_metric_history(run_id, "stage2/loss")
    assert [m.step for m in history] == [10, 15]
    tags = client.get_run(run_id).data.tags
    assert tags["vlmscale.replayed"] == "true" and tags["compressor"] == "quecc"  # as training tags its run
    assert track_sync.ensure_cell_run(client, exp, "g", row, out.parent) == run_id  # replay is idempotent


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("server")
    port = free_port()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            f"sqlite:///{root}/server.db",
            "--default-artifact-root",
            str(root / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(120):
        try:
            urllib.request.urlopen(f"{url}/health", timeout=1)
            break
        except OSError:
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("mlflow server did not start")
    yield url
    proc.terminate()
    proc.wait(10)


def rest(url: str, path: str, body: dict) -> dict:
    req = urllib.request.Request(
        f"{url}/api/2.0/mlflow/{path}", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    return json.loads(urllib.request.urlopen(req, timeout=10).read())


@pytest.mark.slow
def test_grid_against_a_tracking_server(mlflow_server, tmp_path):
    from helpers import grid_config, snakemake

    MINI = grid_config("mini")

    cfg = {**MINI, "tracking": {"uri": mlflow_server, "experiment": "served"}, "launch": {"executor": "inline"}}
    (tmp_path / "served.yaml").write_text(yaml.safe_dump(cfg))
    proc = snakemake(tmp_path, "served.yaml")
    assert proc.returncode == 0, proc.stderr[-3000:]
    exp_id = json.loads(
        urllib.request.urlopen(
            f"{mlflow_server}/api/2.0/mlflow/experiments/get-by-name?experiment_name=served", timeout=10
        ).read()
    )["experiment"]["experiment_id"]
    runs = rest(mlflow_server, "runs/search", {"experiment_ids": [exp_id], "max_results": 100})["runs"]
    tags = [{t["key"]: t["value"] for t in r["data"].get("tags", [])} for r in runs]
    parents = [t for t in tags if t.get("vlmscale.parent") == "true"]
    children = [(r, t) for r, t in zip(runs, tags) if "vlmscale.cell" in t]
    assert len(parents) == 1 and len(children) == 6
    for run, t in children:
        assert {"llm", "visual_tokens", "vlmscale.run_key", "code_version", "executor", "flop_convention"} <= set(t)
        assert t["mlflow.parentRunId"] == runs[tags.index(parents[0])]["info"]["run_id"]
        params = {p["key"]: p["value"] for p in run["data"].get("params", [])}
        assert params["train.stage2.lr"] == "0.003" and params["visual_tokens"] == t["visual_tokens"]
        metrics = {m["key"] for m in run["data"].get("metrics", [])}
        assert {"stage2/loss", "eval/read/accuracy", "eval/family/ocr/error", "flops_paper_q0"} <= metrics
    # What a researcher sees on opening the UI: the runs table (a model-training experiment with a
    # one-line description), the laws on the parent run, one line per cell, the grid as a table.
    exp = json.loads(
        urllib.request.urlopen(
            f"{mlflow_server}/api/2.0/mlflow/experiments/get-by-name?experiment_name=served", timeout=10
        ).read()
    )["experiment"]
    exp_tags = {t["key"]: t["value"] for t in exp.get("tags", [])}
    assert exp_tags["mlflow.experimentKind"] == "custom_model_development"
    assert exp_tags["mlflow.note.content"].startswith("vlmscale grid `mini`: 2 LLMs × V ∈ {1, 4, 16} × 1 seed(s)")
    parent_id = runs[tags.index(parents[0])]["info"]["run_id"]
    note = parents[0]["mlflow.note.content"]
    assert "Y(N, V) = K·N^-α·V^-β + D" in note and "| reasoning | avgpool |" in note and "| ocr | avgpool |" in note
    assert "### Compressors compared" in note
    assert f"#/experiments/{exp_id}/runs/{parent_id}/artifactPath/figures/reasoning_avgpool_q50.png" in note
    for run, t in children:
        assert (
            t["mlflow.note.content"].startswith(f"**{t['llm']}** (") and "reasoning error" in t["mlflow.note.content"]
        )
        metrics = {m["key"]: m["value"] for m in run["data"].get("metrics", [])}
        assert {"error_reasoning", "error_ocr", "flops_q0", "flops_q50"} <= set(metrics)
        assert metrics["flops_q50"] == metrics["flops_paper_q50"]
    listed = json.loads(
        urllib.request.urlopen(f"{mlflow_server}/api/2.0/mlflow/artifacts/list?run_id={parent_id}", timeout=10).read()
    )["files"]
    assert "grid_table.json" in {f["path"] for f in listed}


def test_every_official_score_of_a_benchmark_becomes_a_metric(tmp_path):
    from vlmscale.fileio import write_json
    from vlmscale.orchestration.track_sync import benchmark_scores

    scores = {"pope_accuracy": 0.4, "pope_f1_score": 0.5, "pope_yes_ratio": 0.6}
    write_json(tmp_path / "eval/pope.json", {"accuracy": 0.4, "scores": scores})
    write_json(tmp_path / "eval/read.json", {"accuracy": 0.7, "scores": {"accuracy": 0.7, "flag": True}})
    assert benchmark_scores(tmp_path, ["pope", "read"]) == {
        "eval/pope/pope_accuracy": 0.4,
        "eval/pope/pope_f1_score": 0.5,
        "eval/pope/pope_yes_ratio": 0.6,
        "eval/read/accuracy": 0.7,
    }


def test_a_refusing_tracking_server_costs_a_cell_seconds_not_minutes():
    """Against a port nothing listens on, the run's start fails within the short HTTP budget
    (track.HTTP_BUDGET; MLflow's defaults spent ~249 s per call here) and later calls cost nothing: the
    cell goes on logging to its JSON alone. Measured here: about 4 s for the start, 0 s for five logs."""
    import time

    from vlmscale.orchestration.track import CellTracker
    from vlmscale.training.distributed import free_port

    spec = {
        "cell": "x/avgpool/v1/s0",
        "llm": {"name": "x"},
        "visual_tokens": 1,
        "train": {"seed": 0},
        "compressor": "avgpool",
    }
    started = time.monotonic()
    with CellTracker.for_cell(spec, {"uri": f"http://127.0.0.1:{free_port()}", "experiment": "e"}, "k") as tracker:
        for step in range(5):
            tracker.log_metrics({"loss": 1.0}, step=step)
    assert tracker.client is None and tracker.run_id is None  # gave up after the first failure
    assert time.monotonic() - started < 30


class RecordingClient:
    """The few MlflowClient calls log_grid_summary makes, recorded."""

    def __init__(self):
        self.metrics, self.tags, self.artifacts = {}, {}, []

    def log_artifacts(self, run_id, path, artifact_path=None):
        self.artifacts.append(artifact_path)

    def log_artifact(self, run_id, path, artifact_path=None):
        self.artifacts.append(path)

    def log_table(self, run_id, data, artifact_file):
        self.artifacts.append(artifact_file)

    def log_batch(self, run_id, metrics=(), params=()):
        self.metrics.update({m.key: m.value for m in metrics})

    def set_tag(self, run_id, key, value):
        self.tags[key] = value

    def set_terminated(self, run_id, status):
        self.tags["status"] = status


def test_the_parent_run_carries_each_family_and_compressor_law_and_the_compressors_table(tmp_path):
    """Laws read from results/law/{family}/{compressor}.json; metrics law/{family}/{compressor}/{param}; the
    description's law table has a compressor column and the report's error-at-the-largest-LLM table."""
    import json

    from test_cli_and_report import TRUE_LAWS, compressor_grid, fit_frontier_and_report

    from vlmscale.analysis import report
    from vlmscale.orchestration import track_sync

    grid = compressor_grid(tmp_path / "grid.parquet")
    fit_frontier_and_report(tmp_path, tmp_path / "grid.parquet")
    client = RecordingClient()
    track_sync.log_grid_summary(client, "1", "parent", grid, tmp_path, tmp_path, 0)
    for family, compressor in TRUE_LAWS:
        fitted = json.loads((tmp_path / "law" / family / f"{compressor}.json").read_text())
        assert client.metrics[f"law/{family}/{compressor}/alpha"] == fitted["params"]["alpha"]
        assert client.metrics[f"law/{family}/{compressor}/r2"] == fitted["r2"]
    assert not any(key.count("/") != 3 for key in client.metrics)  # nothing keyed by family alone
    note = client.tags[track.NOTE_TAG]
    assert "| family | compressor | α [95 % CI]" in note
    assert "| reasoning | quecc |" in note and "| ocr | avgpool |" in note
    assert "- **Warning, ocr / quecc:** R² = " in note and "Warning, reasoning" not in note
    table = report.compressor_table(grid)
    assert "### Compressors compared\n\n" + table in note and table in (tmp_path / "report.md").read_text()
    assert "figures/reasoning_compressors.png" in note and client.tags["status"] == "FINISHED"


def test_cell_and_experiment_descriptions_name_the_compressor(tmp_path):
    from test_cli_and_report import compressor_grid

    from vlmscale.orchestration import track_sync

    grid = compressor_grid(tmp_path / "grid.parquet")
    rows = grid[grid.cell == "lm1/quecc/v4/s1"]
    line = track_sync.cell_description(rows)
    assert line.startswith("**lm1** (3e+04 parameters), compressor quecc, V = 4, seed 1: ")
    assert "reasoning error" in line and "ocr error" in line
    text = track_sync.experiment_description(grid, "g")
    assert text.startswith(
        "vlmscale grid `g`: 4 LLMs × V ∈ {1, 4, 16, 64} × 2 seed(s) × compressor(s) {avgpool, quecc};"
    )
