"""vlmscale: inference-optimal scaling laws for vision-language models, reproducibly."""

__version__ = "0.1.0"
