"""Cash statistic: sum over a mask, errors and upper limits of a counts measurement with known background."""
import math

import numpy as np
from numba import njit

from gpsfast.kernels.elementary import TRUNCATION

__all__ = ["cash_errors", "cash_sum_masked"]


_MAX_ITER = 50


@njit(cache=True, nogil=True)
def _solve(t, lower_branch):
    """Root w of ``w + log(-w) + 1 + t = 0`` (t >= 0): the Lambert W of ``-exp(-1 - t)``.

    Written in ``w`` directly, so there is no cancellation near the branch point
    ``-1/e`` (small ``t``), where ``W(-exp(-1 - t))`` is ill-conditioned in ``z``.
    ``lower_branch`` selects W_-1 (w <= -1), otherwise W_0 (-1 <= w < 0).
    """
    if t == 0.0:
        return -1.0
    root = math.sqrt(2.0 * t)
    if lower_branch:
        w = -1.0 - root if t < 1.0 else -(1.0 + t) - math.log(1.0 + t)
    else:
        w = -1.0 + root if t < 0.5 else -math.exp(-1.0 - t)
        w = min(w, -1e-300)
    for _ in range(_MAX_ITER):
        f = w + math.log(-w) + 1.0 + t
        step = f / (1.0 + 1.0 / w)
        new = w - step
        if lower_branch:
            new = min(new, -1.0)
        else:
            new = min(max(new, -1.0), -1e-300) if new < 0 else 0.5 * w
        if abs(new - w) <= 1e-15 * abs(w):
            return new
        w = new
    return w


@njit(cache=True, nogil=True)
def cash_errors(n_on, n_sig, n_sigma_err, n_sigma_ul):
    """Asymmetric errors and upper limits of the excess for the Cash statistic.

    The same quantities as gammapy's ``CashCountsStatistic.compute_errn``,
    ``compute_errp`` and ``compute_upper_limit`` (there via ``scipy.special.lambertw``):
    ``errn = n_on (W_0(-exp(-c/n_on - 1)) + 1)``, ``errp = -n_on (W_-1(...) + 1)``,
    ``ul = errp(n_sigma_ul) + n_sig``, with ``c = n_sigma**2 / 2``; for ``n_on <= 0``:
    ``errn = 0``, ``errp = c`` and ``ul = c``.

    Parameters
    ----------
    n_on : ndarray, float64, any shape (flattened)
        Counts.
    n_sig : ndarray, float64, same size
        Excess.
    n_sigma_err, n_sigma_ul : float
        Confidence levels of the errors and of the upper limit, in sigma.

    Returns
    -------
    errn, errp, ul : ndarray, float64, shape (n,)
    """
    n = n_on.size
    errn = np.empty(n)
    errp = np.empty(n)
    ul = np.empty(n)
    c_err = 0.5 * n_sigma_err**2
    c_ul = 0.5 * n_sigma_ul**2
    for i in range(n):
        on = n_on.flat[i]
        if not on > 0:
            errn[i] = 0.0 if on <= 0 else np.nan
            errp[i] = c_err if on <= 0 else np.nan
            ul[i] = c_ul if on <= 0 else np.nan
            continue
        t = c_err / on
        errn[i] = on * (_solve(t, False) + 1.0)
        errp[i] = -on * (_solve(t, True) + 1.0)
        ul[i] = -on * (_solve(c_ul / on, True) + 1.0) + n_sig.flat[i]
    return errn, errp, ul


@njit(cache=True, nogil=True)
def cash_sum_masked(counts, npred, mask):
    """Cash statistic summed over the masked bins, as gammapy's ``MapDataset.stat_sum``.

    gammapy sets negative npred to zero (``MapDataset.npred``), then sums
    ``2 (mu - n log mu)`` with ``mu`` truncated at 1e-25 and the log term only
    for ``n > 0`` (``cash_sum_compiled``), over the bins where the mask is true,
    in C order.

    Parameters
    ----------
    counts : ndarray, shape (n,)
        Observed counts (any numeric dtype).
    npred : ndarray, float64, shape (n,)
        Predicted counts.
    mask : ndarray, bool, shape (n,)
        Bins to sum (flattened in C order).

    Returns
    -------
    stat : float
    """
    total = 0.0
    log_truncation = math.log(TRUNCATION)
    for i in range(npred.size):
        if not mask[i]:
            continue
        mu = npred[i]
        truncated = not mu > TRUNCATION
        if truncated:
            mu = TRUNCATION
        total += mu
        n = float(counts[i])
        if n > 0.0:
            # the log only where it is used (gammapy takes it everywhere)
            total -= n * (log_truncation if truncated else math.log(mu))
    return 2.0 * total

