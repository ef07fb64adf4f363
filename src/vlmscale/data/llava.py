"""Real LLaVA-format data: check a data set completely before any training, and report what was found.

Layout (LLaVA's own): a conversation JSON (`data.train_json`, a list of {"id", "image", "conversations":
[{"from": "human", "value": "<image>\\n..."}, {"from": "gpt", "value": ...}, ...]}), an image folder
(`data.image_folder`) that every "image" path is relative to (a record without one is text-only, trained
with no visual tokens as LLaVA does, and counted in the report), and a benchmark folder
(`data.benchmark_folder`) with one sub-folder per benchmark holding LLaVA's evaluation files
`questions.jsonl` ({"question_id", "image", "text"}) and `answers.jsonl` ({"question_id", "answer"}),
their images relative to the same image folder.

Every problem (unparsable JSON, a malformed record, a missing or corrupt image, a benchmark without
questions or answers) is collected, written to `data_report.json` and raised as one `DataError` that
names the file and record, so nothing fails hours later in the middle of training.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from stat import S_ISREG

from vlmscale.data.samples import conversation_samples, read_benchmark, vocabulary
from vlmscale.fileio import write_json
from vlmscale.specs import STAGES

MAX_LISTED = 10


class DataError(ValueError):
    """The data set has problems; the message lists them (file, record, what is wrong)."""


def stage_data(spec: dict, stage: str) -> dict:
    """A training stage's conversation JSON and image folder: its own, else data.train_json/image_folder."""
    own = spec.get(stage) or {}
    return {key: own.get(key) or spec.get(key) for key in ("train_json", "image_folder")}


def check_paths(spec: dict, benchmark_folder: bool = True) -> list[str]:
    """Cheap checks at config load: the locations exist. Returns problems, each naming its key.
    benchmark_folder=False: every benchmark is an lmms-eval task, so no benchmark folder is needed."""
    problems = []
    keys = [("image_folder", "folder", spec.get("image_folder"))]
    if benchmark_folder or spec.get("benchmark_folder"):
        keys.append(("benchmark_folder", "folder", spec.get("benchmark_folder")))
    for stage in STAGES:
        paths = stage_data(spec, stage)
        where = f"data.{stage}." if stage in spec else "data."
        keys += [
            (f"{where}train_json", "file", paths["train_json"]),
            (f"{where}image_folder", "folder", paths["image_folder"]),
        ]
    seen = set()
    for key, kind, value in keys:
        key = key if key.startswith("data.") else f"data.{key}"
        if (key, value) in seen:
            continue
        seen.add((key, value))
        if not value:
            problems.append(f"{key}: required when data.source is 'llava'")
        elif not (Path(value).is_file() if kind == "file" else Path(value).is_dir()):
            problems.append(f"{key}: {kind} {value!r} does not exist")
    return problems


def check_benchmark_files(spec: dict, name: str, metric: str = "exact") -> str | None:
    """Cheap check at config load that a configured benchmark has questions, and, for the vqa metric,
    that every question has the ten annotator answers the official scorer needs."""
    folder = Path(spec["benchmark_folder"]) / name
    questions = folder / "questions.jsonl"
    if not questions.is_file():
        return f"no question file {questions}"
    with questions.open() as fh:
        if not any(line.strip() for line in fh):
            return f"{questions} has no questions"
    if metric == "vqa" and (folder / "answers.jsonl").is_file():
        return _check_vqa_answers(folder / "answers.jsonl")
    return None


def _check_vqa_answers(path: Path) -> str | None:
    from vlmscale.evaluation.metrics import VQA_ANSWERS

    with path.open() as fh:
        for line in fh:
            if not line.strip():
                continue
            row = json.loads(line)
            answer = row.get("answer")
            count = len(answer) if isinstance(answer, list) else 1
            if count != VQA_ANSWERS:
                return (
                    f"metric vqa scores against {VQA_ANSWERS} annotator answers per question, but question "
                    f"{row.get('question_id')!r} has {count} in {path}; give the ten answers as a list, "
                    f"or use metric exact_match"
                )
    return None


def read_json_file(path: Path):
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None


def check_images(names: set[str], image_folder: Path, problems: list[str], sizes: dict[str, int]) -> None:
    """Every image exists and PIL can read it; `sizes` gets each good one's absolute path and byte size."""
    from PIL import Image, UnidentifiedImageError

    for name in sorted(names):
        path = image_folder / name
        try:
            info = path.stat()
        except OSError:
            info = None
        if info is None or not S_ISREG(info.st_mode):
            problems.append(f"image {name}: missing (looked in {image_folder})")
            continue
        try:
            with Image.open(path) as img:
                img.verify()
        except (UnidentifiedImageError, OSError, SyntaxError) as exc:
            problems.append(f"image {name}: corrupt or not an image ({exc})")
            continue
        sizes[str(path)] = info.st_size


def verification(sizes: dict[str, int]) -> dict:
    """What this stage verified, for jobs to trust instead of checking every image again on every rank
    (~10 M file lookups per 8-GPU start at LLaVA's size): the count and a hash of every image's path and
    size, which changes when an image is added, removed, renamed or rewritten at another size."""
    listing = "".join(f"{path}\t{size}\n" for path, size in sorted(sizes.items()))
    return {
        "images": len(sizes),
        "images_sha256": hashlib.sha256(listing.encode()).hexdigest(),
        "checks": "each image exists and PIL verifies it",
    }


def prepare(spec: dict, out_dir: str | Path) -> dict:
    """Validate the whole data set; write data_report.json and, if it is clean, manifest.json."""
    out = Path(out_dir)
    problems: list[str] = []
    image_folder = Path(spec["image_folder"]).resolve()
    stages, train, images, sizes = {}, {}, set(), {}
    for stage in STAGES:
        paths = stage_data(spec, stage)
        source = (Path(paths["train_json"]).resolve(), Path(paths["image_folder"]).resolve())
        if source not in train:
            records = read_json_file(source[0])
            train[source] = conversation_samples(records, source[0], problems)
            named = {s.image for s in train[source] if s.has_image}
            check_images(named, source[1], problems, sizes)
            images |= {str(source[1] / name) for name in named}
        stages[stage] = {
            "json": str(source[0]),
            "image_folder": str(source[1]),
            "n_samples": len(train[source]),
            "n_text_only": sum(not s.has_image for s in train[source]),  # trained with no visual tokens
            "mean_words": mean_words(train[source]),
        }
    folders = sorted(Path(spec["benchmark_folder"]).resolve().iterdir()) if spec.get("benchmark_folder") else []
    benchmarks = {folder.name: read_benchmark(folder, problems) for folder in folders if folder.is_dir()}
    bench_images = {s.image for items in benchmarks.values() for s in items}
    check_images(bench_images, image_folder, problems, sizes)
    images |= {str(image_folder / name) for name in bench_images}
    all_train = [s for samples in train.values() for s in samples]
    report = {
        "stages": stages,
        "image_folder": str(image_folder),
        "n_train_samples": len(all_train),
        "n_images": len(images),
        "benchmarks": {name: len(items) for name, items in benchmarks.items()},
        "multi_word_answers": sum(len(s.answer.split()) != 1 for s in all_train),
        "text_only_records": sum(not s.has_image for s in all_train),  # trained with no visual tokens, as LLaVA
        "problems": problems,
        "verified": verification(sizes),
    }
    write_json(out / "data_report.json", report)
    if problems:
        listed = "\n  - ".join(problems[:MAX_LISTED])
        more = f"\n  ... and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
        raise DataError(
            f"{len(problems)} problems in the data set (all of them: {out / 'data_report.json'}):\n  - {listed}{more}"
        )
    return _write_manifest(out, spec, stages, image_folder, all_train, benchmarks, images, report["verified"])


def mean_words(samples) -> dict[str, float]:
    """Mean words per conversation in its questions and in its answers, and mean turns: what
    `vlmscale plan` turns into training tokens (a batch counts conversations, as LLaVA's does)."""
    n = max(1, len(samples))
    words = lambda side: sum(len(turn[side].split()) for s in samples for turn in s.conversation) / n  # noqa: E731
    return {"question": words(0), "answer": words(1), "turns": sum(len(s.conversation) for s in samples) / n}


def _write_manifest(out, spec, stages, image_folder, train, benchmarks, images, verified) -> dict:
    manifest = {
        "spec": spec,
        "source": "llava",
        "root": str(out.resolve()),
        "image_root": str(image_folder),
        "train": {
            stage: {"json": info["json"], "image_folder": info["image_folder"]} for stage, info in stages.items()
        },
        "images": sorted(images),  # absolute: the stages' image folders may differ
        "verified": verified,  # jobs trust these images (data/batching.py verified_images)
        "n_train_samples": len(train),
        "benchmarks": {
            name: {"path": str(Path(spec["benchmark_folder"]).resolve() / name), "n_questions": len(items)}
            for name, items in benchmarks.items()
        },
        "vocabulary": vocabulary(train + [s for items in benchmarks.values() for s in items]),
    }
    write_json(out / "manifest.json", manifest)
    return manifest
