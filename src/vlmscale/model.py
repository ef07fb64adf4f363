"""The VLM: frozen vision tower -> compressor (patches -> V tokens) -> projector -> causal LM.

One code path for tiny and real models: the LM is any `AutoModelForCausalLM` (built from a config for
the tiny grid, `from_pretrained` for a Hugging Face id or local folder) fed with `inputs_embeds`.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


# --------------------------------------------------------------------------- vision tower

def build_vision_tower(spec: dict) -> nn.Module:
    """A tiny ViT from a transformers config (random init; pretrained once by vlmscale.vision)."""
    from transformers import ViTConfig, ViTModel

    config = ViTConfig(
        image_size=spec["image_size"],
        patch_size=spec["patch_size"],
        num_channels=3,
        hidden_size=spec["hidden_size"],
        num_hidden_layers=spec["num_layers"],
        num_attention_heads=spec["num_heads"],
        intermediate_size=4 * spec["hidden_size"],
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return ViTModel(config, add_pooling_layer=False)


def patch_features(tower: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) in [0, 1] -> (B, P, D) patch features (the CLS token dropped)."""
    hidden = tower(pixel_values=pixels).last_hidden_state
    return hidden[:, 1:, :]


# --------------------------------------------------------------------------- compressor

def valid_token_counts(patch_grid: int) -> list[int]:
    """Visual-token counts the avgpool compressor can produce from a square patch grid: k*k, k <= grid."""
    return [k * k for k in range(1, patch_grid + 1)]


class AvgPoolCompressor(nn.Module):
    """Average-pool a square patch grid to a k x k grid (V = k^2 tokens); parameter-free baseline."""

    def __init__(self, visual_tokens: int):
        super().__init__()
        side = math.isqrt(visual_tokens)
        if side * side != visual_tokens:
            raise ValueError(f"avgpool compressor needs a square number of visual tokens, got V={visual_tokens}")
        self.side = side

    def forward(self, features: torch.Tensor, question: torch.Tensor | None = None) -> torch.Tensor:
        b, p, d = features.shape
        grid = math.isqrt(p)
        if self.side > grid:
            raise ValueError(f"cannot make {self.side}x{self.side} tokens from a {grid}x{grid} patch grid")
        x = features.transpose(1, 2).reshape(b, d, grid, grid)
        x = F.adaptive_avg_pool2d(x, self.side)
        return x.flatten(2).transpose(1, 2)


def token_side(visual_tokens: int, patch_grid: int, name: str) -> int:
    """k for V = k*k tokens, each summarising an s x s region of the patch grid (s = patch_grid / k)."""
    side = math.isqrt(visual_tokens)
    if side * side != visual_tokens or patch_grid % side:
        divisors = [k * k for k in range(1, patch_grid + 1) if patch_grid % k == 0]
        raise ValueError(f"the {name} compressor cannot make V={visual_tokens} tokens from a {patch_grid}x{patch_grid} "
                         f"patch grid (sqrt(V) must divide {patch_grid}); choose from {divisors}")
    return side


def regions(features: torch.Tensor, side: int) -> torch.Tensor:
    """(B, g*g, D) -> (B, side*side, s*s, D): the patches of each token's own s x s region, row-major."""
    b, p, d = features.shape
    grid = math.isqrt(p)
    s = grid // side
    x = features.reshape(b, side, s, side, s, d).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, side * side, s * s, d)


class LocalCrossAttention(nn.Module):
    """Each query attends only to the patches of its own region (multi-head, pre-norm, residual)."""

    def __init__(self, dim: int, kv_dim: int, heads: int):
        super().__init__()
        if dim % heads:
            heads = 1
        self.heads = heads
        self.q_norm, self.kv_norm = nn.LayerNorm(dim), nn.LayerNorm(kv_dim)
        self.q, self.kv, self.out = nn.Linear(dim, dim), nn.Linear(kv_dim, 2 * dim), nn.Linear(dim, dim)

    def forward(self, queries: torch.Tensor, region_feats: torch.Tensor) -> torch.Tensor:
        b, v, n, _ = region_feats.shape
        d, h = queries.shape[-1], self.heads
        q = self.q(self.q_norm(queries)).reshape(b, v, 1, h, d // h).transpose(2, 3)  # (B, V, H, 1, d)
        k, val = self.kv(self.kv_norm(region_feats)).chunk(2, dim=-1)
        k = k.reshape(b, v, n, h, d // h).transpose(2, 3)  # (B, V, H, n, d)
        val = val.reshape(b, v, n, h, d // h).transpose(2, 3)
        attended = F.scaled_dot_product_attention(q, k, val)  # (B, V, H, 1, d)
        return queries + self.out(attended.transpose(2, 3).reshape(b, v, d))


class TokenPackerCompressor(nn.Module):
    """TokenPacker: low-resolution point queries (each region's mean) cross-attend to their own region of
    the (optionally multi-level, channel-concatenated) encoder features. Independent of the question."""

    def __init__(self, visual_tokens: int, dim: int, patch_grid: int, levels: int = 1, heads: int = 4, **_):
        super().__init__()
        self.side = token_side(visual_tokens, patch_grid, "tokenpacker")
        self.dim = dim
        self.attend = LocalCrossAttention(dim, dim * levels, heads)

    def forward(self, features: torch.Tensor, question: torch.Tensor | None = None) -> torch.Tensor:
        region_feats = regions(features, self.side)
        queries = region_feats[..., : self.dim].mean(dim=2)  # the last level's (or only) features, pooled
        return self.attend(queries, region_feats)


class QueCCCompressor(nn.Module):
    """QueCC (the paper's query-based convolutional cross-attention): the question, embedded by the LM
    and projected, is added to every patch feature; a depthwise convolution with stride s downsamples
    these question-aware features into V queries; each query cross-attends to its own region."""

    def __init__(self, visual_tokens: int, dim: int, patch_grid: int, text_dim: int | None = None, heads: int = 4, **_):
        super().__init__()
        self.side = token_side(visual_tokens, patch_grid, "quecc")
        stride = patch_grid // self.side
        self.text = nn.Linear(text_dim or dim, dim)
        self.down = nn.Conv2d(dim, dim, kernel_size=stride, stride=stride, groups=dim)
        self.attend = LocalCrossAttention(dim, dim, heads)

    def forward(self, features: torch.Tensor, question: torch.Tensor | None = None) -> torch.Tensor:
        if question is None:
            raise ValueError("the quecc compressor needs the question's embedding")
        x = features + self.text(question)[:, None, :]
        b, p, d = x.shape
        grid = math.isqrt(p)
        queries = self.down(x.transpose(1, 2).reshape(b, d, grid, grid)).flatten(2).transpose(1, 2)
        return self.attend(queries, regions(x, self.side))


COMPRESSORS = {"avgpool": AvgPoolCompressor, "tokenpacker": TokenPackerCompressor, "quecc": QueCCCompressor}


def build_compressor(name: str, visual_tokens: int, dim: int, patch_grid: int | None, text_dim: int | None) -> nn.Module:
    if name not in COMPRESSORS:
        raise ValueError(f"unknown compressor {name!r}; choose from {sorted(COMPRESSORS)}")
    if name == "avgpool":
        return AvgPoolCompressor(visual_tokens)
    if patch_grid is None:
        raise ValueError(f"the {name} compressor needs the patch grid size")
    return COMPRESSORS[name](visual_tokens, dim, patch_grid, text_dim=text_dim)


def token_positions(side: int, n_freq: int = 3) -> torch.Tensor:
    """Fourier features of each token's centre (x, y in [0, 1]): explicit 2-D positions, any V alike."""
    centres = (torch.arange(side, dtype=torch.float32) + 0.5) / side
    y, x = torch.meshgrid(centres, centres, indexing="ij")
    coords = torch.stack([x.flatten(), y.flatten()], dim=-1)  # (V, 2)
    freqs = 2.0 ** torch.arange(n_freq, dtype=torch.float32) * math.pi
    angles = coords[:, :, None] * freqs  # (V, 2, F)
    return torch.cat([angles.sin(), angles.cos()], dim=-1).flatten(1)  # (V, 4F)


class Projector(nn.Module):
    """mlp2x_gelu (LLaVA-1.5's projector) over [visual feature, 2-D position features]."""

    def __init__(self, vision_dim: int, lm_dim: int, pos_dim: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(vision_dim + pos_dim, lm_dim), nn.GELU(), nn.Linear(lm_dim, lm_dim))

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        pos = positions.to(tokens.dtype).expand(tokens.shape[0], -1, -1)
        return self.net(torch.cat([tokens, pos], dim=-1))


# --------------------------------------------------------------------------- language model

def build_llm(spec: dict, vocab_size: int) -> nn.Module:
    """Causal LM: random-init from a transformers config (source 'config') or from_pretrained (id/path)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    if spec.get("source", "config") != "config":
        return AutoModelForCausalLM.from_pretrained(spec["source"], dtype=torch.float32)
    config = AutoConfig.for_model(
        spec.get("arch", "qwen2"),
        vocab_size=vocab_size,
        hidden_size=spec["hidden_size"],
        intermediate_size=spec["intermediate_size"],
        num_hidden_layers=spec["num_layers"],
        num_attention_heads=spec["num_heads"],
        num_key_value_heads=spec["num_heads"],
        max_position_embeddings=256,
        tie_word_embeddings=True,
    )
    torch.manual_seed(spec.get("init_seed", 0))
    return AutoModelForCausalLM.from_config(config)


def count_llm_params(llm: nn.Module) -> dict:
    """Total and non-embedding parameter counts (a tied output head is counted once, in the embedding)."""
    total = sum(p.numel() for p in llm.parameters())
    embedding = llm.get_input_embeddings().weight.numel()
    return {"total": total, "non_embedding": total - embedding}


# --------------------------------------------------------------------------- the VLM

class VLM(nn.Module):
    """Compressor + projector + LM over precomputed (frozen) patch features."""

    def __init__(self, llm: nn.Module, vision_dim: int, visual_tokens: int, compressor: str = "avgpool",
                 patch_grid: int | None = None):
        super().__init__()
        text_dim = llm.get_input_embeddings().embedding_dim
        self.compressor = build_compressor(compressor, visual_tokens, vision_dim, patch_grid, text_dim)
        self.uses_question = compressor == "quecc"
        self.llm = llm
        positions = token_positions(math.isqrt(visual_tokens))
        self.register_buffer("positions", positions[None], persistent=False)
        self.projector = Projector(vision_dim, llm.get_input_embeddings().embedding_dim, positions.shape[-1])
        self.visual_tokens = visual_tokens

    def visual_embeds(self, features: torch.Tensor, question: torch.Tensor | None = None) -> torch.Tensor:
        return self.projector(self.compressor(features, question), self.positions)

    def question_embedding(self, text: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Mean of the question's token embeddings (pads excluded): what QueCC conditions on."""
        mask = (torch.arange(text.shape[1], device=text.device)[None, :] < lengths[:, None]).to(text.dtype)
        return (text * mask[..., None]).sum(1) / lengths[:, None].to(text.dtype)

    def forward(self, features: torch.Tensor, question_ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Logits for the token that follows each question: (B, vocab).

        Questions are right-padded; with causal attention no real token sees a pad, so the logits at
        each question's last real token are exact without an attention mask.
        """
        text = self.llm.get_input_embeddings()(question_ids)
        vis = self.visual_embeds(features, self.question_embedding(text, lengths) if self.uses_question else None)
        out = self.llm(inputs_embeds=torch.cat([vis, text], dim=1), use_cache=False)
        last = vis.shape[1] + lengths - 1
        return out.logits[torch.arange(len(lengths)), last]

    def freeze_llm(self, frozen: bool) -> None:
        for p in self.llm.parameters():
            p.requires_grad_(not frozen)
