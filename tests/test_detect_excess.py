"""Parity of gpsfast's ExcessMapEstimator with gammapy's on the same datasets."""
import astropy.units as u
import numpy as np
import pytest
from gammapy.datasets import MapDatasetOnOff
from gammapy.estimators import ExcessMapEstimator as GammapyExcessMapEstimator
from gammapy.estimators import FluxMaps
from gammapy.maps import Map
from gammapy.stats import CashCountsStatistic

from gpsfast.detect import ExcessMapEstimator

COUNT_LIKE = {"npred", "counts"}
# gammapy's Map.convolve returns float32 maps, so its Lambert-W based errors and limits
# carry float32 rounding (~1e-4 relative near the branch point); they are checked at
# 1e-6 against the same formulas in float64 in `test_errors_float64_reference`.
FLOAT32_LIMITED = {"norm_errn", "norm_errp", "norm_ul", "norm_sensitivity"}


def _tolerance(expected, name):
    """Per-pixel absolute tolerance: gammapy's correlated maps are float32, so its
    background sum carries a rounding of ~1e-7 of the counts level."""
    level = np.abs(expected["npred"].data) + np.abs(expected["npred"].data - expected["npred_excess"].data) + 1
    if name == "npred_excess":
        return 1e-6 * level
    if name == "ts":
        return 1e-6 * (np.abs(expected["npred_excess"].data) + 1)
    if name == "sqrt_ts":
        return 1e-6 * np.sqrt(level)
    with np.errstate(invalid="ignore", divide="ignore"):
        scale = np.abs(expected["norm_err"].data / np.sqrt(np.abs(expected["npred"].data)))
    return 1e-6 * level * np.where(np.isfinite(scale), scale, 0)


def assert_same_maps(expected, actual):
    assert isinstance(actual, FluxMaps)
    assert sorted(actual.available_quantities) == sorted(expected.available_quantities)
    for name in expected.available_quantities:
        a, b = expected[name], actual[name]
        assert a.geom == b.geom, name
        assert a.unit == b.unit, name
        finite = np.isfinite(a.data)
        np.testing.assert_array_equal(np.isfinite(b.data), finite, err_msg=name)
        if name in COUNT_LIKE:
            np.testing.assert_array_equal(b.data[finite], a.data[finite], err_msg=name)
        elif name in FLOAT32_LIMITED:
            typical = np.median(np.abs(a.data[finite])) if finite.any() else 0
            np.testing.assert_allclose(b.data[finite], a.data[finite], rtol=5e-4, atol=5e-4 * typical, err_msg=name)
        elif name in {"npred_excess", "ts", "sqrt_ts", "norm"}:
            tolerance = _tolerance(expected, name)[finite]
            diff = np.abs(b.data[finite] - a.data[finite])
            assert np.all(diff <= tolerance + 1e-6 * np.abs(a.data[finite])), (name, np.max(diff - tolerance))
        else:
            np.testing.assert_allclose(b.data[finite], a.data[finite], rtol=1e-6, err_msg=name)


def dataset_without_models(dataset):
    """Copy of a dataset without models."""
    dataset = dataset.copy(name=dataset.name)
    dataset.models = None
    return dataset


@pytest.fixture(scope="module")
def postev(small_survey):
    return dataset_without_models(small_survey[0]["postev"])


@pytest.fixture(scope="module")
def subtev(small_survey):
    return dataset_without_models(small_survey[0]["subtev"])


@pytest.mark.parametrize("radius", ["0.1 deg", "0.2 deg", "0.03 deg"])
@pytest.mark.parametrize("energy_edges", [None, [1, 10, 100] * u.TeV])
def test_parity_postev(postev, radius, energy_edges):
    kwargs = dict(correlation_radius=radius, energy_edges=energy_edges, selection_optional="all")
    expected = GammapyExcessMapEstimator(**kwargs).run(postev)
    actual = ExcessMapEstimator(**kwargs).run(postev)
    assert_same_maps(expected, actual)


def test_parity_subtev_per_bin(subtev):
    edges = subtev.counts.geom.axes["energy"].edges
    kwargs = dict(correlation_radius="0.2 deg", energy_edges=edges, selection_optional=["errn-errp", "ul"])
    assert_same_maps(GammapyExcessMapEstimator(**kwargs).run(subtev), ExcessMapEstimator(**kwargs).run(subtev))


def test_parity_residual_maps(small_survey):
    """With models set, the excess is counts minus the npred of the models (residual significance)."""
    dataset = dataset_without_models(small_survey[0]["postev"])
    dataset.models = small_survey[1]
    kwargs = dict(correlation_radius="0.1 deg")
    expected = GammapyExcessMapEstimator(**kwargs).run(dataset)
    actual = ExcessMapEstimator(**kwargs).run(dataset)
    assert_same_maps(expected, actual)
    assert np.nanmax(np.abs(actual["sqrt_ts"].data)) < 6, "residuals of the true models are noise"


def test_parity_masks(postev):
    dataset = postev.copy(name="masked")
    mask_fit = Map.from_geom(dataset.counts.geom, data=np.ones(dataset.counts.data.shape, dtype=bool))
    mask_fit.data[:, 10:30, 20:45] = False
    dataset.mask_fit = mask_fit
    dataset.mask_safe.data[:3] = False
    dataset.mask_safe.data[:, :, :5] = False
    kwargs = dict(correlation_radius="0.1 deg", energy_edges=[1, 3, 100] * u.TeV, selection_optional="all")
    expected = GammapyExcessMapEstimator(**kwargs).run(dataset)
    actual = ExcessMapEstimator(**kwargs).run(dataset)
    assert_same_maps(expected, actual)
    assert np.all(np.isnan(actual["sqrt_ts"].data[:, 15, 30]))


def test_parity_single_energy_bin(small_survey):
    dataset = dataset_without_models(small_survey[0]["postev"]).slice_by_idx({"energy": slice(4, 5)}, name="one")
    kwargs = dict(correlation_radius="0.1 deg", selection_optional=["errn-errp"])
    assert_same_maps(GammapyExcessMapEstimator(**kwargs).run(dataset), ExcessMapEstimator(**kwargs).run(dataset))


def test_parity_on_off(postev):
    acceptance = Map.from_geom(postev.counts.geom, data=np.ones(postev.counts.data.shape))
    acceptance_off = acceptance * 5
    rng = np.random.default_rng(3)
    counts_off = Map.from_geom(postev.counts.geom, data=rng.poisson(5 * postev.background.data).astype(float))
    dataset = MapDatasetOnOff.from_map_dataset(
        postev, acceptance=acceptance, acceptance_off=acceptance_off, counts_off=counts_off, name="onoff"
    )
    for correlate_off in (True, False):
        kwargs = dict(correlation_radius="0.1 deg", correlate_off=correlate_off, selection_optional=["alpha"])
        expected = GammapyExcessMapEstimator(**kwargs).run(dataset)
        actual = ExcessMapEstimator(**kwargs).run(dataset)
        assert_same_maps(expected, actual)


def test_errors_float64_reference(postev):
    """errn, errp and ul equal gammapy's Cash formulas evaluated in float64 on the correlated counts."""
    kwargs = dict(correlation_radius="0.1 deg", selection_optional=["errn-errp", "ul"], n_sigma=2, n_sigma_ul=3)
    expected = GammapyExcessMapEstimator(**kwargs).run(postev)
    actual = ExcessMapEstimator(**kwargs).run(postev)
    n_on = expected["npred"].data.astype(np.float64)
    finite = np.isfinite(n_on) & (n_on > 0)
    background = n_on - actual["npred_excess"].data
    stat = CashCountsStatistic(n_on[finite], background[finite])
    scale = actual["npred_excess"].data[finite] / actual["norm"].data[finite]
    np.testing.assert_allclose(actual["norm_errn"].data[finite], stat.compute_errn(2) / scale, rtol=1e-9)
    np.testing.assert_allclose(actual["norm_errp"].data[finite], stat.compute_errp(2) / scale, rtol=1e-9)
    np.testing.assert_allclose(actual["norm_ul"].data[finite], stat.compute_upper_limit(3) / scale, rtol=1e-9)
    # the scale itself is gammapy's: norm_err = sqrt(n_on) * n_sigma / scale
    np.testing.assert_allclose(
        expected["norm_err"].data[finite], 2 * np.sqrt(n_on[finite]) / scale, rtol=1e-6
    )


def test_all_zero_dataset(postev):
    dataset = postev.copy(name="zero")
    dataset.counts.data[...] = 0
    dataset.background.data[...] = 0
    kwargs = dict(correlation_radius="0.1 deg")
    expected = GammapyExcessMapEstimator(**kwargs).run(dataset)
    actual = ExcessMapEstimator(**kwargs).run(dataset)
    assert_same_maps(expected, actual)
    assert np.all(actual["sqrt_ts"].data[np.isfinite(actual["sqrt_ts"].data)] == 0)


def test_nan_exposure_stays_local(postev):
    """NaN exposure spoils the flux only where the kernel covers it; significance is untouched."""
    dataset = postev.copy(name="nan")
    geom = dataset.exposure.geom
    ix, iy = geom.data_shape[2] // 2, geom.data_shape[1] // 2
    dataset.exposure.data[:, iy, ix] = np.nan
    result = ExcessMapEstimator(correlation_radius="0.1 deg").run(dataset)
    reference = ExcessMapEstimator(correlation_radius="0.1 deg").run(postev)
    norm = result["norm"].data[0]
    assert np.isnan(norm).sum() < 100 and np.isnan(norm).any()
    np.testing.assert_array_equal(result["sqrt_ts"].data, reference["sqrt_ts"].data)


def test_cached_exposure_recomputed_after_change(postev):
    """The exposure part is reused between calls, and recomputed when the exposure changes."""
    estimator = ExcessMapEstimator(correlation_radius="0.1 deg")
    dataset = postev.copy(name="changing")
    first = estimator.run(dataset)["norm"].data.copy()
    dataset.exposure.data *= 2
    second = estimator.run(dataset)["norm"].data
    finite = np.isfinite(first)
    np.testing.assert_allclose(second[finite], first[finite] / 2, rtol=1e-6)


def test_not_a_map_dataset(postev):
    spectrum = postev.to_spectrum_dataset(
        __import__("regions").CircleSkyRegion(postev.counts.geom.center_skydir, 0.2 * u.deg)
    )
    with pytest.raises(ValueError, match="not applicable to 1D datasets"):
        ExcessMapEstimator().run(spectrum)


@pytest.mark.parametrize("energy_edges", [None, [1, 2.2, 4.7, 10] * u.TeV])
@pytest.mark.parametrize("estimator_class", [GammapyExcessMapEstimator, ExcessMapEstimator])
def test_flux_scale_is_exposure_times_model_integral(estimator_class, energy_edges):
    """Where the kernel lies inside the map, norm = excess / sum over the grouped bins of
    exposure x integral of the spectral model (diagonal energy dispersion): an independent
    reference for the exposure part, taken from gammapy's ``estimate_exposure_reco_energy``."""
    from gammapy.datasets import MapDataset
    from gammapy.irf import EDispKernelMap
    from gammapy.maps import MapAxis, WcsGeom
    from gammapy.modeling.models import PowerLawSpectralModel

    axis = MapAxis.from_energy_edges([1, 2.2, 4.7, 10] * u.TeV, name="energy")
    axis_true = axis.copy(name="energy_true")
    geom = WcsGeom.create(npix=(31, 27), binsz=0.02, axes=[axis])
    dataset = MapDataset.create(geom, energy_axis_true=axis_true, name="flat")
    dataset.edisp = EDispKernelMap.from_diagonal_response(energy_axis=axis, energy_axis_true=axis_true)
    exposure = np.array([1.0, 2.5, 4.0]) * 1e10
    dataset.exposure.data[...] = exposure[:, None, None]
    dataset.background.data[...] = 5.0
    dataset.counts.data[...] = np.random.default_rng(5).poisson(8.0, geom.data_shape)
    dataset.mask_safe.data[...] = True
    model = PowerLawSpectralModel(index=2.5, amplitude="1e-12 cm-2 s-1 TeV-1")
    maps = estimator_class(correlation_radius="0.1 deg", spectral_model=model, energy_edges=energy_edges).run(dataset)

    integral = model.integral(axis.edges[:-1], axis.edges[1:])
    per_bin = (exposure * dataset.exposure.unit * integral).to_value("")
    scale = per_bin if energy_edges is not None else per_bin.sum(keepdims=True)
    inner = (slice(None), slice(6, -6), slice(6, -6))
    excess = maps["npred_excess"].data[inner]
    np.testing.assert_allclose(maps["norm"].data[inner] * scale[:, None, None], excess, rtol=1e-6)
    assert np.abs(excess).max() > 1
