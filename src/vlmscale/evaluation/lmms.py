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

from vlmscale.choices import TASK_SCORES
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
    """A trained cell ready to answer: its VLM and tokenizer, the image encoder, where it runs, and how it
    decodes (bf16 autocast, the answer length when a task sets none)."""

    model: torch.nn.Module
    tokenizer: object
    encoder: object
    device: torch.device
    bf16: bool
    max_new_tokens: int


class ImageFeatures:
    """A batch's features from in-memory images (lmms-eval hands the model PIL images, not files)."""

    def __init__(self, encoder, images: dict):
        self.encoder, self.images = encoder, images

    def __call__(self, keys: list[str]) -> torch.Tensor:
        return self.encoder.encode([self.images[k] for k in keys])


class CellLMM(_lmms_base()):
    """A trained cell as an lmms-eval model: greedy answers (`generate_until`) and continuation
    log-likelihoods (`loglikelihood`) from its final weights.

    The VLM sees one image: a request with several uses the first (the cell was trained on one image per
    conversation), one with none a black image of the encoder's size.
    """

    is_simple = True

    def __init__(self, job=None, batch_size: int | str = 16, cell: LoadedCell | None = None, **_):
        super().__init__()
        # lmms-eval's command line builds it from `--model_args job=<eval/lmms_job.json>`
        cell = cell or load_cell(job_from_json(job))
        self.model, self.tokenizer, self.encoder = cell.model, cell.tokenizer, cell.encoder
        self.device, self.bf16, self.max_new_tokens = cell.device, cell.bf16, cell.max_new_tokens
        self.batch_size = int(batch_size)

    def _visual(self, request) -> "object":
        _, _, doc_to_visual, doc_id, task, split = request.args[:6]
        visuals = [v for v in doc_to_visual(self.task_dict[task][split][doc_id]) if v is not None]
        if not visuals:
            from PIL import Image

            return Image.new("RGB", (self.encoder.size, self.encoder.size))
        return visuals[0].convert("RGB")

    def _batch(self, requests, answers: list[str]):
        images = {f"r{i}": self._visual(r) for i, r in enumerate(requests)}
        samples = [Sample(image=key, question=_context(r), answer=a) for key, r, a in zip(images, requests, answers)]
        features = ImageFeatures(self.encoder, images)
        return make_batch(samples, self.tokenizer, self.model.visual_tokens, features).to(self.device)

    @torch.no_grad()
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
        limit = int(settings.get("max_new_tokens") or self.max_new_tokens)
        batch = self._batch(requests, [""] * len(requests))
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            generated = self.model.generate(batch, limit, self.tokenizer.eos_id)
        return [cut_at(self.tokenizer.decode(ids), settings.get("until")) for ids in generated]

    @torch.no_grad()
    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        """log p(continuation | context, image), summed over the continuation's tokens (the chat template's
        end-of-turn after it is not counted), and whether greedy decoding would produce it."""
        results = []
        for request in requests:
            batch = self._batch([request], [self._continuation(request)])
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
                logits, targets = self.model(batch)
            n = len(targets) - (self.tokenizer.eos_id is not None)
            logprobs = torch.log_softmax(logits[:n].float(), dim=-1)
            total = logprobs.gather(1, targets[:n, None]).sum().item()
            results.append((total, bool((logprobs.argmax(-1) == targets[:n]).all())))
        return results

    def _continuation(self, request) -> str:
        target, _, doc_id, task, split = request.args[1:6]
        return target if isinstance(target, str) else target(self.task_dict[task][split][doc_id])

    def generate_until_multi_round(self, requests) -> list[str]:
        raise NotImplementedError("vlmscale cells answer single-round requests")


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
        job.spec, job.checkpoint, manifest["vocabulary"], summary["hidden_size"], summary["patch_grid"]
    )
    return LoadedCell(model.to(device), tokenizer, encoder, device, job.settings.bf16, job.max_new_tokens)


def save_job(job, out_dir) -> None:
    """The evaluation job as `CellLMM(job=...)` reads it back (lmms-eval's command line on a finished cell)."""
    write_json(Path(out_dir) / "lmms_job.json", dataclasses.asdict(job))


def evaluate_tasks(benches: list[dict], cell: LoadedCell, out_dir) -> list[dict]:
    """Run lmms-eval on a cell's task benchmarks; one result per benchmark (see evaluate.benchmark_result).
    What lmms-eval writes itself (submission files of the tasks that make one) goes under out_dir/lmms/."""
    from types import SimpleNamespace

    import lmms_eval.evaluator
    from lmms_eval.tasks import TaskManager

    tasks = TaskManager("WARNING")  # indexes every task definition lmms-eval ships (~15 s)
    unknown = [f"{b['name']} (task {b['task']!r})" for b in benches if b["task"] not in tasks.all_tasks]
    if unknown:
        raise ValueError(f"benchmarks not among lmms-eval's tasks: {', '.join(unknown)} (lmms-eval --tasks list)")
    output = lmms_eval.evaluator.simple_evaluate(
        model=CellLMM(cell=cell),
        tasks=[task_config(b) for b in benches],
        task_manager=tasks,
        cli_args=SimpleNamespace(output_path=str(Path(out_dir) / "lmms"), process_with_media=True),
        log_samples=True,
        bootstrap_iters=0,
        process_docs_parallel=1,
        verbosity="WARNING",
    )
    return [task_result(b, output) for b in benches]


def task_result(bench: dict, output: dict) -> dict:
    """The task's metrics as lmms-eval reports them (`metric,filter` keys), and the law's scalar."""
    metric, top = score_of(bench)
    reported = output["results"].get(bench["task"], {})
    scores = {
        key.split(",")[0]: value
        for key, value in reported.items()
        if "," in key and "_stderr" not in key and _is_number(value)
    }
    if metric not in scores:
        raise KeyError(
            f"benchmark {bench['name']}: lmms-eval task {bench['task']} reported {sorted(scores)}, not {metric!r}; "
            f"set benchmarks[].score to one of them"
        )
    samples = [s for task in task_names(bench["task"], output) for s in output.get("samples", {}).get(task, [])]
    return {
        "metric": f"lmms-eval:{bench['task']}:{metric}",
        "accuracy": scores[metric] / top,
        "scores": scores,
        "n_questions": len(samples),
        "examples": [
            {
                "doc_id": s.get("doc_id"),
                "question": s["arguments"][0] if s.get("arguments") else "",  # the prompt lmms-eval built
                "answer": s.get("target"),
                "prediction": s["filtered_resps"][0] if s.get("filtered_resps") else None,
            }
            for s in samples
        ],  # fmt: skip
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
