"""Gather every cell's JSON results into one table (one row per cell x benchmark) with DuckDB.

Writes results/grid.parquet (the portable copy every later stage reads) and results/grid.duckdb (the
single-writer query database, tables `evals` and view `family_errors`). A missing cell is an error that
names it, unless the caller asks for a deliberate partial grid.
"""

from __future__ import annotations

import os
from pathlib import Path

import duckdb
import pandas as pd

from vlmscale.analysis.sizes import nominal_or_nan
from vlmscale.fileio import read_json

FAMILY_QUERY = """
SELECT family, compressor, llm, llm_params, visual_tokens,
       1 - avg(accuracy) AS error, count(*) AS n_benchmarks
FROM {source}
{where}
GROUP BY family, compressor, llm, llm_params, visual_tokens
ORDER BY family, compressor, llm_params, visual_tokens
"""


class IncompleteGrid(RuntimeError):
    """Cells or benchmarks are missing from the results folder."""


def cell_rows(cell_dir: Path, benchmarks: list[str]) -> list[dict]:
    """Rows of one trained cell (cells/{llm}/{compressor}/v{V}/s{seed}); its FLOPs are its (LLM, compressor,
    V) architecture's, one folder up."""
    train = read_json(cell_dir / "train.json")
    flops = read_json(cell_dir.parent / "flops.json")
    flop_cols = {}
    for row in flops["rows"]:
        q = row["text_tokens"]
        flop_cols.update({f"{k}_q{q}": v for k, v in row.items() if k != "text_tokens"})
    rows = []
    for bench in benchmarks:
        ev = read_json(cell_dir / "eval" / f"{bench}.json")
        rows.append(
            {
                "cell": train["cell"],
                "llm": train["llm"],
                "llm_params": train["llm_params"]["total"],
                "llm_params_non_embedding": train["llm_params"]["non_embedding"],
                # the paper's convention (Qwen-1.5 0.5B, ...) for comparisons with it; NaN for other LLMs
                "llm_params_nominal": nominal_or_nan(train["llm_params"]["total"]),
                "visual_tokens": train["visual_tokens"],
                "seed": train.get("seed", 0),
                "compressor": train.get("compressor", "avgpool"),
                "benchmark": bench,
                "family": ev["family"],
                "accuracy": ev["accuracy"],
                "error": 1.0 - ev["accuracy"],
                "n_questions": ev["n_questions"],
                # a GPT-judged lmms-eval task: "gpt", or "none: rule-based only" (judge: none); "" otherwise
                "judge": ev.get("judge", ""),
                "train_seconds": train["train_seconds"],
                "final_loss": train["final_loss"],
                "config_hash": train["config_hash"],
                "run_key": train["run_key"],
                "code_version": train["code_version"],
                "mlflow_run_id": train.get("mlflow_run_id"),
                **flop_cols,
            }
        )
    return rows


def collect(
    results: Path, cells: list[str], benchmarks: list[str], allow_partial: bool = False
) -> tuple[pd.DataFrame, list[str]]:
    missing, rows = [], []
    for cell in cells:
        cell_dir = results / "cells" / cell
        needed = [cell_dir / "train.json", cell_dir.parent / "flops.json"] + [
            cell_dir / "eval" / f"{b}.json" for b in benchmarks
        ]
        absent = [str(p) for p in needed if not p.exists()]
        if absent:
            missing.append(f"{cell} (missing {absent[0]}{' and more' if len(absent) > 1 else ''})")
            continue
        rows += cell_rows(cell_dir, benchmarks)
    if missing and not allow_partial:
        raise IncompleteGrid(
            f"{len(missing)} of {len(cells)} cells are incomplete: "
            + "; ".join(missing)
            + ". Finish them, or pass --allow-partial to fit the rest deliberately."
        )
    if not rows:
        raise IncompleteGrid("no complete cells to aggregate")
    return pd.DataFrame(rows), missing


def write_tables(df: pd.DataFrame, parquet: Path, database: Path) -> None:
    parquet.parent.mkdir(parents=True, exist_ok=True)
    tmp_db = database.with_name(f".{database.name}.tmp")
    tmp_db.unlink(missing_ok=True)
    con = duckdb.connect(str(tmp_db))
    try:
        con.register("frame", df)
        con.execute("CREATE TABLE evals AS SELECT * FROM frame")
        con.execute("CREATE VIEW family_errors AS " + FAMILY_QUERY.format(source="evals", where=""))
        tmp_parquet = parquet.with_name(f".{parquet.name}.tmp")
        con.execute(f"COPY evals TO '{tmp_parquet}' (FORMAT parquet)")
    finally:
        con.close()
    os.replace(tmp_parquet, parquet)
    os.replace(tmp_db, database)


def family_table(path: str | Path, family: str | None = None, compressor: str | None = None) -> pd.DataFrame:
    """Per-(LLM, V) error of a family (and compressor: one of them, where the table has several) from a grid
    parquet or any CSV with llm_params, visual_tokens, error (vlmscale.analysis.tables): `error` is the mean
    over seeds of the per-seed mean over the family's benchmarks, `error_sd` the spread across seeds,
    `n_seeds` how many."""
    from dataclasses import asdict

    from vlmscale.analysis.tables import cell_rows, seed_rows

    rows = [asdict(c) for c in cell_rows(seed_rows(path, family, compressor))]
    return pd.DataFrame(rows).drop(columns="replicates")


def main(cfg: dict) -> dict:
    results = Path(cfg["results"])
    df, missing = collect(results, cfg["cells"], cfg["benchmarks"], cfg.get("allow_partial", False))
    write_tables(df, Path(cfg["parquet"]), Path(cfg["database"]))
    return {"rows": len(df), "cells": df["cell"].nunique(), "missing_cells": missing}
