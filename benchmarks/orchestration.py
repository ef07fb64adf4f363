"""Orchestration cost: how long Snakemake takes to plan the grid (`-n` from scratch) and to find nothing to
do (a no-op rerun with every output present), for grids from 10 to 1,000 cells, the paper-sized grid
(5 LLMs x 7 V x 13 benchmarks) among them. Writes benchmarks/results/orchestration.json.

    python benchmarks/orchestration.py [--sizes 10 35 100 300 1000] [--repeats 3]

No model is trained: each grid points at a small LLaVA-format data set (13 benchmark folders) written
here, its outputs are created with `snakemake --touch`, so only the planning work is measured.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
N_BENCHMARKS = 13
SHAPES = {10: (2, 5), 35: (5, 7), 100: (10, 10), 300: (15, 20), 1000: (40, 25)}  # cells -> (LLMs, V values)


def write_data(root: Path) -> dict:
    """One training conversation and 13 one-question benchmarks: enough for the config checks."""
    from PIL import Image

    (root / "images").mkdir(parents=True)
    Image.new("RGB", (32, 32)).save(root / "images/0.png")
    record = {
        "id": "0",
        "image": "images/0.png",
        "conversations": [{"from": "human", "value": "<image>\ncolour?"}, {"from": "gpt", "value": "red"}],
    }
    (root / "train.json").write_text(json.dumps([record]))
    for b in range(N_BENCHMARKS):
        folder = root / "benchmarks" / f"bench{b:02d}"
        folder.mkdir(parents=True)
        (folder / "questions.jsonl").write_text(
            json.dumps({"question_id": 0, "image": "images/0.png", "text": "colour?"}) + "\n"
        )
        (folder / "answers.jsonl").write_text(json.dumps({"question_id": 0, "answer": "red"}) + "\n")
    return {
        "source": "llava",
        "train_json": str(root / "train.json"),
        "image_folder": str(root),
        "benchmark_folder": str(root / "benchmarks"),
    }


def grid_config(data: dict, n_llms: int, n_v: int) -> dict:
    side = max(24, math.isqrt(n_v * n_v) + 1)
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    cfg["grid"] = {"name": f"orch-{n_llms}x{n_v}", "visual_tokens": [k * k for k in range(1, n_v + 1)]}
    if n_v == 7:
        cfg["grid"]["visual_tokens"] = [1, 4, 16, 36, 64, 144, 576]  # the paper's V grid
    cfg["data"] = data
    cfg["vision"] = {**cfg["vision"], "image_size": 4 * side, "patch_size": 4}
    cfg["llms"] = [
        {
            "name": f"lm{i:03d}",
            "source": "config",
            "arch": "qwen2",
            "hidden_size": 32 + 8 * i,
            "intermediate_size": 64,
            "num_layers": 1,
            "num_heads": 2,
        }
        for i in range(n_llms)
    ]
    cfg["benchmarks"] = [
        {"name": f"bench{b:02d}", "family": "reasoning" if b < 9 else "ocr"} for b in range(N_BENCHMARKS)
    ]
    return cfg


def snakemake(workdir: Path, *args: str) -> tuple[float, str]:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "MPLBACKEND": "Agg"}
    cmd = ["snakemake", "-s", str(REPO / "Snakefile"), "--configfile", "grid.yaml", "--cores", "2", *args]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return seconds, proc.stdout + proc.stderr


def planned_outputs(plan: str) -> list[str]:
    return [path for line in re.findall(r"^\s+output: (.*)$", plan, re.MULTILINE) for path in line.split(", ")]


def count_jobs(plan: str) -> int:
    match = re.search(r"^total\s+(\d+)", plan, re.MULTILINE)
    return int(match.group(1)) if match else 0


def measure(base: Path, data: dict, cells: int, repeats: int) -> dict:
    n_llms, n_v = SHAPES[cells]
    workdir = base / f"grid{cells}"
    workdir.mkdir()
    (workdir / "grid.yaml").write_text(yaml.safe_dump(grid_config(data, n_llms, n_v)))
    plans = [snakemake(workdir, "-n") for _ in range(repeats)]
    jobs = count_jobs(plans[0][1])
    for path in planned_outputs(plans[0][1]):  # every output present, no job run, then recorded
        target = workdir / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text("{}")
    snakemake(workdir, "--touch")
    snakemake(workdir)  # first real invocation creates the MLflow store (onstart); not timed
    noop = [snakemake(workdir) for _ in range(repeats)]
    assert all("Nothing to be done" in out for _, out in noop), noop[0][1][-2000:]
    outputs = sum(1 for p in (workdir / "results").rglob("*") if p.is_file())
    return {
        "cells": cells,
        "llms": n_llms,
        "visual_tokens": n_v,
        "benchmarks": N_BENCHMARKS,
        "jobs": jobs,
        "output_files": outputs,
        "plan_seconds": round(statistics.median(s for s, _ in plans), 2),
        "noop_seconds": round(statistics.median(s for s, _ in noop), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=sorted(SHAPES), choices=sorted(SHAPES))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="vlmscale-orch-"))
    data = write_data(base / "data")
    rows = []
    for cells in args.sizes:
        rows.append(measure(base, data, cells, args.repeats))
        print(json.dumps(rows[-1]), flush=True)
    out = {"machine": f"{os.cpu_count()} cores", "date": time.strftime("%Y-%m-%d"), "grids": rows}
    dest = REPO / "benchmarks/results/orchestration.json"
    dest.write_text(json.dumps(out, indent=2) + "\n")
    print("| cells | LLMs x V | jobs | output files | plan (`-n`) | no-op rerun |\n|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['cells']} | {r['llms']} x {r['visual_tokens']} | {r['jobs']} | {r['output_files']} | "
            f"{r['plan_seconds']} s | {r['noop_seconds']} s |"
        )


if __name__ == "__main__":
    main()
