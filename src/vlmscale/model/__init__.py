"""The VLM: vision tower and features, compressors and projector, the LLM, a trained cell loaded back."""
