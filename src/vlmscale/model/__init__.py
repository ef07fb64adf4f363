"""The VLM: vision tower and features, compressors and projector, the LLM, a trained cell loaded back."""

from vlmscale.model.adapters import build_adapter

__all__ = ["build_adapter"]
