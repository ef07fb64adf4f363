"""From samples to tensors: the stages' training samples, the batch a step draws, and its layout.

Batches are a pure function of (seed, stage, step), so a resumed job draws the batches the killed one
would have drawn.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from vlmscale.jobs import STAGES
from vlmscale.samples import Sample, load_llava_conversations, with_image_root
from vlmscale.tokenizer import IGNORE, IMAGE, WordTokenizer, pad_right


@dataclass
class Batch:
    """Sequences laid out as tokenizer.py describes: right-padded ids with V IMAGE placeholders, labels on
    the answers only, each row's prompt length (what generation starts from), the question alone (what
    QueCC conditions on) and the rows' patch features."""

    input_ids: torch.Tensor
    labels: torch.Tensor
    prompt_lengths: torch.Tensor
    question_ids: torch.Tensor
    question_lengths: torch.Tensor
    features: torch.Tensor

    def to(self, device) -> "Batch":
        return Batch(
            *(
                t.to(device)
                for t in (
                    self.input_ids,
                    self.labels,
                    self.prompt_lengths,
                    self.question_ids,
                    self.question_lengths,
                    self.features,
                )
            )
        )


def make_batch(samples: list[Sample], tokenizer, visual_tokens: int, features) -> Batch:
    """Tokenise a few samples (tokenising per batch keeps a 665K-sample set out of memory) and fetch
    their features from the feature source."""
    rows, labels, prompt_lengths = [], [], []
    for s in samples:
        prefix, prompt = tokenizer.layout(s.question)
        head = prefix + [IMAGE] * visual_tokens + prompt
        answer = tokenizer.answer_ids(s.answer)
        rows.append(head + answer)
        labels.append([IGNORE] * len(head) + answer)
        prompt_lengths.append(len(head))
    ids, _ = pad_right(rows, tokenizer.pad_id)
    label_ids, _ = pad_right(labels, IGNORE)
    question_ids, question_lengths = pad_right([tokenizer.question_ids(s.question) for s in samples], tokenizer.pad_id)
    return Batch(
        ids,
        label_ids,
        torch.tensor(prompt_lengths),
        question_ids,
        question_lengths,
        features([s.image for s in samples]),
    )


def check_samples(samples: list[Sample], tokenizer, features, what: str) -> None:
    """Before the first step: every image has features (or exists) and every answer can be encoded."""
    missing = features.missing(s.image for s in samples)
    if missing:
        raise FileNotFoundError(f"{what}: {len(missing)} images have no tower features (first: {missing[0]})")
    if isinstance(tokenizer, WordTokenizer):
        for s in samples:
            tokenizer.answer_ids(s.answer)


def train_sources(manifest: dict, data_root: str | Path) -> dict[str, tuple[Path, str]]:
    """Per training stage: (conversation JSON, the folder its image paths are relative to).
    The synthetic set has one JSON for both stages; real data may give each stage its own (558K, 665K)."""
    root = Path(data_root)
    image_root = manifest.get("image_root", str(root))
    train = manifest["train"]
    if isinstance(train, str):
        return {stage: (root / train, image_root) for stage in STAGES}
    return {stage: (Path(train[stage]["json"]), train[stage]["image_folder"]) for stage in STAGES}


def load_stage_samples(manifest: dict, data_root) -> dict[str, list[Sample]]:
    """Samples per stage with absolute image paths; a JSON shared by both stages is read once."""
    sources = train_sources(manifest, data_root)
    loaded = {key: with_image_root(load_llava_conversations(key[0]), key[1]) for key in set(sources.values())}
    return {stage: loaded[key] for stage, key in sources.items()}


def batch_indices(n: int, batch_size: int, seed: int, stage: int, step: int) -> torch.Tensor:
    """The global batch of (stage, step): stage is 1 or 2."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + stage * 100_003 + step)
    return torch.randint(n, (batch_size,), generator=gen)


@dataclass
class TrainingData:
    """Each stage's samples and how a batch of them becomes tensors on the job's device."""

    samples: dict[str, list[Sample]]
    tokenizer: object
    visual_tokens: int
    features: object
    device: torch.device

    def batch(self, stage: str, indices: torch.Tensor) -> Batch:
        rows = [self.samples[stage][i] for i in indices.tolist()]
        return make_batch(rows, self.tokenizer, self.visual_tokens, self.features).to(self.device)
