"""The evaluation path's memory, counted as benchmarks/model_states.py counts training's: every distinct live
tensor storage. A tiny Qwen-2 cell saved as training saves it (final/, bf16) is loaded by the evaluation
loader alone, holds bf16 weights only, and decodes without autocast copies; the bytes alive at the last
decoding step equal `vlmscale plan`'s formula (weights + KV cache)."""

from __future__ import annotations

import gc

import pytest
import tiny_models
import torch

from vlmscale.data.samples import Sample
from vlmscale.identity import run_key
from vlmscale.model.cell import StaleCheckpoint, build_cell_model, load_trained
from vlmscale.orchestration.plan import evaluation_bytes
from vlmscale.training.checkpoint import save_final

VISION_DIM, GRID, V, BATCH, DECODE = 16, 4, 4, 4, 6


def storage_bytes() -> dict[int, int]:
    held = {}
    for obj in gc.get_objects():
        if isinstance(obj, torch.Tensor) and obj.device.type == "cpu" and obj.untyped_storage().data_ptr():
            held[obj.untyped_storage().data_ptr()] = obj.untyped_storage().nbytes()
    return held


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A cell's final/ folder in bf16, written by training's own save_final."""
    root = tmp_path_factory.mktemp("evalmem")
    qwen = tiny_models.save_tiny_qwen2(root / "qwen", ["what is it"], hidden_size=128, intermediate_size=256,
                                       num_layers=4)  # fmt: skip
    spec = {"cell": "q/v4", "llm": {"name": "q", "source": str(qwen)}, "visual_tokens": V, "compressor": "avgpool"}
    model, _ = build_cell_model(spec, [], VISION_DIM, GRID)
    save_final(root, model, run_key(spec), torch.bfloat16)
    return spec, root / "final"


def batch(tokenizer):
    samples = [Sample(image=f"i{i}", question="what is it " * (i + 1), answer="") for i in range(BATCH)]
    from vlmscale.data.batching import make_batch

    return make_batch(samples, tokenizer, V, lambda keys: torch.randn(len(keys), GRID * GRID, VISION_DIM))


def peak_while_decoding(model, tokenizer, use_autocast: bool) -> tuple[int, int]:
    """(bytes alive at the last decoding step beyond those alive before, prompt width) ."""
    data = batch(tokenizer)
    gc.collect()
    before = storage_bytes()
    seen = []

    def hook(*_):
        gc.collect()
        seen.append(sum(n for ptr, n in storage_bytes().items() if ptr not in before))

    handle = model.llm.model.layers[-1].register_forward_hook(hook)
    context = torch.autocast("cpu", dtype=torch.bfloat16) if use_autocast else torch.inference_mode()
    with torch.no_grad(), context:
        model.generate(data, DECODE, None)  # no end token: every row decodes DECODE tokens
    handle.remove()
    return seen[-1], int(data.prompt_lengths.max())


def test_the_evaluation_loader_holds_bf16_weights_only_from_final_alone(trained):
    spec, final = trained
    model, _ = load_trained(spec, final, [], VISION_DIM, GRID)
    dtypes = {t.dtype for t in [*model.parameters(), *model.buffers()] if t.is_floating_point()}
    assert dtypes == {torch.bfloat16}
    assert not any(p.requires_grad for p in model.parameters())
    assert load_trained(spec, final, [], VISION_DIM, GRID, dtype="float32")[0].llm.dtype == torch.float32
    with pytest.raises(StaleCheckpoint, match="trained for another spec of q/v4"):
        load_trained({**spec, "visual_tokens": 16}, final, [], VISION_DIM, GRID)


def test_decoding_allocates_no_weight_copies_and_matches_the_plans_formula(trained):
    spec, final = trained
    gc.collect()
    before = storage_bytes()
    model, tokenizer = load_trained(spec, final, [], VISION_DIM, GRID)
    weights = sum(n for ptr, n in storage_bytes().items() if ptr not in before)
    params = sum(p.numel() for p in model.parameters())
    assert weights == pytest.approx(2 * params, rel=0.01)  # one bf16 copy (a tied head would share storage)
    config = model.llm.config
    alive, prompt = peak_while_decoding(model, tokenizer, use_autocast=False)
    tokens = prompt + DECODE - 1  # the KV cache at the last step's forward pass
    formula = evaluation_bytes(params, config.num_hidden_layers, config.hidden_size, BATCH, tokens, 2)
    kv = formula - 2 * params
    # the decoding state beyond the weights: the KV cache, and one step's activations (a few KB here)
    assert kv <= alive <= kv + 0.25 * kv, (alive, kv)
    # the same count sees autocast's copies: fp32 weights that require grad, decoded under no_grad + autocast
    model.float().requires_grad_(True)
    with_copies, _ = peak_while_decoding(model, tokenizer, use_autocast=True)
    assert with_copies > 2 * params, (with_copies, params)  # a bf16 copy of (nearly) every weight stays alive


@pytest.mark.parametrize(
    "adapter",
    [
        {"compressor": "avgpool", "position_features": True},
        {"compressor": "tokenpacker", "multi_level_layers": [1, 2]},
        {"compressor": "quecc", "multi_level_layers": [1, 2]},
    ],
)
def test_evaluation_rebuilds_the_adapter_training_built(adapter, tmp_path):
    """Position features and multi-level layers are part of the adapter's shape: the evaluation loader
    builds it from the same spec, so every saved weight loads, and equals what training saved."""
    qwen = tiny_models.save_tiny_qwen2(tmp_path / "qwen", ["what is it"], hidden_size=32, intermediate_size=64,
                                       num_layers=1)  # fmt: skip
    spec = {"cell": "q/v4", "llm": {"name": "q", "source": str(qwen)}, "visual_tokens": V, **adapter}
    trained, _ = build_cell_model(spec, [], VISION_DIM, GRID)
    save_final(tmp_path, trained, run_key(spec), torch.float32)
    loaded, _ = load_trained(spec, tmp_path / "final", [], VISION_DIM, GRID)
    saved = {k: v for k, v in trained.state_dict().items() if not k.startswith("llm.")}
    assert saved and all(torch.equal(loaded.state_dict()[k], v) for k, v in saved.items())
