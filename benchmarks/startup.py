"""Start-up of the light commands: `vlmscale --help`, `vlmscale fit` (a CSV and, when there, the default
grid's parquet) and `vlmscale frontier`, each the median wall time of several runs as a process.

    python benchmarks/startup.py [--repeats 7] [--grid results/grid.parquet]

Writes benchmarks/results/startup.json. Targets: --help, fit and frontier under 0.5 s; plan under 5 s.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO / "src/vlmscale/reference/paper_visual_reasoning.csv"


def wall(command: list[str], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return round(statistics.median(times), 3)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--grid", default=str(REPO / "results/grid.parquet"))
    args = parser.parse_args()
    fit = Path(tempfile.mkdtemp()) / "fit.json"
    subprocess.run([sys.executable, "-m", "vlmscale.cli", "fit", str(REFERENCE), "--out", str(fit)], check=True)
    commands = {
        "vlmscale --help": ["--help"],
        "vlmscale fit (28-row CSV, the paper's table)": ["fit", str(REFERENCE)],
        "vlmscale frontier (that fit, Q = 0 and 50)": ["frontier", str(fit)],
        "vlmscale plan (the paper's 35 cells, configs/paper.yaml)": [
            "plan",
            "--configfile",
            str(REPO / "configs/paper.yaml"),
        ],
        "python -c pass (the interpreter alone)": None,
    }
    if Path(args.grid).exists():
        commands["vlmscale fit (the default grid's parquet, one family)"] = ["fit", args.grid, "--family", "ocr"]
    cli = [sys.executable, "-m", "vlmscale.cli"]
    rows = {
        name: wall([sys.executable, "-c", "pass"] if argv is None else cli + argv, args.repeats)
        for name, argv in commands.items()
    }
    out = {
        "machine": f"{os.cpu_count()} cores",
        "date": time.strftime("%Y-%m-%d"),
        "repeats": args.repeats,
        "median_seconds": rows,
    }
    (REPO / "benchmarks/results/startup.json").write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
