"""GammaLib conventions, each against GammaLib's formula written here independently of the converter.

Each test names the GammaLib C++ source the formula is read from (gammalib/gammalib,
``src/model/*.cpp``, ``src/sky/GSkyMap.cpp``); the expected values are computed
with numpy / astropy from that formula, never with gpsfast's own helpers.
"""
import math

import numpy as np
import pytest
import astropy.units as u
from astropy.coordinates import SkyCoord
from astropy.time import Time

from gpsfast.models import read_xml

RTOL = 1e-9


def par(name, value, scale=1.0, vmin=None, vmax=None, free=1):
    attrs = f'name="{name}" value="{value}" scale="{scale}" free="{free}"'
    attrs += "" if vmin is None else f' min="{vmin}"'
    attrs += "" if vmax is None else f' max="{vmax}"'
    return f"<parameter {attrs}/>"


PL = ('<spectrum type="PowerLaw">' + par("Prefactor", 1.0, 1e-16) + par("Index", -2.0)
      + par("PivotEnergy", 1.0, 1e6, free=0) + "</spectrum>")


def write_lib(folder, *sources, name="model.xml"):
    path = folder / name
    path.write_text('<?xml version="1.0"?>\n<source_library title="t">\n' + "\n".join(sources) + "\n</source_library>")
    return path


def source(spatial, spectrum=PL, temporal="", kind="ExtendedSource", name="Src"):
    return f'<source name="{name}" type="{kind}">{spectrum}{spatial}{temporal}</source>'


def radial(kind, *pars, lon=83.6331, lat=22.0145):
    return f'<spatialModel type="{kind}">' + par("RA", lon) + par("DEC", lat) + "".join(pars) + "</spatialModel>"


def points_around(lon, lat, radius_deg, n=2000, seed=4, frame="icrs"):
    """Random sky positions within ``radius_deg`` of the centre, and their separations (rad)."""
    rng = np.random.default_rng(seed)
    centre = SkyCoord(lon, lat, unit="deg", frame=frame)
    offsets = radius_deg * np.sqrt(rng.uniform(0, 1, n)) * u.deg
    pts = centre.directional_offset_by(rng.uniform(0, 360, n) * u.deg, offsets)
    return centre, pts, centre.separation(pts).rad


def evaluate(model, pts):
    c = pts.transform_to(model.spatial_model.frame)
    return model.spatial_model(c.data.lon, c.data.lat).to_value("sr-1")


# ----------------------------------------------------------------- GModelSpatialRadialRing.cpp


def test_radial_ring_is_radius_to_radius_plus_width(tmp_path):
    """theta_min = Radius, theta_max = Radius + Width; m_norm = 1 / (2 pi (cos r_i - cos r_o))."""
    model = read_xml(write_lib(tmp_path, source(radial("RadialRing", par("Radius", 0.3), par("Width", 0.2)))))[0]
    _, pts, theta = points_around(83.6331, 22.0145, 0.7)
    r_i, r_o = math.radians(0.3), math.radians(0.5)
    inside = (theta >= r_i) & (theta <= r_o)
    expected = np.where(inside, 1.0 / (2 * math.pi * (math.cos(r_i) - math.cos(r_o))), 0.0)
    assert inside.sum() > 100 and (theta < r_i).sum() > 100
    np.testing.assert_allclose(evaluate(model, pts), expected, rtol=RTOL)
    assert model.spatial_model.evaluation_radius.to_value("deg") == pytest.approx(0.5)


# ----------------------------------------------------------------- GModelSpatialEllipticalGeneralGauss.cpp


def test_elliptical_general_gaussian_cut_at_five_semi_major_axes(tmp_path):
    """eval: m_norm exp(-(theta/r_eff)^(1/eta)) for theta <= theta_max = c_theta_max (5) x semimajor, else 0;
    m_norm = 1 / (2 pi a b eta Gamma(2 eta)); PA east of north (small-angle r_eff)."""
    a_deg, b_deg, pa_deg, eta = 0.1, 0.06, 30.0, 1.0
    spatial = radial("EllipticalGeneralGaussian", par("PA", pa_deg), par("MinorRadius", b_deg),
                     par("MajorRadius", a_deg), par("R_Index", eta))
    model = read_xml(write_lib(tmp_path, source(spatial)))[0]
    centre, pts, theta = points_around(83.6331, 22.0145, 0.7)
    a, b, pa = math.radians(a_deg), math.radians(b_deg), math.radians(pa_deg)
    phi = centre.position_angle(pts).rad - pa
    r_eff = a * b / np.sqrt((b * np.cos(phi)) ** 2 + (a * np.sin(phi)) ** 2)
    norm = 1.0 / (2 * math.pi * a * b * eta * math.gamma(2 * eta))
    expected = np.where(theta <= 5 * a, norm * np.exp(-((theta / r_eff) ** (1 / eta))), 0.0)
    assert ((theta > 3 * a) & (theta <= 5 * a)).sum() > 100 and (theta > 5 * a).sum() > 100
    np.testing.assert_allclose(evaluate(model, pts), expected, rtol=RTOL, atol=1e-300)


def test_elliptical_general_gaussian_flux_within_five_axes(tmp_path):
    """Circular case: the flux kept is P(2 eta, 5^(1/eta)) (regularised lower incomplete gamma), 0.96 at eta=1."""
    from gammapy.maps import WcsGeom
    from scipy.special import gammainc

    spatial = radial("EllipticalGeneralGaussian", par("PA", 0.0), par("MinorRadius", 0.05), par("MajorRadius", 0.05),
                     par("R_Index", 1.0))
    model = read_xml(write_lib(tmp_path, source(spatial)))[0].spatial_model
    geom = WcsGeom.create(skydir=(83.6331, 22.0145), frame="icrs", binsz=0.004, width=0.6)
    total = model.integrate_geom(geom).data.sum()
    assert total == pytest.approx(gammainc(2.0, 5.0), rel=5e-3)
    assert gammainc(2.0, 5.0) - gammainc(2.0, 3.0) > 0.15  # what the old cut at 3 axes lost


# ----------------------------------------------------------------- GModelSpatialDiffuseMap.cpp, GSkyMap.cpp


def _gammalib_interpolate(image, x, y):
    """GSkyMap::operator()(GSkyDir) for one position, scalar, from the C++ (no wrap: the test map is small)."""
    ny, nx = image.shape
    if not (-0.5 <= x <= nx - 0.5 and -0.5 <= y <= ny - 0.5):
        return 0.0
    inx_x, inx_y = int(x), int(y)
    if x < 0.0:
        inx_x -= 1
    if y < 0.0:
        inx_y -= 1
    xl, xr = max(inx_x, 0), min(inx_x + 1, nx - 1)
    yl, yr = max(inx_y, 0), min(inx_y + 1, ny - 1)
    wxr, wyr = x - inx_x, y - inx_y
    wxl, wyl = 1.0 - wxr, 1.0 - wyr
    return (wxl * wyl * image[yl, xl] + wxl * wyr * image[yr, xl] + wxr * wyl * image[yl, xr]
            + wxr * wyr * image[yr, xr])


def _lhuilier(d1, d2, d3):
    """Spherical triangle area from its three sky directions (L'Huilier's theorem)."""
    a, b, c = d2.separation(d3).rad, d1.separation(d3).rad, d1.separation(d2).rad
    s = 0.5 * (a + b + c)
    t = math.tan(s / 2) * math.tan((s - a) / 2) * math.tan((s - b) / 2) * math.tan((s - c) / 2)
    return 4.0 * math.atan(math.sqrt(max(t, 0.0)))


def _gammalib_prepare(image, wcs, normalize):
    """GModelSpatialDiffuseMap::prepare_map with GSkyMap::flux, pixel by pixel as the C++ loops."""
    image = image.copy()
    ny, nx = image.shape

    def direction(x, y):
        lon, lat = wcs.wcs_pix2world([[x, y]], 0)[0]
        return SkyCoord(lon, lat, unit="deg", frame="galactic")

    total = 0.0
    for i in range(nx * ny):
        x, y = i % nx, i // nx
        offsets = [(-0.5, -0.5), (0, -0.5), (0.5, -0.5), (0.5, 0), (0.5, 0.5), (0, 0.5), (-0.5, 0.5), (-0.5, 0)]
        centre = direction(x, y)
        bounds = [direction(x + dx, y + dy) for dx, dy in offsets]
        i0 = _gammalib_interpolate(image, x, y)
        ib = [_gammalib_interpolate(image, x + dx, y + dy) for dx, dy in offsets]
        flux = sum((ib[k] + ib[(k + 1) % 8] + i0) / 3.0 * _lhuilier(bounds[k], bounds[(k + 1) % 8], centre)
                   for k in range(8))
        if not (flux >= 0.0) or math.isinf(flux):
            image[y, x] = 0.0
            flux = 0.0
        total += flux
    if normalize and total > 0:
        image /= total
    return image


@pytest.fixture
def odd_map(tmp_path):
    """A small CAR map at b = 40 deg (pixel solid angles vary by 20 %) with a negative and a NaN pixel."""
    from astropy.io import fits
    from astropy.wcs import WCS

    rng = np.random.default_rng(3)
    image = rng.uniform(0.5, 2.0, (7, 9))
    image[2, 3] = -4.0
    image[5, 6] = np.nan
    image[0, 8] = 0.0
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["GLON-CAR", "GLAT-CAR"]
    wcs.wcs.crval = [20.0, 0.0]
    wcs.wcs.crpix = [5.0, -76.0]
    wcs.wcs.cdelt = [-0.5, 0.5]
    fits.PrimaryHDU(image, header=wcs.to_header()).writeto(tmp_path / "map.fits")
    return tmp_path / "map.fits", image, wcs


@pytest.mark.parametrize("normalize", ["1", "0"])
def test_diffuse_map_as_gammalib(tmp_path, odd_map, normalize):
    """prepare_map (bad pixel fluxes zeroed in index order, normalised by the sum of GSkyMap::flux), bilinear
    interpolation with clamped edges, zero outside [-0.5, n-0.5], times Normalization."""
    path, image, wcs = odd_map
    spatial = (f'<spatialModel type="DiffuseMap" file="map.fits" normalize="{normalize}">'
               + par("Normalization", 2.5) + "</spatialModel>")
    model = read_xml(write_lib(tmp_path, source(spatial, kind="DiffuseSource")))[0]
    prepared = _gammalib_prepare(image, wcs, normalize == "1")
    assert prepared[2, 3] == 0 and prepared[5, 6] == 0
    assert prepared[5, 5] == 0  # its centre interpolates the NaN pixel on its right: GammaLib zeroes it too
    rng = np.random.default_rng(5)
    x = rng.uniform(-1.5, image.shape[1] + 0.5, 400)
    y = rng.uniform(-1.5, image.shape[0] + 0.5, 400)
    x[:9], y[:9] = np.arange(9.0), 3.0  # pixel centres
    lon, lat = wcs.wcs_pix2world(x, y, 0)
    expected = np.array([2.5 * _gammalib_interpolate(prepared, xi, yi) for xi, yi in zip(x, y)])
    got = model.spatial_model(lon * u.deg, lat * u.deg).to_value("sr-1")
    assert np.sum(expected == 0) > 20 and np.sum(expected > 0) > 200
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-12 * expected.max())
    assert model.spatial_model.norm.value == 2.5


def test_diffuse_map_round_trips(tmp_path, odd_map):
    """XML -> XML keeps Normalization and normalize="0"; YAML keeps them too (GModelSpatialDiffuseMap::write)."""
    from gammapy.modeling.models import Models

    from gpsfast.models import write_xml

    spatial = ('<spatialModel type="DiffuseMap" file="map.fits" normalize="0">'
               + par("Normalization", 2.5, vmin=0.1, vmax=10, free=1) + "</spatialModel>")
    models = read_xml(write_lib(tmp_path, source(spatial, kind="DiffuseSource")))
    write_xml(models, tmp_path / "again.xml")
    text = (tmp_path / "again.xml").read_text()
    assert 'normalize="0"' in text and 'name="Normalization" value="2.5"' in text
    models.write(tmp_path / "m.yaml", write_covariance=False)
    lon, lat = odd_map[2].wcs_pix2world(np.linspace(0, 8, 17), np.full(17, 2.5), 0)
    reference = models[0].spatial_model(lon * u.deg, lat * u.deg)
    for back in (read_xml(tmp_path / "again.xml"), Models.read(tmp_path / "m.yaml")):
        spatial_back = back[0].spatial_model
        assert type(spatial_back).__name__ == "GammaLibDiffuseMapSpatialModel" and not spatial_back.normalize
        assert (spatial_back.norm.value, spatial_back.norm.min, spatial_back.norm.frozen) == (2.5, 0.1, False)
        np.testing.assert_allclose(spatial_back(lon * u.deg, lat * u.deg), reference, rtol=1e-12)


# ----------------------------------------------------------------- GModelSpatialDiffuseCube.cpp, GNodeArray.cpp


def _gammalib_cube_intensity(cube, log10_emev, x, y, log10_e):
    """cube_intensity: GNodeArray weights on log10(E/MeV) (extrapolating), log-log between the two planes."""
    n = len(log10_emev)
    left = 0 if log10_e < log10_emev[0] else n - 2 if log10_e > log10_emev[-1] else max(
        k for k in range(n - 1) if log10_emev[k] <= log10_e)
    w_right = (log10_e - log10_emev[left]) / (log10_emev[left + 1] - log10_emev[left])
    w_left = 1.0 - w_right
    i_left = _gammalib_interpolate(cube[left], x, y)
    i_right = _gammalib_interpolate(cube[left + 1], x, y)
    if i_left > 0 and i_right > 0:
        return math.exp(w_left * math.log(i_left) + w_right * math.log(i_right))
    return i_left if i_left > 0 else i_right if i_right > 0 else 0.0


def test_map_cube_extrapolated_as_gammalib(tmp_path):
    """Inside and outside the cube's energy range (GammaLib extrapolates; gammapy's template gives 0)."""
    from astropy.io import fits
    from astropy.table import Table
    from astropy.wcs import WCS

    rng = np.random.default_rng(8)
    cube = rng.uniform(0.1, 1.0, (3, 5, 6)) * np.array([1.0, 0.2, 0.03])[:, None, None]
    cube[1, 2, 2] = 0.0
    cube[2, 0, :] = -1.0
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [83.6, 22.0]
    wcs.wcs.crpix = [3.5, 3.0]
    wcs.wcs.cdelt = [-0.2, 0.2]
    energies = Table({"Energy": [1.0, 3.0, 10.0]}, meta={"EXTNAME": "ENERGIES"})
    energies["Energy"].unit = "TeV"
    fits.HDUList([fits.PrimaryHDU(cube, header=wcs.to_header()), fits.table_to_hdu(energies)]).writeto(
        tmp_path / "cube.fits")
    spatial = '<spatialModel type="DiffuseMapCube" file="cube.fits">' + par("Normalization", 1.7) + "</spatialModel>"
    spectrum = '<spectrum type="Constant">' + par("Normalization", 1.0) + "</spectrum>"
    model = read_xml(write_lib(tmp_path, source(spatial, spectrum=spectrum, kind="DiffuseSource")))[0]
    nodes = np.log10([1e6, 3e6, 1e7])
    x = rng.uniform(-1.0, 6.0, 60)
    y = rng.uniform(-1.0, 5.0, 60)
    lon, lat = wcs.wcs_pix2world(x, y, 0)
    energy_tev = np.array([0.2, 1.0, 2.0, 3.0, 7.0, 10.0, 50.0])
    got = model.spatial_model(lon[None, :] * u.deg, lat[None, :] * u.deg,
                              energy=energy_tev[:, None] * u.TeV).to_value("cm-2 s-1 MeV-1 sr-1")
    expected = np.array([[1.7 * _gammalib_cube_intensity(cube, nodes, xi, yi, math.log10(e * 1e6))
                          for xi, yi in zip(x, y)] for e in energy_tev])
    assert np.all(expected[[0, -1]].max(axis=1) > 0)  # extrapolated below 1 TeV and above 10 TeV
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-15)
    assert model.spatial_model.norm.value == 1.7
    from gammapy.modeling.models import Models

    from gpsfast.models import write_xml

    write_xml([model], tmp_path / "again.xml")
    Models([model]).write(tmp_path / "m.yaml", write_covariance=False)
    for back in (read_xml(tmp_path / "again.xml")[0], Models.read(tmp_path / "m.yaml")[0]):
        assert type(back.spatial_model).__name__ == "GammaLibDiffuseCubeSpatialModel"
        again = back.spatial_model(lon[None, :] * u.deg, lat[None, :] * u.deg, energy=energy_tev[:, None] * u.TeV)
        np.testing.assert_allclose(again.to_value("cm-2 s-1 MeV-1 sr-1"), expected, rtol=1e-9, atol=1e-15)


# ----------------------------------------------------------------- GModelTemporalConst.cpp


def test_temporal_constant_normalization_folded(tmp_path):
    """GModelTemporalConst::eval returns m_norm (Normalization): it scales the source, not dropped."""
    from astropy.time import Time
    from gammapy.modeling.models import ConstantTemporalModel

    from gpsfast.models import write_xml

    gauss = radial("RadialGaussian", par("Sigma", 0.2))
    temporal = '<temporal type="Constant">' + par("Normalization", 0.5, free=1) + "</temporal>"
    plain = '<temporal type="Constant">' + par("Normalization", 1.0, free=0) + "</temporal>"
    models = read_xml(write_lib(tmp_path, source(gauss, temporal=temporal, name="half"),
                                source(gauss, temporal=plain, name="one")))
    times = Time([51544.5, 55000.0, 60000.0], format="mjd", scale="tt")
    np.testing.assert_array_equal(models["half"].temporal_model(times).to_value(""), [0.5, 0.5, 0.5])
    assert type(models["one"].temporal_model) is ConstantTemporalModel
    energy = [0.1, 1.0, 10.0] * u.TeV
    flux = models["half"].evaluate(83.7 * u.deg, 22.0 * u.deg, energy, time=times[:1])
    reference = models["one"].evaluate(83.7 * u.deg, 22.0 * u.deg, energy, time=times[:1])
    assert np.all(reference.value > 0)
    np.testing.assert_allclose(flux.value, 0.5 * reference.value, rtol=1e-12)
    write_xml(models, tmp_path / "again.xml")
    back = read_xml(tmp_path / "again.xml")
    assert back["half"].temporal_model.norm.value == 0.5 and not back["half"].temporal_model.norm.frozen


# ----------------------------------------------------------------- GModelSpectralPlawPhotonFlux.cpp, ...Plaw2.cpp


@pytest.mark.parametrize("kind,flux_name", [("PowerLaw", "PhotonFlux"), ("PowerLaw2", "Integral")])
@pytest.mark.parametrize("index", [-1.0, -2.3, -0.7])
def test_photon_flux_power_law_including_index_minus_one(tmp_path, kind, flux_name, index):
    """eval: F (g+1) / (Emax^(g+1) - Emin^(g+1)) E^g, and F / (ln Emax - ln Emin) E^-1 for g = -1 (MeV)."""
    spectrum = (f'<spectrum type="{kind}">' + par(flux_name, 3.0, 1e-9) + par("Index", index)
                + par("LowerLimit", 1e5, free=0) + par("UpperLimit", 1e8, free=0) + "</spectrum>")
    point = '<spatialModel type="PointSource">' + par("RA", 83.6331) + par("DEC", 22.0145) + "</spatialModel>"
    model = read_xml(write_lib(tmp_path, source(point, spectrum=spectrum, kind="PointSource")))[0].spectral_model
    e_mev = np.geomspace(1e4, 1e9, 23)
    if index == -1.0:
        expected = 3e-9 / (math.log(1e8) - math.log(1e5)) * e_mev**-1.0
        band = 3e-9 * (math.log(1e7) - math.log(1e6)) / (math.log(1e8) - math.log(1e5))
    else:
        g = index + 1.0
        expected = 3e-9 * g / (1e8**g - 1e5**g) * e_mev**index
        band = 3e-9 * (1e7**g - 1e6**g) / (1e8**g - 1e5**g)
    np.testing.assert_allclose(model(e_mev * u.MeV).to_value("cm-2 s-1 MeV-1"), expected, rtol=RTOL)
    assert model.integral(1 * u.TeV, 10 * u.TeV).to_value("cm-2 s-1") == pytest.approx(band, rel=1e-9)


def test_map_with_cunit_degrees(tmp_path, odd_map):
    """GammaLib reads CDELT/CRVAL in degrees whatever CUNIT says; wcslib refuses 'Degrees'."""
    from astropy.io import fits

    path, image, wcs = odd_map
    header = wcs.to_header()
    header["CUNIT1"], header["CUNIT2"] = "Degrees", "DEGREES"
    fits.PrimaryHDU(image, header=header).writeto(tmp_path / "degrees.fits")
    maps = [f'<spatialModel type="DiffuseMap" file="{name}">' + par("Normalization", 1.0) + "</spatialModel>"
            for name in ("map.fits", "degrees.fits")]
    models = read_xml(write_lib(tmp_path, source(maps[0], kind="DiffuseSource", name="deg"),
                                source(maps[1], kind="DiffuseSource", name="Degrees")))
    np.testing.assert_array_equal(models["Degrees"].spatial_model.map.data, models["deg"].spatial_model.map.data)
    header["CUNIT1"] = "arcmin"
    fits.PrimaryHDU(image, header=header).writeto(tmp_path / "arcmin.fits")
    with pytest.raises(Exception, match=r"arcmin\.fits: CUNIT1='arcmin': the sky axes of a GammaLib map are in deg"):
        read_xml(write_lib(tmp_path, source(maps[0].replace("map.fits", "arcmin.fits"), kind="DiffuseSource")))


# ----------------------------------------------------------------- FITS file names (GFits / cfitsio)


def test_gz_fallback_for_maps_cubes_and_curves(tmp_path, odd_map):
    """file="x.fits" reads x.fits.gz when x.fits is absent, as GammaLib's FITS layer does (the ctools test
    models name model_map.fits for model_map.fits.gz)."""
    import gzip
    import shutil

    from astropy.table import Table

    path, _, _ = odd_map
    Table({"TIME": [0.0, 100.0], "NORM": [1.0, 2.0]}, meta={"MJDREFI": 51544, "MJDREFF": 0.5}).write(
        tmp_path / "lc.fits")
    spatial = '<spatialModel type="DiffuseMap" file="map.fits">' + par("Normalization", 1.0) + "</spatialModel>"
    temporal = '<temporal type="LightCurve" file="lc.fits">' + par("Normalization", 1.0) + "</temporal>"
    library = source(spatial, temporal=temporal, kind="DiffuseSource")
    plain = read_xml(write_lib(tmp_path, library, name="plain.xml"))[0]
    for name in ("map.fits", "lc.fits"):
        with open(tmp_path / name, "rb") as raw, gzip.open(tmp_path / f"{name}.gz", "wb") as packed:
            shutil.copyfileobj(raw, packed)
        (tmp_path / name).unlink()
    model = read_xml(write_lib(tmp_path, library))[0]
    assert model.spatial_model.filename.endswith("map.fits.gz") and model.temporal_model.filename.endswith(".gz")
    # the same map and light curve as from the uncompressed files
    assert model.spatial_model.total_flux == plain.spatial_model.total_flux
    np.testing.assert_array_equal(model.spatial_model.map.data, plain.spatial_model.map.data)
    times = Time(51544.5 + np.array([0.0, 50.0, 100.0]) / 86400, format="mjd", scale="tt")
    np.testing.assert_array_equal(model.temporal_model(times), plain.temporal_model(times))


# ----------------------------------------------------------------- GModelSpatialRadialProfile(Gauss).cpp


def test_gaussian_profile_tabulated_as_gammalib(tmp_path):
    """profile_value = exp(-t^2/2s^2)/(2 pi s^2) on nodes j*dr (j < 100, dr = 5 sigma / 100), normalised by
    2 pi sum(value sin(r) dr), interpolated linearly (extrapolated past the last node), negative -> 0."""
    sigma_deg = 0.3
    model = read_xml(write_lib(tmp_path, source(radial("GaussianProfile", par("Sigma", sigma_deg)))))[0]
    _, pts, theta = points_around(83.6331, 22.0145, 1.8)
    s = math.radians(sigma_deg)
    dr = 5 * s / 100
    nodes = [j * dr for j in range(100)]
    values = [math.exp(-0.5 * r * r / (s * s)) / (2 * math.pi * s * s) for r in nodes]
    norm = 2 * math.pi * sum(v * math.sin(r) * dr for v, r in zip(values, nodes))
    values = [v / norm for v in values]

    def gammalib(t):
        left = min(int(t / dr), 98)
        w = (t - nodes[left]) / dr
        return max((1 - w) * values[left] + w * values[left + 1], 0.0)

    expected = np.array([gammalib(t) for t in theta])
    assert np.sum(theta > 99 * dr) > 50 and np.sum(expected == 0) > 10  # extrapolated, then clipped
    np.testing.assert_allclose(evaluate(model, pts), expected, rtol=RTOL, atol=1e-300)
    from gpsfast.models import write_xml

    write_xml([model], tmp_path / "again.xml")
    assert 'type="GaussianProfile"' in (tmp_path / "again.xml").read_text()
    np.testing.assert_allclose(evaluate(read_xml(tmp_path / "again.xml")[0], pts), expected, rtol=RTOL, atol=1e-300)


def test_gammapy_template_written_with_normalize(tmp_path, odd_map):
    """A gammapy TemplateSpatialModel that is not normalised keeps normalize="0" in the XML written."""
    from gammapy.modeling.models import PowerLawSpectralModel, SkyModel, TemplateSpatialModel

    from gpsfast.models import write_xml

    path, _, _ = odd_map
    for normalize, expected in ((False, 'normalize="0"'), (True, None)):
        template = TemplateSpatialModel.read(str(path), normalize=normalize)
        write_xml([SkyModel(PowerLawSpectralModel(), template, name="t")], tmp_path / "t.xml", overwrite=True)
        text = (tmp_path / "t.xml").read_text()
        assert (expected in text) if expected else ("normalize" not in text)
        assert read_xml(tmp_path / "t.xml")[0].spatial_model.normalize is normalize


# ----------------------------------------------------------------- writing (GModelSpectralSuperExpPlaw::write)


def test_super_exponential_cutoff_written_as_such(tmp_path):
    """Index2 = 1 fixed with bounds stays a SuperExponentialCutoffPowerLaw (type, Index2 and its bounds)."""
    from gammapy.modeling.models import ExpCutoffPowerLawSpectralModel, PointSpatialModel, SkyModel

    from gpsfast.models import write_xml

    spectrum = ('<spectrum type="SuperExponentialCutoffPowerLaw">' + par("Prefactor", 1.0, 1e-16)
                + par("Index1", -2.0) + par("CutoffEnergy", 1.0, 1e6) + par("PivotEnergy", 1.0, 1e6, free=0)
                + par("Index2", 1.0, 1, 0.5, 2.0, free=0) + "</spectrum>")
    point = '<spatialModel type="PointSource">' + par("RA", 83.6331) + par("DEC", 22.0145) + "</spatialModel>"
    models = read_xml(write_lib(tmp_path, source(point, spectrum=spectrum, kind="PointSource")))
    plain = SkyModel(ExpCutoffPowerLawSpectralModel(), PointSpatialModel(), name="plain")
    write_xml(list(models) + [plain], tmp_path / "again.xml")
    text = (tmp_path / "again.xml").read_text()
    assert text.count('type="SuperExponentialCutoffPowerLaw"') == 1 and 'type="ExponentialCutoffPowerLaw"' in text
    back = read_xml(tmp_path / "again.xml")
    alpha = back["Src"].spectral_model.alpha
    assert (alpha.value, alpha.min, alpha.max, alpha.frozen) == (1.0, 0.5, 2.0, True)
    energy = np.geomspace(0.1, 100, 7) * u.TeV
    np.testing.assert_allclose(back["Src"].spectral_model(energy).value, models["Src"].spectral_model(energy).value,
                               rtol=1e-12)


def test_cta_background_written_without_observation_id(tmp_path):
    """GammaLib applies a model with id="X" to observation X only: no id is invented from the dataset name."""
    import xml.etree.ElementTree as ET

    from gammapy.modeling.models import FoVBackgroundModel

    from gpsfast.models import write_xml

    write_xml([FoVBackgroundModel(dataset_name="stacked")], tmp_path / "bkg.xml")
    [src] = ET.parse(tmp_path / "bkg.xml").getroot().findall("source")
    assert src.get("name") == "stacked" and src.get("type") == "CTAIrfBackground" and src.get("id") is None
    assert read_xml(tmp_path / "bkg.xml")[0].datasets_names == ["stacked"]
