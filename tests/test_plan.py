"""`vlmscale plan`: parameter counts from shapes, model-state memory against DeepSpeed's own estimators,
the paper's grid against LLaVA's published training time, and a grid that will not fit refused before
anything runs."""

from __future__ import annotations

import copy
import json
import sys

import pytest
import yaml
from helpers import REPO, default_config, run, snakemake_dry_run

from vlmscale import config as vcfg
from vlmscale.model import build_adapter
from vlmscale.orchestration import plan
from vlmscale.specs import GRADIENT_BUCKET

VLMSCALE = ["python", "-m", "vlmscale.cli"]
QWEN = json.loads((REPO / "src/vlmscale/reference/qwen1.5.json").read_text())["models"]
SCHEMA = vcfg.SCHEMA


def paper_config(gpu: str = "a100") -> dict:
    cfg = vcfg.load_file(REPO / "configs/paper.yaml", SCHEMA, data=False)
    cfg["plan"]["gpu"] = gpu
    return cfg


@pytest.mark.parametrize("name", sorted(QWEN))
def test_llm_parameters_from_the_shape_match_the_published_sizes(name):
    shape = plan.llm_shape({"source": f"Qwen/{name}"}, 0)
    assert shape.params == pytest.approx(QWEN[name]["published_params"], rel=0.01)


@pytest.mark.parametrize("compressor, positions", [("avgpool", True), ("avgpool", False), ("tokenpacker", False),
                                                   ("quecc", False)])  # fmt: skip
@pytest.mark.parametrize("visual_tokens", [1, 4, 16])
def test_adapter_parameters_match_the_modules(compressor, positions, visual_tokens):
    vision_dim, text_dim, grid, levels = 24, 40, 8, 3
    built = build_adapter(compressor, visual_tokens=visual_tokens, vision_dim=vision_dim, lm_dim=text_dim,
                          text_dim=text_dim, patch_grid=grid, levels=levels, position_features=positions)  # fmt: skip
    counted = sum(p.numel() for p in built.parameters())
    assert plan.adapter_params(compressor, vision_dim, text_dim, visual_tokens, grid, levels, positions) == counted


@pytest.mark.parametrize("name", ["Qwen1.5-0.5B", "Qwen1.5-7B", "Qwen1.5-14B"])
@pytest.mark.parametrize("gpus, nodes", [(8, 1), (8, 2)])
def test_bf16_model_states_match_deepspeeds_estimators(name, gpus, nodes):
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    shape = plan.llm_shape({"source": f"Qwen/{name}"}, 0)
    n, world = shape.params, gpus * nodes
    largest = shape.vocab * shape.hidden  # an embedding table is the largest single module
    _, zero2 = estimate_zero2_model_states_mem_needs(n, gpus, nodes, cpu_offload=False)
    _, zero3, _ = estimate_zero3_model_states_mem_needs(n, largest, gpus, nodes, cpu_offload=False)
    assert plan.model_state_bytes(n, n, 2, world, "bf16") == pytest.approx(zero2, abs=1)
    # DeepSpeed's ZeRO-3 estimate leaves out each GPU's share of the 16-bit weights (2 bytes each / GPUs)
    # and the gradient bucket ZeRO-3 allocates whole (measured: test_model_state_formulas_against_bytes_held)
    extra = 2 * n / world + 2 * GRADIENT_BUCKET
    assert plan.model_state_bytes(n, n, 3, world, "bf16", largest) == pytest.approx(zero3 + extra, abs=1)


@pytest.mark.slow
def test_model_state_formulas_against_bytes_held(tmp_path):
    """benchmarks/model_states.py: two gloo processes train a small LM through vlmscale's DeepSpeed stepper;
    each rank's tensor bytes mid-step. fp32 is what the formula says (to 6 %); in bf16 the formula is
    DeepSpeed's estimator, which counts 4 more bytes of fp32 gradient per parameter than DeepSpeed holds at
    one micro-batch per step: an upper bound, by no more than that."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    import model_states

    cases = ["0:fp32", "2:fp32", "3:fp32", "2:bf16", "3:bf16"]
    shape = ["--hidden", "128", "--layers", "2", "--vocab", "4096"]
    rows = {
        (r["zero"], r["precision"]): r
        for r in model_states.main([*shape, "--cases", *cases, "--out", str(tmp_path / "m.json")])
    }
    for zero in (0, 2, 3):
        assert 0.94 <= rows[zero, "fp32"]["ratio"] <= 1.06, rows[zero, "fp32"]
    for zero in (2, 3):
        row = rows[zero, "bf16"]
        assert row["measured"] <= row["planned"] <= row["measured"] + 4 * row["params"] * 1.02, row


def test_the_fp32_states_vlmscale_runs_today():
    # 14B under ZeRO-2 on 8 GPUs: 4-byte weights on every GPU, 16 bytes per parameter shared by 8
    n = 14_000_000_000
    assert plan.model_state_bytes(n, n, 2, 8, "fp32") / 1e9 == pytest.approx(56 + 28)
    assert plan.model_state_bytes(n, 0, 2, 8, "fp32") / 1e9 == pytest.approx(56)  # frozen: weights alone
    assert plan.model_state_bytes(n, n, None, 1, "fp32") / 1e9 == pytest.approx(16 * 14)


def test_the_7b_576_cell_lands_near_llavas_published_training_time():
    # LLaVA-1.5-7B: ~3.5 h of pretraining and ~10 h of fine-tuning on 8 A100s, about 110 GPU-hours.
    cell = plan.plan_cell(paper_config("a100"), "qwen1.5-7b", 576)
    assert 110 / 2 <= cell.gpu_hours <= 110 * 2
    assert cell.fits and cell.gpus == 8


def test_the_paper_grid_is_planned_and_fits_its_gpus():
    plans = plan.plan_grid(paper_config("a100"))
    assert len(plans) == 35 and all(isinstance(p, plan.CellPlan) and p.fits for p in plans)
    text = plan.table(paper_config("a100"), plans)
    assert "qwen1.5-14b/tokenpacker/v576" in text and "training GPU-hours" in text and "DOES NOT FIT" not in text


def test_a_cell_that_will_not_fit_names_what_to_change():
    cfg = paper_config("a100")
    cfg["train"] |= {"zero_stage": {"stage1": 2, "stage2": 2}, "bf16": False}  # fp32 weights under ZeRO-2
    cell = plan.plan_cell(cfg, "qwen1.5-14b", 576)
    assert not cell.fits
    assert "stage2 needs 97 GB per GPU of 72" in cell.advice and "train.zero_stage.stage2: 3" in cell.advice
    assert "train.bf16: true" in cell.advice and "32 GPUs (now 8" in cell.advice
    cfg = paper_config("a100")  # ZeRO-3 in bf16 on 8 GPUs of 48 GB: the states fit, 16 per GPU's activations not
    cfg["plan"]["gpu"] = {"name": "a 48 GB GPU", "peak_tflops": 312, "memory_gb": 48}
    cell = plan.plan_cell(cfg, "qwen1.5-14b", 576)
    assert "train.micro_batch_size: 8 (now 16; gradient accumulation keeps the batch of 128)" in cell.advice
    assert "16 GPUs (now 8" in cell.advice  # 8 each, one pass: the micro-batch made to divide the share


def test_the_workflow_refuses_a_grid_with_a_cell_that_will_not_fit(tmp_path):
    cfg = default_config()
    cfg["plan"] = {"gpu": {"name": "a 1 MB GPU", "peak_tflops": 1, "memory_gb": 0.001}}
    out = snakemake_dry_run(tmp_path, cfg)
    assert "cells that will not fit their GPUs" in out and "lm-l/avgpool/v16: stage" in out


def test_plan_command_runs_before_any_data_exists(tmp_path):
    cfg = copy.deepcopy(yaml.safe_load((REPO / "configs/paper.yaml").read_text()))
    (tmp_path / "paper.yaml").write_text(yaml.safe_dump(cfg))
    code, out = run([*VLMSCALE, "plan", "--configfile", "paper.yaml", "--gpu", "h100"], tmp_path)
    assert code == 0, out
    assert "qwen1.5-0.5b/tokenpacker/v1 " in out and "H100" in out and not (tmp_path / "data").exists()


def test_no_gpu_declared_plans_without_hours_or_fit():
    cfg = vcfg.load_file(REPO / "config.yaml", SCHEMA, data=False)
    plans = plan.plan_grid(cfg)
    assert len(plans) == 12 and all(p.fits and p.advice == "" for p in plans)
    assert "no plan.gpu declared" in plan.table(cfg, plans)
    assert plan.unfit_cells(cfg) == []


@pytest.mark.parametrize("d, ff, layers, image, patch", [(1024, 4096, 24, 336, 14), (768, 3072, 12, 224, 16)])
def test_encoder_parameters_match_the_clip_model(d, ff, layers, image, patch):
    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModel

    config = CLIPVisionConfig(hidden_size=d, intermediate_size=ff, num_hidden_layers=layers,
                              num_attention_heads=d // 64, image_size=image, patch_size=patch)  # fmt: skip
    with torch.device("meta"):
        built = sum(p.numel() for p in CLIPVisionModel(config).parameters())
    assert plan.vit_params(d, ff, layers, patch, (image // patch) ** 2 + 1) == built


def test_the_plan_names_where_checkpoints_and_results_go_and_what_each_needs(tmp_path, monkeypatch):
    cfg = vcfg.load_file(REPO / "configs/paper.yaml", SCHEMA, data=False)
    assert vcfg.checkpoints_root(cfg) == f"{cfg['results']}/checkpoints"
    monkeypatch.setenv("SCRATCH", str(tmp_path / "scratch"))
    cfg["checkpoints"] = "$SCRATCH/vlmscale"
    cfg["plan"]["gpu"] = "h100"
    text = plan.table(cfg, plan.plan_grid(cfg))
    line = next(line for line in text.splitlines() if line.strip().startswith("checkpoints ("))
    kept = sum(p.checkpoint_gb for p in plan.plan_grid(cfg) if isinstance(p, plan.CellPlan))
    assert line.strip().startswith(f"checkpoints ({tmp_path}/scratch/vlmscale): {kept:,.0f} GB kept")
    assert line.endswith("GB free there now")  # the filesystem that will hold it, though the folder is not made yet
    assert f"results ({cfg['results']}):" in text
