"""Evaluate one cell on one benchmark: greedy next-token answer, exact match against the reference."""
from __future__ import annotations

import math
import time
from pathlib import Path

import torch

from vlmscale.data import load_benchmark
from vlmscale.fileio import code_version, read_json, spec_hash, write_json
from vlmscale.train import build_cell_model, cell_key, encode_samples, load_features


class StaleCheckpoint(RuntimeError):
    """The checkpoint on disk was trained for a different cell spec than the one being evaluated."""


class UnreadableCheckpoint(RuntimeError):
    """The trained cell's weights file is missing or cannot be loaded."""


def load_trained(spec: dict, checkpoint: str | Path, vocabulary: list[str], vision_dim: int, patch_grid: int | None = None):
    try:
        state = torch.load(checkpoint, weights_only=False)
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
def predict(model, tokenizer, features, encoded, batch_size: int = 256) -> list[str]:
    answers = []
    for i in range(0, len(encoded), batch_size):
        batch = encoded.take(torch.arange(i, min(i + batch_size, len(encoded))))
        logits = model(features[batch.image_rows].float(), batch.question_ids, batch.lengths)
        answers += [tokenizer.vocab[j] for j in logits.argmax(-1).tolist()]
    return answers


def evaluate_cell(cfg: dict) -> list[dict]:
    """Evaluate one trained cell on each benchmark of cfg['benchmarks'] (model and features loaded once)."""
    spec = cfg["spec"]
    torch.set_num_threads(cfg.get("threads", 1))
    root = Path(cfg["data_root"])
    manifest = read_json(root / "manifest.json")
    features, rows = load_features(cfg["features"])
    model, tokenizer = load_trained(spec, cfg["checkpoint"], manifest["vocabulary"], features.shape[-1],
                                    math.isqrt(features.shape[1]))
    results = []
    for bench in cfg["benchmarks"]:
        if bench["name"] not in manifest["benchmarks"]:
            raise FileNotFoundError(f"benchmark {bench['name']!r} is not in the data set ({sorted(manifest['benchmarks'])})")
        start = time.time()
        samples = load_benchmark(root / manifest["benchmarks"][bench["name"]]["path"])
        predictions = predict(model, tokenizer, features, encode_samples(samples, tokenizer, rows))
        correct = [p == s.answer for p, s in zip(predictions, samples)]
        results.append({
            "cell": spec["cell"],
            "benchmark": bench["name"],
            "family": bench["family"],
            "metric": bench.get("metric", "exact_match"),
            "accuracy": sum(correct) / len(correct),
            "n_questions": len(correct),
            "config_hash": spec_hash(spec),
            "code_version": code_version(),
            "seconds": round(time.time() - start, 2),
            "examples": [
                {"question": s.question, "answer": s.answer, "prediction": p}
                for s, p in list(zip(samples, predictions))[:5]
            ],
        })
    return results


def main(cfg: dict) -> dict:
    """Stage entry point: evaluate a cell, write one JSON per benchmark into cfg['out_dir']."""
    results = evaluate_cell(cfg)
    for result in results:
        write_json(Path(cfg["out_dir"]) / f"{result['benchmark']}.json", result)
    return {"results": results}
