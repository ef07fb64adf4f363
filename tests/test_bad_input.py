"""The bad-input catalogue: each entry is what a user can get wrong, with the message they see.

Every case goes through the command a user runs (snakemake, or the `vlmscale` stage the rule calls) and
must fail with a message that names the problem; a bare Python traceback never counts as a message.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from helpers import default_config, run, snakemake_dry_run


def vlmscale(tmp_path: Path, *args: str) -> str:
    code, out = run([sys.executable, "-m", "vlmscale.cli", *args], tmp_path)
    assert code == 2, out
    assert "Traceback" not in out, out
    return out


# --------------------------------------------------------------------------- config


def test_malformed_yaml_is_refused_and_check_config_gives_the_line(tmp_path):
    broken = "grid:\n  name: x\n  visual_tokens: [1, 4\nllms: {\n"
    assert "not valid JSON or YAML" in snakemake_dry_run(tmp_path, broken)
    out = vlmscale(tmp_path, "check-config", "cfg.yaml")
    assert "cfg.yaml: not valid YAML (line 4, column 5" in out


def test_unknown_key_is_named(tmp_path):
    cfg = default_config()
    cfg["train"]["learning_rate"] = 0.1
    out = snakemake_dry_run(tmp_path, cfg)
    assert "'learning_rate' was unexpected" in out


def test_wrong_type_is_named(tmp_path):
    cfg = default_config()
    cfg["train"]["stage2"]["steps"] = "many"
    out = snakemake_dry_run(tmp_path, cfg)
    assert "'many' is not of type 'integer'" in out and "steps" in out


@pytest.mark.parametrize("key", ["visual_tokens", "llms"])
def test_empty_grid_is_refused(tmp_path, key):
    cfg = default_config()
    if key == "llms":
        cfg["llms"] = []
    else:
        cfg["grid"]["visual_tokens"] = []
    out = snakemake_dry_run(tmp_path, cfg)
    assert "[] should be non-empty" in out and key in out


def test_grid_too_small_for_the_law_is_refused_before_training(tmp_path):
    cfg = default_config()
    cfg["llms"] = cfg["llms"][:2]
    cfg["grid"]["visual_tokens"] = [1, 4]
    assert "grid: 4 cells cannot fit the paper law's 4 parameters" in snakemake_dry_run(tmp_path, cfg)
    cfg["llms"] = cfg["llms"][:1]
    assert "llms: the law's N exponent needs at least 2 LLM sizes" in snakemake_dry_run(tmp_path, cfg)


def test_duplicate_model_names_are_named(tmp_path):
    cfg = default_config()
    cfg["llms"][2]["name"] = "lm-s"
    assert "llms[].name: duplicate value 'lm-s'" in snakemake_dry_run(tmp_path, cfg)


def test_token_count_the_compressor_cannot_make(tmp_path):
    cfg = default_config()
    cfg["grid"]["visual_tokens"] = [1, 2]
    out = snakemake_dry_run(tmp_path, cfg)
    assert "grid.visual_tokens: the avgpool compressor cannot make V=2" in out and "choose from [1, 4, 9" in out


def test_token_count_tokenpacker_cannot_make(tmp_path):
    cfg = default_config()
    cfg["compressor"] = "tokenpacker"
    cfg["position_features"] = False  # avgpool's alone
    cfg["grid"]["visual_tokens"] = [1, 4, 9]
    out = snakemake_dry_run(tmp_path, cfg)
    assert "the tokenpacker compressor cannot make V=9 tokens from a 8x8 patch grid; choose from [1, 4, 16, 64]" in out


# --------------------------------------------------------------------------- real (LLaVA-format) data


@pytest.fixture()
def llava_data(small_data, tmp_path) -> Path:
    """A real-layout LLaVA data set (the synthetic generator writes LLaVA's files), copied to be damaged."""
    root = tmp_path / "llava"
    shutil.copytree(small_data, root, ignore=shutil.ignore_patterns("manifest.json", "patch_labels.npz"))
    return root


def llava_config(root: Path, benchmarks=("colour", "read")) -> dict:
    cfg = default_config()
    cfg["data"] = {
        "source": "llava",
        "train_json": str(root / "train.json"),
        "image_folder": str(root),
        "benchmark_folder": str(root / "benchmarks"),
    }
    cfg["benchmarks"] = [{"name": b, "family": "reasoning" if b == "colour" else "ocr"} for b in benchmarks]
    return cfg


def prepare(tmp_path: Path, root: Path) -> str:
    spec = json.dumps(llava_config(root)["data"])
    return vlmscale(tmp_path, "prepare-data", "--spec", spec, "--out", str(tmp_path / "prepared"))


def test_clean_llava_data_set_is_accepted_and_counted(tmp_path, llava_data):
    from vlmscale.data import llava

    manifest = llava.prepare(llava_config(llava_data)["data"], tmp_path / "prepared")
    report = json.loads((tmp_path / "prepared/data_report.json").read_text())
    assert report["problems"] == [] and report["n_train_samples"] == manifest["n_train_samples"] > 0
    assert set(report["benchmarks"]) == {"colour", "shape", "relation", "read", "next"}
    assert report["benchmarks"]["read"] == 20


def test_missing_data_files_are_named_before_any_job(tmp_path, llava_data):
    cfg = llava_config(llava_data)
    cfg["data"]["train_json"] = str(llava_data / "nope.json")
    out = snakemake_dry_run(tmp_path, cfg)
    assert f"data.train_json: file '{llava_data / 'nope.json'}' does not exist" in out
    (llava_data / "images/train_ocr_00003.png").unlink()
    out = prepare(tmp_path, llava_data)
    assert "image images/train_ocr_00003.png: missing" in out


def test_a_stages_own_missing_data_is_named_with_its_key(tmp_path, llava_data):
    cfg = llava_config(llava_data)
    cfg["data"]["stage1"] = {"train_json": str(llava_data / "pretrain.json"), "image_folder": str(llava_data / "nope")}
    out = snakemake_dry_run(tmp_path, cfg)
    assert f"data.stage1.train_json: file '{llava_data / 'pretrain.json'}' does not exist" in out
    assert f"data.stage1.image_folder: folder '{llava_data / 'nope'}' does not exist" in out


def test_corrupt_image_is_named(tmp_path, llava_data):
    (llava_data / "images/test_reasoning_00002.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    out = prepare(tmp_path, llava_data)
    assert "1 problems in the data set" in out
    assert "image images/test_reasoning_00002.png: corrupt or not an image" in out
    report = json.loads((tmp_path / "prepared/data_report.json").read_text())
    assert len(report["problems"]) == 1 and not (tmp_path / "prepared/manifest.json").exists()


def test_malformed_llava_json_names_line_or_record(tmp_path, llava_data):
    train = llava_data / "train.json"
    records = json.loads(train.read_text())
    train.write_text(train.read_text()[:-40])  # truncated, as by a failed download
    assert "train.json: not valid JSON (line" in prepare(tmp_path, llava_data)
    del records[3]["conversations"]
    records[5]["conversations"][0]["from"] = "gpt"
    train.write_text(json.dumps(records))
    out = prepare(tmp_path, llava_data)
    assert f"record 3 (id {records[3]['id']!r}): needs an even number" in out
    assert f"record 5 (id {records[5]['id']!r}): turns must alternate human/gpt" in out


def test_a_micro_batch_that_does_not_split_the_batch_is_named(tmp_path):
    cfg = default_config()
    cfg["train"]["micro_batch_size"] = 48
    out = snakemake_dry_run(tmp_path, cfg)
    assert "llms[0] (lm-xs): train.stage1.batch_size (64) must be a multiple of train.micro_batch_size (48)" in out


def test_a_vqa_benchmark_without_ten_answers_is_refused(tmp_path, llava_data):
    # One answer per question would score 0 everywhere under VQA's leave-one-out: refused at config load.
    cfg = llava_config(llava_data)
    cfg["benchmarks"][1]["metric"] = "vqa"
    out = snakemake_dry_run(tmp_path, cfg)
    assert "benchmarks[1] (read): metric vqa scores against 10 annotator answers per question" in out
    assert "question 0 has 1 in" in out and "answers.jsonl" in out
    synthetic = default_config()
    synthetic["benchmarks"][0]["metric"] = "vqa"
    out = snakemake_dry_run(tmp_path, synthetic)
    assert "benchmarks[0] (facts): metric vqa scores against ten annotator answers" in out


def test_benchmark_with_no_questions_is_named(tmp_path, llava_data):
    (llava_data / "benchmarks/read/questions.jsonl").write_text("\n")
    out = snakemake_dry_run(tmp_path, llava_config(llava_data))
    assert "benchmarks[1] (read):" in out and "has no questions" in out
    assert "benchmark read:" in prepare(tmp_path, llava_data)


def test_benchmark_question_without_answer_is_named(tmp_path, llava_data):
    answers = llava_data / "benchmarks/colour/answers.jsonl"
    answers.write_text("\n".join(answers.read_text().splitlines()[1:]) + "\n")
    assert "benchmark colour: question 0 has no answer" in prepare(tmp_path, llava_data)


# --------------------------------------------------------------------------- checkpoints and training


def test_unreadable_trained_weights_name_the_cell(tmp_path, small_data, small_vision):
    from helpers import cell_cfg

    spec = cell_cfg(small_data, small_vision, tmp_path).spec
    (tmp_path / "final").mkdir()
    from vlmscale.identity import run_key

    (tmp_path / "final/final.json").write_text(json.dumps({"run_key": run_key(spec)}))  # this cell's, but torn
    (tmp_path / "final/adapters.safetensors").write_bytes(b"torn")
    (tmp_path / "train.json").write_text(json.dumps({"checkpoint": str(tmp_path / "final")}))
    eval_spec = json.dumps(
        {"model": spec, "benchmarks": [{"name": "colour", "family": "reasoning"}], "max_new_tokens": 4}
    )
    out = vlmscale(
        tmp_path,
        "evaluate",
        "--spec",
        eval_spec,
        "--data-root",
        str(small_data),
        "--vision",
        str(small_vision),
        "--train-json",
        str(tmp_path / "train.json"),
        "--out-dir",
        str(tmp_path / "eval"),
    )
    assert "vlmscale evaluate [t/v4]: error: t/v4: cannot read its trained weights" in out and "retrain it" in out


def test_unreadable_resume_checkpoint_restarts_the_cell_and_says_so(tmp_path, small_data, small_vision, capsys):
    from helpers import cell_cfg

    from vlmscale.training import trainer as train

    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt/last.pt").write_bytes(b"torn by a kill")
    result = train.train_cell(cell_cfg(small_data, small_vision, tmp_path / "ckpt"), log=lambda m: None)
    printed = capsys.readouterr().out
    assert "last.pt is unreadable" in printed and "training from scratch" in printed
    assert result["history"][-1]["step"] == 30


def test_out_of_memory_names_the_setting(tmp_path, small_data, small_vision, monkeypatch):
    from helpers import cell_cfg

    from vlmscale.training import trainer as train

    def exhausted(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(train, "step_loss", exhausted)
    with pytest.raises(train.CellOutOfMemory, match="out of memory with train.batch_size 8; lower it"):
        train.train_cell(cell_cfg(small_data, small_vision, tmp_path / "ckpt"), log=lambda m: None)


class LookedUp:
    """Features that record which images a job would look up on the file system."""

    def __init__(self):
        self.asked: list[str] = []

    def missing(self, paths) -> list[str]:
        self.asked += list(paths)
        return []


def test_the_data_stage_records_what_it_verified_and_jobs_trust_it(tmp_path, llava_data):
    from PIL import Image

    from vlmscale.data import llava
    from vlmscale.data.batching import check_samples, load_stage_samples, verified_images

    manifest = llava.prepare(llava_config(llava_data)["data"], tmp_path / "prepared")
    verified = manifest["verified"]
    assert verified["images"] == len(manifest["images"]) > 0 and len(verified["images_sha256"]) == 64
    samples = load_stage_samples(manifest, tmp_path / "prepared")["stage2"]
    trusted, unchecked = LookedUp(), LookedUp()
    check_samples(samples, None, trusted, "cell stage2", verified_images(manifest))
    check_samples(samples, None, unchecked, "cell stage2")
    assert trusted.asked == [] and len(unchecked.asked) == len(samples)  # no lookup per image, per rank
    image = llava_data / samples[0].image.split(str(llava_data) + "/", 1)[1]
    Image.new("RGB", (40, 40), "red").save(image)  # rewritten at another size: the hash says so
    again = llava.prepare(llava_config(llava_data)["data"], tmp_path / "again")["verified"]
    assert again["images"] == verified["images"] and again["images_sha256"] != verified["images_sha256"]
    unverified = {**manifest, "verified": None}  # a manifest from before: every image is looked up again
    check_samples(samples, None, (old := LookedUp()), "cell stage2", verified_images(unverified))
    assert len(old.asked) == len(samples)
