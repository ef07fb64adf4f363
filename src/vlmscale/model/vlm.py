"""The VLM: frozen vision tower -> adapter (compressor + projector: patches -> V LLM embeddings) -> causal LM.

One code path for tiny and real models: the LM is any `AutoModelForCausalLM` (built from a config for
the tiny grid, `from_pretrained` for a Hugging Face id or local folder) fed with `inputs_embeds`.
"""

from __future__ import annotations

import torch
from torch import nn

from vlmscale.model.adapters import MULTI_LEVEL, build_adapter

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
    on_meta: the architecture without weights (shapes only), for counting parameters and FLOPs.

    Either way the global generator is left seeded by `init_seed`, so what is initialised next (the
    adapter) is a function of the seed: a pretrained LM draws nothing seeded, and without the seed the
    adapter would start from whatever state the process happened to be in, a different one every run."""
    from transformers import AutoModelForCausalLM

    config = llm_config(spec, vocab_size)
    if on_meta:
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(config)
    if spec.get("source", "config") != "config":
        llm = AutoModelForCausalLM.from_pretrained(spec["source"], dtype=torch.float32)
        torch.manual_seed(spec.get("init_seed", 0))
        return llm
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
    """Adapter + LM over (frozen) encoder features.

    A batch's `input_ids` hold V IMAGE placeholders where the visual tokens go (tokenizer.IMAGE); they
    are replaced by the adapter's output, so any chat template can place the image.

    A row's features are one tensor (B, P, D * (1 + levels)): the single-level features, then the
    multi-level concatenation of `levels` encoder layers (vlmscale.model.vision), so batches, caches and
    feature sources carry one tensor whatever the adapter reads. levels = 0: single-level only (avgpool;
    a tokenpacker / quecc given no multi-level features reads the single level as its only level).
    """

    def __init__(
        self,
        llm: nn.Module,
        vision_dim: int,
        visual_tokens: int,
        compressor: str = "avgpool",
        patch_grid: int | None = None,
        levels: int = 0,
        position_features: bool = False,
    ):
        super().__init__()
        text_dim = llm.get_input_embeddings().embedding_dim
        self.adapter = build_adapter(
            compressor, visual_tokens=visual_tokens, vision_dim=vision_dim, lm_dim=text_dim, text_dim=text_dim,
            patch_grid=patch_grid, levels=max(levels, 1), position_features=position_features,
        )  # fmt: skip
        self.uses_question = compressor == "quecc"
        self.multi_level = compressor in MULTI_LEVEL
        self.llm = llm
        self.vision_dim, self.levels, self.visual_tokens = vision_dim, levels, visual_tokens

    def split_features(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(single, multi) from a row's feature tensor (layout in the class docstring)."""
        d = self.vision_dim
        # The tower encodes its multi-level layers for every grid (config.vision_spec); a single-level
        # adapter (levels = 0) reads the first d channels whatever follows them.
        wide_enough = features.shape[-1] >= d if not self.multi_level else features.shape[-1] == d * (1 + self.levels)
        if not wide_enough:
            raise ValueError(
                f"features are {features.shape[-1]} wide; the adapter expects {d} single-level + "
                f"{self.levels} x {d} multi-level channels (vision.multi_level_layers and the tower disagree)"
            )
        single = features[..., :d]
        if not self.multi_level:
            return single, None
        return single, (features[..., d:] if self.levels else single)

    def visual_embeds(self, features: torch.Tensor, question: torch.Tensor | None = None) -> torch.Tensor:
        single, multi = self.split_features(features)
        return self.adapter(single, multi, None if question is None else question[:, None, :])

    @torch.no_grad()
    def question_state(self, question_ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """The LM's last-layer hidden state at the question's last token, the question run on its own:
        what QueCC conditions on (no gradient flows back through this pass, as in the paper's code).
        Rows are right-padded; with causal attention the last real token sees no pad."""
        hidden = self.llm.base_model(input_ids=question_ids, use_cache=False).last_hidden_state
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), lengths.to(hidden.device) - 1]

    def embed(self, input_ids, features, question_ids=None, question_lengths=None, image_counts=None):
        """Token embeddings with each image's V visual tokens written over its row's IMAGE placeholders, in
        order (Batch: one feature row per image; image_counts None: one image per row).

        A text-only row (0 images) has no placeholders; its feature row (a blank image's) still passes
        through the adapter and none of its tokens is kept, as LLaVA keeps `image_features[0:0]` for such a
        row: every rank then runs, and has gradients for, the same adapter parameters whatever its rows
        (DeepSpeed ZeRO-3 gathers them collectively)."""
        from vlmscale.data.tokenizer import IMAGE

        is_image = input_ids == IMAGE
        embeds = self.llm.get_input_embeddings()(input_ids.masked_fill(is_image, 0))
        question = self.question_state(question_ids, question_lengths) if self.uses_question else None
        if image_counts is None:
            image_counts = torch.ones(len(input_ids), dtype=torch.long, device=input_ids.device)
        rows = image_counts.clamp(min=1)  # feature rows per batch row
        if question is not None:
            question = question.repeat_interleave(rows, dim=0)  # each image conditioned on its row's question
        vis = self.visual_embeds(features.to(embeds.dtype), question).to(embeds.dtype)
        kept = (image_counts > 0).repeat_interleave(rows)
        if not bool(kept.all()):
            embeds = embeds + 0.0 * vis[~kept].sum()  # in the graph, adds nothing
        return embeds.masked_scatter(is_image[..., None], vis[kept])

    def forward(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, targets) at the supervised positions only: the LM head runs on the answer tokens,
        not on all Q + V positions (a 150k-word head over every position would dominate memory).

        Rows are right-padded; with causal attention no real token sees a pad, so no mask is needed.
        """
        from vlmscale.data.tokenizer import IGNORE

        embeds = self.embed(
            batch.input_ids, batch.features, batch.question_ids, batch.question_lengths, batch.image_counts
        )
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
        embeds = self.embed(ids, batch.features, batch.question_ids, batch.question_lengths, batch.image_counts)
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
