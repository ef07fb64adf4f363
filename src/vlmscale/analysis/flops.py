"""Inference FLOPs of one grid cell, each number labelled with its convention.

Convention of the law and the frontier (`flops_paper`, the paper's): FLOPs = 2 * N * (Q + V): LLM prefill
only, N = the LLM's total parameter count, Q = text tokens, V = visual tokens, one multiply-add = 2 FLOPs.
Everything the paper leaves out is reported beside it, never folded in:

* `flops_attention`: the quadratic attention term of the prefill, 4 * n_layers * d_model * L^2
  (QK^T and attention x V, L = Q + V tokens);
* `flops_llm_measured`: the LLM prefill counted by torch.utils.flop_counter (matmuls incl. attention
  and the output head over all L positions);
* `flops_vision`: the vision encoder per image, measured the same way;
* `flops_compressor`: avgpool, one add per patch feature element (P * D); tokenpacker and quecc,
  measured like the encoder (their projections, convolution and local attention);
* `flops_projector`: 2 * projector parameters * V;
* `flops_quecc_question` (QueCC cells only): the question's own pass through the LLM that builds QueCC's
  query, 2 * N * Q (the question taken as the row's Q text tokens): QueCC's price beyond 2N(Q+V);
* `prefill_latency_ms`: measured wall time of one LLM prefill (batch 1, median of repeats, this machine);
  null for pretrained LLMs, which are counted on PyTorch's meta device: shapes only, no weights loaded,
  so a 14B model is counted in seconds on a login node.
"""

from __future__ import annotations

import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from vlmscale.analysis.cost import paper_flops
from vlmscale.fileio import code_version, read_json, write_json
from vlmscale.identity import config_hash
from vlmscale.model.adapters import projector_of
from vlmscale.model.cell import build_cell_model, vlm_for_spec
from vlmscale.model.vlm import build_llm, build_vision_tower, count_llm_params
from vlmscale.specs import FlopJob


def attention_flops(n_layers: int, d_model: int, seq_len: int) -> float:
    return 4.0 * n_layers * d_model * seq_len**2


def measure_flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def prefill_latency_ms(llm, embeds: torch.Tensor, repeats: int = 5) -> float:
    times = []
    with torch.no_grad():
        for _ in range(repeats + 1):
            start = time.perf_counter()
            llm(inputs_embeds=embeds, use_cache=False)
            times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times[1:])


def compressor_cost(model, n_patches: int, vision_dim: int, text_dim: int, device="cpu") -> float:
    """Per image: P * D adds for avgpool (pooling is invisible to the FLOP counter); otherwise the adapter
    measured whole, less its projector (counted apart as 2 * projector parameters * V)."""
    if not model.multi_level:
        return float(n_patches * vision_dim)
    features = torch.zeros(1, n_patches, vision_dim * (1 + model.levels), device=device)
    question = torch.zeros(1, text_dim, device=device)
    with torch.no_grad():
        whole = float(measure_flops(lambda: model.visual_embeds(features, question)))
    return whole - 2.0 * projector_params(model) * model.visual_tokens


def projector_params(model) -> int:
    return sum(p.numel() for p in projector_of(model.adapter).parameters())


def vision_encoder(vision: dict):
    """The encoder's architecture on the meta device (tiny ViT from the spec, CLIP from its config)."""
    from transformers import AutoConfig, CLIPVisionModel

    with torch.device("meta"):
        if vision.get("source", "tiny") == "tiny":
            return build_vision_tower(vision).eval(), vision["hidden_size"]
        config = AutoConfig.from_pretrained(vision["source"])
        config = getattr(config, "vision_config", config)
        return CLIPVisionModel(config).eval(), config.hidden_size


def count_cell(spec: dict, vision: dict, vocabulary: list[str], text_tokens: list[int]) -> dict:
    torch.manual_seed(0)
    pretrained = spec["llm"].get("source", "config") != "config"
    tower, vision_dim = vision_encoder(vision)
    grid = vision["image_size"] // vision["patch_size"]
    if pretrained:  # shapes from the LLM's config.json; its tokenizer is not needed to count
        with torch.device("meta"):
            model = vlm_for_spec(spec, build_llm(spec["llm"], 0, on_meta=True), vision_dim, grid)
    else:
        model, _ = build_cell_model(spec, vocabulary, vision_dim, grid)
    llm, v = model.llm.eval(), spec["visual_tokens"]
    # Eager attention: its matmuls are visible to the FLOP counter (fused SDPA kernels on CPU are not).
    llm.set_attn_implementation("eager")
    params = count_llm_params(llm)
    cfg = llm.config
    device = "meta" if pretrained else "cpu"
    pixels = torch.zeros(1, 3, vision["image_size"], vision["image_size"], device="meta")
    with torch.no_grad():
        vision_flops = measure_flops(lambda: tower(pixel_values=pixels))
    compressor_flops = compressor_cost(model, grid * grid, vision_dim, cfg.hidden_size, device)
    rows = []
    for q in text_tokens:
        embeds = torch.zeros(1, q + v, cfg.hidden_size, device=device)
        # An explicit mask: without one, transformers inspects position ids' values, which meta tensors lack.
        mask = torch.ones(1, q + v, dtype=torch.long, device=device)
        with torch.no_grad():
            measured = measure_flops(lambda: llm(inputs_embeds=embeds, attention_mask=mask, use_cache=False))
        rows.append(
            {
                "text_tokens": q,
                "flops_paper": paper_flops(params["total"], q, v),
                "flops_attention": attention_flops(cfg.num_hidden_layers, cfg.hidden_size, q + v),
                "flops_llm_measured": float(measured),
                "flops_vision": float(vision_flops),
                "flops_compressor": compressor_flops,
                "flops_projector": 2.0 * projector_params(model) * v,
                "prefill_latency_ms": None if pretrained else round(prefill_latency_ms(llm, embeds), 4),
                **(
                    {"flops_quecc_question": paper_flops(params["total"], q, 0)}
                    if spec["compressor"] == "quecc"
                    else {}
                ),
            }
        )
    return {"llm_params": params, "rows": rows}


def main(job: FlopJob) -> dict:
    """Stage entry point: write flops.json for one (LLM, V) architecture (no trained weights needed)."""
    torch.set_num_threads(job.threads)
    manifest = read_json(job.manifest)
    counted = count_cell(job.spec, job.vision, manifest["vocabulary"], list(job.text_tokens))
    result = {
        "cell": job.spec["cell"],
        "llm": job.spec["llm"]["name"],
        "visual_tokens": job.spec["visual_tokens"],
        "config_hash": config_hash(job.spec),
        "code_version": code_version(),
        "convention": "flops_paper = 2 * N_total * (Q + V); other columns as labelled in vlmscale.analysis.flops",
        **counted,
    }
    write_json(job.out, result)
    return result
