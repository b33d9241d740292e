"""Per-pixel amplitude fits of a TS map with the Cash statistic.

The fits follow gammapy's ``TSMapEstimator`` (``gammapy.estimators.map.ts``) step
by step:

* the cut-out of every fit position, its elements taken plane by plane and the
  elements with zero counts, background and model dropped;
* the Cash statistic, its derivative and the root bounds of gammapy's default
  (Cython) fit statistics: truncation of the predicted counts at 1e-25 with the
  logarithm of the single-precision truncation value, IEEE division by zero;
* SciPy's ``brentq`` (Brent's method as in ``scipy/optimize/Zeros/brentq.c``)
  with the same tolerances and failure modes: no sign change, a NaN function
  value, no convergence within ``max_niter`` iterations.

The sums are vectorised (re-associated) and the logarithms of the Cash statistic
computed by `log_into` (within 2 ulp), so values differ from gammapy's in the last
bits (~1e-15 relative); the Brent iterations, which only compare such values with
quantities far from them, take the same path. Where the root lies on a bracket
bound (all elements with counts and model > 0 have the same background to model
ratio, e.g. a single count: frequent in sparse energy bins), the sign of the
derivative there is rounding noise, so the bounds and the derivative are then
summed in gammapy's order, as gammapy does.

Output columns are named in `QUANTITIES`.
"""
import math

import numpy as np
from numba import njit, prange

from gpsfast.kernels.elementary import TRUNCATION
# the workspace layout (all its rows: tests fill workspaces through this module) and the statistic on it
from gpsfast.kernels.tsmap_stat import (  # noqa: F401
    _N_NONFINITE,
    _PB,
    _PC,
    _PI,
    _PM,
    _QB,
    _QI,
    _QM,
    _S_BACKGROUND,
    _S_COUNTS,
    _S_FREE,
    _S_MODEL,
    _WS_ROWS,
    LOG_TRUNCATION,
    _cash_root,
    _gather,
    _norm_bounds,
    _norm_err,
    _ordered_sums,
    _stat,
    log_into,
    log_truncated,
)

__all__ = [
    "LOG_TRUNCATION",
    "QUANTITIES",
    "TRUNCATION",
    "brentq",
    "log_into",
    "log_truncated",
    "ts_map",
]

XTOL = 2e-12
"""SciPy's default absolute tolerance of ``brentq``."""
RTOL_MIN = 4 * float(np.finfo(float).eps)
"""Smallest relative tolerance SciPy's ``brentq`` accepts."""

QUANTITIES = (
    "ts", "norm", "niter", "norm_err", "npred", "npred_excess", "stat", "stat_null", "success",
    "norm_errp", "norm_errn", "norm_ul",
)
"""Columns of the `ts_map` result."""

_CONVERGED = 0
_SIGN_ERROR = 1
_NOT_CONVERGED = 2
_NAN_VALUE = 3

_ROOT = 0
"""Objective of `brentq`: derivative of the Cash statistic (norm fit)."""
_PROFILE = 1
"""Objective of `brentq`: target minus Cash statistic (likelihood-profile errors and limits)."""
_ROOT_ORDERED = 2
"""Objective of `brentq`: derivative of the Cash statistic summed in gammapy's order (see `_fit_pixel`)."""


@njit(cache=True, nogil=True, error_model="numpy")
def _objective(kind, x, target, ws, sizes, consts):
    if kind == _ROOT:
        return _cash_root(x, ws, sizes[0], consts[_S_FREE])
    if kind == _ROOT_ORDERED:
        return _ordered_sums(x, ws, sizes)[0]
    return target - _stat(x, ws, sizes, consts)


@njit(cache=True, nogil=True, error_model="numpy")
def brentq(kind, xa, xb, rtol, max_niter, target, ws, sizes, consts):
    """SciPy's ``brentq`` on one of the two objectives, with ``xtol = 2e-12``.

    Parameters
    ----------
    kind : int
        ``_ROOT`` (derivative of the Cash statistic), ``_ROOT_ORDERED`` (the same
        summed in gammapy's order) or ``_PROFILE`` (``target - stat(x)``).
    xa, xb : float
        Bracket.
    rtol : float
        Relative tolerance.
    max_niter : int
        Maximum number of iterations.
    target : float
        Target of the ``_PROFILE`` objective.
    ws : ndarray, shape (11, n_max), float64
        Workspace holding the fit elements (see `_gather`).
    sizes, consts : tuple
        Element counts and constant sums returned by `_gather`.

    Returns
    -------
    root : float
    iterations : int
    status : int
        0 converged, 1 no sign change, 2 not converged, 3 NaN function value
        (SciPy raises or flags failure in cases 1-3).
    """
    if rtol < RTOL_MIN:
        return np.nan, 0, _SIGN_ERROR
    xpre = xa
    xcur = xb
    xblk = 0.0
    fblk = 0.0
    spre = 0.0
    scur = 0.0
    fpre = _objective(kind, xpre, target, ws, sizes, consts)
    if math.isnan(fpre):
        return np.nan, 0, _NAN_VALUE
    fcur = _objective(kind, xcur, target, ws, sizes, consts)
    if math.isnan(fcur):
        return np.nan, 0, _NAN_VALUE
    if fpre * fcur > 0:
        return np.nan, 0, _SIGN_ERROR
    if fpre == 0:
        return xpre, 1, _CONVERGED
    if fcur == 0:
        return xcur, 1, _CONVERGED
    iterations = 0
    for _ in range(max_niter):
        iterations += 1
        if fpre * fcur < 0:
            xblk = xpre
            fblk = fpre
            spre = xcur - xpre
            scur = spre
        if abs(fblk) < abs(fcur):
            xpre = xcur
            xcur = xblk
            xblk = xpre
            fpre = fcur
            fcur = fblk
            fblk = fpre
        delta = (XTOL + rtol * abs(xcur)) / 2
        sbis = (xblk - xcur) / 2
        if fcur == 0 or abs(sbis) < delta:
            return xcur, iterations, _CONVERGED
        if abs(spre) > delta and abs(fcur) < abs(fpre):
            if xpre == xblk:
                stry = -fcur * (xcur - xpre) / (fcur - fpre)
            else:
                dpre = (fpre - fcur) / (xpre - xcur)
                dblk = (fblk - fcur) / (xblk - xcur)
                stry = -fcur * (fblk * dblk - fpre * dpre) / (dblk * dpre * (fblk - fpre))
            if 2 * abs(stry) < min(abs(spre), 3 * abs(sbis) - delta):
                spre = scur
                scur = stry
            else:
                spre = sbis
                scur = sbis
        else:
            spre = sbis
            scur = sbis
        xpre = xcur
        fpre = fcur
        if abs(scur) > delta:
            xcur += scur
        else:
            xcur += delta if sbis > 0 else -delta
        fcur = _objective(kind, xcur, target, ws, sizes, consts)
        if math.isnan(fcur):
            return np.nan, iterations, _NAN_VALUE
    return xcur, iterations, _NOT_CONVERGED


@njit(cache=True, nogil=True, error_model="numpy")
def _confidence(n_sigma, positive, norm, norm_err, stat, rtol, max_niter, ws, sizes, consts):
    """Distance from the norm to where the statistic rises by ``n_sigma**2`` (NaN on failure)."""
    if positive:
        lo = norm
        hi = norm + 1e2 * norm_err
        factor = 1.0
    else:
        lo = norm - 1e2 * norm_err
        hi = norm
        factor = -1.0
    root, _, status = brentq(_PROFILE, lo, hi, rtol, max_niter, stat + n_sigma * n_sigma, ws, sizes, consts)
    if status != _CONVERGED:
        root = np.nan
    return (root - norm) * factor


@njit(cache=True, nogil=True, error_model="numpy")
def _fit_pixel(ws, sizes, consts, norm_guess, use_threshold, threshold, rtol, max_niter, n_sigma, n_sigma_ul,
               want_ul, want_errn_errp, out):
    """One position: ``BrentqFluxEstimator.run`` on the gathered elements, written into ``out``."""
    n_p = sizes[0]
    n_nonfinite = consts[_N_NONFINITE]
    stat_null = _stat(0.0, ws, sizes, consts)
    fitted = True
    norm = norm_guess
    norm_err = np.nan
    stat = np.nan
    niter = 0
    success = True
    if use_threshold:
        norm_err = _norm_err(norm, n_sigma, ws, n_p, n_nonfinite)
        stat = _stat(norm, ws, sizes, consts)
        fitted = stat_null - stat > threshold
    if fitted:
        norm_min, norm_max, norm_min_total, degenerate = _norm_bounds(ws, sizes, consts)
        if consts[_S_COUNTS] <= 0 or consts[_S_MODEL] <= 0:
            norm = norm_min_total
            niter = 0
            success = True
        else:
            kind = _ROOT_ORDERED if degenerate else _ROOT
            root, iterations, status = brentq(kind, norm_min, norm_max, rtol, max_niter, 0.0, ws, sizes, consts)
            if status == _CONVERGED:
                norm = norm_min_total if norm_min_total > root else root
                niter = iterations
                success = True
            else:
                norm = norm_min_total
                niter = max_niter
                success = False
        norm_err = _norm_err(norm, n_sigma, ws, n_p, n_nonfinite)
        stat = _stat(norm, ws, sizes, consts)
    out[0] = stat_null - stat
    out[1] = norm
    out[2] = niter
    out[3] = norm_err
    out[6] = stat
    out[7] = stat_null
    out[8] = 1.0 if success else 0.0
    out[9] = np.nan
    out[10] = np.nan
    out[11] = np.nan
    if want_ul:
        out[11] = norm + _confidence(n_sigma_ul, True, norm, norm_err, stat, rtol, max_niter, ws, sizes, consts)
    if want_errn_errp:
        out[10] = _confidence(n_sigma, False, norm, norm_err, stat, rtol, max_niter, ws, sizes, consts)
        out[9] = _confidence(n_sigma, True, norm, norm_err, stat, rtol, max_niter, ws, sizes, consts)
    npred_excess = norm * consts[_S_MODEL]
    out[4] = consts[_S_BACKGROUND] + npred_excess
    out[5] = out[4] - consts[_S_BACKGROUND]


@njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def ts_map(counts, background, exposure, pattern_id, window_pattern, pid_plane, kernels, k_offset, k_ny, k_nx,
           norm_guess, pos_y, pos_x, use_threshold, threshold, rtol, max_niter, n_sigma, n_sigma_ul, want_ul,
           want_errn_errp):
    """Amplitude fit of a kernel at many positions of a set of count cubes.

    The fit elements at position ``(y, x)`` are, plane after plane, the pixels of a
    ``(k_ny[p], k_nx[p])`` window centred on it: counts, background and model
    ``kernel * exposure``; the kernel of plane ``p`` starts at ``kernels[k_offset[p]]``
    and, when ``pid_plane[p] >= 0``, is one of several kernels of that size chosen
    per pixel of the window by ``pattern_id[pid_plane[p]]`` (the energy-weighted
    kernels of gammapy's ``sum_over_energy_groups``). Windows must lie inside
    the maps.

    Parameters
    ----------
    counts, background, exposure : ndarray, shape (n_planes, ny, nx), float64
        Counts, background (npred of the models) and exposure of every plane.
    pattern_id : ndarray, shape (n_maps, ny, nx), int64
        Kernel index per pixel.
    window_pattern : ndarray, shape (n_maps, ny, nx), int64
        Kernel index shared by all the pixels of the window centred on each
        pixel, -1 where they differ.
    pid_plane : ndarray, shape (n_planes,), int64
        Pattern map of each plane, or -1 for a single kernel.
    kernels : ndarray, shape (n_kernel_values,), float64
        Flattened kernels.
    k_offset, k_ny, k_nx : ndarray, shape (n_planes,), int64
        Start and (odd) shape of the kernel(s) of each plane.
    norm_guess : ndarray, shape (n_positions,), float64
        Starting norm (used with a threshold).
    pos_y, pos_x : ndarray, shape (n_positions,), int64
        Fit positions.
    use_threshold : bool
        Fit only where the TS of ``norm_guess`` exceeds ``threshold``.
    threshold, rtol : float
        TS threshold and relative tolerance of the norm.
    max_niter : int
        Maximum number of iterations of the root finding.
    n_sigma, n_sigma_ul : float
        Sigma of the errors and of the upper limits.
    want_ul, want_errn_errp : bool
        Compute the upper limits, the asymmetric errors.

    Returns
    -------
    result : ndarray, shape (n_positions, 12), float64
        Columns named in `QUANTITIES`; ``success`` is 1.0 or 0.0, not computed
        optional columns are NaN.

    Notes
    -----
    The positions are split in 256 chunks; call it under
    ``numba.parallel_chunksize(1)`` for dynamic scheduling of the chunks.
    """
    n_pos = pos_y.shape[0]
    n_max = 1
    for p in range(counts.shape[0]):
        n_max += k_ny[p] * k_nx[p]
    shape = counts.shape
    counts_flat = counts.reshape(-1)
    background_flat = background.reshape(-1)
    log_flat = log_truncated(background).reshape(-1)
    exposure_flat = exposure.reshape(-1)
    pid_flat = pattern_id.reshape(-1)
    window_flat = window_pattern.reshape(-1)
    out = np.empty((n_pos, len(QUANTITIES)))
    n_chunks = min(n_pos, 256)
    for chunk in prange(n_chunks):
        ws = np.empty((_WS_ROWS, n_max))
        for k in range(chunk * n_pos // n_chunks, (chunk + 1) * n_pos // n_chunks):
            sizes, consts = _gather(counts_flat, background_flat, log_flat, exposure_flat, pid_flat, window_flat,
                                    pid_plane, kernels, k_offset, k_ny, k_nx, shape, pos_y[k], pos_x[k], ws)
            _fit_pixel(ws, sizes, consts, norm_guess[k], use_threshold, threshold, rtol, max_niter, n_sigma, n_sigma_ul,
                       want_ul, want_errn_errp, out[k])
    return out
