"""The identity of a trained cell. Torch-free: the workflow reads `TRAINING_CODE` on every invocation.

Two hashes, two meanings, one name each everywhere:

* `config_hash`: the hash of a stage's spec alone (what the config decides); written into every cell
  file (train.json, eval/*.json, flops.json) so `vlmscale status` can tell a stale file from a current one.
* `run_key`: the hash of a cell's training spec *and* the training code: the identity of a trained cell.
  It keys the checkpoint (one with another run_key is not resumed), the attempts log, train.json and the
  cell's MLflow run (tag `vlmscale.run_key`; runs logged before this name carry `vlmscale.config_hash`).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from vlmscale.fileio import spec_hash

# The source that decides trained weights. The train rule passes their fingerprint as a param, so an edit
# retrains, and the run key keeps a checkpoint of other code from being resumed.
TRAINING_CODE = (
    "training/trainer.py",
    "data/batching.py",
    "model/cell.py",
    "specs.py",
    "model/vlm.py",
    "data/tokenizer.py",
    "data/samples.py",
    "training/distributed.py",
    "model/vision.py",
    "training/checkpoint.py",
)
RUN_KEY_TAG = "vlmscale.run_key"
OLD_RUN_KEY_TAG = "vlmscale.config_hash"  # what runs logged by earlier versions carry


def fingerprint(names) -> str:
    """Hash of the content of some of the package's modules (by file name, in the order given)."""
    h = hashlib.sha256()
    for name in names:
        h.update((Path(__file__).parent / name).read_bytes())
    return h.hexdigest()[:12]


def code_fingerprint() -> str:
    """Hash of the training code: a code change must not resume an old checkpoint."""
    return fingerprint(TRAINING_CODE)


def run_key(spec: dict) -> str:
    """Identity of a trained cell: its resolved spec and the training code."""
    return spec_hash({"spec": spec, "code": code_fingerprint()})


def config_hash(spec: dict) -> str:
    """Hash of a stage's spec alone."""
    return spec_hash(spec)
