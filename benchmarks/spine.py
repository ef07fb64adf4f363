"""Spine benchmark: install time, the default grid's wall time on this machine, per-cell training time,
the no-op rerun time, and the default grid's scientific result per seed. Writes
benchmarks/results/spine.json and prints it.

    python benchmarks/spine.py [--install] [--workdir DIR] [--seeds 0 1 2]

--install also times a from-scratch `make install` into a fresh virtual environment. The grid runs in
a fresh copy of the results folder (DIR/results), so an existing results/ is left alone.
--seeds then reruns the same grid with `grid.seeds` set to those seeds (the default grid's seed-0 cells
are reused, not retrained) and records, per family, the law fitted to each seed alone and to the
per-(N, V) mean over seeds: alpha, beta, R², V* at Q = 0 and 50, the held-out error, the
monotonicity of error in N, and whether the paper's finding holds.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def timed(cmd: list[str], cwd: Path, env=None) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--install", action="store_true")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--seeds", type=int, nargs="*", default=[], help="also run these seeds and fit each")
    args = parser.parse_args()
    out: dict = {"machine": f"{os.cpu_count()} cores", "date": time.strftime("%Y-%m-%d")}
    if args.install:
        venv = Path(tempfile.mkdtemp()) / "venv"
        out["install_seconds"] = round(timed(["make", "install", f"VENV={venv}"], REPO), 1)
        shutil.rmtree(venv.parent)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="vlmscale-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "config.yaml"
    shutil.copy(REPO / "config.yaml", config)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "MPLBACKEND": "Agg"}
    snake = [
        "snakemake",
        "-s",
        str(REPO / "Snakefile"),
        "--profile",
        str(REPO / "profiles/local"),
        "--configfile",
        str(config),
    ]
    out["grid_wall_seconds"] = round(timed(snake, workdir, env), 1)
    noop = [timed(snake, workdir, env) for _ in range(3)]
    out["noop_rerun_seconds_median"] = round(statistics.median(noop), 2)
    out["noop_dry_run_seconds"] = round(timed([*snake, "-n"], workdir, env), 2)
    cells = {}
    for path in sorted((workdir / "results/cells").glob("*/*/s*/train.json")):
        d = json.loads(path.read_text())
        cells[d["cell"]] = d["train_seconds"]
    out["cell_train_seconds"] = cells
    out["tower_seconds"] = json.loads((workdir / "results/vision/tower.json").read_text())["seconds"]
    out["laws"] = {"default": laws_of(workdir / "results")}
    if args.seeds:
        import yaml

        cfg = yaml.safe_load(config.read_text())
        cfg["grid"]["seeds"] = args.seeds
        config.write_text(yaml.safe_dump(cfg, sort_keys=False))
        out["seeds_wall_seconds"] = round(timed(snake, workdir, env), 1)
        out["laws"].update(per_seed_laws(workdir / "results", args.seeds))
    # A run with seeds also keeps its own copy: the plain timing run (no --seeds) overwrites spine.json.
    dest = REPO / "benchmarks/results" / ("spine_seeds.json" if args.seeds else "spine.json")
    dest.parent.mkdir(exist_ok=True)
    dest.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


def summary(fit, v_range) -> dict:
    from vlmscale.analysis import law

    p = fit.params
    return {
        "alpha": round(p["alpha"], 4),
        "beta": round(p["beta"], 4),
        "K": round(p["K"], 4),
        "D": round(p["D"], 4),
        "r2": round(fit.r2, 4),
        "status": fit.status,
        "v_star_q0": law.optimal_tokens(p["alpha"], p["beta"], 0, *v_range),
        "v_star_q50": law.optimal_tokens(p["alpha"], p["beta"], 50, *v_range),
        "heldout_mean_abs_error": round(fit.heldout.get("mean_abs_error", float("nan")), 4),
        "trusted": not law.trust_problems(fit),
    }


def fit_table(table) -> dict:
    """The law and the checks issue-level claims rest on, for one family table (llm_params, visual_tokens, error)."""
    from vlmscale.analysis import law

    data = law.LawData.from_arrays(table.llm_params, table.visual_tokens, table.error)
    fit = law.fit_with_checks(data)
    v_range = (float(table.visual_tokens.min()), float(table.visual_tokens.max()))
    out = summary(fit, v_range)
    grid = table.pivot_table(index="llm_params", columns="visual_tokens", values="error").sort_index()
    out["max_rise_with_n"] = round(float((grid.diff().max()).max()), 4)  # > 0: a larger LLM did worse
    out["errors"] = {str(int(n)): [round(float(e), 4) for e in row] for n, row in grid.iterrows()}
    return out


def laws_of(results: Path, seed: int | None = None) -> dict:
    """Per family: the law of the grid (the per-(N, V) mean over its seeds), or of one seed alone."""
    import pandas as pd

    from vlmscale.analysis.aggregate import family_table

    grid = pd.read_parquet(results / "grid.parquet")
    if seed is not None:
        grid = grid[grid.seed == seed]
    path = results / f".spine_grid_{seed}.parquet"
    grid.to_parquet(path)
    try:
        return {family: fit_table(family_table(path, family)) for family in sorted(grid.family.unique())}
    finally:
        path.unlink()


def per_seed_laws(results: Path, seeds: list[int]) -> dict:
    laws = {f"seed_{s}": laws_of(results, s) for s in seeds}
    laws["mean_over_seeds"] = laws_of(results)
    return laws


if __name__ == "__main__":
    main()
