"""Evaluation: built-in benchmarks and metrics, lmms-eval tasks."""
