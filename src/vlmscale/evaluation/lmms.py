"""Official benchmark scores through lmms-eval (the optional `lmms` extra): a trained cell as an lmms-eval model.

A benchmark entry that names an lmms-eval `task` is evaluated by lmms-eval's own task definition: its
prompts, its answer reading and its aggregation, i.e. the numbers the VLM literature reports. vlmscale
supplies the model: `CellLMM` answers lmms-eval's requests with the cell's final weights through the same
`VLM`, tokenizer, batching and image encoder the cell was trained with.

The cell's `eval/{benchmark}.json` keeps every metric the task reports (`scores`) and one scalar in [0, 1],
`accuracy`, that the law fits: the task's `score` metric divided by its `score_max` (defaults in
TASK_SCORES, e.g. MME's perception score out of 2000).

The model is registered with lmms-eval under the name `vlmscale` (entry point `lmms_eval.models`), so a
finished cell can be re-scored on any task from the command line:
`lmms-eval --model vlmscale --model_args job=results/cells/<llm>/v<V>/s<seed>/eval/lmms_job.json --tasks mmmu_val`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from vlmscale.choices import EVAL_TASK_BATCH, TASK_SCORES
from vlmscale.data.batching import make_batch
from vlmscale.data.samples import Sample
from vlmscale.fileio import read_json, write_json


class HarnessMissing(RuntimeError):
    """lmms-eval is not installed: the benchmarks that name a task need the `lmms` extra."""


def require_lmms_eval() -> None:
    import importlib.util

    if importlib.util.find_spec("lmms_eval") is None:
        raise HarnessMissing(
            "benchmarks that name an lmms-eval task need lmms-eval: pip install -e '.[lmms]' (see README)"
        )


def score_of(bench: dict) -> tuple[str, float]:
    """(metric, maximum) of a task benchmark: its own `score`/`score_max`, else the task's default."""
    default = TASK_SCORES.get(bench["task"], (None, 1.0))
    metric = bench.get("score", default[0])
    return metric, float(bench.get("score_max", default[1] if metric == default[0] else 1.0))


def task_config(bench: dict) -> str | dict:
    """What lmms-eval loads: the task by name, or with its data read from a local `save_to_disk` folder."""
    if not bench.get("dataset_path"):
        return bench["task"]
    local = {"dataset_path": str(bench["dataset_path"]), "dataset_kwargs": {"load_from_disk": True}}
    return {"task": bench["task"], **local}


def _lmms_base():
    try:
        from lmms_eval.api.model import lmms
    except ImportError:  # the module imports without the extra; CellLMM is only built where it is installed
        return object
    return lmms


@dataclass(frozen=True)
class LoadedCell:
    """A trained cell ready to answer: its VLM (in its evaluation precision) and tokenizer, the image
    encoder, where it runs, the answer length when a task sets none, and the cap on any task's request."""

    model: torch.nn.Module
    tokenizer: object
    encoder: object
    device: torch.device
    max_new_tokens: int
    max_new_tokens_cap: int = 512


class ImageFeatures:
    """A batch's features from in-memory images (lmms-eval hands the model PIL images, not files)."""

    def __init__(self, encoder, images: dict):
        self.encoder, self.images = encoder, images

    def __call__(self, keys: list[str]) -> torch.Tensor:
        return self.encoder.encode([self.images[k] for k in keys])


class CellLMM(_lmms_base()):
    """A trained cell as an lmms-eval model: greedy answers (`generate_until`) and continuation
    log-likelihoods (`loglikelihood`) from its final weights.

    The VLM sees one image: a request with none (or a task without `doc_to_visual`) gets a black image of
    the encoder's size; a request with several is refused (the cell was trained on one image per
    conversation and its prompt would name images it never sees), unless the benchmark says
    `multi_image: first` (`first_image_tasks`), which answers from the first and is recorded in its JSON.
    Every request's decode length is bounded by `max_new_tokens_cap`; `decode_caps` counts where it bit.
    """

    is_simple = True

    def __init__(self, job=None, batch_size: int | str | None = EVAL_TASK_BATCH, cell: LoadedCell | None = None, **_):
        super().__init__()
        # lmms-eval's command line builds it from `--model_args job=<eval/lmms_job.json>`
        cell = cell or load_cell(job_from_json(job))
        self.model, self.tokenizer, self.encoder = cell.model, cell.tokenizer, cell.encoder
        self.device, self.max_new_tokens, self.cap = cell.device, cell.max_new_tokens, cell.max_new_tokens_cap
        self.batch_size = batch_size_of(batch_size)
        self.first_image_tasks: set[str] = set()
        self.decode_caps: dict[str, dict] = {}  # task -> {requested, requests_capped, answers_at_cap}

    def _visual(self, request) -> "object":
        _, _, doc_to_visual, doc_id, task, split = request.args[:6]
        found = doc_to_visual(self.task_dict[task][split][doc_id]) if doc_to_visual is not None else []
        visuals = [v for v in found or [] if v is not None]
        if not visuals:
            from PIL import Image

            return Image.new("RGB", (self.encoder.size, self.encoder.size))
        if len(visuals) > 1 and task not in self.first_image_tasks:
            raise MultiImageRefused(
                f"task {task}, document {doc_id}: {len(visuals)} images, but a vlmscale cell sees one image per "
                f"question (V tokens); set the benchmark's multi_image: first to answer from the first image"
            )
        return visuals[0].convert("RGB")

    def _batch(self, requests, answers: list[str]):
        images = {f"r{i}": self._visual(r) for i, r in enumerate(requests)}
        samples = [Sample(image=key, question=_context(r), answer=a) for key, r, a in zip(images, requests, answers)]
        features = ImageFeatures(self.encoder, images)
        return make_batch(samples, self.tokenizer, self.model.visual_tokens, features).to(self.device)

    @torch.inference_mode()
    def generate_until(self, requests) -> list[str]:
        answers = {}  # id(request) -> its answer: a batch's settings groups answer out of order
        starts = range(0, len(requests), self.batch_size)
        for k, i in enumerate(starts):
            for group in _same_settings(requests[i : i + self.batch_size]):
                answers.update(zip(map(id, group), self._generate(group)))
            if k % 20 == 19 or k == len(starts) - 1:
                print(f"answered {len(answers)}/{len(requests)} requests", flush=True)  # the job's log
        return [answers[id(r)] for r in requests]

    def _generate(self, requests) -> list[str]:
        settings = requests[0].args[1] or {}
        asked = int(settings.get("max_new_tokens") or self.max_new_tokens)
        limit = min(asked, self.cap)
        batch = self._batch(requests, [""] * len(requests))
        generated = self.model.generate(batch, limit, self.tokenizer.eos_id)
        self._count_cap(requests[0].args[4], asked, len(requests), generated, limit)
        return [cut_at(self.tokenizer.decode(ids), settings.get("until")) for ids in generated]

    def _count_cap(self, task: str, asked: int, n: int, generated: list[list[int]], limit: int) -> None:
        """Where the cap bit: requests that asked for more, and answers that ran to the cap unfinished."""
        counts = self.decode_caps.setdefault(task, {"requested": 0, "requests_capped": 0, "answers_at_cap": 0})
        counts["requested"] = max(counts["requested"], asked)
        if asked > limit:
            counts["requests_capped"] += n
            eos = self.tokenizer.eos_id
            counts["answers_at_cap"] += sum(len(ids) >= limit and eos not in ids for ids in generated)

    @torch.inference_mode()
    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        """log p(continuation | context, image), summed over the continuation's tokens (the chat template's
        end-of-turn after it is not counted), and whether greedy decoding would produce it."""
        results = []
        for request in requests:
            batch = self._batch([request], [self._continuation(request)])
            logits, targets = self.model(batch)
            n = len(targets) - (self.tokenizer.eos_id is not None)
            logprobs = torch.log_softmax(logits[:n].float(), dim=-1)
            total = logprobs.gather(1, targets[:n, None]).sum().item()
            results.append((total, bool((logprobs.argmax(-1) == targets[:n]).all())))
        return results

    def _continuation(self, request) -> str:
        target, _, doc_id, task, split = request.args[1:6]
        return target if isinstance(target, str) else target(self.task_dict[task][split][doc_id])

    def clean(self) -> None:
        """lmms-eval's clean() deletes the model's modules after each evaluation (to free the GPU for a local
        judge); the evaluation job runs its benchmarks one at a time with the same loaded cell."""

    def generate_until_multi_round(self, requests) -> list[str]:
        raise NotImplementedError("vlmscale cells answer single-round requests")


class MultiImageRefused(ValueError):
    """A request hands several images to a cell that sees one."""


def batch_size_of(value) -> int:
    """lmms-eval's `--batch_size`: an int, or "auto"/None (lmms-eval's default of 1 would decode one
    question at a time): EVAL_TASK_BATCH, the evaluation stage's own batch."""
    if value in (None, "auto", ""):
        return EVAL_TASK_BATCH
    if str(value).startswith("auto"):  # lmms-eval's "auto:N" (retries): no memory probe here
        return EVAL_TASK_BATCH
    return int(value)


def _context(request) -> str:
    context = request.args[0]
    return context[0] if isinstance(context, list) else context


def _same_settings(requests) -> list[list]:
    """Requests grouped by generation settings (one batch decodes with one limit and stop list)."""
    groups: dict[str, list] = {}
    for r in requests:
        groups.setdefault(repr(sorted((r.args[1] or {}).items())), []).append(r)
    return list(groups.values())


def cut_at(text: str, until) -> str:
    """The answer up to the first of the task's stop strings."""
    for stop in [until] if isinstance(until, str) else until or []:
        if stop:
            text = text.split(stop)[0]
    return text


def job_from_json(path) -> "object":
    from vlmscale.specs import EvalJob

    fields = read_json(path)
    fields["benchmarks"] = tuple(fields["benchmarks"])
    return EvalJob(**fields)


def load_cell(job) -> LoadedCell:
    """An evaluation job's trained cell, as the evaluation stage loads it."""
    from vlmscale.model.cell import load_trained
    from vlmscale.model.vision import ImageEncoder, device_for_job

    manifest = read_json(Path(job.data_root) / "manifest.json")
    summary = read_json(job.vision)
    device = device_for_job()
    encoder = ImageEncoder(summary, Path(job.vision).parent, device)
    model, tokenizer = load_trained(
        job.spec, job.checkpoint, manifest["vocabulary"], summary["hidden_size"], summary["patch_grid"], job.dtype
    )
    return LoadedCell(model.to(device), tokenizer, encoder, device, job.max_new_tokens, job.max_new_tokens_cap)


def save_job(job, out_dir) -> None:
    """The evaluation job as `CellLMM(job=...)` reads it back (lmms-eval's command line on a finished cell)."""
    write_json(Path(out_dir) / "lmms_job.json", dataclasses.asdict(job))


class TaskRunner:
    """lmms-eval over a cell's task benchmarks, one benchmark at a time (its result can be kept before the
    next one runs: one task's failure loses no other). What lmms-eval writes itself (submission files of
    the tasks that make one) goes under out_dir/lmms/."""

    def __init__(self, benches: list[dict], cell: LoadedCell, out_dir):
        from lmms_eval.tasks import TaskManager

        self.tasks = TaskManager("WARNING")  # indexes every task definition lmms-eval ships (~15 s)
        unknown = [f"{b['name']} (task {b['task']!r})" for b in benches if b["task"] not in self.tasks.all_tasks]
        if unknown:  # before the model answers anything
            raise ValueError(f"benchmarks not among lmms-eval's tasks: {', '.join(unknown)} (lmms-eval --tasks list)")
        self.model, self.out_dir = CellLMM(cell=cell), Path(out_dir)

    def run(self, bench: dict) -> dict:
        """One benchmark's result (see evaluate.benchmark_result)."""
        from types import SimpleNamespace

        import lmms_eval.evaluator

        reset_task_state(bench["task"])
        self.model.decode_caps = {}
        self.model.first_image_tasks = {bench["task"]} if bench.get("multi_image") == "first" else set()
        output = lmms_eval.evaluator.simple_evaluate(
            model=self.model,
            tasks=[task_config(bench)],
            task_manager=self.tasks,
            cli_args=SimpleNamespace(output_path=str(self.out_dir / "lmms"), process_with_media=True),
            log_samples=True,
            bootstrap_iters=0,
            process_docs_parallel=1,
            verbosity="WARNING",
        )
        return task_result(bench, output) | evaluation_notes(bench, self.model)


def evaluate_tasks(benches: list[dict], cell: LoadedCell, out_dir) -> list[dict]:
    """Run lmms-eval on a cell's task benchmarks; one result per benchmark (see TaskRunner)."""
    runner = TaskRunner(benches, cell, out_dir)
    return [runner.run(b) for b in benches]


def reset_task_state(task: str) -> None:
    """OCRBench sums its scores into a module-global dictionary: zero it, or a second evaluation in the same
    process (the next cell, a rerun) would count the first one's points again."""
    if not task.startswith("ocrbench"):
        return
    from lmms_eval.tasks.ocrbench import utils as ocrbench

    for key in ocrbench.OCRBench_score:
        ocrbench.OCRBench_score[key] = 0


def evaluation_notes(bench: dict, model: CellLMM) -> dict:
    """What the number depends on beyond the model: the decode cap where it bit, the judge, the images."""
    from vlmscale.choices import needs_judge

    notes = {"decode_cap": {"cap": model.cap, **_merge_caps(model.decode_caps.values())}}
    if needs_judge(bench["task"]):
        notes["judge"] = "none: rule-based only" if bench.get("judge") == "none" else "gpt"
    if bench.get("multi_image") == "first":
        notes["multi_image"] = "first image only"
    return notes


def _merge_caps(counts) -> dict:
    merged = {"requested": 0, "requests_capped": 0, "answers_at_cap": 0}
    for c in counts:
        merged = {"requested": max(merged["requested"], c["requested"])} | {
            k: merged[k] + c[k] for k in ("requests_capped", "answers_at_cap")
        }
    return merged


class ScoreOutOfRange(ValueError):
    """A task's accuracy (score / score_max) outside [0, 1]."""


def task_result(bench: dict, output: dict) -> dict:
    """The task's metrics as lmms-eval reports them (`metric,filter` keys), and the law's scalar. An
    aggregate lmms-eval reports as None (MathVista's at accuracy 0) is scored 0.0 with a warning."""
    metric, top = score_of(bench)
    reported = output["results"].get(bench["task"], {})
    scores = {
        key.split(",")[0]: value
        for key, value in reported.items()
        if "," in key and "_stderr" not in key and _is_number(value)
    }
    warnings = []
    if metric not in scores and any(k.split(",")[0] == metric and v is None for k, v in reported.items()):
        scores[metric] = 0.0
        warnings.append(f"lmms-eval reported {metric} as None (its aggregation returns None at accuracy 0); scored 0.0")
    if metric not in scores:
        raise KeyError(
            f"benchmark {bench['name']}: lmms-eval task {bench['task']} reported {sorted(scores)}, not {metric!r}; "
            f"set benchmarks[].score to one of them"
        )
    accuracy = scores[metric] / top
    if not 0.0 <= accuracy <= 1.0:
        raise ScoreOutOfRange(
            f"benchmark {bench['name']}: {metric} = {scores[metric]} over a maximum of {top} gives accuracy "
            f"{accuracy:.4g}, outside [0, 1]; set benchmarks[].score_max to the metric's maximum"
        )
    samples = [s for task in task_names(bench["task"], output) for s in output.get("samples", {}).get(task, [])]
    return {
        "metric": f"lmms-eval:{bench['task']}:{metric}",
        "accuracy": accuracy,
        "scores": scores,
        "warnings": warnings,
        "n_questions": len(samples),
        "examples": [_example(s) for s in samples],
    }


def _example(sample: dict) -> dict:
    return {
        "doc_id": sample.get("doc_id"),
        "question": sample["arguments"][0] if sample.get("arguments") else "",  # the prompt lmms-eval built
        "answer": sample.get("target"),
        "prediction": sample["filtered_resps"][0] if sample.get("filtered_resps") else None,
    }


def task_names(task: str, output: dict) -> list[str]:
    """The task, or a group's subtasks (their samples are logged under their own names)."""
    return output.get("group_subtasks", {}).get(task) or [task]


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def manifest():
    """lmms-eval's registration of the vlmscale model (entry point `lmms_eval.models` in pyproject.toml)."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id="vlmscale", simple_class_path="vlmscale.evaluation.lmms.CellLMM")
