"""Does each step of the grid help? The law fits whatever cells it is given; this looks at the cells
themselves: each larger LLM at a fixed V, and each larger V at a fixed LLM, should lower the family
error by more than a margin and more than the noise between the two cells."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

MARGIN = 0.002  # a gain below this is no gain, whatever the noise


@dataclass(frozen=True)
class Step:
    """One step of the grid, from cell `a` to the larger cell `b` (larger LLM, or larger V)."""

    family: str
    compressor: str
    along: str  # "LLM" or "V": what grows
    label: str  # e.g. "lm-m → lm-l at V = 1" or "V 1 → 4 at lm-xs"
    error_a: float
    error_b: float
    noise: float  # the larger of the two cells' s.d. over seeds; with one seed, the sampling error of the gap

    @property
    def gain(self) -> float:
        return self.error_a - self.error_b

    @property
    def helps(self) -> bool:
        return self.gain > max(MARGIN, self.noise)


def cell_errors(cells: pd.DataFrame) -> pd.DataFrame:
    """Per (LLM, V): the family error's mean over seeds, its s.d. (NaN with one seed), the number of seeds
    and the sampling standard error of one seed's family error (the benchmarks' binomial errors, when the
    table has each benchmark's question count)."""
    cells = cells.assign(seed=cells["seed"] if "seed" in cells else 0)
    keys = ["llm", "llm_params", "visual_tokens"]
    p, n = 1 - cells["error"], cells.get("n_questions", pd.Series(np.nan, index=cells.index))
    cells = cells.assign(variance=p * (1 - p) / n)
    per_seed = cells.groupby([*keys, "seed"]).agg(
        error=("error", "mean"), variance=("variance", "mean"), k=("error", "size")
    )
    per_seed["se"] = np.sqrt(per_seed["variance"] / per_seed["k"])
    return (
        per_seed.groupby(keys)
        .agg(mean=("error", "mean"), sd=("error", "std"), seeds=("error", "size"), se=("se", "mean"))
        .reset_index()
    )


def _noise(a, b) -> float:
    if a.seeds > 1 and b.seeds > 1:
        return float(max(a.sd, b.sd))
    gap = float(np.hypot(a.se, b.se))
    return 0.0 if np.isnan(gap) else gap


def steps(grid: pd.DataFrame) -> list[Step]:
    """Every step of every (family, compressor) in a grid table (the aggregate stage's rows)."""
    grid = grid if "compressor" in grid else grid.assign(compressor="all")
    found = []
    for (family, compressor), cells in grid.groupby(["family", "compressor"]):
        stats = cell_errors(cells).sort_values(["llm_params", "visual_tokens"])
        for v, at_v in stats.groupby("visual_tokens"):
            rows = list(at_v.itertuples())
            found += [
                Step(family, compressor, "LLM", f"{a.llm} → {b.llm} at V = {v}", a.mean, b.mean, _noise(a, b))
                for a, b in zip(rows, rows[1:])
            ]
        for (llm, _), of_llm in stats.groupby(["llm", "llm_params"], sort=False):
            rows = list(of_llm.sort_values("visual_tokens").itertuples())
            found += [
                Step(
                    family,
                    compressor,
                    "V",
                    f"V {a.visual_tokens} → {b.visual_tokens} at {llm}",
                    a.mean,
                    b.mean,
                    _noise(a, b),
                )
                for a, b in zip(rows, rows[1:])
            ]
    return found


def report_lines(grid: pd.DataFrame) -> list[str]:
    """The report's section: per family and compressor, whether every larger LLM and every larger V lowers
    the error, and the steps that do not."""
    lines = [
        "## Does each step of the grid help?",
        "",
        f"A step (a larger LLM at the same V, or a larger V at the same LLM) helps when it lowers the family "
        f"error by more than {MARGIN} and more than its noise: the larger of the two cells' s.d. over seeds, "
        "or with one seed the sampling error of the gap (from each benchmark's question count). A law fitted "
        "over steps that do not help describes the grid less than its R² suggests.",
        "",
    ]
    found = steps(grid)
    for family, compressor in dict.fromkeys((s.family, s.compressor) for s in found):
        mine = [s for s in found if (s.family, s.compressor) == (family, compressor)]
        for along in ("LLM", "V"):
            of_kind = [s for s in mine if s.along == along]
            lines.append(f"- {family} ({compressor}), each larger {along}: " + _verdict(of_kind))
    return lines + [""]


def _verdict(of_kind: list[Step]) -> str:
    failing = [s for s in of_kind if not s.helps]
    if not failing:
        return f"helps at every step ({len(of_kind)})."
    shown = "; ".join(f"{s.label} ({s.error_a:.3f} → {s.error_b:.3f}, noise {s.noise:.3f})" for s in failing)
    return f"**{len(failing)} of {len(of_kind)} steps do not help**: {shown}."
