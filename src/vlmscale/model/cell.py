"""A cell's model and tokenizer from its spec: what training builds and evaluation and FLOP counting rebuild."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from vlmscale.data.tokenizer import build_tokenizer
from vlmscale.identity import run_key
from vlmscale.model.vlm import VLM, build_llm
from vlmscale.specs import TrainSettings
from vlmscale.training.checkpoint import load_weights


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


EVAL_DTYPES = {"bfloat16": "bfloat16", "bf16": "bfloat16", "float16": "float16", "fp16": "float16",
               "float32": "float32", "fp32": "float32"}  # fmt: skip


def eval_dtype(name: str, saved: str | None):
    """The precision a cell is evaluated in: evaluation.dtype, or ("auto") the one final/ was saved in,
    i.e. the precision it was trained in (bf16 when train.bf16)."""
    chosen = saved if name == "auto" else name
    if chosen not in EVAL_DTYPES:
        raise ValueError(f"evaluation.dtype: {chosen!r} is not one of {['auto', *EVAL_DTYPES]}")
    return getattr(torch, EVAL_DTYPES[chosen])


def load_trained(spec: dict, checkpoint: str | Path, vocabulary: list[str], vision_dim: int,
                 patch_grid: int | None = None, dtype: str = "auto"):  # fmt: skip
    """The cell's model from its final/ folder alone (vlmscale.training.checkpoint), checked against its run
    key: the LLM's config and weights come from final/llm (no hub access, no base model loaded first), in
    the evaluation precision, one copy in host RAM; the adapters are cast to the same precision, so a
    forward pass needs no autocast (whose cache of bf16 weight copies would double the weights' memory)."""
    checkpoint = Path(checkpoint)
    try:
        meta = json.loads((checkpoint / "final.json").read_text())
        if meta.get("run_key") != run_key(spec):
            raise StaleCheckpoint(f"{checkpoint} was trained for another spec of {spec['cell']}; retrain the cell")
        saved = meta["dtype"]  # what training saved (missing: not a final/ folder vlmscale wrote)
        model = _from_final(spec, checkpoint, vision_dim, patch_grid, eval_dtype(dtype, saved))
    except (StaleCheckpoint, ValueError):
        raise
    except Exception as exc:  # a missing, torn or foreign folder raises one of several types
        raise UnreadableCheckpoint(
            f"{spec['cell']}: cannot read its trained weights {checkpoint} ({type(exc).__name__}: {exc}); "
            f"delete the cell's train.json and rerun the workflow to retrain it"
        ) from None
    return model, build_tokenizer(spec["llm"], vocabulary)


def _from_final(spec: dict, checkpoint: Path, vision_dim: int, patch_grid: int | None, dtype) -> VLM:
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    if not list((checkpoint / "llm").glob("*.safetensors")):
        raise FileNotFoundError(f"{checkpoint / 'llm'} holds no safetensors")
    llm = AutoModelForCausalLM.from_pretrained(checkpoint / "llm", dtype=dtype, local_files_only=True)
    model = vlm_for_spec(spec, llm, vision_dim, patch_grid)  # the adapter exactly as training built it
    load_weights(model, load_file(str(checkpoint / "adapters.safetensors")))
    return model.to(dtype).requires_grad_(False).eval()
