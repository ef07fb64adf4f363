"""A cell's model and tokenizer from its spec: what training builds and evaluation and FLOP counting rebuild."""

from __future__ import annotations

from vlmscale.jobs import TrainSettings
from vlmscale.model import VLM, build_llm
from vlmscale.tokenizer import build_tokenizer


def build_cell_model(spec: dict, vocabulary: list[str], vision_dim: int, patch_grid: int | None = None):
    """(VLM, tokenizer) for a cell spec; a random-init LM starts from the cell's training seed (seeds
    differ in initialisation and batch order)."""
    settings = TrainSettings.from_spec(spec["train"]) if spec.get("train") else None  # FLOPs: no training
    tokenizer = build_tokenizer(spec["llm"], vocabulary)
    llm = build_llm({"init_seed": settings.seed if settings else 0, **spec["llm"]}, len(tokenizer))
    if settings and settings.gradient_checkpointing:
        llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return VLM(llm, vision_dim, spec["visual_tokens"], spec["compressor"], patch_grid), tokenizer
