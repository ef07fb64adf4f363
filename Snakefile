# vlmscale: train a grid of LLM sizes x visual-token counts, evaluate, count FLOPs, fit Y(N, V), find the
# compute-optimal frontier. Thin on purpose: rules live in workflow/rules, logic in src/vlmscale.
from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "config.yaml"


validate(config, "workflow/schemas/config.schema.yaml", set_default=True)


include: "workflow/rules/common.smk"


wildcard_constraints:
    llm="|".join(re.escape(m) for m in LLMS),
    V="|".join(VISUAL_TOKENS),
    seed="|".join(SEEDS),
    compressor="|".join(COMPRESSORS),
    benchmark="|".join(re.escape(b) for b in BENCHMARKS),
    family="|".join(re.escape(f) for f in FAMILIES),


include: "workflow/rules/data.smk"
include: "workflow/rules/vision.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/flops.smk"
include: "workflow/rules/aggregate.smk"
include: "workflow/rules/law.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/track.smk"


onstart:
    # Create the MLflow store, experiment and parent run once, before parallel jobs: concurrent first
    # creation corrupts sqlite. A tracking server that is down only costs the browsing view: cells
    # still run, and the track_sync rule replays their results once it is back.
    uri = config["tracking"]["uri"]
    if (
        not uri.startswith("sqlite:///")
        or not Path(uri[len("sqlite:///") :]).exists()
    ):
        shell(
            "vlmscale init-tracking --uri {uri:q} --experiment {exp:q} --grid {grid:q} "
            "--artifact-root {root:q} > /dev/null || echo 'vlmscale: MLflow store {uri} unreachable; "
            "results are kept in JSON and replayed by track_sync' >&2",
            uri=uri,
            exp=config["tracking"]["experiment"],
            grid=config["grid"]["name"],
            root=f"{RESULTS}/mlartifacts",
        )


onsuccess:
    # A run that wrote the report ends by saying what it found: each law's V* and whether to trust it.
    if wrote_report():
        shell("vlmscale summary --results {RESULTS:q} --laws {LAWS:q}")


rule all:
    default_target: True
    input:
        f"{RESULTS}/report.md",
        f"{RESULTS}/law/frontier.csv",
        f"{RESULTS}/mlflow_synced.json",
