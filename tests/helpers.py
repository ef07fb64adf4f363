"""What several test files share: the repository, the test grids (tests/configs/*.yaml), one way to run the
workflow, and a small training job. Fixtures live in conftest.py; these are plain functions."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

from vlmscale.specs import TrainJob

REPO = Path(__file__).resolve().parents[1]
CONFIGS = Path(__file__).resolve().parent / "configs"
RENDEZVOUS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
LLM = {"name": "t", "source": "config", "arch": "qwen2", "hidden_size": 16, "intermediate_size": 32,
       "num_layers": 1, "num_heads": 2}  # fmt: skip


def grid_config(name: str) -> dict:
    """A test grid by name: tests/configs/{name}.yaml, as a fresh dict (tests edit their copy)."""
    return yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())


def snakemake(workdir: Path, configfile: str, *args: str, env: dict | None = None, background: bool = False,
              profile: str | None = None, **popen):  # fmt: skip
    """Run the workflow in `workdir` on a config file there: to the end (a CompletedProcess, output captured),
    or in the background (a Popen writing driver.log: a file, not a pipe, so a killed reader cannot block it)."""
    env = {**(env or os.environ), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "MPLBACKEND": "Agg"}
    for key in RENDEZVOUS:  # a rendezvous an in-process training left here is no job's: two jobs would share its port
        env.pop(key, None)
    cmd = ["snakemake", "-s", str(REPO / "Snakefile"), "--configfile", configfile]
    cmd += ["--profile", str(REPO / "profiles" / profile)] if profile else ["--cores", "2"]
    cmd += list(args)
    if not background:
        return subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, env=env, timeout=1200)
    with open(workdir / "driver.log", "a") as log:
        return subprocess.Popen(cmd, cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT, **popen)


def cell_cfg(small_data, small_vision, ckpt_dir, **train_overrides) -> TrainJob:
    """A small training job on the session's data and tower (conftest's small_data, small_vision)."""
    tspec = {
        "batch_size": 8,
        "seed": 0,
        "warmup_frac": 0.1,
        "log_every": 5,
        "checkpoint_every": 10,
        "stage1": {"steps": 6, "lr": 1e-3},
        "stage2": {"steps": 30, "lr": 3e-3},
        **train_overrides,
    }
    spec = {"cell": "t/v4", "llm": LLM, "visual_tokens": 4, "compressor": "avgpool", "train": tspec}
    return TrainJob(spec, data_root=str(small_data), vision=str(small_vision), checkpoint_dir=str(ckpt_dir))


def run_driver(workdir: Path, *args: str, **popen) -> subprocess.Popen:
    """The workflow driver in the background on `grid.yaml` with the local profile, as a user starts it."""
    return snakemake(workdir, "grid.yaml", *args, background=True, profile="local", **popen)


VOLATILE = ("seconds", "latency", "run_id", "checkpoint", "time", "root", "code_version", "manifest", "job")


def progress_lines(workdir: Path) -> int:
    logs = (workdir / "results/logs/submitit").glob("*_log.out")
    return sum(p.read_text(errors="replace").count("stage2 step") for p in logs)


def wait_for_training_progress(workdir: Path, proc: subprocess.Popen, lines: int) -> bool:
    """Wait until `lines` more training progress lines are logged; False if the run ends first."""
    target = progress_lines(workdir) + lines
    while proc.poll() is None:
        if progress_lines(workdir) >= target:
            return True
        time.sleep(0.2)
    return False


def stable(value):
    """A result with timings, paths and run ids removed: what must match between two runs."""
    if isinstance(value, dict):
        return {k: stable(v) for k, v in value.items() if not any(word in k for word in VOLATILE)}
    if isinstance(value, list):
        return [stable(v) for v in value]
    return value


def results(workdir: Path) -> dict:
    files = sorted((workdir / "results/cells").rglob("*.json")) + sorted((workdir / "results/law").rglob("*.json"))
    files = [p for p in files if ".done" not in p.parts]  # evaluation's resume cache, keyed by file times
    return {str(p.relative_to(workdir)): stable(json.loads(p.read_text())) for p in files}


def attempts(workdir: Path) -> dict[str, list[dict]]:
    out = {}
    for path in (workdir / "results/checkpoints").glob("*/*/v*/s*/attempts.jsonl"):
        cell = path.parent.relative_to(workdir / "results/checkpoints").as_posix()  # llm/compressor/vV/sSEED
        out[cell] = [json.loads(x) for x in path.read_text().splitlines()]
    return out


def default_config() -> dict:
    """The embedded default (config.yaml), as a fresh dict."""
    return yaml.safe_load((REPO / "config.yaml").read_text())


def load(cfg: dict) -> dict:
    """A config as the workflow loads it: validated against the schema (defaults filled), then checked."""
    from snakemake.utils import validate

    from vlmscale import config as vcfg

    cfg = copy.deepcopy(cfg)
    validate(cfg, vcfg.SCHEMA, set_default=True)
    return vcfg.check(cfg)


ENV = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "MPLBACKEND": "Agg"}


def run(cmd: list[str], cwd: Path) -> tuple[int, str]:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=ENV, timeout=300)
    return proc.returncode, proc.stdout + proc.stderr


def snakemake_dry_run(tmp_path: Path, cfg: dict | str) -> str:
    text = cfg if isinstance(cfg, str) else yaml.safe_dump(cfg)
    (tmp_path / "cfg.yaml").write_text(text)
    code, out = run(
        ["snakemake", "-s", str(REPO / "Snakefile"), "--configfile", "cfg.yaml", "--cores", "1", "-n"], tmp_path
    )
    assert code != 0, out
    assert "Traceback" not in out, out
    assert not (tmp_path / "results").exists()  # refused before any job
    return out
