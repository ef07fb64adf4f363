"""The allowed values of every enumerated setting, in one place (no heavy imports: the workflow reads it).

The config schema types these keys as strings; `vlmscale.config.check` refuses a value not listed here,
naming the key, and the CLI offers the same lists. The implementations (law forms, compressors, metrics,
executors) are keyed by these names.
"""

from __future__ import annotations

LAW_FORMS = {"paper": 4, "paper-qv": 4, "additive": 5}  # each law form and its number of free parameters
COMPRESSORS = ("avgpool", "tokenpacker", "quecc")
MULTI_LEVEL_COMPRESSORS = ("tokenpacker", "quecc")  # read the encoder's multi-level features too
METRICS = ("exact", "exact_match", "vqa", "multiple_choice", "multiple_choice_lenient", "yes_no")
EXECUTORS = ("inline", "debug", "local", "slurm")
# task: (the metric the law uses, its maximum). Tasks that are groups report their metric under the group.
TASK_SCORES = {
    "mme": ("mme_perception_score", 2000.0),  # ten perception categories x (acc + acc+), 200 each
    "gqa": ("exact_match", 1.0),
    "ai2d": ("exact_match", 1.0),
    "mmbench_en_dev": ("gpt_eval_score", 100.0),
    "mmbench_en_dev_static": ("gpt_eval_score", 100.0),  # offline: regex/substring option reading, no GPT
    "mmmu_val": ("mmmu_acc", 1.0),
    "scienceqa_img": ("exact_match", 1.0),
    "mathvista_testmini_format": ("llm_as_judge_eval", 100.0),  # LLaVA's answer-format prompt; GPT extraction
    "pope": ("pope_accuracy", 1.0),
    "chartqa": ("relaxed_overall", 1.0),
    "textvqa_val": ("exact_match", 1.0),
    "docvqa_val": ("anls", 1.0),
    "ocrbench": ("ocrbench_accuracy", 1.0),
}
# lmms-eval tasks whose scoring asks a GPT judge (OPENAI_API_KEY), by name prefix: MathVista's answer
# extraction, MMBench's option matching. Without a key they still report a number (MathVista: the option
# nearest an empty extraction; MMBench: a random option after retries), so the config check refuses them
# unless the benchmark says `judge: none`. OFFLINE_TASKS need no judge (lmms-eval's rule-based variants).
JUDGE_TASK_PREFIXES = ("mathvista", "mmbench")
OFFLINE_TASKS = ("mmbench_en_dev_static",)
JUDGE_KEY = "OPENAI_API_KEY"


def needs_judge(task: str) -> bool:
    return task.startswith(JUDGE_TASK_PREFIXES) and task not in OFFLINE_TASKS


# Questions per task (the splits lmms-eval 0.7.3 evaluates) and the decode lengths tasks ask for, by name
# prefix (others: evaluation.max_new_tokens): what `vlmscale plan` prices evaluation GPU-hours from.
TASK_QUESTIONS = {"mme": 2374, "gqa": 12578, "ai2d": 3088, "mmbench_en_dev": 4329, "mmbench_en_dev_static": 4329,
                  "mmmu_val": 900, "scienceqa_img": 2017, "mathvista_testmini_format": 1000, "pope": 9000,
                  "chartqa": 2500, "textvqa_val": 5000, "docvqa_val": 5349, "ocrbench": 1000}  # fmt: skip
TASK_MAX_NEW_TOKENS = {"mathvista": 16384, "mmbench": 1024, "pope": 128, "ocrbench": 128, "mmmu": 128}

GPUS = ("a100", "h100")  # the GPUs `vlmscale plan` knows by name (vlmscale.orchestration.plan.GPUS)

# config key -> allowed values; "[]" stands for every item of a list
BY_KEY = {
    "law.form": tuple(LAW_FORMS),
    "compressor": COMPRESSORS,
    "benchmarks[].metric": METRICS,
    "launch.executor": EXECUTORS,
    "plan.gpu": GPUS,
}

# Requests decoded together in evaluation (the plan prices the larger of the two KV caches):
EVAL_TASK_BATCH = 16  # an lmms-eval task's requests (vlmscale.evaluation.lmms.CellLMM)
EVAL_FOLDER_BATCH = 64  # a benchmark folder's questions (vlmscale.evaluation.evaluate.predict)
EVAL_FOLDER_PROMPT_TOKENS = 64  # a folder question's text tokens, generously (one short question)

# lmms-eval 0.7.3 tasks whose process_docs loads a hub dataset itself (GQA: lmms-lab-encoder/GQA's images),
# so a local dataset_path cannot take them offline.
HUB_BOUND_TASK_PREFIXES = ("gqa",)
