"""Spectral integrals per energy bin, as gammapy computes them for ``MapEvaluator``.

- `power_law_integrals`: gammapy's analytic ``PowerLawSpectralModel.evaluate_integral``;
- `log_parabola_integrals`: gammapy's ``integrate_spectrum`` of a
  ``LogParabolaSpectralModel`` (no analytic integral there): the model on a
  log-spaced grid in every bin, integrated with the log-log trapezoidal rule
  (``trapz_loglog``: a power law through each pair of grid points).

Energies and parameters are plain numbers in consistent units (energies and
``reference`` in one unit); the integrals are in amplitude times energy units.
"""
import math

import numpy as np
from numba import njit

from gpsfast.kernels.elementary import power_law_integral

__all__ = ["fold_energy", "log_parabola_integrals", "power_law_integrals"]

_TINY = np.finfo(np.float64).tiny


@njit(cache=True, nogil=True, error_model="numpy")
def power_law_integrals(energy_min, energy_max, amplitude, reference, index):
    """Integral of a power law over each energy bin.

    Parameters
    ----------
    energy_min, energy_max : ndarray, float64, shape (n,)
        Bin edges.
    amplitude, reference, index : float
        ``dN/dE = amplitude (E / reference) ** -index``.

    Returns
    -------
    integrals : ndarray, float64, shape (n,)
    """
    n = energy_min.size
    out = np.empty(n)
    for i in range(n):
        out[i] = power_law_integral(energy_min[i], energy_max[i], index, amplitude, reference)
    return out


@njit(cache=True, nogil=True, error_model="numpy")
def _log_log_ratio(a, b):
    """gammapy's ``LogScale`` of a ratio: log of the ratio clipped at the smallest float."""
    ratio = a / b
    if not ratio >= _TINY:
        if ratio != ratio:
            return ratio
        ratio = _TINY
    return math.log(ratio)


@njit(cache=True, nogil=True, error_model="numpy")
def log_parabola_integrals(energy, amplitude, reference, alpha, beta):
    """Integral of a log parabola over each energy bin, as gammapy's ``integrate_spectrum``.

    Parameters
    ----------
    energy : ndarray, float64, shape (n, num)
        Integration grid of each bin (``np.geomspace`` of its edges with gammapy's
        number of points).
    amplitude, reference, alpha, beta : float
        ``dN/dE = amplitude x ** (-alpha - beta ln x)``, ``x = E / reference``.

    Returns
    -------
    integrals : ndarray, float64, shape (n,)
    """
    n, num = energy.shape
    out = np.zeros(n)
    values = np.empty(num)
    for i in range(n):
        for k in range(num):
            xx = energy[i, k] / reference
            values[k] = amplitude * xx ** (-alpha - beta * math.log(xx))
        total = 0.0
        for k in range(num - 1):
            e0 = energy[i, k]
            e1 = energy[i, k + 1]
            index = -_log_log_ratio(values[k], values[k + 1]) / _log_log_ratio(e0, e1)
            if index != index:
                index = np.inf
            total += power_law_integral(e0, e1, index, values[k], e0)
        out[i] = total
    return out


@njit(cache=True, nogil=True, error_model="numpy")
def fold_energy(weights, flux_exposure):
    """Predicted counts per reconstructed energy: ``weights.T @ flux_exposure``, zero weights skipped.

    Parameters
    ----------
    weights : ndarray, float64, shape (n_true, n_reco)
        Spectral integral per true-energy bin times the energy dispersion matrix.
    flux_exposure : ndarray, float64, shape (n_true, n_pixels)
        Spatial integral times exposure (finite values: a skipped zero weight
        stands for ``0 * value``).

    Returns
    -------
    npred : ndarray, float64, shape (n_reco, n_pixels)
    """
    n_true, n_reco = weights.shape
    n_pixels = flux_exposure.shape[1]
    out = np.zeros((n_reco, n_pixels))
    for t in range(n_true):
        for r in range(n_reco):
            w = weights[t, r]
            if w == 0.0:
                continue
            for p in range(n_pixels):
                out[r, p] += w * flux_exposure[t, p]
    return out
