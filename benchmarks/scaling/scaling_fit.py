"""Fits of the scaling study (standard library + numpy).

loss_law:  L(N) = A * N^(-alpha) + L_inf, by nonlinear least squares on L:
  1. a grid over L_inf in [0, min L): for each value, log(L - L_inf) = log A - alpha log N is a
     straight line, fitted by linear regression; the grid point of least squared error on L wins;
  2. Levenberg-Marquardt on (A, alpha, L_inf) from there (the grid only brackets the optimum),
     keeping L_inf in [0, min L): a loss floor below zero or above a measured loss means nothing.
log_linear: y = a + b * log10(N) (nDCG against size).
R^2 = 1 - SS_res / SS_tot, on the fitted quantity itself (L, or y).
"""
import math

import numpy as np

GRID_POINTS = 400          # L_inf candidates in [0, min L)
LM_ITERATIONS = 200
LM_INITIAL_DAMPING = 1e-3
LM_TOLERANCE = 1e-15       # relative change of the squared error that ends the refinement


def r_squared(y, fitted):
    y, fitted = np.asarray(y, float), np.asarray(fitted, float)
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    ss_res = float(np.sum((y - fitted) ** 2))
    return 1.0 - ss_res / ss_tot if ss_tot > 0 else (1.0 if ss_res == 0 else 0.0)


def loss_law(n, a, alpha, l_inf):
    return a * np.power(np.asarray(n, float), -alpha) + l_inf


def _line_fit(x, y):
    """Least-squares y = c0 + c1 x; returns (c0, c1)."""
    c1, c0 = np.polyfit(x, y, 1)
    return float(c0), float(c1)


def _grid_start(n, loss):
    log_n = np.log(n)
    best = None
    top = float(loss.min())
    for l_inf in np.linspace(0.0, top, GRID_POINTS, endpoint=False):
        log_a, slope = _line_fit(log_n, np.log(loss - l_inf))
        params = (math.exp(log_a), -slope, float(l_inf))
        sse = float(np.sum((loss_law(n, *params) - loss) ** 2))
        if best is None or sse < best[0]:
            best = (sse, params)
    return best[1]


def _refine(n, loss, params):
    """Levenberg-Marquardt on (log A, alpha, L_inf): log A keeps A positive and the steps even."""
    log_n = np.log(n)
    floor_max = float(loss.min())
    p = np.array([math.log(params[0]), params[1], params[2]])

    def residual(q):
        return np.exp(q[0] - q[1] * log_n) + q[2] - loss

    r = residual(p)
    sse = float(r @ r)
    damping = LM_INITIAL_DAMPING
    for _ in range(LM_ITERATIONS):
        power = np.exp(p[0] - p[1] * log_n)
        jac = np.stack([power, -log_n * power, np.ones_like(log_n)], axis=1)  # (points, 3)
        jtj, jtr = jac.T @ jac, jac.T @ r
        try:
            step = np.linalg.solve(jtj + damping * np.diag(np.diag(jtj) + 1e-300), -jtr)
        except np.linalg.LinAlgError:
            break
        q = p + step
        r_new = residual(q)
        sse_new = float(r_new @ r_new)
        if 0.0 <= q[2] < floor_max and np.isfinite(sse_new) and sse_new <= sse:
            done = sse - sse_new <= LM_TOLERANCE * max(sse, 1e-300)
            p, r, sse = q, r_new, sse_new
            damping = max(damping / 10, 1e-12)
            if done:
                break
        else:
            damping *= 10
            if damping > 1e12:
                break
    return math.exp(p[0]), float(p[1]), float(p[2])


def fit_loss_law(n, loss):
    """{"A", "alpha", "L_inf", "r2"} of L(N) = A N^-alpha + L_inf; needs 3+ sizes, L > 0."""
    n, loss = np.asarray(n, float), np.asarray(loss, float)
    if len(n) < 3 or np.any(n <= 0) or np.any(loss <= 0) or not np.all(np.isfinite(loss)):
        raise ValueError("the loss law needs 3 or more sizes with N > 0 and a finite loss > 0")
    a, alpha, l_inf = _refine(n, loss, _grid_start(n, loss))
    return {"A": a, "alpha": alpha, "L_inf": l_inf, "r2": r_squared(loss, loss_law(n, a, alpha, l_inf))}


def fit_log_linear(n, y):
    """{"intercept", "slope_per_decade", "r2"} of y = intercept + slope * log10(N)."""
    x = np.log10(np.asarray(n, float))
    c0, c1 = _line_fit(x, np.asarray(y, float))
    return {"intercept": c0, "slope_per_decade": c1, "r2": r_squared(y, c0 + c1 * x)}
