"""How long Snakemake takes to plan the paper's grid: `snakemake -n --configfile configs/paper.yaml`, the
config file unchanged, in a folder holding a skeleton of the data layout it names (one image, one
conversation per stage, one question per benchmark: enough for every config check). Prints the plan's
job table and writes benchmarks/results/paper_plan.json.

    python benchmarks/paper_plan.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
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
PAPER = REPO / "configs/paper.yaml"


def write_skeleton(workdir: Path, cfg: dict) -> None:
    """The files configs/paper.yaml points at, each as small as the checks allow."""
    from PIL import Image

    data = cfg["data"]
    conversation = [
        {
            "id": "0",
            "image": "0.png",
            "conversations": [
                {"from": "human", "value": "<image>\nWhat is shown?"},
                {"from": "gpt", "value": "A red square."},
            ],
        }
    ]
    for stage in ("stage1", "stage2"):
        paths = {**{k: data[k] for k in ("train_json", "image_folder")}, **(data.get(stage) or {})}
        images = workdir / paths["image_folder"]
        images.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (32, 32), (200, 30, 30)).save(images / "0.png")
        (workdir / paths["train_json"]).write_text(json.dumps(conversation))
    for bench in cfg["benchmarks"]:
        folder = workdir / data["benchmark_folder"] / bench["name"]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "questions.jsonl").write_text(
            json.dumps({"question_id": 0, "image": "0.png", "text": "Colour?"}) + "\n"
        )
        (folder / "answers.jsonl").write_text(json.dumps({"question_id": 0, "answer": "red"}) + "\n")


def dry_run(workdir: Path) -> tuple[float, str]:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    start = time.perf_counter()
    out = subprocess.run(
        ["snakemake", "-s", str(REPO / "Snakefile"), "--configfile", str(PAPER), "-n", "--cores", "1"],
        cwd=workdir,
        capture_output=True,
        text=True,
        env=env,
        check=True,
    ).stdout
    return time.perf_counter() - start, out


def job_table(plan: str) -> dict[str, int]:
    """Snakemake's own 'Job stats' table of a dry run: rule -> job count."""
    table = plan.split("Job stats:", 1)[1]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)\s*$", table, re.MULTILINE)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    cfg = yaml.safe_load(PAPER.read_text())
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        write_skeleton(workdir, cfg)
        runs = [dry_run(workdir) for _ in range(args.repeats)]
    seconds = [round(s, 2) for s, _ in runs]
    table = job_table(runs[-1][1])
    result = {
        "config": "configs/paper.yaml",
        "plan_seconds": seconds,
        "median_s": statistics.median(seconds),
        "jobs": table,
        "cores": os.cpu_count(),
    }
    print(runs[-1][1].split("Job stats:", 1)[1].split("\n\n")[0])
    print(json.dumps(result, indent=2))
    dest = REPO / "benchmarks/results/paper_plan.json"
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
