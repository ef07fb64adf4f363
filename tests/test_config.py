"""Bad config fails before any job starts, with a message naming the key."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import default_config, load
from snakemake.utils import validate

from vlmscale import config as vcfg

REPO = Path(__file__).resolve().parents[1]
SCHEMA = str(REPO / "workflow/schemas/config.schema.yaml")


def test_default_config_is_valid_and_spans_the_required_grid():
    cfg = load(default_config())
    # At least 3 x 3 and 12 cells: the held-out check fits without the largest LLM and still needs 3 sizes
    # (here 4 LLMs x 3 V; a fourth V of 64 would cost 3-4x a V = 16 cell per LLM).
    assert len(cfg["llms"]) >= 3 and 1 in cfg["grid"]["visual_tokens"] and len(cfg["grid"]["visual_tokens"]) >= 3
    assert len(cfg["llms"]) * len(cfg["grid"]["visual_tokens"]) >= 12
    families = {}
    for b in cfg["benchmarks"]:
        families.setdefault(b["family"], []).append(b["name"])
    # Reasoning averages knowledge (facts) with perception (colour); OCR-like is one reading task at three print sizes.
    assert set(families) == {"reasoning", "ocr"} and len(families["reasoning"]) >= 2 and families["ocr"]


def edited(path: str, value):
    cfg = default_config()
    *parents, last = path.split(".")
    node = cfg
    for key in parents:
        node = node[int(key)] if key.isdigit() else node[key]
    if value is KeyError:
        node[last + "_typo"] = node.pop(last)
    else:
        node[int(last) if last.isdigit() else last] = value
    return cfg


@pytest.mark.parametrize(
    "path, value, message",
    [
        ("llms.0.arch", "transformerx", "llms\\[0\\] \\(lm-xs\\).arch: unknown model architecture"),
        ("grid.visual_tokens", [1, 4, 5], "grid.visual_tokens: the avgpool compressor cannot make V=5"),
        ("grid.visual_tokens", [1, 4, 100], "V=100"),
        ("llms.1.name", "lm-xs", "llms\\[\\].name: duplicate value 'lm-xs'"),
        ("benchmarks.0.name", "textvqa", "benchmarks\\[0\\].name: 'textvqa' is not a task"),
        ("llms.0.num_heads", 5, "num_heads \\(5\\) must divide hidden_size"),
    ],
)
def test_semantic_errors_name_the_key(path, value, message):
    with pytest.raises(vcfg.ConfigError, match=message):
        load(edited(path, value))


@pytest.mark.parametrize(
    "path, value, message",
    [
        ("llms.0.hidden_size", 0, "0 is less than the minimum"),
        ("train.stage2.lr", -1.0, "less than or equal to the minimum"),
        ("train.batch_size", KeyError, "batch_size_typo"),
        ("grid.visual_tokens", "sixteen", "is not of type 'array'"),
    ],
)
def test_schema_errors_name_the_key(path, value, message):
    from snakemake.exceptions import WorkflowError

    with pytest.raises(WorkflowError, match=message):
        load(edited(path, value))


def test_snakemake_refuses_bad_config_before_any_job(tmp_path):
    bad = edited("grid.visual_tokens", [1, 4, 7])
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    proc = subprocess.run(
        ["snakemake", "-s", str(REPO / "Snakefile"), "--configfile", "bad.yaml", "--cores", "1"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
    )
    assert proc.returncode != 0
    assert "grid.visual_tokens" in proc.stdout + proc.stderr and "V=7" in proc.stdout + proc.stderr
    assert not (tmp_path / "results").exists()


def test_cell_spec_merges_llm_overrides_and_changes_hash_only_for_that_llm():
    cfg = load(default_config())
    before = {c.id: vcfg.as_param(vcfg.cell_spec(cfg, c.llm, c.visual_tokens)) for c in vcfg.cells(cfg)}
    cfg["llms"][1]["train"] = {"stage2": {"lr": 0.0005}}
    after = {c.id: vcfg.as_param(vcfg.cell_spec(cfg, c.llm, c.visual_tokens)) for c in vcfg.cells(cfg)}
    changed = {cell for cell in before if before[cell] != after[cell]}
    assert changed == {f"lm-s/avgpool/v{v}/s0" for v in cfg["grid"]["visual_tokens"]}
    assert vcfg.cell_spec(cfg, "lm-s", 4)["train"]["stage2"] == {"steps": cfg["train"]["stage2"]["steps"], "lr": 0.0005}


def test_grid_seeds_make_one_cell_per_seed_that_differs_only_in_its_seed():
    cfg = load({**default_config(), "grid": {**default_config()["grid"], "seeds": [0, 1, 2]}})
    ids = [c.id for c in vcfg.cells(cfg)]
    assert len(ids) == 3 * len(cfg["llms"]) * len(cfg["grid"]["visual_tokens"]) == len(set(ids))
    specs = [vcfg.cell_spec(cfg, "lm-s", 4, seed) for seed in (0, 1, 2)]
    assert [s["cell"] for s in specs] == ["lm-s/avgpool/v4/s0", "lm-s/avgpool/v4/s1", "lm-s/avgpool/v4/s2"]
    assert [s["train"]["seed"] for s in specs] == [0, 1, 2]
    assert len({vcfg.as_param(s) for s in specs}) == 3  # three identities, three checkpoints and MLflow runs
    strip = [{**s, "cell": None, "train": {**s["train"], "seed": None}} for s in specs]
    assert strip[0] == strip[1] == strip[2]  # nothing else differs
    assert vcfg.architecture_spec(cfg, "lm-s", 4)["cell"] == "lm-s/avgpool/v4"  # FLOPs are shared by the seeds


def test_grid_compressors_make_one_cell_per_compressor_and_leave_the_tower_alone():
    base = load(default_config())
    cfg = load(
        {**default_config(), "grid": {**default_config()["grid"], "compressors": ["avgpool", "tokenpacker", "quecc"]}}
    )
    ids = [c.id for c in vcfg.cells(cfg)]
    assert len(ids) == 3 * len(cfg["llms"]) * len(cfg["grid"]["visual_tokens"]) == len(set(ids))
    specs = {c: vcfg.cell_spec(cfg, "lm-s", 4, compressor=c) for c in ("avgpool", "tokenpacker", "quecc")}
    assert [s["cell"] for s in specs.values()] == ["lm-s/avgpool/v4/s0", "lm-s/tokenpacker/v4/s0", "lm-s/quecc/v4/s0"]
    levels = list(range(1, cfg["vision"]["num_layers"] + 1))  # the tiny tower: every block's output
    assert [s["multi_level_layers"] for s in specs.values()] == [[], levels, levels]
    assert [s["position_features"] for s in specs.values()] == [True, False, False]  # avgpool's alone
    # avgpool's cells are the one-compressor grid's cells, and the tower is the same: adding compressors
    # trains only theirs
    assert specs["avgpool"] == vcfg.cell_spec(base, "lm-s", 4)
    assert vcfg.vision_spec(cfg) == vcfg.vision_spec(base) and vcfg.vision_spec(cfg)["multi_level_layers"] == levels
    assert vcfg.architecture_spec(cfg, "lm-s", 4, "quecc")["cell"] == "lm-s/quecc/v4"


@pytest.mark.parametrize(
    "grid, top, message",
    [
        ({"compressors": ["avgpool", "avgpool"]}, {}, "grid.compressors: duplicate value 'avgpool'"),
        ({"compressors": ["avgpool", "perceiver"]}, {}, "compressor: 'perceiver' is not one of"),
        ({"compressors": ["tokenpacker"]}, {"compressor": "quecc"}, "compressor and grid.compressors: give one"),
        ({"compressors": ["avgpool", "quecc"], "visual_tokens": [1, 9]}, {}, "the quecc compressor cannot make V=9"),
        ({"compressors": ["tokenpacker", "quecc"]}, {}, "position_features: only the avgpool adapter"),
    ],
)
def test_bad_compressor_lists_are_refused_naming_the_key(grid, top, message):
    cfg = {**default_config(), **top}
    cfg["grid"] = {**cfg["grid"], **grid}
    with pytest.raises(vcfg.ConfigError, match=message):
        load(cfg)


def test_cached_features_are_refused_for_a_square_stage_on_real_images():
    from snakemake.utils import validate

    cfg = default_config()
    cfg["data"] = {"source": "llava", "train_json": "train.json", "image_folder": "images"}
    validate(cfg, vcfg.SCHEMA, set_default=True)
    with pytest.raises(vcfg.ConfigError, match=r"train\.stage1\.image_aspect_ratio: 'square'.*vision\.cache: false"):
        vcfg.check(copy.deepcopy(cfg), data=False)
    padded = copy.deepcopy(cfg)
    padded["train"]["stage1"]["image_aspect_ratio"] = "pad"
    vcfg.check(padded, data=False)
    uncached = copy.deepcopy(cfg)
    uncached["vision"]["cache"] = False
    vcfg.check(uncached, data=False)


def test_position_features_are_refused_for_a_reference_adapter():
    cfg = default_config()
    cfg["compressor"] = "tokenpacker"
    cfg["grid"]["visual_tokens"] = [1, 4, 16]
    with pytest.raises(vcfg.ConfigError, match="position_features: only the avgpool adapter takes them"):
        load(cfg)
    cfg["position_features"] = False
    load(cfg)


def hub_cache_with(cache: Path, repo_id: str, save) -> None:
    """A Hugging Face cache holding `repo_id` as `hf download` leaves it: refs/main names a snapshot."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs/main").write_text("0" * 40)
    save(repo / "snapshots" / ("0" * 40))


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    from huggingface_hub import constants
    from tiny_models import save_tiny_qwen2

    cache = tmp_path / "hub"
    hub_cache_with(cache, "tiny-org/tiny-qwen", lambda folder: save_tiny_qwen2(folder, ["a red square"]))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    save_tiny_qwen2(tmp_path / "local-qwen", ["a red square"])
    return tmp_path


def with_llm_source(source: str) -> dict:
    cfg = default_config()
    cfg["llms"] = [cfg["llms"][0] | {"source": source}] + cfg["llms"][1:]
    for key in ("arch", "hidden_size", "intermediate_size", "num_layers", "num_heads"):
        cfg["llms"][0].pop(key, None)
    return cfg


def test_a_model_id_missing_from_the_local_cache_is_refused_with_the_download_command(offline_cache):
    name = default_config()["llms"][0]["name"]
    with pytest.raises(vcfg.ConfigError) as refused:
        load(with_llm_source("nobody/no-such-model"))
    message = str(refused.value)
    assert message.startswith(f"llms[0] ({name}).source: model 'nobody/no-such-model' is not in the local")
    assert "`hf download nobody/no-such-model`" in message
    cfg = with_llm_source("tiny-org/tiny-qwen")
    cfg["llms"][0]["tokenizer"] = "nobody/no-tokenizer"
    with pytest.raises(vcfg.ConfigError, match=rf"llms\[0\] \({name}\).tokenizer: model 'nobody/no-tokenizer'"):
        load(cfg)


def test_a_model_in_the_cache_or_a_local_folder_passes_offline(offline_cache):
    assert load(with_llm_source("tiny-org/tiny-qwen"))["llms"][0]["source"] == "tiny-org/tiny-qwen"
    assert load(with_llm_source(str(offline_cache / "local-qwen")))


def test_online_jobs_may_download_and_plan_runs_before_the_download(offline_cache, monkeypatch):
    cfg = with_llm_source("nobody/no-such-model")
    validate(cfg, SCHEMA, set_default=True)
    assert vcfg.check(copy.deepcopy(cfg), data=False)  # `vlmscale plan`: before anything is downloaded
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")  # jobs inherit it and download (launch.Stage keeps a set value)
    assert vcfg.check(cfg)


def test_an_llms_setup_and_sbatch_add_to_the_global_ones():
    cfg = default_config()
    cfg["launch"] = {
        "executor": "slurm",
        "slurm": {"setup": ["module load cuda/12.1"], "sbatch": {"mail-type": "FAIL", "exclude": "n1"}, "mem_gb": 8},
    }
    name = cfg["llms"][0]["name"]
    cfg["llms"][0]["resources"] = {"setup": ["source ~/venv/bin/activate"], "sbatch": {"exclude": "n2"}, "mem_gb": 64}
    cfg["evaluation"] = {"resources": {"setup": ["export EVAL=1"]}}
    cfg = load(cfg)
    trains = vcfg.launch_resources(cfg, name)
    assert trains["setup"] == ["module load cuda/12.1", "source ~/venv/bin/activate"]
    assert trains["sbatch"] == {"mail-type": "FAIL", "exclude": "n2"} and trains["mem_gb"] == 64  # same key: the LLM's
    assert vcfg.evaluation_resources(cfg, name)["setup"] == ["module load cuda/12.1", "export EVAL=1"]


def test_the_compressors_config_plans_every_compressors_cells(tmp_path):
    """configs/compressors.yaml as a user runs it (layered over config.yaml): a dry run plans each
    compressor's 9 cells (3 LLMs x 3 V), their FLOP counts and one law per family and compressor."""
    import re

    from helpers import run

    for name in ("config.yaml", "configs/compressors.yaml"):
        (tmp_path / Path(name).name).write_text((REPO / name).read_text())
    code, out = run(
        ["snakemake", "-s", str(REPO / "Snakefile"), "--configfile", "compressors.yaml", "--cores", "1", "-n"], tmp_path
    )
    assert code == 0, out[-3000:]
    planned: dict[str, list[str]] = {}
    for block in re.split(r"\n(?:local)?rule ", "\n" + out)[1:]:
        wildcards = re.search(r"wildcards: (.*)", block)
        planned.setdefault(block.split(":", 1)[0].strip(), []).append(wildcards.group(1) if wildcards else "")
    for compressor in ("avgpool", "tokenpacker", "quecc"):
        assert sum(f"compressor={compressor}," in w for w in planned["train"]) == 9
        assert sum(f"compressor={compressor}," in w for w in planned["flops"]) == 9
        assert sum(w.endswith(f"compressor={compressor}") for w in planned["fit_law"]) == 2  # reasoning, ocr


def test_the_exposures_config_trains_the_default_grid_with_more_exposures_per_rule(tmp_path):
    """configs/exposures.yaml as a user runs it (layered over config.yaml): the default's LLMs, V and seed
    in its own results folder, each cell's spec the default's but for 8x the samples per step and 4x the
    questions per image."""
    import re

    from helpers import run

    from vlmscale import config as vcfg

    for name in ("config.yaml", "configs/exposures.yaml"):
        (tmp_path / Path(name).name).write_text((REPO / name).read_text())
    code, out = run(
        ["snakemake", "-s", str(REPO / "Snakefile"), "--configfile", "exposures.yaml", "--cores", "1", "-n"], tmp_path
    )
    assert code == 0, out[-3000:]
    assert len(re.findall(r"\nrule train:|\nlocalrule train:", out)) == 12
    assert "results-exposures/cells/lm-l/avgpool/v16/s0/train.json" in out

    default = yaml.safe_load((REPO / "config.yaml").read_text())
    layered = vcfg.deep_merge(default, yaml.safe_load((REPO / "configs/exposures.yaml").read_text()))
    base, more = vcfg.cell_spec(default, "lm-l", 1), vcfg.cell_spec(layered, "lm-l", 1)
    assert more["train"]["batch_size"] == 8 * base["train"]["batch_size"]
    assert {k: v for k, v in more["train"].items() if k != "batch_size"} == {
        k: v for k, v in base["train"].items() if k != "batch_size"
    }
    for family, n in default["data"]["questions_per_image"].items():
        assert layered["data"]["questions_per_image"][family] == 4 * n
