# vlmscale: train a grid of LLM sizes x visual-token counts, evaluate, count FLOPs, fit Y(N, V), find the
# compute-optimal frontier. Thin on purpose: rules live in workflow/rules, logic in src/vlmscale.
from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "config.yaml"


validate(config, "workflow/schemas/config.schema.yaml", set_default=True)


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/vision.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/flops.smk"
include: "workflow/rules/aggregate.smk"
include: "workflow/rules/law.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/track.smk"


rule all:
    input:
        f"{RESULTS}/report.md",
        f"{RESULTS}/law/frontier.csv",
        f"{RESULTS}/mlflow_synced.json",
    default_target: True
