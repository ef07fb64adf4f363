"""Evaluate one cell on its benchmarks: greedy decoding, scored with each benchmark's metric."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from vlmscale.data.batching import make_batch
from vlmscale.data.samples import load_benchmark, with_image_root
from vlmscale.evaluation import metrics
from vlmscale.fileio import code_version, read_json, write_json
from vlmscale.identity import config_hash
from vlmscale.model.cell import load_trained
from vlmscale.model.vision import device_for_job, feature_source
from vlmscale.specs import EvalJob


@torch.no_grad()
def predict(
    model, tokenizer, samples, features, max_new_tokens: int, device, bf16: bool = False, batch_size: int = 64
) -> list[str]:
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


def evaluate_cell(job: EvalJob) -> list[dict]:
    """Evaluate one trained cell on each of its benchmarks (model and encoder loaded once): the built-in
    metrics on benchmark folders, lmms-eval on the benchmarks that name a task (vlmscale.evaluation.lmms)."""
    torch.set_num_threads(job.threads)
    manifest = read_json(Path(job.data_root) / "manifest.json")
    image_root = manifest.get("image_root", job.data_root)
    device = device_for_job()
    features, vision = feature_source(job.vision, image_root, device)
    model, tokenizer = load_trained(
        job.spec, job.checkpoint, manifest["vocabulary"], vision["hidden_size"], vision["patch_grid"]
    )
    model.to(device)
    results = {}
    for bench in job.benchmarks:
        if bench.get("task"):
            continue
        start = time.time()
        samples = benchmark_samples(bench["name"], manifest, job.data_root, image_root, features)
        predictions = predict(model, tokenizer, samples, features, job.max_new_tokens, device, job.settings.bf16)
        results[bench["name"]] = benchmark_result(job, bench, samples, predictions, time.time() - start)
    tasks = [b for b in job.benchmarks if b.get("task")]
    if tasks:
        results |= task_results(job, tasks, model, tokenizer, device, getattr(features, "encoder", None))
    return [results[b["name"]] for b in job.benchmarks]


def benchmark_samples(name: str, manifest: dict, data_root: str, image_root: str, features) -> list:
    if name not in manifest["benchmarks"]:
        raise FileNotFoundError(f"benchmark {name!r} is not in the data set ({sorted(manifest['benchmarks'])})")
    samples = with_image_root(load_benchmark(Path(data_root) / manifest["benchmarks"][name]["path"]), image_root)
    missing = features.missing(s.image for s in samples)
    if missing:
        raise FileNotFoundError(f"benchmark {name}: {len(missing)} images have no features (first: {missing[0]})")
    return samples


def task_results(job: EvalJob, benches: list[dict], model, tokenizer, device, encoder=None) -> dict[str, dict]:
    """The benchmarks that name an lmms-eval task, scored by lmms-eval's task definitions. lmms-eval hands
    the model images, not files: the encoder runs inside the job (the vision stage's one when it does)."""
    from vlmscale.evaluation import lmms
    from vlmscale.model.vision import ImageEncoder

    lmms.require_lmms_eval()
    encoder = encoder or ImageEncoder(read_json(job.vision), Path(job.vision).parent, device)
    lmms.save_job(job, job.out_dir)
    start = time.time()
    cell = lmms.LoadedCell(model, tokenizer, encoder, device, job.settings.bf16, job.max_new_tokens)
    scored = lmms.evaluate_tasks(benches, cell, job.out_dir)
    seconds = (time.time() - start) / len(benches)
    results = {}
    for bench, scores in zip(benches, scored):
        print(f"{job.cell} {bench['name']}: {scores['metric']} {scores['accuracy']:.4f} over "
              f"{scores['n_questions']} questions", flush=True)  # fmt: skip
        results[bench["name"]] = {
            **result_header(job, bench),
            **scores,
            "examples": scores["examples"][:5],
            "predictions": scores["examples"],
            "seconds": round(seconds, 2),
        }
    return results


def benchmark_result(job: EvalJob, bench: dict, samples: list, predictions: list[str], seconds: float) -> dict:
    metric = bench.get("metric", "exact")
    scores = metrics.score(
        metric,
        predictions,
        references(samples, metric),
        [s.options for s in samples] if metric == "multiple_choice" else None,
    )
    print(f"{job.cell} {bench['name']}: {metric} {scores['accuracy']:.4f} over {len(samples)} questions", flush=True)
    return {
        **result_header(job, bench),
        "metric": metric,
        "accuracy": scores["accuracy"],
        "scores": scores,
        "n_questions": len(samples),
        "seconds": round(seconds, 2),
        "examples": [
            {"question": s.question, "answer": s.answer, "prediction": p}
            for s, p in list(zip(samples, predictions))[:5]
        ],
    }


def result_header(job: EvalJob, bench: dict) -> dict:
    return {
        "cell": job.cell,
        "benchmark": bench["name"],
        "family": bench["family"],
        "config_hash": config_hash(job.spec),
        "code_version": code_version(),
    }


def main(job: EvalJob) -> dict:
    """Stage entry point: evaluate a cell, write one JSON per benchmark into job.out_dir."""
    results = evaluate_cell(job)
    for result in results:
        write_json(Path(job.out_dir) / f"{result['benchmark']}.json", result)
    return {"results": results}
