"""Per-pixel Poisson (Cash) fit of a power law forward-folded through an energy dispersion.

For one pixel, with ``n_true`` true-energy bins and ``n_reco`` reconstructed bins,
the predicted counts are

    mu_k = b_k + A * s_k(gamma),
    s_k(gamma) = sum_t exposure_t * I_t(gamma) * R[t, k],
    I_t(gamma) = integral of (E / E0) ** -gamma over true-energy bin t,

the model of a gammapy ``SpectrumDataset`` with a ``PowerLawSpectralModel``
(amplitude ``A``, index ``gamma``, reference ``E0``). The Cash statistic
``C = 2 sum_k (mu_k - n_k log mu_k)`` (mu truncated at 1e-25, as in gammapy) is
minimised over the bins with ``use`` true: ``A`` by Newton steps at fixed
``gamma`` (profile likelihood), ``gamma`` by golden-section search. Errors come
from the Hessian of ``C`` (covariance ``2 H^-1``, as iminuit with the Cash
statistic), and the test statistic is ``C(A = 0) - C(best)``.
"""
import math

import numpy as np
from numba import njit, prange

from gpsfast.kernels.elementary import power_law_integral, truncated

__all__ = [
    "FLAG_OK",
    "FLAG_NO_DATA",
    "FLAG_LOW_TS",
    "FLAG_AT_BOUND",
    "FLAG_NOT_CONVERGED",
    "powerlaw_integrals",
    "fit_powerlaw",
    "fit_powerlaw_map",
]

FLAG_OK = 0
"""Fit converged with enough signal."""
FLAG_NO_DATA = 1
"""No usable bin, non-finite or zero exposure or background."""
FLAG_LOW_TS = 2
"""Test statistic below the threshold (or no positive excess)."""
FLAG_AT_BOUND = 3
"""Best-fit index at a bound of the search interval."""
FLAG_NOT_CONVERGED = 4
"""Hessian not positive definite."""

_GOLDEN = 0.3819660112501051
_H_INDEX = 1e-4


@njit(cache=True, nogil=True)
def powerlaw_integrals(e_lo, e_hi, e_ref, gamma):
    """Integral of ``(E / e_ref) ** -gamma`` over each bin (same units as energies)."""
    out = np.empty(e_lo.shape[0])
    for t in range(e_lo.shape[0]):
        out[t] = power_law_integral(e_lo[t], e_hi[t], gamma, 1.0, e_ref)
    return out


@njit(cache=True, nogil=True)
def _signal(exposure, edisp, e_lo, e_hi, e_ref, gamma):
    """s_k(gamma): counts per unit amplitude in each reconstructed bin."""
    integ = powerlaw_integrals(e_lo, e_hi, e_ref, gamma)
    n_true, n_reco = edisp.shape
    s = np.zeros(n_reco)
    for t in range(n_true):
        f = exposure[t] * integ[t]
        for k in range(n_reco):
            s[k] += f * edisp[t, k]
    return s


@njit(cache=True, nogil=True)
def _cash(n, b, s, amp, use):
    total = 0.0
    for k in range(n.shape[0]):
        if use[k]:
            mu = truncated(b[k] + amp * s[k])
            total += 2.0 * (mu - n[k] * math.log(mu))
    return total


@njit(cache=True, nogil=True)
def _best_amplitude(n, b, s, use):
    """Amplitude minimising the Cash statistic at fixed signal shape ``s`` (>= 0)."""
    n_sum = 0.0
    b_sum = 0.0
    s_sum = 0.0
    for k in range(n.shape[0]):
        if use[k]:
            n_sum += n[k]
            b_sum += b[k]
            s_sum += s[k]
    if s_sum <= 0.0 or n_sum <= b_sum:
        return 0.0
    amp = (n_sum - b_sum) / s_sum
    for _ in range(100):
        g = 0.0
        h = 0.0
        for k in range(n.shape[0]):
            mu = b[k] + amp * s[k]
            if use[k] and mu > 0.0:  # a bin with mu = 0 does not depend on amp
                g += s[k] * (1.0 - n[k] / mu)
                h += n[k] * s[k] * s[k] / (mu * mu)
        if h <= 0.0:
            break
        step = g / h
        new = amp - step
        while new <= 0.0:  # stay where every mu > 0
            step *= 0.5
            new = amp - step
        if abs(new - amp) <= 1e-12 * amp:
            amp = new
            break
        amp = new
    return amp


@njit(cache=True, nogil=True)
def _profile(n, b, use, exposure, edisp, e_lo, e_hi, e_ref, gamma):
    s = _signal(exposure, edisp, e_lo, e_hi, e_ref, gamma)
    amp = _best_amplitude(n, b, s, use)
    return _cash(n, b, s, amp, use), amp


@njit(cache=True, nogil=True)
def fit_powerlaw(n, b, use, exposure, edisp, e_lo, e_hi, e_ref, gamma_min, gamma_max,
                 ts_min):
    """Fit a forward-folded power law to one spectrum.

    Parameters
    ----------
    n, b : ndarray, shape (n_reco,), float64
        Counts and background counts.
    use : ndarray, shape (n_reco,), bool
        Bins entering the statistic.
    exposure : ndarray, shape (n_true,), float64
        Exposure per true-energy bin (area x time, in units that make
        ``amplitude * exposure * energy`` counts).
    edisp : ndarray, shape (n_true, n_reco), float64
        Energy dispersion matrix (probability of each reconstructed bin).
    e_lo, e_hi : ndarray, shape (n_true,), float64
        True-energy bin edges.
    e_ref : float
        Reference energy.
    gamma_min, gamma_max : float
        Search interval of the index.
    ts_min : float
        Test statistic below which the fit is flagged `FLAG_LOW_TS`.

    Returns
    -------
    result : ndarray, shape (6,), float64
        ``amplitude, index, amplitude_err, index_err, ts, flag``.
    """
    out = np.full(6, np.nan)
    out[5] = FLAG_NO_DATA
    n_used = 0
    for k in range(n.shape[0]):
        if use[k]:
            if not (math.isfinite(n[k]) and math.isfinite(b[k])):
                return out
            n_used += 1
    for t in range(exposure.shape[0]):
        if not math.isfinite(exposure[t]) or exposure[t] < 0.0:
            return out
    if n_used == 0:
        return out
    c_null = _cash(n, b, np.zeros(n.shape[0]), 0.0, use)
    # golden-section search of the profile statistic over the index
    lo = gamma_min
    hi = gamma_max
    x1 = lo + _GOLDEN * (hi - lo)
    x2 = hi - _GOLDEN * (hi - lo)
    f1 = _profile(n, b, use, exposure, edisp, e_lo, e_hi, e_ref, x1)[0]
    f2 = _profile(n, b, use, exposure, edisp, e_lo, e_hi, e_ref, x2)[0]
    while hi - lo > 1e-7:
        if f1 <= f2:
            hi = x2
            x2 = x1
            f2 = f1
            x1 = lo + _GOLDEN * (hi - lo)
            f1 = _profile(n, b, use, exposure, edisp, e_lo, e_hi, e_ref, x1)[0]
        else:
            lo = x1
            x1 = x2
            f1 = f2
            x2 = hi - _GOLDEN * (hi - lo)
            f2 = _profile(n, b, use, exposure, edisp, e_lo, e_hi, e_ref, x2)[0]
    gamma = 0.5 * (lo + hi)
    c_best, amp = _profile(n, b, use, exposure, edisp, e_lo, e_hi, e_ref, gamma)
    ts = c_null - c_best
    out[4] = ts
    if amp <= 0.0 or not ts >= ts_min:
        out[5] = FLAG_LOW_TS
        return out
    if gamma - gamma_min < 1e-5 or gamma_max - gamma < 1e-5:
        out[5] = FLAG_AT_BOUND
        return out
    # Hessian of C in (amplitude, index)
    s = _signal(exposure, edisp, e_lo, e_hi, e_ref, gamma)
    s_up = _signal(exposure, edisp, e_lo, e_hi, e_ref, gamma + _H_INDEX)
    s_dn = _signal(exposure, edisp, e_lo, e_hi, e_ref, gamma - _H_INDEX)
    h_aa = 0.0
    h_ag = 0.0
    h_gg = 0.0
    for k in range(n.shape[0]):
        mu = b[k] + amp * s[k]
        if not use[k] or mu <= 0.0:
            continue
        d_s = (s_up[k] - s_dn[k]) / (2.0 * _H_INDEX)
        dd_s = (s_up[k] - 2.0 * s[k] + s_dn[k]) / (_H_INDEX * _H_INDEX)
        r = 1.0 - n[k] / mu
        q = n[k] / (mu * mu)
        h_aa += 2.0 * q * s[k] * s[k]
        h_ag += 2.0 * (r * d_s + q * s[k] * amp * d_s)
        h_gg += 2.0 * (r * amp * dd_s + q * amp * amp * d_s * d_s)
    det = h_aa * h_gg - h_ag * h_ag
    if not (det > 0.0 and h_aa > 0.0):
        out[5] = FLAG_NOT_CONVERGED
        return out
    out[0] = amp
    out[1] = gamma
    out[2] = math.sqrt(2.0 * h_gg / det)
    out[3] = math.sqrt(2.0 * h_aa / det)
    out[5] = FLAG_OK
    return out


@njit(cache=True, nogil=True, parallel=True)
def fit_powerlaw_map(counts, background, use, exposure, edisp, edisp_iy, edisp_ix, e_lo, e_hi,
                     e_ref, gamma_min, gamma_max, ts_min):
    """`fit_powerlaw` at every pixel of a map.

    Parameters
    ----------
    counts, background : ndarray, shape (n_reco, ny, nx), float64
        Counts and background counts (already summed in the correlation kernel).
    use : ndarray, shape (n_reco, ny, nx), bool
        Bins entering the statistic.
    exposure : ndarray, shape (n_true, ny, nx), float64
        Exposure.
    edisp : ndarray, shape (n_true, n_reco, ny_irf, nx_irf), float64
        Energy dispersion matrices on the IRF grid.
    edisp_iy, edisp_ix : ndarray, shape (ny, nx), int64
        IRF grid pixel of every map pixel.
    e_lo, e_hi, e_ref, gamma_min, gamma_max, ts_min
        As in `fit_powerlaw`.

    Returns
    -------
    result : ndarray, shape (6, ny, nx), float64
        Maps of ``amplitude, index, amplitude_err, index_err, ts, flag``.
    """
    n_reco, ny, nx = counts.shape
    out = np.empty((6, ny, nx))
    for j in prange(ny):
        for i in range(nx):
            res = fit_powerlaw(
                counts[:, j, i].copy(), background[:, j, i].copy(), use[:, j, i].copy(),
                exposure[:, j, i].copy(), edisp[:, :, edisp_iy[j, i], edisp_ix[j, i]].copy(),
                e_lo, e_hi, e_ref, gamma_min, gamma_max, ts_min,
            )
            for q in range(6):
                out[q, j, i] = res[q]
    return out
