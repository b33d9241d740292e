"""Poisson (Cash) likelihood of source norms with fixed shapes: joint fit, profiles, errors, upper limits.

Within one flux-point energy bin, the predicted counts are
``mu = fixed + sum_k norm_k signal[:, k]``: the fixed part (background and the
sources that are not fitted) and one predicted-counts template per source,
scaled by its norm. The statistic is gammapy's Cash statistic (``MapDataset``:
negative npred set to zero, ``mu`` truncated at 1e-25, the log term only where
counts > 0), written here as a deviance (the statistic minus its value for
``mu = counts``: the same derivatives, small numbers near the best fit). Add
`saturated_stat` to get gammapy's value.

The norms are kept in the region where no pixel gets a negative prediction
(gammapy clips such predictions to zero, which makes the statistic a kinked,
meaningless function there): each norm above ``-min(fixed / signal_k) / n``
over the pixels without counts (``n``: the sources with such pixels), that is
``-min(fixed / signal)`` for one source. The best fit equals gammapy's wherever
gammapy's has no negative prediction. A source whose template covers no pixel
with counts (no likelihood minimum: its statistic decreases linearly) ends at
that bound, with no curvature error and no lower error; a lower error that
would cross the bound is NaN too.
"""
import math

import numpy as np
from numba import njit

from gpsfast.kernels.elementary import TRUNCATION as _TRUNCATION_VALUE

__all__ = ["fit_norms", "norm_points", "saturated_stat"]

_MAX_NEWTON = 100
_MAX_HALVINGS = 40
_STALL_DECREMENT = 1e-6
_MAX_BRACKET = 120
_MAX_BRENT = 200


@njit(cache=True, nogil=True)
def saturated_stat(counts):
    """gammapy's Cash statistic for ``mu = counts``: ``2 sum (n - n log n)`` over counts > 0.

    Parameters
    ----------
    counts : ndarray, float64, shape (n_pixels,)

    Returns
    -------
    stat : float
    """
    total = 0.0
    for i in range(counts.size):
        n = counts[i]
        if n > 0.0:
            total += n - n * math.log(n)
    return 2.0 * total


@njit(cache=True, nogil=True)
def _split(counts, fixed, signal):
    """The likelihood data: pixels with counts, pixels without counts, and the sums of the latter.

    Pixels without counts add ``2 mu`` (``mu`` clipped at zero, as gammapy): while
    no such pixel has a negative prediction, their sum is linear in the norms and
    is evaluated from their summed fixed counts and templates. ``reach[k]`` is the
    largest negative norm of source ``k`` alone that keeps them all non-negative
    (``min(fixed / signal)``; 0 where a template reaches a pixel without fixed
    counts, inf where it reaches none): while ``sum_k max(-norm_k, 0) / reach[k] <= 1``
    no prediction is negative. The fits keep each norm above
    ``lower[k] = -reach[k] / n`` (``n`` sources with a finite reach), inside that
    region: the statistic stays smooth there (a negative prediction would be
    clipped to zero, a kink where Newton steps stall, and has no meaning).
    """
    n_pixels, n_sources = signal.shape
    has_counts = counts > 0.0
    n_pos = int(has_counts.sum())
    c1 = np.empty(n_pos)
    f1 = np.empty(n_pos)
    s1 = np.empty((n_pos, n_sources))
    f0 = np.empty(n_pixels - n_pos)
    s0 = np.empty((n_pixels - n_pos, n_sources))
    total_f0 = 0.0
    total_s0 = np.zeros(n_sources)
    reach = np.full(n_sources, np.inf)
    i1 = i0 = 0
    for i in range(n_pixels):
        if has_counts[i]:
            c1[i1] = counts[i]
            f1[i1] = fixed[i]
            s1[i1] = signal[i]
            i1 += 1
            continue
        f0[i0] = fixed[i]
        s0[i0] = signal[i]
        total_f0 += fixed[i]
        for k in range(n_sources):
            s = signal[i, k]
            total_s0[k] += s
            if s > 0.0:
                reach[k] = min(reach[k], max(fixed[i], 0.0) / s)
        i0 += 1
    n_bounded = 0
    for k in range(n_sources):
        if reach[k] < np.inf:
            n_bounded += 1
    lower = np.full(n_sources, -np.inf)
    for k in range(n_sources):
        if reach[k] < np.inf:
            lower[k] = -reach[k] / n_bounded + 0.0  # no negative zero
    return c1, f1, s1, f0, s0, total_f0, total_s0, reach, lower


@njit(cache=True, nogil=True)
def _linear_region(data, norms):
    """Whether no pixel without counts has a negative prediction for these norms (sufficient test)."""
    reach = data[7]
    load = 0.0
    for k in range(norms.size):
        if norms[k] < 0.0:
            if reach[k] == 0.0:
                return False
            load += -norms[k] / reach[k]
    return load <= 1.0


@njit(cache=True, nogil=True)
def _deviance(data, norms):
    """Cash statistic of the norms minus `saturated_stat`."""
    c1, f1, s1, f0, s0, total_f0, total_s0 = data[:7]
    n_sources = norms.size
    total = 0.0
    log_truncation = math.log(_TRUNCATION_VALUE)
    for i in range(c1.size):
        mu = f1[i]
        for k in range(n_sources):
            mu += norms[k] * s1[i, k]
        n = c1[i]
        log_mu = math.log(mu) if mu > _TRUNCATION_VALUE else log_truncation
        total += max(mu, _TRUNCATION_VALUE) - n - n * (log_mu - math.log(n))
    if _linear_region(data, norms):
        total += total_f0
        for k in range(n_sources):
            total += norms[k] * total_s0[k]
    else:
        for i in range(f0.size):
            mu = f0[i]
            for k in range(n_sources):
                mu += norms[k] * s0[i, k]
            total += max(mu, _TRUNCATION_VALUE)
    return 2.0 * total


@njit(cache=True, nogil=True)
def _gradient_hessian(data, norms, free):
    """Gradient and Hessian of the statistic in the free norms (zero rows and columns elsewhere)."""
    c1, f1, s1, f0, s0 = data[:5]
    total_s0 = data[6]
    n_sources = norms.size
    gradient = np.zeros(n_sources)
    hessian = np.zeros((n_sources, n_sources))
    for i in range(c1.size):
        mu = f1[i]
        for k in range(n_sources):
            mu += norms[k] * s1[i, k]
        if not mu > _TRUNCATION_VALUE:
            continue
        n = c1[i]
        slope = 2.0 * (1.0 - n / mu)
        curvature = 2.0 * n / (mu * mu)
        for k in range(n_sources):
            s_k = s1[i, k]
            if not free[k] or s_k == 0.0:
                continue
            gradient[k] += slope * s_k
            for m in range(k, n_sources):
                if free[m]:
                    hessian[k, m] += curvature * s_k * s1[i, m]
    if _linear_region(data, norms):
        for k in range(n_sources):
            if free[k]:
                gradient[k] += 2.0 * total_s0[k]
    else:
        for i in range(f0.size):
            mu = f0[i]
            for k in range(n_sources):
                mu += norms[k] * s0[i, k]
            if mu > _TRUNCATION_VALUE:
                for k in range(n_sources):
                    if free[k]:
                        gradient[k] += 2.0 * s0[i, k]
    for k in range(n_sources):
        for m in range(k):
            hessian[k, m] = hessian[m, k]
    return gradient, hessian


@njit(cache=True, nogil=True)
def _cholesky_solve(matrix, rhs, free):
    """Solve ``matrix x = rhs`` in the free sub-space; ok is False when not positive definite."""
    n = rhs.size
    lower = np.zeros((n, n))
    x = np.zeros(n)
    for j in range(n):
        if not free[j]:
            continue
        total = matrix[j, j]
        for m in range(j):
            if free[m]:
                total -= lower[j, m] ** 2
        if not total > 0.0:
            return x, False
        lower[j, j] = math.sqrt(total)
        for i in range(j + 1, n):
            if not free[i]:
                continue
            total = matrix[i, j]
            for m in range(j):
                if free[m]:
                    total -= lower[i, m] * lower[j, m]
            lower[i, j] = total / lower[j, j]
    y = np.zeros(n)
    for i in range(n):
        if free[i]:
            total = rhs[i]
            for m in range(i):
                if free[m]:
                    total -= lower[i, m] * y[m]
            y[i] = total / lower[i, i]
    for i in range(n - 1, -1, -1):
        if free[i]:
            total = y[i]
            for m in range(i + 1, n):
                if free[m]:
                    total -= lower[m, i] * x[m]
            x[i] = total / lower[i, i]
    return x, True


@njit(cache=True, nogil=True)
def _newton_step(hessian, gradient, free):
    """Newton direction; the Hessian is damped (Levenberg) until it is positive definite."""
    n = gradient.size
    scale = 0.0
    for k in range(n):
        if free[k]:
            scale = max(scale, abs(hessian[k, k]))
    if scale == 0.0:
        scale = 1.0
    damping = 0.0
    for _ in range(60):
        damped = hessian.copy()
        for k in range(n):
            damped[k, k] += damping
        step, ok = _cholesky_solve(damped, -gradient, free)
        if ok:
            return step
        damping = 1e-10 * scale if damping == 0.0 else 10.0 * damping
    return -gradient / scale


@njit(cache=True, nogil=True)
def _fit(data, norms, free):
    """Newton minimisation over the free norms, each kept above ``data[8]`` (in place): (deviance, converged).

    A projected Newton method: norms at their lower bound that the gradient
    pushes down are held there, the Newton step of the others is cut where it
    would cross a bound, then shortened until the statistic decreases enough
    (Armijo).
    """
    lower = data[8]
    n_sources = norms.size
    for k in range(n_sources):
        if free[k] and norms[k] < lower[k]:
            norms[k] = lower[k]
    stat = _deviance(data, norms)
    if not free.any():
        return stat, True
    trial = norms.copy()
    for _ in range(_MAX_NEWTON):
        gradient, hessian = _gradient_hessian(data, norms, free)
        work = free.copy()
        for k in range(n_sources):
            if work[k] and norms[k] <= lower[k] and gradient[k] > 0.0:
                work[k] = False
        step = np.zeros(n_sources)
        for _ in range(n_sources + 1):
            if not work.any():
                return stat, True
            step = _newton_step(hessian, gradient, work)
            blocked = False
            for k in range(n_sources):
                if work[k] and norms[k] <= lower[k] and step[k] < 0.0:
                    work[k] = False
                    blocked = True
            if not blocked:
                break
        decrement = 0.0
        for k in range(n_sources):
            decrement -= gradient[k] * step[k]
        t_max = 1.0
        for k in range(n_sources):
            if step[k] < 0.0 and lower[k] > -np.inf:
                t_max = min(t_max, (lower[k] - norms[k]) / step[k])
        if not decrement > 1e-8 and t_max == 1.0:
            # quadratic regime: the full Newton step lands on the minimum (to ~1e-8 of
            # the error), below what the float sums of the statistic resolve
            for k in range(n_sources):
                norms[k] += step[k]
            return _deviance(data, norms), True
        t = t_max
        accepted = False
        for _ in range(_MAX_HALVINGS):
            for k in range(n_sources):
                trial[k] = max(norms[k] + t * step[k], lower[k]) if work[k] else norms[k]
            new = _deviance(data, trial)
            if new <= stat - 1e-4 * t * decrement:
                accepted = True
                break
            t *= 0.5
        if not accepted:
            return stat, decrement < _STALL_DECREMENT
        norms[:] = trial
        stat = new
    return stat, False


@njit(cache=True, nogil=True)
def fit_norms(counts, fixed, signal, norms, free):
    """Minimise the statistic over the free norms (Newton with a backtracking line search).

    Parameters
    ----------
    counts, fixed : ndarray, float64, shape (n_pixels,)
        Counts and fixed predicted counts.
    signal : ndarray, float64, shape (n_pixels, n_sources)
        Predicted counts of each source for norm 1.
    norms : ndarray, float64, shape (n_sources,)
        Start values; the free ones are replaced by the best fit (in place).
    free : ndarray, bool, shape (n_sources,)
        Norms to fit; the others keep their values.

    Returns
    -------
    deviance : float
        Statistic at the best fit minus `saturated_stat`.
    converged : bool
    """
    return _fit(_split(counts, fixed, signal), norms, free)


@njit(cache=True, nogil=True)
def _profile(data, warm, free, k, value):
    """Statistic with norm ``k`` at ``value``, the other free norms refitted from ``warm`` (updated)."""
    warm[k] = value
    others = free.copy()
    others[k] = False
    stat, _ = _fit(data, warm, others)
    return stat


@njit(cache=True, nogil=True)
def _rise(data, warm, free, k, value, deviance, n_sigma):
    """``sqrt(profile - minimum) - n_sigma``: nearly linear in the norm, what the root finder solves."""
    return math.sqrt(max(_profile(data, warm, free, k, value) - deviance, 0.0)) - n_sigma


@njit(cache=True, nogil=True)
def _brent(data, warm, free, k, a, fa, b, fb, deviance, n_sigma, xtol):
    """Root of `_rise` between a and b (Brent's method), fa and fb of opposite signs."""
    c, fc = a, fa
    d = e = b - a
    for _ in range(_MAX_BRENT):
        if (fb > 0) == (fc > 0):
            c, fc = a, fa
            d = e = b - a
        if abs(fc) < abs(fb):
            a, b, c = b, c, b
            fa, fb, fc = fb, fc, fb
        tol = 2e-16 * abs(b) + 0.5 * xtol
        m = 0.5 * (c - b)
        if abs(m) <= tol or fb == 0.0:
            return b
        if abs(e) >= tol and abs(fa) > abs(fb):
            s = fb / fa
            if a == c:
                p, q = 2.0 * m * s, 1.0 - s
            else:
                q, r = fa / fc, fb / fc
                p = s * (2.0 * m * q * (q - r) - (b - a) * (r - 1.0))
                q = (q - 1.0) * (r - 1.0) * (s - 1.0)
            if p > 0:
                q = -q
            else:
                p = -p
            if 2.0 * p < min(3.0 * m * q - abs(tol * q), abs(e * q)):
                e, d = d, p / q
            else:
                d = e = m
        else:
            d = e = m
        a, fa = b, fb
        b += d if abs(d) > tol else (tol if m > 0 else -tol)
        fb = _rise(data, warm, free, k, b, deviance, n_sigma)
    return b


@njit(cache=True, nogil=True)
def _crossing(data, best, free, k, step, direction, deviance, n_sigma, limit):
    """Distance from the best fit to where the profile of norm ``k`` rises by ``n_sigma**2`` (NaN: none).

    From the best fit, trial points go ``n_sigma * step`` away, then further by
    secant extrapolation of `_rise` (at least doubling the distance) until the
    profile passes the level; Brent's method finds the crossing in that bracket.
    ``limit`` bounds the search on the lower side (-inf or NaN: none); NaN when
    the profile stays below the level down to it.
    """
    warm = best.copy()
    x0 = best[k]
    a, fa = x0, -n_sigma
    distance = n_sigma * step
    for _ in range(_MAX_BRACKET):
        b = x0 + direction * distance
        if direction < 0 and b <= limit:
            if a <= limit:
                return np.nan
            b = limit
        fb = _rise(data, warm, free, k, b, deviance, n_sigma)
        if fb > 0.0:
            root = _brent(data, warm, free, k, a, fa, b, fb, deviance, n_sigma, 1e-9 * step)
            return abs(root - x0)
        slope = (fb - fa) / abs(b - a)
        a, fa = b, fb
        reach = abs(b - x0) - 1.2 * fb / slope if slope > 0 else 0.0
        distance = max(2.0 * distance, reach)
    return np.nan


@njit(cache=True, nogil=True)
def norm_points(counts, fixed, signal, n_sigma, n_sigma_ul, scan_values, errors, upper_limits):
    """Joint best-fit norms of the sources in one energy bin, with errors, upper limits, TS and profiles.

    Parameters
    ----------
    counts, fixed : ndarray, float64, shape (n_pixels,)
        Counts and fixed predicted counts (background and the sources not fitted).
    signal : ndarray, float64, shape (n_pixels, n_sources)
        Predicted counts of each source for norm 1.
    n_sigma, n_sigma_ul : float
        Errors where the profile rises by ``n_sigma**2``; upper limits where it
        rises by ``n_sigma_ul**2`` above the best fit.
    scan_values : ndarray, float64, shape (n_scan,)
        Norms where the profile is evaluated.
    errors, upper_limits : bool
        Compute the asymmetric errors / the upper limits (NaN otherwise).

    Returns
    -------
    norm, norm_err, norm_errn, norm_errp, norm_ul, ts : ndarray, float64, shape (n_sources,)
        ``norm_err`` is ``n_sigma`` times the curvature error (NaN at a lower
        bound; the norms at their bound held fixed for the others); ``norm_errn`` and
        ``norm_errp`` come from the profile (the other norms refitted), as
        ``norm_ul = norm + errp(n_sigma_ul)``; ``ts`` is the profile at norm 0
        minus its minimum.
    stat_null : ndarray, float64, shape (n_sources,)
        Profile at norm 0 (deviance).
    stat_scan : ndarray, float64, shape (n_sources, n_scan)
        Profile at the scan values (deviance).
    success : ndarray, bool, shape (n_sources,)
        Fit converged and the source predicts counts in the bin.
    deviance : float
        Statistic at the best fit minus `saturated_stat`.
    """
    n_pixels, n_sources = signal.shape
    nan = np.nan
    norm = np.full(n_sources, nan)
    norm_err = np.full(n_sources, nan)
    errn = np.full(n_sources, nan)
    errp = np.full(n_sources, nan)
    ul = np.full(n_sources, nan)
    ts = np.full(n_sources, nan)
    stat_null = np.full(n_sources, nan)
    stat_scan = np.full((n_sources, scan_values.size), nan)
    success = np.zeros(n_sources, dtype=np.bool_)

    data = _split(counts, fixed, signal)
    present = np.zeros(n_sources, dtype=np.bool_)
    regular = np.zeros(n_sources, dtype=np.bool_)
    totals = np.zeros(n_sources)
    for i in range(n_pixels):
        for k in range(n_sources):
            s = signal[i, k]
            totals[k] += s
            if s > 0.0:
                present[k] = True
                if counts[i] > 0.0:
                    regular[k] = True
    lower = data[8]
    best = np.zeros(n_sources)
    for k in range(n_sources):
        if present[k]:
            best[k] = max(1.0, lower[k])
    deviance, converged = _fit(data, best, present)
    # curvature errors of the norms inside their bounds (those at a bound held fixed)
    interior = regular.copy()
    for k in range(n_sources):
        if best[k] <= lower[k] + 1e-12 * (1.0 + abs(lower[k])):
            interior[k] = False
    _, hessian = _gradient_hessian(data, best, interior)
    inverse = np.zeros((n_sources, n_sources))
    covariance_ok = True
    for k in range(n_sources):
        if interior[k]:
            unit = np.zeros(n_sources)
            unit[k] = 1.0
            column, ok = _cholesky_solve(hessian, unit, interior)
            covariance_ok = covariance_ok and ok
            inverse[:, k] = column
    for k in range(n_sources):
        if not present[k]:
            continue
        norm[k] = best[k]
        success[k] = converged
        sigma = nan
        if interior[k] and covariance_ok and inverse[k, k] > 0:
            sigma = math.sqrt(2.0 * inverse[k, k])
            norm_err[k] = n_sigma * sigma
        # without curvature (no counts: a linear profile) the norm that raises the statistic by one
        step = sigma if sigma > 0 else 0.5 / totals[k]
        step = max(step, 1e-9 * abs(best[k]))
        warm = best.copy()
        stat_null[k] = _profile(data, warm, present, k, 0.0)
        ts[k] = stat_null[k] - deviance
        if errors:
            errp[k] = _crossing(data, best, present, k, step, 1.0, deviance, n_sigma, nan)
            if regular[k]:
                errn[k] = _crossing(data, best, present, k, step, -1.0, deviance, n_sigma, lower[k])
        if upper_limits:
            ul[k] = best[k] + _crossing(data, best, present, k, step, 1.0, deviance, n_sigma_ul, nan)
        warm = best.copy()
        for j in range(scan_values.size):
            stat_scan[k, j] = _profile(data, warm, present, k, scan_values[j])
    return norm, norm_err, errn, errp, ul, ts, stat_null, stat_scan, success, deviance
