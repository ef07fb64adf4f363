"""A word-level tokenizer for the synthetic grid (the real path uses the LM's own AutoTokenizer)."""
from __future__ import annotations

import torch

SPECIALS = ("<pad>", "<unk>")


class WordTokenizer:
    def __init__(self, words: list[str]):
        self.vocab = list(SPECIALS) + sorted(set(words) - set(SPECIALS))
        self.index = {w: i for i, w in enumerate(self.vocab)}

    def __len__(self) -> int:
        return len(self.vocab)

    def encode(self, text: str) -> list[int]:
        return [self.index.get(w, 1) for w in text.split()]

    def answer_id(self, answer: str) -> int:
        ids = self.encode(answer)
        if len(ids) != 1:
            raise ValueError(f"answers must be one word on the synthetic grid, got {answer!r}")
        return ids[0]

    def batch(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-padded ids (B, L) and lengths (B,)."""
        encoded = [self.encode(t) for t in texts]
        lengths = torch.tensor([len(e) for e in encoded])
        ids = torch.zeros(len(encoded), int(lengths.max()), dtype=torch.long)
        for i, e in enumerate(encoded):
            ids[i, : len(e)] = torch.tensor(e)
        return ids, lengths
