"""The typed input of each stage's job, built once by the CLI from a rule's `--spec` and paths.

A job is a frozen dataclass that submitit pickles and hands to the stage's `main(job) -> dict`. Its `spec`
is the canonical dict Snakemake compares in `params:` (and that the cell's hashes are computed from);
everything a stage reads from it goes through the properties here, so the defaults of the training
settings live in one place, `TrainSettings`. (The schema cannot hold them: one `train` definition serves
both the top-level defaults and each LLM's overrides, and a schema default in an override would mask the
top-level value when the two are merged.)
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

STAGES = ("stage1", "stage2")  # stage 1: compressor + projector, LLM frozen; stage 2: projector + LLM
# LLaVA-1.5's image_aspect_ratio: pretraining leaves it at its default (the processor alone), fine-tuning pads
DEFAULT_ASPECT = {"stage1": "square", "stage2": "pad"}

# DeepSpeed's gradient bucket, in elements. ZeRO-3 allocates it whole on every GPU (the plan counts it):
# DeepSpeed's default, 5e8, is 1 GB in bf16; Hugging Face's "auto" for LLaVA's scripts, hidden_size²,
# deadlocked two gloo processes on a small model whenever the gradients spanned several buckets.
GRADIENT_BUCKET = 50_000_000


@dataclass(frozen=True)
class StageSettings:
    name: str
    index: int  # 0, 1: stage 1's batches are seeded apart from stage 2's
    steps: int
    lr: float
    batch_size: int  # global batch of one optimizer step: the stage's own, else train.batch_size
    zero_stage: int | None  # DeepSpeed ZeRO stage; None: plain PyTorch in one process
    micro_batch_size: int | None = None  # per process and forward pass; None: the process's whole share
    image_aspect_ratio: str = "pad"  # square | pad (vlmscale.model.vision.expand2square first)
    epochs: float | None = None  # set: `steps` is derived from the data (TrainSettings.for_data)

    def accumulation(self, world: int) -> int:
        """Micro-batches per optimizer step and process: batch_size / (micro_batch_size x world)."""
        if self.batch_size % world:
            raise ValueError(f"train.{self.name}.batch_size ({self.batch_size}) must be divisible by the number "
                             f"of processes ({world})")  # fmt: skip
        if self.micro_batch_size is None:
            return 1
        if self.batch_size % (self.micro_batch_size * world):
            raise ValueError(
                f"train.{self.name}.batch_size ({self.batch_size}) must be a multiple of train.micro_batch_size "
                f"({self.micro_batch_size}) x processes ({world})"
            )
        return self.batch_size // (self.micro_batch_size * world)

    def micro_batch(self, world: int) -> int:
        return self.batch_size // world // self.accumulation(world)


@dataclass(frozen=True)
class TrainSettings:
    """A cell's training settings, defaults filled."""

    seed: int
    warmup_frac: float
    stages: tuple[StageSettings, ...]
    weight_decay: float = 0.0
    log_every: int = 50
    checkpoint_every: int = 500
    bf16: bool = False
    gradient_checkpointing: bool = False
    max_length: int | None = None  # LLaVA's model_max_length; None: the LLM's max_position_embeddings

    @classmethod
    def from_spec(cls, train: dict) -> "TrainSettings":
        zero = train.get("zero_stage") or {}
        stages = tuple(
            StageSettings(
                name,
                i,
                train[name].get("steps", 0),  # 0 until for_data() when the stage gives epochs
                train[name]["lr"],
                train[name].get("batch_size", train["batch_size"]),
                zero.get(name),
                train.get("micro_batch_size"),
                train[name].get("image_aspect_ratio", DEFAULT_ASPECT[name]),
                train[name].get("epochs"),
            )
            for i, name in enumerate(STAGES)
        )
        optional = {
            k: train[k]
            for k in ("weight_decay", "log_every", "checkpoint_every", "bf16", "gradient_checkpointing", "max_length")
            if k in train
        }
        return cls(seed=train.get("seed", 0), warmup_frac=train["warmup_frac"], stages=stages, **optional)

    def for_data(self, records: dict[str, int]) -> "TrainSettings":
        """Steps of the stages given in epochs, from their number of records: ceil(epochs x records / batch)."""
        import math

        stages = tuple(
            s if s.epochs is None else replace(s, steps=max(1, math.ceil(s.epochs * records[s.name] / s.batch_size)))
            for s in self.stages
        )
        return replace(self, stages=stages)

    def global_step(self, stage_index: int, step: int) -> int:
        """Optimizer steps before (stage_index, step), counting both stages: the step MLflow plots against."""
        return sum(s.steps for s in self.stages[:stage_index]) + step

    @property
    def total_steps(self) -> int:
        return self.global_step(len(self.stages), 0)


@dataclass(frozen=True)
class TowerJob:
    """Pretrain the shared vision tower (or check a pretrained one) and encode every image."""

    spec: dict  # the vision spec (config `vision:` + the data's hash)
    data_root: str
    out: str
    threads: int = 1
    executor: str = "inline"


class _CellSpec:
    """What a job about one trained cell reads from its spec."""

    spec: dict

    @property
    def cell(self) -> str:
        return self.spec["cell"]

    @property
    def settings(self) -> TrainSettings:
        # Operational keys (config.OPERATIONAL_TRAIN_KEYS) come from `ops`, outside the spec and its hashes.
        return TrainSettings.from_spec({**self.spec["train"], **getattr(self, "ops", {})})


@dataclass(frozen=True)
class TrainJob(_CellSpec):
    """Train one cell (both stages), log it to MLflow, write train.json."""

    spec: dict  # config.cell_spec: llm, visual_tokens, compressor, train, upstream hashes
    data_root: str
    vision: str  # the tower's tower.json
    checkpoint_dir: str
    out: str = ""
    tracking: dict = field(default_factory=dict)  # {uri, experiment, grid}; empty: no MLflow
    threads: int = 1
    executor: str = "inline"
    ops: dict = field(default_factory=dict)  # {log_every, checkpoint_every}: when to log and save, not what


@dataclass(frozen=True)
class EvalJob(_CellSpec):
    """Evaluate one trained cell on its benchmarks, one JSON each."""

    spec: dict  # the cell's training spec (its checkpoint must have been trained for it)
    benchmarks: tuple[dict, ...]
    data_root: str
    vision: str
    checkpoint: str
    out_dir: str
    max_new_tokens: int = 16
    threads: int = 1
    executor: str = "inline"
    dtype: str = "auto"  # evaluation.dtype: "auto" is the precision final/ was saved (trained) in
    max_new_tokens_cap: int = 512  # evaluation.max_new_tokens_cap: bounds every lmms-eval task's request


@dataclass(frozen=True)
class FlopJob:
    """Count one (LLM, V) architecture's inference FLOPs; needs no trained weights."""

    spec: dict  # config.architecture_spec: llm, visual_tokens, compressor
    vision: dict  # the vision spec (the encoder's shape)
    text_tokens: tuple[int, ...]
    manifest: str
    out: str
    threads: int = 1
    executor: str = "inline"
