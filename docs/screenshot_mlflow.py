"""Screenshots of the MLflow UI on a finished grid, for the README: what a researcher sees on opening it.

    python docs/screenshot_mlflow.py [RESULTS_DIR] [OUT_DIR]

Writes OUT_DIR/mlflow_experiment.png (the experiment's landing page: its runs table, cells unfolded),
mlflow_parent_run.png (the grid's parent run: the fitted laws in its description) and
mlflow_charts.png (the runs' chart view). Needs Debian's chromium (apt-get install chromium) and the
`playwright` Python package (its driver only; the browser is the system one). Serves the local store on
127.0.0.1 with MLflow's telemetry off.
"""
from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from playwright.sync_api import sync_playwright

REPO = Path(__file__).resolve().parents[1]
BROWSER_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def grid_runs(db: Path) -> tuple[str, str, str]:
    """(experiment id, parent run name, parent run id) of the newest grid in the store."""
    con = sqlite3.connect(db)
    row = con.execute(
        "SELECT r.experiment_id, r.name, r.run_uuid FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid "
        "WHERE t.key = 'vlmscale.parent' ORDER BY r.start_time DESC").fetchone()
    con.close()
    return row


def serve(db: Path, port: int) -> subprocess.Popen:
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", f"sqlite:///{db}",
                               "--host", "127.0.0.1", "--port", str(port)],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(90):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
            return server
        except OSError:
            time.sleep(1)
    server.kill()
    raise RuntimeError("mlflow ui did not start")


def close_side_panels(page) -> None:
    """Dismiss what covers the page on a first visit (notices, the assistant side panel)."""
    page.keyboard.press("Escape")
    for label in ("Close", "close", "Dismiss"):
        buttons = page.locator(f"[aria-label='{label}']")
        for i in range(buttons.count()):
            try:
                buttons.nth(i).click(timeout=2000)
            except Exception:  # hidden or covered: leave it
                pass


def shoot(page, url: str, wait_text: str, out: Path, unfold: str | None = None) -> None:
    page.goto(url)
    page.get_by_text(wait_text, exact=False).first.wait_for(timeout=60000)
    close_side_panels(page)
    if unfold:  # child (cell) runs are folded under the grid's parent run: unfold them where the table allows
        expander = page.locator("[role='row'], tr", has=page.get_by_text(unfold, exact=True)).first.locator(
            "button, [role='button']").first
        try:
            expander.click(timeout=5000)
            page.get_by_text("/s0", exact=False).first.wait_for(timeout=20000)
        except Exception as exc:  # a UI version without an expander: the folded table is still the page
            print(f"could not unfold {unfold}: {type(exc).__name__}")
    close_side_panels(page)
    time.sleep(3)
    page.screenshot(path=str(out))
    print(f"wrote {out}")


def main() -> None:
    results = Path(sys.argv[1] if len(sys.argv) > 1 else "results").resolve()
    out = Path(sys.argv[2] if len(sys.argv) > 2 else REPO / "docs")
    port = int(os.environ.get("PORT", "5077"))
    exp, parent, parent_id = grid_runs(results / "mlflow.db")
    server = serve(results / "mlflow.db", port)
    base = f"http://127.0.0.1:{port}/#/experiments/{exp}"
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=BROWSER_ARGS)
            page = browser.new_page(viewport={"width": 1500, "height": 900})
            ml = "workflowType=machine_learning"  # the UI's "Model training" view (its default is GenAI)
            shoot(page, f"{base}/runs?{ml}", parent, out / "mlflow_experiment.png", unfold=parent)
            shoot(page, f"{base}/runs/{parent_id}?{ml}", "Y(N, V)", out / "mlflow_parent_run.png")
            shoot(page, f"{base}/runs?{ml}&compareRunsMode=CHART", parent, out / "mlflow_charts.png")
            browser.close()
    finally:
        server.terminate()


if __name__ == "__main__":
    main()
