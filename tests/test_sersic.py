"""Compiled generalized Gaussian (Sersic) kernel and model against NumPy and gammapy."""
import math

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal
import astropy.units as u
from astropy.coordinates import SkyCoord
from astropy.wcs import WCS
from regions import CircleSkyRegion, EllipseSkyRegion, RectangleSkyRegion
from scipy.special import gamma
from gammapy.maps import Map, MapAxis, RegionGeom, WcsGeom
from gammapy.modeling.models import (
    SPATIAL_MODEL_REGISTRY,
    FoVBackgroundModel,
    Models,
    PowerLawSpectralModel,
    SkyModel,
)
from gammapy.modeling.models import (
    GeneralizedGaussianSpatialModel as GammapyModel,
)
from gammapy.utils.testing import mpl_plot_check

from gpsfast.kernels.sersic import (
    PROJ_CAR,
    PROJ_SIN,
    PROJ_TAN,
    generalized_gaussian_grid,
    generalized_gaussian_points,
)
from gpsfast.models.sersic import (
    GeneralizedGaussianSpatialModel,
    _grid_spec,
    _local_basis,
    _native_to_celestial,
    _solid_angle,
    accelerate_models,
    restore_gammapy_models,
)

RTOL_EVALUATE = 1e-6
RTOL_INTEGRATE = 1e-4


def reference_brightness(lon, lat, lon_0, lat_0, r_0, eta, e, phi):
    """Plain NumPy generalized Gaussian, angles in radians, result in sr-1.

    Separation: Vincenty formula; position angle: east of north, both as
    documented by astropy's ``angular_separation`` and ``position_angle``.
    """
    dlon = lon - lon_0
    s_dlon, c_dlon = np.sin(dlon), np.cos(dlon)
    s_lat0, c_lat0 = np.sin(lat_0), np.cos(lat_0)
    s_lat, c_lat = np.sin(lat), np.cos(lat)
    num1 = c_lat * s_dlon
    num2 = c_lat0 * s_lat - s_lat0 * c_lat * c_dlon
    den = s_lat0 * s_lat + c_lat0 * c_lat * c_dlon
    sep = np.arctan2(np.hypot(num1, num2), den)
    pa = np.arctan2(num1, num2)
    minor = r_0 * np.sqrt(1 - e**2)
    dphi = phi - pa
    r_eff = r_0 * minor / np.sqrt((r_0 * np.sin(dphi)) ** 2 + (minor * np.cos(dphi)) ** 2)
    norm = 1 / (2 * np.pi * minor * r_0 * eta * gamma(2 * eta))
    return norm * np.exp(-((sep / r_eff) ** (1 / eta)))


def shape_vector(r_0, eta, e, phi):
    """Kernel shape vector (radians), built from the kernel's documented definition."""
    minor = r_0 * math.sqrt(1 - e**2)
    norm = 1 / (2 * math.pi * minor * r_0 * eta * gamma(2 * eta))
    return np.array(
        [math.cos(phi), math.sin(phi), minor**-2, r_0**-2, 0.5 / eta, norm]
    )


def assert_close_to_reference(actual, desired, rtol):
    """Relative agreement, ignoring values below 1e-12 of the peak (exp underflow).

    gammapy sums sub-pixels in float32 maps: values below float32's smallest
    normal number (1.2e-38) are zero there.
    """
    atol = 1e-12 * np.nanmax(np.abs(desired)) + 1.2e-38
    assert_allclose(actual, desired, rtol=rtol, atol=atol, equal_nan=True)


# --------------------------------------------------------------------------
# raw kernels against the NumPy reference
# --------------------------------------------------------------------------
SHAPES = [
    (0.01, 0.0, 0.0),
    (0.1, 0.5, 123.0),
    (0.5, 0.0, 45.0),
    (0.5, 0.9, -170.0),
    (0.73, 0.99, 300.0),
    (1.0, 0.3, 90.0),
]


@pytest.mark.parametrize(("eta", "e", "phi"), SHAPES)
@pytest.mark.parametrize(("lon_0", "lat_0"), [(0.0, 0.0), (359.9, -1.0), (45.0, 87.0)])
def test_points_kernel_matches_numpy(eta, e, phi, lon_0, lat_0):
    rng = np.random.default_rng(42)
    r_0 = math.radians(0.3)
    lon_0, lat_0, phi = np.radians([lon_0, lat_0, phi])
    # points within a few r_0, plus far ones, plus the exact centre
    lon = lon_0 + rng.normal(scale=3 * r_0, size=500) / max(math.cos(lat_0), 0.05)
    lat = np.clip(lat_0 + rng.normal(scale=3 * r_0, size=500), -np.pi / 2, np.pi / 2)
    lon = np.append(lon, [lon_0, lon_0 + 0.5, lon_0 + np.pi])
    lat = np.append(lat, [lat_0, lat_0 - 0.2, -lat_0])

    actual = generalized_gaussian_points(
        lon, lat, _local_basis(lon_0, lat_0), shape_vector(r_0, eta, e, phi)
    )
    desired = reference_brightness(lon, lat, lon_0, lat_0, r_0, eta, e, phi)
    assert_close_to_reference(actual, desired, RTOL_EVALUATE)
    assert_allclose(actual[-3], shape_vector(r_0, eta, e, phi)[5], rtol=1e-14)


def test_points_kernel_propagates_nan():
    values = generalized_gaussian_points(
        np.array([np.nan, 0.0]),
        np.array([0.0, np.nan]),
        _local_basis(0.0, 0.0),
        shape_vector(0.01, 0.5, 0.0, 0.0),
    )
    assert np.isnan(values).all()


def make_wcs(ctype, crval, cdelt, crpix, pc=None):
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ctype
    wcs.wcs.crval = crval
    wcs.wcs.cdelt = cdelt
    wcs.wcs.crpix = crpix
    if pc is not None:
        wcs.wcs.pc = pc
    wcs.wcs.set()
    return wcs


ROTATED_PC = [[math.cos(0.3), -math.sin(0.3)], [math.sin(0.3), math.cos(0.3)]]
WCS_CASES = [
    (PROJ_CAR, ["GLON-CAR", "GLAT-CAR"], [320.0, 0.0], None),
    (PROJ_CAR, ["RA---CAR", "DEC--CAR"], [10.0, 40.0], None),
    (PROJ_CAR, ["RA---CAR", "DEC--CAR"], [10.0, -30.0], ROTATED_PC),
    (PROJ_TAN, ["RA---TAN", "DEC--TAN"], [83.6, 22.0], None),
    (PROJ_TAN, ["GLON-TAN", "GLAT-TAN"], [0.0, 89.0], ROTATED_PC),
    (PROJ_SIN, ["RA---SIN", "DEC--SIN"], [200.0, -60.0], None),
]


@pytest.mark.parametrize(("proj", "ctype", "crval", "pc"), WCS_CASES)
@pytest.mark.parametrize("factor", [1, 3])
def test_grid_kernel_matches_numpy(proj, ctype, crval, pc, factor):
    nx, ny, x0, y0 = 23, 17, 5, 3
    wcs = make_wcs(ctype, crval, [-0.05, 0.05], [16.3, 12.0], pc)
    eta, e, phi = 0.6, 0.7, math.radians(33.0)
    r_0 = math.radians(0.25)
    lon_0, lat_0 = np.radians(wcs.wcs_pix2world([[17.0, 10.0]], 0)[0])
    basis = _local_basis(lon_0, lat_0) @ _native_to_celestial(wcs.wcs.cel.euler)
    weights = np.linspace(1.0, 2.0, nx * ny).reshape(ny, nx)

    actual = generalized_gaussian_grid(
        x0, y0, nx, ny, factor, proj,
        wcs.wcs.cdelt[:, None] * wcs.wcs.get_pc(), wcs.wcs.crpix,
        basis, shape_vector(r_0, eta, e, phi), weights,
    )

    offsets = (np.arange(factor) + 0.5) / factor - 0.5
    x = (x0 + np.arange(nx))[:, None] + offsets[None, :]
    y = (y0 + np.arange(ny))[:, None] + offsets[None, :]
    xx, yy = np.meshgrid(x.ravel(), y.ravel())
    lon, lat = np.radians(wcs.wcs_pix2world(xx, yy, 0))
    values = reference_brightness(lon, lat, lon_0, lat_0, r_0, eta, e, phi)
    desired = values.reshape(ny, factor, nx, factor).mean(axis=(1, 3)) * weights
    assert_close_to_reference(actual, desired, RTOL_EVALUATE)


def test_grid_kernel_sin_outside_the_disk_is_nan():
    wcs = make_wcs(["RA---SIN", "DEC--SIN"], [0.0, 0.0], [-2.0, 2.0], [1.0, 1.0])
    values = generalized_gaussian_grid(
        0, 0, 80, 1, 1, PROJ_SIN, wcs.wcs.cdelt[:, None] * wcs.wcs.get_pc(),
        wcs.wcs.crpix, _local_basis(0.0, 0.0), shape_vector(0.1, 0.5, 0.0, 0.0),
        np.empty((0, 0)),
    )
    # same pixels off the sphere as wcslib (beyond 1 radian on the projection plane)
    lon, _ = wcs.wcs_pix2world(np.arange(80), np.zeros(80), 0)
    assert 10 < np.isnan(lon).sum() < 70
    assert_array_equal(np.isnan(values[0]), np.isnan(lon))


# --------------------------------------------------------------------------
# model against gammapy on the same geometry
# --------------------------------------------------------------------------
ENERGY_AXIS = MapAxis.from_energy_bounds("1 TeV", "100 TeV", nbin=3, name="energy_true")


def make_models(**kwargs):
    return GammapyModel(**kwargs), GeneralizedGaussianSpatialModel(**kwargs)


def geom_cases():
    """(geometry, model frame, centre offset in pixels from the geometry centre)."""
    return [
        ("gal-car", WcsGeom.create(skydir=(320, 0.3), frame="galactic", binsz=0.03, width=(2.4, 1.5), axes=[ENERGY_AXIS]), "galactic"),
        ("icrs-tan", WcsGeom.create(skydir=(83.6, 22.0), frame="icrs", binsz=0.04, width=(2.0, 2.0), proj="TAN"), "icrs"),
        ("gal-car-icrs-model", WcsGeom.create(skydir=(10, 1), frame="galactic", binsz=0.05, width=(3.0, 2.0)), "icrs"),
        ("icrs-car-gal-model", WcsGeom.create(skydir=(266.4, -29.0), frame="icrs", binsz=0.05, width=(3.0, 2.5)), "galactic"),
        ("high-lat", WcsGeom.create(skydir=(40, 84.5), frame="icrs", binsz=0.05, width=(3.0, 3.0)), "icrs"),
        ("pole-tan", WcsGeom.create(skydir=(0, 90), frame="galactic", binsz=0.05, width=(2.0, 2.0), proj="TAN"), "galactic"),
        ("sin", WcsGeom.create(skydir=(150, -45), frame="icrs", binsz=0.05, width=(2.0, 2.0), proj="SIN"), "galactic"),
    ]


GEOMS = geom_cases()
POSITIONS = {
    "inside": (0.2, -0.1),
    "edge": (0.97, 0.45),
    "outside-edge": (1.08, 0.0),
}
MODEL_SHAPES = [
    (0.15, 0.01, 0.0, 0.0),
    (0.2, 0.5, 0.5, 30.0),
    (0.1, 0.25, 0.99, -75.0),
    (0.3, 0.8, 0.8, 170.0),
    (0.05, 1.0, 0.2, 250.0),
]


def model_kwargs(geom, frame, where, r_0, eta, e, phi):
    """Model parameters placing the centre at a fraction of the half-width of ``geom``."""
    fx, fy = POSITIONS[where]
    half = geom.width.to_value("deg").ravel() / 2
    offset_x = float(fx * half[0]) * u.deg
    offset_y = float(fy * half[1]) * u.deg
    center = geom.center_skydir.flatten()[0].directional_offset_by(0 * u.deg, offset_y)
    center = center.directional_offset_by(90 * u.deg, offset_x).transform_to(frame)
    return dict(
        lon_0=center.data.lon.wrap_at("360d"), lat_0=center.data.lat,
        r_0=r_0 * u.deg, eta=eta, e=e, phi=phi * u.deg, frame=frame,
    )


@pytest.mark.parametrize("geom_case", GEOMS, ids=[case[0] for case in GEOMS])
@pytest.mark.parametrize("where", list(POSITIONS))
@pytest.mark.parametrize(("r_0", "eta", "e", "phi"), MODEL_SHAPES)
def test_evaluate_and_integrate_geom_match_gammapy(geom_case, where, r_0, eta, e, phi):
    _, geom, frame = geom_case
    reference, fast = make_models(**model_kwargs(geom, frame, where, r_0, eta, e, phi))

    desired = reference.evaluate_geom(geom)
    actual = fast.evaluate_geom(geom)
    assert actual.unit == desired.unit
    assert actual.shape == desired.shape
    assert_close_to_reference(actual.value, desired.value, RTOL_EVALUATE)

    desired = reference.integrate_geom(geom)
    actual = fast.integrate_geom(geom)
    assert actual.geom == desired.geom
    assert actual.unit == desired.unit
    assert_close_to_reference(actual.data, desired.data, RTOL_INTEGRATE)


def test_integrate_geom_takes_the_oversampling_factor():
    geom = WcsGeom.create(skydir=(0, 0), frame="galactic", binsz=0.05, width=1.5)
    reference, fast = make_models(lon_0="0.1 deg", r_0="0.2 deg", eta=0.3, e=0.6, frame="galactic")
    for factor in [1, 2, 7]:
        desired = reference.integrate_geom(geom, oversampling_factor=factor)
        actual = fast.integrate_geom(geom, oversampling_factor=factor)
        assert_close_to_reference(actual.data, desired.data, RTOL_INTEGRATE)


def test_source_far_outside_the_map_matches_gammapy():
    # no overlap: gammapy evaluates pixel centres of the whole map, no cutout
    geom = WcsGeom.create(skydir=(0, 0), frame="icrs", binsz=0.05, width=1.0)
    reference, fast = make_models(lon_0="3 deg", lat_0="1 deg", r_0="0.5 deg", eta=1.0, frame="icrs")
    desired = reference.integrate_geom(geom).data
    assert desired.max() > 0
    assert_close_to_reference(fast.integrate_geom(geom).data, desired, RTOL_INTEGRATE)


@pytest.mark.parametrize("scalar", [True, False])
def test_call_matches_gammapy(scalar):
    kwargs = dict(lon_0="359.8 deg", lat_0="-0.3 deg", r_0="0.4 deg", eta=0.4, e=0.7, phi="-30 deg")
    reference, fast = make_models(**kwargs)
    if scalar:
        lon, lat = 0.1 * u.deg, -0.5 * u.deg
    else:
        lon = np.linspace(-1, 1, 7)[:, None] * u.deg
        lat = np.linspace(-1.3, 0.7, 5) * u.deg
    desired = reference(lon, lat)
    actual = fast(lon, lat)
    assert actual.unit == desired.unit
    assert actual.shape == desired.shape
    assert_allclose(actual.value, desired.value, rtol=RTOL_EVALUATE)


def test_gaussian_and_centre_values():
    # eta = 0.5, e = 0: Gaussian of sigma = r_0 / sqrt(2), norm 1 / (pi r_0^2)
    model = GeneralizedGaussianSpatialModel(r_0="0.3 deg", eta=0.5)
    r_0 = np.radians(0.3)
    lat = np.array([0.0, 0.1, 0.45]) * u.deg
    expected = np.exp(-(np.radians(lat.value) / r_0) ** 2) / (np.pi * r_0**2)
    assert_allclose(model(0 * u.deg, lat).to_value("sr-1"), expected, rtol=1e-9)


@pytest.mark.parametrize(
    "pars",
    [dict(r_0=np.nan * u.deg), dict(e=1.0), dict(r_0=0 * u.deg), dict(lon_0=np.nan * u.deg)],
)
def test_degenerate_parameters_behave_like_gammapy(pars):
    geom = WcsGeom.create(skydir=(0, 0), binsz=0.1, width=1.0)
    reference, fast = make_models(**pars)
    with np.errstate(all="ignore"):
        for method in ["evaluate_geom", "integrate_geom"]:
            desired = getattr(reference, method)(geom)
            actual = getattr(fast, method)(geom)
            assert_allclose(
                getattr(actual, "data", actual), getattr(desired, "data", desired), equal_nan=True
            )


def test_region_geom_falls_back_to_gammapy():
    center = SkyCoord("0d", "0d", frame="icrs")
    small = RegionGeom(region=CircleSkyRegion(center, 0.1 * u.deg), binsz_wcs="0.01 deg")
    axis = MapAxis.from_energy_bounds("1 TeV", "10 TeV", nbin=4)
    square = RegionGeom(region=RectangleSkyRegion(center, 1 * u.deg, 1 * u.deg), axes=[axis])
    reference, fast = make_models(r_0="0.1 deg", frame="icrs")
    for geom in [small, square]:
        actual = fast.integrate_geom(geom).data
        assert_allclose(actual, reference.integrate_geom(geom).data)
    assert_allclose(actual, 1, rtol=1e-3)


# --------------------------------------------------------------------------
# gammapy's own tests of the model (gammapy/modeling/models/tests), re-run
# against the compiled class
# --------------------------------------------------------------------------
@pytest.mark.parametrize("eta", [0.1, 0.4, 0.7, 1.0])
@pytest.mark.parametrize("r_0", [0.01, 0.31, 0.61, 0.91])
@pytest.mark.parametrize("e", [0.0, 0.4, 0.8])
def test_normalisation(eta, r_0, e):
    model = GeneralizedGaussianSpatialModel(eta=eta, r_0=r_0 * u.deg, e=e, frame="galactic")
    width = max(2 * model.evaluation_radius.to_value("deg"), 0.5)
    # gammapy uses 0.02 deg pixels; 0.05 deg keeps this grid fast and the check as strict
    geom = WcsGeom.create(skydir=(0, 0), binsz=0.05, width=width, frame="galactic")
    integral = model.integrate_geom(geom)
    assert integral.unit.is_equivalent("")
    assert_allclose(integral.data.sum(), 1.0, atol=5e-3)


@pytest.mark.parametrize("r_0", np.geomspace(1e-4, 1e-1, 10))
def test_integrate_wcs_geom_small_sizes(r_0):
    model = GeneralizedGaussianSpatialModel(
        lon_0="0.234 deg", lat_0="-0.172 deg", frame="icrs", r_0=r_0 * u.deg
    )
    geom = WcsGeom.create(skydir=(0, 0), npix=100, binsz=0.02)
    assert_allclose(model.integrate_geom(geom).data.sum(), 1, atol=3e-4)


def test_integrate_geom_no_overlap_is_zero():
    model = GeneralizedGaussianSpatialModel(
        lon_0="10.234 deg", lat_0="-0.172 deg", r_0=1e-2 * u.deg, frame="icrs"
    )
    geom = WcsGeom.create(skydir=(0, 0), npix=100, binsz=0.02)
    assert_allclose(model.integrate_geom(geom).data, 0.0)


def test_integrate_geom_nan_parameter_gives_nan():
    model = GeneralizedGaussianSpatialModel(
        lon_0="0.234 deg", lat_0="-0.172 deg", r_0=np.nan * u.deg, frame="icrs"
    )
    geom = WcsGeom.create(skydir=(0, 0), npix=100, binsz=0.02)
    with np.errstate(all="ignore"):
        assert np.isnan(model.integrate_geom(geom).data).all()


def test_region_and_dict_round_trip():
    model = GeneralizedGaussianSpatialModel(e=0.5)
    region = model.to_region()
    assert isinstance(region, EllipseSkyRegion)
    assert_allclose(region.width.to_value("deg"), 1.73205, rtol=1e-5)
    assert_allclose(GeneralizedGaussianSpatialModel(r_0="1 deg").to_region().height.to_value("deg"), 2)

    new = GeneralizedGaussianSpatialModel.from_dict(model.to_dict())
    assert isinstance(new, GeneralizedGaussianSpatialModel)
    assert new.tag == model.tag

    bkg = FoVBackgroundModel(spatial_model=model, dataset_name="test")
    spatial = FoVBackgroundModel.from_dict(bkg.to_dict()).spatial_model
    assert isinstance(spatial, GammapyModel)  # read back by tag: gammapy's class (same formula)
    assert spatial.parameters.value.tolist() == model.parameters.value.tolist()


def test_plot_error():
    model = GeneralizedGaussianSpatialModel(lon_0="0 deg", lat_0="0 deg", frame="galactic")
    model.lat_0.error = 0.04
    model.lon_0.error = 0.02
    model.r_0.value = 0.2
    model.r_0.error = 0.04
    model.e.error = 0.002
    empty = Map.create(skydir=model.position, frame=model.frame, width=1, binsz=0.02)
    with mpl_plot_check():
        ax = empty.plot()
        model.plot_error(ax=ax, which="all")
        model.plot(ax=ax)


# --------------------------------------------------------------------------
# YAML and registry
# --------------------------------------------------------------------------
def test_importing_gpsfast_leaves_gammapy_registry_alone():
    for tag in GammapyModel.tag:
        assert SPATIAL_MODEL_REGISTRY.get_cls(tag) is GammapyModel
    assert GeneralizedGaussianSpatialModel.tag == GammapyModel.tag
    assert not GeneralizedGaussianSpatialModel().is_energy_dependent


def test_yaml_round_trip_with_plain_gammapy():
    spatial = GeneralizedGaussianSpatialModel(
        lon_0="12 deg", lat_0="-0.5 deg", r_0="0.3 deg", eta=0.7, e=0.4, phi="20 deg", frame="galactic"
    )
    spatial.phi.frozen = False
    models = Models([SkyModel(PowerLawSpectralModel(), spatial, name="src")])

    read = Models.from_yaml(models.to_yaml())
    read_spatial = read["src"].spatial_model
    assert type(read_spatial) is GammapyModel
    assert read_spatial.frame == "galactic"
    for par in spatial.parameters:
        assert read_spatial.parameters[par.name].value == par.value
        assert read_spatial.parameters[par.name].frozen == par.frozen

    # and back: gammapy YAML switched to the compiled class, same Parameter objects
    lon_0 = read_spatial.lon_0
    assert accelerate_models(read) == 1
    assert type(read["src"].spatial_model) is GeneralizedGaussianSpatialModel
    assert read["src"].spatial_model.lon_0 is lon_0
    assert read.to_dict()["components"] == models.to_dict()["components"]
    assert restore_gammapy_models(read) == 1
    assert type(read["src"].spatial_model) is GammapyModel
    assert read["src"].spatial_model.lon_0 is lon_0


def test_sky_model_npred_matches_gammapy():
    geom = WcsGeom.create(skydir=(0, 0), frame="galactic", binsz=0.04, width=(2, 1.6), axes=[ENERGY_AXIS])
    spatial = dict(lon_0="0.3 deg", lat_0="0.1 deg", r_0="0.15 deg", eta=0.6, e=0.5, phi="40 deg", frame="galactic")
    reference = SkyModel(PowerLawSpectralModel(), GammapyModel(**spatial))
    fast = SkyModel(PowerLawSpectralModel(), GeneralizedGaussianSpatialModel(**spatial))
    assert_allclose(fast.integrate_geom(geom).data, reference.integrate_geom(geom).data, rtol=RTOL_INTEGRATE)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(skydir=(320, 0), frame="galactic", binsz=0.05, width=(4, 3)),
        dict(skydir=(83.6, 22), frame="icrs", binsz=0.05, width=3, proj="TAN"),
        dict(skydir=(0, 85), frame="icrs", binsz=0.1, width=(20, 8)),
        dict(skydir=(10, 30), frame="galactic", binsz=0.02, width=2, proj="SIN"),
    ],
)
def test_pixel_solid_angles_match_gammapy(kwargs):
    # integrate_geom on a fresh geometry (gammapy's cached solid angles absent)
    fresh, reference_geom = WcsGeom.create(**kwargs), WcsGeom.create(**kwargs)
    assert "_solid_angle" not in fresh.__dict__
    centre = fresh.center_skydir
    pars = dict(lon_0=centre.data.lon, lat_0=centre.data.lat, r_0="0.3 deg", eta=0.6, e=0.3, frame=fresh.frame)
    reference, fast = make_models(**pars)
    actual = fast.integrate_geom(fresh).data
    desired = reference.integrate_geom(reference_geom).data
    assert_close_to_reference(actual, desired, RTOL_INTEGRATE)
    assert_allclose(
        _solid_angle(fresh, _grid_spec(fresh)), reference_geom.solid_angle().to_value("sr"), rtol=1e-10
    )
