"""The VLM: frozen vision tower -> compressor (patches -> V tokens) -> projector -> causal LM.

One code path for tiny and real models: the LM is any `AutoModelForCausalLM` (built from a config for
the tiny grid, `from_pretrained` for a Hugging Face id or local folder) fed with `inputs_embeds`.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from vlmscale import choices

# --------------------------------------------------------------------------- vision tower


def build_vision_tower(spec: dict) -> nn.Module:
    """A tiny ViT from a transformers config (random init; pretrained once by vlmscale.model.vision)."""
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
        raise ValueError(
            f"the {name} compressor cannot make V={visual_tokens} tokens from a {patch_grid}x{patch_grid} "
            f"patch grid (sqrt(V) must divide {patch_grid}); choose from {divisors}"
        )
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
    """QueCC (the paper's query-based convolutional cross-attention), its query built as the paper's code
    builds it (locuslab/llava-token-compression: clip_encoder.py, quecc.py): the question run through the
    LM on its own, the last layer's hidden state at its last token, projected (linear + LayerNorm), is
    added to every patch feature; a depthwise convolution with stride s downsamples these question-aware
    features into V queries; each query cross-attends to its own region."""

    def __init__(self, visual_tokens: int, dim: int, patch_grid: int, text_dim: int | None = None, heads: int = 4, **_):
        super().__init__()
        self.side = token_side(visual_tokens, patch_grid, "quecc")
        stride = patch_grid // self.side
        self.text = nn.Sequential(nn.Linear(text_dim or dim, dim), nn.LayerNorm(dim, eps=1e-6))
        self.down = nn.Conv2d(dim, dim, kernel_size=stride, stride=stride, groups=dim)
        self.attend = LocalCrossAttention(dim, dim, heads)

    def forward(self, features: torch.Tensor, question: torch.Tensor | None = None) -> torch.Tensor:
        if question is None:
            raise ValueError("the quecc compressor needs the question's hidden state")
        x = features + self.text(question)[:, None, :]
        b, p, d = x.shape
        grid = math.isqrt(p)
        queries = self.down(x.transpose(1, 2).reshape(b, d, grid, grid)).flatten(2).transpose(1, 2)
        return self.attend(queries, regions(x, self.side))


COMPRESSORS = {"avgpool": AvgPoolCompressor, "tokenpacker": TokenPackerCompressor, "quecc": QueCCCompressor}
assert set(COMPRESSORS) == set(choices.COMPRESSORS), "vlmscale.choices.COMPRESSORS lists the implemented compressors"


def build_compressor(
    name: str, visual_tokens: int, dim: int, patch_grid: int | None, text_dim: int | None
) -> nn.Module:
    if name not in COMPRESSORS:
        raise ValueError(f"unknown compressor {name!r}; choose from {list(choices.COMPRESSORS)}")
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


def llm_config(spec: dict, vocab_size: int):
    """The LM's transformers config: built from the spec's keys (source 'config'), or read from the
    Hugging Face id / local folder (config.json only: no weights are loaded)."""
    from transformers import AutoConfig

    if spec.get("source", "config") != "config":
        return AutoConfig.from_pretrained(spec["source"])
    return AutoConfig.for_model(
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


def build_llm(spec: dict, vocab_size: int, on_meta: bool = False) -> nn.Module:
    """Causal LM: random-init from its config (source 'config'), or from_pretrained (id or folder).
    on_meta: the architecture without weights (shapes only), for counting parameters and FLOPs."""
    from transformers import AutoModelForCausalLM

    config = llm_config(spec, vocab_size)
    if on_meta:
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(config)
    if spec.get("source", "config") != "config":
        return AutoModelForCausalLM.from_pretrained(spec["source"], dtype=torch.float32)
    torch.manual_seed(spec.get("init_seed", 0))
    return AutoModelForCausalLM.from_config(config)


def count_llm_params(llm: nn.Module) -> dict:
    """Total and non-embedding parameter counts. Non-embedding leaves out the input embedding and, when
    untied (Qwen-1.5), the output head; a tied head is one tensor and counted once."""
    total = sum(p.numel() for p in llm.parameters())
    embedding = llm.get_input_embeddings().weight.numel()
    head = llm.get_output_embeddings()
    if head is not None and head.weight is not llm.get_input_embeddings().weight:
        embedding += head.weight.numel()
    return {"total": total, "non_embedding": total - embedding}


# --------------------------------------------------------------------------- the VLM


class VLM(nn.Module):
    """Compressor + projector + LM over (frozen) patch features.

    A batch's `input_ids` hold V IMAGE placeholders where the visual tokens go (tokenizer.IMAGE); they
    are replaced by the projected compressor output, so any chat template can place the image.
    """

    def __init__(
        self,
        llm: nn.Module,
        vision_dim: int,
        visual_tokens: int,
        compressor: str = "avgpool",
        patch_grid: int | None = None,
    ):
        super().__init__()
        text_dim = llm.get_input_embeddings().embedding_dim
        self.compressor = build_compressor(compressor, visual_tokens, vision_dim, patch_grid, text_dim)
        self.uses_question = compressor == "quecc"
        self.llm = llm
        positions = token_positions(math.isqrt(visual_tokens))
        self.register_buffer("positions", positions[None], persistent=False)
        self.projector = Projector(vision_dim, text_dim, positions.shape[-1])
        self.visual_tokens = visual_tokens

    def visual_embeds(self, features: torch.Tensor, question: torch.Tensor | None = None) -> torch.Tensor:
        return self.projector(self.compressor(features, question), self.positions)

    @torch.no_grad()
    def question_state(self, question_ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """The LM's last-layer hidden state at the question's last token, the question run on its own:
        what QueCC conditions on (no gradient flows back through this pass, as in the paper's code).
        Rows are right-padded; with causal attention the last real token sees no pad."""
        hidden = self.llm.base_model(input_ids=question_ids, use_cache=False).last_hidden_state
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), lengths.to(hidden.device) - 1]

    def embed(self, input_ids: torch.Tensor, features: torch.Tensor, question_ids=None, question_lengths=None):
        """Token embeddings with the V visual tokens written over each row's IMAGE placeholders."""
        from vlmscale.data.tokenizer import IMAGE

        is_image = input_ids == IMAGE
        embeds = self.llm.get_input_embeddings()(input_ids.masked_fill(is_image, 0))
        question = self.question_state(question_ids, question_lengths) if self.uses_question else None
        vis = self.visual_embeds(features.to(embeds.dtype), question)
        return embeds.masked_scatter(is_image[..., None], vis.to(embeds.dtype))

    def forward(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, targets) at the supervised positions only: the LM head runs on the answer tokens,
        not on all Q + V positions (a 150k-word head over every position would dominate memory).

        Rows are right-padded; with causal attention no real token sees a pad, so no mask is needed.
        """
        from vlmscale.data.tokenizer import IGNORE

        embeds = self.embed(batch.input_ids, batch.features, batch.question_ids, batch.question_lengths)
        hidden = self.llm.base_model(inputs_embeds=embeds, use_cache=False).last_hidden_state
        targets = batch.labels[:, 1:]
        keep = targets != IGNORE
        logits = self.llm.get_output_embeddings()(hidden[:, :-1][keep])
        return logits, targets[keep]

    @torch.no_grad()
    def generate(self, batch, max_new_tokens: int, eos_id: int | None) -> list[list[int]]:
        """Greedy decoding of each row's prompt (left-padded, with the KV cache); stops at eos_id."""
        prompts = [row[:n] for row, n in zip(batch.input_ids, batch.prompt_lengths.tolist())]
        width = max(len(p) for p in prompts)
        ids = torch.zeros(len(prompts), width, dtype=torch.long, device=batch.input_ids.device)
        mask = torch.zeros_like(ids)
        for i, p in enumerate(prompts):
            ids[i, width - len(p) :], mask[i, width - len(p) :] = p, 1
        embeds = self.embed(ids, batch.features, batch.question_ids, batch.question_lengths)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        out = self.llm(
            inputs_embeds=embeds, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1
        )
        tokens = [out.logits[:, -1].argmax(-1)]
        done = tokens[0] == eos_id if eos_id is not None else torch.zeros_like(tokens[0], dtype=torch.bool)
        while len(tokens) < max_new_tokens and not bool(done.all()):
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            positions = positions[:, -1:] + 1
            step = self.llm.get_input_embeddings()(tokens[-1])[:, None]
            out = self.llm(
                inputs_embeds=step,
                attention_mask=mask,
                position_ids=positions,
                past_key_values=out.past_key_values,
                use_cache=True,
                logits_to_keep=1,
            )
            tokens.append(out.logits[:, -1].argmax(-1))
            done |= tokens[-1] == eos_id
        return torch.stack(tokens, dim=1).tolist()

    def freeze_llm(self, frozen: bool) -> None:
        for p in self.llm.parameters():
            p.requires_grad_(not frozen)
