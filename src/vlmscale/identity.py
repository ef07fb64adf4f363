"""The identity of a trained cell, and the code each stage's outputs depend on. Torch-free: the workflow
computes the code fingerprints on every invocation.

Two hashes, two meanings, one name each everywhere:

* `config_hash`: the hash of a stage's spec alone (what the config decides); written into every cell
  file (train.json, eval/*.json, flops.json) so `vlmscale status` can tell a stale file from a current one.
* `run_key`: the hash of a cell's training spec *and* the training code: the identity of a trained cell.
  It keys the checkpoint (one with another run_key is not resumed), the attempts log, train.json and the
  cell's MLflow run (tag `vlmscale.run_key`; runs logged before this name carry `vlmscale.config_hash`).

A stage's code is computed, not listed: the module that computes its outputs and every vlmscale module it
imports, transitively, imports inside functions included (`code_closure`). Its fingerprint hashes each of
those files' path inside the package and content, so an edit reruns exactly the stages whose closure holds
the file, and a project moved elsewhere reruns nothing. Job wrappers that only submit, track or print
(`vlmscale.orchestration`, `vlmscale.cli`) are not stage code: editing them reruns nothing.
"""

from __future__ import annotations

import ast
import functools
import hashlib
from pathlib import Path

from vlmscale.fileio import spec_hash

PACKAGE = Path(__file__).parent
TRAINING_MODULE = "training.trainer"  # computes a trained cell: its closure is the run key's code
RUN_KEY_TAG = "vlmscale.run_key"
OLD_RUN_KEY_TAG = "vlmscale.config_hash"  # what runs logged by earlier versions carry


def module_file(module: str) -> Path:
    """The file of a vlmscale module given by its dotted name below the package ("data.batching")."""
    path = PACKAGE.joinpath(*module.split("."))
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def _is_module(module: str) -> bool:
    path = PACKAGE.joinpath(*module.split("."))
    return path.is_dir() or path.with_suffix(".py").is_file()


def _packages_of(module: str) -> set[str]:
    """The packages Python runs on the way to a module: "model.vlm" -> {"", "model"} ("" = vlmscale itself)."""
    parts = module.split(".")
    return {".".join(parts[:i]) for i in range(len(parts))}


@functools.cache
def imported_modules(module: str) -> frozenset[str]:
    """The vlmscale modules (and their packages) that a module imports anywhere in its file."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(module_file(module).read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            top, _, below = node.module.partition(".")
            if top == "vlmscale":
                for alias in node.names:  # `from vlmscale.model import vision` names a module, `import VLM` not
                    name = f"{below}.{alias.name}".lstrip(".")
                    found.add(name if _is_module(name) else below)
        elif isinstance(node, ast.Import):
            found |= {a.name.partition(".")[2] for a in node.names if a.name.startswith("vlmscale.")}
    return frozenset(set().union(*(_packages_of(m) | {m} for m in found)) if found else set())


def code_closure(*modules: str) -> list[str]:
    """The modules whose code the given ones run: themselves, their packages and every vlmscale module they
    import, transitively; as file paths inside the package, sorted."""
    seen: set[str] = set()
    todo = [m for module in modules for m in _packages_of(module) | {module}]
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo.extend(imported_modules(module) - seen)
    return sorted(module_file(m).relative_to(PACKAGE).as_posix() for m in seen)


def fingerprint(*modules: str) -> str:
    """Hash of the code the given modules run (`code_closure`): each file's path inside the package and content."""
    h = hashlib.sha256()
    for name in code_closure(*modules):
        h.update(name.encode() + b"\0" + (PACKAGE / name).read_bytes() + b"\0")
    return h.hexdigest()[:12]


def code_fingerprint() -> str:
    """Hash of the training code: a code change must not resume an old checkpoint."""
    return fingerprint(TRAINING_MODULE)


def run_key(spec: dict) -> str:
    """Identity of a trained cell: its resolved spec and the training code."""
    return spec_hash({"spec": spec, "code": code_fingerprint()})


def config_hash(spec: dict) -> str:
    """Hash of a stage's spec alone."""
    return spec_hash(spec)
