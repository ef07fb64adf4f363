"""Training a cell: a killed job resumes from its checkpoint to the same result; a diverging loss stops
with a clear error and keeps the last good checkpoint; a checkpoint for another spec is not reused."""

from __future__ import annotations

import pytest
import torch
from helpers import LLM, cell_cfg

from vlmscale.training import trainer as train
from vlmscale.training.checkpoint import read_final


class Killed(Exception):
    pass


def test_killed_training_resumes_to_identical_result(small_data, small_vision, tmp_path, monkeypatch):
    reference = train.train_cell(cell_cfg(small_data, small_vision, tmp_path / "a"), log=lambda m: None)

    original = train.Trainer.record_progress
    calls = {"n": 0}

    def dies_midway(trainer, stage, step, window):
        original(trainer, stage, step, window)
        calls["n"] += 1
        if stage.name == "stage2" and step + 1 == 25:  # after the step-20 checkpoint, before the end
            raise Killed()

    monkeypatch.setattr(train.Trainer, "record_progress", dies_midway)
    cfg = cell_cfg(small_data, small_vision, tmp_path / "b")
    with pytest.raises(Killed):
        train.train_cell(cfg, log=lambda m: None)
    monkeypatch.setattr(train.Trainer, "record_progress", original)
    messages = []
    resumed = train.train_cell(cfg, log=messages.append)
    assert any("resuming t/v4 at stage2 step 20" in m for m in messages)
    assert resumed["history"] == reference["history"]
    _, a = read_final(tmp_path / "a/final")
    _, b = read_final(tmp_path / "b/final")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("ops", [{"log_every": 1}, {"checkpoint_every": 3}], ids=["log_every", "checkpoint_every"])
def test_operational_settings_change_neither_the_weights_nor_the_run_key(small_data, small_vision, tmp_path, ops):
    """config.OPERATIONAL_TRAIN_KEYS reach the job as `ops`: the same cell, logged or saved more often,
    ends with bit-identical weights under the same run key (so its checkpoint is resumable too)."""
    from dataclasses import replace

    from vlmscale import config as vcfg

    assert set(ops) <= set(vcfg.OPERATIONAL_TRAIN_KEYS)
    base = cell_cfg(small_data, small_vision, tmp_path / "a")
    spec = {**base.spec, "train": {k: v for k, v in base.spec["train"].items() if k not in ops}}
    reference = train.train_cell(replace(base, spec=spec), log=lambda m: None)
    tuned = replace(base, spec=spec, checkpoint_dir=str(tmp_path / "b"), ops=ops)
    assert tuned.settings != replace(base, spec=spec).settings  # the setting did reach the loop
    result = train.train_cell(tuned, log=lambda m: None)
    assert result["run_key"] == reference["run_key"]
    _, a = read_final(tmp_path / "a/final")
    _, b = read_final(tmp_path / "b/final")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGUSR2"])
def test_a_signal_checkpoints_at_the_current_step_and_resumes_to_identical_weights(
    small_data, small_vision, tmp_path, monkeypatch, sig
):
    """Slurm's preemption (SIGTERM) or time-limit (USR2) signal lands mid-stage, between periodic
    checkpoints (every 10 steps): the job saves at the step it is on and leaves; the rerun resumes there."""
    import os
    import signal

    from vlmscale.training import preemption

    uninterrupted = train.train_cell(cell_cfg(small_data, small_vision, tmp_path / "a"), log=lambda m: None)

    def optimizer_step(trainer, stage, step, stepper, parts):
        if stage.name == "stage2" and step == 12:  # arrives during step 13; seen at its boundary
            os.kill(os.getpid(), getattr(signal, sig))
        return step_original(trainer, stage, step, stepper, parts)

    step_original = train.Trainer.optimizer_step
    monkeypatch.setattr(train.Trainer, "optimizer_step", optimizer_step)
    saved = {s: signal.getsignal(s) for s in preemption.SIGNALS}
    preemption.install()
    try:
        with pytest.raises(SystemExit):
            train.train_cell(cell_cfg(small_data, small_vision, tmp_path / "b"), log=lambda m: None)
    finally:
        for s, handler in saved.items():
            signal.signal(s, handler)
        preemption.reset()
    monkeypatch.setattr(train.Trainer, "optimizer_step", step_original)
    assert torch.load(tmp_path / "b/last.pt", weights_only=False)["step"] == 13  # not the periodic step 10
    messages = []
    resumed = train.train_cell(cell_cfg(small_data, small_vision, tmp_path / "b"), log=messages.append)
    assert any("resuming t/v4 at stage2 step 13" in m for m in messages)
    # Step 13 is inside a logged window: the steps before the signal count in its average as they would have
    assert resumed["history"] == uninterrupted["history"]
    _, a = read_final(tmp_path / "a/final")
    _, b = read_final(tmp_path / "b/final")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_divergence_stops_with_the_setting_to_change(small_data, small_vision, tmp_path):
    cfg = cell_cfg(small_data, small_vision, tmp_path, stage2={"steps": 30, "lr": 1e12})
    with pytest.raises(train.TrainingDiverged, match="lower train.stage2.lr"):
        train.train_cell(cfg, log=lambda m: None)


def test_checkpoint_of_another_spec_is_not_resumed(small_data, small_vision, tmp_path):
    cfg = cell_cfg(small_data, small_vision, tmp_path)
    train.train_cell(cfg, log=lambda m: None)
    other = cell_cfg(small_data, small_vision, tmp_path, seed=1)
    messages = []
    train.train_cell(other, log=messages.append)
    assert not any("resuming" in m for m in messages)


def test_gradient_accumulation_follows_the_one_batch_curve(small_data, small_vision, tmp_path):
    """batch 8 in two micro-batches of 4: each micro-batch's loss weighted by its share of the answer
    tokens, so the step is the one-batch step up to floating-point summation order."""
    whole = train.train_cell(cell_cfg(small_data, small_vision, tmp_path / "whole"), log=lambda m: None)
    split = train.train_cell(cell_cfg(small_data, small_vision, tmp_path / "split", micro_batch_size=4),
                             log=lambda m: None)  # fmt: skip
    assert [h["step"] for h in split["history"]] == [h["step"] for h in whole["history"]]
    for ours, reference in zip(split["history"], whole["history"]):
        assert ours["loss"] == pytest.approx(reference["loss"], rel=1e-3), (ours, reference)
        assert ours["train_accuracy"] == pytest.approx(reference["train_accuracy"], abs=1e-3)


def test_a_micro_batch_that_does_not_divide_the_batch_is_refused(small_data, small_vision, tmp_path):
    with pytest.raises(
        ValueError, match=r"train.stage1.batch_size \(8\) must be a multiple of train.micro_batch_size \(3\)"
    ):
        train.train_cell(cell_cfg(small_data, small_vision, tmp_path, micro_batch_size=3), log=lambda m: None)


def test_a_stage1_checkpoint_holds_the_adapters_and_resumes_to_the_same_result(
    small_data, small_vision, tmp_path, monkeypatch
):
    longer = {"stage1": {"steps": 25, "lr": 1e-3}}
    reference = train.train_cell(cell_cfg(small_data, small_vision, tmp_path / "a", **longer), log=lambda m: None)
    original = train.Trainer.record_progress

    def dies_in_stage1(trainer, stage, step, window):
        original(trainer, stage, step, window)
        if stage.name == "stage1" and step + 1 == 15:  # after the step-10 checkpoint
            raise Killed()

    monkeypatch.setattr(train.Trainer, "record_progress", dies_in_stage1)
    cfg = cell_cfg(small_data, small_vision, tmp_path / "b", **longer)
    with pytest.raises(Killed):
        train.train_cell(cfg, log=lambda m: None)
    saved = torch.load(tmp_path / "b/last.pt", weights_only=False)
    assert saved["model"] and not any(k.startswith("llm.") for k in saved["model"])  # the frozen LLM is not saved
    monkeypatch.setattr(train.Trainer, "record_progress", original)
    resumed = train.train_cell(cfg, log=lambda m: None)
    assert resumed["history"] == reference["history"]
    done = torch.load(tmp_path / "b/last.pt", weights_only=False)
    assert done["stage"] == 2 and done["model"] is None and done["optimizer"] is None  # weights live in final/


def test_final_weights_load_with_from_pretrained_in_the_cells_dtype(tmp_path):
    from transformers import AutoModelForCausalLM

    from vlmscale.model import vlm as model
    from vlmscale.training import checkpoint

    llm = model.build_llm({**LLM, "init_seed": 0}, vocab_size=40)
    vlm = model.VLM(llm, vision_dim=16, visual_tokens=4)
    for dtype, folder in ((torch.bfloat16, tmp_path / "bf16"), (torch.float32, tmp_path / "fp32")):
        final = checkpoint.save_final(folder, vlm, "key", dtype)
        loaded = AutoModelForCausalLM.from_pretrained(final / "llm", dtype=dtype)
        reference = {k: v.to(dtype) for k, v in llm.state_dict().items()}
        assert all(torch.equal(v, reference[k]) for k, v in loaded.state_dict().items())
    from safetensors.torch import load_file

    for name, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):  # bf16 on disk: half the bytes
        assert {v.dtype for v in load_file(tmp_path / name / "final/llm/model.safetensors").values()} == {dtype}
    meta, weights = checkpoint.read_final(tmp_path / "fp32/final")
    again = model.VLM(model.build_llm({**LLM, "init_seed": 1}, vocab_size=40), vision_dim=16, visual_tokens=4)
    checkpoint.load_final(again, weights)
    assert meta == {"run_key": "key", "dtype": "float32"}
    assert all(torch.equal(v, vlm.state_dict()[k]) for k, v in again.state_dict().items())
