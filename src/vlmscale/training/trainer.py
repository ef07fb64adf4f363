"""Two-stage training of one grid cell (LLaVA's recipe, over frozen tower features).

Stage 1 trains the compressor and projector with the LM frozen; stage 2 trains the projector and the LM.
Batches are a pure function of (seed, stage, step) (`vlmscale.data.batching`), and checkpoints (outside
Snakemake's declared outputs) hold everything else, so a killed or requeued job resumes to the same result.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

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
from vlmscale.fileio import code_version, read_json
from vlmscale.identity import config_hash, run_key
from vlmscale.model.cell import build_cell_model
from vlmscale.model.vision import device_for_job, feature_source
from vlmscale.model.vlm import VLM, count_llm_params
from vlmscale.specs import STAGES, StageSettings, TrainJob, TrainSettings
from vlmscale.training import preemption
from vlmscale.training.checkpoint import Checkpointer, TrainingState, load_weights
from vlmscale.training.distributed import (
    Stepper,
    World,
    barrier,
    make_stepper,
    mean_across,
    share,
    world_from_env,
)


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


def _progress(message: str) -> None:
    print(message, flush=True)  # flushed: `vlmscale status` reads the log while the job runs


class MetricsSink(Protocol):
    """Where per-step metrics go besides the log (vlmscale.orchestration.track.CellTracker on rank 0)."""

    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...


class Trainer:
    """One cell's two-stage training: model, data, settings, checkpoints and where it stands, built once
    per job (`for_job`); `run` trains what the checkpoint has not, one stage and one step at a time."""

    def __init__(
        self,
        *,
        cell: str,
        model: VLM,
        data: TrainingData,
        settings: TrainSettings,
        checkpointer: Checkpointer,
        world: World,
        tracker: MetricsSink | None,
        log: Callable[[str], None],
    ):
        self.cell, self.model, self.data, self.settings = cell, model, data, settings
        self.checkpointer, self.world, self.tracker, self.log = checkpointer, world, tracker, log
        self.state = TrainingState()
        self.started = time.time()  # the wall-clock time training time counts from (earlier attempts included)

    @classmethod
    def for_job(cls, job: TrainJob, key: str, tracker: MetricsSink | None, log) -> "Trainer":
        """Model, data and checkpointer for a job (rank 0 alone logs, tracks and writes)."""
        torch.set_num_threads(job.threads)
        world = world_from_env()
        if not world.is_main:  # one voice: rank 0 logs, checkpoints and writes; the others only compute
            tracker, log = None, (lambda message: None)
        manifest = read_json(Path(job.data_root) / "manifest.json")
        device = device_for_job()
        features, vision = feature_source(job.vision, manifest.get("image_root", job.data_root), device)
        model, tokenizer = build_cell_model(
            job.spec, manifest["vocabulary"], vision["hidden_size"], vision["patch_grid"]
        )
        model.to(device)
        samples = load_stage_samples(manifest, job.data_root)
        for stage, items in samples.items():
            check_samples(items, tokenizer, features, f"{job.cell} {stage}", verified_images(manifest))
        max_length = job.settings.max_length or getattr(model.llm.config, "max_position_embeddings", None)
        aspects = {stage.name: stage.image_aspect_ratio for stage in job.settings.stages}
        data = TrainingData(
            samples, tokenizer, job.spec["visual_tokens"], features, device, max_length, aspects=aspects
        )
        settings = job.settings.for_data({stage: len(items) for stage, items in samples.items()})
        checkpointer = Checkpointer(job.checkpoint_dir, key)
        return cls(cell=job.cell, model=model, data=data, settings=settings, checkpointer=checkpointer,
                   world=world, tracker=tracker, log=log)  # fmt: skip

    @property
    def n_train(self) -> dict[str, int]:
        return {stage: len(items) for stage, items in self.data.samples.items()}

    def resume(self) -> bool:
        """Load the last checkpoint, if any, into the model and state; True when the cell was already trained."""
        state, weights = self.checkpointer.load()
        if weights is not None:
            load_weights(self.model, weights)
            self.model.to(self.data.device)
        if weights is not None or state.deepspeed_tag:  # DeepSpeed's checkpoint is loaded by the stage's engine
            self.log(f"resuming {self.cell} at {state.stage_name} step {state.step}")
        self.state = state
        self.started = time.time() - state.seconds
        return state.stage == len(STAGES)  # its final/ is there: nothing to train or save

    def run(self) -> None:
        """Train the stages the checkpoint has not finished, then save final/ (rank 0)."""
        trained_before = self.resume()
        start_at = self.settings.global_step(self.state.stage, self.state.step)
        if self.world.is_main:
            self.checkpointer.record_attempt("start", step=start_at, world_size=self.world.size)
        for stage in self.settings.stages[self.state.stage :]:
            self.run_stage(stage)
            self.state.stage, self.state.step = stage.index + 1, 0
        self.state.seconds = time.time() - self.started
        total = self.settings.total_steps
        if self.world.is_main:
            if not trained_before:
                self.checkpointer.save_final(self.model, torch.bfloat16 if self.settings.bf16 else torch.float32)
            self.checkpointer.save(self.state, self.model)
            self.checkpointer.record_attempt("finished", step=total, steps_run=total - start_at)

    def run_stage(self, stage: StageSettings) -> None:
        params = trainable_params(self.model, stage.name)
        stepper = make_stepper(self.model, params, stage, self.settings.weight_decay, self.world, self.settings.bf16)
        if self.state.step > 0:
            stepper.restore(self.state.optimizer_checkpoint, self.checkpointer.deepspeed_dir)
        self.model.train()
        if self.state.step == 0:
            self.state.window = []
        for step in range(self.state.step, stage.steps):
            loss, acc, signalled = self.train_step(stage, step, stepper)
            self.state.window.append((loss, acc))
            if (step + 1) % max(1, self.settings.log_every) == 0 or step + 1 == stage.steps:
                self.record_progress(stage, step, self.state.window)
                self.state.window = []
            stop = any(flag > 0 for flag in signalled) and step + 1 < stage.steps  # Slurm asked; every rank agrees
            if stop or ((step + 1) % self.settings.checkpoint_every == 0 and step + 1 < stage.steps):
                self.save_checkpoint(stage, step + 1, stepper)
            if stop:
                if self.world.is_main:
                    self.checkpointer.record_attempt("signalled", step=self.settings.global_step(stage.index, step + 1))
                barrier(self.world)  # no rank leaves before rank 0 has written last.pt
                preemption.leave(torch.stack(signalled), self.world.rank)
        stepper.release()
        self.state.optimizer = self.state.deepspeed_tag = None

    def train_step(self, stage: StageSettings, step: int, stepper: Stepper) -> tuple[float, float, list]:
        """One optimizer step of the whole batch: (loss, accuracy, Slurm's signal flags), agreed across ranks."""
        for group in stepper.optimizer.param_groups:
            group["lr"] = lr_at(step, stage.steps, stage.lr, self.settings.warmup_frac)
        indices = batch_indices(
            len(self.data.samples[stage.name]), stage.batch_size, self.settings.seed, stage.index + 1, step
        )
        parts = share(indices, self.world).chunk(stage.accumulation(self.world.size))
        loss, acc = self.optimizer_step(stage, step, stepper, parts)
        cut = torch.tensor(float(self.data.take_truncated()), device=loss.device)
        stats = torch.cat([torch.stack([loss, acc, cut]), preemption.flags(loss.device)])  # one all-reduce
        loss, acc, cut, *signalled = mean_across(stats, self.world)
        truncated = self.state.truncated
        truncated[stage.name] = truncated.get(stage.name, 0) + round(cut.item() * self.world.size)
        return loss.item(), acc.item(), signalled

    def optimizer_step(
        self, stage: StageSettings, step: int, stepper: Stepper, parts
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step over this process's share, in micro-batches (`parts`, index chunks). Each
        micro-batch's loss is weighted by its share of the answer tokens, so the accumulated gradient, and
        the loss and accuracy returned, are those of the whole share at once."""
        batches = [self.data.batch(stage.name, part) for part in parts]
        if len(batches) == 1:  # no accumulation: exactly the one-batch step
            loss, acc = self.checked_loss(stage, step, stepper, batches[0])
            stepper.accumulate(loss)
            stepper.step()
            return loss.detach(), acc.detach()
        tokens = [int((b.labels[:, 1:] != IGNORE).sum()) for b in batches]
        total_loss = total_acc = torch.zeros((), device=self.data.device)
        for batch, n in zip(batches, tokens):
            weight = n / sum(tokens)
            loss, acc = self.checked_loss(stage, step, stepper, batch)
            stepper.accumulate(loss * weight)
            total_loss = total_loss + loss.detach() * weight
            total_acc = total_acc + acc.detach() * weight
        stepper.step()
        return total_loss, total_acc

    def checked_loss(self, stage: StageSettings, step: int, stepper: Stepper, batch: Batch):
        """The step's loss; out of memory and a non-finite loss stop the cell with what to change."""
        try:
            loss, acc = step_loss(stepper.model, batch, self.settings.bf16 and not stepper.casts_weights)
        except (RuntimeError, MemoryError) as exc:
            if not out_of_memory(exc):
                raise
            raise CellOutOfMemory(
                f"{stage.name} step {step}: out of memory with train.batch_size {stage.batch_size}; lower it for "
                f"this LLM (llms[].train.batch_size), set a smaller train.micro_batch_size (gradient accumulation "
                f"keeps the batch), or give the job more memory (launch resources). "
                f"Last checkpoint kept at {self.checkpointer.path}"
            ) from exc
        if not torch.isfinite(loss):
            raise TrainingDiverged(
                f"{stage.name} step {step}: loss is {loss.item()}; lower train.{stage.name}.lr (now {stage.lr}). "
                f"Last good checkpoint kept at {self.checkpointer.path}"
            )
        return loss, acc

    def save_checkpoint(self, stage: StageSettings, step: int, stepper: Stepper) -> None:
        """Mid-stage checkpoint after `step` steps: every rank's DeepSpeed partition, then rank 0's last.pt."""
        self.state.step, self.state.seconds = step, time.time() - self.started
        saved = stepper.save(self.checkpointer.deepspeed_dir, f"{stage.name}-step{step}")  # every rank
        if self.world.is_main:
            self.checkpointer.save(self.state, self.model, saved)

    def record_progress(self, stage: StageSettings, step: int, window) -> None:
        loss = sum(w[0] for w in window) / len(window)
        acc = sum(w[1] for w in window) / len(window)
        self.state.history.append({"stage": stage.name, "step": step + 1, "loss": loss, "train_accuracy": acc})
        self.log(f"{stage.name} step {step + 1}/{stage.steps} loss {loss:.4f} train_acc {acc:.3f}")
        if self.tracker is not None:
            metrics = {f"{stage.name}/loss": loss, f"{stage.name}/train_accuracy": acc}
            self.tracker.log_metrics(metrics, step=self.settings.global_step(stage.index, step + 1))


def train_cell(job: TrainJob, tracker: MetricsSink | None = None, log=_progress) -> dict:
    """Train one cell to final/ (resuming from its checkpoint) and return what train.json records."""
    key = run_key(job.spec)
    if job.executor == "slurm":  # Slurm's time-limit and preemption signals checkpoint at the current step
        preemption.install()
    trainer = Trainer.for_job(job, key, tracker, log)
    trainer.run()
    return {**summarise(job.spec, key, trainer), "world_size": trainer.world.size}


def summarise(spec: dict, key: str, trainer: Trainer) -> dict:
    state, n_train = trainer.state, trainer.n_train
    last = state.history[-1] if state.history else {}
    return {
        "cell": spec["cell"],
        "llm": spec["llm"]["name"],
        "visual_tokens": spec["visual_tokens"],
        "seed": spec["train"]["seed"],
        "compressor": spec["compressor"],
        "config_hash": config_hash(spec),
        "run_key": key,
        "code_version": code_version(),
        "llm_params": count_llm_params(trainer.model.llm),
        "n_train_samples": max(n_train.values()),
        "n_train_samples_by_stage": n_train,
        "truncated_rows_by_stage": state.truncated,  # rows (conversations) cut at the LLM's maximum length
        "final_loss": last.get("loss"),
        "final_train_accuracy": last.get("train_accuracy"),
        "train_seconds": round(state.seconds, 2),
        "history": state.history,
        "checkpoint": str(trainer.checkpointer.final),
    }
