"""The adapters against their reference code: golden outputs made by TokenPacker's and the paper's QueCC's
own modules (tests/reference/README.md), never by vlmscale. Same keys, same shapes, strict load, same
outputs at 1e-5."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from reference import recipe

from vlmscale.model import build_adapter

FIXTURES = Path(__file__).parent / "reference" / "fixtures"
META = json.loads((FIXTURES / "adapters.json").read_text())
NPZ = np.load(FIXTURES / "adapters.npz")
H, TEXT, DIM, GRID = 64, 96, 1024, 24


def adapter(name: str, v: int) -> torch.nn.Module:
    return build_adapter(name, visual_tokens=v, vision_dim=DIM, lm_dim=H, text_dim=TEXT, patch_grid=GRID).eval()


@pytest.mark.parametrize("v", [1, 4, 36, 144])
@pytest.mark.parametrize("name", ["tokenpacker", "quecc"])
def test_state_dict_is_the_references(name, v):
    expected = [(k, list(shape)) for k, shape in META[name]["cases"][str(v)]["state_dict"]]
    assert [(k, list(t.shape)) for k, t in adapter(name, v).state_dict().items()] == expected


@pytest.mark.parametrize("v", [1, 4, 36, 144])
@pytest.mark.parametrize("name", ["tokenpacker", "quecc"])
def test_reference_weights_load_strictly_and_give_the_reference_outputs(name, v):
    meta = META[name]
    case = meta["cases"][str(v)]
    model = adapter(name, v)
    weights = recipe.fill_state_dict({k: s for k, s in case["state_dict"]}, meta["weight_seed"])
    model.load_state_dict({k: torch.from_numpy(a) for k, a in weights.items()}, strict=True)
    x = {k: torch.from_numpy(a) for k, a in recipe.inputs(2, text_dim=TEXT, seed=meta["inputs"]["seed"]).items()}
    with torch.no_grad():
        out = model(x["single"], x["multi"], x["text"])
    np.testing.assert_allclose(out.numpy(), NPZ[case["output_npz_key"]], rtol=1e-5, atol=1e-5)


def test_tokenpacker_init_is_the_references():
    """trunc_normal(.02) on every Linear (out_proj too), zero biases, LayerNorm 1/0; in_proj stays xavier.
    (trunc_normal_'s default cut is at +-2 absolute, i.e. 100 std: in effect a plain normal(0, .02).)"""
    torch.manual_seed(0)
    m = adapter("tokenpacker", 4).requires_grad_(False)
    for w in (m.q_proj_1.weight, m.k_proj_1[0].weight, m.clip_attn.out_proj.weight, m.mlp[2].weight):
        assert 0.019 < float(w.std()) < 0.021 and abs(float(w.mean())) < 0.002
    assert float(m.k_proj_1[0].bias.abs().max()) == 0.0 and float(m.clip_attn.out_proj.bias.abs().max()) == 0.0
    assert torch.equal(m.ln_q_1.weight, torch.ones(DIM))
    # xavier_uniform on (3072, 1024): uniform within +-sqrt(6 / 4096); a normal(0, .02) would pass 0.04
    bound = (6 / (3 * DIM + DIM)) ** 0.5
    assert bound * 0.99 < float(m.clip_attn.in_proj_weight.abs().max()) <= bound


def test_a_v_the_grid_cannot_make_names_the_key():
    with pytest.raises(ValueError, match="grid.visual_tokens.*choose from"):
        adapter("tokenpacker", 16 * 16)
    with pytest.raises(ValueError, match="position_features"):
        build_adapter("quecc", visual_tokens=4, vision_dim=DIM, lm_dim=H, text_dim=TEXT, patch_grid=GRID,
                      position_features=True)  # fmt: skip
