"""Evaluate one cell on its benchmarks: greedy decoding, scored with each benchmark's metric."""

from __future__ import annotations

import contextlib
import time
import traceback
from pathlib import Path

import torch

from vlmscale.choices import EVAL_FOLDER_BATCH
from vlmscale.data.batching import make_batch, verified_images
from vlmscale.data.samples import load_benchmark, with_image_root
from vlmscale.evaluation import metrics
from vlmscale.fileio import code_version, read_json, spec_hash, write_json
from vlmscale.identity import config_hash
from vlmscale.model.cell import load_trained
from vlmscale.model.vision import device_for_job, feature_source
from vlmscale.specs import EvalJob


@torch.inference_mode()
def predict(
    model, tokenizer, samples, features, max_new_tokens: int, device, batch_size: int = EVAL_FOLDER_BATCH
) -> list[str]:
    """Greedy answers, decoded to text (a one-word vocabulary answers in exactly one token). The model is
    already in its evaluation precision (model.cell.load_trained): no autocast."""
    limit = tokenizer.max_new_tokens or max_new_tokens
    answers = []
    for i in range(0, len(samples), batch_size):
        batch = make_batch(samples[i : i + batch_size], tokenizer, model.visual_tokens, features).to(device)
        generated = model.generate(batch, limit, tokenizer.eos_id)
        answers += [tokenizer.decode(ids) for ids in generated]
    return answers


def references(samples, metric: str) -> list:
    return [list(s.references) if metric == "vqa" else s.answer for s in samples]


class EvaluationIncomplete(RuntimeError):
    """Some benchmarks failed; the others' results are kept (FinishedResults) and a rerun skips them."""


def _content(path: Path) -> str | None:
    """A file's content hash (None when absent)."""
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()[:16] if path.is_file() else None


class FinishedResults:
    """Each benchmark's result as it finishes, in eval/.done/{benchmark}.json. Not a declared output:
    Snakemake deletes a failed job's outputs, and these must survive so a rerun evaluates only what is
    missing. Each is keyed by the benchmark's spec, the cell's run key, the trained weights on disk, the
    evaluation settings, the evaluation code and the content of the data's manifest and the tower's summary
    (data or a tower rebuilt under the same spec), so a stale one is never reused."""

    def __init__(self, job: EvalJob):
        from vlmscale.identity import fingerprint, run_key

        self.folder, self.job = Path(job.out_dir) / ".done", job
        final = Path(job.checkpoint) / "final.json"
        self.common = {
            "run_key": run_key(job.spec),
            "weights": final.stat().st_mtime_ns if final.exists() else None,
            "settings": [job.max_new_tokens, job.max_new_tokens_cap, job.dtype],
            "code": fingerprint("evaluation.evaluate"),
            "inputs": [_content(Path(job.data_root) / "manifest.json"), _content(Path(job.vision))],
        }

    def key(self, bench: dict) -> str:
        return spec_hash({**self.common, "benchmark": bench})

    def get(self, bench: dict) -> dict | None:
        path = self.folder / f"{bench['name']}.json"
        if not path.exists():
            return None
        kept = read_json(path)
        return kept["result"] if kept.get("key") == self.key(bench) else None

    def put(self, bench: dict, result: dict) -> None:
        write_json(self.folder / f"{bench['name']}.json", {"key": self.key(bench), "result": result})


def evaluate_cell(job: EvalJob) -> list[dict]:
    """Evaluate one trained cell on each of its benchmarks not finished by an earlier run (model and encoder
    loaded once): the built-in metrics on benchmark folders, lmms-eval on the benchmarks that name a task
    (vlmscale.evaluation.lmms). A benchmark that fails is reported after the others have run."""
    torch.set_num_threads(job.threads)
    finished = FinishedResults(job)
    results = {b["name"]: r for b in job.benchmarks if (r := finished.get(b)) is not None}
    missing = [b for b in job.benchmarks if b["name"] not in results]
    if results:
        print(f"{job.cell}: {len(results)} benchmarks finished earlier; evaluating {len(missing)}", flush=True)
    failures = run_benchmarks(job, missing, finished, results) if missing else {}
    if failures:
        raise EvaluationIncomplete(
            f"{job.cell}: {len(failures)} of {len(job.benchmarks)} benchmarks failed ("
            + "; ".join(f"{name}: {why}" for name, why in failures.items())
            + f"); the others are kept in {finished.folder} and a rerun evaluates only the failed ones"
        )
    return [results[b["name"]] for b in job.benchmarks]


def run_benchmarks(job: EvalJob, benches: list[dict], finished: FinishedResults, results: dict) -> dict[str, str]:
    """Evaluate benches, each result kept as it finishes; returns {benchmark: why} for those that failed."""
    manifest = read_json(Path(job.data_root) / "manifest.json")
    image_root = manifest.get("image_root", job.data_root)
    device = device_for_job()
    features, vision = feature_source(job.vision, image_root, device)
    model, tokenizer = load_trained(
        job.spec, job.checkpoint, manifest["vocabulary"], vision["hidden_size"], vision["patch_grid"], job.dtype
    )
    model.to(device)
    failures = {}
    for bench in benches:
        if bench.get("task"):
            continue
        with _kept(bench, finished, results, failures):
            start = time.time()
            samples = benchmark_samples(bench["name"], manifest, job.data_root, image_root, features)
            predictions = predict(model, tokenizer, samples, features, job.max_new_tokens, device)
            results[bench["name"]] = benchmark_result(job, bench, samples, predictions, time.time() - start)
    tasks = [b for b in benches if b.get("task")]
    if tasks:
        cell = (model, tokenizer, device, getattr(features, "encoder", None))
        task_results(job, tasks, cell, finished, results, failures)
    return failures


@contextlib.contextmanager
def _kept(bench: dict, finished: FinishedResults, results: dict, failures: dict):
    """Keep the benchmark's result once it is in `results`; a failure is recorded, not raised (the next
    benchmark still runs)."""
    try:
        yield
        finished.put(bench, results[bench["name"]])
    except Exception as exc:  # any failure of one benchmark: the others must still run
        traceback.print_exc()
        failures[bench["name"]] = f"{type(exc).__name__}: {exc}"


def benchmark_samples(name: str, manifest: dict, data_root: str, image_root: str, features) -> list:
    if name not in manifest["benchmarks"]:
        raise FileNotFoundError(f"benchmark {name!r} is not in the data set ({sorted(manifest['benchmarks'])})")
    samples = with_image_root(load_benchmark(Path(data_root) / manifest["benchmarks"][name]["path"]), image_root)
    verified = verified_images(manifest)  # checked once by the data stage: no lookup per image here
    missing = features.missing(s.image for s in samples if s.image not in verified)
    if missing:
        raise FileNotFoundError(f"benchmark {name}: {len(missing)} images have no features (first: {missing[0]})")
    return samples


def task_results(job: EvalJob, benches: list[dict], cell: tuple, finished, results: dict, failures: dict) -> None:
    """The benchmarks that name an lmms-eval task, scored by lmms-eval's task definitions, one at a time.
    lmms-eval hands the model images, not files: the encoder runs inside the job (the vision stage's one
    when it does)."""
    from vlmscale.evaluation import lmms
    from vlmscale.model.vision import ImageEncoder

    model, tokenizer, device, encoder = cell
    lmms.require_lmms_eval()
    encoder = encoder or ImageEncoder(read_json(job.vision), Path(job.vision).parent, device)
    lmms.save_job(job, job.out_dir)
    loaded = lmms.LoadedCell(model, tokenizer, encoder, device, job.max_new_tokens, job.max_new_tokens_cap)
    runner = lmms.TaskRunner(benches, loaded, job.out_dir)
    for bench in benches:
        with _kept(bench, finished, results, failures):
            start = time.time()
            scores = runner.run(bench)
            print(f"{job.cell} {bench['name']}: {scores['metric']} {scores['accuracy']:.4f} over "
                  f"{scores['n_questions']} questions", flush=True)  # fmt: skip
            results[bench["name"]] = {
                **result_header(job, bench),
                **scores,
                "examples": scores["examples"][:5],
                "predictions": scores["examples"],
                "seconds": round(time.time() - start, 2),
            }


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
