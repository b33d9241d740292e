"""Catalogue quantities: fluxes and pivot energy from the covariance, position errors, R68, names, exposure,
and profile-likelihood errors, each against an independent computation."""
import astropy.units as u
import numpy as np
import pytest
import scipy.optimize
from astropy.coordinates import SkyCoord
from astropy.table import Table
from gammapy.datasets import MapDataset
from gammapy.irf import PSFMap
from gammapy.maps import Map, MapAxis, WcsGeom
from gammapy.modeling import Fit
from gammapy.modeling.models import (
    DiskSpatialModel,
    GaussianSpatialModel,
    GeneralizedGaussianSpatialModel,
    LogParabolaSpectralModel,
    PointSpatialModel,
    PowerLawSpectralModel,
    ShellSpatialModel,
    SkyModel,
)

from gpsfast.errors import InputError
from gpsfast.properties import (
    containment_radius,
    covariance_check,
    energy_flux,
    exposure_livetime,
    iau_names,
    pivot_energy,
    position_error,
    profile_errors,
    robust_errors,
    significance,
)
from gpsfast.survey import PRESETS, make_pointings

TEV_TO_ERG = (1 * u.TeV).to_value("erg")


def _power_law(cov_amplitude_index=-6e-15, var_index=0.01):
    model = PowerLawSpectralModel(index=2.3, amplitude="1e-12 cm-2 s-1 TeV-1", reference="1 TeV")
    # parameters index, amplitude (cm-2 s-1 TeV-1), reference (frozen); correlation -0.6 by default
    model.covariance = np.array([[var_index, cov_amplitude_index, 0], [cov_amplitude_index, 1e-26, 0], [0, 0, 0]])
    return model


def test_energy_flux_of_a_power_law():
    """Analytic: F = A E0^G (E2^(2-G) - E1^(2-G)) / (2-G), error from the analytic gradient."""
    model = _power_law()
    value, error = energy_flux(model, "1 TeV", "10 TeV")
    a, g, e1, e2 = 1e-12, 2.3, 1.0, 10.0
    flux = a * (e2 ** (2 - g) - e1 ** (2 - g)) / (2 - g)
    d_a = flux / a
    d_g = a * (-np.log(e2) * e2 ** (2 - g) + np.log(e1) * e1 ** (2 - g)) / (2 - g) + flux / (2 - g)
    gradient = np.array([d_g, d_a])
    covariance = model.covariance.data[:2, :2]
    assert value.unit == u.Unit("erg cm-2 s-1")
    assert value.value == pytest.approx(flux * TEV_TO_ERG, rel=1e-9)
    assert error.value == pytest.approx(np.sqrt(gradient @ covariance @ gradient) * TEV_TO_ERG, rel=1e-5)


def test_energy_flux_of_a_sky_model_without_covariance():
    model = _power_law(cov_amplitude_index=0)
    value, error = energy_flux(SkyModel(spectral_model=model, name="s"), "1 TeV", "100 TeV")
    assert value.value == pytest.approx(1e-12 * (100 ** -0.3 - 1) / -0.3 * TEV_TO_ERG, rel=1e-9)
    model.amplitude.frozen = model.index.frozen = True
    assert np.isnan(energy_flux(model)[1])


def test_pivot_energy_of_a_power_law_is_the_decorrelation_formula():
    model = _power_law()
    expected = np.exp(-6e-15 / (1e-12 * 0.01))
    assert pivot_energy(model).to_value("TeV") == pytest.approx(expected, rel=1e-5)
    assert pivot_energy(model).to_value("TeV") == pytest.approx(model.pivot_energy.to_value("TeV"), rel=1e-5)


def test_pivot_energy_of_a_log_parabola_is_the_smallest_error():
    """Brute-force scan of the relative dN/dE error with the analytic Jacobian of ln dN/dE."""
    model = LogParabolaSpectralModel(amplitude="1e-12 cm-2 s-1 TeV-1", reference="1 TeV", alpha=2.2, beta=0.2)
    # parameters amplitude, reference (frozen), alpha, beta
    free = np.array([[1e-26, -7e-15, 1e-15], [-7e-15, 0.02, -0.004], [1e-15, -0.004, 0.003]])
    assert np.all(np.linalg.eigvalsh(free / np.sqrt(np.outer(np.diag(free), np.diag(free)))) > 0)
    covariance = np.zeros((4, 4))
    covariance[np.ix_([0, 2, 3], [0, 2, 3])] = free
    model.covariance = covariance
    log_e = np.linspace(np.log(0.05), np.log(50), 200001)
    jacobian = np.stack([np.full_like(log_e, 1 / 1e-12), -log_e, -log_e**2])
    relative = np.einsum("in,ij,jn->n", jacobian, free, jacobian)
    expected = np.exp(log_e[np.argmin(relative)])
    assert pivot_energy(model).to_value("TeV") == pytest.approx(expected, rel=1e-3)


def test_pivot_energy_without_minimum_in_range():
    model = _power_law(cov_amplitude_index=-9e-16, var_index=1e-4)  # correlation -0.9: pivot at exp(-9) TeV
    assert np.isnan(pivot_energy(model, "0.1 TeV", "100 TeV"))


def _positioned(sigma_lon, sigma_lat, rho=0.0, lat=0.0):
    spatial = PointSpatialModel(lon_0="10 deg", lat_0=f"{lat} deg", frame="galactic")
    covariance = np.array([[sigma_lon**2, rho * sigma_lon * sigma_lat], [rho * sigma_lon * sigma_lat, sigma_lat**2]])
    spatial.covariance = covariance
    return spatial


def test_position_error_circular():
    errors = position_error(_positioned(0.02, 0.02))
    assert errors["r68"].deg == pytest.approx(0.02 * np.sqrt(-2 * np.log(0.32)), rel=1e-9)
    assert errors["r95"].deg == pytest.approx(0.02 * 2.447746830680816, rel=1e-9)
    assert errors["r95"].deg / errors["r68"].deg == pytest.approx(1.6215, rel=1e-4)  # the HGPS ratio


def test_position_error_ellipse_contains_the_fraction():
    """Monte Carlo: the 68% / 95% ellipses contain 68% / 95% of positions drawn from the covariance, also at
    high latitude (lon offsets times cos(lat))."""
    spatial = _positioned(0.04, 0.01, rho=0.6, lat=60)
    errors = position_error(spatial)
    rng = np.random.default_rng(3)
    covariance = spatial.covariance.data[:2, :2]
    draws = rng.multivariate_normal([0, 0], covariance, size=200000)
    x, y = draws[:, 0] * np.cos(np.radians(60)), draws[:, 1]
    angle = np.radians(errors["position_angle"].deg)
    along = x * np.sin(angle) + y * np.cos(angle)
    across = x * np.cos(angle) - y * np.sin(angle)
    for level in ("68", "95"):
        a, b = errors[f"semi_major{level}"].deg, errors[f"semi_minor{level}"].deg
        inside = np.mean((along / a) ** 2 + (across / b) ** 2 <= 1)
        assert inside == pytest.approx(float(level) / 100, abs=0.005)
        assert errors[f"r{level}"].deg == pytest.approx(np.sqrt(a * b), rel=1e-9)


@pytest.mark.parametrize(
    "spatial, expected",
    [
        (GaussianSpatialModel(sigma="0.2 deg"), 0.2 * np.sqrt(-2 * np.log(0.32))),
        (DiskSpatialModel(r_0="0.3 deg", edge_width=1e-3), 0.3 * np.sqrt(0.68)),
        # eta = 0.5: exp(-(r / r_0)**2), a Gaussian with sigma = r_0 / sqrt(2)
        (GeneralizedGaussianSpatialModel(r_0="0.2 deg", eta=0.5), 0.2 / np.sqrt(2) * np.sqrt(-2 * np.log(0.32))),
        # thin shell of radius R: projected profile 1 / sqrt(R^2 - r^2), F(<r) = 1 - sqrt(1 - r^2 / R^2)
        (ShellSpatialModel(radius="0.5 deg", width="0.002 deg"), 0.501 * np.sqrt(1 - 0.32**2)),
        (PointSpatialModel(), 0.0),
    ],
)
def test_containment_radius_analytic(spatial, expected):
    assert containment_radius(spatial).deg == pytest.approx(expected, rel=2e-3, abs=1e-6)


def test_containment_radius_elongated_and_bad_input():
    elongated = GaussianSpatialModel(sigma="0.2 deg", e=0.8, phi="30 deg")
    minor = 0.2 * np.sqrt(1 - 0.8**2)
    r68 = containment_radius(elongated).deg
    assert minor * 1.5096 < r68 < 0.2 * 1.5096
    with pytest.raises(InputError, match="fraction"):
        containment_radius(GaussianSpatialModel(), fraction=1.5)


def test_significance():
    np.testing.assert_allclose(significance([25.0, -9.0, 0.0]), [5.0, -3.0, 0.0])
    np.testing.assert_allclose(significance([25.0, 16.0], sign=[-1e-12, 2.0]), [-5.0, 4.0])


def test_iau_names_truncate():
    positions = SkyCoord([266.41684, 154.74777, 10.0, 10.001], [-29.00781, -58.931763, -0.04, -0.04],
                         unit="deg", frame="fk5")
    names = iau_names(positions)
    # Sgr A*; RA 10h18.99m truncates to 1018 (rounding would give 1019); a declination just below 0
    assert names[0] == "CTA J1745-290"
    assert names[1] == "CTA J1018-589"
    assert names[2] == "CTA J0040-000 A" and names[3] == "CTA J0040-000 B"
    assert iau_names(SkyCoord(0, 0, unit="deg", frame="galactic"), prefix="HESS") == ["HESS J1745-289"]


def test_iau_names_reproduce_hgps(shared_data):
    """HGPS names come from truncated J2000 coordinates: truncating the catalogue positions by hand gives
    49 of the 78 names (rounding: 15); the others were named from earlier positions."""
    table = Table.read(shared_data("catalogs", "hgps_catalog_v1.fits.gz"), hdu=1)
    names = iau_names(SkyCoord(table["RAJ2000"], table["DEJ2000"], unit="deg", frame="fk5"), prefix="HESS")
    truth = [" ".join(str(name).split()[:2]) for name in table["Source_Name"]]
    same = sum(" ".join(name.split()[:2]) == t for name, t in zip(names, truth))
    assert same >= 45


def test_exposure_and_livetime_at_positions(small_survey):
    datasets, _ = small_survey
    dataset = datasets["postev"]
    geom = dataset.exposure.geom
    iy, ix, ie = 10, 20, 5
    center = geom.to_image().pix_to_coord((ix, iy))
    position = SkyCoord(center[0], center[1], frame="galactic")
    energy = geom.axes["energy_true"].center[ie]
    outside = SkyCoord(30, 0, unit="deg", frame="galactic")
    table = exposure_livetime(dataset, SkyCoord([position, outside]), energy_true=energy)
    expected = (dataset.exposure.data[ie, iy, ix] * dataset.exposure.unit).to_value("cm2 s")
    assert table["exposure"].unit == u.Unit("cm2 s")
    assert table["exposure"][0] == pytest.approx(expected, rel=1e-5)
    pointings = make_pointings(SkyCoord(0, 0, unit="deg", frame="galactic"), 3 * u.deg, 2 * u.deg,
                               PRESETS["postev"].offset_max)
    runs = SkyCoord(pointings["glon"], pointings["glat"], frame="galactic")
    n_within = int((runs.separation(position) < PRESETS["postev"].offset_max).sum())
    assert table["n_obs"][0] == n_within and table["livetime"][0] == pytest.approx(n_within * 1.0)
    assert table["outside"].tolist() == [False, True]
    assert np.isnan(table["exposure"][1]) and np.isnan(table["livetime"][1])


def _poisson_dataset(n_counts):
    """One energy bin, no background: the statistic in the amplitude is that of a Poisson mean A S."""
    energy = MapAxis.from_energy_bounds("1 TeV", "10 TeV", nbin=1, name="energy")
    energy_true = MapAxis.from_energy_bounds("0.5 TeV", "20 TeV", nbin=3, name="energy_true")
    geom = WcsGeom.create(skydir=(0, 0), frame="galactic", width=(0.5, 0.5), binsz=0.05, axes=[energy])
    dataset = MapDataset.create(geom, energy_axis_true=energy_true, name="poisson")
    dataset.exposure.data += 1e10
    dataset.mask_safe = Map.from_geom(geom, data=np.ones(geom.data_shape, dtype=bool))
    dataset.psf = PSFMap.from_gauss(energy_true, sigma="0.1 deg")
    source = SkyModel(spatial_model=PointSpatialModel(lon_0="0 deg", lat_0="0 deg", frame="galactic"),
                      spectral_model=PowerLawSpectralModel(amplitude="1e-12 cm-2 s-1 TeV-1"), name="src")
    for par in source.parameters:
        par.frozen = par.name != "amplitude"
    dataset.models = [source]
    dataset.counts.data[0, 5, 5] = n_counts
    per_amplitude = dataset.npred_signal().data.sum() / source.spectral_model.amplitude.value
    Fit().run([dataset])
    return dataset, source.spectral_model.amplitude, per_amplitude


def _poisson_interval(n_counts, n_sigma=1):
    """Means where 2 [(mu - n ln mu) - (n - n ln n)] = n_sigma**2, below and above n."""
    def rise(mu):
        return 2 * ((mu - n_counts * np.log(mu)) - (n_counts - n_counts * np.log(n_counts))) - n_sigma**2

    return (scipy.optimize.brentq(rise, 1e-9, n_counts), scipy.optimize.brentq(rise, n_counts, 10 * n_counts + 10))


def test_profile_errors_of_a_poisson_mean():
    dataset, amplitude, per_amplitude = _poisson_dataset(4)
    assert amplitude.value == pytest.approx(4 / per_amplitude, rel=1e-3)
    low, high = _poisson_interval(4)
    table = profile_errors([dataset], [amplitude])
    assert table["success"][0]
    assert table["errn"][0] == pytest.approx((4 - low) / per_amplitude, rel=1e-2)
    assert table["errp"][0] == pytest.approx((high - 4) / per_amplitude, rel=1e-2)
    check = covariance_check([dataset])
    assert check["reason"].tolist() == ["asymmetric"]
    robust = robust_errors([dataset])
    assert robust["method"][0] == "profile" and robust["errp"][0] == pytest.approx(table["errp"][0], rel=1e-6)


def test_profile_errors_agree_with_the_covariance_in_the_regular_case():
    dataset, amplitude, per_amplitude = _poisson_dataset(10000)
    assert amplitude.error == pytest.approx(100 / per_amplitude, rel=1e-2)
    table = profile_errors([dataset], [amplitude])
    assert table["errn"][0] == pytest.approx(amplitude.error, rel=2e-2)
    assert table["errp"][0] == pytest.approx(amplitude.error, rel=2e-2)
    robust = robust_errors([dataset])
    assert robust["reason"][0] == "" and robust["method"][0] == "covariance"
    assert robust["errp"][0] == pytest.approx(amplitude.error)


def test_covariance_check_bound_and_bad_covariance():
    dataset, amplitude, _ = _poisson_dataset(10000)
    amplitude.min = amplitude.value - 0.5 * amplitude.error
    assert covariance_check([dataset])["reason"].tolist() == ["bound"]
    amplitude.min = np.nan
    amplitude.error = 0.0
    assert covariance_check([dataset])["reason"].tolist() == ["covariance"]
    with pytest.raises(InputError, match="frozen"):
        index = dataset.models["src"].spectral_model.index
        profile_errors([dataset], [index])
