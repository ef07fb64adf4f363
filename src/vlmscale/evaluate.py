"""Evaluate one cell on its benchmarks: greedy decoding, scored with each benchmark's metric."""
from __future__ import annotations

import time
from pathlib import Path

import torch

from vlmscale import metrics
from vlmscale.data import load_benchmark
from vlmscale.fileio import code_version, read_json, spec_hash, write_json
from vlmscale.train import build_cell_model, cell_key, make_batch, with_image_root
from vlmscale.vision import device_for_job, feature_source


class StaleCheckpoint(RuntimeError):
    """The checkpoint on disk was trained for a different cell spec than the one being evaluated."""


class UnreadableCheckpoint(RuntimeError):
    """The trained cell's weights file is missing or cannot be loaded."""


def load_trained(spec: dict, checkpoint: str | Path, vocabulary: list[str], vision_dim: int, patch_grid: int | None = None):
    try:
        state = torch.load(checkpoint, weights_only=False, map_location="cpu")
    except Exception as exc:  # torch raises several types for a torn or foreign file
        raise UnreadableCheckpoint(
            f"{spec['cell']}: cannot read its trained weights {checkpoint} ({type(exc).__name__}: {exc}); "
            f"delete the cell's train.json and rerun the workflow to retrain it"
        ) from None
    if state.get("cell_hash") != cell_key(spec):
        raise StaleCheckpoint(f"{checkpoint} was trained for another spec of {spec['cell']}; retrain the cell")
    model, tokenizer = build_cell_model(spec, vocabulary, vision_dim, patch_grid)
    model.load_state_dict(state["model"])
    return model.eval(), tokenizer


@torch.no_grad()
def predict(model, tokenizer, samples, features, max_new_tokens: int, device, bf16: bool = False,
            batch_size: int = 64) -> list[str]:
    """Greedy answers, decoded to text (a one-word vocabulary answers in exactly one token)."""
    limit = tokenizer.max_new_tokens or max_new_tokens
    answers = []
    for i in range(0, len(samples), batch_size):
        batch = make_batch(samples[i : i + batch_size], tokenizer, model.visual_tokens, features).to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            generated = model.generate(batch, limit, tokenizer.eos_id)
        answers += [tokenizer.decode(ids) for ids in generated]
    return answers


def references(samples, metric: str) -> list:
    return [list(s.references) if metric == "vqa" else s.answer for s in samples]


def evaluate_cell(cfg: dict) -> list[dict]:
    """Evaluate one trained cell on each benchmark of cfg['benchmarks'] (model and encoder loaded once)."""
    spec = cfg["spec"]
    torch.set_num_threads(cfg.get("threads", 1))
    manifest = read_json(Path(cfg["data_root"]) / "manifest.json")
    image_root = manifest.get("image_root", cfg["data_root"])
    device = device_for_job()
    features, vision = feature_source(cfg["vision"], image_root, device)
    model, tokenizer = load_trained(spec, cfg["checkpoint"], manifest["vocabulary"], vision["hidden_size"],
                                    vision["patch_grid"])
    model.to(device)
    results = []
    for bench in cfg["benchmarks"]:
        if bench["name"] not in manifest["benchmarks"]:
            raise FileNotFoundError(f"benchmark {bench['name']!r} is not in the data set ({sorted(manifest['benchmarks'])})")
        start = time.time()
        samples = with_image_root(load_benchmark(Path(cfg["data_root"]) / manifest["benchmarks"][bench["name"]]["path"]),
                                  image_root)
        missing = features.missing(s.image for s in samples)
        if missing:
            raise FileNotFoundError(f"benchmark {bench['name']}: {len(missing)} images have no features (first: {missing[0]})")
        predictions = predict(model, tokenizer, samples, features, cfg.get("max_new_tokens", 16), device,
                              spec["train"].get("bf16", False))
        metric = bench.get("metric", "exact")
        scores = metrics.score(metric, predictions, references(samples, metric),
                               [s.options for s in samples] if metric == "multiple_choice" else None)
        results.append({
            "cell": spec["cell"],
            "benchmark": bench["name"],
            "family": bench["family"],
            "metric": metric,
            "accuracy": scores["accuracy"],
            "scores": scores,
            "n_questions": len(samples),
            "config_hash": spec_hash(spec),
            "code_version": code_version(),
            "seconds": round(time.time() - start, 2),
            "examples": [
                {"question": s.question, "answer": s.answer, "prediction": p}
                for s, p in list(zip(samples, predictions))[:5]
            ],
        })
        print(f"{spec['cell']} {bench['name']}: {metric} {scores['accuracy']:.4f} over {len(samples)} questions", flush=True)
    return results


def main(cfg: dict) -> dict:
    """Stage entry point: evaluate a cell, write one JSON per benchmark into cfg['out_dir']."""
    results = evaluate_cell(cfg)
    for result in results:
        write_json(Path(cfg["out_dir"]) / f"{result['benchmark']}.json", result)
    return {"results": results}
