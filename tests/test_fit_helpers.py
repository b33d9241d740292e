"""Model-management helpers (gpsfast.modeling: frozen, select_models, release_shape, cache_outer_sources), the fast
IRF maps (gpsfast.irf) and npred_signal (gpsfast.evaluate)."""
import copy

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal
import astropy.units as u
from astropy.coordinates import SkyCoord
from regions import CircleSkyRegion, RectangleSkyRegion
from gammapy.maps import Map, MapAxis, WcsGeom
from gammapy.modeling.models import (
    FoVBackgroundModel,
    GaussianSpatialModel,
    GeneralizedGaussianSpatialModel,
    LogParabolaSpectralModel,
    Models,
    PointSpatialModel,
    PowerLawSpectralModel,
    SkyModel,
    TemplateNPredModel,
)

from gpsfast.errors import InputError
from gpsfast.evaluate import npred_signal
from gpsfast.irf import FastEDispKernelMap, FastPSFMap, fast_irfs
from gpsfast.modeling import cache_outer_sources, frozen, main_source, release_shape, select_models


def make_group():
    """Three sources in galactic coordinates, one in icrs, and a background model."""
    models = Models(
        [
            SkyModel(
                LogParabolaSpectralModel(amplitude="1e-12 cm-2 s-1 TeV-1", alpha=2.3, beta=0.1),
                GeneralizedGaussianSpatialModel(lon_0="320.2 deg", lat_0="0.1 deg", r_0="0.2 deg", frame="galactic"),
                name="src-a",
            ),
            SkyModel(
                LogParabolaSpectralModel(amplitude="5e-12 cm-2 s-1 TeV-1", alpha=2.5, beta=0.05),
                GeneralizedGaussianSpatialModel(lon_0="321.5 deg", lat_0="-0.4 deg", r_0="0.1 deg", frame="galactic"),
                name="src-b",
            ),
            SkyModel(
                PowerLawSpectralModel(amplitude="2e-12 cm-2 s-1 TeV-1"),
                PointSpatialModel(lon_0="318.3 deg", lat_0="0.0 deg", frame="galactic"),
                name="src-c",
            ),
            SkyModel(
                PowerLawSpectralModel(amplitude="1e-13 cm-2 s-1 TeV-1"),
                GaussianSpatialModel(lon_0="229.6 deg", lat_0="-59.1 deg", sigma="0.1 deg", frame="icrs"),
                name="src-icrs",
            ),
            FoVBackgroundModel(dataset_name="ds"),
        ]
    )
    # a non-default state: some free shape parameters, a frozen index
    models["src-a"].spatial_model.e.frozen = False
    models["src-b"].spectral_model.beta.frozen = True
    return models


def snapshot(models):
    return [(par.name, par.frozen, par.value, par.error) for par in models.parameters]


def test_frozen_freezes_all_but_kept_model_and_restores():
    models = make_group()
    before = snapshot(models)
    with frozen(models, keep="src-b") as free:
        for model in models:
            for par in model.parameters:
                if model.name != "src-b":
                    assert par.frozen, (model.name, par.name)
        kept = models["src-b"].parameters
        assert [par.frozen for par in kept] == [par.frozen for par in make_group()["src-b"].parameters]
        assert {id(p) for p in free} == {id(p) for p in kept if not p.frozen}
        assert models["src-b"].spectral_model.beta.frozen  # stays frozen: kept, not released
        assert not models["src-b"].spectral_model.amplitude.frozen
    assert snapshot(models) == before


def test_frozen_keeps_single_parameters_and_links():
    models = make_group()
    # link src-b's lon_0 to src-a's: one Parameter object in two models
    models["src-b"].spatial_model.lon_0 = models["src-a"].spatial_model.lon_0
    before = snapshot(models)
    amplitude = models["src-c"].spectral_model.amplitude
    lon_0 = models["src-a"].spatial_model.lon_0
    with frozen(models, keep=[amplitude, lon_0]) as free:
        assert [par.name for par in free] == ["lon_0", "amplitude"]
        assert not models["src-b"].spatial_model.lon_0.frozen
        assert sum(not par.frozen for par in models.parameters.unique_parameters) == 2
    assert snapshot(models) == before


def test_frozen_restores_after_an_exception():
    models = make_group()
    before = snapshot(models)
    with pytest.raises(RuntimeError, match="fit failed"):
        with frozen(models, keep=models["src-a"]):
            models["src-a"].spatial_model.r_0.value = 0.5
            models["src-b"].spectral_model.alpha.frozen = False
            raise RuntimeError("fit failed")
    after = snapshot(models)
    assert [item[1] for item in after] == [item[1] for item in before]
    # values found inside the block stay unless restore_values is asked for
    assert models["src-a"].spatial_model.r_0.value == 0.5


def test_frozen_restore_values():
    models = make_group()
    before = snapshot(models)
    with frozen(models, keep="src-a", restore_values=True):
        models["src-a"].spatial_model.r_0.value = 0.5
        models["src-a"].spatial_model.r_0.error = 0.1
    assert snapshot(models) == before


def test_frozen_everything_and_bad_keep():
    models = make_group()
    with frozen(models) as free:
        assert len(free) == 0
        assert all(par.frozen for par in models.parameters)
    with pytest.raises(InputError, match="no model named 'nope'"):
        with frozen(models, keep="nope"):
            pass
    stranger = PowerLawSpectralModel().index
    with pytest.raises(InputError, match="does not belong"):
        with frozen(models, keep=stranger):
            pass
    with pytest.raises(InputError, match="expected gammapy models"):
        with frozen("models"):
            pass


def test_select_models_in_region_mask_and_geom():
    models = make_group()
    region = CircleSkyRegion(SkyCoord(320.5, 0, unit="deg", frame="galactic"), 1.2 * u.deg)
    assert select_models(models, region).names == ["src-a", "src-b"]
    assert select_models(models, [region]).names == ["src-a", "src-b"]
    assert select_models(models, region, inside=False).names == ["src-c", "src-icrs"]

    # region in icrs selects galactic models too
    box = RectangleSkyRegion(SkyCoord(229.6, -59.1, unit="deg", frame="icrs"), 1 * u.deg, 1 * u.deg)
    assert select_models(models, box).names == ["src-icrs"]

    geom = WcsGeom.create(skydir=(320, 0), frame="galactic", binsz=0.1, width=(4, 2))
    assert select_models(models, geom).names == ["src-a", "src-b", "src-c"]

    axis = MapAxis.from_energy_bounds("1 TeV", "10 TeV", nbin=2)
    mask = Map.from_geom(geom.to_cube([axis]), dtype=bool)
    lon = geom.get_coord().lon.to_value("deg")
    mask.data[1] = lon > 320.0  # true in one energy bin only: reduced with OR
    assert select_models(models, mask).names == ["src-a", "src-b"]
    assert select_models(models, mask, inside=False).names == ["src-c", "src-icrs"]


def test_select_models_edge_cases():
    assert len(select_models(Models([]), WcsGeom.create(width=1))) == 0
    with pytest.raises(InputError, match="expected a region"):
        select_models(make_group(), "galactic plane")


def test_main_source_and_release_shape():
    models = make_group()
    group = [models["src-a"], models["src-b"], models["src-c"]]
    assert main_source(group).name == "src-b"

    spatial = models["src-b"].spatial_model
    assert spatial.e.frozen and spatial.phi.frozen
    released = release_shape(group)
    assert released.names == ["r_0", "eta", "e", "phi"]
    assert not any(spatial.parameters[name].frozen for name in ["r_0", "eta", "e", "phi"])
    assert spatial.lon_0.frozen is False  # untouched
    assert models["src-a"].spatial_model.phi.frozen  # other sources untouched

    # a single source and a chosen subset; Gaussian has e and phi only
    released = release_shape(models["src-icrs"], names=["e", "phi", "eta"])
    assert released.names == ["e", "phi"]
    with pytest.raises(InputError, match="has none of the parameters"):
        release_shape(models["src-c"])
    with pytest.raises(InputError, match="no sky model"):
        main_source([FoVBackgroundModel(dataset_name="ds")])


def test_frozen_with_release_shape_inside():
    models = make_group()
    before = snapshot(models)
    with frozen(models, keep="src-b"):
        release_shape(models["src-b"])
        free = [par.name for par in models.parameters.free_parameters]
        assert {"r_0", "eta", "e", "phi", "amplitude"} <= set(free)
        assert len(free) == len(set(free)) == 8
    assert snapshot(models) == before


# --------------------------------------------------------------------------
# cache_outer_sources
# --------------------------------------------------------------------------
CACHE_REGION = CircleSkyRegion(SkyCoord(0.5, 0, unit="deg", frame="galactic"), 0.7 * u.deg)


@pytest.fixture()
def survey(small_survey):
    """A private copy of the small simulated patch: point-like and extended sources
    (no diffuse model, to keep it fast), a fit mask on the postev dataset only."""
    datasets, models = copy.deepcopy(small_survey)
    kept = [m for m in models if not isinstance(m, SkyModel) or m.spatial_model.tag[0] != "TemplateSpatialModel"]
    models = Models(kept)
    datasets.models = models
    dataset = datasets["postev"]
    dataset.mask_fit = dataset.counts.geom.region_mask([CACHE_REGION])
    return datasets, models


def sources_of(models):
    return [m for m in models if isinstance(m, SkyModel) and m.spatial_model is not None]


def test_cache_outer_sources_template_and_model_lists(survey, tmp_path):
    datasets, models = survey
    dataset = datasets["postev"]
    mask = dataset.mask_fit.reduce_over_axes(func=np.logical_or)
    outer = [m.name for m in sources_of(models) if not mask.get_by_coord(m.position)[0]]
    inner = [m.name for m in sources_of(models) if m.name not in outer]
    assert outer and inner
    expected = dataset.npred_signal(model_names=outer).data
    total_before = dataset.npred().data.copy()

    new_models = cache_outer_sources(datasets, models, path=tmp_path)

    template = new_models["postev-outer-sources"]
    assert isinstance(template, TemplateNPredModel)
    assert template.spectral_model.norm.frozen
    assert template.datasets_names == ["postev"]
    assert_allclose(template.map.data, expected, rtol=1e-6, atol=1e-12)
    assert "subtev-outer-sources" not in new_models.names  # no fit mask there
    # outer sources stay for subtev only; inner ones keep fitting both datasets
    for name in outer:
        assert new_models[name].datasets_names == ["subtev"]
    for name in inner:
        assert new_models[name].datasets_names is None
    assert set(datasets["postev"].models.names) >= set(inner) | {"postev-outer-sources"}
    assert not set(outer) & set(datasets["postev"].models.names)
    # the same predicted counts, now from the template
    assert_allclose(dataset.npred().data, total_before, rtol=1e-6, atol=1e-10)
    # written and read back
    written = Map.read(tmp_path / "postev_outer_npred.fits")
    assert_allclose(written.data, template.map.data)
    assert template.filename == str(tmp_path / "postev_outer_npred.fits")


def test_cache_outer_sources_removes_background_everywhere_sources(survey):
    datasets, models = survey
    subtev = datasets["subtev"]
    subtev.mask_fit = subtev.counts.geom.region_mask([CACHE_REGION])
    n_sources = len(sources_of(models))
    new_models = cache_outer_sources(datasets, models, freeze_norm=False)
    remaining = sources_of(new_models)
    assert 0 < len(remaining) < n_sources
    assert all(m.datasets_names is None for m in remaining)
    for name in ["postev-outer-sources", "subtev-outer-sources"]:
        assert not new_models[name].spectral_model.norm.frozen
    # background models are kept
    assert sum(isinstance(m, FoVBackgroundModel) for m in new_models) == 2


def test_cache_outer_sources_bad_input():
    with pytest.raises(InputError, match="MapDataset"):
        cache_outer_sources([object()])


# --------------------------------------------------------------------------
# FastPSFMap, FastEDispKernelMap, fast_irfs: identical kernels and npred
# --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "position",
    [
        SkyCoord(0.3, 0.1, unit="deg", frame="galactic"),
        SkyCoord(-1.45, -0.95, unit="deg", frame="galactic"),  # patch corner: extrapolated
        SkyCoord(266.5, -28.8, unit="deg", frame="icrs"),
        SkyCoord(5.0, 3.0, unit="deg", frame="galactic"),  # off the map: nearest valid
    ],
)
def test_fast_psf_kernel_is_gammapy_kernel(small_survey, position):
    datasets, _ = small_survey
    for dataset in datasets:
        fast = FastPSFMap.from_psf_map(dataset.psf)
        geom = dataset.exposure.geom
        for kwargs in [dict(containment=0.999), dict(containment=0.95, max_radius="0.2 deg")]:
            desired = dataset.psf.get_psf_kernel(geom=geom, position=position, **kwargs).psf_kernel_map
            actual = fast.get_psf_kernel(geom=geom, position=position, **kwargs).psf_kernel_map
            assert actual.geom == desired.geom
            assert actual.data.dtype == desired.data.dtype
            # same algorithm; float64 interpolation order may move a float32 value by one ulp
            assert_allclose(actual.data, desired.data, rtol=1e-6, atol=1e-9)


def test_fast_psf_kernel_single_spatial_bin():
    from gammapy.irf import PSFMap
    from gammapy.maps import MapAxis

    energy = MapAxis.from_energy_bounds("1 TeV", "10 TeV", nbin=3, name="energy_true")
    gauss = PSFMap.from_gauss(energy, sigma=[0.1, 0.08, 0.05] * u.deg)
    geom = WcsGeom.create(skydir=(0, 0), binsz=0.02, width=2, axes=[energy])
    single = WcsGeom.create(skydir=(0, 0), binsz=2, width=2, axes=[gauss.psf_map.geom.axes["rad"], energy])
    psf_map = Map.from_geom(single, data=gauss.psf_map.data[..., :1, :1], unit="sr-1")
    for psf in [gauss, PSFMap(psf_map)]:
        fast = FastPSFMap.from_psf_map(psf)
        for position in [SkyCoord(0.3, 0.2, unit="deg"), SkyCoord(3, 0, unit="deg")]:
            desired = psf.get_psf_kernel(geom=geom, position=position, max_radius="0.5 deg")
            actual = fast.get_psf_kernel(geom=geom, position=position, max_radius="0.5 deg")
            assert_allclose(actual.psf_kernel_map.data, desired.psf_kernel_map.data, rtol=1e-6, atol=1e-9)


def test_fast_containment_radius_is_gammapy_radius(small_survey):
    datasets, _ = small_survey
    rng = np.random.default_rng(11)
    for dataset in datasets:
        fast = FastPSFMap.from_psf_map(dataset.psf)
        energies = [dataset.psf.psf_map.geom.axes["energy_true"].center, dataset.exposure.geom.axes["energy_true"].center]
        for fraction, energy in zip([0.68, 0.999, 0.95], energies * 2):
            for lon, lat in zip(rng.uniform(-1.6, 1.6, 5), rng.uniform(-1.1, 1.1, 5)):
                position = SkyCoord(lon, lat, unit="deg", frame="galactic")
                desired = dataset.psf.containment_radius(fraction, energy, position=position)
                actual = fast.containment_radius(fraction, energy, position=position)
                assert_array_equal(actual.to_value("deg"), desired.to_value("deg"))


def test_fast_edisp_kernel_is_gammapy_kernel(small_survey):
    datasets, _ = small_survey
    positions = [(0.3, 0.1), (-1.49, -0.99), (1.26, 0.74), (4.0, -3.0)]
    for dataset in datasets:
        fast = FastEDispKernelMap.from_edisp_map(dataset.edisp)
        axis = dataset.counts.geom.axes["energy"]
        for lon, lat in positions:
            position = SkyCoord(lon, lat, unit="deg", frame="galactic")
            desired = dataset.edisp.get_edisp_kernel(position=position, energy_axis=axis)
            actual = fast.get_edisp_kernel(position=position, energy_axis=axis)
            assert actual.axes == desired.axes
            assert_array_equal(actual.data, desired.data)


def test_fast_irfs_npred_is_gammapy_npred(survey):
    datasets, models = survey
    dataset = datasets["subtev"]
    names = [m.name for m in sources_of(models)][:6]
    desired = dataset.npred_signal(model_names=names)
    psf, edisp = dataset.psf, dataset.edisp
    dataset.models = models  # fresh evaluators
    with fast_irfs(datasets) as swapped:
        assert isinstance(dataset.psf, FastPSFMap)
        assert isinstance(dataset.edisp, FastEDispKernelMap)
        assert any(d is dataset for d in swapped)
        actual = dataset.npred_signal(model_names=names)
    assert dataset.psf is psf and dataset.edisp is edisp
    assert_allclose(actual.data, desired.data, rtol=1e-6, atol=1e-9)

    dataset.models = models
    assert_allclose(npred_signal(dataset, names).data, desired.data, rtol=1e-6, atol=1e-9)
    with pytest.raises(InputError, match="expected a MapDataset"):
        npred_signal(datasets, names)


def test_fit_with_cached_outer_sources_matches_fit_with_frozen_sources(survey):
    from gammapy.modeling import Fit

    datasets, models = survey
    dataset = datasets["postev"]
    mask = dataset.mask_fit.reduce_over_axes(func=np.logical_or)
    inner = [m for m in sources_of(models) if mask.get_by_coord(m.position)[0]]
    target = max(inner, key=lambda m: m.spectral_model.integral(1 * u.TeV, 100 * u.TeV).value)
    free = [target.spectral_model.amplitude, target.spatial_model.lon_0, target.spatial_model.lat_0]

    def fit(dataset):
        with frozen(dataset.models, keep=free, restore_values=True):
            result = Fit().run([dataset])
            assert result.success
            return [par.value for par in free]

    all_present = fit(dataset)
    cache_outer_sources(datasets, models)
    assert "postev-outer-sources" in dataset.models.names
    assert_allclose(fit(dataset), all_present, rtol=1e-4)
