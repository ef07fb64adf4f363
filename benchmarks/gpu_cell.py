"""One paper-shaped cell's training step on a GPU: tokens/s, MFU and peak memory beside `vlmscale plan`'s
estimate. The Qwen-1.5 shapes (random weights, from reference/qwen1.5.json) and CLIP ViT-L/336's shape,
stage 2 (every LLM weight trained) as configs/paper.yaml runs it: DeepSpeed ZeRO-3 (`--zero`) in its bf16
mode, gradient checkpointing, AdamW, the encoder's forward in bf16 on each step's images; one process.

    python benchmarks/gpu_cell.py [--llm Qwen1.5-0.5B Qwen1.5-1.8B] [--visual-tokens 576] [--micro-batch 16]
    python benchmarks/gpu_cell.py --smoke      # tiny shapes on the CPU: checks the script, measures nothing

Without a GPU (and without --smoke) it says so and exits 0. Writes benchmarks/results/gpu_cell.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
PEAKS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}  # bf16 dense
TINY = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "vocab_size": 100}


def shapes(names: list[str], smoke: bool) -> dict[str, dict]:
    if smoke:
        return {"tiny": TINY}
    known = json.loads((REPO / "src/vlmscale/reference/qwen1.5.json").read_text())["models"]
    return {name: known[name] for name in names}


def build(arch: dict, visual_tokens: int, smoke: bool, device):
    from transformers import AutoModelForCausalLM, CLIPVisionConfig, CLIPVisionModel, Qwen2Config

    from vlmscale.model import vlm as model

    config = Qwen2Config(**{k: arch[k] for k in TINY}, num_key_value_heads=arch["num_attention_heads"],
                         max_position_embeddings=4096, tie_word_embeddings=False)  # fmt: skip
    llm = AutoModelForCausalLM.from_config(config)
    llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    d, ff, layers, image, patch = (16, 32, 1, 48, 8) if smoke else (1024, 4096, 24, 336, 14)
    vision = CLIPVisionConfig(hidden_size=d, intermediate_size=ff, num_hidden_layers=layers,
                              num_attention_heads=max(1, d // 64), image_size=image, patch_size=patch)  # fmt: skip
    encoder = CLIPVisionModel(vision)
    grid = image // patch
    vlm = model.VLM(llm, vision_dim=d, visual_tokens=visual_tokens, compressor="tokenpacker", patch_grid=grid)
    return vlm.to(device), encoder.to(device, torch.bfloat16).eval().requires_grad_(False), image


def batch(vlm, encoder, image: int, micro: int, text: int, answer: int, device):
    from vlmscale.data.batching import Batch
    from vlmscale.data.tokenizer import IGNORE, IMAGE

    vocab = vlm.llm.config.vocab_size
    v = vlm.visual_tokens
    ids = torch.randint(0, vocab, (micro, v + text), device=device)
    ids[:, :v] = IMAGE
    labels = ids.clone()
    labels[:, : v + text - answer] = IGNORE
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16):
        pixels = torch.randn(micro, 3, image, image, device=device, dtype=torch.bfloat16)
        features = encoder(pixel_values=pixels, output_hidden_states=True).hidden_states[-2][:, 1:].float()
    lengths = torch.full((micro,), v, device=device)
    return Batch(ids, labels, lengths, ids[:, v : v + 4], torch.full((micro,), 4, device=device), features)


def single_process_world() -> None:
    """What a launcher would set for one process: DeepSpeed needs a process group even alone."""
    from vlmscale.training.distributed import free_port, local_world

    for key, value in local_world(0, 1, free_port()).items():
        os.environ.setdefault(key, value)


def measure(name: str, arch: dict, args, device) -> dict:
    from vlmscale.orchestration import plan
    from vlmscale.training.distributed import DeepSpeedStepper
    from vlmscale.training.trainer import step_loss

    vlm, encoder, image = build(arch, args.visual_tokens, args.smoke, device)
    n_total = sum(p.numel() for p in vlm.parameters())
    trained = [p for p in vlm.parameters() if p.requires_grad]
    stepper = DeepSpeedStepper(vlm, trained, 2e-5, 0.0, args.zero, args.micro_batch, 1, bf16=True)
    seq = args.visual_tokens + args.text_tokens
    times = []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for i in range(args.steps + 1):  # the first step warms up (allocator, kernels)
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        data = batch(vlm, encoder, image, args.micro_batch, args.text_tokens, args.answer_tokens, device)
        loss, _ = step_loss(stepper.model, data)  # DeepSpeed's bf16 mode: bf16 weights, no autocast
        stepper.accumulate(loss)
        stepper.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    seconds = sum(times[1:]) / args.steps
    n_llm = sum(p.numel() for p in vlm.llm.parameters())
    n_enc = sum(p.numel() for p in encoder.parameters())
    flops = 8 * n_llm * args.micro_batch * seq + 2 * n_enc * args.micro_batch * (
        (image // (8 if args.smoke else 14)) ** 2 + 1
    )
    peak = (
        next((v for k, v in PEAKS.items() if k in torch.cuda.get_device_name()), None)
        if device.type == "cuda"
        else None
    )
    shape = plan.LLMShape(arch["hidden_size"], arch["intermediate_size"], arch["num_hidden_layers"], arch["vocab_size"])
    states = plan.model_state_bytes(n_total, n_total, args.zero, 1, "bf16", shape.layer_params)
    acts = plan.activation_bytes(shape, args.micro_batch, seq, args.answer_tokens, True, stream_bytes=2)
    estimate = (states + 2 * n_enc + acts) / 1e9
    return {
        "llm": name, "llm_params": n_llm, "zero": args.zero, "micro_batch": args.micro_batch, "seq_len": seq,
        "seconds_per_step": round(seconds, 4), "tokens_per_second": round(args.micro_batch * seq / seconds, 1),
        "mfu": round(flops / seconds / peak, 4) if peak else None,
        "peak_memory_gb": round(torch.cuda.max_memory_allocated() / 1e9, 2) if device.type == "cuda" else None,
        "plan_memory_gb": round(estimate, 2),
    }  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--llm", nargs="+", default=["Qwen1.5-0.5B", "Qwen1.5-1.8B"])
    parser.add_argument("--visual-tokens", type=int, default=576)
    parser.add_argument("--micro-batch", type=int, default=16)
    parser.add_argument("--text-tokens", type=int, default=100)
    parser.add_argument("--answer-tokens", type=int, default=50)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--zero", type=int, default=3, help="ZeRO stage (paper config: 3 for stage 2)")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU")
    parser.add_argument("--out", default=str(REPO / "benchmarks/results/gpu_cell.json"))
    args = parser.parse_args()
    if args.smoke:
        args.visual_tokens, args.micro_batch, args.text_tokens, args.answer_tokens, args.steps = 4, 2, 8, 3, 2
    elif not torch.cuda.is_available():
        print("gpu_cell: no GPU on this machine; nothing measured (--smoke runs tiny shapes on the CPU)")
        return 0
    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    single_process_world()
    rows = [measure(name, arch, args, device) for name, arch in shapes(args.llm, args.smoke).items()]
    result = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu (smoke)", "rows": rows}
    print(json.dumps(result, indent=2))
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
