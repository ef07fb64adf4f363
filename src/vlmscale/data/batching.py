"""From samples to tensors: the stages' training samples, the batch a step draws, and its layout.

Batches are a pure function of (seed, stage, step): slices of per-epoch permutations, so a resumed job
draws the batches the killed one would have drawn, and one epoch sees every record once.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

import torch

from vlmscale.data.samples import Sample, load_llava_conversations, with_image_root
from vlmscale.data.tokenizer import IGNORE, IMAGE, WordTokenizer, pad_right
from vlmscale.specs import STAGES


@dataclass
class Batch:
    """Sequences laid out as tokenizer.py describes: right-padded ids with V IMAGE placeholders per image,
    labels on the answers only, each row's prompt length (what generation starts from), the question alone
    (what QueCC conditions on) and the images' patch features, one feature row per image in row order. A
    text-only row (0 images) has no placeholders and one feature row, a blank image's, run through the
    adapter and dropped, as LLaVA does."""

    input_ids: torch.Tensor
    labels: torch.Tensor
    prompt_lengths: torch.Tensor
    question_ids: torch.Tensor
    question_lengths: torch.Tensor
    features: torch.Tensor
    truncated: int = 0  # rows cut at the model's maximum length
    image_counts: torch.Tensor | None = None  # images per row; None: one each (feature rows = batch rows)

    def to(self, device) -> "Batch":
        tensors = (self.input_ids, self.labels, self.prompt_lengths, self.question_ids, self.question_lengths,
                   self.features)  # fmt: skip
        counts = None if self.image_counts is None else self.image_counts.to(device)
        return Batch(*(t.to(device) for t in tensors), truncated=self.truncated, image_counts=counts)


def sequence_row(sample: Sample, tokenizer, visual_tokens: int) -> tuple[list[int], list[int]]:
    """(ids, labels) of one sample: each image's IMAGE marker widened to the V visual tokens' places; a
    text-only sample's sequence has none (LLaVA's num_images == 0)."""
    images = len(sample.images)
    ids, labs = tokenizer.sequence(sample.conversation, images=images)
    if ids.count(IMAGE) != images:
        raise ValueError(f"{sample.question[:60]!r}: {ids.count(IMAGE)} image places for {images} images "
                         f"(a question holding the text '<image>' itself?)")  # fmt: skip
    wide_ids, wide_labs = [], []
    for i, label in zip(ids, labs):
        wide_ids += [IMAGE] * visual_tokens if i == IMAGE else [i]
        wide_labs += [IGNORE] * visual_tokens if i == IMAGE else [label]
    return wide_ids, wide_labs


def row_features(samples: list[Sample], features) -> torch.Tensor:
    """One feature row per image, in row order; for a text-only row the feature source's blank image
    (LLaVA feeds a zero image for such a row and keeps none of its tokens)."""
    images = [path for s in samples for path in s.images]
    if len(images) == len(samples) and all(s.has_image for s in samples):
        return features(images)
    blank = features.blank()
    if not images:
        return blank[None].expand(len(samples), *blank.shape).clone()
    fetched, rows = features(images), []
    found = iter(fetched)
    for s in samples:
        rows += [next(found) for _ in s.images] if s.has_image else [blank.to(fetched.device, fetched.dtype)]
    return torch.stack(rows)


def make_batch(samples: list[Sample], tokenizer, visual_tokens: int, features, max_length: int | None = None) -> Batch:
    """Tokenise a few samples, each conversation one sequence (tokenising per batch keeps a 665K-sample
    set out of memory), cut at `max_length` tokens, and fetch their features from the feature source."""
    rows, labels, prompt_lengths, truncated = [], [], [], 0
    for s in samples:
        ids, labs = sequence_row(s, tokenizer, visual_tokens)
        if max_length and len(ids) > max_length:
            ids, labs, truncated = ids[:max_length], labs[:max_length], truncated + 1
        rows.append(ids)
        labels.append(labs)
        prompt_lengths.append(next((i for i, label in enumerate(labs) if label != IGNORE), len(labs)))
    ids, _ = pad_right(rows, tokenizer.pad_id)
    label_ids, _ = pad_right(labels, IGNORE)
    question_ids, question_lengths = pad_right([tokenizer.question_ids(s.question) for s in samples], tokenizer.pad_id)
    counts = torch.tensor([len(s.images) for s in samples])
    return Batch(
        ids,
        label_ids,
        torch.tensor(prompt_lengths),
        question_ids,
        question_lengths,
        row_features(samples, features),
        truncated,
        None if bool((counts == 1).all()) else counts,
    )


def verified_images(manifest: dict) -> frozenset[str]:
    """The images the data stage verified (manifest `verified`), which jobs need not look up again."""
    return frozenset(manifest.get("images", ())) if manifest.get("verified") else frozenset()


def check_samples(samples: list[Sample], tokenizer, features, what: str, verified: frozenset = frozenset()) -> None:
    """Before the first step: every image has features (or exists) and every answer can be encoded.
    Images the data stage verified are trusted (in memory, no file system lookup); others are looked up."""
    missing = features.missing(path for s in samples for path in s.images if path not in verified)
    if missing:
        raise FileNotFoundError(f"{what}: {len(missing)} images have no tower features (first: {missing[0]})")
    if isinstance(tokenizer, WordTokenizer):
        for s in samples:
            for _, answer in s.conversation:
                tokenizer.answer_id(answer)


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


@functools.lru_cache(maxsize=4)
def epoch_order(n: int, seed: int, stage: int, epoch: int) -> torch.Tensor:
    """The order one epoch visits the n records in: a permutation seeded by (seed, stage, epoch) alone."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + stage * 100_003 + epoch)
    return torch.randperm(n, generator=gen)


def batch_indices(n: int, batch_size: int, seed: int, stage: int, step: int) -> torch.Tensor:
    """The global batch of (stage, step), stage 1 or 2: records step*batch .. step*batch + batch - 1 of the
    stage's sequence of epochs, each epoch a fresh permutation (without replacement, as LLaVA's sampler:
    every record once per epoch). A batch that runs past an epoch's end continues into the next one's order."""
    positions = torch.arange(step * batch_size, (step + 1) * batch_size)
    epochs = positions // n
    out = torch.empty(batch_size, dtype=torch.long)
    for epoch in epochs.unique().tolist():
        here = epochs == epoch
        out[here] = epoch_order(n, seed, stage, epoch)[positions[here] % n]
    return out


@dataclass
class TrainingData:
    """Each stage's samples and how a batch of them becomes tensors on the job's device."""

    samples: dict[str, list[Sample]]
    tokenizer: object
    visual_tokens: int
    features: object
    device: torch.device
    max_length: int | None = None  # train.max_length (LLaVA's model_max_length): longer conversations are cut
    truncated: int = 0  # rows cut in the batches drawn since the last take_truncated()
    aspects: dict = field(default_factory=dict)  # per stage: image_aspect_ratio (square | pad)

    def batch(self, stage: str, indices: torch.Tensor) -> Batch:
        rows = [self.samples[stage][i] for i in indices.tolist()]
        features = self.features.with_aspect(self.aspects[stage]) if stage in self.aspects else self.features
        batch = make_batch(rows, self.tokenizer, self.visual_tokens, features, self.max_length)
        self.truncated += batch.truncated
        return batch.to(self.device)

    def take_truncated(self) -> int:
        taken, self.truncated = self.truncated, 0
        return taken
