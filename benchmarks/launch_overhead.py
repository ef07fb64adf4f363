"""What submitit costs per cell: the wall time of launching a stage that does nothing, per executor
(inline, local, slurm), next to a real cell's work (the default grid's training times, from spine.json).
Writes benchmarks/results/launch_overhead.json.

    python benchmarks/launch_overhead.py [--repeats 5] [--account vlmscale]

Slurm is measured only where `sinfo` answers (e.g. after `.ci/start-slurm`); its number includes
queueing on an idle node and the state polling of `vlmscale.orchestration.launch` (0.5 s, growing to 10 s).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from vlmscale.orchestration import launch

REPO = Path(__file__).resolve().parents[1]


@dataclasses.dataclass(frozen=True)
class Nothing:
    i: int
    executor: str = "inline"


def nothing(job: Nothing) -> dict:
    return {"ok": True}


def overhead(executor: str, repeats: int, resources: dict) -> list[float]:
    folder = Path(tempfile.mkdtemp(prefix=f"vlmscale-launch-{executor}-"))
    times = []
    for i in range(repeats):
        start = time.perf_counter()
        launch.run(nothing, Nothing(i), executor=executor, log_dir=folder, name=f"bench-{i}", resources=resources)
        times.append(time.perf_counter() - start)
    shutil.rmtree(folder, ignore_errors=True)
    return times


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--account", default="vlmscale")
    args = parser.parse_args()
    executors = ["inline", "local"]
    if shutil.which("sinfo") and subprocess.run(["sinfo", "-h"], capture_output=True).returncode == 0:
        executors.append("slurm")
    resources = {"account": args.account, "cpus_per_task": 1, "mem_gb": 1}
    rows = {}
    for executor in executors:
        times = overhead(executor, args.repeats, resources)
        rows[executor] = {"median_s": round(statistics.median(times), 3), "max_s": round(max(times), 3)}
        print(executor, rows[executor], flush=True)
    spine = REPO / "benchmarks/results/spine.json"
    cells = json.loads(spine.read_text())["cell_train_seconds"] if spine.exists() else {}
    out = {
        "machine": f"{os.cpu_count()} cores",
        "date": time.strftime("%Y-%m-%d"),
        "repeats": args.repeats,
        "overhead_per_launch": rows,
        "default_grid_train_seconds": {
            "min": min(cells.values(), default=None),
            "max": max(cells.values(), default=None),
        },
    }
    (REPO / "benchmarks/results/launch_overhead.json").write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
