"""The grid table as the law reads it: each (LLM, V) cell's family error, per seed and averaged over seeds.

Reads a grid parquet (written by `vlmscale aggregate`) or any CSV with llm_params, visual_tokens, error
[, family, compressor, llm, seed]. Light on purpose (the csv module; DuckDB only to open a parquet; no pandas), so
`vlmscale fit` and `vlmscale frontier` start in a fraction of a second. `vlmscale.analysis.aggregate` wraps the same
rows in data frames for the report.
"""

from __future__ import annotations

import csv
import statistics
from dataclasses import dataclass
from pathlib import Path

REQUIRED = ("llm_params", "visual_tokens", "error")


@dataclass(frozen=True)
class SeedRow:
    """One cell and seed: the mean error over the family's benchmarks."""

    family: str
    llm: str
    llm_params: float
    visual_tokens: int
    seed: int
    error: float
    n_rows: int  # benchmark rows averaged


@dataclass(frozen=True)
class CellRow:
    """One (LLM, V) cell: the mean over seeds, their spread, and each seed's error (for the bootstrap)."""

    family: str
    llm: str
    llm_params: float
    visual_tokens: int
    error: float
    error_sd: float  # sample standard deviation across seeds; 0 with one seed
    n_seeds: int
    n_rows: int
    replicates: tuple[float, ...]


def read_rows(path: str | Path) -> list[dict]:
    """Every row of a parquet or CSV table, as dicts."""
    path = str(path)
    if path.endswith(".parquet"):
        import duckdb

        con = duckdb.connect()
        try:
            cursor = con.execute("SELECT * FROM read_parquet(?)", [path])
            names = [d[0] for d in cursor.description]
            return [dict(zip(names, row)) for row in cursor.fetchall()]
        finally:
            con.close()
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _number(value) -> float | int:
    number = float(value)
    return int(number) if number.is_integer() else number


def seed_rows(path: str | Path, family: str | None = None, compressor: str | None = None) -> list[SeedRow]:
    """Per-(LLM, V, seed) error of a family (every row when family is None) and compressor, ordered by N, V,
    seed. A table of several compressors needs `compressor`: one law per compressor, never a mixture."""
    rows = _of_compressor(read_rows(path), path, compressor)
    columns = set(rows[0]) if rows else set()
    missing = sorted(set(REQUIRED) - columns)
    if rows and missing:
        raise ValueError(f"{path}: missing column(s) {missing}; need llm_params, visual_tokens, error")
    if family is not None and rows and "family" not in columns:
        raise ValueError(f"{path}: --family {family!r} given but the table has no 'family' column")
    groups: dict[tuple, list[float]] = {}
    for r in rows:
        fam = r.get("family", "all")
        if family is not None and fam != family:
            continue
        n = _number(r["llm_params"])
        key = (fam, str(r.get("llm", n)), n, int(_number(r["visual_tokens"])), int(_number(r.get("seed", 0))))
        groups.setdefault(key, []).append(float(r["error"]))
    if not groups:
        raise ValueError(f"{path}: no rows" + (f" for family {family!r}" if family else ""))
    out = [SeedRow(*key, sum(errors) / len(errors), len(errors)) for key, errors in groups.items()]
    return sorted(out, key=lambda s: (s.llm_params, s.visual_tokens, s.seed))


def compressors_of(rows: list[dict]) -> list[str]:
    """The compressors a table's rows name (none: a table without the column)."""
    return sorted({str(r["compressor"]) for r in rows if r.get("compressor") not in (None, "")})


def _of_compressor(rows: list[dict], path, compressor: str | None) -> list[dict]:
    named = compressors_of(rows)
    if compressor is None:
        if len(named) > 1:
            raise ValueError(f"{path}: the table holds the compressors {named}; name one (--compressor)")
        return rows
    if compressor not in named:
        raise ValueError(
            f"{path}: no rows of compressor {compressor!r} (the table has {named or 'no compressor column'})"
        )
    return [r for r in rows if r.get("compressor") == compressor]


def cell_rows(per_seed: list[SeedRow]) -> list[CellRow]:
    """Seed rows reduced to one row per (family, LLM, V), ordered by N and V."""
    groups: dict[tuple, list[SeedRow]] = {}
    for s in per_seed:
        groups.setdefault((s.family, s.llm, s.llm_params, s.visual_tokens), []).append(s)
    out = []
    for key, seeds in groups.items():
        errors = [s.error for s in seeds]
        sd = statistics.stdev(errors) if len(errors) > 1 else 0.0
        out.append(
            CellRow(
                *key,
                sum(errors) / len(errors),
                sd,
                len({s.seed for s in seeds}),
                sum(s.n_rows for s in seeds),
                tuple(errors),
            )
        )
    return sorted(out, key=lambda c: (c.llm_params, c.visual_tokens))
