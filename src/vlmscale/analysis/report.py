"""Figures and the Markdown report: error vs inference FLOPs per LLM size with the fitted law and the
compute-optimal frontier (the paper's Figure 1, for each text-token count Q), and tables a researcher
can send."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from vlmscale.analysis import law  # noqa: E402
from vlmscale.analysis import sizes as sizes_  # noqa: E402
from vlmscale.analysis import steps as steps_  # noqa: E402
from vlmscale.analysis.aggregate import family_table  # noqa: E402
from vlmscale.analysis.cost import paper_flops  # noqa: E402
from vlmscale.analysis.law import FitResult  # noqa: E402
from vlmscale.fileio import atomic_write_bytes, atomic_write_text, code_version, read_json  # noqa: E402


def frontier_figure(
    table: pd.DataFrame,
    fit: FitResult,
    family: str,
    text_tokens: int,
    path: Path,
    reference: pd.DataFrame | None = None,
) -> Path:
    return _save(draw_frontier(table, fit, family, text_tokens, reference), path)


def draw_frontier(
    table: pd.DataFrame, fit: FitResult, family: str, text_tokens: int, reference: pd.DataFrame | None = None
):
    """Error vs FLOPs = 2N(Q+V): one curve per LLM size (marker size grows with V; bars: ±1 s.d. across
    seeds), fitted curves, frontier; optionally the paper's published cells (grey) on the same axes, at
    nominal N as the paper counts, and then the cells too where they have nominal sizes (analysis.sizes)."""
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    shown, convention = drawn_params(table, reference)
    if reference is not None:
        ax.scatter(
            paper_flops(reference.llm_params, text_tokens, reference.visual_tokens),
            reference.error,
            s=12,
            color="0.6",
            marker="x",
            label="paper (Li et al. 2024), published cells, N nominal",
            zorder=2,
        )
    v_min, v_max = table.visual_tokens.min(), table.visual_tokens.max()
    colours = plt.cm.viridis(np.linspace(0, 0.9, table.llm_params.nunique()))
    for colour, (n, group) in zip(colours, table.groupby("llm_params")):
        group, at = group.sort_values("visual_tokens"), float(shown[group.index[0]])
        x = paper_flops(at, text_tokens, group.visual_tokens)
        sizes = 20 + 80 * np.log2(group.visual_tokens) / max(1, np.log2(v_max))
        named = f"{n:.3g} {convention}" if np.isclose(at, n) else f"{n:.3g} total, {at:.3g} nominal"
        ax.scatter(x, group.error, s=sizes, color=colour, label=f"{group.llm.iloc[0]} (N {named})", zorder=3)
        if "n_seeds" in group and group.n_seeds.max() > 1:  # the spread across seeds: ±1 standard deviation
            ax.errorbar(
                x, group.error, yerr=group.error_sd, fmt="none", ecolor=colour, elinewidth=1, capsize=2, zorder=3
            )
        vs = np.geomspace(v_min, v_max, 100)  # the law is in the table's N, drawn at the cell's own x
        ax.plot(paper_flops(at, text_tokens, vs), fit.predict(np.full_like(vs, n), vs), color=colour, lw=1, alpha=0.7)
    if np.allclose(shown, table.llm_params):  # the frontier is a curve in the law's own N: on that axis only
        _draw_law_frontier(ax, table, fit, text_tokens)
    _log_axis(ax)
    paper_side = "paper: N nominal; " if reference is not None and convention == sizes_.TOTAL else ""
    ax.set_xlabel(f"inference FLOPs = 2·N·(Q+V), Q = {text_tokens} ({paper_side}cells: N {convention})")
    ax.set_ylabel(f"{family} error (1 − mean accuracy)")
    ax.set_title(_frontier_title(fit, family, text_tokens, (v_min, v_max)), fontsize=10)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def drawn_params(table: pd.DataFrame, reference: pd.DataFrame | None) -> tuple[pd.Series, str]:
    """The N each cell is drawn at, and its convention: the measured total, or beside the paper's cells the
    nominal size, where every cell has one (an LLM that is not Qwen-1.5 has none: totals, said on the axis).
    A table already in nominal sizes (the paper's own) is drawn as it is, and says so."""
    nominal = table.llm_params.map(sizes_.nominal_or_nan)
    if nominal.notna().all() and (reference is not None or np.allclose(nominal, table.llm_params)):
        return nominal, sizes_.NOMINAL
    return table.llm_params, sizes_.TOTAL


def _draw_law_frontier(ax, table: pd.DataFrame, fit: FitResult, text_tokens: int) -> None:
    v_min, v_max = table.visual_tokens.min(), table.visual_tokens.max()
    budgets = np.geomspace(
        paper_flops(table.llm_params.min(), text_tokens, v_min),
        paper_flops(table.llm_params.max(), text_tokens, v_max),
        60,
    )
    ax.plot(
        budgets,
        [row["error"] for row in law.frontier(fit, text_tokens, budgets, (v_min, v_max))],
        "k--",
        lw=1.5,
        label="compute-optimal frontier (law)",
    )


def _frontier_title(fit: FitResult, family: str, text_tokens: int, v_range) -> str:
    """α, β, R² and, for a trusted fit, V* at this Q with its bootstrap interval."""
    title = (
        f"{family}: α={fit.params.get('alpha', float('nan')):.3f}, β={fit.params.get('beta', float('nan')):.3f} "
        f"(the table's N), R²={fit.r2:.2f}"
    )
    if law.trust_problems(fit):
        return title + " — not to be trusted"
    if fit.form == "additive":  # its V* comes from a numeric search, not β·Q/(α−β)
        return title
    v = law.optimal_tokens(fit.params["alpha"], fit.params["beta"], text_tokens, *v_range)
    return title + f"\nV*(Q={text_tokens}) = {v_star_text(v, fit.ci.get(f'v_star_q{text_tokens}'))} (95 % bootstrap)"


def _log_axis(ax) -> None:
    """Log x axis labelled at 1, 2 and 5 per decade only: over a narrow range (Q = 50 spans about 2x)
    matplotlib would label every minor tick and the labels overprint."""
    from matplotlib.ticker import LogFormatterSciNotation, LogLocator, NullFormatter

    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(LogFormatterSciNotation(labelOnlyBase=False))
    ax.xaxis.set_minor_formatter(NullFormatter())


def residual_figure(table: pd.DataFrame, fit: FitResult, family: str, path: Path) -> Path:
    """Observed minus fitted error per cell, LLM sizes as rows and V as columns."""
    table = table.assign(residual=table.error - fit.predict(table.llm_params, table.visual_tokens))
    grid = table.pivot_table(index="llm_params", columns="visual_tokens", values="residual")
    fig, ax = plt.subplots(figsize=(5.6, 3.2))
    bound = float(np.nanmax(np.abs(grid.values))) or 1.0
    im = ax.imshow(grid.values, cmap="RdBu_r", vmin=-bound, vmax=bound, aspect="auto")
    ax.set_xticks(range(grid.shape[1]), [str(v) for v in grid.columns])
    ax.set_yticks(range(grid.shape[0]), [f"{n:.3g}" for n in grid.index])
    for (i, j), value in np.ndenumerate(grid.values):
        ax.text(j, i, f"{value:+.3f}", ha="center", va="center", fontsize=7)
    ax.set_xlabel("visual tokens V")
    ax.set_ylabel("LLM parameters N")
    ax.set_title(f"{family}: residuals (observed − fitted error)")
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    return _save(fig, path)


def optimal_tokens_figure(fits: dict[str, FitResult], v_range: tuple[float, float], path: Path) -> Path:
    """V* = beta*Q/(alpha-beta) (clipped to the trained range) as a function of the text tokens Q, one line
    per fit, keyed by its label ("family", or "family / compressor" where the grid has several)."""
    from vlmscale.analysis.law import optimal_tokens

    qs = np.arange(0, 201)
    fig, ax = plt.subplots(figsize=(5.6, 3.6))
    for row, (label, fit) in enumerate(fits.items()):
        (line,) = ax.plot(
            qs, [optimal_tokens(fit.params["alpha"], fit.params["beta"], q, *v_range) for q in qs], label=label
        )
        _v_star_interval_bars(ax, fit, v_range, line.get_color(), label_row=row)
    ax.set_xlabel("text tokens Q")
    ax.set_ylabel("compute-optimal visual tokens V*")
    ax.set_title("V* vs Q (bars: 95 % bootstrap interval)", fontsize=10)
    ax.set_yscale("log")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


def _v_star_interval_bars(ax, fit: FitResult, v_range: tuple[float, float], colour, label_row: int = 0) -> None:
    """V*'s 95 % bootstrap interval as a bar at each text-token count the fit bootstrapped it for, labelled
    with its numbers (one label row per family, so that two families at the same V* do not overprint)."""
    from vlmscale.analysis.law import optimal_tokens

    for key, (lo, hi) in sorted((k, v) for k, v in fit.ci.items() if k.startswith("v_star_q")):
        q = int(key.removeprefix("v_star_q"))
        v = optimal_tokens(fit.params["alpha"], fit.params["beta"], q, *v_range)
        ax.errorbar([q], [v], yerr=[[v - lo], [hi - v]], fmt="o", color=colour, capsize=4, ms=4)
        ax.annotate(
            f"{v:.3g} [{lo:.3g}, {hi:.3g}]",
            (q, v),
            textcoords="offset points",
            xytext=(6, -12 * (label_row + 1)),
            fontsize=7,
            color=colour,
        )


Key = tuple[str, str]  # (family, compressor): one fitted law each
ALL = "all"  # the compressor of a fit whose table has no compressor column (vlmscale fit)


def fit_key(path: str | Path, saved: dict) -> Key:
    """A law JSON's (family, compressor): its own keys, else law/{family}/{compressor}.json's names."""
    path = Path(path)
    return str(saved.get("family") or path.parent.name), str(saved.get("compressor") or path.stem)


def load_fits(paths) -> dict[Key, FitResult]:
    """Every law, keyed by (family, compressor), in that order."""
    fits = {}
    for path in paths:
        saved = read_json(path)
        fits[fit_key(path, saved)] = FitResult.from_dict(saved)
    return dict(sorted(fits.items()))


def fit_labels(keys) -> dict[Key, str]:
    """How a fit is named in text and legends: its family, or "family / compressor" where there are several
    compressors."""
    keys = list(keys)
    several = len({compressor for _, compressor in keys}) > 1
    return {key: f"{key[0]} / {key[1]}" if several else key[0] for key in keys}


def compressor_cells(grid_path: str | Path, family: str, compressor: str) -> pd.DataFrame:
    """family_table of one (family, compressor); a fit named `all` read a table without compressors."""
    return family_table(grid_path, family, None if compressor == ALL else compressor)


def compressors_figure(
    laws: dict[str, tuple[pd.DataFrame, FitResult | None]], family: str, text_tokens, path: Path, order=None
) -> Path:
    return _save(draw_compressors(laws, family, text_tokens, order), path)


def draw_compressors(laws: dict[str, tuple[pd.DataFrame, FitResult | None]], family: str, text_tokens, order=None):
    """One panel per text-token count Q: error vs inference FLOPs 2·N·(Q+V), each compressor in its own
    colour (the same in every family's figure: `order`), its trained cells (mean over seeds) as points and
    its law's compute-optimal frontier as a line, dashed where the fit is not to be trusted."""
    order = list(order or laws)
    fig, axes = plt.subplots(1, len(text_tokens), figsize=(5.4 * len(text_tokens), 4.2), squeeze=False, sharey=True)
    for ax, q in zip(axes[0], text_tokens):
        for compressor, (table, fit) in laws.items():
            colour = plt.cm.tab10(order.index(compressor) % 10)
            _draw_compressor(ax, table, fit, compressor, int(q), colour)
        _log_axis(ax)
        ax.set_xlabel(f"inference FLOPs = 2·N·(Q+V), Q = {q}")
        ax.set_title(f"{family}, Q = {q}: points trained cells, lines the law's frontier", fontsize=9)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(f"{family} error (1 − mean accuracy)")
    fig.tight_layout()
    return fig


def _draw_compressor(ax, table: pd.DataFrame, fit: FitResult | None, compressor: str, q: int, colour) -> None:
    x = paper_flops(table.llm_params, q, table.visual_tokens)
    ax.scatter(x, table.error, s=18, color=colour, alpha=0.8, label=f"{compressor}: trained cells", zorder=3)
    if fit is None:
        return
    budgets = np.geomspace(x.min(), x.max(), 60)
    v_range = (float(table.visual_tokens.min()), float(table.visual_tokens.max()))
    errors = [row["error"] for row in law.frontier(fit, q, budgets, v_range)]
    untrusted = bool(law.trust_problems(fit))
    label = f"{compressor}: law frontier" + (" (not trusted)" if untrusted else "")
    ax.plot(budgets, errors, color=colour, lw=1.6, ls="--" if untrusted else "-", label=label)


def _save(fig, path: Path) -> Path:
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    return atomic_write_bytes(path, buffer.getvalue())


def markdown_report(
    grid: pd.DataFrame,
    fits: dict[Key, FitResult],
    frontier: pd.DataFrame,
    figures: list[Path],
    reference: dict | None,
    out: Path,
) -> str:
    lines = [
        "# vlmscale report",
        "",
        f"Code version `{code_version()}`; config hashes per cell in the table below.",
        "",
    ]
    lines += _law_table(fits)
    lines += steps_.report_lines(grid)
    if reference:
        lines += _paper_comparison(reference)
    lines += ["", "## Compute-optimal frontier", ""] + _frontier_section(fits, frontier)
    lines += compressors_section(grid, fits, frontier) + ["## Figures", ""]
    lines += [f"![{f.stem}](figures/{f.name})" for f in figures]
    lines += ["", "## Family error per cell (mean ± s.d. across seeds)", "", _family_error_table(grid), ""]
    lines += ["", "## Per-cell accuracy (mean over seeds)", "", _per_cell_table(grid), ""] + _rule_based_note(grid)
    hashes = (
        grid.groupby("cell")
        .agg(
            config_hash=("config_hash", "first"),
            train_seconds=("train_seconds", "first"),
            flops_q0=("flops_paper_q0", "first"),
        )
        .reset_index()
    )
    lines += [
        "## How each number was produced",
        "",
        "Each cell's config hash identifies its resolved spec (see its train.json and MLflow run).",
        "",
        hashes.to_markdown(index=False, floatfmt=".4g"),
        "",
    ]
    text = "\n".join(lines) + "\n"
    atomic_write_text(out, text)
    return text


def _law_table(fits: dict[Key, FitResult]) -> list[str]:
    lines = [
        "## Fitted laws: Y(N, V) = K·N^-α·V^-β + D",
        "",
        "One law per family and compressor. N = each cell's LLM parameters as counted (total, `llm_params`); "
        "the comparison with the paper below puts both sides on nominal sizes.",
        "",
        "| family | compressor | α | β | α/β | K | D | R² | SSE | status "
        "| held-out largest LLM: mean (max) abs. error |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (family, compressor), fit in fits.items():
        p, ci, held = fit.params, fit.ci, fit.heldout
        ratio = p["alpha"] / p["beta"] if p.get("beta") else float("inf")
        lines.append(
            f"| {family} | {compressor} | {_ci(p['alpha'], ci.get('alpha'))} | {_ci(p['beta'], ci.get('beta'))} | "
            f"{ratio:.2f} | {p.get('K', float('nan')):.4g} | "
            f"{p.get('D', float('nan')):.4g} | {fit.r2:.3f} | {fit.sse:.3g} | {fit.status} | {_heldout_text(held)} |"
        )
    return lines


def _heldout_text(held: dict) -> str:
    """Absolute errors; the relative error only over cells whose observed error is large enough to divide by."""
    if held.get("status") != "ok":
        return held.get("reason", "not run")
    text = f"{held['mean_abs_error']:.3f} ({held.get('max_abs_error', float('nan')):.3f})"
    if held.get("mean_abs_rel_error") is not None:
        text += (
            f"; {held['mean_abs_rel_error']:.1%} relative over the {held['rel_error_cells']} cells "
            f"with error ≥ {law.RELATIVE_ERROR_FLOOR}"
        )
    return text


def _frontier_section(fits: dict[Key, FitResult], frontier: pd.DataFrame) -> list[str]:
    """Warnings above the frontier: a fit that should not be trusted has its V* withheld; a floor or an
    exponent on its bound, or a held-out check that misses, is said next to the V* it leaves standing."""
    untrusted = {key: law.trust_problems(fit) for key, fit in fits.items()}
    lines = _frontier_notes(fits, frontier, untrusted)
    shown = frontier[~_rows_of(frontier, [key for key, problems in untrusted.items() if problems])]
    lines += ["", shown.to_markdown(index=False, floatfmt=".4g") if len(shown) else "(no trusted frontier)", ""]
    return lines


def summary(results: str | Path, laws=None) -> str:
    """What a finished run prints: each law's warnings or cautions and its V* with intervals (the report's
    frontier section without its table), and where the report is. `laws`: the grid's law JSONs (the
    workflow passes its own; default: every one under results/law). Empty before the first report."""
    results = Path(results)
    laws, frontier = laws or sorted((results / "law").glob("*/*.json")), results / "law" / "frontier.csv"
    if not (results / "report.md").exists() or not laws or not frontier.exists():
        return ""
    fits = load_fits(laws)
    untrusted = {key: law.trust_problems(fit) for key, fit in fits.items()}
    notes = _frontier_notes(fits, pd.read_csv(frontier), untrusted)
    body = "\n".join(line.replace("> **", "").replace("**", "") for line in notes if line)
    return f"vlmscale: the compute-optimal frontier\n{body}\nFull report: {results / 'report.md'}"


def _frontier_notes(fits: dict[Key, FitResult], frontier: pd.DataFrame, untrusted: dict[Key, list[str]]) -> list[str]:
    names = fit_labels(fits)
    lines = []
    for key, problems in untrusted.items():
        if problems:
            lines += [
                f"> **Warning — do not read the {names[key]} frontier as an answer.** " + "; ".join(problems) + ".",
                "",
            ]
    for key, fit in fits.items():
        cautions = law.cautions(fit)
        if cautions and not untrusted[key]:
            lines += [f"> **Caution — {names[key]}:** " + "; ".join(map(_with_why, cautions)) + ".", ""]
    lines += [
        "V* = β·Q/(α−β) when α > β, otherwise the largest V; N* = C / (2(Q+V*)). In brackets: V*'s 95 % "
        "bootstrap interval (the same resamples as α's and β's).",
        "",
    ]
    lines += [_v_star_line(names[key], fit, frontier, key, bool(untrusted[key])) for key, fit in fits.items()]
    return lines


def _with_why(caution: str) -> str:
    if law.is_floor_warning(caution):
        return caution + " (V* does not depend on the floor, but the exponents were fitted with it held at 0)"
    return caution


def _v_star_line(name: str, fit: FitResult, frontier: pd.DataFrame, key: Key, untrusted: bool) -> str:
    if untrusted:
        return f"- {name}: not to be trusted as an answer (see the warning); no V* is given."
    v_stars = ", ".join(
        f"V*(Q={int(q)}) = {v_star_text(v, fit.ci.get(f'v_star_q{int(q)}'))}" for q, v in _v_star_by_q(frontier, key)
    )
    return f"- {name}: {v_stars} (α = {fit.params['alpha']:.3f}, β = {fit.params['beta']:.3f})."


def _rows_of(frontier: pd.DataFrame, keys: list[Key]) -> pd.Series:
    """Which frontier rows belong to one of the (family, compressor) fits (by family alone in a frontier
    without a compressor column)."""
    family = frontier["family"] if "family" in frontier else pd.Series("", index=frontier.index)
    compressor = frontier["compressor"].astype(str) if "compressor" in frontier else None
    mask = pd.Series(False, index=frontier.index)
    for fam, comp in keys:
        mask |= (family == fam) & (True if compressor is None else compressor == comp)
    return mask


def _v_star_by_q(frontier: pd.DataFrame, key: Key) -> list[tuple[float, float]]:
    rows = frontier[(frontier.method != "best_trained_cell") & (_rows_of(frontier, [key]) | ("family" not in frontier))]
    return [(q, float(g.visual_tokens.iloc[0])) for q, g in rows.groupby("text_tokens")]


def compressors_section(grid: pd.DataFrame, fits: dict[Key, FitResult], frontier: pd.DataFrame) -> list[str]:
    """The compressors side by side: error per family × compressor × V at the largest and the smallest LLM
    (the paper's table layout), and which compressor is compute-optimal at each budget."""
    named = sorted(with_compressor(grid).compressor.unique())
    lines = ["## Compressors compared", ""]
    if len(named) == 1:
        lines += [f"One compressor in this grid ({named[0]}): nothing to compare it with.", ""]
    lines += [compressor_table(grid, "largest"), ""]
    if grid.llm_params.nunique() > 1:
        lines += [compressor_table(grid, "smallest"), ""]
    lines += ["### Compute-optimal compressor per budget", ""] + optimal_compressor_lines(fits, frontier)
    return lines + _question_pass_note(grid)


def _question_pass_note(grid: pd.DataFrame) -> list[str]:
    """QueCC's question pass is counted apart (vlmscale.analysis.flops): say what it adds, where it is in the grid."""
    prefix = "flops_quecc_question_q"
    ratios = {}
    for column in sorted((c for c in grid.columns if c.startswith(prefix)), key=lambda c: int(c[len(prefix) :])):
        q = column[len(prefix) :]
        quecc = grid[grid[column].notna()]
        ratios[q] = (quecc[column] + quecc[f"flops_paper_q{q}"]) / quecc[f"flops_paper_q{q}"]
    if not ratios:
        return []
    shares = ", ".join(f"×{r.min():.2f}–{r.max():.2f} at Q = {q}" for q, r in ratios.items())
    return [
        "*QueCC's question pass* (the question run through the LLM on its own to build the query, 2·N·Q) is not "
        "in the paper's 2·N·(Q+V) that the budgets above use; `grid.parquet` holds it (`flops_quecc_question_q*`). "
        f"Counted in, a QueCC cell costs {shares} the FLOPs it is placed at.",
        "",
    ]


def with_compressor(grid: pd.DataFrame) -> pd.DataFrame:
    """The grid with its compressor column (`all` where the table has none)."""
    return grid if "compressor" in grid else grid.assign(compressor=ALL)


def compressor_table(grid: pd.DataFrame, which: str = "largest") -> str:
    """Family error (1 − mean accuracy) at the largest (or smallest) LLM, rows family and compressor, columns
    V: mean ± s.d. over seeds, as Markdown with a line that names the LLM."""
    grid = with_compressor(grid)
    size = grid.llm_params.max() if which == "largest" else grid.llm_params.min()
    at = grid[np.isclose(grid.llm_params, size)]
    stats = _seed_stats(at, ["family", "compressor", "visual_tokens"])
    table = stats.pivot_table(index=["family", "compressor"], columns="visual_tokens", values="text", aggfunc="first")
    table.columns = [f"V={v}" for v in table.columns]
    seeds = int(stats["count"].max())
    spread = f"mean ± s.d. over {seeds} seeds" if seeds > 1 else "one seed"
    return (
        f"Family error (1 − mean accuracy) at the {which} LLM, {at.llm.iloc[0]} (N = {size:.3g}), {spread}:\n\n"
        + table.fillna("—").reset_index().to_markdown(index=False)
    )


def _seed_stats(grid: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Per `keys`: the family error's mean, s.d. and number of seeds (each seed's error the mean over its
    benchmark rows), and `text`, e.g. `0.312 ± 0.004` (the mean alone with one seed)."""
    seeds = grid["seed"] if "seed" in grid else 0
    per_seed = grid.assign(seed=seeds).groupby([*keys, "seed"]).error.mean()
    stats = per_seed.groupby(keys).agg(["mean", "std", "count"]).reset_index()
    stats["text"] = [
        f"{m:.3f} ± {sd:.3f}" if c > 1 else f"{m:.3f}" for m, sd, c in zip(stats["mean"], stats["std"], stats["count"])
    ]
    return stats


def optimal_compressor_lines(fits: dict[Key, FitResult], frontier: pd.DataFrame) -> list[str]:
    """For each family, Q and budget of frontier.csv: the compressor whose trusted law predicts the lowest
    error (`optimal`), its V*, N* and that error, and the runner-up; a family without a trusted fit says so."""
    if not {"optimal", "compressor", "family"} <= set(frontier.columns):
        return ["(this frontier.csv marks no compute-optimal compressor: run `vlmscale frontier` again)", ""]
    trusted = {key for key, fit in fits.items() if not law.trust_problems(fit)}
    lines = []
    for family in sorted(frontier.family.unique()):
        left_out = [c for f, c in fits if f == family and (f, c) not in trusted]
        if not any(f == family for f, _ in trusted):
            lines.append(f"- {family}: no fit of this family is trusted (see the warnings above); no compressor named.")
        elif left_out:
            lines.append(f"- {family}: left out of the comparison, not trusted: {', '.join(left_out)}.")
    chosen = frontier[frontier.optimal.astype(str) == "True"].sort_values(["family", "text_tokens", "flops"])
    table = chosen[["family", "text_tokens", "flops", "compressor", "visual_tokens", "llm_params", "error"]].assign(
        runner_up=[_runner_up(frontier, trusted, row) for row in chosen.itertuples()]
    )
    table.columns = ["family", "Q", "budget (FLOPs)", "compressor", "V*", "N*", "predicted error", "runner-up"]
    shown = table.to_markdown(index=False, floatfmt=".4g") if len(table) else "(no trusted fit: no compressor named)"
    return lines + ([""] if lines else []) + [shown, ""]


def _runner_up(frontier: pd.DataFrame, trusted: set[Key], row) -> str:
    """The trusted compressor with the next-lowest predicted error at the row's family, Q and budget."""
    others = frontier[
        (frontier.family == row.family)
        & (frontier.text_tokens == row.text_tokens)
        & (frontier.flops == row.flops)
        & (frontier.method != "best_trained_cell")
        & (frontier.compressor != row.compressor)
    ]
    candidates = [r for r in others.itertuples() if (r.family, r.compressor) in trusted]
    if not candidates:
        return "—"
    best = min(candidates, key=lambda r: r.error)
    return f"{best.compressor} ({best.error:.4g})"


def _family_error_table(grid: pd.DataFrame) -> str:
    """Rows: LLM; columns: family (and compressor, where there are several) and V; each entry the family
    error's mean ± s.d. over seeds."""
    grid = with_compressor(grid)
    several = grid.compressor.nunique() > 1
    stats = _seed_stats(grid, ["family", "compressor", "llm", "llm_params", "visual_tokens"])
    table = stats.pivot_table(
        index=["llm", "llm_params"], columns=["family", "compressor", "visual_tokens"], values="text", aggfunc="first"
    )
    table = table.sort_index(level="llm_params")
    table.columns = [f"{f} {c} V={v}" if several else f"{f} V={v}" for f, c, v in table.columns]
    return table.reset_index().to_markdown(index=False)


def _per_cell_table(grid: pd.DataFrame) -> str:
    grid = with_compressor(grid)
    index = ["llm", "llm_params", "compressor", "visual_tokens"] if grid.compressor.nunique() > 1 else None
    per_cell = grid.pivot_table(
        index=index or ["llm", "llm_params", "visual_tokens"], columns="benchmark", values="accuracy"
    )
    marks = {b: f"{b} ({RULE_BASED})" for b in rule_based(grid)}
    return per_cell.rename(columns=marks).reset_index().to_markdown(index=False, floatfmt=".3f")


RULE_BASED = "rule-based only"


def rule_based(grid: pd.DataFrame) -> list[str]:
    """Benchmarks scored without lmms-eval's GPT judge (`judge: none`) in any cell, as their JSON records."""
    if "judge" not in grid:
        return []
    return sorted(set(grid.benchmark[grid.judge.fillna("").str.startswith("none")]))


def _rule_based_note(grid: pd.DataFrame) -> list[str]:
    names = rule_based(grid)
    if not names:
        return []
    return [
        f"*{RULE_BASED}*: {', '.join(names)} scored with `judge: none`: lmms-eval's rule-based reading of "
        "the answers alone, without the GPT judge the paper's scores used; these numbers (and their family's "
        "error) are not comparable with judged ones.",
        "",
    ]


def v_star_text(value: float, interval) -> str:
    """V* with its bootstrap interval, e.g. `3.02 [1, 16]`; the bare value when the fit has no interval."""
    return f"{value:.3g} [{interval[0]:.3g}, {interval[1]:.3g}]" if interval else f"{value:.3g}"


def _ci(value: float, interval) -> str:
    return f"{value:.4f} [{interval[0]:.4f}, {interval[1]:.4f}]" if interval else f"{value:.4f}"


REFERENCE_TABLE = Path(__file__).parents[1] / "reference" / "paper_visual_reasoning.csv"


def plot(fit_path: str, table_path: str, family: str | None, text_tokens: int, out: str, overlay_paper: bool) -> str:
    """`vlmscale plot`: the frontier figure for any fit and table, optionally over the paper's cells (a table
    of several compressors: the fit's own compressor's cells)."""
    saved = read_json(fit_path)
    fit = FitResult.from_dict(saved)
    compressor = saved.get("compressor")
    table = family_table(table_path, family, None if compressor in (None, ALL) else compressor)
    reference = family_table(REFERENCE_TABLE) if overlay_paper else None
    frontier_figure(table, fit, family or "all", text_tokens, Path(out), reference)
    return out


def reference_fit(grid_path: str | Path | None = None) -> dict:
    """The paper's published grid refitted, and the cells' own families (per compressor) refitted on nominal
    N where every cell has a nominal size: both sides of the comparison in the paper's convention
    (analysis.sizes)."""
    table = family_table(REFERENCE_TABLE)  # nominal N, as the paper's table
    data = law.LawData.from_arrays(table.llm_params, table.visual_tokens, table.error)
    fit = law.fit(data)
    _, paper_sse = law.linear_part("paper", (0.077, 0.015), data)
    out = {"alpha": fit.params["alpha"], "beta": fit.params["beta"], "sse": fit.sse, "paper_sse": paper_sse,
           "convention": sizes_.NOMINAL, "cells": {}}  # fmt: skip
    if grid_path is not None:
        grid = with_compressor(pd.read_parquet(grid_path))
        keys = sorted(set(zip(grid.family, grid.compressor.astype(str))))
        names = fit_labels(keys)
        out["cells"] = {names[key]: nominal_fit(compressor_cells(grid_path, *key)) for key in keys}
    return out


def nominal_fit(table: pd.DataFrame) -> dict:
    """A family's law refitted with N = its LLMs' nominal sizes; why not, where one has none."""
    nominal = table.llm_params.map(sizes_.nominal_or_nan)
    if nominal.isna().any():
        unknown = sorted(set(table.llm[nominal.isna()]))
        return {"reason": f"no nominal size for {', '.join(unknown)} (not a Qwen-1.5 model): compare on total N only"}
    if nominal.nunique() < 2 or table.visual_tokens.nunique() < 2:
        return {"reason": "fewer than 2 LLM sizes or 2 V"}
    fit = law.fit(law.LawData.from_arrays(nominal, table.visual_tokens, table.error))
    return {"alpha": fit.params["alpha"], "beta": fit.params["beta"], "sse": fit.sse, "status": fit.status}


def _paper_comparison(reference: dict) -> list[str]:
    lines = [
        "",
        "## Comparison with the paper (N nominal: 0.5B, 1.8B, 4B, 7B, 14B, as the paper counts)",
        "",
        f"The paper's published grid (visual reasoning), refitted by the same engine on nominal N: "
        f"α = {reference['alpha']:.4f}, β = {reference['beta']:.4f}, SSE = {reference['sse']:.3g} "
        f"(the paper reports α ≈ 0.077, β ≈ 0.015; its exponents reach SSE = {reference['paper_sse']:.3g} "
        "on the same table).",
    ]
    for family, cells in reference.get("cells", {}).items():  # family, or "family / compressor"
        if "reason" in cells:
            lines += ["", f"This grid's {family} family on nominal N: {cells['reason']}."]
        else:
            lines += [
                "",
                f"This grid's {family} family refitted on nominal N: α = {cells['alpha']:.4f}, "
                f"β = {cells['beta']:.4f}, SSE = {cells['sse']:.3g} ({cells['status']}).",
            ]
    return lines


def main(cfg: dict) -> dict:
    out_dir, grid_path = Path(cfg["out_dir"]), cfg["grid"]
    grid = pd.read_parquet(grid_path)
    fits = load_fits(cfg["laws"])
    names = fit_labels(fits)
    tables = {key: compressor_cells(grid_path, *key) for key in fits}
    figures = []
    for key, fit in fits.items():
        stem = out_dir / "figures" / "_".join(key)
        for q in cfg["text_tokens"]:
            figures.append(frontier_figure(tables[key], fit, names[key], q, stem.with_name(f"{stem.name}_q{q}.png")))
        figures.append(residual_figure(tables[key], fit, names[key], stem.with_name(f"{stem.name}_residuals.png")))
    order = sorted({compressor for _, compressor in fits})
    for family in sorted({family for family, _ in fits}):
        laws = {c: (tables[(f, c)], fits[(f, c)]) for f, c in fits if f == family}
        path = out_dir / "figures" / f"{family}_compressors.png"
        figures.append(compressors_figure(laws, family, cfg["text_tokens"], path, order))
    v_range = (float(grid.visual_tokens.min()), float(grid.visual_tokens.max()))
    labelled = {names[key]: fit for key, fit in fits.items()}
    figures.append(optimal_tokens_figure(labelled, v_range, out_dir / "figures" / "optimal_tokens.png"))
    frontier = pd.read_csv(cfg["frontier"])
    markdown_report(grid, fits, frontier, figures, reference_fit(grid_path), out_dir / "report.md")
    return {"figures": [str(f) for f in figures], "report": str(out_dir / "report.md")}
