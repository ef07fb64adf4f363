"""Law-fit benchmark: our fit against the paper's search procedure on the paper's own table, and the
cost of 1000 bootstrap resamples. Writes benchmarks/results/law_fit.json.

    python benchmarks/law_fit.py

The paper's procedure: a random search over a coarse grid of the law's parameters, stopped after 20 %
of the grid. We emulate it with 25 values per parameter (K, alpha, beta, D: 390,625 points), visit a
random 20 % (78,125) and keep the lowest SSE, twice: as a loop that evaluates one parameter set at a
time (the procedure as written) and vectorised with NumPy (the fastest honest version of it).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from vlmscale.analysis import law

REPO = Path(__file__).resolve().parents[1]
TABLE = REPO / "src/vlmscale/reference/paper_visual_reasoning.csv"


def paper_grid_search(data: law.LawData, values: int = 25, fraction: float = 0.2, seed: int = 0, loop: bool = False):
    grids = {
        "K": np.linspace(0.5, 5.0, values),
        "alpha": np.linspace(0.0, 0.2, values),
        "beta": np.linspace(0.0, 0.05, values),
        "D": np.linspace(0.0, 0.3, values),
    }
    mesh = np.stack(np.meshgrid(*grids.values(), indexing="ij"), -1).reshape(-1, 4)
    rng = np.random.default_rng(seed)
    visited = mesh[rng.permutation(len(mesh))[: int(fraction * len(mesh))]]
    n, v, y = data.llm_params, data.visual_tokens, data.error
    if loop:
        best_sse, best_p = np.inf, None
        for p in visited:
            sse = float(((p[0] * n ** -p[1] * v ** -p[2] + p[3] - y) ** 2).sum())
            if sse < best_sse:
                best_sse, best_p = sse, p
        return dict(zip(grids, best_p.tolist())), best_sse, len(visited)
    pred = visited[:, :1] * n[None] ** -visited[:, 1:2] * v[None] ** -visited[:, 2:3] + visited[:, 3:4]
    sse = ((pred - y[None]) ** 2).sum(1)
    best = int(np.argmin(sse))
    return dict(zip(grids, visited[best].tolist())), float(sse[best]), len(visited)


def timed(fn, repeats: int):
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return out, float(np.median(times))


def main() -> None:
    df = pd.read_csv(TABLE)
    data = law.LawData.from_arrays(df.llm_params, df.visual_tokens, df.error)
    ours, t_ours = timed(lambda: law.fit(data), 50)
    (grid_params, grid_sse, visited), t_grid = timed(lambda: paper_grid_search(data), 3)
    (_, loop_sse, _), t_loop = timed(lambda: paper_grid_search(data, loop=True), 3)
    _, published_sse = law.linear_part("paper", (0.077, 0.015), data)
    _, t_boot = timed(lambda: law.bootstrap(data, n_boot=1000, seed=0), 1)
    out = {
        "table": "paper visual reasoning, 28 cells",
        "ours": {"seconds": t_ours, "sse": ours.sse, "params": ours.params},
        "paper_grid_search": {"seconds": t_grid, "sse": grid_sse, "params": grid_params, "points_visited": visited},
        "published_exponents_best_sse": published_sse,
        "paper_grid_search_loop": {"seconds": t_loop, "sse": loop_sse},
        "speedup_vs_loop": t_loop / t_ours,
        "speedup_vs_vectorised": t_grid / t_ours,
        "bootstrap_1000_seconds": t_boot,
    }
    dest = REPO / "benchmarks/results/law_fit.json"
    dest.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
