"""The workflow end to end on a grid small enough for a couple of minutes: outputs, no-op rerun, and
exactly-the-invalidated-cells reruns."""

from __future__ import annotations

import copy
import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import REPO, grid_config, snakemake

pytestmark = pytest.mark.slow

MINI = grid_config("mini")


def planned_jobs(workdir: Path, configfile: str) -> set[tuple[str, str]]:
    """(rule, wildcards) of every job a dry run would execute."""
    out = snakemake(workdir, configfile, "-n").stdout
    jobs = set()
    for block in re.split(r"\n(?:local)?rule ", "\n" + out)[1:]:
        rule = block.split(":", 1)[0].strip()
        wildcards = re.search(r"wildcards: (.*)", block)
        jobs.add((rule, wildcards.group(1).strip() if wildcards else ""))
    return jobs


@pytest.fixture(scope="module")
def grid(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("grid")
    (workdir / "mini.yaml").write_text(yaml.safe_dump(MINI))
    proc = snakemake(workdir, "mini.yaml")
    assert proc.returncode == 0, proc.stderr[-4000:]
    (workdir / "first_run.out").write_text(proc.stdout + proc.stderr)
    return workdir


def test_full_run_leaves_report_table_laws_and_figures(grid):
    results = grid / "results"
    assert (results / "report.md").read_text().startswith("# vlmscale report")
    laws = {str(p.relative_to(results / "law")) for p in (results / "law").glob("*/*.json")}
    assert laws == {"reasoning/avgpool.json", "ocr/avgpool.json"}  # one law per (family, compressor)
    assert (results / "law/frontier.csv").exists()
    assert len(list((results / "figures").glob("*_q*.png"))) == 4  # 2 families x Q in {0, 50}
    assert (results / "figures/optimal_tokens.png").exists()
    assert len(list((results / "figures").glob("*_compressors.png"))) == 2  # one comparison per family
    import pandas as pd

    table = pd.read_parquet(results / "grid.parquet")
    assert len(table) == 2 * 3 * 4 and table.accuracy.between(0, 1).all()
    assert (table.flops_paper_q50 == 2 * table.llm_params * (50 + table.visual_tokens)).all()
    # the tiny LLMs have no nominal size: the comparison with the paper says so instead of mixing conventions
    assert table.llm_params_nominal.isna().all() and (table.judge == "").all()
    report = (results / "report.md").read_text()
    assert "## Comparison with the paper (N nominal" in report and "on nominal N: no nominal size for" in report


def test_a_run_that_writes_the_report_ends_with_each_laws_v_star_and_trust(grid):
    out = (grid / "first_run.out").read_text()
    assert "vlmscale: the compute-optimal frontier" in out, out[-3000:]
    summary = out[out.index("vlmscale: the compute-optimal frontier") :]
    report = (grid / "results/report.md").read_text()
    for family in ("ocr", "reasoning"):  # the same V* line (or the same refusal) as the report
        line = next(x for x in summary.splitlines() if x.startswith(f"- {family}: "))
        assert line in report and ("V*(Q=50) = " in line or "not to be trusted" in line)
    assert "Full report: results/report.md" in summary


def test_every_cell_is_one_mlflow_run_under_one_parent(grid):
    con = sqlite3.connect(grid / "results/mlflow.db")
    runs = con.execute("SELECT run_uuid, name, status FROM runs").fetchall()
    tags = con.execute(
        "SELECT run_uuid, key, value FROM tags WHERE key IN ('vlmscale.cell', 'vlmscale.parent', 'mlflow.parentRunId')"
    ).fetchall()
    con.close()
    parents = {r for r, k, v in tags if k == "vlmscale.parent"}
    cells = {v for r, k, v in tags if k == "vlmscale.cell"}
    assert len(parents) == 1
    assert cells == {f"{m}/avgpool/v{v}/s0" for m in "ab" for v in (1, 4, 16)}
    assert len(runs) == 1 + 6 and all(status == "FINISHED" for _, _, status in runs)
    child_parents = {v for r, k, v in tags if k == "mlflow.parentRunId"}
    assert child_parents == parents
    con = sqlite3.connect(grid / "results/mlflow.db")
    kinds = con.execute("SELECT value FROM experiment_tags WHERE key = 'mlflow.experimentKind'").fetchall()
    notes = con.execute("SELECT count(*) FROM tags WHERE key = 'mlflow.note.content'").fetchone()[0]
    con.close()
    assert kinds == [("custom_model_development",)] and notes == 1 + 6  # the UI opens on the runs table


def test_second_run_has_nothing_to_do(grid):
    proc = snakemake(grid, "mini.yaml")
    assert "Nothing to be done" in proc.stdout + proc.stderr
    assert "compute-optimal frontier" not in proc.stdout + proc.stderr  # no report written, nothing to say


def test_a_moved_project_plans_nothing(grid, tmp_path):
    """A finished project copied (as `cp -a` does: results, .snakemake and mtimes with it) to another
    folder, and run from a copy of the workflow in yet another folder, has nothing to do: no rule
    names an input by an absolute path."""
    moved = tmp_path / "scratch/renamed"
    moved.parent.mkdir(parents=True)
    subprocess.run(["cp", "-a", str(grid), str(moved)], check=True)
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    for name in ("Snakefile", "workflow", "src"):
        subprocess.run(["cp", "-a", str(REPO / name), str(checkout / name)], check=True)
    for snakefile in (REPO / "Snakefile", checkout / "Snakefile"):
        proc = snakemake(moved, "mini.yaml", "-n", "-s", str(snakefile))
        assert proc.returncode == 0 and "Nothing to be done" in proc.stdout + proc.stderr, proc.stdout[-3000:]


def test_changing_one_llms_training_reruns_exactly_its_cells(grid):
    cfg = copy.deepcopy(MINI)
    cfg["llms"][1]["train"] = {"stage2": {"lr": 0.002}}
    (grid / "edited.yaml").write_text(yaml.safe_dump(cfg))
    jobs = planned_jobs(grid, "edited.yaml")
    trained = {w for rule, w in jobs if rule == "train"}
    assert trained == {f"llm=b, compressor=avgpool, V={v}, seed=0" for v in (1, 4, 16)}
    evaluated = {w for rule, w in jobs if rule == "evaluate"}
    assert evaluated == trained
    assert not any(rule in {"prepare_data", "pretrain_vision", "flops"} for rule, _ in jobs)
    assert {"aggregate", "fit_law", "frontier", "report", "track_sync"} <= {rule for rule, _ in jobs}


def test_adding_seeds_trains_only_the_new_seeds_cells(grid):
    cfg = copy.deepcopy(MINI)
    cfg["grid"]["seeds"] = [0, 1]  # seed 0 is the grid's train.seed: its finished cells are the same cells
    (grid / "seeds.yaml").write_text(yaml.safe_dump(cfg))
    jobs = planned_jobs(grid, "seeds.yaml")
    trained = {w for rule, w in jobs if rule == "train"}
    assert trained == {f"llm={m}, compressor=avgpool, V={v}, seed=1" for m in "ab" for v in (1, 4, 16)}
    assert {w for rule, w in jobs if rule == "evaluate"} == trained
    assert not any(rule in {"prepare_data", "pretrain_vision", "flops"} for rule, _ in jobs)  # FLOPs are per (LLM, V)


def test_adding_a_compressor_trains_only_its_cells_and_compares_the_frontiers(grid, tmp_path):
    """grid.compressors: [avgpool, tokenpacker] on the finished avgpool grid (a copy of it): the dry run
    plans tokenpacker's cells alone (training, evaluation and FLOPs; no data, tower or avgpool cell), and
    the finished run fits one law per (family, compressor) and compares them."""
    cfg = copy.deepcopy(MINI)
    cfg["grid"]["compressors"] = ["avgpool", "tokenpacker"]
    both = tmp_path / "both"
    subprocess.run(["cp", "-a", str(grid), str(both)], check=True)
    (both / "compressors.yaml").write_text(yaml.safe_dump(cfg))
    jobs = planned_jobs(both, "compressors.yaml")
    new = {f"llm={m}, compressor=tokenpacker, V={v}, seed=0" for m in "ab" for v in (1, 4, 16)}
    assert {w for rule, w in jobs if rule == "train"} == new
    assert {w for rule, w in jobs if rule == "evaluate"} == new
    assert {w for rule, w in jobs if rule == "flops"} == {w.replace(", seed=0", "") for w in new}
    assert not any(rule in {"prepare_data", "pretrain_vision"} for rule, _ in jobs)
    proc = snakemake(both, "compressors.yaml")
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = both / "results"
    import pandas as pd

    table = pd.read_parquet(results / "grid.parquet")
    assert table.groupby("compressor").cell.nunique().to_dict() == {"avgpool": 6, "tokenpacker": 6}
    from vlmscale.analysis import law

    trusted = set()
    for family in ("reasoning", "ocr"):
        for compressor in ("avgpool", "tokenpacker"):
            fitted = yaml.safe_load((results / f"law/{family}/{compressor}.json").read_text())
            assert (fitted["family"], fitted["compressor"]) == (family, compressor)
            if not law.trust_problems(law.FitResult.from_dict(fitted)):
                trusted.add((family, compressor))
    frontier = pd.read_csv(results / "law/frontier.csv")
    assert set(frontier.compressor) == {"avgpool", "tokenpacker"}
    laws = frontier[frontier.method != "best_trained_cell"]
    for (family, _, _), budget in laws.groupby(["family", "text_tokens", "flops"]):
        candidates = budget[[(family, c) in trusted for c in budget.compressor]]
        # the optimal row: the trusted compressor whose law predicts the lowest error; none without one
        assert budget.optimal.sum() == (1 if len(candidates) else 0)
        if len(candidates):
            assert budget[budget.optimal].error.iloc[0] == candidates.error.min()
    assert "## Compressors compared" in (results / "report.md").read_text()


def rules_planned(grid: Path, name: str, cfg: dict, header: str = "") -> dict[str, int]:
    (grid / name).write_text(header + yaml.safe_dump(cfg))
    counts: dict[str, int] = {}
    for rule, _ in planned_jobs(grid, name):
        counts[rule] = counts.get(rule, 0) + 1
    return counts


DOWNSTREAM = {"aggregate": 1, "fit_law": 2, "frontier": 1, "report": 1, "track_sync": 1, "all": 1}


def test_each_kind_of_edit_reruns_exactly_its_stages(grid):
    cfg = copy.deepcopy(MINI)
    assert rules_planned(grid, "comment.yaml", cfg, header="# only a comment changed\n") == {}
    fewer = copy.deepcopy(MINI)
    fewer["benchmarks"] = [b for b in MINI["benchmarks"] if b["name"] != "next"]
    assert rules_planned(grid, "fewer.yaml", fewer) == {"evaluate": 6, **DOWNSTREAM}
    flops = copy.deepcopy(MINI)
    flops["flops"] = {"text_tokens": [0, 100]}
    assert rules_planned(grid, "flops.yaml", flops) == {"flops": 6, **DOWNSTREAM}
    form = copy.deepcopy(MINI)
    form["law"] = {**MINI["law"], "form": "additive"}
    assert rules_planned(grid, "form.yaml", form) == {k: v for k, v in DOWNSTREAM.items() if k != "aggregate"}
    # Evaluation code changed (content, not just its timestamp): re-evaluate every cell, retrain none.
    code = REPO / "src/vlmscale/evaluation/evaluate.py"
    original, before = code.read_bytes(), code.stat()
    try:
        code.write_bytes(original + b"\n# an edit\n")
        assert rules_planned(grid, "mini.yaml", MINI) == {"evaluate": 6, **DOWNSTREAM}
    finally:
        code.write_bytes(original)
        os.utime(code, ns=(before.st_atime_ns, before.st_mtime_ns))


# The module computing each rule's outputs (cli.py only parses arguments; orchestration only submits,
# tracks and prints). Rules not named here (all, track_sync) have no code param.
RULE_CODE = {
    "prepare_data": ["data.synthetic"],
    "pretrain_vision": ["model.vision"],
    "train": ["training.trainer"],
    "evaluate": ["evaluation.evaluate"],
    "flops": ["analysis.flops"],
    "aggregate": ["analysis.aggregate"],
    "fit_law": ["analysis.law", "analysis.tables"],
    "frontier": ["analysis.law"],
    "report": ["analysis.report"],
}


def rules_with_changed_params(workdir: Path, checkout: Path) -> set[str]:
    """Rules whose own params changed, from Snakemake's per-file summary (a dry run gives that reason only
    to the first invalidated rule of a chain; the ones below are planned for their updated inputs)."""
    env = {**os.environ, "PYTHONPATH": str(checkout / "src")}
    out = snakemake(workdir, "mini.yaml", "--summary", "-s", str(checkout / "Snakefile"), env=env).stdout
    rows = [line.split("\t") for line in out.splitlines() if line.count("\t") >= 3]
    return {row[2] for row in rows[1:] if row[-2] == "params changed"}


def test_an_edit_to_any_module_reruns_exactly_the_rules_that_import_it(grid, tmp_path):
    """For every file of the package: an edit plans again exactly the rules whose code runs it, with
    the import graph read by the test itself (tests/codegraph.py), not by vlmscale.identity."""
    from codegraph import PACKAGE, files_run_by

    checkout = tmp_path / "checkout"
    checkout.mkdir()
    for name in ("Snakefile", "workflow", "src"):
        subprocess.run(["cp", "-a", str(REPO / name), str(checkout / name)], check=True)
    assert rules_with_changed_params(grid, checkout) == set()
    runs = {rule: set().union(*(files_run_by(m) for m in roots)) for rule, roots in RULE_CODE.items()}
    wrong = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = path.relative_to(PACKAGE).as_posix()
        copy = checkout / "src/vlmscale" / name
        original = copy.read_bytes()
        copy.write_bytes(original + b"\n# an edit\n")
        planned = rules_with_changed_params(grid, checkout)
        copy.write_bytes(original)
        expected = {rule for rule, files in runs.items() if name in files}
        if planned != expected:
            wrong[name] = {"planned": sorted(planned), "expected": sorted(expected)}
    assert not wrong, wrong
    assert "data/tokenizer.py" in runs["flops"]  # the tokenizer sizes the embeddings, so N


def test_operational_settings_plan_no_training(grid):
    """Checkpoint and log frequency and folder, launch resources and the tracking server decide when and
    where a job saves, where it runs and where it reports, never the weights: changing them on a finished
    grid trains and evaluates nothing (the tracking server's change replays the MLflow view alone)."""
    cfg = copy.deepcopy(MINI)
    cfg["train"].update(checkpoint_every=7, log_every=3)
    cfg["llms"][1]["train"] = {"checkpoint_every": 11}
    cfg["launch"] = {**MINI["launch"], "threads": 2, "slurm": {"time_min": 30, "partition": "gpu"}}
    cfg["llms"][0]["resources"] = {"mem_gb": 8, "gpu_request": "gres", "max_held_min": 60}
    cfg["checkpoints"] = str(grid / "scratch")  # where the checkpoints go: the job is told, nothing retrains
    assert rules_planned(grid, "operational.yaml", cfg) == {}
    forced = snakemake(grid, "operational.yaml", "-n", "-p", "--forcerun", "train", "--until", "train").stdout
    assert f"--checkpoint-dir {grid}/scratch/a/avgpool/v1/s0 " in forced, forced[-2000:]
    cfg["tracking"] = {"experiment": "mini", "uri": "http://127.0.0.1:5999"}
    assert rules_planned(grid, "tracking.yaml", cfg) == {"track_sync": 1, "all": 1}


def vlmscale_status(workdir: Path, configfile: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "vlmscale.cli", "status", "--configfile", configfile],
        cwd=workdir,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_status_matrix_shows_done_stale_and_running(grid):
    assert "6 cells: 6 done" in vlmscale_status(grid, "mini.yaml")
    cfg = copy.deepcopy(MINI)
    cfg["llms"][1]["train"] = {"stage2": {"lr": 0.002}}
    (grid / "edited.yaml").write_text(yaml.safe_dump(cfg))
    out = vlmscale_status(grid, "edited.yaml")
    assert "3 done, 3 stale" in out
    row_b = next(line for line in out.splitlines() if line.startswith("b "))
    assert row_b.split()[0] == "b" and row_b.count("stale") == 3
    # A cell whose training log is still growing shows its last step and job.
    cfg["grid"]["visual_tokens"] = [1, 4, 16, 64]
    (grid / "bigger.yaml").write_text(yaml.safe_dump(cfg))
    log = grid / "results/logs/train/a/avgpool/v64/s0.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(
        "[vlmscale] train:a/avgpool/v64: submitted job 4242 (local); logs: /nonexistent\n"
        "stage2 step 20/40 loss 1.0 train_acc 0.5\n"
    )
    out = vlmscale_status(grid, "bigger.yaml")
    assert "running stage2 20/40 [job 4242]" in out and "not started" in out
    log.unlink()


def test_rerun_after_a_change_supersedes_exactly_that_llms_runs(grid):
    # Runs last in this module: it retrains lm "b" for real.
    proc = snakemake(grid, "edited.yaml")
    assert proc.returncode == 0, proc.stderr[-3000:]
    con = sqlite3.connect(grid / "results/mlflow.db")
    rows = con.execute("""
        SELECT r.name, r.run_uuid, max(CASE WHEN t.key = 'vlmscale.superseded' THEN t.value END)
        FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid
        WHERE r.run_uuid IN (SELECT run_uuid FROM tags WHERE key = 'vlmscale.cell')
        GROUP BY r.run_uuid""").fetchall()
    con.close()
    by_cell: dict[str, list] = {}
    for name, _, superseded in rows:
        by_cell.setdefault(name, []).append(superseded)
    for v in (1, 4, 16):
        assert sorted(by_cell[f"a/avgpool/v{v}/s0"], key=str) == [None]  # untouched: one run, not superseded
        assert sorted(by_cell[f"b/avgpool/v{v}/s0"], key=str) == [None, "true"]  # a new run; the old one superseded
