"""`vlmscale plan`: what a grid will cost and whether each cell fits its GPUs, before anything is downloaded.

One row per (LLM, V) cell and training stage, computed from shapes and counts alone (no torch, no weights,
no data needed; milliseconds for the paper's grid):

* parameters: the LLM's (from `reference/qwen1.5.json`, a local folder's config.json, or the config's own
  shape keys), the adapter's (from its definition in `vlmscale.model.adapters`), the vision
  encoder's (`reference/encoders.json`); trained per stage: stage 1 the compressor and projector, stage 2
  those and the LLM.
* training tokens: steps × global batch × (V + the stage's mean text tokens). Text lengths come from the
  data's report when the data is there (mean words × `plan.tokens_per_word`), else from `plan.tokens`.
* training FLOPs, convention stated: 6·N·tokens for trained weights (forward 2, backward 4), 4·N·tokens
  for a frozen LLM that gradients still flow through (no weight gradients), plus 2·N·tokens recomputed
  under gradient checkpointing, plus the frozen encoder's forward, 2·N_enc·(patches + 1) per sample
  when features are not cached.
* GPU-hours = FLOPs / (`plan.mfu` × the GPU's peak), the GPU from `plan.gpu`.
* memory per GPU: model states for the ZeRO stage and precision the cell runs with (`model_state_bytes`),
  activations with gradient checkpointing at the micro-batch (global batch / GPUs) and sequence length,
  and the LM head's logits over the answer tokens; against `plan.gpu`'s memory (90 % usable).

A cell that does not fit is flagged with what to change; with a GPU declared, the workflow refuses to
start a grid that holds one.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

from vlmscale import choices
from vlmscale.config import checkpoints_root
from vlmscale.specs import GRADIENT_BUCKET, STAGES, TrainSettings

REFERENCE = Path(__file__).parents[1] / "reference"
USABLE_MEMORY = 0.9  # of a GPU's memory: the CUDA context, the allocator's fragmentation and NCCL buffers take the rest
GB = 1e9


@dataclass(frozen=True)
class GPU:
    name: str
    peak_flops: float  # dense bf16
    memory_gb: float


GPUS = {
    "a100": GPU("A100 80GB SXM (bf16 dense 312 TFLOP/s)", 312e12, 80),
    "h100": GPU("H100 80GB SXM (bf16 dense 989 TFLOP/s)", 989e12, 80),
}
assert set(GPUS) == set(choices.GPUS), "vlmscale.choices.GPUS names the GPUs known here"


@dataclass(frozen=True)
class LLMShape:
    hidden: int
    intermediate: int
    layers: int
    vocab: int
    tied: bool = False  # Qwen-1.5: untied input and output embeddings

    @property
    def layer_params(self) -> int:
        """One decoder layer: q, k, v with biases, o, the gated MLP, two RMSNorms (Qwen2/Llama layout)."""
        d = self.hidden
        return 3 * (d * d + d) + d * d + 3 * d * self.intermediate + 2 * d

    @property
    def params(self) -> int:
        embeddings = self.vocab * self.hidden * (1 if self.tied else 2)
        return embeddings + self.layers * self.layer_params + self.hidden


def llm_shape(llm: dict, vocab_hint: int) -> LLMShape | None:
    """The LLM's shape: the config's keys, the shipped Qwen-1.5 table, or a local folder's config.json."""
    if llm["source"] == "config":
        return LLMShape(llm["hidden_size"], llm["intermediate_size"], llm["num_layers"], vocab_hint, tied=True)
    known = json.loads((REFERENCE / "qwen1.5.json").read_text())["models"]
    name = llm["source"].rstrip("/").split("/")[-1]
    arch = known.get(name)
    if arch is None and (Path(llm["source"]).expanduser() / "config.json").is_file():
        arch = json.loads((Path(llm["source"]).expanduser() / "config.json").read_text())
    if arch is None:
        return None
    return LLMShape(arch["hidden_size"], arch["intermediate_size"], arch["num_hidden_layers"], arch["vocab_size"],
                    bool(arch.get("tie_word_embeddings", False)))  # fmt: skip


def vit_params(hidden: int, intermediate: int, layers: int, patch: int, tokens: int) -> int:
    """A CLIP-style vision transformer: patch embedding (no bias), class and position embeddings, pre- and
    post-LayerNorm, and per layer q, k, v, o with biases, two LayerNorms and a two-layer MLP."""
    d, ff = hidden, intermediate
    layer = 4 * (d * d + d) + 4 * d + (d * ff + ff) + (ff * d + d)
    return 3 * patch * patch * d + d + tokens * d + 2 * d + layers * layer + 2 * d


def encoder_shape(vision: dict) -> tuple[int, int, int] | None:
    """(parameters, hidden size, tokens per image) of the vision encoder; None when its shape is unknown."""
    tokens = (vision["image_size"] // vision["patch_size"]) ** 2 + 1
    if vision["source"] == "tiny":
        d = vision["hidden_size"]
        return vit_params(d, 4 * d, vision["num_layers"], vision["patch_size"], tokens), d, tokens
    known = json.loads((REFERENCE / "encoders.json").read_text())["models"]
    arch = known.get(vision["source"].rstrip("/").split("/")[-1])
    local = Path(vision["source"]).expanduser() / "config.json"
    if arch is None and local.is_file():
        arch = json.loads(local.read_text())
        arch = arch.get("vision_config", arch)
    if arch is None:
        return None
    d = arch["hidden_size"]
    return vit_params(d, arch["intermediate_size"], arch["num_hidden_layers"], vision["patch_size"], tokens), d, tokens


def adapter_params(compressor: str, vision_dim: int, text_dim: int, visual_tokens: int, patch_grid: int,
                   levels: int = 4, position_features: bool = False) -> int:  # fmt: skip
    """Adapter parameters, as vlmscale.model.adapters defines them (TokenPacker's and QueCC's reference
    layouts; text_dim is the LLM width, which QueCC's question state also has)."""
    d, h, kv = vision_dim, text_dim, vision_dim * max(levels, 1)
    linear = lambda i, o: i * o + o  # noqa: E731
    projector = linear(d, h) + linear(h, h)
    if compressor == "avgpool":
        return linear(d + (12 if position_features else 0), h) + linear(h, h)  # 12: token_positions' features
    attention = 4 * d * d + 4 * d  # nn.MultiheadAttention: in_proj (3D x D + 3D), out_proj
    if compressor == "tokenpacker":  # q_proj_1 (no bias), k/v Linear-GELU-Linear, three LayerNorms
        return d * d + 2 * (linear(kv, d) + linear(d, d)) + 6 * d + attention + projector
    stride = patch_grid // max(1, math.isqrt(visual_tokens))
    mlp_ln = lambda i: linear(i, d) + linear(d, d) + 2 * d  # noqa: E731  (Linear, GELU, Linear, LayerNorm)
    conv = d * stride * stride + d  # depthwise
    return attention + mlp_ln(d) + 2 * mlp_ln(kv) + conv + linear(h, d) + 2 * d + projector


def model_state_bytes(n_total: int, n_trained: int, zero: int | None, world: int, precision: str,
                      largest_layer: int = 0) -> float:  # fmt: skip
    """Weights, gradients and AdamW's state per GPU, in bytes.

    precision "fp32" (one plain process, or train.bf16 off): fp32 weights (under bf16 autocast); a trained parameter
    has a 4-byte gradient and 8 bytes of moments, and under ZeRO DeepSpeed keeps a 4-byte fp32 partition
    of it as well. precision "bf16" (DeepSpeed's bf16 mode, LLaVA's): 2-byte weights; per trained
    parameter 6 bytes of gradients (16- and 32-bit) and 12 of fp32 master weight and moments, as
    DeepSpeed's estimators count them (estimate_zero2/zero3_model_states_mem_needs). ZeRO stage 1
    partitions the optimizer's state over the GPUs, 2 the gradients too, 3 the weights too (a layer's
    weights are gathered whole while it runs: 4 bytes per parameter of the largest layer; and ZeRO-3
    allocates its gradient bucket whole, `specs.GRADIENT_BUCKET` elements).
    """
    g = max(1, world)
    if precision == "bf16":
        weight, grad, optim = 2.0, 6.0, 12.0
    else:
        weight, grad, optim = 4.0, 4.0, 8.0 + (4.0 if zero else 0.0)
    weights, grads, optims = weight * n_total, grad * n_trained, optim * n_trained
    if not zero:
        return weights + grads + optims
    if zero == 1:
        return weights + grads + optims / g
    if zero == 2:
        return weights + (grads + optims) / g
    bucket = (2.0 if precision == "bf16" else 4.0) * GRADIENT_BUCKET  # allocated whole by ZeRO-3
    return 4.0 * largest_layer + bucket + (weights + grads + optims) / g


def activation_bytes(shape: LLMShape, micro_batch: int, seq: int, answer_tokens: int, checkpointing: bool,
                     stream_bytes: int = 4) -> float:  # fmt: skip
    """Activations of one micro-batch. With gradient checkpointing: each layer's input (`stream_bytes` per
    value: the residual stream follows the weights, 4 under autocast, 2 in bf16 mode) plus one layer's
    working set during its recompute, about
    34·b·s·d bytes (Korthikanti et al. 2022, 16-bit, attention without the s² scores: SDPA); without it,
    that working set for every layer. Plus the LM head's logits over the answer tokens (bf16, and the
    fp32 copy the loss takes)."""
    b, s, d = micro_batch, seq, shape.hidden
    layer = 34.0 * b * s * d
    kept = shape.layers * (stream_bytes * b * s * d) + layer if checkpointing else shape.layers * layer
    return kept + 6.0 * b * answer_tokens * shape.vocab


@dataclass(frozen=True)
class StagePlan:
    stage: str
    trained_params: int
    micro_batch: int
    seq_len: int
    tokens: float
    flops: float
    gpu_hours: float
    states_gb: float
    activations_gb: float

    @property
    def memory_gb(self) -> float:
        return self.states_gb + self.activations_gb


@dataclass(frozen=True)
class CellPlan:
    cell: str
    llm_params: int
    total_params: int
    gpus: int
    stages: tuple[StagePlan, ...]
    checkpoint_gb: float  # final/, kept per cell and seed
    checkpoint_peak_gb: float  # last.pt while stage 2 trains
    memory_limit_gb: float | None
    advice: str  # empty when the cell fits (or no GPU is declared)
    eval_gb: float = 0.0  # GB per GPU to evaluate it (one GPU: evaluation_gb)
    eval_gpu_hours: float = 0.0

    @property
    def gpu_hours(self) -> float:
        return sum(s.gpu_hours for s in self.stages)

    @property
    def peak_memory_gb(self) -> float:
        return max(s.memory_gb for s in self.stages)

    @property
    def fits(self) -> bool:
        return self.memory_limit_gb is None or self.peak_memory_gb <= self.memory_limit_gb


# --------------------------------------------------------------------------- evaluation

EVAL_BATCH = choices.EVAL_TASK_BATCH  # an lmms-eval task's requests decoded together
EVAL_PROMPT_TOKENS = 512  # a benchmark prompt's text tokens, generously (ScienceQA's hint + lecture, MMMU)
DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4}


def evaluation_bytes(params: int, layers: int, kv_width: int, batch: int, tokens: int, dtype_bytes: int) -> float:
    """An evaluation process's model bytes: the weights once in the evaluation precision (no autocast
    copies, no optimizer) and the KV cache of a batch decoded to `tokens` positions (prompt + V + the decode
    cap): keys and values, every layer, kv_width = key/value heads x head size (hidden for Qwen-1.5)."""
    return dtype_bytes * (params + 2 * layers * kv_width * batch * tokens)


def eval_precision(cfg: dict, bf16: bool) -> str:
    chosen = cfg.get("evaluation", {}).get("dtype", "auto")
    return ("bfloat16" if bf16 else "float32") if chosen == "auto" else chosen


def evaluation_gb(cfg: dict, cell: dict, total_params: int) -> float:
    """GB per GPU to evaluate the cell: evaluation_bytes for the larger KV cache of an lmms-eval task's batch
    (EVAL_BATCH x prompt + V + the decode cap) and a benchmark folder's (64 short questions + V + answer),
    plus the vision encoder in fp32 beside it."""
    shape = cell["shape"]
    cap = cfg.get("evaluation", {}).get("max_new_tokens_cap", 512)
    dtype_bytes = DTYPE_BYTES[eval_precision(cfg, cell["settings"].bf16)]
    evaluation = cfg.get("evaluation", {})
    tasks = EVAL_BATCH * (EVAL_PROMPT_TOKENS + cell["V"] + cap)  # KV-cache tokens of an lmms-eval task's batch
    folder_tokens = choices.EVAL_FOLDER_PROMPT_TOKENS + cell["V"] + evaluation.get("max_new_tokens", 16)
    folders = choices.EVAL_FOLDER_BATCH * folder_tokens  # and of a benchmark folder's batch
    batch, tokens = (
        (EVAL_BATCH, tasks // EVAL_BATCH) if tasks >= folders else (choices.EVAL_FOLDER_BATCH, folder_tokens)
    )
    model = evaluation_bytes(total_params, shape.layers, shape.hidden, batch, tokens, dtype_bytes)
    return (model + 4 * cell["encoder"][0]) / GB


def evaluation_gpu_hours(cfg: dict, llm_params: int, visual_tokens: int, gpu: "GPU | None") -> float:
    """One cell's evaluation: every benchmark's questions (choices.TASK_QUESTIONS; a benchmark folder's
    size is unknown before the data exists and counts none) x 2·N·(prompt + V + answer tokens), each answer
    decoded to its task's length up to the cap (an upper bound on tokens), at plan.mfu."""
    if gpu is None:
        return 0.0
    evaluation = cfg.get("evaluation", {})
    cap, default = evaluation.get("max_new_tokens_cap", 512), evaluation.get("max_new_tokens", 16)
    flops = 0.0
    for bench in cfg["benchmarks"]:
        task = bench.get("task", "")
        decode = min(cap, next((n for k, n in choices.TASK_MAX_NEW_TOKENS.items() if task.startswith(k)), default))
        flops += choices.TASK_QUESTIONS.get(task, 0) * 2 * llm_params * (EVAL_PROMPT_TOKENS + visual_tokens + decode)
    return flops / (cfg["plan"]["mfu"] * gpu.peak_flops) / 3600


# --------------------------------------------------------------------------- the grid


def text_tokens(cfg: dict) -> dict[str, tuple[float, float]]:
    """Per stage, (mean text tokens, mean answer tokens) per sample: measured words from the data's report
    when it exists, else the config's stated sizes."""
    report = Path(cfg["results"]) / "data" / "data_report.json"
    measured = json.loads(report.read_text()).get("stages", {}) if report.is_file() else {}
    per_word, template = cfg["plan"]["tokens_per_word"], cfg["plan"]["template_tokens"]
    tokens = {}
    for stage in STAGES:
        words = measured.get(stage, {}).get("mean_words")
        stated = cfg["plan"]["tokens"][stage]
        if words:  # the template wraps every turn
            text = per_word * (words["question"] + words["answer"]) + template * words.get("turns", 1)
            tokens[stage] = (text, per_word * words["answer"])
        else:
            tokens[stage] = (stated["text"], stated["answer"])
    return tokens


def gpu_of(cfg: dict) -> GPU | None:
    name = cfg["plan"].get("gpu")
    if name is None:
        return None
    return GPUS[name] if isinstance(name, str) else GPU(name["name"], name["peak_tflops"] * 1e12, name["memory_gb"])


def stage_precision(bf16: bool, zero_stage: int | None, world: int) -> str:
    """ "bf16" where train.bf16 runs as DeepSpeed's bf16 mode (a ZeRO stage or several processes), "fp32"
    where it is autocast over fp32 weights (one plain process) or off (`distributed.make_stepper`)."""
    return "bf16" if bf16 and (zero_stage is not None or world > 1) else "fp32"


LLAVA_RECORDS = {"stage1": 558_128, "stage2": 665_298}  # LLaVA-Pretrain-558K, llava_v1_5_mix665k.json


def records(cfg: dict) -> dict[str, int]:
    """Records per stage, for stages given in epochs: plan.records, else LLaVA's two sets' sizes."""
    return {**LLAVA_RECORDS, **(cfg["plan"].get("records") or {})}


def stage_plan(cfg: dict, cell: dict, stage_index: int) -> StagePlan:
    """One training stage of one cell (`cell`: the shapes and counts plan_cell gathered)."""
    stage = cell["settings"].stages[stage_index]
    text, answer = cell["tokens"][stage.name]
    seq = int(cell["V"] + text)
    samples = stage.steps * stage.batch_size
    shape, checkpointing = cell["shape"], cell["settings"].gradient_checkpointing
    trained = cell["adapter"] + (shape.params if stage_index > 0 else 0)
    llm_factor = (6 if stage_index > 0 else 4) + (2 if checkpointing else 0)
    flops = llm_factor * shape.params * samples * seq + 6 * cell["adapter"] * samples * cell["V"]
    if not cfg["vision"]["cache"]:
        flops += 2 * cell["encoder"][0] * cell["encoder"][2] * samples
    gpu = gpu_of(cfg)
    hours = flops / (cfg["plan"]["mfu"] * gpu.peak_flops) / 3600 if gpu else float("nan")
    micro = stage.micro_batch(cell["world"])
    total = shape.params + cell["adapter"]
    precision = stage_precision(cell["settings"].bf16, stage.zero_stage, cell["world"])
    states = model_state_bytes(total, trained, stage.zero_stage, cell["world"], precision, shape.layer_params)
    if not cfg["vision"]["cache"]:
        states += (2 if cfg["vision"].get("bf16") else 4) * cell["encoder"][0]
    acts = activation_bytes(shape, micro, seq, int(answer), checkpointing, 2 if precision == "bf16" else 4)
    return StagePlan(stage.name, trained, micro, seq, samples * seq, flops, hours, states / GB, acts / GB)


def training_checkpoint_bytes(cell: dict, total: int, trained: int) -> float:
    """A stage-2 checkpoint on disk (vlmscale.training.checkpoint): in one plain process last.pt holds every
    weight in fp32 and AdamW's two moments; under DeepSpeed its checkpoint holds the trained weights
    (bf16 or fp32) and, over all ranks' partitions, their fp32 master copy and moments."""
    last = cell["settings"].stages[-1]
    if last.zero_stage is None and cell["world"] == 1:
        return 4.0 * total + 8.0 * trained
    bf16 = stage_precision(cell["settings"].bf16, last.zero_stage, cell["world"]) == "bf16"
    return (2.0 if bf16 else 4.0) * trained + 12.0 * trained


def plan_cell(
    cfg: dict,
    llm: str,
    visual_tokens: int,
    vocab_hint: int = 1000,
    tokens: dict | None = None,
    compressor: str | None = None,
) -> CellPlan | str:
    """The cell's plan, or a sentence saying why it cannot be planned. tokens: text_tokens(cfg), when a
    grid's cells share it. compressor: one of the grid's (None: the first)."""
    from vlmscale.config import Cell, cell_spec, compressors, llm_by_name, multi_level_layers, patch_grid, world_size

    compressor = compressor or compressors(cfg)[0]

    shape = llm_shape(llm_by_name(cfg, llm), vocab_hint)
    if shape is None:
        source = llm_by_name(cfg, llm)["source"]
        return f"{llm}: no shape known for {source!r} (not in reference/qwen1.5.json, no local config.json)"
    encoder = encoder_shape(cfg["vision"])
    if encoder is None:
        return f"{llm}: no shape known for vision.source {cfg['vision']['source']!r} (reference/encoders.json)"
    adapter = adapter_params(compressor, encoder[1], shape.hidden, visual_tokens, patch_grid(cfg),
                             len(multi_level_layers(cfg, compressor)),
                             bool(cfg.get("position_features")) and compressor == "avgpool")  # fmt: skip
    cell = {"shape": shape, "encoder": encoder, "adapter": adapter, "V": visual_tokens, "world": world_size(cfg, llm),
            "settings": TrainSettings.from_spec(cell_spec(cfg, llm, visual_tokens)["train"]).for_data(records(cfg)),
            "tokens": tokens or text_tokens(cfg)}  # fmt: skip
    stages = tuple(stage_plan(cfg, cell, i) for i in range(len(STAGES)))
    gpu = gpu_of(cfg)
    limit = gpu.memory_gb * USABLE_MEMORY if gpu else None
    total = shape.params + adapter
    # kept: final/ (the LLM in the cell's training dtype, the adapters in fp32)
    checkpoint = ((2 if cell["settings"].bf16 else 4) * shape.params + 4 * adapter) / GB
    peak = training_checkpoint_bytes(cell, total, stages[-1].trained_params) / GB
    name = Cell(llm, visual_tokens, 0, compressor).architecture_id
    evaluation = evaluation_gb(cfg, cell, total), evaluation_gpu_hours(cfg, shape.params, visual_tokens, gpu)
    plan = CellPlan(name, shape.params, total, cell["world"], stages, checkpoint, peak, limit, "", *evaluation)
    return plan if plan.fits else _with_advice(cfg, plan, cell)


def _with_advice(cfg: dict, plan: CellPlan, cell: dict) -> CellPlan:
    """What would make a cell fit: ZeRO-3 and bf16 where a stage runs without them, a smaller micro-batch,
    more GPUs."""
    worst = max(plan.stages, key=lambda s: s.memory_gb)
    stage = cell["settings"].stages[STAGES.index(worst.stage)]
    tips = []
    if (stage.zero_stage or 0) < 3:
        tips.append(f"train.zero_stage.{worst.stage}: 3")
    if not cell["settings"].bf16:
        tips.append("train.bf16: true (DeepSpeed's bf16 mode)")
    room = plan.memory_limit_gb - worst.states_gb
    if room > 0 and worst.activations_gb > room:
        share = stage.batch_size // plan.gpus
        fitting = max(1, int(worst.micro_batch * room / worst.activations_gb))
        micro = max(m for m in range(1, fitting + 1) if share % m == 0)
        tips.append(f"train.micro_batch_size: {micro} (now {worst.micro_batch}; gradient accumulation keeps "
                    f"the batch of {stage.batch_size})")  # fmt: skip
    index = STAGES.index(worst.stage)
    more = next(
        (
            g
            for g in (2**k for k in range(1, 12))
            if g > plan.gpus and _fits_on(cfg, cell, index, g, plan.memory_limit_gb)
        ),
        None,
    )
    if more:
        tips.append(f"{more} GPUs (now {plan.gpus}; llms[].resources: tasks_per_node x nodes)")
    advice = f"{worst.stage} needs {worst.memory_gb:.0f} GB per GPU of {plan.memory_limit_gb:.0f}: try " + ", or ".join(
        tips
    )
    return CellPlan(**{**plan.__dict__, "advice": advice})


def _fits_on(cfg: dict, cell: dict, stage_index: int, world: int, limit_gb: float) -> bool:
    """Whether the stage fits on `world` GPUs, its micro-batch made to divide the smaller share if need be."""
    settings = cell["settings"]
    stage = settings.stages[stage_index]
    if stage.batch_size % world:
        return False  # the batch does not split over that many GPUs
    share = stage.batch_size // world
    if stage.micro_batch_size and share % stage.micro_batch_size:
        stage = replace(stage, micro_batch_size=math.gcd(share, stage.micro_batch_size))
        settings = replace(settings, stages=tuple(stage if s.index == stage_index else s for s in settings.stages))
    return stage_plan(cfg, {**cell, "world": world, "settings": settings}, stage_index).memory_gb <= limit_gb


def plan_grid(cfg: dict) -> list[CellPlan | str]:
    from vlmscale.config import architectures

    vocab, tokens = _vocabulary_size(cfg), text_tokens(cfg)  # the data's files read once for the grid
    return [plan_cell(cfg, c.llm, c.visual_tokens, vocab, tokens, c.compressor) for c in architectures(cfg)]


def _vocabulary_size(cfg: dict) -> int:
    manifest = Path(cfg["results"]) / "data" / "manifest.json"
    if manifest.is_file():
        return len(json.loads(manifest.read_text()).get("vocabulary", [])) + 8
    return 1000


def unfit_cells(cfg: dict) -> list[str]:
    """The cells that will not fit their GPUs, each with what to change (empty when no GPU is declared)."""
    if gpu_of(cfg) is None:
        return []
    return [f"{p.cell}: {p.advice}" for p in plan_grid(cfg) if isinstance(p, CellPlan) and not p.fits]


# --------------------------------------------------------------------------- the table


def _number(x: float) -> str:
    for unit, size in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= size:
            return f"{x / size:.3g}{unit}"
    return f"{x:.3g}"


def table(cfg: dict, plans: list[CellPlan | str]) -> str:
    gpu = gpu_of(cfg)
    header = ("cell", "GPUs", "params", "trained s1/s2", "tokens s1/s2", "train FLOPs", "GPU-h", "GB/GPU s1/s2",
              "eval GB/GPU", "")  # fmt: skip
    rows = [header]
    for p in plans:
        if isinstance(p, str):
            rows.append((p, "", "", "", "", "", "", "", "", ""))
            continue
        s1, s2 = p.stages
        mem = f"{s1.memory_gb:.1f}/{s2.memory_gb:.1f}"
        rows.append((p.cell, str(p.gpus), _number(p.total_params),
                     f"{_number(s1.trained_params)}/{_number(s2.trained_params)}",
                     f"{_number(s1.tokens)}/{_number(s2.tokens)}", f"{sum(s.flops for s in p.stages):.3g}",
                     f"{p.gpu_hours:.1f}", mem, f"{p.eval_gb:.1f}", _verdict(p, gpu)))  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(lines + _summary(cfg, [p for p in plans if isinstance(p, CellPlan)], gpu))


def _verdict(plan: CellPlan, gpu: GPU | None) -> str:
    if gpu is None:
        return ""
    return "fits" if plan.fits else "DOES NOT FIT"


def _summary(cfg: dict, plans: list[CellPlan], gpu: GPU | None) -> list[str]:
    seeds = len(cfg["grid"].get("seeds") or [cfg["train"]["seed"]])
    hours = seeds * sum(p.gpu_hours for p in plans)
    disk = seeds * sum(p.checkpoint_gb for p in plans)
    where = f"{gpu.name}, MFU {cfg['plan']['mfu']:.0%}" if gpu else "no plan.gpu declared: no GPU-hours or fit"
    peak = max((p.checkpoint_peak_gb for p in plans), default=0.0)
    ckpt = checkpoints_root(cfg)
    lines = ["", f"{len(plans)} cells x {seeds} seed(s) on {where}:", f"  training GPU-hours {hours:,.0f}",
             f"  checkpoints ({ckpt}): {disk:,.0f} GB kept (final/ per cell), plus up to {peak:,.0f} GB "
             f"per cell while its stage 2 trains (its mid-stage checkpoint){free_space(ckpt)}",
             f"  results ({cfg['results']}): JSON, logs, job logs and the tracking store (small), plus the encoded "
             f"features when vision.cache{free_space(cfg['results'])}"]  # fmt: skip
    evaluation = seeds * sum(p.eval_gpu_hours for p in plans)
    lines.append(f"  evaluation GPU-hours {evaluation:,.0f} (one GPU per cell; README: Planning a grid); evaluation "
                 f"needs up to {max((p.eval_gb for p in plans), default=0.0):.1f} GB per GPU")  # fmt: skip
    lines += [f"  {p.cell}: {p.advice}" for p in plans if not p.fits]
    return lines


def free_space(folder: str) -> str:
    """'; N GB free there now' for the filesystem that will hold `folder` (its nearest existing parent)."""
    path = Path(folder).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return f"; {shutil.disk_usage(path).free / 1e9:,.0f} GB free there now"


def main(cfg: dict) -> str:
    return table(cfg, plan_grid(cfg))
