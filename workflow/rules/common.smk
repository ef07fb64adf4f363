# Shared definitions: validated config -> cells, canonical params, wildcard constraints, tracking store.
import re
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
    raise WorkflowError("cells that will not fit their GPUs (see `vlmscale plan --configfile ...`):\n  " + "\n  ".join(UNFIT))

RESULTS = config["results"]
# Not a param: where the checkpoints live (scratch) decides nothing they hold; moving the folder retrains nothing.
CHECKPOINTS = vcfg.checkpoints_root(config)
LLMS = [m["name"] for m in config["llms"]]
VISUAL_TOKENS = [str(v) for v in config["grid"]["visual_tokens"]]
BENCHMARKS = [b["name"] for b in config["benchmarks"]]
FAMILIES = sorted({b["family"] for b in config["benchmarks"]})
SEEDS = [str(s) for s in vcfg.seeds(config)]
CELLS = [c.id for c in vcfg.cells(config)]
ARCHITECTURES = [c.architecture_id for c in vcfg.architectures(config)]
LAUNCH = config["launch"]



wildcard_constraints:
    llm="|".join(re.escape(m) for m in LLMS),
    V="|".join(VISUAL_TOKENS),
    seed="|".join(SEEDS),
    benchmark="|".join(re.escape(b) for b in BENCHMARKS),
    family="|".join(re.escape(f) for f in FAMILIES),


def code_param(*modules):
    # The code a rule runs: the module computing its outputs and every vlmscale module it imports
    # (identity.code_closure), hashed as a param rather than input files: an edit reruns the rule, while
    # a project moved or copied elsewhere (other paths, same content) reruns nothing.
    return identity.fingerprint(*modules)


def cell_spec(wildcards):
    return vcfg.as_param(vcfg.cell_spec(config, wildcards.llm, int(wildcards.V), int(wildcards.seed)))


def training_priority(wildcards):
    # Costliest cells first; a priority is not a param: changing it reruns nothing.
    return vcfg.training_cost(config, wildcards.llm, int(wildcards.V))


def tracking_param():
    t = config["tracking"]
    return vcfg.as_param({"uri": t["uri"], "experiment": t["experiment"], "grid": config["grid"]["name"]})


# Operational (when to log and checkpoint; vcfg.OPERATIONAL_TRAIN_KEYS) and tracking settings reach the job
# as resources / plain flags, not params: tuning them, or moving the MLflow server, retrains nothing.
def train_ops(wildcards):
    return vcfg.as_param(vcfg.operational_spec(config, wildcards.llm))


TRACKING = tracking_param()


def launch_resources(wildcards):
    # A resource, not a param: a new partition or time limit reruns nothing.
    return vcfg.as_param(vcfg.launch_resources(config, getattr(wildcards, "llm", None)))


def single_task_resources(wildcards):
    return vcfg.as_param(vcfg.launch_resources(config, getattr(wildcards, "llm", None), single_task=True))


# Not result-affecting, so passed as plain flags rather than params (changing them reruns nothing).
LAUNCH_FLAGS = f"--executor {LAUNCH['executor']} --threads {LAUNCH['threads']} --results {RESULTS}"


onstart:
    # Create the MLflow store, experiment and parent run once, before parallel jobs: concurrent first
    # creation corrupts sqlite. A tracking server that is down only costs the browsing view: cells
    # still run, and the track_sync rule replays their results once it is back.
    uri = config["tracking"]["uri"]
    if not uri.startswith("sqlite:///") or not Path(uri[len("sqlite:///"):]).exists():
        shell(
            "vlmscale init-tracking --uri {uri:q} --experiment {exp:q} --grid {grid:q} "
            "--artifact-root {root:q} > /dev/null || echo 'vlmscale: MLflow store {uri} unreachable; "
            "results are kept in JSON and replayed by track_sync' >&2",
            uri=uri, exp=config["tracking"]["experiment"], grid=config["grid"]["name"],
            root=f"{RESULTS}/mlartifacts",
        )
