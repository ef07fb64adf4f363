"""One typed place that turns a config mapping into grid cells with canonical, hashable specs.

Kept free of torch/transformers imports: the Snakefile imports it on every invocation, and a no-op
rerun must stay fast.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from pathlib import Path

from vlmscale import choices
from vlmscale.choices import LAW_FORMS
from vlmscale.fileio import canonical_json, spec_hash

KNOWN_ARCHS = ("qwen2", "llama", "mistral", "gpt2")
SCHEMA = Path(__file__).resolve().parents[2] / "workflow/schemas/config.schema.yaml"


class ConfigError(ValueError):
    """A config problem, reported with the key that holds it."""


@dataclass(frozen=True)
class Cell:
    """One trained model of the grid: an LLM, a visual-token count, a training seed and a compressor."""

    llm: str
    visual_tokens: int
    seed: int = 0
    compressor: str = "avgpool"

    @property
    def id(self) -> str:
        return f"{self.llm}/{self.compressor}/v{self.visual_tokens}/s{self.seed}"

    @property
    def architecture_id(self) -> str:
        """(LLM, compressor, V) alone: what inference cost depends on, shared by every seed."""
        return f"{self.llm}/{self.compressor}/v{self.visual_tokens}"


def deep_merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        out[key] = deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def patch_grid(cfg: dict) -> int:
    return cfg["vision"]["image_size"] // cfg["vision"]["patch_size"]


CLIP_MULTI_LEVEL_LAYERS = (12, 16, 22, 23)  # both references' feature_select layers for CLIP-L


def compressors(cfg: dict) -> list[str]:
    """The grid's compressors: grid.compressors, or the one `compressor` (avgpool when neither is given)."""
    return list(cfg["grid"].get("compressors") or [cfg.get("compressor") or "avgpool"])


def multi_level_layers(cfg: dict, compressor: str | None = None) -> list[int]:
    """The encoder hidden_states the multi-level features concatenate. With a compressor: [] when it reads
    the single level only (avgpool). Without: the layers the vision stage encodes for every compressor of
    any grid on this tower, so adding a compressor to the grid leaves the tower (and the other cells)
    alone. Unset: the references' layers for CLIP, every block's output for the tiny tower."""
    if compressor is not None and compressor not in choices.MULTI_LEVEL_COMPRESSORS:
        return []
    vision = cfg["vision"]
    if vision.get("multi_level_layers"):
        return [int(x) for x in vision["multi_level_layers"]]
    if vision["source"] == "tiny":
        return list(range(1, vision["num_layers"] + 1))
    return list(CLIP_MULTI_LEVEL_LAYERS)


def position_features(cfg: dict, compressor: str) -> bool:
    """avgpool's optional position features; tokenpacker and quecc are built as their references (none)."""
    return bool(cfg.get("position_features")) and compressor == "avgpool"


def _check_stage_lengths(cfg: dict) -> None:
    """Each training stage says how long it trains: steps, or epochs over its data (not both)."""
    for model in cfg["llms"]:
        train = deep_merge(cfg["train"], model.get("train", {}))
        for stage in ("stage1", "stage2"):
            given = [k for k in ("steps", "epochs") if k in train.get(stage, {})]
            if len(given) != 1:
                raise ConfigError(f"train.{stage}: give steps or epochs, one of them ({model['name']} has {given})")


def _check_adapter(cfg: dict) -> None:
    _check_stage_lengths(cfg)
    if cfg.get("compressor") and cfg["grid"].get("compressors"):
        raise ConfigError(
            "compressor and grid.compressors: give one of them (grid.compressors: [a, b] trains every cell "
            "once per compressor; compressor: a is the same as grid.compressors: [a])"
        )
    if cfg.get("position_features") and "avgpool" not in compressors(cfg):
        raise ConfigError(
            f"position_features: only the avgpool adapter takes them; {compressors(cfg)} are built as their "
            f"reference code builds them, without them: set position_features: false"
        )
    vision = cfg["vision"]
    if vision["source"] == "tiny":  # a pretrained encoder's depth is checked when the vision stage reads it
        n = vision["num_layers"]
        bad = [x for x in multi_level_layers(cfg) if not -(n + 1) <= x <= n]
        if bad:
            raise ConfigError(f"vision.multi_level_layers: {bad} outside the tiny tower's hidden states 0..{n}")


def producible_token_counts(cfg: dict, compressor: str) -> list[int]:
    """avgpool pools to any k x k <= the grid; tokenpacker and quecc need k to divide the grid (equal regions)."""
    side = patch_grid(cfg)
    if compressor == "avgpool":
        return [k * k for k in range(1, side + 1)]
    return [k * k for k in range(1, side + 1) if side % k == 0]


def check(cfg: dict, data: bool = True) -> dict:
    """Semantic checks the JSON schema cannot express. Raises ConfigError naming the key.
    data=False skips the data's locations and files (`vlmscale plan` runs before any download)."""
    _check_unique([m["name"] for m in cfg["llms"]], "llms[].name")
    _check_unique([b["name"] for b in cfg["benchmarks"]], "benchmarks[].name")
    _check_unique(cfg["grid"]["visual_tokens"], "grid.visual_tokens")
    _check_unique(compressors(cfg), "grid.compressors")
    _check_choices(cfg)
    _check_adapter(cfg)
    vision = cfg["vision"]
    if vision["image_size"] % vision["patch_size"]:
        raise ConfigError(
            f"vision.patch_size ({vision['patch_size']}) must divide vision.image_size ({vision['image_size']})"
        )
    for compressor in compressors(cfg):
        allowed = producible_token_counts(cfg, compressor)
        for v in cfg["grid"]["visual_tokens"]:
            if v not in allowed:
                raise ConfigError(
                    f"grid.visual_tokens: the {compressor} compressor cannot make V={v} tokens from a "
                    f"{patch_grid(cfg)}x{patch_grid(cfg)} patch grid; choose from {allowed}"
                )
    for i, llm in enumerate(cfg["llms"]):
        _check_llm(llm, f"llms[{i}] ({llm['name']})")
        _check_batches(cfg, llm["name"], f"llms[{i}] ({llm['name']})")
    if data:
        _check_data(cfg)
    _check_cached_aspect(cfg)
    _check_local_source(vision["source"], "vision.source", allowed=("tiny",))
    if data:  # `vlmscale plan` runs before the download
        _check_models_downloaded(cfg)
    _check_grid_fits_law(cfg)
    families = {b["family"] for b in cfg["benchmarks"]}
    if cfg["law"]["families"]:
        unknown = sorted(set(cfg["law"]["families"]) - families)
        if unknown:
            raise ConfigError(f"law.families: {unknown} have no benchmarks (families: {sorted(families)})")
    return cfg


def _check_choices(cfg: dict) -> None:
    values = {
        "law.form": [cfg["law"]["form"]],
        "compressor": compressors(cfg),
        "launch.executor": [cfg["launch"]["executor"]],
        "benchmarks[].metric": [b.get("metric", "exact") for b in cfg["benchmarks"]],
    }
    gpu = cfg.get("plan", {}).get("gpu")
    if isinstance(gpu, str):
        values["plan.gpu"] = [gpu]
    for key, found in values.items():
        for value in found:
            if value not in choices.BY_KEY[key]:
                raise ConfigError(f"{key}: {value!r} is not one of {list(choices.BY_KEY[key])}")


def _check_batches(cfg: dict, llm: str, where: str) -> None:
    """Each stage's batch splits evenly over the LLM's processes and micro-batches (launch resources)."""
    from vlmscale.specs import TrainSettings

    world = world_size(cfg, llm)
    for stage in TrainSettings.from_spec(cell_spec(cfg, llm, cfg["grid"]["visual_tokens"][0])["train"]).stages:
        try:
            stage.accumulation(world)
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}") from None


def _check_grid_fits_law(cfg: dict) -> None:
    """A grid too small for its law would train every cell and only fail at the fit: refuse it now."""
    # one law per (family, compressor), fitted to one point per (LLM, V)
    form, n_cells = cfg["law"]["form"], len(cfg["llms"]) * len(cfg["grid"]["visual_tokens"])
    if len(cfg["llms"]) < 2:
        raise ConfigError("llms: the law's N exponent needs at least 2 LLM sizes")
    if len(cfg["grid"]["visual_tokens"]) < 2:
        raise ConfigError("grid.visual_tokens: the law's V exponent needs at least 2 visual-token counts")
    if n_cells <= LAW_FORMS[form]:
        raise ConfigError(
            f"grid: {n_cells} cells cannot fit the {form} law's {LAW_FORMS[form]} parameters; "
            f"add LLM sizes (llms) or visual-token counts (grid.visual_tokens)"
        )


def _check_data(cfg: dict) -> None:
    data = cfg["data"]
    if data["source"] == "llava":
        from vlmscale.data import llava  # no heavy imports: PIL loads only when images are checked

        problems = llava.check_paths(data, benchmark_folder=any(not b.get("task") for b in cfg["benchmarks"]))
        if problems:
            raise ConfigError("; ".join(problems))
    for i, bench in enumerate(cfg["benchmarks"]):
        if bench.get("task"):
            _check_task(cfg, bench, f"benchmarks[{i}] ({bench['name']})")
            continue
        if data["source"] == "synthetic" and bench.get("metric") == "vqa":
            raise ConfigError(
                f"benchmarks[{i}] ({bench['name']}): metric vqa scores against ten annotator answers per "
                f"question; the synthetic data set has one (use exact)"
            )
        if data["source"] == "synthetic" and bench["name"] not in data["tasks"]:
            raise ConfigError(
                f"benchmarks[{i}].name: {bench['name']!r} is not a task of the synthetic data set "
                f"(data.tasks: {data['tasks']})"
            )
        if data["source"] == "llava":
            problem = llava.check_benchmark_files(data, bench["name"], bench.get("metric", "exact"))
            if problem:
                raise ConfigError(f"benchmarks[{i}] ({bench['name']}): {problem}")


def _check_task(cfg: dict, bench: dict, where: str) -> None:
    """A benchmark that lmms-eval scores: the extra installed, LLMs that read text, a known score, its data."""
    import importlib.util

    from vlmscale.choices import TASK_SCORES

    _check_judge(bench, where)
    if importlib.util.find_spec("lmms_eval") is None:
        raise ConfigError(f"{where}: task {bench['task']!r} needs lmms-eval: pip install -e '.[lmms]'")
    word_level = [m["name"] for m in cfg["llms"] if m.get("source", "config") == "config"]
    if word_level:
        raise ConfigError(
            f"{where}: lmms-eval's prompts need an LLM with its own tokenizer; {word_level} are built from a "
            f"config with the synthetic grid's word vocabulary (give them a Hugging Face id or folder as source)"
        )
    if "score" not in bench and bench["task"] not in TASK_SCORES:
        raise ConfigError(f"{where}.score: name the metric of task {bench['task']!r} that the law uses")
    path = bench.get("dataset_path")
    if path and not Path(path).is_dir():
        raise ConfigError(f"{where}.dataset_path: {path} is not a folder (expected datasets' save_to_disk)")
    if path and bench["task"].startswith(choices.HUB_BOUND_TASK_PREFIXES):
        raise ConfigError(
            f"{where}.dataset_path: task {bench['task']!r} loads its data from the Hugging Face Hub in its own "
            f"process_docs whatever dataset_path says (lmms-eval 0.7.3); evaluate it where the hub is reachable "
            f"(drop dataset_path), or give its questions as a benchmark folder (no task)"
        )


def _check_judge(bench: dict, where: str) -> None:
    """A task scored through lmms-eval's GPT judge would, without a key, report a number that does not
    depend on the model (choices.JUDGE_TASK_PREFIXES): refuse it before any job starts."""
    import os

    if choices.needs_judge(bench["task"]) and bench.get("judge") != "none" and not os.environ.get(choices.JUDGE_KEY):
        offline = [t for t in choices.OFFLINE_TASKS if t.startswith(bench["task"])]
        raise ConfigError(
            f"{where}: task {bench['task']!r} is scored by lmms-eval's GPT judge, which needs {choices.JUDGE_KEY} "
            f"(unset here); set it, or set {where.split(' ')[0]}.judge: none to keep its rule-based reading only "
            f"(reported as such)" + (f", or use the offline task {offline[0]!r}" if offline else "")
        )


def evaluation_resources(cfg: dict, llm: str) -> dict:
    """An evaluation job's Slurm request: one process on one GPU, not the LLM's training request (8 GPUs,
    960 GB for 14B). launch.slurm, the LLM's placement (partition, account, qos, constraint: where its GPUs
    are), one GPU where GPUs are requested, memory and time sized for one bf16 copy of the weights
    (EVAL_RESOURCE_DEFAULTS), then evaluation.resources on top."""
    resources = dict(cfg["launch"].get("slurm") or {})
    trained = llm_by_name(cfg, llm).get("resources") or {}
    resources.update({k: trained[k] for k in ("partition", "account", "qos", "constraint") if k in trained})
    resources.update(nodes=1, tasks_per_node=1)
    if resources.get("gpus_per_node") or trained.get("gpus_per_node"):
        resources["gpus_per_node"] = 1
        resources |= {k: v for k, v in EVAL_RESOURCE_DEFAULTS.items() if k not in (cfg["launch"].get("slurm") or {})}
    return merge_resources(resources, cfg.get("evaluation", {}).get("resources") or {})


def merge_resources(base: dict, top: dict) -> dict:
    """`top`'s keys over `base`'s, except the two that add up: `setup` lines run after the global ones
    (a global `module load` stays), `sbatch` options join the global ones (the same option: `top` wins)."""
    merged = {**base, **top}
    if base.get("setup") and top.get("setup"):
        merged["setup"] = list(base["setup"]) + [line for line in top["setup"] if line not in base["setup"]]
    if base.get("sbatch") and top.get("sbatch"):
        merged["sbatch"] = {**base["sbatch"], **top["sbatch"]}
    return merged


# A GPU evaluation job's host memory and time where launch.slurm names none: 14B in bf16 is 28 GB, loaded
# once; twelve benchmarks at the decode cap fit a working day (README: Planning a grid).
EVAL_RESOURCE_DEFAULTS = {"mem_gb": 64, "time_min": 480}


def _check_unique(values: list, key: str) -> None:
    seen = set()
    for v in values:
        if v in seen:
            raise ConfigError(f"{key}: duplicate value {v!r}")
        seen.add(v)


def _check_llm(llm: dict, where: str) -> None:
    if llm["source"] == "config":
        if llm.get("arch") not in KNOWN_ARCHS:
            raise ConfigError(
                f"{where}.arch: unknown model architecture {llm.get('arch')!r}; known: {list(KNOWN_ARCHS)}"
            )
        for key in ("hidden_size", "intermediate_size", "num_layers", "num_heads"):
            if key not in llm:
                raise ConfigError(f"{where}.{key}: required when source is 'config'")
        if llm["hidden_size"] % llm["num_heads"]:
            raise ConfigError(f"{where}.num_heads ({llm['num_heads']}) must divide hidden_size ({llm['hidden_size']})")
    else:
        _check_local_source(llm["source"], f"{where}.source")
        _check_local_source(llm.get("tokenizer", ""), f"{where}.tokenizer")


def _check_local_source(source: str, key: str, allowed: tuple = ()) -> None:
    """A local model folder must exist now; a Hugging Face id is resolved by the job (or its cache)."""
    if source in allowed or not source.startswith((".", "/", "~")):
        return
    folder = Path(source).expanduser()
    if not folder.is_dir():
        raise ConfigError(f"{key}: local model folder {source!r} does not exist")
    if not (folder / "config.json").is_file():
        raise ConfigError(f"{key}: {source!r} has no config.json (save the model with save_pretrained)")


def _check_models_downloaded(cfg: dict) -> None:
    """Every Hugging Face id a job loads is in the local cache now: jobs run offline (HF_HUB_OFFLINE=1,
    set by launch.Stage), so a missing model would fail every cell's job on its compute node, after the
    wait in the queue. HF_HUB_OFFLINE=0 in this environment (which jobs inherit) lets them download."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("0", "false", "no", "off"):
        return
    wanted = [("vision.source", cfg["vision"]["source"], "config.json")]
    for i, llm in enumerate(cfg["llms"]):
        if llm["source"] != "config":
            where = f"llms[{i}] ({llm['name']})"
            wanted.append((f"{where}.source", llm["source"], "config.json"))
            wanted.append((f"{where}.tokenizer", llm.get("tokenizer") or "", "tokenizer_config.json"))
    for key, source, marker in wanted:
        if is_hub_id(source) and not in_hub_cache(source, marker):
            raise ConfigError(
                f"{key}: model {source!r} is not in the local Hugging Face cache and jobs run offline; "
                f"download it first on a node with internet: `hf download {source}` "
                f"(or give a local folder; HF_HOME / HF_HUB_CACHE must be the same on the compute nodes)"
            )


def is_hub_id(source: str) -> bool:
    """'org/name' or 'name' from the Hub; not a local path, not 'config'/'tiny' (built here)."""
    return bool(source) and source not in ("config", "tiny") and not source.startswith((".", "/", "~"))


def in_hub_cache(repo_id: str, filename: str) -> bool:
    """What an offline `from_pretrained(repo_id)` would find: the file in the cache's snapshot of main."""
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(repo_id, filename)
    except ValueError:  # not a valid repo id at all
        return False
    return isinstance(found, str)


def load_file(path: str | Path, schema: str | Path, data: bool = True) -> dict:
    """Read, schema-validate (defaults filled) and check a config file; every failure is a ConfigError
    naming the file and the line or key. Snakemake's own message for unparsable YAML names neither."""
    import yaml
    from snakemake.utils import validate

    path = Path(path)
    try:
        cfg = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ConfigError(f"{path}: not valid YAML ({where}{getattr(exc, 'problem', None) or exc})") from None
    if not isinstance(cfg, dict):
        raise ConfigError(f"{path}: expected a mapping of settings at the top level, got {type(cfg).__name__}")
    try:
        validate(cfg, str(schema), set_default=True)
    except Exception as exc:  # snakemake's WorkflowError wraps jsonschema's message
        raise ConfigError(f"{path}: {str(exc).strip()}") from None
    return check(cfg, data)


def checkpoints_root(cfg: dict) -> str:
    """Where cells' checkpoints go: `checkpoints` ($VARS and ~ expanded, e.g. $SCRATCH/vlmscale), or
    {results}/checkpoints."""
    folder = cfg.get("checkpoints") or ""
    return os.path.expanduser(os.path.expandvars(folder)) if folder else f"{cfg['results']}/checkpoints"


def seeds(cfg: dict) -> list[int]:
    """grid.seeds, or the one training seed (train.seed) when the grid names none."""
    return list(cfg["grid"].get("seeds") or [cfg["train"]["seed"]])


def cells(cfg: dict) -> list[Cell]:
    return [
        Cell(m["name"], v, s, c)
        for c in compressors(cfg)
        for m in cfg["llms"]
        for v in cfg["grid"]["visual_tokens"]
        for s in seeds(cfg)
    ]


def architectures(cfg: dict) -> list[Cell]:
    """One cell per (LLM, compressor, V): the FLOP count does not depend on the seed."""
    return [
        Cell(m["name"], v, 0, c) for c in compressors(cfg) for m in cfg["llms"] for v in cfg["grid"]["visual_tokens"]
    ]


def llm_by_name(cfg: dict, name: str) -> dict:
    for llm in cfg["llms"]:
        if llm["name"] == name:
            return llm
    raise ConfigError(f"no LLM named {name!r} in llms (have {[m['name'] for m in cfg['llms']]})")


LLAVA_KEYS = ("source", "train_json", "image_folder", "benchmark_folder", "stage1", "stage2")


def data_spec(cfg: dict) -> dict:
    """The data stage's settings; for real data only its locations (the synthetic defaults do not apply)."""
    if cfg["data"]["source"] == "llava":
        return {k: cfg["data"][k] for k in LLAVA_KEYS if k in cfg["data"]}
    return dict(cfg["data"])


def vision_spec(cfg: dict) -> dict:
    """The vision stage's settings, the multi-level layers resolved: every grid's tower encodes them (a
    single-level adapter reads the first channels alone), so the tower does not change with the compressors."""
    vision = {k: v for k, v in cfg["vision"].items() if k != "multi_level_layers"}
    return {**vision, "multi_level_layers": multi_level_layers(cfg), "data": spec_hash(data_spec(cfg))}


def launch_resources(cfg: dict, llm: str | None = None, single_task: bool = False) -> dict:
    """A Slurm job's request: launch.slurm, with the LLM's own resources on top. Not part of any spec:
    moving a cell to another partition or giving it more time must not retrain it.
    single_task: one process on one GPU (evaluation is not distributed; the LLM's training request of
    several tasks would run it several times over)."""
    resources = dict(cfg["launch"].get("slurm") or {})
    if llm is not None:
        resources = merge_resources(resources, llm_by_name(cfg, llm).get("resources") or {})
    if single_task:
        resources.update(nodes=1, tasks_per_node=1)
        if resources.get("gpus_per_node"):
            resources["gpus_per_node"] = 1
    return resources


def world_size(cfg: dict, llm: str) -> int:
    """The processes (one per GPU) an LLM's training job runs: tasks_per_node x nodes."""
    resources = launch_resources(cfg, llm)
    return int(resources.get("tasks_per_node", 1)) * int(resources.get("nodes", 1))


# Train keys that decide when a job checkpoints and logs, never what it learns: kept out of the cell spec
# (and so out of the run key and Snakemake's params), so tuning them to a partition's time limit retrains
# nothing. The job gets them as a plain flag (`vlmscale train --ops`).
OPERATIONAL_TRAIN_KEYS = ("log_every", "checkpoint_every")


def operational_spec(cfg: dict, llm: str) -> dict:
    """The LLM's operational train settings (OPERATIONAL_TRAIN_KEYS), its own overrides merged."""
    train = deep_merge(cfg["train"], llm_by_name(cfg, llm).get("train", {}))
    return {k: train[k] for k in OPERATIONAL_TRAIN_KEYS if k in train}


def cell_spec(cfg: dict, llm: str, visual_tokens: int, seed: int | None = None, compressor: str | None = None) -> dict:
    """Everything that decides a cell's trained weights, resolved (LLM-level train overrides merged).
    seed: the grid seed of this cell (grid.seeds); it sets train.seed, which seeds the LLM's
    initialisation and the batch order. None: the configured train.seed. compressor: one of the grid's
    (grid.compressors); None: the first."""
    compressor = compressor or compressors(cfg)[0]
    model = llm_by_name(cfg, llm)
    arch = {k: v for k, v in model.items() if k not in ("train", "resources")}
    train = deep_merge(cfg["train"], model.get("train", {}))
    train = {k: v for k, v in train.items() if k not in OPERATIONAL_TRAIN_KEYS}
    if seed is not None:
        train["seed"] = int(seed)
    return {
        "cell": Cell(llm, int(visual_tokens), train["seed"], compressor).id,
        "llm": arch,
        "visual_tokens": int(visual_tokens),
        "compressor": compressor,
        "multi_level_layers": multi_level_layers(cfg, compressor),
        "position_features": position_features(cfg, compressor),
        "train": train,
        "upstream": {"data": spec_hash(data_spec(cfg)), "vision": spec_hash(vision_spec(cfg))},
    }


def training_cost(cfg: dict, llm: str, visual_tokens: int) -> float:
    """A relative estimate of a cell's training time (width² x depth x sequence length; V alone for a
    pretrained LM, whose shape the config does not state). Only orders jobs: Snakemake starts the
    costliest cells first, so the longest one does not run alone at the end of a grid."""
    model = llm_by_name(cfg, llm)
    shape = model.get("hidden_size", 1) ** 2 * model.get("num_layers", 1)
    return float(shape * (int(visual_tokens) + 8))


def architecture_spec(cfg: dict, llm: str, visual_tokens: int, compressor: str | None = None) -> dict:
    """What decides a cell's inference cost: the model's shape, not how it was trained (nor its seed)."""
    spec = cell_spec(cfg, llm, visual_tokens, compressor=compressor)
    return {
        "cell": Cell(llm, int(visual_tokens), 0, spec["compressor"]).architecture_id,
        **{k: spec[k] for k in ("llm", "visual_tokens", "compressor", "multi_level_layers", "position_features")},
    }


def benchmark_spec(cfg: dict, name: str) -> dict:
    for bench in cfg["benchmarks"]:
        if bench["name"] == name:  # an lmms-eval task is scored by its own metrics: no built-in metric
            return {k: v for k, v in bench.items() if not (k == "metric" and bench.get("task"))}
    raise ConfigError(f"no benchmark named {name!r}")


def as_param(value) -> str:
    """The canonical string Snakemake compares to decide whether params changed."""
    return canonical_json(value)


def _check_cached_aspect(cfg: dict) -> None:
    """Cached features are computed once, padded (LLaVA's fine-tuning and evaluation): a stage that asks
    for the processor alone (`square`) on real, non-square images would silently get padded features."""
    from vlmscale.specs import DEFAULT_ASPECT

    if cfg["data"]["source"] != "llava" or not cfg["vision"].get("cache"):
        return
    trains = [("train", cfg.get("train") or {})]
    trains += [(f"llms[{i}].train", m.get("train") or {}) for i, m in enumerate(cfg["llms"])]
    for where, train in trains:
        for stage, default in DEFAULT_ASPECT.items():
            aspect = (train.get(stage) or {}).get("image_aspect_ratio", default if where == "train" else None)
            if aspect == "square":
                raise ConfigError(
                    f"{where}.{stage}.image_aspect_ratio: 'square' (the default for stage1, as LLaVA's "
                    f"pretraining) needs the encoder run on each image as it is, but vision.cache stores padded "
                    f"features; set vision.cache: false (the encoder runs in each job, as configs/paper.yaml "
                    f"does) or {where}.{stage}.image_aspect_ratio: pad"
                )
