"""DeepSpeed: a cell trained by two processes (CPU, gloo) under ZeRO-2 or ZeRO-3 follows the single-process
loss curve: each rank takes half of every global batch (in micro-batches when accumulating), DeepSpeed
averages the gradients and clips the global norm, so each step is the single-process step up to
floating-point summation order. A job killed after a checkpoint resumes through DeepSpeed's checkpoint
(each rank's partition of the optimizer's moments, and under ZeRO-3 of the weights) to the uninterrupted
curve."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import cell_cfg

from vlmscale.training.checkpoint import read_final
from vlmscale.training.distributed import free_port, local_world

pytestmark = pytest.mark.slow

# Runs `vlmscale train` and, when DIE_AT names "stage:step", exits hard right after that step is logged
# (every rank logs the same steps, so all of them die there, as a preempted job's tasks do).
DRIVER = """
import os, sys
from vlmscale import cli
from vlmscale.training import trainer as train

die_at, original = os.environ.get("DIE_AT"), train.Trainer.record_progress

def record_then_die(trainer, stage, step, window):
    original(trainer, stage, step, window)
    if f"{stage.name}:{step + 1}" == die_at:
        os._exit(17)

train.Trainer.record_progress = record_then_die
sys.exit(cli.main(["train", *sys.argv[1:]]))
"""


def run_two_processes(cfg, out: Path, die_at: str | None = None) -> list[int]:
    """Both ranks of a `vlmscale train` job on this machine; their exit codes."""
    args = ["--spec", json.dumps(cfg.spec), "--data-root", cfg.data_root, "--vision", cfg.vision]
    args += ["--out", str(out), "--checkpoint-dir", cfg.checkpoint_dir, "--executor", "inline"]
    port, procs = free_port(), []
    for rank in range(2):
        env = {**os.environ, **local_world(rank, 2, port), "DS_ACCELERATOR": "cpu", "DIE_AT": die_at or ""}
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", DRIVER, *args],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    codes = [p.returncode for p in procs]
    assert codes == [17, 17] if die_at else codes == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    return codes


def assert_same_curve(ours: list[dict], reference: list[dict]) -> None:
    assert [h["step"] for h in ours] == [h["step"] for h in reference]
    for a, b in zip(ours, reference):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-3, abs=1e-4), (a, b)


def test_one_process_zero_cell_trains_without_a_launcher(single, small_data, small_vision, tmp_path):
    """A one-GPU cell with zero_stage set, started with no rank environment at all (as a one-task job is):
    the world of one is exported before DeepSpeed looks for it, so it never falls back to MPI (mpi4py),
    and the cell follows the plain single-process curve."""
    cfg = cell_cfg(small_data, small_vision, tmp_path / "ckpt", zero_stage={"stage1": 2, "stage2": 2})
    args = ["--spec", json.dumps(cfg.spec), "--data-root", cfg.data_root, "--vision", cfg.vision]
    args += ["--out", str(tmp_path / "train.json"), "--checkpoint-dir", cfg.checkpoint_dir, "--executor", "inline"]
    rendezvous = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "SUBMITIT_EXECUTOR")
    env = {k: v for k, v in os.environ.items() if k not in rendezvous}
    proc = subprocess.run([sys.executable, "-m", "vlmscale.cli", "train", *args], env={**env, "DS_ACCELERATOR": "cpu"},
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert_same_curve(json.loads((tmp_path / "train.json").read_text())["history"], single["history"])


@pytest.fixture(scope="module")
def single(small_data, small_vision, tmp_path_factory):
    from vlmscale.training import trainer as train

    return train.train_cell(cell_cfg(small_data, small_vision, tmp_path_factory.mktemp("single")), log=lambda m: None)


@pytest.mark.parametrize("zero", [2, 3], ids=["zero2", "zero3"])
def test_two_processes_follow_the_single_process_curve_and_resume_onto_it(
    single, small_data, small_vision, tmp_path, zero
):
    """Each rank's half of the batch of 8 in two micro-batches (gradients accumulated by DeepSpeed) gives
    the single-process curve. Killed at stage-2 step 25, five steps after its step-20 checkpoint, the
    rerun restores each rank's partition of the weights and of AdamW's moments and finishes on the
    uninterrupted curve."""
    overrides = {"zero_stage": {"stage1": zero, "stage2": zero}, "micro_batch_size": 2}
    whole = cell_cfg(small_data, small_vision, tmp_path / "whole", **overrides)
    run_two_processes(whole, tmp_path / "whole.json")
    result = json.loads((tmp_path / "whole.json").read_text())
    assert result["world_size"] == 2
    assert_same_curve(result["history"], single["history"])
    events = [json.loads(x) for x in (tmp_path / "whole/attempts.jsonl").read_text().splitlines()]
    assert [e["event"] for e in events] == ["start", "finished"] and events[0]["world_size"] == 2  # rank 0 only
    _, weights = read_final(tmp_path / "whole/final")  # whole tensors, ZeRO-3 included
    _, reference = read_final(Path(single["checkpoint"]))
    assert {k: v.shape for k, v in weights.items()} == {k: v.shape for k, v in reference.items()}
    assert not [p for p in (tmp_path / "whole/deepspeed").glob("*") if p.is_dir()]  # a finished cell: final/ only

    killed = cell_cfg(small_data, small_vision, tmp_path / "killed", **overrides)
    run_two_processes(killed, tmp_path / "killed.json", die_at="stage2:25")
    saved = sorted(p.name for p in (tmp_path / "killed/deepspeed").iterdir() if p.is_dir())
    assert saved == ["stage2-step20"]  # the stage-1 checkpoint was pruned once last.pt named this one
    partitions = sorted(p.name for p in (tmp_path / "killed/deepspeed/stage2-step20").glob("*optim_states.pt"))
    assert len(partitions) == 2, partitions  # one per rank: the moments are partitioned

    run_two_processes(killed, tmp_path / "killed.json")
    resumed = json.loads((tmp_path / "killed.json").read_text())
    assert_same_curve(resumed["history"], json.loads((tmp_path / "whole.json").read_text())["history"])
    events = [json.loads(x) for x in (tmp_path / "killed/attempts.jsonl").read_text().splitlines()]
    assert [(e["event"], e["step"]) for e in events][-2:] == [("start", 26), ("finished", 36)]


def test_bf16_mode_holds_bf16_weights_and_fp32_master_partitions(single, small_data, small_vision, tmp_path):
    """train.bf16 under DeepSpeed is its bf16 mode (LLaVA's): the engine's weights are bf16, each rank's
    checkpoint partition holds the fp32 master weights, the final LLM is saved in bf16; the curve stays
    near the fp32 one (bf16 rounding, not a different computation)."""
    import torch

    cfg = cell_cfg(small_data, small_vision, tmp_path / "bf16", zero_stage={"stage1": 2, "stage2": 3}, bf16=True)
    run_two_processes(cfg, tmp_path / "bf16.json", die_at="stage2:25")
    [path] = (tmp_path / "bf16/deepspeed/stage2-step20").glob("bf16_zero_pp_rank_0_*optim_states.pt")
    partition = torch.load(path, weights_only=False)["optimizer_state_dict"]
    masters = partition["fp32_flat_groups"]
    assert masters and all(t.dtype == torch.float32 for t in masters)
    moments = [v for s in partition["optimizer_state_dict"]["state"].values() for v in s.values() if v.dim()]
    assert moments and all(t.dtype == torch.float32 for t in moments)

    run_two_processes(cfg, tmp_path / "bf16.json")
    result = json.loads((tmp_path / "bf16.json").read_text())
    meta, _ = read_final(tmp_path / "bf16/final")
    assert meta["dtype"] == "bfloat16"
    from safetensors import safe_open

    with safe_open(str(next((tmp_path / "bf16/final/llm").glob("*.safetensors"))), "pt") as f:
        assert all(f.get_tensor(k).dtype == torch.bfloat16 for k in f.keys())
    for ours, reference in zip(result["history"], single["history"]):
        assert ours["loss"] == pytest.approx(reference["loss"], rel=0.05), (ours, reference)
