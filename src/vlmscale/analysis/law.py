"""Scaling-law fits of downstream error Y over LLM size N and visual tokens V, and the compute-optimal
frontier under the inference cost FLOPs = 2 * N * (Q + V).

Forms
* ``paper``:    Y = K * N^-alpha * V^-beta + D     (only K = A*B of the paper's A/N^a * B/V^b is identifiable)
* ``paper-qv``: the same with T = Q + V in place of V
* ``additive``: Y = E + A * N^-alpha + B * V^-beta (Chinchilla-style)

For fixed exponents every form is linear in its other parameters, so the fit searches the exponents only
(a vectorised grid, then zooming in) and solves the rest by non-negative least squares at each point
("variable projection"). Soft problems (a parameter on its bound, no convergence) are reported in the
result's ``status`` and ``warnings``; only unusable input raises ``LawInputError``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from itertools import combinations

import numpy as np

from vlmscale.analysis.cost import paper_flops, params_for_budget
from vlmscale.choices import LAW_FORMS as N_PARAMS  # shared with the config check

FORMS = ("paper", "paper-qv", "additive")
EXPONENT_BOUNDS = (0.0, 3.0)


class LawInputError(ValueError):
    """The table cannot identify the law (bad values, too few points, one size or one token count)."""


@dataclass(frozen=True)
class LawData:
    """One error per (N, V) point; `replicates` optionally holds each point's per-seed errors (a list per
    point; `error` is then their mean), which the bootstrap resamples instead of the points."""

    llm_params: np.ndarray
    visual_tokens: np.ndarray
    error: np.ndarray
    text_tokens: int = 0
    replicates: tuple | None = None

    @classmethod
    def from_arrays(cls, n, v, y, text_tokens: int = 0, replicates=None) -> "LawData":
        reps = tuple(np.asarray(r, float) for r in replicates) if replicates is not None else None
        data = cls(
            llm_params=np.asarray(n, float),
            visual_tokens=np.asarray(v, float),
            error=np.asarray(y, float),
            text_tokens=int(text_tokens),
            replicates=reps,
        )
        validate(data)
        return data

    @property
    def n_seeds(self) -> int:
        return min(len(r) for r in self.replicates) if self.replicates else 1

    def subset(self, mask: np.ndarray) -> "LawData":
        reps = tuple(self.replicates[i] for i in np.arange(len(self.error))[mask]) if self.replicates else None
        return replace(
            self, llm_params=self.llm_params[mask], visual_tokens=self.visual_tokens[mask], error=self.error[mask],
            replicates=reps,
        )  # fmt: skip

    def resampled(self, rng: np.random.Generator) -> "LawData":
        """A bootstrap draw: each point's seeds resampled with replacement when there are two or more
        seeds per point (the cells stay, their noise is redrawn), otherwise the points themselves."""
        if self.n_seeds >= 2:
            error = np.array([rng.choice(r, size=len(r)).mean() for r in self.replicates])
            return replace(self, error=error, replicates=None)
        return self.subset(rng.integers(0, len(self.error), size=len(self.error)))


@dataclass(frozen=True)
class FitResult:
    form: str
    params: dict
    sse: float
    r2: float
    n_points: int
    status: str  # converged | at_bound | not_converged
    warnings: tuple = ()
    text_tokens: int = 0
    ci: dict = field(default_factory=dict)
    heldout: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["warnings"] = list(self.warnings)
        return out

    @classmethod
    def from_dict(cls, d: dict) -> "FitResult":
        keys = cls.__dataclass_fields__
        return cls(**{k: (tuple(v) if k == "warnings" else v) for k, v in d.items() if k in keys})

    def predict(self, n, v) -> np.ndarray:
        return predict(self.form, self.params, np.asarray(n, float), np.asarray(v, float), self.text_tokens)


def validate(data: LawData, form: str = "paper") -> None:
    n, v, y = data.llm_params, data.visual_tokens, data.error
    if not (len(n) == len(v) == len(y)):
        raise LawInputError("llm_params, visual_tokens and error must have the same length")
    for name, arr in (("llm_params", n), ("visual_tokens", v), ("error", y)):
        if np.isnan(arr).any():
            raise LawInputError(f"column {name} has NaN in rows {np.flatnonzero(np.isnan(arr)).tolist()}")
    if (n <= 0).any():
        raise LawInputError(f"llm_params must be positive; rows {np.flatnonzero(n <= 0).tolist()} are not")
    if (v <= 0).any():
        raise LawInputError(f"visual_tokens must be positive; rows {np.flatnonzero(v <= 0).tolist()} are not")
    if ((y < 0) | (y > 1)).any():
        raise LawInputError(f"error must lie in [0, 1]; rows {np.flatnonzero((y < 0) | (y > 1)).tolist()} do not")
    if len(y) <= N_PARAMS[form]:
        raise LawInputError(f"{len(y)} points cannot fit the {form} law's {N_PARAMS[form]} parameters; need more")
    if len(np.unique(n)) < 2:
        raise LawInputError("only one LLM size: alpha (the N exponent) is not identifiable; add sizes")
    if len(np.unique(v)) < 2:
        raise LawInputError("only one visual-token count: beta (the V exponent) is not identifiable; add V values")


def _tokens(form: str, v: np.ndarray, text_tokens: int) -> np.ndarray:
    return v + text_tokens if form == "paper-qv" else v


def _design(form, alpha, beta, n, v, q) -> np.ndarray:
    t = _tokens(form, v, q)
    if form == "additive":
        return np.column_stack([np.ones_like(n), n**-alpha, t**-beta])
    return np.column_stack([n**-alpha * t**-beta, np.ones_like(n)])


def linear_part(form, exps, data: LawData, weights=None) -> tuple[np.ndarray, float]:
    """Non-negative least squares for the linear coefficients at fixed exponents: (coefs, SSE)."""
    x = _design(form, exps[0], exps[1], data.llm_params, data.visual_tokens, data.text_tokens)
    w = np.ones_like(data.error) if weights is None else weights
    coefs, _ = nnls_many((x * w[:, None])[None], data.error * w)
    resid = data.error - x @ coefs[0]
    return coefs[0], float(resid @ resid)


def nnls_many(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Non-negative least squares for many design matrices at once, x (G, n, k) against y (n,), exactly:
    the optimum is the best least-squares solution, over subsets of the (at most three) columns, whose
    coefficients are all non-negative. Eight subsets at most: cheaper than importing SciPy's optimizer.
    Returns coefs (G, k) and SSE (G,)."""
    g, _, k = x.shape
    best, best_sse = np.zeros((g, k)), np.full(g, float(y @ y))  # all coefficients zero
    for size in range(1, k + 1):
        for subset in combinations(range(k), size):
            xs = x[:, :, subset]
            xt = xs.transpose(0, 2, 1)
            coefs = np.linalg.solve(xt @ xs + 1e-12 * np.eye(size), xt @ y[None, :, None])[..., 0]  # (G, size)
            sse = ((y[None] - (xs @ coefs[..., None])[..., 0]) ** 2).sum(1)
            better = (coefs >= 0).all(1) & (sse < best_sse)
            full = np.zeros((g, k))
            full[:, subset] = coefs
            best, best_sse = np.where(better[:, None], full, best), np.where(better, sse, best_sse)
    return best, best_sse


def _params(form, exps, coefs) -> dict:
    if form == "additive":
        return {"E": coefs[0], "A": coefs[1], "alpha": exps[0], "B": coefs[2], "beta": exps[1]}
    return {"K": coefs[0], "alpha": exps[0], "beta": exps[1], "D": coefs[1]}


def predict(form: str, params: dict, n, v, text_tokens: int = 0) -> np.ndarray:
    t = _tokens(form, np.asarray(v, float), text_tokens)
    n = np.asarray(n, float)
    if form == "additive":
        return params["E"] + params["A"] * n ** -params["alpha"] + params["B"] * t ** -params["beta"]
    return params["K"] * n ** -params["alpha"] * t ** -params["beta"] + params["D"]


def _huber_weights(resid: np.ndarray, delta: float) -> np.ndarray:
    a = np.abs(resid)
    return np.sqrt(np.where(a <= delta, 1.0, delta / np.maximum(a, 1e-300)))


def _grid_sse(form: str, data: LawData, alphas: np.ndarray, betas: np.ndarray, weights=None) -> np.ndarray:
    """Projected SSE on an exponent grid, all points at once (one NNLS per point, `nnls_many`)."""
    a, b = np.meshgrid(alphas, betas, indexing="ij")
    a, b = a.ravel(), b.ravel()
    t = _tokens(form, data.visual_tokens, data.text_tokens)
    n_term = data.llm_params[None, :] ** -a[:, None]
    t_term = t[None, :] ** -b[:, None]
    ones = np.ones_like(n_term)
    cols = [ones, n_term, t_term] if form == "additive" else [n_term * t_term, ones]
    w = np.ones_like(data.error) if weights is None else weights
    _, sse = nnls_many(np.stack(cols, axis=-1) * w[None, :, None], data.error * w)
    return sse.reshape(len(alphas), len(betas))


def _search(
    form: str, data: LawData, starts: int, weights=None, rounds: int = 30
) -> tuple[np.ndarray, np.ndarray, float, bool]:
    """Best exponents: a vectorised grid over (alpha, beta), then zoom in around the best point
    (a 7x7 grid each round, the span halving until it is below 1e-5; bounded by construction)."""
    lo, hi = EXPONENT_BOUNDS
    grid = np.concatenate([np.linspace(0.0, 0.2, starts), np.linspace(0.25, hi, starts)])
    sse = _grid_sse(form, data, grid, grid, weights)
    i, j = np.unravel_index(np.argmin(sse), sse.shape)
    best, centre, span = sse[i, j], np.array([grid[i], grid[j]]), 0.1
    converged = False
    for _ in range(rounds):
        axes = [np.unique(np.clip(np.linspace(c - span, c + span, 7), lo, hi)) for c in centre]
        sse = _grid_sse(form, data, *axes, weights)
        i, j = np.unravel_index(np.argmin(sse), sse.shape)
        converged = best - sse[i, j] <= 1e-12 * max(best, 1e-300) and span < 1e-4
        best, centre, span = min(best, sse[i, j]), np.array([axes[0][i], axes[1][j]]), span / 2
        if span < 1e-5:
            break
    coefs, sse_best = linear_part(form, centre, data, weights)
    return centre, coefs, sse_best, converged or span < 1e-5


def fit(data: LawData, form: str = "paper", starts: int = 10, huber_delta: float | None = None) -> FitResult:
    """Fit one law form to a table; never raises for soft problems (see status/warnings)."""
    if form not in FORMS:
        raise LawInputError(f"unknown law form {form!r}; choose from {FORMS}")
    validate(data, form)
    exps, coefs, _, ok = _search(form, data, starts)
    if huber_delta is not None:  # iteratively reweighted: a few passes of Huber weights on the residuals
        for _ in range(5):
            resid = data.error - _design(form, *exps, data.llm_params, data.visual_tokens, data.text_tokens) @ coefs
            exps, coefs, _, ok = _search(form, data, starts, _huber_weights(resid, huber_delta))
    params = {k: float(v) for k, v in _params(form, exps, coefs).items()}
    resid = data.error - predict(form, params, data.llm_params, data.visual_tokens, data.text_tokens)
    sse = float(resid @ resid)
    sst = float(((data.error - data.error.mean()) ** 2).sum())
    warnings = _bound_warnings(params)
    status = "not_converged" if not ok else ("at_bound" if warnings else "converged")
    return FitResult(
        form=form,
        params=params,
        sse=sse,
        r2=1.0 - sse / sst if sst > 0 else float("nan"),
        n_points=len(data.error),
        status=status,
        warnings=tuple(warnings),
        text_tokens=data.text_tokens,
    )


NO_GAIN = {
    "alpha": "a larger LLM does not lower the error on these cells, so V* is the largest V at every Q",
    "beta": "more visual tokens do not lower the error on these cells, so V* is the smallest V at every Q",
}


def _bound_warnings(params: dict) -> list[str]:
    """An exponent at 0 is a finding (that axis buys nothing here: the frontier puts the compute on the other
    one); an exponent at the upper bound is not pinned down by the data at all. A term at 0 is said too."""
    out = []
    for key in ("alpha", "beta"):
        if math.isclose(params[key], EXPONENT_BOUNDS[0], abs_tol=1e-6):
            out.append(f"{key} = 0 sits on its lower bound: {NO_GAIN[key]}")
        elif math.isclose(params[key], EXPONENT_BOUNDS[1], abs_tol=1e-6):
            out.append(f"{key} = {params[key]:.4g} sits on its bound {EXPONENT_BOUNDS}: the data do not pin it down")
    for key in ("K", "A", "B", "D", "E"):
        if key in params and params[key] <= 1e-12:
            out.append(f"{key} = 0 sits on its lower bound: that term is not supported by the data")
    return out


def bootstrap(
    data: LawData, form: str = "paper", n_boot: int = 200, seed: int = 0, level: float = 0.95, v_star_q=(0, 50)
) -> dict:
    """Percentile intervals for every parameter (and V* at each text-token count in `v_star_q`, where
    defined) from resampled seeds (two or more per point) or resampled points (one seed)."""
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {}
    failed = 0
    for _ in range(n_boot):
        try:
            res = fit(data.resampled(rng), form)
        except LawInputError:  # a resample with one N or one V: skip, count it
            failed += 1
            continue
        for k, v in res.params.items():
            draws.setdefault(k, []).append(v)
        if form != "additive":  # the frontier's V* at the text-token counts the frontier reports
            v_range = (data.visual_tokens.min(), data.visual_tokens.max())
            for q in v_star_q:
                draws.setdefault(f"v_star_q{q}", []).append(
                    optimal_tokens(res.params["alpha"], res.params["beta"], q, *v_range)
                )
    lo, hi = (1 - level) / 2 * 100, (1 + level) / 2 * 100
    ci = {k: [float(np.percentile(v, lo)), float(np.percentile(v, hi))] for k, v in draws.items()}
    ci["_meta"] = {
        "n_boot": n_boot,
        "failed_resamples": failed,
        "level": level,
        "resampled": "seeds" if data.n_seeds >= 2 else "points",
    }
    return ci


RELATIVE_ERROR_FLOOR = 0.05  # relative errors only where the true error is at least this (else they explode)


def heldout_check(data: LawData, form: str = "paper") -> dict:
    """Fit without the largest LLM, predict it (the paper's 14B check). Absolute errors; relative error only
    over the held-out cells whose observed error is at least RELATIVE_ERROR_FLOOR."""
    largest = data.llm_params.max()
    train = data.llm_params < largest
    try:
        res = fit(data.subset(train), form)
    except LawInputError as exc:
        return {"status": "skipped", "reason": str(exc)}
    test = data.subset(~train)
    pred = res.predict(test.llm_params, test.visual_tokens)
    diff = np.abs(pred - test.error)
    sizable = test.error >= RELATIVE_ERROR_FLOOR
    rel = diff[sizable] / test.error[sizable]
    return {
        "status": "ok",
        "heldout_llm_params": float(largest),
        "mean_abs_error": float(diff.mean()),
        "max_abs_error": float(diff.max()),
        "mean_abs_rel_error": float(rel.mean()) if sizable.any() else None,
        "rel_error_cells": int(sizable.sum()),
        "n_cells": int(len(diff)),
        "miss_by_v": _miss_by_v(test.visual_tokens, test.error - pred),
    }


def _miss_by_v(visual_tokens: np.ndarray, miss: np.ndarray) -> list[list[float]]:
    """[V, mean observed - predicted] for each V of the held-out cells, V ascending."""
    return [[float(v), float(miss[visual_tokens == v].mean())] for v in np.unique(visual_tokens)]


HELDOUT_TOLERANCE = 0.03  # mean absolute miss on the held-out LLM's cells beyond which the report cautions
MISS_NOISE = 0.005  # misses this small carry no sign


def heldout_caution(result: FitResult) -> str | None:
    """A held-out check that misses by more than HELDOUT_TOLERANCE, said with where it misses and what the
    pattern of misses along V shows (signs of misses above MISS_NOISE only)."""
    held = result.heldout or {}
    if held.get("status") != "ok" or not held["mean_abs_error"] > HELDOUT_TOLERANCE:
        return None
    text = (
        f"fitted without the largest LLM, the law misses that LLM's cells by {held['mean_abs_error']:.3g} on "
        f"average (more than {HELDOUT_TOLERANCE})"
    )
    misses = held.get("miss_by_v") or []
    if not misses:
        return text
    text += ": observed minus predicted " + ", ".join(f"{m:+.3f} at V = {v:g}" for v, m in misses)
    return text + _miss_pattern([m for _, m in misses if abs(m) > MISS_NOISE])


def _miss_pattern(signed: list[float]) -> str:
    """What the signs of the held-out misses along V (ascending) say."""
    if not signed:
        return ""
    changes = sum((a > 0) != (b > 0) for a, b in zip(signed, signed[1:]))
    if changes >= 2:
        return "; the misses alternate in sign along V: that LLM's error bends in V where the law's power of V cannot"
    if changes == 1:
        return "; the misses change sign along V: the V-dependence fitted on the smaller LLMs does not carry over"
    side = "below" if signed[0] < 0 else "above"
    return f"; every miss has one sign: that LLM's error sits {side} what the smaller LLMs extrapolate to"


R2_TRUST = 0.8


def trust_problems(result: FitResult) -> list[str]:
    """Why a fit's frontier should not be read as an answer (empty: nothing found). A poor fit (R² below
    R2_TRUST), a search that did not converge, an exponent on its upper bound or no scaling term (K = 0)
    each make V* an artefact of the fit rather than a property of the cells."""
    problems = []
    if not result.r2 >= R2_TRUST:
        problems.append(f"R² = {result.r2:.2f} is below {R2_TRUST}: the law does not describe these cells")
    if result.status == "not_converged":
        problems.append("the fit did not converge")
    if {_no_gain_axis(w) for w in result.warnings} >= set(NO_GAIN):
        problems.append("neither a larger LLM nor more visual tokens lowers the error: there is no frontier")
    return problems + [w for w in result.warnings if not _leaves_frontier_standing(w)]


def cautions(result: FitResult) -> list[str]:
    """What to keep in mind when reading a frontier that stands: the floor D (or E) at 0 (V* does not
    depend on the floor, but the exponents were fitted with it held at its bound), an exponent at 0 (that
    axis does not lower the error: V* sits at the end of the range the other axis prefers), and a held-out
    check that misses (the law's predictions beyond the fitted LLMs are that far off)."""
    bounds = [w for w in result.warnings if _leaves_frontier_standing(w)]
    return bounds + [c for c in [heldout_caution(result)] if c]


def is_floor_warning(warning: str) -> bool:
    return warning.startswith(("D = 0", "E = 0"))


def _no_gain_axis(warning: str) -> str | None:
    """The exponent ('alpha' or 'beta') a warning finds at 0, or None."""
    return next((key for key in NO_GAIN if warning.startswith(f"{key} = 0 sits on its lower bound")), None)


def _leaves_frontier_standing(warning: str) -> bool:
    return is_floor_warning(warning) or _no_gain_axis(warning) is not None


def fit_with_checks(
    data: LawData,
    form: str = "paper",
    n_boot: int = 0,
    seed: int = 0,
    huber_delta: float | None = None,
    v_star_q=(0, 50),
) -> FitResult:
    """The fit, its bootstrap intervals (V* at each text-token count in `v_star_q`) and the held-out check."""
    res = fit(data, form, huber_delta=huber_delta)
    ci = bootstrap(data, form, n_boot, seed, v_star_q=v_star_q) if n_boot else {}
    return replace(res, ci=ci, heldout=heldout_check(data, form))


# --------------------------------------------------------------------------- frontier


def optimal_tokens(alpha: float, beta: float, text_tokens: int, v_min: float, v_max: float) -> float:
    """V* minimising the paper law at fixed 2N(Q+V): beta*Q/(alpha-beta) if alpha > beta, else the largest V.

    Derivation: with N = C / (2(Q+V)), log Y' = alpha*log(Q+V) - beta*log V + const; its zero is
    V = beta*Q/(alpha-beta). Clipped to the trained range [v_min, v_max].
    """
    if alpha <= beta:
        return float(v_max)
    return float(np.clip(beta * text_tokens / (alpha - beta), v_min, v_max))


def frontier(result: FitResult, text_tokens: int, budgets, v_range: tuple[float, float]) -> list[dict]:
    """For each FLOP budget C: the law's optimal (V*, N*) and predicted error, paper-form laws."""
    if result.form == "additive":
        return _numeric_frontier(result, text_tokens, budgets, v_range)
    v_star = optimal_tokens(result.params["alpha"], result.params["beta"], text_tokens, *v_range)
    rows = []
    for c in budgets:
        n_star = params_for_budget(c, text_tokens, v_star)
        rows.append(
            {
                "text_tokens": text_tokens,
                "flops": float(c),
                "visual_tokens": v_star,
                "llm_params": n_star,
                "error": float(predict(result.form, result.params, [n_star], [v_star], text_tokens)[0]),
                "method": "closed_form",
            }
        )
    return rows


def _numeric_frontier(result, text_tokens, budgets, v_range) -> list[dict]:
    vs = np.geomspace(v_range[0], v_range[1], 400)
    rows = []
    for c in budgets:
        ns = params_for_budget(c, text_tokens, vs)
        ys = predict(result.form, result.params, ns, vs, text_tokens)
        i = int(np.argmin(ys))
        rows.append(
            {
                "text_tokens": text_tokens,
                "flops": float(c),
                "visual_tokens": float(vs[i]),
                "llm_params": float(ns[i]),
                "error": float(ys[i]),
                "method": "numeric",
            }
        )
    return rows


def mark_optimal(rows: list[dict], trusted: dict[tuple[str, str], bool]) -> list[dict]:
    """Each row with `optimal`: True on the law-frontier row (not a trained cell's) of the compressor whose
    law predicts the lowest error at that family, Q and budget, among the compressors whose fit can be
    trusted (`trusted[(family, compressor)]`; law.trust_problems): which compressor, V and N to train."""
    best: dict[tuple, int] = {}
    for i, row in enumerate(rows):
        if row["method"] == "best_trained_cell" or not trusted.get((row["family"], row["compressor"]), False):
            continue
        key = (row["family"], row["text_tokens"], row["flops"])
        if key not in best or row["error"] < rows[best[key]]["error"]:
            best[key] = i
    chosen = set(best.values())
    return [{**row, "optimal": i in chosen} for i, row in enumerate(rows)]


def best_trained_cells(table, text_tokens: int, budgets) -> list[dict]:
    """Among trained cells (rows with llm_params, visual_tokens, error), the best one within each budget."""
    rows = []
    for c in budgets:
        inside = [r for r in table if paper_flops(r["llm_params"], text_tokens, r["visual_tokens"]) <= c]
        if inside:
            best = min(inside, key=lambda r: r["error"])
            rows.append({"text_tokens": text_tokens, "flops": float(c), **best, "method": "best_trained_cell"})
    return rows
