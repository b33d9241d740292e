import astropy.units as u
import numpy as np
import pytest
from astropy.coordinates import SkyCoord
from gammapy.irf import PSF3D, Background2D, EffectiveAreaTable2D, EnergyDispersion2D

from gpsfast.errors import InputError
from gpsfast.irf import load_irfs, make_cta_like_irfs


@pytest.fixture(scope="module")
def irfs():
    return make_cta_like_irfs()


def test_components(irfs):
    assert isinstance(irfs["aeff"], EffectiveAreaTable2D)
    assert isinstance(irfs["psf"], PSF3D)
    assert isinstance(irfs["edisp"], EnergyDispersion2D)
    assert isinstance(irfs["bkg"], Background2D)


def test_psf_containment(irfs):
    energy = [0.05, 1, 10, 100] * u.TeV
    r68 = irfs["psf"].containment_radius(0.68, energy_true=energy, offset=0.1 * u.deg).to_value("deg")
    assert r68[1] == pytest.approx(0.1, rel=0.03)
    assert np.all(np.diff(r68) < 0), "PSF must narrow with energy"
    assert r68[0] > 0.15 and r68[-1] < 0.05


def test_aeff_cta_like(irfs):
    aeff = irfs["aeff"]
    on_axis = aeff.evaluate(energy_true=[0.05, 1, 50] * u.TeV, offset=0 * u.deg).to_value("km2")
    assert 0.3 < on_axis[1] < 1.5
    assert on_axis[0] < 0.1 * on_axis[1] < on_axis[2]
    off_axis = aeff.evaluate(energy_true=1 * u.TeV, offset=[0, 2, 4] * u.deg).to_value("km2")
    assert off_axis[0] > off_axis[1] > off_axis[2]
    assert off_axis[2] / off_axis[0] < 0.5


def test_edisp_resolution(irfs):
    edisp = irfs["edisp"]
    migra = edisp.axes["migra"].center.to_value("")
    pdf = edisp.evaluate(energy_true=1 * u.TeV, migra=migra, offset=1 * u.deg).value.ravel()
    mean = np.sum(pdf * migra) / pdf.sum()
    sigma = np.sqrt(np.sum(pdf * (migra - mean) ** 2) / pdf.sum())
    assert mean == pytest.approx(1, abs=0.01)
    assert sigma == pytest.approx(0.1, rel=0.05)


def test_background_power_law(irfs):
    rate = irfs["bkg"].evaluate(energy=[2, 20] * u.TeV, offset=0.5 * u.deg).to_value("s-1 MeV-1 sr-1")
    index = -np.log10(rate[1] / rate[0])
    assert index == pytest.approx(2.7, abs=0.05)


@pytest.mark.parametrize(
    "parts",
    [
        ("irf", "Prod5-South-20deg-AverageAz-14MSTs37SSTs.180000s-v0.1.fits.gz"),
        ("irf", "Prod5-North-20deg-AverageAz-4LSTs09MSTs.180000s-v0.1.fits.gz"),
        ("irf", "cta-1dc-South_z20_50h-irf_file.fits"),
    ],
)
def test_load_real_irfs(parts, shared_data):
    irfs = load_irfs(shared_data(*parts))
    assert set(irfs) == {"aeff", "psf", "edisp", "bkg"}
    assert irfs["aeff"].evaluate(energy_true=1 * u.TeV, offset=0.5 * u.deg).to_value("m2") > 1e4


def test_load_missing_file(tmp_path):
    with pytest.raises(InputError, match="IRF file not found: .*nope.fits"):
        load_irfs(tmp_path / "nope.fits")


def test_load_not_fits(tmp_path):
    path = tmp_path / "irf.fits"
    path.write_text("not a fits file")
    with pytest.raises(InputError, match="Not a readable IRF FITS file"):
        load_irfs(path)


def test_load_fits_without_irfs(shared_data):
    path = shared_data("catalogs", "hgps_catalog_v1.fits.gz")
    with pytest.raises(InputError, match="lacks aeff, psf, edisp, bkg"):
        load_irfs(path)


def test_real_irfs_in_survey(patch_center, shared_data):
    from gpsfast.simulate import make_survey

    irf = shared_data("irf", "Prod5-South-20deg-AverageAz-14MSTs37SSTs.180000s-v0.1.fits.gz")
    datasets, _ = make_survey(width=2 * u.deg, height=2 * u.deg, presets="postev", seed=1, irf=irf)
    dataset = datasets["postev"]
    r68 = dataset.psf.containment_radius(0.68, energy_true=1 * u.TeV, position=patch_center)
    assert r68.to_value("deg") == pytest.approx(0.056, rel=0.2), "prod5 South PSF, not the analytic one"
    npred = dataset.npred().data.sum()  # the simulated sky (true models and background) the counts are drawn from
    assert abs(dataset.counts.data.sum() - npred) < 5 * np.sqrt(npred)
    assert SkyCoord(0, 0, unit="deg", frame="galactic").separation(dataset.counts.geom.center_skydir).deg < 0.05
