"""The paper's path offline: tiny Qwen2 and CLIP checkpoints with the real architectures, saved with
save_pretrained, a small LLaVA-format data set with a benchmark folder per paper benchmark, and
configs/paper.yaml's structure (sources, per-stage data, the compressor, metrics, families, bf16,
gradient checkpointing, encoder run inside the jobs) shrunk to sizes a CPU runs in a minute or two."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import tiny_models
import torch
import yaml

from vlmscale.data import synthetic
from vlmscale.fileio import read_json

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
PAPER = yaml.safe_load((REPO / "configs/paper.yaml").read_text())
QUESTIONS_PER_BENCHMARK = 6
# The paper's benchmarks as LLaVA-format folders scored by the built-in metrics, as LLaVA's scripts score them
# (configs/paper.yaml names lmms-eval tasks instead; one of those, POPE from a local copy, runs beside them).
BUILTIN_BENCHMARKS = [
    {"name": name, "family": family, "metric": metric}
    for name, family, metric in [
        ("mme", "reasoning", "yes_no"),
        ("gqa", "reasoning", "exact_match"),
        ("ai2d", "reasoning", "multiple_choice"),
        ("mmbench", "reasoning", "multiple_choice"),
        ("mmmu", "reasoning", "multiple_choice"),
        ("scienceqa", "reasoning", "multiple_choice"),
        ("mathvista", "reasoning", "exact_match"),
        ("pope", "reasoning", "yes_no"),
        ("chartqa", "reasoning", "exact_match"),
        ("textvqa", "ocr", "vqa"),
        ("docvqa", "ocr", "exact_match"),
        ("ocrbench", "ocr", "exact_match"),
    ]
]


def benchmark_rows(metric: str, items: list[dict]) -> tuple[list[dict], list[dict]]:
    """Synthetic colour questions written in each metric's answer format."""
    questions, answers = [], []
    colours = list(synthetic.COLOURS)
    letters = "ABCDEFGH"[: len(colours)]
    for i, it in enumerate(items[:QUESTIONS_PER_BENCHMARK]):
        q = {"question_id": i, "image": it["image"], "text": it["text"]}
        answer = it["answer"]
        if metric == "vqa":  # ten annotators, seven of whom agree
            answer = [it["answer"]] * 7 + [colours[(colours.index(it["answer"]) + 1) % len(colours)]] * 3
        elif metric == "multiple_choice":
            q["options"] = colours
            q["text"] = it["text"] + "\n" + "\n".join(f"{letters[k]}. {c}" for k, c in enumerate(colours))
            answer = letters[colours.index(it["answer"])]
        elif metric == "yes_no":
            asked = colours[i % 4]
            q["text"] = f"is the answer to '{it['text']}' {asked}? answer yes or no"
            answer = "yes" if asked == it["answer"] else "no"
        questions.append(q)
        answers.append({"question_id": i, "answer": answer})
    return questions, answers


@pytest.fixture(scope="module")
def paper_like(tmp_path_factory) -> Path:
    """A folder laid out as configs/paper.yaml expects, with tiny models beside the data."""
    root = tmp_path_factory.mktemp("paper")
    images = root / "data/playground/data"
    synthetic.generate(
        {
            "source": "synthetic",
            "seed": 1,
            "train_images_per_family": 40,
            "test_images_per_family": 8,
            "questions_per_image": {"reasoning": 3, "ocr": 0},
            "tasks": ["colour"],
        },
        images,
    )
    records = json.loads((images / "train.json").read_text())
    (images / "llava_v1_5_mix665k.json").write_text(
        json.dumps(
            records
            + [
                {
                    "id": "text-only",
                    "conversations": [{"from": "human", "value": "hello"}, {"from": "gpt", "value": "hi"}],
                }
            ]
        )
    )
    pretrain = root / "data/LLaVA-Pretrain"
    (pretrain / "images").mkdir(parents=True)
    (pretrain / "images/images").symlink_to(images / "images")  # stage 1's own image folder
    (pretrain / "blip_laion_cc_sbu_558k.json").write_text(json.dumps(records[::2]))
    items = [
        {"image": q["image"], "text": q["text"], "answer": a["answer"]}
        for q, a in zip(
            map(json.loads, (images / "benchmarks/colour/questions.jsonl").read_text().splitlines()),
            map(json.loads, (images / "benchmarks/colour/answers.jsonl").read_text().splitlines()),
        )
    ]
    for bench in BUILTIN_BENCHMARKS:
        questions, answers = benchmark_rows(bench["metric"], items)
        folder = root / "data/eval" / bench["name"]
        folder.mkdir(parents=True)
        (folder / "questions.jsonl").write_text("".join(json.dumps(q) + "\n" for q in questions))
        (folder / "answers.jsonl").write_text("".join(json.dumps(a) + "\n" for a in answers))
        if bench["name"] == "pope":
            save_pope(questions, answers, images, root / "data/lmms/pope")
    texts = [t["value"] for r in records for t in r["conversations"]] + [q["text"] for q in items]
    tiny_models.save_tiny_qwen2(root / "models/qwen-a", texts, hidden_size=32, intermediate_size=64, num_layers=1)
    tiny_models.save_tiny_qwen2(root / "models/qwen-b", texts, hidden_size=48, intermediate_size=96, num_layers=2)
    tiny_models.save_tiny_clip(root / "models/clip", image_size=24, patch_size=4)
    return root


def save_pope(questions: list[dict], answers: list[dict], image_folder: Path, out: Path) -> None:
    """The yes/no questions in POPE's own schema, saved as lmms-eval's pope task reads a local copy."""
    import datasets
    from PIL import Image

    rows = {
        "question_id": [str(q["question_id"]) for q in questions],
        "question": [q["text"] for q in questions],
        "answer": [a["answer"] for a in answers],
        "image_source": [q["image"] for q in questions],
        "category": ["random"] * len(questions),
        "image": [Image.open(image_folder / q["image"]).convert("RGB") for q in questions],
    }
    features = datasets.Features(
        {k: datasets.Value("string") for k in rows if k != "image"} | {"image": datasets.Image()}
    )
    split = datasets.Dataset.from_dict(rows, features=datasets.Features(features))
    datasets.DatasetDict({"test": split}).save_to_disk(str(out))


def tiny_paper_config(root: Path) -> dict:
    """configs/paper.yaml with only its sizes shrunk: every key it sets keeps its role."""
    cfg = yaml.safe_load((REPO / "configs/paper.yaml").read_text())
    cfg["grid"] = {"name": "paper-tiny", "visual_tokens": [1, 4, 36]}  # what tokenpacker makes from 6 x 6 patches
    cfg["results"] = "results"
    # four levels as CLIP-L's 12, 16, 22, 23 (4 x D channels), from the tiny CLIP's hidden states 0..2
    cfg["vision"].update(source=str(root / "models/clip"), image_size=24, patch_size=4, multi_level_layers=[0, 1, 1, 2])
    cfg["train"].update(
        batch_size=8,
        micro_batch_size=4,  # two micro-batches per step: gradient accumulation on the real path
        log_every=5,
        checkpoint_every=10,
        stage1={"steps": 10, "lr": 0.001, "batch_size": 8},
        stage2={"steps": 150, "lr": 0.003},
    )
    del cfg["train"]["zero_stage"]  # one CPU process: plain PyTorch (DeepSpeed has tests of its own)
    cfg["llms"] = [
        {"name": "qwen-a", "source": str(root / "models/qwen-a")},
        {"name": "qwen-b", "source": str(root / "models/qwen-b")},
    ]
    cfg["data"]["benchmark_folder"] = "data/eval"
    lmms_pope = {
        "name": "pope-lmms",
        "family": "reasoning",
        "task": "pope",
        "dataset_path": str(root / "data/lmms/pope"),
    }
    cfg["benchmarks"] = BUILTIN_BENCHMARKS + [lmms_pope]
    cfg["evaluation"] = {"max_new_tokens": 4}
    cfg["law"]["bootstrap"] = 10
    cfg["launch"] = {"executor": "local", "threads": 1}
    cfg["tracking"] = {"uri": "sqlite:///results/mlflow.db", "experiment": "paper-tiny"}
    return cfg


def test_chat_layout_supervises_only_the_answer_and_its_end_of_turn(paper_like):
    from vlmscale.data.batching import make_batch
    from vlmscale.data.samples import Sample
    from vlmscale.data.tokenizer import IGNORE, IMAGE, ChatTokenizer

    tok = ChatTokenizer(str(paper_like / "models/qwen-a"))
    batch = make_batch(
        [Sample("x", "what colour is the circle", "red"), Sample("y", "what shape is blue", "square")],
        tok,
        4,
        lambda paths: torch.zeros(len(paths), 36, 32),
    )
    for row, labels, n in zip(batch.input_ids, batch.labels, batch.prompt_lengths):
        assert (row == IMAGE).sum() == 4
        prompt = tok.tok.decode([i for i in row[:n].tolist() if i != IMAGE])
        assert prompt.startswith("<|im_start|>system") and prompt.endswith("<|im_start|>assistant\n")
        supervised = labels[labels != IGNORE].tolist()
        assert supervised[-1] == tok.eos_id and row[n : n + len(supervised)].tolist() == supervised
    assert tok.decode(batch.labels[0][batch.labels[0] != IGNORE].tolist()) == "red"


def test_a_conversation_is_one_sequence_supervised_on_every_answer(paper_like, tmp_path):
    """LLaVA's format: a three-turn record is one sample, rendered by the chat template as one sequence
    (the image once); the supervised tokens are exactly the three answers, each with its end-of-turn."""
    from vlmscale.data.batching import make_batch
    from vlmscale.data.samples import load_llava_conversations
    from vlmscale.data.tokenizer import IGNORE, IMAGE, ChatTokenizer

    turns = [("what colour is the circle", "red"), ("what shape is blue", "a square"), ("and the small one", "green")]
    record = {"id": "three", "image": "x.png", "conversations": []}
    for k, (question, answer) in enumerate(turns):
        human = f"<image>\n{question}" if k == 0 else question
        record["conversations"] += [{"from": "human", "value": human}, {"from": "gpt", "value": answer}]
    (tmp_path / "three.json").write_text(json.dumps([record]))
    [sample] = load_llava_conversations(tmp_path / "three.json")
    assert sample.conversation == tuple(turns)

    tok = ChatTokenizer(str(paper_like / "models/qwen-a"))
    batch = make_batch([sample], tok, 4, lambda paths: torch.zeros(len(paths), 36, 32))
    row, labels = batch.input_ids[0], batch.labels[0]
    assert (row == IMAGE).sum() == 4 and batch.truncated == 0
    expected = [i for _, answer in turns for i in tok._ids(answer) + [tok.eos_id]]
    assert labels[labels != IGNORE].tolist() == expected
    supervised = (labels != IGNORE).nonzero().flatten().tolist()
    assert row[supervised].tolist() == expected  # labels sit on the tokens they name
    text = tok.tok.decode([i for i in row.tolist() if i != IMAGE])
    assert text.count("<|im_start|>assistant") == 3 and text.count("<|im_start|>user") == 3

    cut = make_batch([sample], tok, 4, lambda paths: torch.zeros(len(paths), 36, 32), max_length=len(row) - 3)
    assert cut.truncated == 1 and cut.input_ids.shape[1] == len(row) - 3


def test_clip_features_come_from_the_configured_layer(paper_like):
    from transformers import CLIPVisionModel

    from vlmscale.model.vision import ImageEncoder

    clip = str(paper_like / "models/clip")
    image = sorted((paper_like / "data/playground/data/images").iterdir())[0]
    spec = {"source": clip, "feature_layer": -2, "bf16": False}
    features = ImageEncoder({"spec": spec}, paper_like)([str(image)])
    assert features.shape == (1, 36, 32)  # 6 x 6 patches, CLS dropped
    model = CLIPVisionModel.from_pretrained(clip)
    from PIL import Image
    from transformers import AutoImageProcessor

    pixels = AutoImageProcessor.from_pretrained(clip)(images=[Image.open(image).convert("RGB")], return_tensors="pt")
    hidden = model(**pixels, output_hidden_states=True).hidden_states
    assert torch.allclose(features, hidden[-2][:, 1:], atol=1e-6)
    assert not torch.allclose(features, hidden[-1][:, 1:], atol=1e-3)


def test_a_pretrained_llms_adapter_starts_from_the_cells_seed(paper_like, monkeypatch):
    """A pretrained LLM draws nothing seeded, so the adapter (the cell's one random initialisation) must be
    seeded on its own: after other draws (another process, another run) the same cell starts from the same
    adapter, and another seed from another one. Unseeded, every run of a paper cell trained differently."""
    from helpers import load

    from vlmscale import config as vcfg
    from vlmscale.model.cell import build_cell_model

    monkeypatch.chdir(paper_like)
    cfg = load(tiny_paper_config(paper_like))

    def adapter(seed: int) -> dict:
        torch.rand(97)  # whatever the process drew before
        model, _ = build_cell_model(vcfg.cell_spec(cfg, "qwen-a", 4, seed), [], 32, 6)
        return model.adapter.state_dict()

    first, again, other = adapter(0), adapter(0), adapter(1)
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)


@pytest.mark.slow
def test_the_paper_config_runs_end_to_end_on_tiny_checkpoints(paper_like):
    from helpers import snakemake

    cfg = tiny_paper_config(paper_like)
    (paper_like / "paper-tiny.yaml").write_text(yaml.safe_dump(cfg))
    run = snakemake(paper_like, "paper-tiny.yaml")
    assert run.returncode == 0, run.stderr[-4000:]
    results = paper_like / "results"
    report = read_json(results / "data/data_report.json")
    assert report["problems"] == [] and report["text_only_records"] == 1 == report["stages"]["stage2"]["n_text_only"]
    assert report["stages"]["stage1"]["n_samples"] * 2 + 1 == report["stages"]["stage2"]["n_samples"]  # text-only kept
    assert read_json(results / "vision/tower.json")["features"] is None  # encoder ran inside the jobs
    assert not (results / "vision/features.pt").exists()
    metrics = {b["name"]: b["metric"] for b in BUILTIN_BENCHMARKS}
    for llm in ("qwen-a", "qwen-b"):
        for v in (1, 4, 36):
            cell = results / f"cells/{llm}/tokenpacker/v{v}/s0"
            trained = read_json(cell / "train.json")
            assert [h["step"] for h in trained["history"]] == [5, 10] + list(range(5, 151, 5))
            assert all(h["loss"] == h["loss"] for h in trained["history"])  # finite, not NaN
            assert trained["n_train_samples_by_stage"]["stage1"] < trained["n_train_samples_by_stage"]["stage2"]
            for name, metric in metrics.items():
                result = read_json(cell / f"eval/{name}.json")
                assert result["metric"] == metric and result["n_questions"] == QUESTIONS_PER_BENCHMARK
                assert 0.0 <= result["accuracy"] <= 1.0
                assert all(isinstance(e["prediction"], str) for e in result["examples"])
                if metric == "yes_no":
                    assert {"precision", "recall", "f1", "yes_ratio"} <= set(result["scores"])
            check_lmms_pope(read_json(cell / "eval/pope-lmms.json"), read_json(cell / "eval/pope.json"))
            counted = read_json(cell.parent / "flops.json")
            row = counted["rows"][0]
            assert row["flops_vision"] > 0 and row["flops_compressor"] > 0 and row["prefill_latency_ms"] is None
            assert counted["llm_params"]["total"] > counted["llm_params"]["non_embedding"] > 0
    # The chat format was learned: answers come back as words of the answer set, ended by the end-of-turn token.
    # After 150 steps a cell may end its turn at once on a question (an empty answer: the model's choice, which
    # differs between runs of this test, whose folders differ); anything else, or mostly empty answers, is a fault.
    said = [
        e["prediction"]
        for cell in results.glob("cells/*/*/v*/s*")
        for e in read_json(cell / "eval/gqa.json")["examples"]
    ]
    assert said and set(said) <= set(synthetic.COLOURS) | {""}
    assert sum(p in synthetic.COLOURS for p in said) >= 0.9 * len(said)
    for family in ("reasoning", "ocr"):
        assert "status" in read_json(results / f"law/{family}/tokenpacker.json")
    assert (results / "report.md").exists()


def check_lmms_pope(result: dict, builtin: dict) -> None:
    """lmms-eval's POPE on a trained cell, in the workflow: its accuracy is lmms-eval's POPE reading
    (lower-cased, stripped, equal) of the answers it recorded, over the same questions as the folder's."""
    said = result["predictions"]
    assert result["metric"] == "lmms-eval:pope:pope_accuracy" and result["n_questions"] == QUESTIONS_PER_BENCHMARK
    by_hand = sum(p["prediction"].lower().strip() == p["answer"] for p in said) / len(said)
    assert result["accuracy"] == pytest.approx(by_hand) == result["scores"]["pope_accuracy"]
    assert {"pope_precision", "pope_recall", "pope_f1_score", "pope_yes_ratio"} <= set(result["scores"])
    assert all(isinstance(p["prediction"], str) for p in said) and builtin["n_questions"] == len(said)


@pytest.mark.slow
def test_quecc_runs_the_paper_path_end_to_end_on_tiny_checkpoints(paper_like):
    """configs/paper.yaml's path with `compressor: quecc`, through what depends on the adapter: the
    question-aware adapter as the paper's builder lays it out, trained over LLaVA-format data with a
    text-only record, loaded from final/, evaluated and counted. Two of the grid's cells, few steps and
    three benchmarks keep it short (aggregation, law and report do not depend on the adapter: the
    tokenpacker run above covers them)."""
    from helpers import snakemake
    from safetensors.torch import load_file

    cfg = tiny_paper_config(paper_like)
    cfg.update(compressor="quecc", results="results-quecc", grid={"name": "paper-quecc", "visual_tokens": [1, 4, 36]})
    cfg["train"].update(stage1={"steps": 4, "lr": 0.001, "batch_size": 8}, stage2={"steps": 10, "lr": 0.003})
    cfg["benchmarks"] = [b for b in BUILTIN_BENCHMARKS if b["name"] in ("gqa", "pope", "textvqa")]
    cfg["tracking"]["experiment"] = "paper-quecc"
    (paper_like / "paper-quecc.yaml").write_text(yaml.safe_dump(cfg))
    cells = [("qwen-a", 1), ("qwen-b", 4)]
    targets = [
        f"results-quecc/cells/{llm}/quecc/v{v}/{name}"
        for llm, v in cells
        for name in ("s0/eval/gqa.json", "flops.json")
    ]
    run = snakemake(paper_like, "paper-quecc.yaml", *targets)
    assert run.returncode == 0, run.stderr[-4000:]
    results = paper_like / "results-quecc"
    assert read_json(results / "data/data_report.json")["text_only_records"] == 1
    for llm, v in cells:
        trained = read_json(results / f"cells/{llm}/quecc/v{v}/s0/train.json")
        assert [h["step"] for h in trained["history"]] == [4, 5, 10]
        assert all(h["loss"] == h["loss"] for h in trained["history"])  # finite, not NaN
        [adapters] = results.glob(f"checkpoints/{llm}/quecc/v{v}/s0/**/final/adapters.safetensors")
        keys = set(load_file(str(adapters)))
        # the paper's builder: Sequential(QueCC, Linear, GELU, Linear), QueCC with its question projection
        assert {"adapter.0.text_projection.0.weight", "adapter.0.q_downsample.weight", "adapter.1.weight"} <= keys
        assert "adapter.3.weight" in keys and not any(k.startswith("adapter.2.") for k in keys)
        for name in ("gqa", "pope", "textvqa"):
            assert 0.0 <= read_json(results / f"cells/{llm}/quecc/v{v}/s0/eval/{name}.json")["accuracy"] <= 1.0
        assert read_json(results / f"cells/{llm}/quecc/v{v}/flops.json")["rows"][0]["flops_compressor"] > 0
