"""A cell's model and tokenizer from its spec: what training builds and evaluation and FLOP counting rebuild."""

from __future__ import annotations

from pathlib import Path

from vlmscale.data.tokenizer import build_tokenizer
from vlmscale.identity import run_key
from vlmscale.model.vlm import VLM, build_llm
from vlmscale.specs import TrainSettings
from vlmscale.training.checkpoint import load_final, read_final


def build_cell_model(spec: dict, vocabulary: list[str], vision_dim: int, patch_grid: int | None = None):
    """(VLM, tokenizer) for a cell spec; a random-init LM starts from the cell's training seed (seeds
    differ in initialisation and batch order)."""
    settings = TrainSettings.from_spec(spec["train"]) if spec.get("train") else None  # FLOPs: no training
    tokenizer = build_tokenizer(spec["llm"], vocabulary)
    llm = build_llm({"init_seed": settings.seed if settings else 0, **spec["llm"]}, len(tokenizer))
    if settings and settings.gradient_checkpointing:
        llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return vlm_for_spec(spec, llm, vision_dim, patch_grid), tokenizer


def vlm_for_spec(spec: dict, llm, vision_dim: int, patch_grid: int | None) -> VLM:
    """The VLM around an LLM as the cell spec says: adapter, multi-level layers, position features."""
    return VLM(
        llm,
        vision_dim,
        spec["visual_tokens"],
        spec["compressor"],
        patch_grid,
        levels=len(spec.get("multi_level_layers") or []),
        position_features=bool(spec.get("position_features", False)),
    )


class StaleCheckpoint(RuntimeError):
    """The checkpoint on disk was trained for a different cell spec than the one being evaluated."""


class UnreadableCheckpoint(RuntimeError):
    """The trained cell's weights file is missing or cannot be loaded."""


def load_trained(spec: dict, checkpoint: str | Path, vocabulary: list[str], vision_dim: int,
                 patch_grid: int | None = None):  # fmt: skip
    """The cell's model from its final/ folder (vlmscale.training.checkpoint), checked against its run key."""
    try:
        meta, weights = read_final(checkpoint)
    except Exception as exc:  # a missing, torn or foreign folder raises one of several types
        raise UnreadableCheckpoint(
            f"{spec['cell']}: cannot read its trained weights {checkpoint} ({type(exc).__name__}: {exc}); "
            f"delete the cell's train.json and rerun the workflow to retrain it"
        ) from None
    if meta.get("run_key") != run_key(spec):
        raise StaleCheckpoint(f"{checkpoint} was trained for another spec of {spec['cell']}; retrain the cell")
    model, tokenizer = build_cell_model(spec, vocabulary, vision_dim, patch_grid)
    load_final(model, weights)
    return model.eval(), tokenizer
