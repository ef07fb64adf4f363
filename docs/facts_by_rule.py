"""Accuracy on the `facts` benchmark per band of rule frequency, for trained cells of a finished grid.

The quantization-model reading of the reasoning family: the head rules (asked most often) are learned
by every LLM, and a larger LLM adds rules further down the Zipf tail. This prints, per cell, the overall
accuracy, how many rules it answers better than half the time, and the accuracy per frequency band,
so one can see whether two LLMs differ by their rules (size) or not at all (the step budget).

    python docs/facts_by_rule.py --config config.yaml [--config OVERRIDE.yaml] lm-m:1:0 lm-l:1:0

Cells are LLM:V:SEED (the grid's first compressor). Reads results/ as the config names it; trains nothing.
"""

from __future__ import annotations

import argparse
import re
import tempfile
from collections import defaultdict
from pathlib import Path

import torch
import yaml

from vlmscale import config as vcfg
from vlmscale.evaluation.evaluate import benchmark_samples, predict
from vlmscale.fileio import read_json
from vlmscale.model.cell import load_trained
from vlmscale.model.vision import feature_source

BANDS = ((0, 4), (4, 10), (10, 20), (20, 40), (40, 80), (80, 128))


def layered_config(files: list[str]) -> dict:
    """The configs merged as Snakemake's --configfile layers them, then validated and defaulted."""
    merged: dict = {}
    for f in files:
        merged = vcfg.deep_merge(merged, yaml.safe_load(Path(f).read_text()))
    with tempfile.TemporaryDirectory() as folder:  # load_file validates a file: the merged one, then gone
        path = Path(folder) / "layered.yaml"
        path.write_text(yaml.safe_dump(merged))
        return vcfg.load_file(path, vcfg.SCHEMA, data=False)


def correct_by_rule(cfg: dict, llm: str, visual_tokens: int, seed: int) -> dict[int, list[bool]]:
    results = Path(cfg["results"])
    manifest = read_json(results / "data" / "manifest.json")
    image_root = manifest.get("image_root", str(results / "data"))
    features, vision = feature_source(results / "vision" / "tower.json", image_root)
    spec = vcfg.cell_spec(cfg, llm, visual_tokens, seed)
    folder = Path(vcfg.checkpoints_root(cfg)) / llm / spec["compressor"] / f"v{visual_tokens}" / f"s{seed}" / "final"
    model, tokenizer = load_trained(spec, folder, manifest["vocabulary"], vision["hidden_size"], vision["patch_grid"])
    samples = benchmark_samples("facts", manifest, str(results / "data"), image_root, features)
    answers = predict(model, tokenizer, samples, features, max_new_tokens=4, device="cpu")
    by_rule = defaultdict(list)
    for sample, answer in zip(samples, answers):
        rule = int(re.search(r"rule(\d+)", sample.question).group(1))
        by_rule[rule].append(answer.strip() == sample.answer)
    return by_rule


def summary(by_rule: dict[int, list[bool]]) -> str:
    every = [x for xs in by_rule.values() for x in xs]
    learned = sum(1 for xs in by_rule.values() if sum(xs) / len(xs) > 0.5)
    bands = []
    for lo, hi in BANDS:
        xs = [x for r in range(lo, hi) for x in by_rule.get(r, [])]
        bands.append(f"rules {lo}-{hi - 1}: {sum(xs) / max(len(xs), 1):.3f} (n={len(xs)})")
    return f"accuracy {sum(every) / len(every):.4f}, rules > 50 %: {learned} | " + "; ".join(bands)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", action="append", required=True, help="config file(s), layered in order")
    parser.add_argument("cells", nargs="+", help="LLM:V:SEED")
    args = parser.parse_args()
    torch.set_num_threads(1)
    cfg = layered_config(args.config)
    for cell in args.cells:
        llm, v, seed = cell.split(":")
        print(cell, summary(correct_by_rule(cfg, llm, int(v), int(seed))), flush=True)


if __name__ == "__main__":
    main()
