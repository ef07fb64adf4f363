"""`vlmscale status`: the grid as an LLM x V matrix of cell states (a row per LLM, seed and compressor),
read from the results folder alone.

States: done (train, eval and FLOP files present, trained for the current spec), stale (trained for
another spec: the next run retrains it), running (a training log that is still growing), failed (the
training log ends in an error), not started. Running cells show their last step and job id.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

from vlmscale import config as vcfg
from vlmscale.fileio import spec_hash

PROGRESS = re.compile(r"(stage[12]) step (\d+)/(\d+)")
SUBMITTED = re.compile(r"submitted job (\S+) \((\w+)\); logs: (\S+)")


def load_config(path: str | Path) -> dict:
    return vcfg.load_file(path, vcfg.SCHEMA)


def _tail(path: Path, size: int = 20000) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(max(0, path.stat().st_size - size))
            return fh.read().decode(errors="replace")
    except OSError:
        return ""


def cell_state(cfg: dict, cell: vcfg.Cell, running_window_s: float = 120.0) -> dict:
    results = Path(cfg["results"])
    cell_dir = results / "cells" / cell.id
    rule_log = results / "logs" / "train" / f"{cell.id}.log"
    text = _tail(rule_log)
    job = SUBMITTED.search(text)
    job_log = Path(job.group(3)) if job else None
    progress_text = text + (_tail(job_log) if job_log else "")
    steps = PROGRESS.findall(progress_text)
    info = {
        "cell": cell.id,
        "job": job.group(1) if job else "",
        "step": f"{steps[-1][0]} {steps[-1][1]}/{steps[-1][2]}" if steps else "",
    }
    train_json = cell_dir / "train.json"
    if train_json.exists():
        trained = json.loads(train_json.read_text())
        if trained.get("config_hash") != spec_hash(
            vcfg.cell_spec(cfg, cell.llm, cell.visual_tokens, cell.seed, cell.compressor)
        ):
            return {**info, "state": "stale"}
        evals = [cell_dir / "eval" / f"{b['name']}.json" for b in cfg["benchmarks"]]
        complete = all(p.exists() for p in evals) and (cell_dir.parent / "flops.json").exists()
        return {**info, "state": "done" if complete else "trained"}
    if not text and not steps:
        return {**info, "state": "not started"}
    newest = max((p.stat().st_mtime for p in (rule_log, job_log) if p and p.exists()), default=0)
    if re.search(r"(Traceback|: error: |Error\b)", progress_text) and time.time() - newest > 5:
        return {**info, "state": "failed"}
    return {**info, "state": "running" if time.time() - newest < running_window_s else "stalled"}


def matrix(cfg: dict) -> str:
    states = {(c.compressor, c.llm, c.seed, c.visual_tokens): cell_state(cfg, c) for c in vcfg.cells(cfg)}
    vs, seeds, compressors = cfg["grid"]["visual_tokens"], vcfg.seeds(cfg), vcfg.compressors(cfg)
    header = ["LLM \\ V"] + [str(v) for v in vs]
    rows = [header]
    for comp, llm, seed in [(c, m["name"], s) for c in compressors for m in cfg["llms"] for s in seeds]:
        row = [llm + (f" seed {seed}" if len(seeds) > 1 else "") + (f" {comp}" if len(compressors) > 1 else "")]
        for v in vs:
            s = states[(comp, llm, seed, v)]
            text = s["state"]
            if s["state"] in ("running", "stalled", "failed") and s["step"]:
                text += f" {s['step']}"
            if s["job"] and s["state"] != "done":
                text += f" [job {s['job']}]"
            row.append(text)
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)) for r in rows]
    counts = {}
    for s in states.values():
        counts[s["state"]] = counts.get(s["state"], 0) + 1
    summary = ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
    return "\n".join(lines) + f"\n\n{len(states)} cells: {summary}"


def main(cfg_path: str) -> str:
    return matrix(load_config(cfg_path))
