"""Flux points: parity with gammapy's FluxPointsEstimator and Fit, joint norms of overlapping sources, edge cases."""
import astropy.units as u
import numpy as np
import pytest
from astropy.coordinates import SkyCoord
from gammapy.datasets import MapDataset
from gammapy.estimators import FluxPoints, FluxPointsEstimator
from gammapy.irf import EDispKernelMap, PSFMap
from gammapy.maps import Map, MapAxis, WcsGeom
from gammapy.modeling import Fit
from gammapy.modeling.models import (
    FoVBackgroundModel,
    Models,
    PointSpatialModel,
    PowerLawSpectralModel,
    SkyModel,
)

from gpsfast.errors import InputError
from gpsfast.fluxpoints import flux_points, group_flux_points
from gpsfast.groups import make_groups
from gpsfast.kernels.cash import cash_sum_masked
from gpsfast.kernels.normfit import fit_norms, saturated_stat

ENERGY = MapAxis.from_energy_bounds("0.5 TeV", "50 TeV", nbin=6, name="energy")
ENERGY_TRUE = MapAxis.from_energy_bounds("0.3 TeV", "80 TeV", nbin=10, name="energy_true")
REGULAR = [1, 2, 3, 4]  # bins with counts; bin 0 is below the safe threshold, bin 5 has no counts


def _source(name, lon, amplitude=2e-12, index=2.5):
    return SkyModel(
        spectral_model=PowerLawSpectralModel(index=index, amplitude=amplitude * u.Unit("cm-2 s-1 TeV-1")),
        spatial_model=PointSpatialModel(lon_0=lon * u.deg, lat_0=0 * u.deg, frame="galactic"),
        name=name,
    )


def _dataset(name="d1", energy=ENERGY, sources=(), seed=1, background=0.05, top_background=0.0):
    """A 0.8 x 0.8 deg MapDataset; counts faked from ``sources``, then edited as the docstrings of the tests say."""
    geom = WcsGeom.create(skydir=SkyCoord(0, 0, unit="deg", frame="galactic"), width=(0.8, 0.8), binsz=0.05,
                          axes=[energy])
    dataset = MapDataset.create(geom, energy_axis_true=ENERGY_TRUE, name=name)
    dataset.exposure.data += 1e11
    dataset.background.data += background
    dataset.background.data[-1] = top_background
    dataset.mask_safe = Map.from_geom(geom, data=np.ones(geom.data_shape, dtype=bool))
    dataset.psf = PSFMap.from_gauss(ENERGY_TRUE, sigma="0.08 deg")
    dataset.edisp = EDispKernelMap.from_gauss(energy, ENERGY_TRUE, sigma=0.1, bias=0, geom=geom.to_image())
    models = Models([*sources, FoVBackgroundModel(dataset_name=name)])
    dataset.models = models
    dataset.fake(random_state=seed)
    # a fresh dataset (no cached npred), the counts kept
    faked = dataset.copy(name=name)
    faked.models = models
    return faked


@pytest.fixture(scope="module")
def isolated():
    """One source, bin 0 below the safe threshold, NaN and zero exposure stripes, no counts and no background
    in the top bin (frozen other sources: `pair`)."""
    sources = [_source("src", 0.1)]
    dataset = _dataset(sources=sources)
    dataset.mask_safe.data[0] = False
    dataset.counts.data[-1] = 0
    dataset.exposure.data[:, :2, :] = np.nan
    dataset.exposure.data[:, :, :2] = 0
    dataset = dataset.copy(name="d1")
    dataset.models = Models([*sources, FoVBackgroundModel(dataset_name="d1")])
    ours = group_flux_points([dataset], sources="src", energy_edges=ENERGY.edges)["src"]
    estimator = FluxPointsEstimator(energy_edges=ENERGY.edges, source="src",
                                    selection_optional=["errn-errp", "ul", "scan"])
    return dataset, ours, estimator.run([dataset])


def _column(points, name):
    return np.asarray(points.to_table(sed_type="likelihood")[name], dtype=float)


def test_isolated_source_matches_gammapy(isolated):
    _, ours, ref = isolated
    assert isinstance(ours, FluxPoints)
    assert ours.sed_type_init == "likelihood"
    mine, theirs = ours.to_table(sed_type="likelihood"), ref.to_table(sed_type="likelihood")
    assert mine.colnames == theirs.colnames
    for name in ("e_min", "e_max", "e_ref", "ref_dnde", "ref_flux", "ref_eflux"):
        np.testing.assert_allclose(mine[name], theirs[name], rtol=1e-12)
    np.testing.assert_array_equal(mine["counts"], theirs["counts"])
    np.testing.assert_array_equal(mine["success"], theirs["success"])
    rows = REGULAR
    np.testing.assert_allclose(_column(ours, "norm")[rows], _column(ref, "norm")[rows], rtol=1e-3)
    for name in ("norm_err", "norm_errn", "norm_errp", "norm_ul"):
        np.testing.assert_allclose(_column(ours, name)[rows], _column(ref, name)[rows], rtol=1e-2, err_msg=name)
    for name in ("ts", "stat", "stat_null"):
        np.testing.assert_allclose(_column(ours, name)[rows], _column(ref, name)[rows], rtol=1e-5, atol=1e-3,
                                   err_msg=name)
    np.testing.assert_allclose(_column(ours, "npred")[rows], _column(ref, "npred")[rows], rtol=1e-3)
    np.testing.assert_allclose(_column(ours, "npred_excess")[rows], _column(ref, "npred_excess")[rows], rtol=1e-3)
    np.testing.assert_allclose(mine["stat_scan"][rows], theirs["stat_scan"][rows], rtol=1e-6, atol=1e-3)
    assert ours.reference_model.spectral_model.index.value == pytest.approx(2.5)


def test_bin_below_safe_threshold_as_gammapy(isolated):
    _, ours, ref = isolated
    for name in ("norm", "norm_err", "ts", "norm_ul"):
        assert np.isnan(_column(ours, name)[0]) and np.isnan(_column(ref, name)[0]), name
    assert _column(ours, "counts")[0] == 0 and not _column(ours, "success")[0]


def test_bin_without_counts_or_background_as_gammapy(isolated):
    """No counts and no background: the profile is linear above norm 0; same upper limit and TS as gammapy."""
    _, ours, ref = isolated
    assert _column(ours, "counts")[-1] == 0
    assert _column(ours, "norm")[-1] == 0.0
    assert _column(ours, "norm_ul")[-1] == pytest.approx(_column(ref, "norm_ul")[-1], rel=1e-2)
    assert _column(ours, "ts")[-1] == pytest.approx(_column(ref, "ts")[-1], abs=1e-6)


def test_bin_without_counts_with_background_analytic():
    """No counts, background: the norm where the first pixel's prediction reaches zero, the upper limit
    where the (linear) statistic 2 sum(mu) rises by n_sigma_ul**2."""
    source = _source("src", 0.1)
    dataset = _dataset(sources=[source], top_background=0.05)
    dataset.counts.data[-1] = 0
    top = ENERGY.edges[-2:]
    points = group_flux_points(dataset, energy_edges=top, n_sigma_ul=2)["src"]
    sliced = dataset.slice_by_energy(*top)
    sliced.models = dataset.models
    signal = sliced.npred_signal(model_names=["src"]).data.astype(float)
    background = sliced.npred_background().data.astype(float)
    reached = signal > 0
    expected = -np.min(background[reached] / signal[reached])
    assert _column(points, "norm")[0] == pytest.approx(expected, rel=1e-9)
    assert _column(points, "norm_ul")[0] == pytest.approx(expected + 4 / (2 * signal.sum()), rel=1e-6)
    assert np.isnan(_column(points, "norm_err")[0]) and np.isnan(_column(points, "norm_errn")[0])


def test_single_bin_matches_gammapy(isolated):
    dataset = isolated[0]
    edges = [1, 20] * u.TeV
    ours = group_flux_points(dataset, sources="src", energy_edges=edges, selection_optional=["ul"])["src"]
    ref = FluxPointsEstimator(energy_edges=edges, source="src", selection_optional=["ul"]).run([dataset])
    assert _column(ours, "e_min")[0] == pytest.approx(_column(ref, "e_min")[0])
    assert _column(ours, "norm")[0] == pytest.approx(_column(ref, "norm")[0], rel=1e-3)
    for name in ("norm_err", "norm_ul"):
        assert _column(ours, name)[0] == pytest.approx(_column(ref, name)[0], rel=1e-2)
    assert "norm_errn" not in ours.to_table(sed_type="likelihood").colnames


@pytest.fixture(scope="module")
def pair():
    """Two point sources 0.06 deg apart (PSF sigma 0.08 deg) and an isolated one 0.3 deg away."""
    sources = [_source("a", 0.03), _source("b", -0.03, amplitude=1.2e-12, index=2.2),
               _source("c", 0.3, amplitude=1e-12)]
    dataset = _dataset(sources=sources, seed=3)
    for model in sources:
        model.spectral_model.amplitude.value *= 1.3  # the reference models differ from the truth
    return dataset


def _gammapy_joint_fit(dataset, energy_min, energy_max, null=None):
    """gammapy Fit of the amplitudes of a and b in one bin, all else frozen: norms, errors, stat."""
    sliced = dataset.slice_by_energy(energy_min, energy_max, name=dataset.name)
    models = dataset.models.copy()
    sliced.models = models
    for par in models.parameters:
        par.frozen = True
    reference = {}
    for name in ("a", "b"):
        amplitude = models[name].spectral_model.amplitude
        reference[name] = amplitude.value
        amplitude.frozen = name == null
        if name == null:
            amplitude.value = 0.0
    result = Fit().run([sliced])
    norms = {n: models[n].spectral_model.amplitude.value / reference[n] for n in ("a", "b")}
    errors = {n: models[n].spectral_model.amplitude.error / reference[n] for n in ("a", "b")}
    return norms, errors, result.total_stat


def test_overlapping_sources_joint_norms_match_gammapy_fit(pair):
    edges = ENERGY.edges[1:4]
    points = group_flux_points(pair, sources=["a", "b"], energy_edges=edges)
    assert list(points) == ["a", "b"]
    for index, (energy_min, energy_max) in enumerate(zip(edges[:-1], edges[1:])):
        norms, errors, stat = _gammapy_joint_fit(pair, energy_min, energy_max)
        for name in ("a", "b"):
            assert _column(points[name], "norm")[index] == pytest.approx(norms[name], rel=1e-3)
            assert _column(points[name], "norm_err")[index] == pytest.approx(errors[name], rel=1e-2)
            assert _column(points[name], "stat")[index] == pytest.approx(stat, abs=1e-3)
        # ts of a: the profile at norm_a = 0, b refitted
        _, _, null_stat = _gammapy_joint_fit(pair, energy_min, energy_max, null="a")
        assert _column(points["a"], "ts")[index] == pytest.approx(null_stat - stat, rel=1e-4, abs=1e-3)


def test_overlapping_sources_are_correlated(pair):
    """Fitting a alone (b frozen at its reference) gives a different norm and a smaller error than jointly."""
    edges = ENERGY.edges[1:3]
    joint = group_flux_points(pair, sources=["a", "b"], energy_edges=edges)["a"]
    alone = group_flux_points(pair, sources=["a"], energy_edges=edges)["a"]
    assert _column(alone, "norm_err")[0] < 0.9 * _column(joint, "norm_err")[0]
    assert _column(alone, "norm")[0] != pytest.approx(_column(joint, "norm")[0], rel=1e-3)


def test_every_source_by_groups(pair):
    """`flux_points` fits each group of `make_groups` jointly, the other sources fixed: as group_flux_points."""
    groups = make_groups(pair.models)
    assert sorted(sorted(g.names) for g in groups) == [["a", "b"], ["c"]]
    edges = ENERGY.edges[1:4]
    every = flux_points([pair], energy_edges=edges)
    assert sorted(every) == ["a", "b", "c"]
    pairs = group_flux_points(pair, sources=["a", "b"], energy_edges=edges)
    single = group_flux_points(pair, sources=["c"], energy_edges=edges)
    for name, reference in [("a", pairs["a"]), ("b", pairs["b"]), ("c", single["c"])]:
        for column in ("norm", "norm_errp", "ts", "norm_ul"):
            np.testing.assert_allclose(_column(every[name], column), _column(reference, column), rtol=1e-6)


def test_datasets_with_disjoint_energy_ranges():
    """SubTeV- and PosTeV-like datasets: each bin fitted on the datasets that cover it (gammapy's estimator
    fails there); counts 0 and npred NaN for the other one."""
    low = MapAxis.from_energy_bounds("0.5 TeV", "5 TeV", nbin=4, name="energy")
    high = MapAxis.from_energy_bounds("5 TeV", "50 TeV", nbin=4, name="energy")
    sources = [_source("src", 0.1)]
    datasets = [_dataset("low", low, sources, seed=4), _dataset("high", high, sources, seed=5)]
    models = Models([*sources, *(FoVBackgroundModel(dataset_name=d.name) for d in datasets)])
    for dataset in datasets:
        dataset.models = models
    edges = [0.5, 5, 50] * u.TeV
    joint = group_flux_points(datasets, energy_edges=edges)["src"]
    counts = joint.counts.data.squeeze()
    assert counts.shape == (2, 2) and np.all(counts[[0, 1], [1, 0]] == 0)
    npred = joint.npred.data.squeeze()
    assert np.isnan(npred[0, 1]) and np.isnan(npred[1, 0])
    for index, dataset in enumerate(datasets):
        alone = group_flux_points(dataset, energy_edges=edges[index:index + 2])["src"]
        assert _column(joint, "norm")[index] == pytest.approx(_column(alone, "norm")[0], rel=1e-9)


def test_flux_points_are_gammapy_objects(isolated, tmp_path):
    points = isolated[1]
    table = points.to_table(sed_type="dnde")
    assert table["dnde"].unit == u.Unit("cm-2 s-1 TeV-1")
    path = tmp_path / "src_fp.fits"
    points.write(path)
    read = FluxPoints.read(path, reference_model=points.reference_model)
    np.testing.assert_allclose(read.norm.data.squeeze(), points.norm.data.squeeze(), rtol=1e-6)


def test_kernel_statistic_is_gammapys_cash():
    """The kernel's deviance plus the saturated statistic is gammapy's clipped, truncated Cash sum, also for
    negative norms that drive predictions below zero."""
    rng = np.random.default_rng(1)
    signal = rng.uniform(0, 2, size=(400, 3)) * (rng.uniform(size=(400, 3)) > 0.3)
    fixed = rng.uniform(0, 0.5, size=400)
    counts = rng.poisson(fixed + signal.sum(axis=1)).astype(float)
    for norms in ([1.0, 0.5, 2.0], [-0.2, 1.0, 1.0], [-3.0, -2.0, 0.5]):
        norms = np.array(norms)
        deviance, _ = fit_norms(counts, fixed, signal, norms.copy(), np.zeros(3, bool))
        mu = np.clip(fixed + signal @ norms, 0, None)
        expected = cash_sum_masked(counts, mu, np.ones(400, bool))
        assert deviance + saturated_stat(counts) == pytest.approx(expected, rel=1e-12, abs=1e-9)


def test_kernel_fit_is_the_minimum():
    """fit_norms lands where the gradient of the Poisson likelihood vanishes (independent numpy gradient)."""
    rng = np.random.default_rng(2)
    signal = rng.uniform(0, 1, size=(300, 2))
    fixed = np.full(300, 0.2)
    counts = rng.poisson(fixed + signal @ [3.0, 1.0]).astype(float)
    norms = np.ones(2)
    _, converged = fit_norms(counts, fixed, signal, norms, np.ones(2, bool))
    mu = fixed + signal @ norms
    gradient = 2 * signal.T @ (1 - counts / mu)
    assert converged and np.all(np.abs(gradient) < 1e-6)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"sources": "nope"}, "no model named"),
        ({"energy_edges": [10, 1] * u.TeV}, "increasing"),
        ({"energy_edges": [1] * u.TeV}, "at least two"),
        ({"n_sigma_ul": 0}, "n_sigma_ul must be positive"),
        ({"selection_optional": ["sensitivity"]}, "unknown optional"),
    ],
)
def test_bad_input(isolated, kwargs, message):
    with pytest.raises(InputError, match=message):
        group_flux_points(isolated[0], **kwargs)
