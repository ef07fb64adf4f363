"""benchmarks/gpu_cell.py: its CPU smoke run (tiny shapes) trains a step and reports beside the plan; without
a GPU the real run says so and exits 0 (a GPU run is for a machine that has one)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks/gpu_cell.py"


def test_smoke_run_reports_a_row_beside_the_plans_estimate(tmp_path):
    out = tmp_path / "gpu_cell.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--out", str(out)], capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    row = json.loads(out.read_text())["rows"][0]
    assert row["tokens_per_second"] > 0 and row["seq_len"] == 4 + 8 and row["plan_memory_gb"] >= 0


def test_without_a_gpu_it_says_so_and_exits_0():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the script measures instead")
    proc = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "no GPU on this machine" in proc.stdout
