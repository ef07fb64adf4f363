"""The adapters: what stage 1 trains, mapping the frozen encoder's outputs to the LLM's input embeddings.

Every adapter is called as `adapter(single, multi, question)`:

* `single`   (B, P, D): the single-level patch features (the encoder's select layer, CLS dropped);
* `multi`    (B, P, L*D): the multi-level concatenation (L encoder layers on the channel axis), or None;
* `question` (B, 1, text_dim): the LLM's hidden state at the question's last token, or None;

and returns (B, V, lm_dim). P is a square patch grid (24 x 24 for CLIP-L/336).

`tokenpacker` and `quecc` are built as their reference code builds them (CircleRadon/TokenPacker
`llava/model/multimodal_projector/builder.py`; the paper's locuslab/llava-token-compression `quecc.py`
and `builder.py`): same submodules under the same names, so their `state_dict()` keys and shapes are the
references' and a projector checkpoint saved by either loads with strict=True and gives the same
outputs (tests/test_adapters.py checks this against tests/reference/fixtures). The references hard-code
CLIP-L's widths (1024, 4096) and 24 x 24 grid; here they follow `vision_dim`, `levels` and `patch_grid`
so the tiny tower runs the same code.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from vlmscale import choices

HEADS = 8  # both references: nn.MultiheadAttention(1024, 8) (TokenPacker writes it 1024 // 128)


def token_side(visual_tokens: int, patch_grid: int, name: str) -> int:
    """g for V = g*g tokens, each summarising an s x s region of the patch grid (s = patch_grid / g)."""
    side = math.isqrt(visual_tokens)
    if side * side != visual_tokens or patch_grid % side:
        divisors = [k * k for k in range(1, patch_grid + 1) if patch_grid % k == 0]
        raise ValueError(
            f"grid.visual_tokens: the {name} compressor cannot make V={visual_tokens} tokens from a "
            f"{patch_grid}x{patch_grid} patch grid (sqrt(V) must divide {patch_grid}); choose from {divisors}"
        )
    return side


def regions(features: torch.Tensor, side: int) -> torch.Tensor:
    """(B, G*G, C) -> (B*side*side, s*s, C): each output token's own s x s region of the row-major patch grid,
    regions in row-major order (einops "b (i k j l) d -> (b i j) (k l) d", as QueCC writes it)."""
    b, p, c = features.shape
    grid = math.isqrt(p)
    s = grid // side
    x = features.reshape(b, side, s, side, s, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b * side * side, s * s, c)


def mlp2x_gelu(in_dim: int, out_dim: int) -> list[nn.Module]:
    """LLaVA-1.5's projector layers: Linear, GELU, Linear."""
    return [nn.Linear(in_dim, out_dim), nn.GELU(), nn.Linear(out_dim, out_dim)]


def kv_mlp(kv_dim: int, dim: int, norm: bool) -> nn.Sequential:
    """Keys / values from the multi-level features: Linear, GELU, Linear (+ LayerNorm in QueCC)."""
    layers = [nn.Linear(kv_dim, dim), nn.GELU(), nn.Linear(dim, dim)]
    return nn.Sequential(*layers, *([nn.LayerNorm(dim, eps=1e-6)] if norm else []))


def check_heads(dim: int, name: str) -> None:
    if dim % HEADS:
        raise ValueError(
            f"vision.hidden_size: the {name} compressor's 8-head attention needs a width divisible by 8, got {dim}"
        )


class TokenPacker(nn.Module):
    """TokenPacker's projector: bilinearly downsampled single-level features as point queries, each
    cross-attending (8 heads, no residual) to its own s x s region of the multi-level features, then the
    module's own mlp2x_gelu to the LLM width."""

    def __init__(self, visual_tokens: int, dim: int, kv_dim: int, lm_dim: int, patch_grid: int):
        super().__init__()
        check_heads(dim, "tokenpacker")
        self.grid, self.side = patch_grid, token_side(visual_tokens, patch_grid, "tokenpacker")
        # Registration order is the reference's: state_dict keys come out in its order.
        self.q_proj_1 = nn.Linear(dim, dim, bias=False)
        self.k_proj_1 = kv_mlp(kv_dim, dim, norm=False)
        self.v_proj_1 = kv_mlp(kv_dim, dim, norm=False)
        self.ln_q_1, self.ln_k_1, self.ln_v_1 = (nn.LayerNorm(dim, eps=1e-6) for _ in range(3))
        self.clip_attn = nn.MultiheadAttention(dim, HEADS)  # sequence-first, as the reference
        self.mlp = nn.Sequential(*mlp2x_gelu(dim, lm_dim))
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        # The reference's init: every nn.Linear (out_proj included) trunc_normal(.02), zero bias; in_proj
        # keeps PyTorch's xavier (it is a bare parameter, not an nn.Linear).
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def forward(self, single, multi, question=None) -> torch.Tensor:
        b, _, d = single.shape
        key, value = self.ln_k_1(self.k_proj_1(multi)), self.ln_v_1(self.v_proj_1(multi))
        grid2d = single.reshape(b, self.grid, self.grid, d).float().permute(0, 3, 1, 2)
        q = F.interpolate(grid2d, size=(self.side, self.side), mode="bilinear").permute(0, 2, 3, 1)
        query = self.ln_q_1(self.q_proj_1(q.reshape(b * self.side * self.side, 1, d).to(single.dtype)))
        keys, values = regions(key, self.side), regions(value, self.side)
        # Sequence-first: (1, B*V, D) queries against (s*s, B*V, D) regions, one region per "batch" row.
        out = self.clip_attn(query.transpose(0, 1), keys.transpose(0, 1), values.transpose(0, 1))[0]
        return self.mlp(out.reshape(b, self.side * self.side, d))


class QueCC(nn.Module):
    """The paper's QueCC: the question's projected state added to every single-level feature, an MLP, a
    depthwise stride-s convolution to one query per region; each query cross-attends (8 heads, no
    residual) to its region's multi-level keys and values. Output (B, V, D): the builder adds the MLP."""

    def __init__(self, visual_tokens: int, dim: int, kv_dim: int, text_dim: int, patch_grid: int):
        super().__init__()
        check_heads(dim, "quecc")
        self.grid, self.side = patch_grid, token_side(visual_tokens, patch_grid, "quecc")
        stride = patch_grid // self.side
        self.clip_attn = nn.MultiheadAttention(dim, HEADS, batch_first=True)
        self.q_proj = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, dim), nn.LayerNorm(dim, eps=1e-6))
        self.k_proj = kv_mlp(kv_dim, dim, norm=True)
        self.v_proj = kv_mlp(kv_dim, dim, norm=True)
        self.q_downsample = nn.Conv2d(dim, dim, kernel_size=stride, stride=stride, groups=dim)
        self.text_projection = nn.Sequential(nn.Linear(text_dim, dim), nn.LayerNorm(dim, eps=1e-6))

    def forward(self, single, multi, question) -> torch.Tensor:
        if question is None:
            raise ValueError("the quecc compressor needs the question's hidden state")
        b, _, d = single.shape
        x = self.q_proj(single + self.text_projection(question))
        q = self.q_downsample(x.transpose(1, 2).reshape(b, d, self.grid, self.grid))
        queries = q.flatten(2).transpose(1, 2).reshape(b * self.side * self.side, 1, d)
        keys, values = regions(self.k_proj(multi), self.side), regions(self.v_proj(multi), self.side)
        return self.clip_attn(queries, keys, values)[0].reshape(b, self.side * self.side, d)


class QueCCAdapter(nn.Sequential):
    """The paper's builder: Sequential(QueCC, Linear(D, H), GELU, Linear(H, H)) (keys 0.*, 1.*, 3.*)."""

    def __init__(self, visual_tokens: int, dim: int, kv_dim: int, lm_dim: int, text_dim: int, patch_grid: int):
        super().__init__(QueCC(visual_tokens, dim, kv_dim, text_dim, patch_grid), *mlp2x_gelu(dim, lm_dim))

    def forward(self, single, multi, question) -> torch.Tensor:
        x = self[0](single, multi, question)
        for layer in list(self)[1:]:
            x = layer(x)
        return x


def token_positions(side: int, n_freq: int = 3) -> torch.Tensor:
    """Fourier features of each token's centre (x, y in [0, 1]): explicit 2-D positions, any V alike."""
    centres = (torch.arange(side, dtype=torch.float32) + 0.5) / side
    y, x = torch.meshgrid(centres, centres, indexing="ij")
    coords = torch.stack([x.flatten(), y.flatten()], dim=-1)  # (V, 2)
    freqs = 2.0 ** torch.arange(n_freq, dtype=torch.float32) * math.pi
    angles = coords[:, :, None] * freqs  # (V, 2, F)
    return torch.cat([angles.sin(), angles.cos()], dim=-1).flatten(1)  # (V, 4F)


class AvgPoolAdapter(nn.Module):
    """The tiny grid's baseline: average-pool the single-level grid to g x g, then mlp2x_gelu. With
    `position_features` (a config choice; no reference has them) 12 Fourier features of each token's
    centre are concatenated before the projector, so a pooled token still says where it came from."""

    def __init__(self, visual_tokens: int, dim: int, lm_dim: int, patch_grid: int | None, position_features: bool):
        super().__init__()
        side = math.isqrt(visual_tokens)
        if side * side != visual_tokens or (patch_grid and side > patch_grid):
            raise ValueError(
                f"grid.visual_tokens: the avgpool compressor needs a square V no larger than the "
                f"{patch_grid}x{patch_grid} patch grid, got V={visual_tokens}"
            )
        self.side = side
        positions = token_positions(side) if position_features else torch.zeros(visual_tokens, 0)
        self.register_buffer("positions", positions[None], persistent=False)
        self.projector = nn.Sequential(*mlp2x_gelu(dim + positions.shape[-1], lm_dim))

    def forward(self, single, multi=None, question=None) -> torch.Tensor:
        b, p, d = single.shape
        grid = math.isqrt(p)
        pooled = F.adaptive_avg_pool2d(single.transpose(1, 2).reshape(b, d, grid, grid), self.side)
        tokens = pooled.flatten(2).transpose(1, 2)
        pos = self.positions.to(tokens.dtype).expand(b, -1, -1)
        return self.projector(torch.cat([tokens, pos], dim=-1))


def projector_of(adapter: nn.Module) -> nn.Module:
    """The adapter's final mlp2x_gelu (to the LLM width): what FLOP accounting calls the projector."""
    if isinstance(adapter, QueCCAdapter):
        return nn.Sequential(*list(adapter)[1:])
    return adapter.mlp if isinstance(adapter, TokenPacker) else adapter.projector


MULTI_LEVEL = frozenset(choices.MULTI_LEVEL_COMPRESSORS)  # the adapters that read the multi-level features
assert set(choices.COMPRESSORS) == {"avgpool", *MULTI_LEVEL}, "vlmscale.choices.COMPRESSORS lists the adapters"


def build_adapter(
    name: str,
    *,
    visual_tokens: int,
    vision_dim: int,
    lm_dim: int,
    text_dim: int | None = None,
    patch_grid: int | None = None,
    levels: int = 4,
    position_features: bool = False,
) -> nn.Module:
    """The stage-1-trainable module from encoder outputs to LLM input embeddings (see the module docstring).
    `levels`: how many encoder layers the multi-level features concatenate (4 in both references)."""
    if name not in choices.COMPRESSORS:
        raise ValueError(f"compressor: unknown {name!r}; choose from {list(choices.COMPRESSORS)}")
    if name == "avgpool":
        return AvgPoolAdapter(visual_tokens, vision_dim, lm_dim, patch_grid, position_features)
    if position_features:
        raise ValueError(f"position_features: the {name} adapter is built as its reference code, which has none")
    if patch_grid is None:
        raise ValueError(f"the {name} compressor needs the patch grid size")
    kv_dim = vision_dim * levels
    if name == "tokenpacker":
        return TokenPacker(visual_tokens, vision_dim, kv_dim, lm_dim, patch_grid)
    return QueCCAdapter(visual_tokens, vision_dim, kv_dim, lm_dim, text_dim or lm_dim, patch_grid)
