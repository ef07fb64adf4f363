"""Data: the synthetic generator, LLaVA-format records, samples, tokenizers and batches."""
