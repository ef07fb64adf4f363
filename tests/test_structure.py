"""The package's shape: no import cycle among its modules (imports inside functions included), short
functions, and light commands that do not load the heavy libraries they do not use."""

from __future__ import annotations

import ast
import json
import subprocess
import sys

import pytest
from codegraph import PACKAGE, imported_modules, module_name, package_files

REFERENCE = PACKAGE / "reference" / "paper_visual_reasoning.csv"
LONGEST_FUNCTION = 60
EXEMPT = {("cli", "build_parser")}  # the argument parser: one flat list of options


def cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle, or None."""
    state: dict[str, str] = {}

    def visit(node: str, trail: list[str]) -> list[str] | None:
        state[node] = "open"
        for dep in sorted(graph[node]):
            if state.get(dep) == "open":
                return trail[trail.index(dep) :] + [dep] if dep in trail else [node, dep]
            if dep not in state and (found := visit(dep, trail + [dep])):
                return found
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start, [start])):
            return found
    return None


def test_the_cycle_finder_finds_a_cycle():
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_among_the_modules():
    graph = {module_name(p): imported_modules(p) for p in package_files()}
    assert cycle(graph) is None


def test_no_function_is_longer_than_sixty_lines():
    long = []
    for path in package_files():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > LONGEST_FUNCTION and (module_name(path), node.name) not in EXEMPT:
                    long.append(f"{module_name(path)}:{node.name} ({lines} lines)")
    assert not long


def loaded_modules(*argv: str) -> set[str]:
    """The top-level modules loaded by `vlmscale ARGV` by the time it exits."""
    script = (
        "import atexit, json, sys; from vlmscale import cli\n"
        "atexit.register(lambda: print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})), file=sys.stderr))\n"
        "try:\n    cli.main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
    )
    proc = subprocess.run([sys.executable, "-c", script, *argv], capture_output=True, text=True, timeout=120)
    return set(json.loads(proc.stderr.strip().splitlines()[-1]))


@pytest.mark.parametrize("command", ["help", "fit", "frontier"])
def test_light_commands_do_not_load_heavy_libraries(command, tmp_path):
    fit = tmp_path / "fit.json"
    subprocess.run([sys.executable, "-m", "vlmscale.cli", "fit", str(REFERENCE), "--out", str(fit)], check=True)
    argv = {"help": ["--help"], "fit": ["fit", str(REFERENCE)], "frontier": ["frontier", str(fit)]}[command]
    loaded = loaded_modules(*argv)
    assert not loaded & {"torch", "pandas", "scipy", "matplotlib", "transformers", "mlflow", "snakemake"}
