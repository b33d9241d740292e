"""Model selection: hypotheses fitted per source, choices by likelihood ratio and AIC, extension upper limits."""
import pickle

import astropy.units as u
import numpy as np
import pytest
from astropy.coordinates import SkyCoord
from gammapy.datasets import MapDataset
from gammapy.irf import EDispKernelMap, PSFMap
from gammapy.maps import Map, MapAxis, WcsGeom
from gammapy.modeling import Fit
from gammapy.modeling.models import (
    FoVBackgroundModel,
    GaussianSpatialModel,
    GeneralizedGaussianSpatialModel,
    LogParabolaSpectralModel,
    Models,
    PointSpatialModel,
    PowerLawSpectralModel,
    ShellSpatialModel,
    SkyModel,
)
from numpy.testing import assert_allclose

from gpsfast.errors import InputError
from gpsfast.fit import fast_datasets
from gpsfast.groups import fit_groups
from gpsfast.selection.hypotheses import FixedGaussian, fixed_model
from gpsfast.selection import (
    FLAG_FIT_FAILED,
    SPATIAL_DOF,
    SelectionThresholds,
    choose_spatial,
    choose_spectral,
    hessian_errors,
    model_selection,
)

PSF_SIGMA = 0.06


def tiny_dataset(width, n_energy=4, background=5.0, exposure=1e11, binsz=0.04, name="tiny"):
    """A small MapDataset (1-100 TeV): flat exposure, E^-1.5 background, Gaussian PSF, diagonal edisp."""
    axis = MapAxis.from_energy_bounds("1 TeV", "100 TeV", nbin=n_energy, name="energy")
    axis_true = MapAxis.from_energy_bounds("0.7 TeV", "150 TeV", nbin=2 * n_energy + 2, name="energy_true")
    geom = WcsGeom.create(skydir=SkyCoord(0, 0, unit="deg", frame="galactic"), width=width, binsz=binsz,
                          frame="galactic", axes=[axis])
    dataset = MapDataset.create(geom, energy_axis_true=axis_true, name=name)
    dataset.exposure = Map.from_geom(dataset.exposure.geom, data=np.full(dataset.exposure.data.shape, exposure),
                                     unit="m2 s")
    dataset.background.data[...] = (background * axis.center.to_value("TeV") ** -1.5)[:, None, None]
    dataset.mask_safe.data[...] = True
    dataset.psf = PSFMap.from_gauss(axis_true, sigma=PSF_SIGMA * u.deg)
    dataset.edisp = EDispKernelMap.from_diagonal_response(axis, axis_true)
    return dataset


def position(lon, lat):
    return {"lon_0": lon * u.deg, "lat_0": lat * u.deg, "frame": "galactic"}


def power_law(amplitude, index=2.3):
    return PowerLawSpectralModel(index=index, amplitude=amplitude * u.Unit("cm-2 s-1 TeV-1"))


def generic(truth, r_0=0.05, offset=0.02):
    """The pipeline's seed model of a true source (GeneralizedGaussian + LogParabola with beta frozen)."""
    spatial = truth.spatial_model
    seed = GeneralizedGaussianSpatialModel(r_0=r_0 * u.deg, eta=0.5,
                                           **position(spatial.lon_0.value + offset, spatial.lat_0.value - offset))
    seed.r_0.min, seed.r_0.max = 0.015, 0.6
    spectral = LogParabolaSpectralModel(alpha=2.5, beta=0, amplitude="1e-12 cm-2 s-1 TeV-1", reference="1 TeV")
    spectral.beta.frozen = True
    return SkyModel(spatial_model=seed, spectral_model=spectral, name=truth.name)


def fast_fit(datasets, optimize_opts=None):
    return Fit(optimize_opts=optimize_opts or {"strategy": 0}).run(fast_datasets(datasets))


def simulate(width, truth, seed, n_energy=4, r_0=0.05):
    """Fake counts of ``truth`` and fit the generic models as the pipeline does (by groups)."""
    dataset = tiny_dataset(width, n_energy=n_energy)
    dataset.models = Models([*truth, FoVBackgroundModel(dataset_name=dataset.name)])
    dataset.fake(random_state=seed)
    models = Models([*(generic(m, r_0) for m in truth), FoVBackgroundModel(dataset_name=dataset.name)])
    dataset.models = models
    table = fit_groups([dataset], models, fit_function=fast_fit)
    assert table["success"].all()
    return dataset, models


@pytest.fixture(scope="module")
def point_like():
    """A power-law point source and a bright curved (log-parabola) point source, 8 energy bins."""
    truth = [
        SkyModel(spatial_model=PointSpatialModel(**position(-0.35, 0.0)), spectral_model=power_law(1e-12),
                 name="pl"),
        SkyModel(spatial_model=PointSpatialModel(**position(0.35, 0.1)),
                 spectral_model=LogParabolaSpectralModel(alpha=2.0, beta=0.5, amplitude="3e-12 cm-2 s-1 TeV-1",
                                                         reference="1 TeV"), name="curved"),
    ]
    dataset, models = simulate((1.6, 1.2), truth, seed=3, n_energy=8)
    table, selected = model_selection([dataset], models)
    return dataset, models, table, selected


@pytest.fixture(scope="module")
def extended():
    """A 0.3 deg Gaussian and a shell (0.25 deg radius, 0.06 deg wide) in one patch."""
    truth = [
        SkyModel(spatial_model=GaussianSpatialModel(sigma=0.3 * u.deg, **position(-0.7, 0.0)),
                 spectral_model=power_law(3e-12), name="gauss"),
        SkyModel(spatial_model=ShellSpatialModel(radius=0.25 * u.deg, width=0.06 * u.deg, **position(0.8, 0.05)),
                 spectral_model=power_law(3e-12), name="shell"),
    ]
    dataset, models = simulate((3.0, 1.6), truth, seed=4, r_0=0.2)
    table, selected = model_selection([dataset], models)
    return dataset, models, table, selected


def row(table, name):
    return table[list(table["name"]).index(name)]


def test_point_source_is_point_with_an_extension_upper_limit(point_like):
    _, models, table, selected = point_like
    source = row(table, "pl")
    assert source["spatial"] == "point" and source["spectral"] == "pl"
    assert source["ts_ext"] < 16 and source["ts_curv"] < 16
    assert 0.005 < source["extension_ul"] < 3 * PSF_SIGMA
    assert source["flags"] & FLAG_FIT_FAILED == 0
    assert np.isnan(source["ts_sersic"]) and np.isfinite(source["ts_gauss"])
    chosen = selected["pl"]
    assert isinstance(chosen.spatial_model, PointSpatialModel)
    assert isinstance(chosen.spectral_model, PowerLawSpectralModel)
    assert chosen.spectral_model.amplitude.error > 0
    # TS of the chosen model: the null hypothesis minus the fit (pl hypothesis of the spectral stage)
    assert_allclose(source["ts"], source["ts_pl"])
    assert models["pl"] is not chosen and isinstance(models["pl"].spatial_model, GeneralizedGaussianSpatialModel)
    assert selected["tiny-bkg"] is models["tiny-bkg"]


def test_curved_source_is_log_parabola(point_like):
    _, _, table, selected = point_like
    source = row(table, "curved")
    assert source["spatial"] == "point"
    assert source["ts_curv"] > 16 and source["spectral"] == "lp"
    assert_allclose(source["ts_curv"], max(source["ts_lp"], source["ts_ecpl"]) - source["ts_pl"])
    spectral = selected["curved"].spectral_model
    assert isinstance(spectral, LogParabolaSpectralModel)
    assert abs(spectral.beta.value - 0.5) < 3 * spectral.beta.error


def test_gaussian_is_extended_and_shell_is_shell(extended):
    _, _, table, selected = extended
    gauss, shell = row(table, "gauss"), row(table, "shell")
    assert gauss["spatial"] == "gauss" and gauss["ts_ext"] > 100 and np.isnan(gauss["extension_ul"])
    sigma = selected["gauss"].spatial_model.sigma
    assert type(selected["gauss"].spatial_model) is GaussianSpatialModel
    assert abs(sigma.value - 0.3) < 3 * sigma.error
    assert shell["spatial"] == "shell" and shell["ts_ext"] > 100
    # the shell beats every filled model by the AIC margin
    filled = max(shell[f"ts_{k}"] for k in ("gauss", "sersic", "elongated"))
    assert shell["ts_shell"] - filled > 10
    spatial = selected["shell"].spatial_model
    assert type(spatial) is ShellSpatialModel
    assert abs(spatial.radius.value + spatial.width.value - 0.31) < 0.05


def stats(source):
    """Fit statistics of the hypotheses, from a table row (stat = stat_null - TS)."""
    stat = {k: source["stat_null"] - source[f"ts_{k}"] for k in ("point", "gauss", "sersic", "shell")}
    if source["elongated"]:
        stat[source["elongated"]] = source["stat_null"] - source["ts_elongated"]
    return stat


def test_table_choices_are_the_decision_functions(point_like, extended):
    for table in (point_like[2], extended[2]):
        for source in table:
            assert choose_spatial(stats(source))[0] == source["spatial"]
            spectral = {k: source["stat_null"] - source[f"ts_{k}"] for k in ("pl", "lp", "ecpl")}
            assert choose_spectral(spectral)[0] == source["spectral"]


def test_decision_thresholds_flip_at_epsilon():
    eps = 1e-6
    stat = {"point": 100.0, "gauss": 80.0, "sersic": 70.0, "shell": 60.0, "elongated_sersic": 65.0}
    assert choose_spatial(stat, SelectionThresholds(ts_ext=20 + eps))[0] == "point"
    assert choose_spatial(stat, SelectionThresholds(ts_ext=20 - eps, ts_shape=10 + eps, delta_aic=100))[0] == "gauss"
    assert choose_spatial(stat, SelectionThresholds(ts_ext=1, ts_shape=10 - eps, delta_aic=100))[0] == "sersic"
    assert choose_spatial(stat, SelectionThresholds(ts_ext=1, ts_shape=5 - eps, delta_aic=100))[0] \
        == "elongated_sersic"
    # shell vs elongated Sersic: AIC 60 + 2 * 4 vs 65 + 2 * 6, a difference of 9
    aic = stat["elongated_sersic"] + 2 * SPATIAL_DOF["elongated_sersic"] - stat["shell"] - 2 * SPATIAL_DOF["shell"]
    assert aic == 9
    assert choose_spatial(stat, SelectionThresholds(ts_ext=1, ts_shape=1, delta_aic=9 - eps))[0] == "shell"
    assert choose_spatial(stat, SelectionThresholds(ts_ext=1, ts_shape=1, delta_aic=9 + eps))[0] \
        == "elongated_sersic"
    spectral = {"pl": 50.0, "lp": 30.0, "ecpl": 32.0}
    assert choose_spectral(spectral, SelectionThresholds(ts_curv=20 - eps)) == ("lp", 20.0)
    assert choose_spectral(spectral, SelectionThresholds(ts_curv=20 + eps))[0] == "pl"
    chosen, ts_curv = choose_spectral({"pl": 1.0})
    assert chosen == "pl" and np.isnan(ts_curv)


def test_ts_ext_threshold_flips_the_fitted_choice(point_like):
    dataset, models, table, _ = point_like
    ts_ext = row(table, "curved")["ts_ext"]
    options = dict(names=["curved"], spatial=("point", "gauss"), spectral=("pl",), extension_ul=False)
    above, _ = model_selection([dataset], models, thresholds=SelectionThresholds(ts_ext=ts_ext + 1e-6), **options)
    below, chosen = model_selection([dataset], models, thresholds=SelectionThresholds(ts_ext=ts_ext - 1e-6),
                                    **options)
    assert_allclose([above[0]["ts_ext"], below[0]["ts_ext"]], ts_ext, atol=1e-6)
    assert above[0]["spatial"] == "point" and below[0]["spatial"] == "gauss"
    assert type(chosen["curved"].spatial_model) is GaussianSpatialModel


def test_gammapy_datasets_give_the_same_choices(point_like):
    dataset, models, table, _ = point_like
    options = dict(names=["pl"], spatial=("point", "gauss"), spectral=("pl", "lp"), extension_ul=False)
    slow, slow_models = model_selection([dataset], models, fast=False, **options)
    fast, fast_models = model_selection([dataset], models, **options)
    for name in ("ts_point", "ts_gauss", "ts_pl", "ts_lp"):
        assert_allclose(slow[0][name], fast[0][name], atol=0.05, err_msg=name)
    assert slow[0]["spatial"] == fast[0]["spatial"] == row(table, "pl")["spatial"]
    errors = [[p.error for p in m["pl"].parameters.free_parameters] for m in (slow_models, fast_models)]
    assert_allclose(errors[0], errors[1], rtol=0.02)


def test_worker_tasks_pickle(point_like):
    dataset, models, _, _ = point_like
    table, _ = model_selection([dataset], models, names=["pl"], spatial=("point", "gauss"), spectral=("pl",),
                               extension_ul=False, n_jobs=2)
    assert table[0]["spatial"] == "point"
    model = fixed_model(FixedGaussian, 0.1, 1.5, sigma=0.1 * u.deg, **position(0, 0))
    copy = pickle.loads(pickle.dumps(model))
    assert copy.bin_size == model.bin_size and copy.evaluation_radius == 1.5 * u.deg


def test_bad_inputs(point_like):
    dataset, models, _, _ = point_like
    with pytest.raises(InputError, match="no source named"):
        model_selection([dataset], models, names=["missing"])
    with pytest.raises(InputError, match="unknown hypotheses"):
        model_selection([dataset], models, spatial=("point", "gauss", "disk"))


def test_hessian_errors_match_the_fisher_information():
    dataset = tiny_dataset((1.0, 1.0))
    source = SkyModel(spatial_model=PointSpatialModel(**position(0.05, 0.0)), spectral_model=power_law(2e-12),
                      name="src")
    dataset.models = Models([source, FoVBackgroundModel(dataset_name=dataset.name)])
    dataset.fake(random_state=0)
    for par in dataset.models.parameters:
        par.frozen = par.name != "amplitude"
    Fit().run([dataset])
    amplitude = source.spectral_model.amplitude
    best = amplitude.value
    # -2 log L of a Poisson likelihood: Hessian 2 sum(n s^2 / mu^2) in the amplitude, s = npred per unit amplitude
    npred, counts = dataset.npred().data, dataset.counts.data
    unit = dataset.npred_signal().data / best
    expected = 1 / np.sqrt(np.sum(counts * unit**2 / npred**2))
    amplitude.error = 0
    hessian_errors(fast_datasets([dataset]), [amplitude])
    assert amplitude.value == best
    assert_allclose(amplitude.error, expected, rtol=2e-3)
