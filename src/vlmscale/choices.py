"""The allowed values of every enumerated setting, in one place (no heavy imports: the workflow reads it).

The config schema types these keys as strings; `vlmscale.config.check` refuses a value not listed here,
naming the key, and the CLI offers the same lists. The implementations (law forms, compressors, metrics,
executors) are keyed by these names.
"""

from __future__ import annotations

LAW_FORMS = {"paper": 4, "paper-qv": 4, "additive": 5}  # each law form and its number of free parameters
COMPRESSORS = ("avgpool", "tokenpacker", "quecc")
METRICS = ("exact", "exact_match", "vqa", "multiple_choice", "multiple_choice_lenient", "yes_no")
EXECUTORS = ("inline", "debug", "local", "slurm")
GPUS = ("a100", "h100")  # the GPUs `vlmscale plan` knows by name (vlmscale.plan.GPUS)

# config key -> allowed values; "[]" stands for every item of a list
BY_KEY = {
    "law.form": tuple(LAW_FORMS),
    "compressor": COMPRESSORS,
    "benchmarks[].metric": METRICS,
    "launch.executor": EXECUTORS,
    "plan.gpu": GPUS,
}
