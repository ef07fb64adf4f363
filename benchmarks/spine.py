"""Spine benchmark: install time, the default grid's wall time on this machine, per-cell training time,
and the no-op rerun time. Writes benchmarks/results/spine.json and prints a Markdown table.

    python benchmarks/spine.py [--install] [--workdir DIR]

--install also times a from-scratch `make install` into a fresh virtual environment. The grid runs in
a fresh copy of the results folder (DIR/results), so an existing results/ is left alone.
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
    args = parser.parse_args()
    out: dict = {"machine": f"{os.cpu_count()} cores", "date": time.strftime("%Y-%m-%d")}
    if args.install:
        venv = Path(tempfile.mkdtemp()) / "venv"
        out["install_seconds"] = round(timed(["make", "install", f"VENV={venv}"], REPO), 1)
        shutil.rmtree(venv.parent)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="vlmscale-bench-"))
    config = workdir / "config.yaml"
    shutil.copy(REPO / "config.yaml", config)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "MPLBACKEND": "Agg"}
    snake = ["snakemake", "-s", str(REPO / "Snakefile"), "--profile", str(REPO / "profiles/local"), "--configfile", str(config)]
    out["grid_wall_seconds"] = round(timed(snake, workdir, env), 1)
    noop = [timed(snake, workdir, env) for _ in range(3)]
    out["noop_rerun_seconds_median"] = round(statistics.median(noop), 2)
    out["noop_dry_run_seconds"] = round(timed([*snake, "-n"], workdir, env), 2)
    cells = {}
    for path in sorted((workdir / "results/cells").glob("*/*/train.json")):
        d = json.loads(path.read_text())
        cells[d["cell"]] = d["train_seconds"]
    out["cell_train_seconds"] = cells
    out["tower_seconds"] = json.loads((workdir / "results/vision/tower.json").read_text())["seconds"]
    dest = REPO / "benchmarks/results/spine.json"
    dest.parent.mkdir(exist_ok=True)
    dest.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
