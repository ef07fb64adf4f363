# Shared definitions: validated config -> cells, canonical params, wildcard constraints, tracking store.
import os
import re
import time
from pathlib import Path

from snakemake.exceptions import WorkflowError

from vlmscale import config as vcfg
from vlmscale import identity
from vlmscale.orchestration import plan

try:
    vcfg.check(config)
except vcfg.ConfigError as exc:
    raise WorkflowError(f"config error: {exc}")
# With a GPU declared (plan.gpu), a cell that will not fit its GPUs stops the grid before anything is submitted.
UNFIT = plan.unfit_cells(config)
if UNFIT:
    raise WorkflowError(
        "cells that will not fit their GPUs (see `vlmscale plan --configfile ...`):\n  "
        + "\n  ".join(UNFIT)
    )

RESULTS = config["results"]
RUN_STARTED = time.time()


def wrote_report() -> bool:
    """Whether this run wrote the report (a run that only trained a cell or found nothing to do did not)."""
    written = Path(RESULTS) / "report.md"
    return written.exists() and written.stat().st_mtime >= RUN_STARTED


# Not a param: where the checkpoints live (scratch) decides nothing they hold; moving the folder retrains nothing.
CHECKPOINTS = vcfg.checkpoints_root(config)
LLMS = [m["name"] for m in config["llms"]]
VISUAL_TOKENS = [str(v) for v in config["grid"]["visual_tokens"]]
BENCHMARKS = [b["name"] for b in config["benchmarks"]]
FAMILIES = sorted({b["family"] for b in config["benchmarks"]})
SEEDS = [str(s) for s in vcfg.seeds(config)]
COMPRESSORS = vcfg.compressors(config)
CELLS = [c.id for c in vcfg.cells(config)]
ARCHITECTURES = [c.architecture_id for c in vcfg.architectures(config)]
# One law per (family, compressor)
LAWS = [f"{RESULTS}/law/{family}/{c}.json" for family in FAMILIES for c in COMPRESSORS]
LAUNCH = config["launch"]


def code_param(*modules):
    # The code behind a rule's outputs, the module computing them and every vlmscale module it imports
    # (identity.code_closure), hashed as a param rather than input files. An edit reruns the rule, while
    # a project moved or copied elsewhere (other paths, same content) reruns nothing.
    return identity.fingerprint(*modules)


def cell_spec(wildcards):
    return vcfg.as_param(
        vcfg.cell_spec(
            config,
            wildcards.llm,
            int(wildcards.V),
            int(wildcards.seed),
            wildcards.compressor,
        )
    )


def checkpoint_dir(wildcards):
    # A cell's checkpoints under the checkpoints root (`checkpoints:`, scratch; not a declared output).
    return f"{CHECKPOINTS}/{wildcards.llm}/{wildcards.compressor}/v{wildcards.V}/s{wildcards.seed}"


def training_priority(wildcards):
    # Costliest cells first; a priority is not a param: changing it reruns nothing.
    return vcfg.training_cost(config, wildcards.llm, int(wildcards.V))


def tracking_param():
    t = config["tracking"]
    return vcfg.as_param(
        {"uri": t["uri"], "experiment": t["experiment"], "grid": config["grid"]["name"]}
    )


# Operational (when to log and checkpoint; vcfg.OPERATIONAL_TRAIN_KEYS) and tracking settings reach the job
# as resources / plain flags, not params: tuning them, or moving the MLflow server, retrains nothing.
def train_ops(wildcards):
    return vcfg.as_param(vcfg.operational_spec(config, wildcards.llm))


TRACKING = tracking_param()


def launch_resources(wildcards):
    # A resource, not a param: a new partition or time limit reruns nothing.
    return vcfg.as_param(vcfg.launch_resources(config, getattr(wildcards, "llm", None)))


def single_task_resources(wildcards):
    return vcfg.as_param(
        vcfg.launch_resources(config, getattr(wildcards, "llm", None), single_task=True)
    )


# Not result-affecting, so passed as resources rather than params (changing them reruns nothing).
LAUNCH_FLAGS = (
    f"--executor {LAUNCH['executor']} --threads {LAUNCH['threads']} --results {RESULTS}"
)


def data_files(wildcards):
    # Real data: the conversation JSON is tracked, so replacing it re-checks the data (the image folder is
    # not: hashing every image on each invocation would cost more than it protects).
    return [config["data"]["train_json"]] if config["data"]["source"] == "llava" else []


def eval_spec(wildcards):
    return vcfg.as_param(
        {
            "model": vcfg.cell_spec(
                config,
                wildcards.llm,
                int(wildcards.V),
                int(wildcards.seed),
                wildcards.compressor,
            ),
            "benchmarks": [vcfg.benchmark_spec(config, b) for b in BENCHMARKS],
            "max_new_tokens": config["evaluation"]["max_new_tokens"],
            "max_new_tokens_cap": config["evaluation"]["max_new_tokens_cap"],
            "dtype": config["evaluation"]["dtype"],
        }
    )


def evaluation_resources(wildcards):
    # Its own request (evaluation.resources), not the LLM's training one; a resource, not a param.
    return vcfg.as_param(vcfg.evaluation_resources(config, wildcards.llm))


def flops_spec(wildcards):
    return vcfg.as_param(
        {
            "architecture": vcfg.architecture_spec(
                config, wildcards.llm, int(wildcards.V), wildcards.compressor
            ),
            "vision": vcfg.vision_spec(config),
            "text_tokens": config["flops"]["text_tokens"],
        }
    )
