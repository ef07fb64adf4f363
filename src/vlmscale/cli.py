"""`vlmscale` command line: one subcommand per workflow stage, plus fit/frontier on any table.

Stage subcommands take the stage's result-affecting settings as one canonical JSON (`--spec`), exactly
the value Snakemake compares in `params:`, and paths as flags.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from vlmscale.choices import GPUS, LAW_FORMS


def _json(text: str):
    return json.loads(text)


def _launch(fn, job, args, name: str) -> dict:
    from vlmscale.orchestration import launch

    return launch.run(
        fn,
        job,
        executor=args.executor,
        log_dir=Path(args.results) / "logs" / "submitit",
        name=name,
        resources=args.slurm,
    )


def cmd_prepare_data(args) -> dict:
    from vlmscale.data import synthetic

    return synthetic.main({"data": args.spec, "out": args.out})


def cmd_pretrain_vision(args) -> dict:
    from vlmscale.model import vision
    from vlmscale.specs import TowerJob

    return _launch(vision.main, TowerJob(args.spec, args.data_root, args.out, args.threads), args, "vision")


def cmd_train(args) -> dict:
    from vlmscale.orchestration import track
    from vlmscale.specs import TrainJob

    job = TrainJob(
        args.spec, args.data_root, args.vision, args.checkpoint_dir, args.out, args.tracking, args.threads, ops=args.ops
    )
    result = _launch(track.train_main, job, args, f"train:{job.cell}")
    if result.get("world_size", 1) == 1 or os.environ.get("RANK", "0") == "0":  # one writer per cell
        write_outputs({args.out: result})
    return result


def write_outputs(files: dict) -> None:
    """Write a stage's outputs here too, from its returned result: the job wrote them already, but a
    driver that re-attached after a crash finds them deleted by Snakemake's incomplete-output cleanup."""
    from vlmscale.fileio import write_json

    for path, value in files.items():
        write_json(path, value)


def cmd_evaluate(args) -> dict:
    from vlmscale.evaluation import evaluate
    from vlmscale.fileio import read_json
    from vlmscale.specs import EvalJob

    trained = read_json(args.train_json)
    job = EvalJob(
        args.spec["model"],
        tuple(args.spec["benchmarks"]),
        args.data_root,
        args.vision,
        trained["checkpoint"],
        args.out_dir,
        args.spec["max_new_tokens"],
        args.threads,
        dtype=args.spec.get("dtype", "auto"),
        max_new_tokens_cap=args.spec.get("max_new_tokens_cap", 512),
    )
    result = _launch(evaluate.main, job, args, f"eval:{job.cell}")
    write_outputs({Path(args.out_dir) / f"{r['benchmark']}.json": r for r in result["results"]})
    return {r["benchmark"]: r["accuracy"] for r in result["results"]}


def cmd_flops(args) -> dict:
    from vlmscale.analysis import flops
    from vlmscale.specs import FlopJob

    spec = args.spec
    return flops.main(
        FlopJob(spec["architecture"], spec["vision"], tuple(spec["text_tokens"]), args.manifest, args.out, args.threads)
    )


def cmd_aggregate(args) -> dict:
    from vlmscale.analysis import aggregate

    return aggregate.main(
        {
            "results": args.results,
            "cells": args.spec["cells"],
            "benchmarks": args.spec["benchmarks"],
            "parquet": args.parquet,
            "database": args.database,
            "allow_partial": args.allow_partial,
        }
    )


def cmd_fit(args) -> dict:
    from vlmscale.analysis import law
    from vlmscale.analysis.tables import cell_rows, compressors_of, read_rows, seed_rows
    from vlmscale.fileio import write_json

    cells = cell_rows(seed_rows(args.table, args.family, args.compressor))
    data = law.LawData.from_arrays(
        [c.llm_params for c in cells],
        [c.visual_tokens for c in cells],
        [c.error for c in cells],
        args.text_tokens,
        [list(c.replicates) for c in cells],
    )
    result = law.fit_with_checks(data, args.form, args.bootstrap, args.seed, args.huber, tuple(args.v_star_q)).to_dict()
    result["family"] = args.family or "all"
    result["compressor"] = args.compressor or "".join(compressors_of(read_rows(args.table))) or "all"
    result["table"] = str(args.table)
    if args.out:
        write_json(args.out, result)
    return result


def cmd_frontier(args) -> dict:
    from vlmscale.analysis import law
    from vlmscale.fileio import atomic_write_text, read_json

    rows, trusted = [], {}
    for fit_path in args.fits:
        saved = read_json(fit_path)
        fit = law.FitResult.from_dict(saved)
        cells = _trained_cells(saved)
        named = {"family": saved.get("family", Path(fit_path).stem), "compressor": saved.get("compressor", "all")}
        trusted[tuple(named.values())] = not law.trust_problems(fit)
        for q in args.text_tokens:
            budgets = args.flops or _default_budgets(cells, q)
            for row in law.frontier(fit, q, budgets, (args.v_min, args.v_max)) + law.best_trained_cells(
                cells, q, budgets
            ):
                rows.append({**named, **row})
    rows = law.mark_optimal(rows, trusted)
    if args.out:
        atomic_write_text(args.out, _csv_text(rows))
    return {"rows": len(rows), "optimal": [r for r in rows if r["optimal"]], "frontier": args.out or rows}


def _csv_text(rows: list[dict]) -> str:
    import csv
    import io

    columns = list(dict.fromkeys(key for row in rows for key in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, columns, restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def _trained_cells(fit: dict) -> list[dict]:
    """The cells the fit came from (when its table is still there), for the best-trained-cell frontier."""
    table = fit.get("table")
    if not table or not Path(table).exists():
        return []
    from vlmscale.analysis.tables import cell_rows, seed_rows

    family, compressor = fit.get("family"), fit.get("compressor")
    cells = cell_rows(
        seed_rows(
            table, None if family in (None, "all") else family, None if compressor in (None, "all") else compressor
        )
    )
    return [
        {"llm": c.llm, "llm_params": c.llm_params, "visual_tokens": c.visual_tokens, "error": c.error} for c in cells
    ]


def _default_budgets(cells: list[dict], q: int) -> list[float]:
    """Five budgets spanning the trained cells' costs (or 1e9-1e13 FLOPs without them)."""
    import numpy as np

    from vlmscale.analysis.cost import paper_flops

    if not cells:
        return list(np.geomspace(1e9, 1e13, 5))
    n = [c["llm_params"] for c in cells]
    v = [c["visual_tokens"] for c in cells]
    return list(np.geomspace(paper_flops(min(n), q, min(v)), paper_flops(max(n), q, max(v)), 5))


def cmd_report(args) -> dict:
    from vlmscale.analysis import report

    return report.main(
        {
            "grid": args.grid,
            "laws": args.laws,
            "frontier": args.frontier,
            "text_tokens": args.text_tokens,
            "out_dir": args.out_dir,
        }
    )


def cmd_summary(args) -> None:
    from vlmscale.analysis import report

    print(report.summary(args.results, args.laws))


def cmd_plot(args) -> dict:
    from vlmscale.analysis import report

    return {"figure": report.plot(args.fit, args.table, args.family, args.text_tokens, args.out, args.overlay_paper)}


def cmd_status(args) -> None:
    from vlmscale.orchestration import status

    print(status.main(args.configfile))


def cmd_check_config(args) -> dict:
    from vlmscale import config as vcfg

    cfg = vcfg.load_file(args.configfile, args.schema or vcfg.SCHEMA)
    cells = vcfg.cells(cfg)
    return {"config": args.configfile, "ok": True, "cells": len(cells), "benchmarks": len(cfg["benchmarks"])}


def cmd_plan(args) -> None:
    from vlmscale import config as vcfg
    from vlmscale.orchestration import plan

    cfg = vcfg.load_file(args.configfile, vcfg.SCHEMA, data=False)
    if args.gpu:
        cfg["plan"]["gpu"] = args.gpu
    print(plan.main(cfg))


def cmd_init_tracking(args) -> dict:
    from vlmscale.orchestration import track

    return track.init_store(args.uri, args.experiment, args.grid, args.artifact_root)


def cmd_track_sync(args) -> dict:
    from vlmscale.orchestration import track_sync

    return track_sync.main(
        {
            "tracking": args.spec,
            "grid": args.grid,
            "results": args.results,
            "report_dir": args.report_dir,
            "out": args.out,
        }
    )


def cmd_ui(args) -> dict:
    import os

    from vlmscale.orchestration import track

    uri = track.resolve_uri(args.uri)
    track.quiet_mlflow()
    os.environ.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")  # starts in seconds, not a minute
    # MLflow 3's UI opens on its GenAI view unless told otherwise; the grid lives in "Model training".
    print(
        f"MLflow UI on http://127.0.0.1:{args.port}/#/experiments?workflowType=machine_learning (store {uri}); "
        f"Ctrl-C to stop",
        file=sys.stderr,
    )
    os.execvp(
        sys.executable,
        [
            sys.executable,
            "-m",
            "mlflow",
            "ui",
            "--backend-store-uri",
            uri,
            "--host",
            "127.0.0.1",
            "--port",
            str(args.port),
        ],
    )


def _stage(sub, name, fn, help_text, spec=True):
    p = sub.add_parser(name, help=help_text)
    if spec:
        p.add_argument("--spec", type=_json, required=True, help="canonical JSON of the stage's settings")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--executor", default="inline", help="inline | debug | local | slurm")
    p.add_argument("--results", default="results")
    p.add_argument("--slurm", type=_json, default={}, help="the Slurm job's request as JSON (launch.slurm keys)")
    p.set_defaults(func=fn)
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vlmscale", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = _stage(sub, "prepare-data", cmd_prepare_data, "write the synthetic LLaVA-format data set")
    p.add_argument("--out", required=True)
    p = _stage(sub, "pretrain-vision", cmd_pretrain_vision, "pretrain the shared vision tower, encode all images")
    p.add_argument("--data-root", required=True)
    p.add_argument("--out", required=True)
    p = _stage(sub, "train", cmd_train, "train one cell (two stages)")
    for flag in ("--data-root", "--vision", "--out", "--checkpoint-dir"):
        p.add_argument(flag, required=True)
    p.add_argument("--tracking", type=_json, default={})
    p.add_argument("--ops", type=_json, default={}, help="when to log and checkpoint (never changes the weights)")
    p = _stage(sub, "evaluate", cmd_evaluate, "evaluate one cell on its benchmarks (one JSON each)")
    for flag in ("--data-root", "--vision", "--train-json", "--out-dir"):
        p.add_argument(flag, required=True)
    p = _stage(sub, "flops", cmd_flops, "count one cell's inference FLOPs")
    p.add_argument("--manifest", required=True)
    p.add_argument("--out", required=True)
    p = _stage(sub, "aggregate", cmd_aggregate, "gather cell results into grid.parquet / grid.duckdb")
    p.add_argument("--parquet", required=True)
    p.add_argument("--database", required=True)
    p.add_argument(
        "--allow-partial", action="store_true", help="fit the complete cells deliberately, naming the missing"
    )

    p = sub.add_parser(
        "fit",
        help="fit the scaling law to a table (grid parquet, or a CSV with llm_params, visual_tokens, error[, family])",
    )
    p.add_argument("table")
    p.add_argument("--form", default="paper", choices=list(LAW_FORMS))
    p.add_argument("--family", default=None)
    p.add_argument("--compressor", default=None, help="the compressor's cells (needed when the table has several)")
    p.add_argument("--bootstrap", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--text-tokens", type=int, default=0, help="Q, used by the paper-qv form")
    p.add_argument("--v-star-q", type=int, nargs="+", default=[0, 50], help="text-token counts for V*'s intervals")
    p.add_argument("--huber", type=float, default=None, metavar="DELTA", help="robust fit: Huber loss with this delta")
    p.add_argument("--out")
    p.set_defaults(func=cmd_fit)

    p = sub.add_parser("frontier", help="compute-optimal (N, V) per FLOP budget from fitted laws")
    p.add_argument("fits", nargs="+")
    p.add_argument("--text-tokens", type=int, nargs="+", default=[0, 50])
    p.add_argument("--flops", type=float, nargs="*")
    p.add_argument("--v-min", type=float, default=1)
    p.add_argument("--v-max", type=float, default=576)
    p.add_argument("--out")
    p.set_defaults(func=cmd_frontier)

    p = sub.add_parser("report", help="figures and results/report.md")
    p.add_argument("--grid", required=True)
    p.add_argument("--laws", nargs="+", required=True)
    p.add_argument("--frontier", required=True)
    p.add_argument("--text-tokens", type=int, nargs="+", default=[0, 50])
    p.add_argument("--out-dir", required=True)
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("summary", help="each law's V* and whether to trust it, from a finished run's results")
    p.add_argument("--results", default="results")
    p.add_argument("--laws", nargs="*", help="the grid's law JSONs (default: every one under RESULTS/law)")
    p.set_defaults(func=cmd_summary)

    p = sub.add_parser("plot", help="error vs FLOPs with the fitted law and frontier, for any fit and table")
    p.add_argument("fit")
    p.add_argument("--table", required=True, help="the table the fit came from (CSV or grid parquet)")
    p.add_argument("--family", default=None)
    p.add_argument("--text-tokens", type=int, default=0)
    p.add_argument("--overlay-paper", action="store_true", help="add the paper's published cells in grey")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_plot)

    p = sub.add_parser("status", help="the grid as an LLM x V matrix: done / running / failed / stale / not started")
    p.add_argument("--configfile", default="config.yaml")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser(
        "check-config", help="check a config file (YAML syntax with its line, schema, grid) without running anything"
    )
    p.add_argument("configfile")
    p.add_argument("--schema", default=None, help="default: the workflow's schema")
    p.set_defaults(func=cmd_check_config)

    p = sub.add_parser("plan", help="cost and memory of every cell before anything is downloaded or submitted")
    p.add_argument("--configfile", default="config.yaml")
    p.add_argument("--gpu", choices=list(GPUS), help="plan for this GPU instead of the config's plan.gpu")
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("init-tracking", help="create the MLflow store and experiment once")
    p.add_argument("--uri", required=True)
    p.add_argument("--experiment", required=True)
    p.add_argument("--grid", required=True)
    p.add_argument("--artifact-root")
    p.set_defaults(func=cmd_init_tracking)

    p = _stage(sub, "track-sync", cmd_track_sync, "replay evaluation, FLOPs and figures into the MLflow runs")
    p.add_argument("--grid", required=True)
    p.add_argument("--report-dir", required=True)
    p.add_argument("--out", required=True)

    p = sub.add_parser("ui", help="open the MLflow UI on the local store, bound to 127.0.0.1")
    p.add_argument("--uri", default="sqlite:///results/mlflow.db")
    p.add_argument("--port", type=int, default=5000)
    p.set_defaults(func=cmd_ui)
    return parser


def _cell_label(args) -> str:
    """The cell a stage's --spec is about: its own `cell`, or that of the model (evaluate) or architecture
    (flops) it holds."""
    spec = getattr(args, "spec", None)
    if not isinstance(spec, dict):
        return ""
    inner = spec.get("model") or spec.get("architecture") or {}
    cell = spec.get("cell") or (inner.get("cell") if isinstance(inner, dict) else None)
    return f" [{cell}]" if isinstance(cell, str) else ""


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # MLflow's opt-out, inherited by every job
    args = build_parser().parse_args(argv)
    try:
        result = args.func(args)
    except (ValueError, OSError, RuntimeError) as exc:
        # Known failures print one message naming the cell; a traceback would bury it.
        print(f"vlmscale {args.command}{_cell_label(args)}: error: {exc}", file=sys.stderr)
        return 2
    if result is not None:
        print(json.dumps(result, indent=2, default=str)[:4000])
    return 0


if __name__ == "__main__":
    sys.exit(main())
