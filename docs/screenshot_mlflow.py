"""Screenshot of the MLflow UI listing a grid's runs, for the README.

    python docs/screenshot_mlflow.py [RESULTS_DIR] [OUT.png]

Needs Debian's chromium (apt-get install chromium) and the `playwright` Python package (its bundled
driver only; the browser is the system one). Serves the local store on 127.0.0.1, waits until the run
table has rendered, then takes the picture.
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


def main() -> None:
    results = Path(sys.argv[1] if len(sys.argv) > 1 else "results").resolve()
    out = Path(sys.argv[2] if len(sys.argv) > 2 else REPO / "docs/mlflow_ui.png")
    port = int(os.environ.get("PORT", "5077"))
    db = results / "mlflow.db"
    con = sqlite3.connect(db)
    exp, parent = con.execute(
        "SELECT r.experiment_id, r.name FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid "
        "WHERE t.key = 'vlmscale.parent' ORDER BY r.start_time DESC").fetchone()
    con.close()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    mlflow = REPO / ".venv/bin/mlflow"
    server = subprocess.Popen([str(mlflow), "ui", "--backend-store-uri", f"sqlite:///{db}", "--host", "127.0.0.1",
                               "--port", str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(60):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
                break
            except OSError:
                time.sleep(1)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=[
                "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync"])
            page = browser.new_page(viewport={"width": 1500, "height": 900})
            page.goto(f"http://127.0.0.1:{port}/#/experiments/{exp}/runs")
            page.get_by_text(parent, exact=True).first.wait_for(timeout=60000)
            # Child (cell) runs are folded under the grid's parent run: unfold them.
            row = page.locator("[role='row']", has=page.get_by_text(parent, exact=True)).first
            row.locator("button, [role='button']").first.click()
            page.get_by_text("/v", exact=False).nth(1).wait_for(timeout=30000)
            close = page.locator("[aria-label='Close'], [aria-label='close']")
            if close.count():  # the assistant side panel hides the metric columns
                close.last.click()
            time.sleep(3)
            page.screenshot(path=str(out))
            browser.close()
    finally:
        server.terminate()
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
