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
    pts = centre.directional_offset_by(rng.uniform(0, 360, n) * u.deg, radius_deg * np.sqrt(rng.uniform(0, 1, n)) * u.deg)
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
