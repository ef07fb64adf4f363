"""Shared fixtures: a small synthetic data set and tower features, generated once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("MPLBACKEND", "Agg")

SMALL_DATA = {
    "source": "synthetic",
    "seed": 0,
    "train_images_per_family": 60,
    "test_images_per_family": 20,
    "questions_per_image": {"reasoning": 2, "ocr": 2},
    "tasks": ["colour", "shape", "relation", "read", "next"],
}
SMALL_VISION = {
    "source": "tiny",
    "image_size": 32,
    "patch_size": 4,
    "hidden_size": 32,
    "num_layers": 1,
    "num_heads": 2,
    "steps": 20,
    "lr": 0.003,
    "batch_size": 16,
    "seed": 0,
    "cache": True,
    "feature_layer": -2,
    "bf16": False,
}


@pytest.fixture(scope="session")
def small_data(tmp_path_factory) -> Path:
    from vlmscale.data import synthetic as data

    root = tmp_path_factory.mktemp("data")
    data.generate(SMALL_DATA, root)
    return root


@pytest.fixture(scope="session")
def small_vision(small_data, tmp_path_factory) -> Path:
    from vlmscale.model import vision
    from vlmscale.specs import TowerJob

    out = tmp_path_factory.mktemp("vision")
    vision.main(TowerJob(SMALL_VISION, data_root=str(small_data), out=str(out)))
    return out / "tower.json"
