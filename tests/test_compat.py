"""Contracts of `gpsfast._compat`: the private gammapy / regions names gpsfast relies on.

Each test checks one accessor of ``gpsfast/_compat.py`` against the installed
gammapy and regions, independently of the code that uses it (references from the
public API), and fails with a message naming the function to update.
"""
import astropy.units as u
import gammapy
import numpy as np
import pytest
import regions
from astropy.coordinates import SkyCoord
from gammapy.datasets import Datasets, MapDataset
from gammapy.datasets.evaluator import MapEvaluator
from gammapy.irf import EDispKernel, EDispKernelMap, PSFMap
from gammapy.maps import Map, MapAxes, MapAxis, RegionGeom, RegionNDMap, WcsGeom
from gammapy.modeling import Parameter
from gammapy.modeling.models import (
    GaussianSpatialModel,
    Models,
    PowerLawSpectralModel,
    SkyModel,
)
from gammapy.stats.fit_statistics import GaussianPriorPenalty
from regions import CircleSkyRegion, PointSkyRegion

from gpsfast import _compat

VERSIONS = f"gammapy {gammapy.__version__}, regions {regions.__version__}"


def contract(condition, function, what):
    """Assert a contract; the message says which `gpsfast._compat` function needs updating."""
    assert condition, f"{VERSIONS} changed {what}: update gpsfast._compat.{function}"


@pytest.fixture(scope="module")
def axes():
    energy_true = MapAxis.from_energy_bounds("0.5 TeV", "50 TeV", nbin=4, name="energy_true")
    energy = MapAxis.from_energy_bounds("1 TeV", "10 TeV", nbin=3, name="energy")
    return energy, energy_true


@pytest.fixture(scope="module")
def dataset(axes):
    energy, energy_true = axes
    geom = WcsGeom.create(skydir=(0, 0), binsz=0.05, width=(1.0, 0.8), frame="galactic", axes=[energy])
    dataset = MapDataset.create(geom, energy_axis_true=energy_true, name="compat")
    dataset.exposure.data += 1e10
    dataset.background.data += 1.0
    dataset.psf = PSFMap.from_gauss(energy_true, sigma=0.1 * u.deg)
    dataset.edisp = None
    source = SkyModel(PowerLawSpectralModel(), GaussianSpatialModel(lon_0="0.1 deg", lat_0="0 deg", sigma="0.1 deg",
                                                                     frame="galactic"), name="src")
    dataset.models = Models([source])
    dataset.npred()
    return dataset


def test_irf_map_and_psf_irf(axes):
    _, energy_true = axes
    psf = PSFMap.from_gauss(energy_true, sigma=0.1 * u.deg)
    edisp = EDispKernelMap.from_gauss(axes[0], energy_true, sigma=0.2, bias=0.0)
    contract(_compat.irf_map(psf) is psf.psf_map, "irf_map", "the map behind PSFMap.psf_map")
    contract(_compat.irf_map(edisp) is edisp.edisp_map, "irf_map", "the map behind EDispKernelMap.edisp_map")
    irf = _compat.psf_irf(psf)
    cumsum = irf.cumsum(axis_name="rad")
    contract(set(irf.axes.names) >= {"energy_true", "rad"}, "psf_irf", "PSFMap._psf_irf (its axes)")
    contract(cumsum.data.shape == irf.data.shape, "psf_irf", "PSFMap._psf_irf.cumsum")
    # the rad-integrated PSF profile ends at the containment of the largest radius
    contract(np.allclose(cumsum.quantity.to_value("")[..., -1, :, :], 1, atol=1e-3), "psf_irf",
             "PSFMap._psf_irf (not the PSF profile)")


def test_nearest_valid_position(axes):
    _, energy_true = axes
    rad = PSFMap.from_gauss(energy_true, sigma=0.1 * u.deg).psf_map.geom.axes["rad"]
    geom = WcsGeom.create(skydir=(0, 0), binsz=0.5, width=(3, 2), frame="galactic", axes=[energy_true])
    psf_geom = WcsGeom.create(skydir=(0, 0), binsz=0.5, width=(3, 2), frame="galactic", axes=[rad, energy_true])
    psf_map = Map.from_geom(psf_geom, unit="sr-1")
    psf_map.data[..., :, 3:] = 1.0  # the IRF is defined at negative longitudes only (image columns 3-5)
    psf = PSFMap(psf_map=psf_map, exposure_map=Map.from_geom(geom, unit="m2 s"))
    inside = SkyCoord(-0.5, 0.0, unit="deg", frame="galactic")
    outside = SkyCoord(1.2, 0.0, unit="deg", frame="galactic")
    moved = _compat.nearest_valid_position(psf, outside)
    contract(isinstance(moved, SkyCoord), "nearest_valid_position", "IRFMap._get_nearest_valid_position")
    contract(_compat.nearest_valid_position(psf, inside).separation(inside).deg < 1e-9,
             "nearest_valid_position", "IRFMap._get_nearest_valid_position (a safe position moved)")
    value = psf.mask_safe_image.get_by_coord(moved)
    contract(bool(np.nan_to_num(value)[0]), "nearest_valid_position",
             "IRFMap._get_nearest_valid_position (not moved to a safe pixel)")


def test_dataset_geom_evaluators_and_edisp_diagonal(dataset):
    contract(_compat.dataset_geom(dataset) is dataset.counts.geom, "dataset_geom", "MapDataset._geom")
    evaluators = _compat.dataset_evaluators(dataset)
    contract(evaluators is dataset.evaluators and isinstance(evaluators["src"], MapEvaluator),
             "dataset_evaluators", "MapDataset._evaluators")
    copy = MapDataset.__new__(MapDataset)
    copy.__dict__.update(dataset.__dict__)
    _compat.set_dataset_evaluators(copy, {})
    contract(copy.evaluators == {} and dataset.evaluators is evaluators, "set_dataset_evaluators",
             "MapDataset._evaluators")
    diagonal = _compat.evaluator_edisp_diagonal(evaluators["src"])
    contract(isinstance(diagonal, EDispKernel), "evaluator_edisp_diagonal", "MapEvaluator._edisp_diagonal")
    matrix = diagonal.pdf_matrix
    # true bins 0.5-1.6, 1.6-5, 5-16, 16-50 TeV; reconstructed 1-2.2, 2.2-4.6, 4.6-10 TeV
    contract(matrix.shape == (4, 3) and np.isclose(matrix[1].sum(), 1) and matrix[3].sum() == 0,
             "evaluator_edisp_diagonal",
             "MapEvaluator._edisp_diagonal (not the diagonal response)")


def test_copy_as_shares_the_state(dataset):
    class Sub(MapDataset):
        pass

    copy = _compat.copy_as(dataset, Sub)
    contract(type(copy) is Sub and copy.counts is dataset.counts and copy.models is dataset.models,
             "copy_as", "the instance state of MapDataset (no longer all in __dict__)")
    contract(copy.stat_sum() == dataset.stat_sum(), "copy_as", "the instance state of MapDataset")


def test_datasets_penalties(dataset):
    datasets = Datasets([dataset])
    contract(_compat.datasets_penalties(datasets) is None, "datasets_penalties", "Datasets._penalties")
    penalty = GaussianPriorPenalty([dataset.models.parameters["index"]])
    _compat.set_datasets_penalties(datasets, [penalty])
    contract(_compat.datasets_penalties(datasets) == [penalty], "datasets_penalties", "Datasets._penalties")
    contract(list(datasets.models._penalties) == [penalty], "set_datasets_penalties",
             "Datasets._penalties (no longer given to Datasets.models)")
    _compat.set_datasets_penalties(datasets, None)


def test_sky_model_parts_and_parameter_objects():
    spectral = PowerLawSpectralModel()
    spatial = GaussianSpatialModel(frame="galactic")
    model = SkyModel(spectral, spatial, name="m")
    contract(_compat.sky_model_parts(model) == (spatial, spectral, None), "sky_model_parts",
             "SkyModel's _spatial_model / _spectral_model / _temporal_model")
    names = spectral.default_parameters.names
    objects = _compat.parameter_objects(spectral, names)
    contract(all(a is b for a, b in zip(objects, spectral.parameters)) and len(objects) == len(names),
             "parameter_objects", "where models keep their Parameter objects")
    spectral.index = Parameter("index", 3.0)
    contract(_compat.parameter_objects(spectral, ["index"])[0] is spectral.index, "parameter_objects",
             "where a replaced Parameter object is kept")


def test_init_copies_check_width_and_solid_angle(axes):
    geom = WcsGeom.create(skydir=(10, 1), binsz=0.1, width=(1.0, 0.5), frame="galactic", axes=[axes[0]])
    image = geom.to_image()
    wcs = image.wcs.deepcopy()
    wcs.wcs.crpix += 1
    copy = _compat.geom_init_copy(image, wcs=wcs, npix=(4, 3))
    contract(isinstance(copy, WcsGeom) and copy.data_shape == (3, 4) and copy.wcs is wcs, "geom_init_copy",
             "Geom._init_copy")
    sky_map = Map.from_geom(geom, data=1.0)
    new = _compat.map_init_copy(sky_map, data=np.zeros(geom.data_shape, dtype=np.float32))
    contract(new.geom == geom and new.data.sum() == 0 and new.unit == sky_map.unit, "map_init_copy",
             "Map._init_copy")
    contract(_compat.check_width("0.2 deg") == (0.2, 0.2), "check_width", "gammapy.maps.utils._check_width")
    contract(tuple(_compat.check_width(("1 deg", 0.5 * u.deg))) == (1.0, 0.5), "check_width",
             "gammapy.maps.utils._check_width")
    fresh = WcsGeom.create(skydir=(10, 1), binsz=0.1, width=(1.0, 0.5), frame="galactic")
    contract(_compat.cached_solid_angle(fresh) is None, "cached_solid_angle", "WcsGeom's solid-angle cache")
    solid_angle = fresh.solid_angle()
    cached = _compat.cached_solid_angle(fresh)
    contract(cached is not None and np.array_equal(cached.to_value("sr"), solid_angle.to_value("sr")),
             "cached_solid_angle", "WcsGeom's solid-angle cache (lazyproperty _solid_angle)")


def test_internal_constants():
    contract(u.Quantity(_compat.CUTOUT_MARGIN).unit.is_equivalent("deg"), "CUTOUT_MARGIN",
             "gammapy.datasets.evaluator.CUTOUT_MARGIN")
    contract(int(_compat.PSF_MAX_OVERSAMPLING) >= 1, "PSF_MAX_OVERSAMPLING",
             "gammapy.irf.psf.map.PSF_MAX_OVERSAMPLING")
    contract(int(_compat.MAX_OVERSAMPLING) >= 1, "MAX_OVERSAMPLING",
             "gammapy.modeling.models.spatial.MAX_OVERSAMPLING")


def test_pixel_scale_angle_at_skycoord():
    wcs = WcsGeom.create(skydir=(0, 0), binsz=0.02, width=(2, 1), frame="galactic", proj="TAN").wcs
    centers = SkyCoord([0.1, -0.3], [0.05, 0.2], unit="deg", frame="galactic")
    pix, scale, _ = _compat.pixel_scale_angle_at_skycoord(centers, wcs)
    for i in range(2):
        region = CircleSkyRegion(centers[i], 0.1 * u.deg).to_pixel(wcs)
        contract(region.center.x == pix.x[i] and region.center.y == pix.y[i], "pixel_scale_angle_at_skycoord",
                 "regions._utils.wcs_helpers.pixel_scale_angle_at_skycoord (pixel centre)")
        contract(region.radius == (0.1 * u.deg / scale[i]).to_value(u.pix), "pixel_scale_angle_at_skycoord",
                 "regions._utils.wcs_helpers.pixel_scale_angle_at_skycoord (pixel scale)")


def test_constructor_bypasses_build_the_same_objects(axes):
    assert _compat.direct_init_ok(), f"{VERSIONS}: the constructors set other attributes (see direct_init_ok)"
    energy, energy_true = axes
    center = SkyCoord(0.2, 0.1, unit="deg", frame="galactic")
    wcs = WcsGeom.create(npix=5, binsz=0.1, frame="galactic").wcs
    point = _compat.new_point_region(center)
    contract(point == PointSkyRegion(center), "new_point_region", "PointSkyRegion's attributes")
    map_axes = MapAxes.from_default([energy], n_spatial_axes=2)
    geom = _compat.new_region_geom(point, map_axes, wcs, 3)
    reference = RegionGeom(point, axes=[energy], wcs=wcs)
    contract(geom == reference and geom.data_shape == reference.data_shape, "new_region_geom",
             "RegionGeom's attributes")
    data = np.arange(3.0).reshape(reference.data_shape)
    region_map = _compat.new_region_nd_map(geom, data, u.Unit("cm-2"), {"a": 1})
    expected = RegionNDMap(reference, data=data, unit="cm-2", meta={"a": 1})
    contract(np.array_equal(region_map.data, expected.data) and region_map.unit == expected.unit
             and region_map.meta == expected.meta and region_map.geom == expected.geom, "new_region_nd_map",
             "RegionNDMap's attributes")
    kernel = EDispKernelMap.from_gauss(energy, energy_true, sigma=0.2, bias=0.0).to_region_nd_map(center)
    built = _compat.new_irf_map(EDispKernelMap, kernel.edisp_map, kernel.exposure_map)
    contract(built.edisp_map is kernel.edisp_map and np.array_equal(
        built.get_edisp_kernel().data, kernel.get_edisp_kernel().data), "new_irf_map", "IRFMap's attributes")


def test_dataset_metas_are_default_and_independent():
    from gammapy.datasets.metadata import MapDatasetMetaData

    metas = _compat.dataset_metas(2)
    default = MapDatasetMetaData()
    for meta in metas:
        contract(type(meta) is MapDatasetMetaData, "dataset_metas", "MapDatasetMetaData")
        contract({k for k, _ in meta} == {k for k, _ in default}, "dataset_metas", "MapDatasetMetaData's fields")
    mutable = [name for name, value in metas[0] if value is not None and not isinstance(value, (str, int, float))
               and name != "creation"]
    for name in mutable:
        contract(getattr(metas[0], name) is not getattr(metas[1], name), "dataset_metas",
                 f"MapDatasetMetaData.{name} (shared between datasets)")


def test_parameters_from_dict():
    defaults = PowerLawSpectralModel.default_parameters
    pars = _compat.parameters_from_dict([{"name": "index", "value": 3.1, "frozen": True}], defaults)
    contract(pars.names == defaults.names, "parameters_from_dict", "_build_parameters_from_dict (names, order)")
    contract(pars["index"].value == 3.1 and pars["index"].frozen, "parameters_from_dict",
             "_build_parameters_from_dict (values of the list)")
    contract(pars["amplitude"].quantity == defaults["amplitude"].quantity and pars["amplitude"] is not
             defaults["amplitude"], "parameters_from_dict", "_build_parameters_from_dict (defaults, copied)")


def test_phase_curve_phase():
    t_ref, f0, f1, f2 = 10.0 * u.s, 1.0 / u.s, 0.1 / u.s**2, 0.01 / u.s**3
    time = 12.5 * u.s
    phase, period = _compat.phase_curve_phase(time, t_ref, 0.25, f0, f1, f2)
    # phi_ref + dt f0 + dt^2 f1 / 2 + dt^3 f2 / 6 at dt = 2.5 s: 0.25 + 2.5 + 0.3125 + 0.0260417
    total = 0.25 + 2.5 + 0.1 * 2.5**2 / 2 + 0.01 * 2.5**3 / 6
    contract(np.isclose(phase + period, total, rtol=1e-12) and 0 <= phase < 1 and period == 3,
             "phase_curve_phase", "TemplatePhaseCurveTemporalModel._time_to_phase")


def test_new_models():
    from gammapy.modeling.covariance import Covariance
    from gammapy.modeling.models import FoVBackgroundModel

    source = SkyModel(PowerLawSpectralModel(), name="s")
    background = FoVBackgroundModel(dataset_name="d")
    contract(set(vars(Models([]))) == {"_models", "_background_models", "_covar_file", "_covariance", "_penalties"},
             "new_models", "the attributes Models() sets")
    covariance = Covariance(Models([source, background]).parameters)
    models = _compat.new_models([source, background], covariance)
    contract(type(models) is Models and models.names == ["s", "d-bkg"] and models["s"] is source, "new_models",
             "Models._models")
    contract(models.background_models == {"d": "d-bkg"}, "new_models", "Models._background_models")
    contract(models.covariance is covariance, "new_models", "Models._covariance")
    contract(models.parameters.names == Models([source, background]).parameters.names, "new_models", "Models._models")
    with pytest.raises(ValueError):
        _compat.new_models([background, FoVBackgroundModel(dataset_name="d", name="other")], covariance)


def test_update_filenames_and_link_models(tmp_path):
    (tmp_path / "here.fits").write_text("")
    component = {"spatial": {"filename": "here.fits"}, "spectral": {"filename": "elsewhere.fits"}}
    _compat.update_filenames(component, tmp_path)
    contract(component == {"spatial": {"filename": tmp_path / "here.fits"}, "spectral": {"filename": "elsewhere.fits"}},
             "update_filenames", "_recursive_dict_filename_update")
    data = {"components": [
        {"name": name, "type": "SkyModel",
         "spectral": {"type": "PowerLawSpectralModel", "parameters": [{"name": "index", "value": 2.0, "link": "idx"}]}}
        for name in ("a", "b")]}
    models = Models([SkyModel.from_dict(component) for component in data["components"]])
    _compat.link_models(models)
    contract(models["a"].spectral_model.index is models["b"].spectral_model.index, "link_models", "_set_models_link")


def test_init_with_shadows_and_sky_model_without_unit_check():
    shared = PowerLawSpectralModel.default_parameters.copy()
    index = Parameter("index", 3.0)
    model = _compat.init_with_shadows(PowerLawSpectralModel, {"default_parameters": shared}, index=index)
    contract(model.index is index and "default_parameters" not in vars(model), "init_with_shadows",
             "ModelBase.__init__ (parameters given as objects kept, the shadow removed)")
    contract(model.amplitude is not PowerLawSpectralModel.default_parameters["amplitude"], "init_with_shadows",
             "ModelBase.__init__ (copies the defaults it uses from default_parameters)")
    spectral, spatial = PowerLawSpectralModel(), GaussianSpatialModel(frame="galactic")
    checked = SkyModel(spectral, spatial, name="m")
    fast = _compat.sky_model_without_unit_check(spectral_model=spectral, spatial_model=spatial, name="m")
    contract(type(fast) is SkyModel and vars(fast).keys() == vars(checked).keys(), "sky_model_without_unit_check",
             "SkyModel.__init__ / _check_unit")
    contract(fast.to_dict() == checked.to_dict(), "sky_model_without_unit_check", "SkyModel.__init__")
    with pytest.raises(ValueError):
        SkyModel(PowerLawSpectralModel(amplitude="1 cm-2 s-1"), spatial, name="bad")  # what the bypass skips
