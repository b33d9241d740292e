"""Parity of gpsfast's TSMapEstimator (compiled per-pixel fit) with gammapy's on the same datasets."""
import math

import astropy.units as u
import numpy as np
import pytest
import scipy.optimize
from gammapy.datasets import Datasets, MapDataset, MapDatasetOnOff
from gammapy.estimators import FluxMaps
from gammapy.estimators import TSMapEstimator as GammapyTSMapEstimator
from gammapy.maps import Map, MapAxis, WcsGeom
from gammapy.modeling.models import GaussianSpatialModel, PowerLawSpectralModel, SkyModel

from gpsfast.detect.tsmap import TSMapEstimator
from gpsfast.kernels import tsmap as kernels

EXACT = {"niter", "success"}
ERRORS = {"norm_err", "norm_errp", "norm_errn", "norm_ul"}


def assert_same_maps(expected, actual):
    """Same quantities, geometries, units and finite pixels; values equal to rounding."""
    assert isinstance(actual, FluxMaps)
    assert sorted(actual.available_quantities) == sorted(expected.available_quantities)
    for name in expected.available_quantities + ["sqrt_ts", "flux", "flux_err"]:
        a, b = expected[name], actual[name]
        assert a.geom == b.geom, name
        assert a.unit == b.unit, name
        finite = np.isfinite(a.data)
        np.testing.assert_array_equal(np.isfinite(b.data), finite, err_msg=name)
        want, got = a.data[finite], b.data[finite]
        if name in EXACT:
            np.testing.assert_array_equal(got, want, err_msg=name)
        elif name == "sqrt_ts":
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-6, err_msg=name)
        elif name == "ts":
            np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9, err_msg=name)
        else:
            typical = np.median(np.abs(want)) if want.size else 0.0
            rtol = 1e-8 if name in ERRORS else 1e-9
            np.testing.assert_allclose(got, want, rtol=rtol, atol=1e-12 * typical, err_msg=name)


@pytest.fixture(scope="module")
def postev(postev_patch):
    """1.5 x 1 deg PosTeV patch (20 energy bins) with only its background model."""
    datasets, _ = postev_patch()
    dataset = datasets["postev"]
    dataset.models = [model for model in dataset.models if model.name == "postev-bkg"]
    return dataset


@pytest.fixture(scope="module")
def degraded(postev):
    """The patch with a masked box, energy-dependent mask, NaN and zero exposure regions."""
    dataset = postev.copy(name="degraded")
    geom = dataset.counts.geom
    outside_box = geom.to_image().region_mask("galactic;box(0.2,0.1,0.3,0.2)", inside=False)
    data = geom.energy_mask(energy_min=1.5 * u.TeV).data & outside_box.data[np.newaxis]
    dataset.mask_fit = Map.from_geom(geom, data=data, dtype=bool)
    exposure = dataset.exposure.data.copy()
    exposure[:, :6, :8] = np.nan
    exposure[:, -5:, -10:] = 0
    exposure[:5, :, 20:25] = 0
    dataset.exposure.data = exposure
    return dataset


def run_both(dataset, **kwargs):
    expected = GammapyTSMapEstimator(**kwargs).run(dataset)
    actual = TSMapEstimator(**kwargs).run(dataset)
    return expected, actual


def test_point_kernel(postev):
    expected, actual = run_both(postev)
    assert_same_maps(expected, actual)
    assert np.nanmax(np.abs(expected["sqrt_ts"].data)) > 1


def test_gaussian_kernel_errors_and_upper_limits(postev):
    kernel_model = SkyModel(
        spatial_model=GaussianSpatialModel(sigma="0.1 deg"), spectral_model=PowerLawSpectralModel(index=2.3), name="g"
    )
    expected, actual = run_both(
        postev,
        kernel_model=kernel_model,
        kernel_width="0.6 deg",
        energy_edges=[1, 10, 100] * u.TeV,
        selection_optional=["errn-errp", "ul"],
    )
    assert_same_maps(expected, actual)
    # the sparse 10-100 TeV bin has positions with a single count, whose root lies on a bracket bound
    assert not expected["success"].data.all()


@pytest.mark.parametrize("sum_over_energy_groups", [True, False])
def test_masks_nan_and_zero_exposure(degraded, sum_over_energy_groups):
    expected, actual = run_both(degraded, sum_over_energy_groups=sum_over_energy_groups)
    assert_same_maps(expected, actual)
    assert not np.isfinite(expected["sqrt_ts"].data).all()


def test_single_energy_bin(postev):
    dataset = postev.slice_by_idx({"energy": slice(5, 6)}, name="one-bin")
    expected, actual = run_both(dataset, selection_optional=["ul"], n_sigma_ul=3)
    assert_same_maps(expected, actual)


def test_threshold_and_tolerances(postev):
    expected, actual = run_both(postev, threshold=2.0, rtol=1e-4, n_sigma=2)
    assert_same_maps(expected, actual)
    assert (expected["niter"].data == 0).any()


def test_two_datasets(postev, degraded):
    datasets = Datasets([postev.copy(name="a"), degraded.copy(name="b")])
    expected, actual = run_both(datasets)
    assert_same_maps(expected, actual)


def test_repeated_runs_and_kernel_cache(postev):
    estimator = TSMapEstimator()
    first = estimator.run(postev)
    second = estimator.run(postev)
    assert_same_maps(first, second)
    estimator.kernel_model = SkyModel(
        spatial_model=GaussianSpatialModel(sigma="0.05 deg"), spectral_model=PowerLawSpectralModel()
    )
    reference = GammapyTSMapEstimator(kernel_model=estimator.kernel_model, kernel_width=estimator.kernel_width)
    np.testing.assert_array_equal(estimator.estimate_kernel(postev).data, reference.estimate_kernel(postev).data)


GAUSSIAN = SkyModel(spatial_model=GaussianSpatialModel(sigma="0.08 deg"), spectral_model=PowerLawSpectralModel())
TINY = {"kernel_model": GAUSSIAN, "kernel_width": "0.3 deg"}


@pytest.fixture(scope="module")
def tiny():
    """A 15 x 13 pixel dataset without PSF and flat background, built with MapDataset.create and fake."""
    axis = MapAxis.from_energy_bounds("1 TeV", "10 TeV", nbin=2)
    geom = WcsGeom.create(npix=(15, 13), binsz=0.05, axes=[axis], frame="galactic")
    dataset = MapDataset.create(geom, name="tiny")
    dataset.psf = None
    dataset.mask_safe.data[...] = True
    dataset.exposure.data += 1e11
    dataset.background.data += 0.3
    dataset.fake(random_state=1)
    return dataset


def test_not_accelerated_options_use_gammapy(tiny, monkeypatch):
    def fail(*args):
        raise AssertionError("the compiled kernel must not run")

    monkeypatch.setattr("gpsfast.detect.tsmap.ts_map", fail)
    estimator = TSMapEstimator(selection_optional=["sensitivity"], **TINY)
    assert not estimator._accelerated
    expected = GammapyTSMapEstimator(selection_optional=["sensitivity"], **TINY).run(tiny)
    assert_same_maps(expected, estimator.run(tiny))


def test_flat_background_ties(tiny):
    """Flat background and exposure: many elements share a background-to-model ratio."""
    expected, actual = run_both(tiny, selection_optional=["errn-errp"], **TINY)
    assert_same_maps(expected, actual)


def test_no_valid_position_is_an_error(tiny):
    dataset = tiny.copy(name="masked")
    dataset.mask_safe = Map.from_geom(dataset.counts.geom, data=False, dtype=bool)
    with pytest.raises(ValueError, match="No valid positions"):
        TSMapEstimator(**TINY).run(dataset)


@pytest.mark.parametrize("broken", ["no background", "zero background", "empty mask_safe", "zero exposure"])
def test_invalid_input_as_gammapy(tiny, broken):
    """gammapy's ``test_compute_ts_map_invalid`` and ``_with_hole`` cases (they need $GAMMAPY_DATA
    there): the same error type, from both estimators."""
    dataset = tiny.copy(name="broken")
    if broken == "no background":
        dataset.background = None
    elif broken == "zero background":
        dataset.background.data = 0
    elif broken == "empty mask_safe":
        dataset.mask_safe = Map.from_geom(dataset.counts.geom, dtype=bool)
    else:
        dataset.exposure.data[...] = 0
    errors = []
    for estimator in (GammapyTSMapEstimator(**TINY), TSMapEstimator(**TINY)):
        with pytest.raises(ValueError) as error:
            estimator.run(dataset)
        errors.append(str(error.value).split()[:3])
    assert errors[0] == errors[1]


def test_zero_kernel_as_gammapy(tiny):
    """A kernel model of zero brightness (gammapy's ``test_compute_ts_map_invalid``): TS is 0 everywhere."""
    from gammapy.modeling.models import ConstantSpatialModel

    kernel_model = SkyModel(
        spatial_model=ConstantSpatialModel(value=0 / u.sr),
        spectral_model=PowerLawSpectralModel(amplitude="1e-22 cm-2 s-1 keV-1"),
    )
    kwargs = dict(kernel_model=kernel_model, kernel_width="0.3 deg", sum_over_energy_groups=False)
    expected, actual = run_both(tiny, **kwargs)
    assert_same_maps(expected, actual)
    np.testing.assert_array_equal(actual["ts"].data, 0)


def test_wstat_dataset_is_rejected(tiny):
    dataset = MapDatasetOnOff.from_map_dataset(
        tiny, acceptance=1, acceptance_off=2, counts_off=tiny.counts.copy(), name="onoff"
    )
    with pytest.raises(TypeError, match="not a valid type"):
        TSMapEstimator(**TINY).run(dataset)


def test_log_into_within_two_ulp():
    rng = np.random.default_rng(0)
    values = np.concatenate([10 ** rng.uniform(-25, 12, 20000), rng.uniform(0.5, 2.0, 20000), [1.0, 2.0, np.inf]])
    out = np.empty_like(values)
    kernels.log_into(values, out, np.empty_like(values), values.size)
    expected = np.array([math.log(v) for v in values])
    finite = np.isfinite(expected)
    assert out[-1] == np.inf
    ulp = np.abs(out[finite] - expected[finite]) / np.spacing(np.abs(expected[finite]))
    assert ulp.max() <= 2


def _workspace(c, b, m):
    """Workspace and sums of `gpsfast.kernels.tsmap` for one set of fit elements (all with model > 0)."""
    ws = np.zeros((kernels._WS_ROWS, c.size))
    counted = c > 0
    n_p, n_q = counted.sum(), (~counted).sum()
    ws[kernels._PC, :n_p], ws[kernels._PB, :n_p], ws[kernels._PM, :n_p] = c[counted], b[counted], m[counted]
    ws[kernels._QB, :n_q], ws[kernels._QM, :n_q] = b[~counted], m[~counted]
    ws[kernels._PI, :n_p] = np.nonzero(counted)[0]
    ws[kernels._QI, :n_q] = np.nonzero(~counted)[0]
    consts = [0.0] * 11
    consts[kernels._S_FREE] = m[~counted].sum()
    return ws, (int(n_p), int(n_q)), tuple(consts)


@pytest.mark.parametrize("rtol", [0.01, 1e-6])
def test_brentq_follows_scipy(rtol):
    """Same root and iteration count as scipy.optimize.brentq on the Cash derivative."""
    rng = np.random.default_rng(5)
    for _ in range(50):
        c = rng.poisson(1.0, size=200).astype(float)
        b = rng.uniform(0.2, 2.0, size=200)
        m = rng.uniform(1e-3, 0.5, size=200)
        ws, sizes, consts = _workspace(c, b, m)

        def derivative(x):
            return 2 * np.sum(np.where(c > 0, m * (1 - c / (x * m + b)), m))

        ratio = b / m
        lo = c[c > 0][np.argmin(ratio[c > 0])] / m.sum() - ratio[c > 0].min()
        hi = c.sum() / m.sum() - ratio[c > 0].min()
        root, result = scipy.optimize.brentq(derivative, lo, hi, rtol=rtol, full_output=True)
        got, iterations, status = kernels.brentq(kernels._ROOT, lo, hi, rtol, 100, 0.0, ws, sizes, consts)
        assert status == 0
        assert iterations == result.iterations
        assert got == pytest.approx(root, rel=1e-12)


def test_brentq_failures():
    c = np.array([3.0, 0.0, 1.0])
    b = np.array([1.0, 1.0, 0.5])
    m = np.array([0.2, 0.1, 0.3])
    ws, sizes, consts = _workspace(c, b, m)
    # no sign change
    assert kernels.brentq(kernels._ROOT, 50.0, 60.0, 0.01, 100, 0.0, ws, sizes, consts)[2] == 1
    # not converged within max_niter
    assert kernels.brentq(kernels._ROOT, -1.0, 60.0, 1e-12, 1, 0.0, ws, sizes, consts)[2] == 2
