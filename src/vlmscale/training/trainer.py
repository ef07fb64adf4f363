"""Two-stage training of one grid cell (LLaVA's recipe, over frozen tower features).

Stage 1 trains the compressor and projector with the LM frozen; stage 2 trains the projector and the LM.
Batches are a pure function of (seed, stage, step) (`vlmscale.data.batching`), and checkpoints (outside
Snakemake's declared outputs) hold everything else, so a killed or requeued job resumes to the same result.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch.nn import functional as F

from vlmscale.data.batching import (
    Batch,
    TrainingData,
    batch_indices,
    check_samples,
    load_stage_samples,
    verified_images,
)
from vlmscale.data.tokenizer import IGNORE
from vlmscale.fileio import atomic_torch_save, code_version, read_json
from vlmscale.identity import config_hash, run_key
from vlmscale.model.cell import build_cell_model
from vlmscale.model.vision import device_for_job, feature_source
from vlmscale.model.vlm import VLM, count_llm_params
from vlmscale.specs import STAGES, StageSettings, TrainJob, TrainSettings
from vlmscale.training import preemption
from vlmscale.training.checkpoint import adapter_state, load_weights, save_final
from vlmscale.training.distributed import World, make_stepper, mean_across, share, world_from_env


class TrainingDiverged(RuntimeError):
    """Loss became NaN or infinite; the last good checkpoint is kept."""


class CellOutOfMemory(RuntimeError):
    """A training step ran out of (GPU or host) memory; the message names the cell and what to change."""


def out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, (torch.OutOfMemoryError, MemoryError)) or "out of memory" in str(exc).lower()


def lr_at(step: int, total: int, peak: float, warmup_frac: float) -> float:
    """Linear warmup then cosine decay to zero (the paper's schedule)."""
    warmup = max(1, math.ceil(warmup_frac * total))
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * 0.5 * (1 + math.cos(math.pi * progress))


def step_loss(model: VLM, batch: Batch, autocast: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean cross-entropy over the answer tokens, and the share of them predicted right; `autocast`: in
    bf16 over fp32 weights (one plain process; DeepSpeed's bf16 mode holds bf16 weights instead)."""
    with torch.autocast(batch.input_ids.device.type, dtype=torch.bfloat16, enabled=autocast):
        logits, targets = model(batch)
    loss = F.cross_entropy(logits.float(), targets)
    correct = (logits.argmax(-1) == targets).float().mean()
    return loss, correct


def trainable_params(model: VLM, stage: str) -> list[torch.nn.Parameter]:
    model.freeze_llm(stage == "stage1")
    return [p for p in model.parameters() if p.requires_grad]


@dataclass
class TrainingState:
    """Where a cell's training stands: what a checkpoint holds besides the weights."""

    stage: int = 0  # index into STAGES; len(STAGES) once both are done
    step: int = 0  # optimizer steps done in that stage
    history: list[dict] = field(default_factory=list)  # one entry per logged window
    seconds: float = 0.0  # training time so far, earlier attempts included
    optimizer: dict | None = None  # the optimizer's state at a mid-stage checkpoint (single process)
    deepspeed_tag: str | None = None  # or, under DeepSpeed, the tag of its checkpoint (every rank's partition)
    truncated: dict[str, int] = field(default_factory=dict)  # per stage: rows cut at the LLM's maximum length
    # (loss, accuracy) of the steps since the last logged window: a checkpoint taken between two logs (on
    # Slurm's signal) keeps them, so the resumed run logs the same averages as an uninterrupted one
    window: list = field(default_factory=list)

    @classmethod
    def from_checkpoint(cls, saved: dict) -> "TrainingState":
        return cls(**{k: saved[k] for k in cls.__dataclass_fields__ if k in saved})

    @property
    def optimizer_checkpoint(self) -> dict:
        return {"optimizer": self.optimizer, "deepspeed_tag": self.deepspeed_tag}

    @property
    def stage_name(self) -> str:
        return STAGES[self.stage] if self.stage < len(STAGES) else "done"


class Checkpointer:
    """A cell's checkpoints (`vlmscale.training.checkpoint` says what each holds); refuses ones written for another
    run key (spec or code)."""

    def __init__(self, folder: str | Path, key: str):
        self.path = Path(folder) / "last.pt"
        self.final = Path(folder) / "final"
        self.deepspeed_dir = Path(folder) / "deepspeed"  # DeepSpeed's checkpoints, one folder per tag
        self.run_key = key

    def load(self) -> tuple[TrainingState, dict | None]:
        """The state to resume from and the saved weights (None: start from scratch)."""
        if not self.path.exists():
            return TrainingState(), None
        try:
            saved = torch.load(self.path, weights_only=False)
        except Exception as exc:  # a torn or corrupt file must not kill the cell: start over, say why
            print(f"checkpoint {self.path} is unreadable ({exc}); training from scratch")
            return TrainingState(), None
        if saved.get("run_key", saved.get("cell_hash")) != self.run_key:
            print(f"checkpoint {self.path} belongs to another spec; training from scratch")
            return TrainingState(), None
        state = TrainingState.from_checkpoint(saved)
        if state.stage == len(STAGES) and not self.has_final():
            print(f"{self.path} says the cell is trained but {self.final} is missing; training from scratch")
            return TrainingState(), None
        return state, saved.get("model")

    def has_final(self) -> bool:
        meta = self.final / "final.json"
        return meta.is_file() and json.loads(meta.read_text()).get("run_key") == self.run_key

    def save(self, state: TrainingState, model: torch.nn.Module, optimizer: dict | None = None) -> None:
        """Mid-stage: stage 1 keeps the adapters it trains (the frozen LLM is rebuilt on resume), stage 2
        every weight; under DeepSpeed its checkpoint (`optimizer["deepspeed_tag"]`) holds the trained
        weights instead. A finished cell keeps the state alone (its weights are in final/)."""
        optimizer = optimizer or {}
        if state.stage >= len(STAGES) or optimizer.get("deepspeed_tag"):
            weights = None
        else:
            weights = model.state_dict() if state.stage > 0 else adapter_state(model)
        saved = {**asdict(state), **{"optimizer": None, "deepspeed_tag": None, **optimizer}}
        atomic_torch_save({**saved, "model": weights, "run_key": self.run_key}, self.path)
        self.prune_deepspeed(keep=saved["deepspeed_tag"])

    def prune_deepspeed(self, keep: str | None) -> None:
        """Remove DeepSpeed checkpoints that last.pt no longer names (after last.pt names the new one)."""
        if self.deepspeed_dir.is_dir():
            for tag in self.deepspeed_dir.iterdir():  # DeepSpeed also leaves its zero_to_fp32.py there
                if tag.is_dir() and tag.name != keep:
                    shutil.rmtree(tag, ignore_errors=True)

    def save_final(self, model: torch.nn.Module, dtype: torch.dtype) -> None:
        save_final(self.final.parent, model, self.run_key, dtype)

    def record_attempt(self, event: str, **fields) -> None:
        """Append to attempts.jsonl: every start (with the step it resumes from) and every finish, so
        a cell's history across kills, requeues and reruns can be audited."""
        line = {
            "event": event,
            "time": round(time.time(), 3),
            "run_key": self.run_key,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
            **fields,
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.parent / "attempts.jsonl", "a") as fh:  # one short O_APPEND write per line
            fh.write(json.dumps(line) + "\n")


def _progress(message: str) -> None:
    print(message, flush=True)  # flushed: `vlmscale status` reads the log while the job runs


@dataclass
class Loop:
    """What every step of a cell's training needs, built once per job."""

    cell: str
    model: VLM
    data: TrainingData
    settings: TrainSettings
    checkpointer: Checkpointer
    world: World
    tracker: object | None
    log: Callable[[str], None]
    started: float  # the wall-clock time the cell's training time counts from (earlier attempts included)


def prepare_loop(job: TrainJob, key: str, tracker, log) -> tuple[Loop, dict[str, int]]:
    """Model, data and checkpointer for a job; returns the loop and the number of samples per stage."""
    torch.set_num_threads(job.threads)
    world = world_from_env()
    if not world.is_main:  # one voice: rank 0 logs, checkpoints and writes; the others only compute
        tracker, log = None, (lambda message: None)
    manifest = read_json(Path(job.data_root) / "manifest.json")
    device = device_for_job()
    features, vision = feature_source(job.vision, manifest.get("image_root", job.data_root), device)
    model, tokenizer = build_cell_model(job.spec, manifest["vocabulary"], vision["hidden_size"], vision["patch_grid"])
    model.to(device)
    samples = load_stage_samples(manifest, job.data_root)
    for stage, items in samples.items():
        check_samples(items, tokenizer, features, f"{job.cell} {stage}", verified_images(manifest))
    max_length = job.settings.max_length or getattr(model.llm.config, "max_position_embeddings", None)
    aspects = {stage.name: stage.image_aspect_ratio for stage in job.settings.stages}
    data = TrainingData(samples, tokenizer, job.spec["visual_tokens"], features, device, max_length, aspects=aspects)
    loop = Loop(
        job.cell,
        model,
        data,
        job.settings.for_data({stage: len(items) for stage, items in samples.items()}),
        Checkpointer(job.checkpoint_dir, key),
        world,
        tracker,
        log,
        started=time.time(),
    )
    return loop, {stage: len(items) for stage, items in samples.items()}


def train_cell(job: TrainJob, tracker=None, log=_progress) -> dict:
    key = run_key(job.spec)
    if job.executor == "slurm":  # Slurm's time-limit and preemption signals checkpoint at the current step
        preemption.install()
    loop, n_train = prepare_loop(job, key, tracker, log)
    state, weights = loop.checkpointer.load()
    trained_before = state.stage == len(STAGES)  # its final/ is there: nothing to train or save
    if weights is not None:
        load_weights(loop.model, weights)
        loop.model.to(loop.data.device)
    if weights is not None or state.deepspeed_tag:  # DeepSpeed's checkpoint is loaded by the stage's engine
        loop.log(f"resuming {job.cell} at {state.stage_name} step {state.step}")
    start_at = loop.settings.global_step(state.stage, state.step)
    if loop.world.is_main:
        loop.checkpointer.record_attempt("start", step=start_at, world_size=loop.world.size)
    loop.started = time.time() - state.seconds
    for stage in loop.settings.stages[state.stage :]:
        run_stage(loop, stage, state)
        state.stage, state.step = stage.index + 1, 0
    state.seconds = time.time() - loop.started
    total = loop.settings.total_steps
    if loop.world.is_main:
        if not trained_before:
            loop.checkpointer.save_final(loop.model, torch.bfloat16 if loop.settings.bf16 else torch.float32)
        loop.checkpointer.save(state, loop.model)
        loop.checkpointer.record_attempt("finished", step=total, steps_run=total - start_at)
    return {**summarise(job.spec, key, loop, state, n_train), "world_size": loop.world.size}


def run_stage(loop: Loop, stage: StageSettings, state: TrainingState) -> None:
    params = trainable_params(loop.model, stage.name)
    stepper = make_stepper(loop.model, params, stage, loop.settings.weight_decay, loop.world, loop.settings.bf16)
    if state.step > 0:
        stepper.restore(state.optimizer_checkpoint, loop.checkpointer.deepspeed_dir)
    loop.model.train()
    accumulation = stage.accumulation(loop.world.size)
    if state.step == 0:
        state.window = []
    for step in range(state.step, stage.steps):
        for group in stepper.optimizer.param_groups:
            group["lr"] = lr_at(step, stage.steps, stage.lr, loop.settings.warmup_frac)
        indices = batch_indices(
            len(loop.data.samples[stage.name]), stage.batch_size, loop.settings.seed, stage.index + 1, step
        )
        loss, acc = optimizer_step(loop, stage, step, stepper, share(indices, loop.world).chunk(accumulation))
        cut = torch.tensor(float(loop.data.take_truncated()), device=loss.device)
        stats = torch.cat([torch.stack([loss, acc, cut]), preemption.flags(loss.device)])  # one all-reduce
        loss, acc, cut, *signalled = mean_across(stats, loop.world)
        state.truncated[stage.name] = state.truncated.get(stage.name, 0) + round(cut.item() * loop.world.size)
        state.window.append((loss.item(), acc.item()))
        if (step + 1) % max(1, loop.settings.log_every) == 0 or step + 1 == stage.steps:
            record_progress(loop, state, stage, step, state.window)
            state.window = []
        stop = any(flag > 0 for flag in signalled) and step + 1 < stage.steps  # Slurm asked; every rank agrees
        if stop or ((step + 1) % loop.settings.checkpoint_every == 0 and step + 1 < stage.steps):
            save_checkpoint(loop, state, stage, step + 1, stepper)
        if stop:
            loop.checkpointer.record_attempt("signalled", step=loop.settings.global_step(stage.index, step + 1))
            preemption.leave(torch.stack(signalled), loop.world.rank)
    stepper.release()
    state.optimizer = state.deepspeed_tag = None


def save_checkpoint(loop: Loop, state: TrainingState, stage: StageSettings, step: int, stepper) -> None:
    """Mid-stage checkpoint after `step` steps: every rank's DeepSpeed partition, then rank 0's last.pt."""
    state.step, state.seconds = step, time.time() - loop.started
    saved = stepper.save(loop.checkpointer.deepspeed_dir, f"{stage.name}-step{step}")  # every rank
    if loop.world.is_main:
        loop.checkpointer.save(state, loop.model, saved)


def optimizer_step(loop: Loop, stage: StageSettings, step: int, stepper, parts) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step over this process's share, in micro-batches (`parts`, index chunks). Each
    micro-batch's loss is weighted by its share of the answer tokens, so the accumulated gradient, and
    the loss and accuracy returned, are those of the whole share at once."""
    batches = [loop.data.batch(stage.name, part) for part in parts]
    if len(batches) == 1:  # no accumulation: exactly the one-batch step
        loss, acc = checked_loss(loop, stage, step, stepper, batches[0])
        stepper.accumulate(loss)
        stepper.step()
        return loss.detach(), acc.detach()
    tokens = [int((b.labels[:, 1:] != IGNORE).sum()) for b in batches]
    total_loss = total_acc = torch.zeros((), device=loop.data.device)
    for batch, n in zip(batches, tokens):
        weight = n / sum(tokens)
        loss, acc = checked_loss(loop, stage, step, stepper, batch)
        stepper.accumulate(loss * weight)
        total_loss = total_loss + loss.detach() * weight
        total_acc = total_acc + acc.detach() * weight
    stepper.step()
    return total_loss, total_acc


def checked_loss(loop: Loop, stage: StageSettings, step: int, stepper, batch: Batch):
    """The step's loss; out of memory and a non-finite loss stop the cell with what to change."""
    try:
        loss, acc = step_loss(stepper.model, batch, loop.settings.bf16 and not stepper.casts_weights)
    except (RuntimeError, MemoryError) as exc:
        if not out_of_memory(exc):
            raise
        raise CellOutOfMemory(
            f"{stage.name} step {step}: out of memory with train.batch_size {stage.batch_size}; lower it for "
            f"this LLM (llms[].train.batch_size), set a smaller train.micro_batch_size (gradient accumulation "
            f"keeps the batch), or give the job more memory (launch resources). "
            f"Last checkpoint kept at {loop.checkpointer.path}"
        ) from exc
    if not torch.isfinite(loss):
        raise TrainingDiverged(
            f"{stage.name} step {step}: loss is {loss.item()}; lower train.{stage.name}.lr (now {stage.lr}). "
            f"Last good checkpoint kept at {loop.checkpointer.path}"
        )
    return loss, acc


def record_progress(loop: Loop, state: TrainingState, stage: StageSettings, step: int, window) -> None:
    loss = sum(w[0] for w in window) / len(window)
    acc = sum(w[1] for w in window) / len(window)
    state.history.append({"stage": stage.name, "step": step + 1, "loss": loss, "train_accuracy": acc})
    loop.log(f"{stage.name} step {step + 1}/{stage.steps} loss {loss:.4f} train_acc {acc:.3f}")
    if loop.tracker is not None:
        metrics = {f"{stage.name}/loss": loss, f"{stage.name}/train_accuracy": acc}
        loop.tracker.log_metrics(metrics, step=loop.settings.global_step(stage.index, step + 1))


def summarise(spec: dict, key: str, loop: Loop, state: TrainingState, n_train: dict[str, int]) -> dict:
    last = state.history[-1] if state.history else {}
    return {
        "cell": spec["cell"],
        "llm": spec["llm"]["name"],
        "visual_tokens": spec["visual_tokens"],
        "seed": spec["train"]["seed"],
        "config_hash": config_hash(spec),
        "run_key": key,
        "code_version": code_version(),
        "llm_params": count_llm_params(loop.model.llm),
        "n_train_samples": max(n_train.values()),
        "n_train_samples_by_stage": n_train,
        "truncated_rows_by_stage": state.truncated,  # rows (conversations) cut at the LLM's maximum length
        "final_loss": last.get("loss"),
        "final_train_accuracy": last.get("train_accuracy"),
        "train_seconds": round(state.seconds, 2),
        "history": state.history,
        "checkpoint": str(loop.checkpointer.final),
    }
