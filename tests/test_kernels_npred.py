"""Kernels of the fast likelihood (gpsfast.kernels.npred, cash_sum_masked) against gammapy."""
import numpy as np
import pytest
from numpy.testing import assert_allclose
import astropy.units as u
from gammapy.maps import MapAxis
from gammapy.modeling.models import LogParabolaSpectralModel, PowerLawSpectralModel
from gammapy.stats.fit_statistics_jit import cash_sum_jit

from gpsfast.kernels.cash import cash_sum_masked
from gpsfast.kernels.npred import fold_energy, log_parabola_integrals, power_law_integrals


def integration_grid(edges):
    """gammapy's integrate_spectrum grid (ndecade=100), built independently of gpsfast."""
    emin, emax = edges[:-1], edges[1:]
    num = int(max(np.max(100 * np.log10(emax / emin)), 2))
    return np.geomspace(emin, emax, num=num, axis=-1)


@pytest.mark.parametrize("nbin", [1, 7, 24])
@pytest.mark.parametrize(
    "alpha, beta, reference",
    [(2.3, 0.1, 1.0), (1.5, 0.0, 3.0), (3.1, 0.4, 0.5), (2.0, -0.05, 10.0)],
)
def test_log_parabola_integrals_are_gammapy_integrals(nbin, alpha, beta, reference):
    edges = MapAxis.from_energy_bounds("0.5 TeV", "150 TeV", nbin=nbin, name="energy_true").edges
    model = LogParabolaSpectralModel(
        amplitude="3e-12 cm-2 s-1 TeV-1", reference=reference * u.TeV, alpha=alpha, beta=beta
    )
    desired = model.integral(edges[:-1], edges[1:]).to_value("cm-2 s-1")
    actual = log_parabola_integrals(integration_grid(edges.to_value("TeV")), 3e-12, reference, alpha, beta)
    assert_allclose(actual, desired, rtol=1e-12)


def test_log_parabola_integrals_zero_amplitude():
    edges = MapAxis.from_energy_bounds("1 TeV", "10 TeV", nbin=3).edges.to_value("TeV")
    assert np.all(log_parabola_integrals(integration_grid(edges), 0.0, 1.0, 2.0, 0.1) == 0)


@pytest.mark.parametrize("index", [1.0, 1.0 + 1e-9, 2.0, 2.7, -0.5])
def test_power_law_integrals_are_gammapy_integrals(index):
    edges = MapAxis.from_energy_bounds("0.3 TeV", "100 TeV", nbin=11).edges
    model = PowerLawSpectralModel(amplitude="2e-12 cm-2 s-1 TeV-1", reference="2 TeV", index=index)
    with np.errstate(divide="ignore", invalid="ignore"):  # gammapy's own index = 1 branch
        desired = model.integral(edges[:-1], edges[1:]).to_value("cm-2 s-1")
    values = edges.to_value("TeV")
    actual = power_law_integrals(values[:-1], values[1:], 2e-12, 2.0, index)
    assert_allclose(actual, desired, rtol=1e-12)


def test_fold_energy_is_matrix_product():
    rng = np.random.default_rng(3)
    weights = rng.uniform(0, 1, (9, 5))
    weights[rng.uniform(size=weights.shape) < 0.6] = 0.0
    flux = rng.uniform(0, 2, (9, 37))
    assert_allclose(fold_energy(weights, flux), weights.T @ flux, rtol=1e-13)
    assert fold_energy(np.zeros((2, 3)), flux[:2]).shape == (3, 37)


def gammapy_stat(counts, npred, mask):
    """What MapDataset.stat_sum computes: npred clipped at 0, masked, gammapy's compiled Cash."""
    npred = np.where(npred < 0, 0.0, npred)
    return cash_sum_jit(counts[mask].astype(float), npred[mask].astype(float))


def test_cash_sum_masked_is_gammapy_cash():
    rng = np.random.default_rng(5)
    npred = rng.uniform(0, 3, 5000)
    npred[:20] = 0.0  # truncated
    npred[20:30] = -1e-3  # clipped by MapDataset.npred
    npred[30:35] = 1e-30
    counts = rng.poisson(np.clip(npred, 0, None)).astype(np.int32)
    counts[:5] = 2  # counts where npred is 0
    mask = rng.uniform(size=npred.size) < 0.8
    actual = cash_sum_masked(counts, npred, mask)
    assert actual == pytest.approx(gammapy_stat(counts, npred, mask), rel=1e-13)
    assert cash_sum_masked(counts, npred, np.zeros(npred.size, bool)) == 0.0
    # NaN npred is truncated, as in gammapy
    npred[40] = np.nan
    assert cash_sum_masked(counts, npred, mask) == pytest.approx(gammapy_stat(counts, npred, mask), rel=1e-13)
