"""The package's import graph, read from its source by the tests themselves (not by vlmscale.identity,
whose fingerprints the tests check against it)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "vlmscale"


def module_name(path: Path) -> str:
    """A package file's dotted name below vlmscale: data/batching.py -> data.batching."""
    return ".".join(path.relative_to(PACKAGE).with_suffix("").parts)


def package_files() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if p.name != "__init__.py")


def imported_modules(path: Path) -> set[str]:
    """The vlmscale modules a file imports, anywhere in it."""
    modules = {module_name(p) for p in package_files()}
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            parts = node.module.split(".")
            if parts[0] == "vlmscale":
                base = ".".join(parts[1:])
                found |= {base} if base in modules else {f"{base}.{a.name}".lstrip(".") for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".", 1)[1] for a in node.names if a.name.startswith("vlmscale.")}
    return (found & modules) - {module_name(path)}


def files_run_by(module: str) -> set[str]:
    """The package files Python may run for a module: the module, every vlmscale module it imports anywhere
    (transitively), and the __init__.py of each package on the way; as paths relative to the package."""
    seen, todo = set(), [module]
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(imported_modules(PACKAGE.joinpath(*name.split(".")).with_suffix(".py")) - seen)
    files = {Path(*m.split(".")).with_suffix(".py").as_posix() for m in seen}
    packages = {Path(*m.split(".")[:i], "__init__.py").as_posix() for m in seen for i in range(len(m.split(".")))}
    return files | packages
