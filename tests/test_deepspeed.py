"""DeepSpeed: a cell trained by two processes (CPU, gloo) under ZeRO-2 follows the single-process loss
curve: each rank takes half of every global batch, DeepSpeed averages the gradients and clips the
global norm, so each step is the single-process step up to floating-point summation order."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
from test_train import cell_cfg

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("micro", [None, 2], ids=["whole-share", "accumulating-2"])
def test_two_process_zero2_matches_single_process(small_data, small_vision, tmp_path, micro):
    """micro 2: each rank's half of the batch of 8 in two micro-batches, gradients accumulated by DeepSpeed."""
    from vlmscale import train

    single = train.train_cell(cell_cfg(small_data, small_vision, tmp_path / "single"), log=lambda m: None)

    extra = {"micro_batch_size": micro} if micro else {}
    cfg = cell_cfg(small_data, small_vision, tmp_path / "zero2", zero_stage={"stage1": 2, "stage2": 2}, **extra)
    args = [
        "--spec",
        json.dumps(cfg.spec),
        "--data-root",
        cfg.data_root,
        "--vision",
        cfg.vision,
        "--out",
        str(tmp_path / "train.json"),
        "--checkpoint-dir",
        cfg.checkpoint_dir,
        "--executor",
        "inline",
    ]
    port = free_port()
    procs = []
    for rank in range(2):
        env = {
            **os.environ,
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": "2",
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "DS_ACCELERATOR": "cpu",
        }
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "vlmscale.cli", "train", *args],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs[0][-3000:] + outputs[1][-3000:]

    zero2 = json.loads((tmp_path / "train.json").read_text())
    assert zero2["world_size"] == 2
    assert [h["step"] for h in zero2["history"]] == [h["step"] for h in single["history"]]
    for ours, reference in zip(zero2["history"], single["history"]):
        assert ours["loss"] == pytest.approx(reference["loss"], rel=1e-3, abs=1e-4), (ours, reference)
    events = [json.loads(x) for x in (tmp_path / "zero2/attempts.jsonl").read_text().splitlines()]
    assert [e["event"] for e in events] == ["start", "finished"] and events[0]["world_size"] == 2  # rank 0 only
