"""lmms-eval on a vlmscale cell, offline: tiny datasets in five tasks' own schemas (TextVQA, POPE, MME,
ScienceQA-IMG, DocVQA), saved with `save_to_disk`, evaluated end to end through lmms-eval's task
definitions with a tiny Qwen2 + CLIP cell. Answers are scripted where the official reading is the point
(the scores lmms-eval reports must equal the ones computed by hand below); one run is left to the model."""

from __future__ import annotations

import dataclasses

import pytest
import torch

pytest.importorskip("lmms_eval", reason="the lmms extra is not installed: pip install -e '.[lmms]'")

import tiny_models  # noqa: E402

from vlmscale.evaluation import lmms as harness
from vlmscale.model.cell import build_cell_model  # noqa: E402
from vlmscale.model.vision import ImageEncoder  # noqa: E402
from vlmscale.model.vlm import VLM  # noqa: E402

IMAGE_SIZE = 24


def image(seed: int):
    from PIL import Image

    g = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (IMAGE_SIZE, IMAGE_SIZE, 3), generator=g, dtype=torch.uint8)
    return Image.fromarray(pixels.numpy())


# Each document's question, its gold fields in the task's schema, and the answer the model is made to give.
TEXTVQA = [  # EvalAI's processor: number words, articles, contractions; leave-one-out over ten answers
    ("what number is on the shirt?", ["2", "2", "two"] + ["3"] * 7, "Two"),  # 3 match: (3*2/3 + 7*1)/10 = 0.9
    ("which light is on?", ["red one"] + ["red"] * 9, "the red one"),  # 1 match: 9 * (1/3) / 10 = 0.3
    ("what does he say?", ["don't know"] * 10, "dont know"),  # 1.0
    ("what colour is the car?", ["green"] * 10, "blue ASSISTANT: green"),  # cut at the stop string: 0
]
POPE = [  # lower() and strip() only, then equality; precision / recall count only "yes" / "no" readings
    ("Is there a dog in the image?", "yes", "Yes"),  # right
    ("Is there a cat in the image?", "yes", "yes."),  # wrong, and neither yes nor no
    ("Is there a car in the image?", "no", " No"),  # right
    ("Is there a bus in the image?", "no", "yes"),  # wrong: a false positive
    ("Is there a cup in the image?", "yes", "no"),  # wrong: a false negative
]
MME = [  # (image id, category): pairs of questions; score = acc + acc+ per category, x 100
    ("a.jpg", "existence", "Is there a dog in this image? Please answer yes or no.", "Yes", "Yes"),
    ("a.jpg", "existence", "Is there a cat in this image? Please answer yes or no.", "No", "No"),  # 200
    ("b.jpg", "existence", "Is there a bird in this image? Please answer yes or no.", "Yes", "yes, there is"),
    ("b.jpg", "existence", "Is there a horse in this image? Please answer yes or no.", "No", "There is no horse"),  # 50
    ("c.png", "code_reasoning", "Does this code print 3? Please answer yes or no.", "Yes", "No"),
    ("c.png", "code_reasoning", "Does this code print 4? Please answer yes or no.", "No", "No"),  # 50
]
SCIENCEQA = [  # LLaVA's reading: the letter alone, or "X." at the start; "A dog" is not option A
    ("Which animal is shown?", ["cat", "dog", "bird"], 1, "B"),
    ("Which animal barks?", ["dog", "cat", "fish"], 0, "A dog is shown"),
    ("Which animal flies?", ["cat", "dog", "bird"], 2, "C. bird"),
    ("Which animal swims?", ["fish", "cat", "dog"], 0, "(A)"),
]
DOCVQA = [  # ANLS: 1 - normalised edit distance over the closest answer, 0 below 0.5
    ("What is the total?", ["$105.00"], "105.00"),  # 1 - 1/7
    ("Who signed the letter?", ["John Smith", "J. Smith"], "john  smith"),  # 1
    ("When was it written?", ["December 1999"], "December 1998"),  # 1 - 1/13
    ("Which company?", ["ITC"], "ITC Limited"),  # 1 - 8/11 < 0.5: 0
]
EXPECTED = {
    "textvqa_val": {"exact_match": (0.9 + 0.3 + 1.0 + 0.0) / 4},
    "pope": {
        "pope_accuracy": 2 / 5,
        "pope_precision": 1 / 2,
        "pope_recall": 1 / 2,
        "pope_f1_score": 1 / 2,
        "pope_yes_ratio": 3 / 5,
    },  # fmt: skip
    "mme": {"mme_perception_score": (200 + 50) / 2, "mme_cognition_score": 50.0},
    "scienceqa_img": {"exact_match": 2 / 4},
    "docvqa_val": {"anls": (1 - 1 / 7 + 1 + 1 - 1 / 13 + 0) / 4},
}
SPLITS = {"textvqa_val": "validation", "docvqa_val": "validation", "pope": "test", "mme": "test"} | {
    "scienceqa_img": "test"
}


def task_rows(task: str) -> list[dict]:
    if task == "textvqa_val":
        return [{"question_id": i, "question": q, "answers": a, "ocr_tokens": [], "image": image(i)}
                for i, (q, a, _) in enumerate(TEXTVQA)]  # fmt: skip
    if task == "pope":
        return [{"question_id": str(i), "question": q, "answer": a, "image_source": f"coco_{i}", "category": "random",
                 "image": image(10 + i)} for i, (q, a, _) in enumerate(POPE)]  # fmt: skip
    if task == "mme":
        return [{"question_id": name, "question": q, "answer": a, "category": cat, "image": image(20 + i // 2)}
                for i, (name, cat, q, a, _) in enumerate(MME)]  # fmt: skip
    if task == "scienceqa_img":
        return [{"question": q, "choices": c, "answer": k, "hint": "", "image": image(30 + i), "task": "closed choice",
                 "grade": "grade2", "subject": "natural science", "topic": "biology", "category": "animals",
                 "skill": "", "lecture": "", "solution": ""} for i, (q, c, k, _) in enumerate(SCIENCEQA)]  # fmt: skip
    return [{"questionId": str(i), "question": q, "question_types": ["form"], "docId": i, "ucsf_document_id": f"d{i}",
             "ucsf_document_page_no": "1", "answers": a, "data_split": "val", "image": image(40 + i)}
            for i, (q, a, _) in enumerate(DOCVQA)]  # fmt: skip


def save_task_dataset(task: str, folder) -> str:
    import datasets

    rows = task_rows(task)
    plain = datasets.Dataset.from_list([{k: v for k, v in r.items() if k != "image"} for r in rows])
    features = {**plain.features, "image": datasets.Image()}
    table = {k: [r[k] for r in rows] for k in rows[0]}
    data = datasets.Dataset.from_dict(table, features=datasets.Features(features))
    datasets.DatasetDict({SPLITS[task]: data}).save_to_disk(str(folder))
    return str(folder)


SCRIPT = {q: said for rows in (TEXTVQA, POPE, DOCVQA) for q, *_, said in rows}
SCRIPT |= {q.replace(" Please answer yes or no.", ""): said for *_, q, _, said in MME}
SCRIPT |= {q: said for q, _, _, said in SCIENCEQA}


def scripted_generate(tokenizer):
    """VLM.generate answering each row with the scripted answer to the question its prompt holds."""

    def generate(self, batch, max_new_tokens, eos_id):
        out = []
        for ids, n in zip(batch.question_ids, batch.question_lengths.tolist()):
            prompt = tokenizer.tok.decode(ids[:n].tolist())
            said = [a for q, a in SCRIPT.items() if q.lower() in prompt.lower()]
            assert len(said) == 1, prompt
            out.append(tokenizer._ids(said[0]) + [eos_id])
        return out

    return generate


@pytest.fixture(scope="module")
def tiny_cell(tmp_path_factory):
    root = tmp_path_factory.mktemp("lmms")
    texts = [q for q in SCRIPT] + list(SCRIPT.values()) + ["Answer the question using a single word or phrase."]
    qwen = tiny_models.save_tiny_qwen2(root / "qwen", texts, hidden_size=32, intermediate_size=64, num_layers=1)
    clip = tiny_models.save_tiny_clip(root / "clip", image_size=IMAGE_SIZE, patch_size=4)
    summary = {"spec": {"source": str(clip), "image_size": IMAGE_SIZE, "feature_layer": -2}}
    encoder = ImageEncoder(summary, root, "cpu")
    spec = {"cell": "q/v4", "llm": {"name": "q", "source": str(qwen)}, "visual_tokens": 4, "compressor": "avgpool"}
    model, tokenizer = build_cell_model(spec, [], encoder.model.config.hidden_size, IMAGE_SIZE // 4)
    cell = harness.LoadedCell(model.eval(), tokenizer, encoder, torch.device("cpu"), max_new_tokens=8)
    data = {task: save_task_dataset(task, root / task) for task in EXPECTED}
    return cell, data


def evaluate(tiny_cell, tasks, tmp_path):
    cell, data = tiny_cell
    benches = [{"name": t, "family": "reasoning", "task": t, "dataset_path": data[t]} for t in tasks]
    return {b["name"]: r for b, r in zip(benches, harness.evaluate_tasks(benches, cell, tmp_path))}


def test_lmms_eval_scores_scripted_answers_as_computed_by_hand(tiny_cell, tmp_path, monkeypatch):
    monkeypatch.setattr(VLM, "generate", scripted_generate(tiny_cell[0].tokenizer))
    results = evaluate(tiny_cell, list(EXPECTED), tmp_path)
    for task, expected in EXPECTED.items():
        scores = results[task]["scores"]
        for metric, value in expected.items():
            assert scores[metric] == pytest.approx(value, abs=1e-9), (task, metric, scores)
        assert results[task]["n_questions"] == len(task_rows(task))
    assert results["mme"]["accuracy"] == pytest.approx(125 / 2000)
    assert results["docvqa_val"]["accuracy"] == pytest.approx(EXPECTED["docvqa_val"]["anls"])
    asked = results["textvqa_val"]["examples"][0]["question"]  # TextVQA's prompt: capitalised, with its post-prompt
    assert asked == "What number is on the shirt?\nAnswer the question using a single word or phrase."
    said = [e["prediction"] for e in results["textvqa_val"]["examples"]]
    assert said == ["Two", "the red one", "dont know", "blue "]  # decoded, then cut at textvqa's "ASSISTANT:"
    assert list((tmp_path / "lmms/submissions").glob("textvqa_submission_*.json"))  # in the cell's folder


def test_lmms_eval_finds_the_vlmscale_model_by_name():
    from lmms_eval.models import get_model

    assert get_model("vlmscale") is harness.CellLMM


def test_the_models_own_answers_are_scored_as_pope_reads_them(tiny_cell, tmp_path):
    """No script: the tiny (untrained) cell answers POPE itself; lmms-eval's accuracy is POPE's reading
    (lower-cased, stripped, equal) of the answers it recorded, and every question got one."""
    result = evaluate(tiny_cell, ["pope"], tmp_path)["pope"]
    said = result["examples"]
    golds = [a for _, a, _ in POPE]
    assert [e["answer"] for e in said] == golds and all(isinstance(e["prediction"], str) for e in said)
    by_hand = sum(e["prediction"].lower().strip() == gold for e, gold in zip(said, golds)) / len(golds)
    assert result["scores"]["pope_accuracy"] == pytest.approx(by_hand)


def reference_logprobs(model, tokenizer, encoder, image, context: str, continuation: str) -> torch.Tensor:
    """log p of each continuation token, computed apart from vlmscale's batching: the chat template rendered
    here, the visual tokens spliced at "<image>", full logits from the LLM, the continuation's positions
    counted by hand."""
    tok = tokenizer.tok
    user = {"role": "user", "content": f"<image>\n{context}"}
    prompt = tok.apply_chat_template([user], add_generation_prompt=True, tokenize=False)
    before, after = prompt.split("<image>")
    pieces = [tok(text, add_special_tokens=False)["input_ids"] for text in (before, after, continuation)]
    embed = model.llm.get_input_embeddings()
    visual = model.visual_embeds(encoder.encode([image]))[0]
    embeds = torch.cat([embed(torch.tensor(pieces[0])), visual, embed(torch.tensor(pieces[1] + pieces[2]))])
    logits = model.llm(inputs_embeds=embeds[None]).logits[0]
    start = len(pieces[0]) + len(visual) + len(pieces[1])  # the continuation's first position
    logprobs = torch.log_softmax(logits[start - 1 :], dim=-1)  # one row per continuation token, then the next
    return logprobs, torch.tensor(pieces[2], dtype=torch.long)


@torch.no_grad()
def test_loglikelihood_matches_a_reference_computation_and_knows_the_greedy_answer(tiny_cell):
    """CellLMM.loglikelihood = the log-probability computed by hand, and `is_greedy` holds exactly for the
    continuation greedy decoding picks. The tiny cell's head is limited (on a copy) to tokens that decode
    to text and back, so its greedy answer can be written as a string."""
    import copy

    from lmms_eval.api.instance import Instance

    tokenizer, encoder = tiny_cell[0].tokenizer, tiny_cell[0].encoder
    model = copy.deepcopy(tiny_cell[0].model)
    head = model.llm.get_output_embeddings()
    tok = tokenizer.tok
    clean = torch.tensor([tok(tok.decode([i]), add_special_tokens=False)["input_ids"] == [i] for i in range(len(tok))])
    biased = torch.nn.Linear(head.in_features, head.out_features, bias=True)
    biased.weight.copy_(head.weight)
    biased.bias.copy_(torch.where(clean[: head.out_features], 0.0, -1e4))
    model.llm.set_output_embeddings(biased)
    cell = harness.CellLMM(cell=dataclasses.replace(tiny_cell[0], model=model))
    rows = task_rows("pope")
    cell.task_dict = {"pope": {"test": rows}}

    def request(i, continuation):
        args = (rows[i]["question"], continuation, lambda doc: [doc["image"]], i, "pope", "test")
        return Instance("loglikelihood", args, i, {"task": "pope", "doc_id": i, "repeats": 1})

    for i, row in enumerate(rows):
        first = reference_logprobs(model, tokenizer, encoder, row["image"], row["question"], "")[0]
        greedy = tok.decode([int(first[0].argmax())])  # greedy decoding's first token, as text
        for continuation, is_greedy in ((greedy, True), (greedy + " zebra", False)):
            expected, ids = reference_logprobs(model, tokenizer, encoder, row["image"], row["question"], continuation)
            ((logp, said_greedy),) = cell.loglikelihood([request(i, continuation)])
            assert logp == pytest.approx(expected[: len(ids)].gather(1, ids[:, None]).sum().item(), abs=1e-4)
            assert said_greedy is is_greedy


@pytest.mark.parametrize(
    "bench, message",
    [
        ({"task": "pope"}, r"benchmarks\[0\] \(facts\): lmms-eval's prompts need an LLM with its own tokenizer"),
        ({"task": "my_task"}, r"benchmarks\[0\] \(facts\).score: name the metric of task 'my_task'"),
        ({"task": "pope", "dataset_path": "no/such/folder"}, r"benchmarks\[0\] \(facts\).dataset_path: no/such"),
    ],
)
def test_task_benchmarks_are_refused_at_config_load_naming_the_key(bench, message):
    from helpers import default_config, load

    from vlmscale import config as vcfg

    cfg = default_config()
    cfg["benchmarks"][0].update(bench)
    with pytest.raises(vcfg.ConfigError, match=message):
        if "tokenizer" in message:
            load(cfg)
        else:  # past the first check (LLMs that read text): the task's own keys
            cfg["llms"] = [{"name": "qwen", "source": "Qwen/Qwen1.5-0.5B"}]
            vcfg._check_task(cfg, cfg["benchmarks"][0], "benchmarks[0] (facts)")


def test_an_unknown_task_is_refused_before_the_model_answers(tiny_cell, tmp_path, monkeypatch):
    def never(*_):
        raise AssertionError("the model answered")

    monkeypatch.setattr(VLM, "generate", never)
    benches = [{"name": "mine", "family": "ocr", "task": "my_task"}, {"name": "pope", "family": "ocr", "task": "pope"}]
    with pytest.raises(ValueError, match=r"benchmarks not among lmms-eval's tasks: mine \(task 'my_task'\)"):
        harness.evaluate_tasks(benches, tiny_cell[0], tmp_path)


def test_a_failing_task_loses_no_other_and_a_rerun_evaluates_only_it(tiny_cell, tmp_path, monkeypatch):
    """Three task benchmarks; POPE's answers raise on the first run. TextVQA and DocVQA are kept in
    eval/.done/; the rerun asks the model POPE's questions only, and every benchmark's result comes back."""
    from vlmscale.evaluation import evaluate
    from vlmscale.fileio import write_json
    from vlmscale.specs import EvalJob

    cell, data = tiny_cell
    write_json(tmp_path / "data/manifest.json", {"vocabulary": [], "benchmarks": {}})
    features = type("Features", (), {"encoder": cell.encoder})()
    monkeypatch.setattr(evaluate, "load_trained", lambda *_: (cell.model, cell.tokenizer))
    monkeypatch.setattr(evaluate, "feature_source", lambda *_: (features, {"hidden_size": 0, "patch_grid": 0}))
    tasks = ["textvqa_val", "pope", "docvqa_val"]
    benches = tuple({"name": t, "family": "ocr", "task": t, "dataset_path": data[t]} for t in tasks)
    spec = {"cell": "q/v4", "llm": {"name": "q"}, "visual_tokens": 4, "compressor": "avgpool", "train": {}}
    job = EvalJob(spec, benches, str(tmp_path / "data"), str(tmp_path / "tower.json"), str(tmp_path / "ckpt"),
                  str(tmp_path / "eval"), max_new_tokens=8)  # fmt: skip
    scripted, asked = scripted_generate(cell.tokenizer), []

    def pope_fails(self, batch, max_new_tokens, eos_id):
        prompts = [
            cell.tokenizer.tok.decode(ids[:n].tolist())
            for ids, n in zip(batch.question_ids, batch.question_lengths.tolist())
        ]
        asked.extend(prompts)
        if any("in the image" in p for p in prompts):
            raise RuntimeError("CUDA out of memory (simulated)")
        return scripted(self, batch, max_new_tokens, eos_id)

    monkeypatch.setattr(VLM, "generate", pope_fails)
    with pytest.raises(evaluate.EvaluationIncomplete, match=r"1 of 3 benchmarks failed \(pope: RuntimeError"):
        evaluate.main(job)
    assert sorted(p.name for p in (tmp_path / "eval/.done").glob("*.json")) == ["docvqa_val.json", "textvqa_val.json"]
    asked.clear()
    monkeypatch.setattr(
        VLM,
        "generate",
        lambda self, b, n, e: (asked.extend(["pope"] * len(b.question_ids)), scripted(self, b, n, e))[1],
    )
    results = evaluate.main(job)["results"]
    assert asked == ["pope"] * len(POPE)  # only the missing benchmark was asked
    assert [r["benchmark"] for r in results] == tasks
    assert results[0]["scores"]["exact_match"] == pytest.approx(EXPECTED["textvqa_val"]["exact_match"])
    assert results[1]["scores"]["pope_accuracy"] == pytest.approx(EXPECTED["pope"]["pope_accuracy"])
    assert all((tmp_path / f"eval/{t}.json").exists() for t in tasks)


def test_a_none_aggregate_scores_zero_with_a_warning_and_a_score_out_of_range_is_refused():
    bench = {"name": "mathvista", "family": "reasoning", "task": "mathvista_testmini_format"}
    none = {"results": {bench["task"]: {"llm_as_judge_eval,none": None}}}
    result = harness.task_result(bench, none)
    assert result["accuracy"] == 0.0 and "reported llm_as_judge_eval as None" in result["warnings"][0]
    mine = {"name": "mine", "family": "ocr", "task": "my_task", "score": "points"}
    with pytest.raises(harness.ScoreOutOfRange, match=r"benchmark mine: points = 37 .* set benchmarks\[\].score_max"):
        harness.task_result(mine, {"results": {"my_task": {"points,none": 37}}})


def test_the_decode_cap_bounds_a_tasks_request_and_is_counted(tiny_cell):
    from lmms_eval.api.instance import Instance

    cell = harness.CellLMM(cell=dataclasses.replace(tiny_cell[0], max_new_tokens_cap=3), batch_size="auto")
    assert cell.batch_size == 16
    rows = task_rows("pope")
    cell.task_dict = {"pope": {"test": rows}}
    limits = []
    cell.model.generate = lambda batch, limit, eos: limits.append(limit) or [[5, 6, 7]] * len(batch.question_ids)
    args = [
        (r["question"], {"max_new_tokens": 16384}, lambda doc: [doc["image"]], i, "pope", "test")
        for i, r in enumerate(rows)
    ]
    cell.generate_until(
        [Instance("generate_until", a, a[3], {"task": "pope", "doc_id": a[3], "repeats": 1}) for a in args]
    )
    del cell.model.generate
    assert limits == [3]
    assert cell.decode_caps["pope"] == {"requested": 16384, "requests_capped": len(rows), "answers_at_cap": len(rows)}


def test_a_judge_task_is_refused_without_the_key_unless_judge_none(monkeypatch):
    from helpers import default_config, load

    from vlmscale import config as vcfg

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    cfg = default_config()
    cfg["benchmarks"][0].update(task="mathvista_testmini_format")
    with pytest.raises(
        vcfg.ConfigError,
        match=r"benchmarks\[0\] \(\w+\): task 'mathvista_testmini_format' is scored .* needs OPENAI_API_KEY",
    ):
        load(cfg)
    cfg["benchmarks"][0]["judge"] = "none"
    vcfg._check_judge(cfg["benchmarks"][0], "benchmarks[0]")  # accepted: scores marked rule-based only
    with pytest.raises(vcfg.ConfigError, match="or use the offline task 'mmbench_en_dev_static'"):
        vcfg._check_judge({"task": "mmbench_en_dev"}, "benchmarks[1] (mmbench)")


def test_gqa_from_a_local_copy_is_refused_naming_the_hub(tmp_path):
    from helpers import default_config

    from vlmscale import config as vcfg

    cfg = default_config()
    cfg["llms"] = [{"name": "q", "source": str(tmp_path)}]  # an LLM with its own tokenizer (not loaded here)
    bench = {"name": "gqa", "family": "reasoning", "task": "gqa", "dataset_path": str(tmp_path)}
    with pytest.raises(vcfg.ConfigError, match=r"benchmarks\[0\]\.dataset_path: task 'gqa' loads its data from the"):
        vcfg._check_task(cfg, bench, "benchmarks[0]")
    vcfg._check_task(cfg, {**bench, "task": "pope"}, "benchmarks[0]")  # another task's local copy is fine
