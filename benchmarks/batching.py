"""Turning a training batch of the synthetic grid's samples into tensors (`make_batch`), per step, against
the forward and backward pass of the default grid's largest LLM on that batch: how much of a tiny cell's
step is Python bookkeeping rather than model arithmetic.

    python benchmarks/batching.py [--batch-sizes 64 512] [--steps 40]

Generates a small synthetic data set (the default's spec, 300 images per family) in a temporary folder,
builds lm-l (width 48, 2 layers) with the avgpool compressor at V = 1, and times, on one thread, the
median of `--steps` calls of each part. Features are zeros of the tower's shape (the lookup in the
feature cache is not what is timed). Writes benchmarks/results/batching.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]


class ZeroFeatures:
    """The tower's output shape (64 patches x 64 dims), without a tower."""

    def __call__(self, paths):
        return torch.zeros(len(paths), 64, 64)

    def blank(self):
        return torch.zeros(64, 64)


def median_ms(fn, steps: int) -> float:
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return round(1000 * statistics.median(times), 2)


def main() -> None:
    from vlmscale.data import synthetic
    from vlmscale.data.batching import batch_indices, load_stage_samples, make_batch
    from vlmscale.model.cell import build_cell_model
    from vlmscale.training.trainer import step_loss

    parser = argparse.ArgumentParser()
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 512])
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args()
    torch.set_num_threads(1)
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    spec = dict(config["data"], train_images_per_family=300, test_images_per_family=10)
    folder = tempfile.mkdtemp()
    manifest = synthetic.generate(spec, folder)
    samples = load_stage_samples(manifest, folder)["stage2"]
    llm = next(m for m in config["llms"] if m["name"] == "lm-l")
    cell = {"llm": llm, "visual_tokens": 1, "compressor": "avgpool", "position_features": True}
    model, tokenizer = build_cell_model(cell, manifest["vocabulary"], vision_dim=64, patch_grid=8)
    rows = {}
    for size in args.batch_sizes:
        picked = [samples[i] for i in batch_indices(len(samples), size, 0, 2, 0).tolist()]
        batch = make_batch(picked, tokenizer, 1, ZeroFeatures())

        def step():
            loss, _ = step_loss(model, batch)
            loss.backward()

        rows[size] = {
            "make_batch_ms": median_ms(lambda: make_batch(picked, tokenizer, 1, ZeroFeatures()), args.steps),
            "forward_backward_ms": median_ms(step, args.steps),
        }
        print(size, rows[size], flush=True)
    out = {"machine": f"{os.cpu_count()} cores, 1 thread", "cell": "lm-l, avgpool, V = 1", "per_batch_size": rows}
    (REPO / "benchmarks/results/batching.json").write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
