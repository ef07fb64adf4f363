"""Two-stage training of one grid cell (LLaVA's recipe, over frozen tower features).

Stage 1 trains the compressor and projector with the LM frozen; stage 2 trains the projector and the LM.
Batches are a pure function of (seed, stage, step), and checkpoints (outside Snakemake's declared
outputs) hold everything else, so a killed or requeued job resumes to the same result.
"""
from __future__ import annotations

import dataclasses
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.nn import functional as F

from vlmscale.data import Sample, load_llava_conversations
from vlmscale.distributed import World, make_stepper, mean_across, share, world_from_env
from vlmscale.fileio import atomic_torch_save, code_version, read_json, spec_hash, write_json
from vlmscale.model import VLM, build_llm, count_llm_params
from vlmscale.tokenizer import IGNORE, IMAGE, WordTokenizer, build_tokenizer, pad_right
from vlmscale.vision import device_for_job, feature_source

STAGES = ("stage1", "stage2")
TRAINING_CODE = ("train.py", "model.py", "tokenizer.py", "data.py", "distributed.py", "vision.py")


def code_fingerprint() -> str:
    """Hash of the source that decides trained weights: a code change must not resume an old checkpoint."""
    import hashlib

    h = hashlib.sha256()
    for name in TRAINING_CODE:
        h.update((Path(__file__).parent / name).read_bytes())
    return h.hexdigest()[:12]


def cell_key(spec: dict) -> str:
    """Identity of a trained cell: its resolved spec and the training code. Keys checkpoints and MLflow runs."""
    return spec_hash({"spec": spec, "code": code_fingerprint()})


class TrainingDiverged(RuntimeError):
    """Loss became NaN or infinite; the last good checkpoint is kept."""


class CellOutOfMemory(RuntimeError):
    """A training step ran out of (GPU or host) memory; the message names the cell and what to change."""


def out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, (torch.OutOfMemoryError, MemoryError)) or "out of memory" in str(exc).lower()


@dataclass
class Batch:
    """Sequences laid out as tokenizer.py describes: right-padded ids with V IMAGE placeholders, labels on
    the answers only, each row's prompt length (what generation starts from), the question alone (what
    QueCC conditions on) and the rows' patch features."""

    input_ids: torch.Tensor
    labels: torch.Tensor
    prompt_lengths: torch.Tensor
    question_ids: torch.Tensor
    question_lengths: torch.Tensor
    features: torch.Tensor

    def to(self, device) -> "Batch":
        return Batch(*(t.to(device) for t in (self.input_ids, self.labels, self.prompt_lengths,
                                               self.question_ids, self.question_lengths, self.features)))


def make_batch(samples: list[Sample], tokenizer, visual_tokens: int, features) -> Batch:
    """Tokenise a few samples (tokenising per batch keeps a 665K-sample set out of memory) and fetch
    their features from the feature source."""
    rows, labels, prompt_lengths = [], [], []
    for s in samples:
        prefix, prompt = tokenizer.layout(s.question)
        head = prefix + [IMAGE] * visual_tokens + prompt
        answer = tokenizer.answer_ids(s.answer)
        rows.append(head + answer)
        labels.append([IGNORE] * len(head) + answer)
        prompt_lengths.append(len(head))
    ids, _ = pad_right(rows, tokenizer.pad_id)
    label_ids, _ = pad_right(labels, IGNORE)
    question_ids, question_lengths = pad_right([tokenizer.question_ids(s.question) for s in samples], tokenizer.pad_id)
    return Batch(ids, label_ids, torch.tensor(prompt_lengths), question_ids, question_lengths,
                 features([s.image for s in samples]))


def check_samples(samples: list[Sample], tokenizer, features, what: str) -> None:
    """Before the first step: every image has features (or exists) and every answer can be encoded."""
    missing = features.missing(s.image for s in samples)
    if missing:
        raise FileNotFoundError(f"{what}: {len(missing)} images have no tower features (first: {missing[0]})")
    if isinstance(tokenizer, WordTokenizer):
        for s in samples:
            tokenizer.answer_ids(s.answer)


def train_sources(manifest: dict, data_root: str | Path) -> dict[str, tuple[Path, str]]:
    """Per training stage: (conversation JSON, the folder its image paths are relative to).
    The synthetic set has one JSON for both stages; real data may give each stage its own (558K, 665K)."""
    root = Path(data_root)
    image_root = manifest.get("image_root", str(root))
    train = manifest["train"]
    if isinstance(train, str):
        return {stage: (root / train, image_root) for stage in STAGES}
    return {stage: (Path(train[stage]["json"]), train[stage]["image_folder"]) for stage in STAGES}


def load_stage_samples(manifest: dict, data_root) -> dict[str, list[Sample]]:
    """Samples per stage with absolute image paths; a JSON shared by both stages is read once."""
    sources = train_sources(manifest, data_root)
    loaded = {key: with_image_root(load_llava_conversations(key[0]), key[1]) for key in set(sources.values())}
    return {stage: loaded[key] for stage, key in sources.items()}


def with_image_root(samples: list[Sample], image_root: str) -> list[Sample]:
    return [dataclasses.replace(s, image=os.path.join(image_root, s.image)) for s in samples]


def build_cell_model(spec: dict, vocabulary: list[str], vision_dim: int, patch_grid: int | None = None):
    tokenizer = build_tokenizer(spec["llm"], vocabulary)
    # A random-init LM starts from the cell's training seed (seeds differ in initialisation and batch order).
    llm = build_llm({"init_seed": spec.get("train", {}).get("seed", 0), **spec["llm"]}, len(tokenizer))
    if spec.get("train", {}).get("gradient_checkpointing"):
        llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return VLM(llm, vision_dim, spec["visual_tokens"], spec["compressor"], patch_grid), tokenizer


def lr_at(step: int, total: int, peak: float, warmup_frac: float) -> float:
    """Linear warmup then cosine decay to zero (the paper's schedule)."""
    warmup = max(1, math.ceil(warmup_frac * total))
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * 0.5 * (1 + math.cos(math.pi * progress))


def batch_indices(n: int, batch_size: int, seed: int, stage: int, step: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed * 1_000_003 + stage * 100_003 + step)
    return torch.randint(n, (batch_size,), generator=gen)


def step_loss(model: VLM, batch: Batch, bf16: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean cross-entropy over the answer tokens, and the share of them predicted right."""
    with torch.autocast(batch.input_ids.device.type, dtype=torch.bfloat16, enabled=bf16):
        logits, targets = model(batch)
    loss = F.cross_entropy(logits.float(), targets)
    correct = (logits.argmax(-1) == targets).float().mean()
    return loss, correct


def trainable_params(model: VLM, stage: str) -> list[torch.nn.Parameter]:
    model.freeze_llm(stage == "stage1")
    return [p for p in model.parameters() if p.requires_grad]


class Checkpointer:
    """Last-step checkpoint of one cell; refuses one written for a different spec."""

    def __init__(self, folder: str | Path, cell_hash: str):
        self.path = Path(folder) / "last.pt"
        self.final = Path(folder) / "final.pt"
        self.cell_hash = cell_hash

    def load(self) -> dict | None:
        if not self.path.exists():
            return None
        try:
            state = torch.load(self.path, weights_only=False)
        except Exception as exc:  # a torn or corrupt file must not kill the cell: start over, say why
            print(f"checkpoint {self.path} is unreadable ({exc}); training from scratch")
            return None
        if state.get("cell_hash") != self.cell_hash:
            print(f"checkpoint {self.path} belongs to another spec; training from scratch")
            return None
        return state

    def save(self, state: dict) -> None:
        atomic_torch_save({**state, "cell_hash": self.cell_hash}, self.path)

    def record_attempt(self, event: str, cell_hash: str, **fields) -> None:
        """Append to attempts.jsonl: every start (with the step it resumes from) and every finish, so
        a cell's history across kills, requeues and reruns can be audited."""
        import json
        import os
        import socket

        line = {"event": event, "time": round(time.time(), 3), "run_key": cell_hash, "host": socket.gethostname(),
                "pid": os.getpid(), "slurm_job_id": os.environ.get("SLURM_JOB_ID"), **fields}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.parent / "attempts.jsonl", "a") as fh:  # one short O_APPEND write per line
            fh.write(json.dumps(line) + "\n")


def _progress(message: str) -> None:
    print(message, flush=True)  # flushed: `vlmscale status` reads the log while the job runs


def train_cell(cfg: dict, tracker=None, log=_progress) -> dict:
    spec = cfg["spec"]
    tspec = spec["train"]
    cell_hash = cell_key(spec)
    torch.set_num_threads(cfg.get("threads", 1))
    world = world_from_env()
    if not world.is_main:  # one voice: rank 0 logs, checkpoints and writes; the others only compute
        tracker, log = None, (lambda message: None)
    manifest = read_json(Path(cfg["data_root"]) / "manifest.json")
    device = device_for_job()
    features, vision = feature_source(cfg["vision"], manifest.get("image_root", cfg["data_root"]), device)
    model, tokenizer = build_cell_model(spec, manifest["vocabulary"], vision["hidden_size"], vision["patch_grid"])
    model.to(device)
    data = load_stage_samples(manifest, cfg["data_root"])
    for stage, samples in data.items():
        check_samples(samples, tokenizer, features, f"{spec['cell']} {stage}")
    source = TrainingData(data, tokenizer, spec["visual_tokens"], features, device)
    ckpt = Checkpointer(cfg["checkpoint_dir"], cell_hash)
    state = ckpt.load() or {"stage": 0, "step": 0, "history": [], "seconds": 0.0}
    if "model" in state:
        model.load_state_dict(state["model"])
        model.to(device)
        log(f"resuming {spec['cell']} at {stage_name(state['stage'])} step {state['step']}")
    start_at = global_step(tspec, state["stage"], state["step"])
    if world.is_main:
        ckpt.record_attempt("start", cell_hash, step=start_at, world_size=world.size)
    started = time.time() - state["seconds"]
    for stage_idx in range(state["stage"], len(STAGES)):
        run_stage(model, source, tspec, stage_idx, state, ckpt, started, tracker, log, world)
        state.update(stage=stage_idx + 1, step=0)
    state["seconds"] = time.time() - started
    total = global_step(tspec, len(STAGES), 0)
    if world.is_main:
        atomic_torch_save({"model": model.state_dict(), "cell_hash": cell_hash}, ckpt.final)
        ckpt.save({**state, "model": model.state_dict()})
        ckpt.record_attempt("finished", cell_hash, step=total, steps_run=total - start_at)
    n_train = {stage: len(samples) for stage, samples in data.items()}
    return {**summarise(spec, cell_hash, model, state, ckpt, n_train), "world_size": world.size}


def stage_name(stage_idx: int) -> str:
    return STAGES[stage_idx] if stage_idx < len(STAGES) else "done"


def global_step(tspec: dict, stage_idx: int, step: int) -> int:
    """Optimizer steps before (stage_idx, step), counting both stages."""
    return sum(tspec[s]["steps"] for s in STAGES[:stage_idx]) + step


@dataclass
class TrainingData:
    """Each stage's samples and how a batch of them becomes tensors on the job's device."""

    samples: dict[str, list[Sample]]
    tokenizer: object
    visual_tokens: int
    features: object
    device: torch.device

    def batch(self, stage: str, indices: torch.Tensor) -> Batch:
        rows = [self.samples[stage][i] for i in indices.tolist()]
        return make_batch(rows, self.tokenizer, self.visual_tokens, self.features).to(self.device)


def run_stage(model, data: TrainingData, tspec, stage_idx, state, ckpt, started, tracker, log, world=World()) -> None:
    stage = STAGES[stage_idx]
    total, peak = tspec[stage]["steps"], tspec[stage]["lr"]
    batch_size = tspec[stage].get("batch_size", tspec["batch_size"])
    stepper = make_stepper(model, trainable_params(model, stage), tspec, stage, world)
    if state.get("optimizer") and state["step"] > 0:
        stepper.load_optimizer_state(state["optimizer"])
    model.train()
    every = max(1, tspec.get("log_every", 50))
    window: list[tuple[float, float]] = []
    for step in range(state["step"], total):
        for group in stepper.optimizer.param_groups:
            group["lr"] = lr_at(step, total, peak, tspec["warmup_frac"])
        indices = batch_indices(len(data.samples[stage]), batch_size, tspec["seed"], stage_idx + 1, step)
        batch = data.batch(stage, share(indices, world))
        try:
            loss, acc = step_loss(stepper.model, batch, tspec.get("bf16", False))
        except (RuntimeError, MemoryError) as exc:
            if not out_of_memory(exc):
                raise
            raise CellOutOfMemory(
                f"{stage} step {step}: out of memory with train.batch_size {batch_size}; lower it for "
                f"this LLM (llms[].train.batch_size) or give the job more memory (launch resources). "
                f"Last checkpoint kept at {ckpt.path}"
            ) from exc
        if not torch.isfinite(loss):
            raise TrainingDiverged(
                f"{stage} step {step}: loss is {loss.item()}; lower train.{stage}.lr (now {peak}). "
                f"Last good checkpoint kept at {ckpt.path}"
            )
        stepper.step(loss)
        loss, acc = mean_across(torch.stack([loss.detach(), acc.detach()]), world)
        window.append((loss.item(), acc.item()))
        if (step + 1) % every == 0 or step + 1 == total:
            offset = 0 if stage_idx == 0 else tspec[STAGES[0]]["steps"]
            record_progress(state, stage, step, total, offset, window, tracker, log)
            window = []
        if (step + 1) % tspec.get("checkpoint_every", 500) == 0 and step + 1 < total and world.is_main:
            state.update(step=step + 1, seconds=time.time() - started)
            ckpt.save({**state, "model": model.state_dict(), "optimizer": stepper.optimizer_state()})
    state.pop("optimizer", None)


def record_progress(state, stage, step, total, offset, window, tracker, log) -> None:
    loss = sum(w[0] for w in window) / len(window)
    acc = sum(w[1] for w in window) / len(window)
    state["history"].append({"stage": stage, "step": step + 1, "loss": loss, "train_accuracy": acc})
    log(f"{stage} step {step + 1}/{total} loss {loss:.4f} train_acc {acc:.3f}")
    if tracker is not None:
        tracker.log_metrics({f"{stage}/loss": loss, f"{stage}/train_accuracy": acc}, step=offset + step + 1)


def summarise(spec, cell_hash, model, state, ckpt, n_train) -> dict:
    last = state["history"][-1] if state["history"] else {}
    return {
        "cell": spec["cell"],
        "llm": spec["llm"]["name"],
        "visual_tokens": spec["visual_tokens"],
        "seed": spec["train"]["seed"],
        "config_hash": spec_hash(spec),
        "run_key": cell_hash,
        "code_version": code_version(),
        "llm_params": count_llm_params(model.llm),
        "n_train_samples": max(n_train.values()),
        "n_train_samples_by_stage": n_train,
        "final_loss": last.get("loss"),
        "final_train_accuracy": last.get("train_accuracy"),
        "train_seconds": round(state["seconds"], 2),
        "history": state["history"],
        "checkpoint": str(ckpt.final),
    }


def main(cfg: dict) -> dict:
    """Stage entry point (pickled by submitit): train one cell, log it to MLflow, write train.json."""
    from vlmscale.track import CellTracker

    if not world_from_env().is_main:
        return train_cell(cfg)
    with CellTracker.for_cell(cfg) as tracker:
        result = train_cell(cfg, tracker=tracker)
        result["mlflow_run_id"] = tracker.run_id
        from vlmscale.launch import current_job

        result["job"] = current_job()  # where this cell's job log is (empty when run in-process)
        tracker.log_metrics({"train_seconds": result["train_seconds"], "final_loss": result["final_loss"] or 0.0})
    write_json(cfg["out"], result)
    return result
