"""ctools / GammaLib XML <-> gammapy models: formulas, conventions, round trips, bad input.

The reference values are written here from GammaLib's documented formulas
(GModelSpectral*, GModelSpatial*, GModelTemporalPhaseCurve), in GammaLib's
units (MeV, cm, s, rad), independently of the converter.
"""
import math
from pathlib import Path

import numpy as np
import pytest
import astropy.units as u
from astropy.coordinates import SkyCoord
from astropy.time import Time
from astropy.table import Table
from gammapy.modeling.models import Models, SkyModel

from gpsfast.errors import InputError
from gpsfast.models import read_xml, read_xml_detailed, write_xml
from gpsfast.models.spatial import north_rotation

DATA = Path(__file__).parent / "data" / "models"
ERG_TO_MEV = 624150.9074460763
RTOL = 1e-9
E_MEV = np.geomspace(30.0, 3e8, 57)  # 30 MeV .. 300 TeV


def xml_source(spectrum, spatial=None, temporal="", name="Src", kind="PointSource"):
    if spatial is None:
        spatial = (
            '<spatialModel type="PointSource">'
            '<parameter name="RA" value="83.6331" scale="1" min="-360" max="360" free="0"/>'
            '<parameter name="DEC" value="22.0145" scale="1" min="-90" max="90" free="0"/>'
            "</spatialModel>"
        )
    return f'<source name="{name}" type="{kind}">{spectrum}{spatial}{temporal}</source>'


def write_lib(tmp_path, *sources, name="model.xml"):
    path = tmp_path / name
    path.write_text('<?xml version="1.0"?>\n<source_library title="t">' + "".join(sources) + "</source_library>")
    return path


def par(name, value, scale=1.0, vmin=None, vmax=None, free=1, error=None):
    attrs = f'name="{name}" value="{value}" scale="{scale}" free="{free}"'
    if vmin is not None:
        attrs += f' min="{vmin}"'
    if vmax is not None:
        attrs += f' max="{vmax}"'
    if error is not None:
        attrs += f' error="{error}"'
    return f"<parameter {attrs}/>"


def spec(kind, *pars, extra=""):
    return f'<spectrum type="{kind}" {extra}>' + "".join(pars) + "</spectrum>"


def dnde_mev(tmp_path, spectrum):
    """gammapy dN/dE of the converted model, in ph/cm2/s/MeV at E_MEV."""
    model = read_xml(write_lib(tmp_path, xml_source(spectrum)))[0]
    return model.spectral_model(E_MEV * u.MeV).to_value("cm-2 s-1 MeV-1")


# ----------------------------------------------------------------- spectral formulas


def test_powerlaw(tmp_path):
    s = spec("PowerLaw", par("Prefactor", 5.7, 1e-16), par("Index", 2.48, -1), par("PivotEnergy", 0.3, 1e6, free=0))
    expected = 5.7e-16 * (E_MEV / 0.3e6) ** (-2.48)
    np.testing.assert_allclose(dnde_mev(tmp_path, s), expected, rtol=RTOL)


def test_powerlaw_legacy_scale_name(tmp_path):
    s = spec("PowerLaw", par("Prefactor", 1.73, 1e-7), par("Index", -2.1), par("Scale", 100.0, free=0))
    np.testing.assert_allclose(dnde_mev(tmp_path, s), 1.73e-7 * (E_MEV / 100.0) ** -2.1, rtol=RTOL)


@pytest.mark.parametrize("kind,fluxname", [("PowerLaw", "PhotonFlux"), ("PowerLaw2", "Integral")])
def test_powerlaw_photon_flux(tmp_path, kind, fluxname):
    s = spec(kind, par(fluxname, 1.0, 1e-7), par("Index", -2.3), par("LowerLimit", 100.0, free=0),
             par("UpperLimit", 5e5, free=0))
    g = -2.3
    expected = 1e-7 * (g + 1) * E_MEV**g / (5e5 ** (g + 1) - 100.0 ** (g + 1))
    np.testing.assert_allclose(dnde_mev(tmp_path, s), expected, rtol=RTOL)


def test_powerlaw_energy_flux(tmp_path):
    s = spec("PowerLaw", par("EnergyFlux", 1.0, 1e-7), par("Index", -2.3), par("LowerLimit", 100.0, free=0),
             par("UpperLimit", 5e5, free=0))
    g = -2.3
    expected = 1e-7 * ERG_TO_MEV * (g + 2) * E_MEV**g / (5e5 ** (g + 2) - 100.0 ** (g + 2))
    np.testing.assert_allclose(dnde_mev(tmp_path, s), expected, rtol=RTOL)


def test_powerlaw_energy_flux_index_two(tmp_path):
    s = spec("PowerLaw", par("EnergyFlux", 2.0, 1e-7), par("Index", -2.0), par("LowerLimit", 100.0, free=0),
             par("UpperLimit", 5e5, free=0))
    expected = 2e-7 * ERG_TO_MEV / math.log(5e5 / 100.0) * E_MEV**-2.0
    np.testing.assert_allclose(dnde_mev(tmp_path, s), expected, rtol=RTOL)


@pytest.mark.parametrize("kind,cutname", [("ExponentialCutoffPowerLaw", "CutoffEnergy"), ("ExpCutoff", "Cutoff")])
def test_exp_cutoff(tmp_path, kind, cutname):
    s = spec(kind, par("Prefactor", 5.7, 1e-16), par("Index", 2.48, -1), par(cutname, 1.0, 1e6),
             par("PivotEnergy", 0.3, 1e6, free=0))
    expected = 5.7e-16 * (E_MEV / 0.3e6) ** -2.48 * np.exp(-E_MEV / 1e6)
    np.testing.assert_allclose(dnde_mev(tmp_path, s), expected, rtol=RTOL)


def test_exp_cutoff_inverse(tmp_path):
    s = spec("ExponentialCutoffPowerLaw", par("Prefactor", 5.7, 1e-16), par("Index", 2.48, -1),
             par("InverseCutoffEnergy", 2.0, 1e-6, 0.0, 100.0), par("PivotEnergy", 0.3, 1e6, free=0))
    expected = 5.7e-16 * (E_MEV / 0.3e6) ** -2.48 * np.exp(-E_MEV * 2e-6)
    np.testing.assert_allclose(dnde_mev(tmp_path, s), expected, rtol=RTOL)


@pytest.mark.parametrize("kind,cut,pivot", [("SuperExponentialCutoffPowerLaw", "CutoffEnergy", "PivotEnergy"),
                                            ("PLSuperExpCutoff", "Cutoff", "Scale")])
def test_super_exp_cutoff(tmp_path, kind, cut, pivot):
    s = spec(kind, par("Prefactor", 1.0, 1e-16), par("Index1", 2.0, -1), par(cut, 1.0, 1e6),
             par(pivot, 1.0, 1e6, free=0), par("Index2", 1.5))
    expected = 1e-16 * (E_MEV / 1e6) ** -2.0 * np.exp(-((E_MEV / 1e6) ** 1.5))
    np.testing.assert_allclose(dnde_mev(tmp_path, s), expected, rtol=RTOL)


def test_broken_powerlaw(tmp_path):
    s = spec("BrokenPowerLaw", par("Prefactor", 5.7, 1e-16), par("Index1", 2.48, -1),
             par("BreakEnergy", 0.3, 1e6), par("Index2", 2.70, -1))
    index = np.where(E_MEV < 0.3e6, -2.48, -2.70)
    np.testing.assert_allclose(dnde_mev(tmp_path, s), 5.7e-16 * (E_MEV / 0.3e6) ** index, rtol=RTOL)


@pytest.mark.parametrize("i1,i2", [(2.48, 2.70), (2.70, 2.1)])
def test_smooth_broken_powerlaw(tmp_path, i1, i2):
    """Both a softening and a hardening break (gammapy's own class flips beta's sign for the latter)."""
    s = spec("SmoothBrokenPowerLaw", par("Prefactor", 5.7, 1e-16), par("Index1", i1, -1),
             par("PivotEnergy", 1.0, 1e6, free=0), par("Index2", i2, -1), par("BreakEnergy", 0.3, 1e6),
             par("BreakSmoothness", 0.2))
    g1, g2, beta = -i1, -i2, 0.2
    expected = 5.7e-16 * (E_MEV / 1e6) ** g1 * (1 + (E_MEV / 0.3e6) ** ((g1 - g2) / beta)) ** -beta
    np.testing.assert_allclose(dnde_mev(tmp_path, s), expected, rtol=RTOL)


def test_smooth_broken_powerlaw_legacy(tmp_path):
    s = spec("SmoothBrokenPowerLaw", par("Prefactor", 5.7, 1e-16), par("Index1", 2.48, -1),
             par("Scale", 1.0, 1e6, free=0), par("Index2", 2.7, -1), par("BreakValue", 0.3, 1e6), par("Beta", 0.2))
    expected = 5.7e-16 * (E_MEV / 1e6) ** -2.48 * (1 + (E_MEV / 0.3e6) ** ((-2.48 + 2.7) / 0.2)) ** -0.2
    np.testing.assert_allclose(dnde_mev(tmp_path, s), expected, rtol=RTOL)


def test_log_parabola(tmp_path):
    s = spec("LogParabola", par("Prefactor", 5.878, 1e-17), par("Index", 2.32473, -1),
             par("Curvature", 0.074, -1, -5, 5), par("PivotEnergy", 1.0, 1e6, free=0))
    x = E_MEV / 1e6
    expected = 5.878e-17 * x ** (-2.32473 - 0.074 * np.log(x))
    np.testing.assert_allclose(dnde_mev(tmp_path, s), expected, rtol=RTOL)
    model = read_xml(write_lib(tmp_path, xml_source(s)))[0].spectral_model
    assert model.alpha.value == pytest.approx(2.32473) and model.beta.value == pytest.approx(0.074)


def test_log_parabola_legacy(tmp_path):
    s = spec("LogParabola", par("norm", 5.878, 1e-17), par("alpha", 2.32473), par("beta", 0.074),
             par("Eb", 1.0, 1e6, free=0))
    x = E_MEV / 1e6
    np.testing.assert_allclose(dnde_mev(tmp_path, s), 5.878e-17 * x ** (-2.32473 - 0.074 * np.log(x)), rtol=RTOL)


def test_gaussian_line(tmp_path):
    s = spec("Gaussian", par("Normalization", 1.0, 1e-10), par("Mean", 5.0, 1e6), par("Sigma", 1.0, 1e6))
    e = np.linspace(1e6, 9e6, 41)
    model = read_xml(write_lib(tmp_path, xml_source(s)))[0].spectral_model
    got = model(e * u.MeV).to_value("cm-2 s-1 MeV-1")
    expected = 1e-10 / (math.sqrt(2 * math.pi) * 1e6) * np.exp(-0.5 * ((e - 5e6) / 1e6) ** 2)
    np.testing.assert_allclose(got, expected, rtol=RTOL)


@pytest.mark.parametrize("kind,name", [("Constant", "Normalization"), ("ConstantValue", "Value")])
def test_constant(tmp_path, kind, name):
    s = spec(kind, par(name, 5.7, 1e-16))
    np.testing.assert_allclose(dnde_mev(tmp_path, s), np.full(E_MEV.shape, 5.7e-16), rtol=RTOL)


def _nodes(*nodes):
    return "".join(
        f"<node>{par('Energy', e, 1.0, free=0)}{par('Intensity', i, 1e-7)}</node>" for e, i in nodes
    )


def test_node_function_extrapolates(tmp_path):
    s = '<spectrum type="NodeFunction">' + _nodes((1e3, 1.0), (1e5, 0.1), (1e6, 0.02)) + "</spectrum>"
    le, li = np.log10([1e3, 1e5, 1e6]), np.log10([1e-7, 1e-8, 2e-9])
    x = np.log10(E_MEV)
    seg = np.clip(np.searchsorted(le, x, side="right") - 1, 0, 1)  # first/last segment beyond the nodes
    slope = (li[seg + 1] - li[seg]) / (le[seg + 1] - le[seg])
    expected = 10 ** (li[seg] + slope * (x - le[seg]))
    np.testing.assert_allclose(dnde_mev(tmp_path, s), expected, rtol=RTOL)


def test_node_function_single_node_is_constant(tmp_path):
    s = '<spectrum type="NodeFunction">' + _nodes((1e5, 3.0)) + "</spectrum>"
    np.testing.assert_allclose(dnde_mev(tmp_path, s), np.full(E_MEV.shape, 3e-7), rtol=RTOL)


def test_bin_function(tmp_path):
    bins = "".join(
        f"<bin>{par('LowerLimit', lo, free=0)}{par('UpperLimit', hi, free=0)}{par('Intensity', i, 1e-7)}</bin>"
        for lo, hi, i in ((1e3, 1e4, 1.0), (1e4, 3e5, 0.5), (1e6, 1e7, 0.1))
    )
    s = f'<spectrum type="BinFunction">{par("Index", 2.48, -1, 0, 5)}{bins}</spectrum>'
    expected = np.zeros_like(E_MEV)
    for lo, hi, i in ((1e3, 1e4, 1e-7), (1e4, 3e5, 0.5e-7), (1e6, 1e7, 0.1e-7)):
        inside = (E_MEV >= lo) & (E_MEV < hi)
        expected[inside] = i * (E_MEV[inside] / math.sqrt(lo * hi)) ** -2.48
    assert np.any(expected == 0)  # the gap between 3e5 and 1e6 MeV and outside all bins
    np.testing.assert_allclose(dnde_mev(tmp_path, s), expected, rtol=RTOL)


def test_file_function(tmp_path):
    (tmp_path / "ff.txt").write_text((DATA / "filefunction.txt").read_text())
    s = spec("FileFunction", par("Normalization", 2.0), extra='file="ff.txt"')
    le, li = np.log10([1e5, 1e6, 1e7]), np.log10([1e-10, 2e-12, 1e-14])
    x = np.log10(E_MEV)
    seg = np.clip(np.searchsorted(le, x, side="right") - 1, 0, 1)
    slope = (li[seg + 1] - li[seg]) / (le[seg + 1] - le[seg])
    expected = 2.0 * 10 ** (li[seg] + slope * (x - le[seg]))
    np.testing.assert_allclose(dnde_mev(tmp_path, s), expected, rtol=RTOL)


def test_composite_and_multiplicative(tmp_path):
    pl1 = spec("PowerLaw", par("Prefactor", 3, 1e-17), par("Index", 3.5, -1), par("PivotEnergy", 1, 1e6, free=0))
    pl2 = spec("PowerLaw", par("Prefactor", 5, 1e-17), par("Index", 2.0, -1), par("PivotEnergy", 1, 1e6, free=0))
    comp = f'<spectrum type="Composite">{pl1}{pl2}</spectrum>'
    x = E_MEV / 1e6
    np.testing.assert_allclose(dnde_mev(tmp_path, comp), 3e-17 * x**-3.5 + 5e-17 * x**-2.0, rtol=RTOL)
    cut = spec("ExponentialCutoffPowerLaw", par("Prefactor", 1.0, free=0), par("Index", 0.0, free=0),
               par("CutoffEnergy", 1.0, 1e6), par("PivotEnergy", 1.0, 1e6, free=0))
    mult = f'<spectrum type="Multiplicative">{pl1}{cut}</spectrum>'
    np.testing.assert_allclose(dnde_mev(tmp_path, mult), 3e-17 * x**-3.5 * np.exp(-E_MEV / 1e6), rtol=RTOL)


def test_exponential(tmp_path):
    inner = spec("Constant", par("Normalization", 3.5, -10.0, 0.0, 1000.0))
    s = f'<spectrum type="Exponential">{inner}</spectrum>'
    np.testing.assert_allclose(dnde_mev(tmp_path, s), np.full(E_MEV.shape, math.exp(-35.0)), rtol=RTOL)


# ----------------------------------------------------------------- parameter conventions


def test_scale_min_max_error_free(tmp_path):
    s = spec("PowerLaw", par("Prefactor", 5.7, 1e-16, 1e-7, 1000.0, error=0.2),
             par("Index", 2.48, -1, 0.0, 5.0, free=1, error=0.05), par("PivotEnergy", 0.3, 1e6, 0.01, 1000.0, free=0))
    m = read_xml(write_lib(tmp_path, xml_source(s)))[0].spectral_model
    # value x scale, converted from ph/cm2/s/MeV to ph/cm2/s/TeV
    assert m.amplitude.unit == u.Unit("cm-2 s-1 TeV-1")
    assert m.amplitude.value == pytest.approx(5.7e-10, rel=1e-12)
    assert m.amplitude.error == pytest.approx(0.2e-10, rel=1e-12)
    assert (m.amplitude.min, m.amplitude.max) == pytest.approx((1e-17, 1e-7), rel=1e-12)
    # GammaLib index = -2.48 in [-5, 0] (min/max swap with scale -1); gammapy's index is its negative
    assert m.index.value == pytest.approx(2.48)
    assert (m.index.min, m.index.max) == (0.0, 5.0)
    assert m.index.error == pytest.approx(0.05)
    assert not m.index.frozen and m.reference.frozen
    assert m.reference.quantity.to_value("TeV") == pytest.approx(0.3)


def test_negative_scale_swaps_min_max(tmp_path):
    inner = spec("Constant", par("Normalization", 3.5, -10.0, 1.0, 1000.0, error=0.5))
    s = f'<spectrum type="Exponential">{inner}</spectrum>'
    const = read_xml(write_lib(tmp_path, xml_source(s)))[0].spectral_model.model.const
    assert const.value == -35.0
    assert (const.min, const.max) == (-10000.0, -10.0)
    assert const.error == 5.0


def test_cutoff_reciprocal_limits(tmp_path):
    s = spec("ExponentialCutoffPowerLaw", par("Prefactor", 1, 1e-16), par("Index", 2, -1),
             par("CutoffEnergy", 2.0, 1e6, 0.5, 100.0, error=0.1), par("PivotEnergy", 1, 1e6, free=0))
    m = read_xml(write_lib(tmp_path, xml_source(s)))[0].spectral_model
    assert m.lambda_.value == pytest.approx(0.5)  # 1 / (2 TeV)
    assert (m.lambda_.min, m.lambda_.max) == pytest.approx((0.01, 2.0))
    assert m.lambda_.error == pytest.approx(0.1 / 4.0)


# ----------------------------------------------------------------- spatial formulas


def _sky_points(lon0, lat0, frame, radius_deg, n=400, seed=1):
    rng = np.random.default_rng(seed)
    centre = SkyCoord(lon0, lat0, unit="deg", frame=frame)
    sep = radius_deg * np.sqrt(rng.uniform(0, 1, n))
    pa = rng.uniform(0, 360, n)
    return centre.directional_offset_by(pa * u.deg, sep * u.deg)


def _eval_spatial(model, points):
    coords = points.transform_to(model.frame)
    return model.spatial_model(coords.data.lon, coords.data.lat).to_value("sr-1")


def _spatial_xml(kind, *pars_, pos=("RA", 83.6331, "DEC", 22.0145)):
    return (f'<spatialModel type="{kind}">' + par(pos[0], pos[1]) + par(pos[2], pos[3]) + "".join(pars_)
            + "</spatialModel>")


PL = spec("PowerLaw", par("Prefactor", 1, 1e-16), par("Index", 2, -1), par("PivotEnergy", 1, 1e6, free=0))


def _read_spatial(tmp_path, spatial, kind="ExtendedSource"):
    return read_xml(write_lib(tmp_path, xml_source(PL, spatial, kind=kind)))[0]


def test_point_source_position(tmp_path):
    m = _read_spatial(tmp_path, _spatial_xml("SkyDirFunction"), kind="PointSource")
    assert m.spatial_model.tag[0] == "PointSpatialModel"
    assert m.spatial_model.position.separation(SkyCoord(83.6331, 22.0145, unit="deg")).arcsec < 1e-6
    g = _read_spatial(tmp_path, _spatial_xml("PointSource", pos=("GLON", 10.5, "GLAT", -0.3)), kind="PointSource")
    assert g.spatial_model.frame == "galactic" and g.spatial_model.lon_0.value == 10.5


@pytest.mark.parametrize("kind", ["RadialDisk", "DiskFunction"])
def test_radial_disk_hard_edge(tmp_path, kind):
    m = _read_spatial(tmp_path, _spatial_xml(kind, par("Radius", 0.45)))
    pts = _sky_points(83.6331, 22.0145, "icrs", 0.9)
    theta = pts.separation(SkyCoord(83.6331, 22.0145, unit="deg")).rad
    r = math.radians(0.45)
    expected = np.where(theta <= r, 1 / (2 * np.pi * (1 - np.cos(r))), 0.0)
    np.testing.assert_allclose(_eval_spatial(m, pts), expected, rtol=RTOL)


@pytest.mark.parametrize("kind", ["RadialGaussian", "GaussFunction"])
def test_radial_gaussian(tmp_path, kind):
    m = _read_spatial(tmp_path, _spatial_xml(kind, par("Sigma", 0.2)))
    pts = _sky_points(83.6331, 22.0145, "icrs", 1.5)
    theta = pts.separation(SkyCoord(83.6331, 22.0145, unit="deg")).rad
    s = math.radians(0.2)
    np.testing.assert_allclose(_eval_spatial(m, pts), np.exp(-0.5 * theta**2 / s**2) / (2 * np.pi * s**2), rtol=RTOL)


@pytest.mark.parametrize("kind", ["RadialShell", "ShellFunction"])
def test_radial_shell(tmp_path, kind):
    m = _read_spatial(tmp_path, _spatial_xml(kind, par("Radius", 0.3), par("Width", 0.1)))
    pts = _sky_points(83.6331, 22.0145, "icrs", 0.6)
    theta = pts.separation(SkyCoord(83.6331, 22.0145, unit="deg")).rad
    t_in, t_out = math.radians(0.3), math.radians(0.4)

    def f1(x):
        return math.sqrt(1 - math.cos(2 * x))

    def f2(x):
        return (1 + math.cos(2 * x)) / 4 * math.log(math.sqrt(2) * math.cos(x) / (math.sqrt(2) + f1(x)))

    norm = 1 / (2 * math.pi * ((f1(t_out) - f1(t_in)) / (2 * math.sqrt(2)) + f2(t_out) - f2(t_in)))
    x = np.sin(theta) ** 2
    xo, xi = math.sin(t_out) ** 2, math.sin(t_in) ** 2
    expected = np.zeros_like(theta)
    for k, xk in enumerate(x):
        if xk < xo:
            expected[k] = math.sqrt(xo - xk) - (math.sqrt(xi - xk) if xk < xi else 0.0)
    np.testing.assert_allclose(_eval_spatial(m, pts), norm * expected, rtol=RTOL, atol=1e-12 * norm)


def test_radial_ring(tmp_path):
    """GModelSpatialRadialRing: inner radius Radius, outer radius Radius + Width."""
    m = _read_spatial(tmp_path, _spatial_xml("RadialRing", par("Radius", 0.45), par("Width", 0.15)))
    pts = _sky_points(83.6331, 22.0145, "icrs", 0.8)
    theta = pts.separation(SkyCoord(83.6331, 22.0145, unit="deg")).rad
    r_o, r_i = math.radians(0.60), math.radians(0.45)
    expected = np.where((theta >= r_i) & (theta <= r_o), 1 / (2 * np.pi * (np.cos(r_i) - np.cos(r_o))), 0.0)
    np.testing.assert_allclose(_eval_spatial(m, pts), expected, rtol=RTOL)


def test_radial_general_gaussian(tmp_path):
    m = _read_spatial(tmp_path, _spatial_xml("RadialGeneralGaussian", par("Radius", 0.2), par("R_Index", 0.3)))
    pts = _sky_points(83.6331, 22.0145, "icrs", 1.5)
    theta = pts.separation(SkyCoord(83.6331, 22.0145, unit="deg")).rad
    r, eta = math.radians(0.2), 0.3
    expected = np.exp(-((theta / r) ** (1 / eta))) / (2 * np.pi * r * r * eta * math.gamma(2 * eta))
    # atol only absorbs subnormal numbers far in the tail
    np.testing.assert_allclose(_eval_spatial(m, pts), expected, rtol=RTOL, atol=1e-250)


def test_spatial_composite(tmp_path):
    """Scale-weighted mean of the components (GModelSpatialComposite)."""
    spatial = ('<spatialModel type="Composite">'
               + _spatial_xml("RadialGaussian", par("Sigma", 0.2)).replace("<spatialModel ", '<spatialModel component="g" ')
               + _spatial_xml("RadialDisk", par("Radius", 0.3), pos=("RA", 83.7, "DEC", 22.1)).replace(
                   "<spatialModel ", '<spatialModel scale="3.0" ')
               + "</spatialModel>")
    m = _read_spatial(tmp_path, spatial, kind="CompositeSource")
    assert m.spatial_model.names == ["g", "2"]
    pts = _sky_points(83.6331, 22.0145, "icrs", 0.8)
    t1 = pts.separation(SkyCoord(83.6331, 22.0145, unit="deg")).rad
    t2 = pts.separation(SkyCoord(83.7, 22.1, unit="deg")).rad
    s, r = math.radians(0.2), math.radians(0.3)
    gauss = np.exp(-0.5 * t1**2 / s**2) / (2 * np.pi * s**2)
    disk = np.where(t2 <= r, 1 / (2 * np.pi * (1 - np.cos(r))), 0.0)
    np.testing.assert_allclose(_eval_spatial(m, pts), (1.0 * gauss + 3.0 * disk) / 4.0, rtol=RTOL)


def _celestial_pa(centre, points):
    """Position angle of the points seen from the centre, east of celestial north (rad)."""
    return centre.icrs.position_angle(points.icrs).rad


@pytest.mark.parametrize("frame", ["icrs", "galactic"])
@pytest.mark.parametrize("kind", ["EllipticalDisk", "EllipticalGaussian", "EllipticalGauss",
                                  "EllipticalGeneralGaussian"])
def test_elliptical_models(tmp_path, kind, frame):
    """PA is east of celestial north also for a GLON/GLAT centre; Gaussian cut at 3 r_eff, general at 5 a."""
    lon0, lat0 = (83.6331, 22.0145) if frame == "icrs" else (184.5575, -5.7843)
    names = ("RA", lon0, "DEC", lat0) if frame == "icrs" else ("GLON", lon0, "GLAT", lat0)
    a_deg, b_deg, pa_deg = 0.3, 0.1, 45.0
    extra = par("R_Index", 0.7) if kind == "EllipticalGeneralGaussian" else ""
    m = _read_spatial(tmp_path, _spatial_xml(kind, par("PA", pa_deg, vmin=-360, vmax=360),
                                             par("MinorRadius", b_deg), par("MajorRadius", a_deg), extra, pos=names))
    centre = SkyCoord(lon0, lat0, unit="deg", frame=frame)
    pts = _sky_points(lon0, lat0, frame, 1.8, n=600)
    theta = centre.separation(pts).rad
    phi = _celestial_pa(centre, pts)
    a, b, pa = math.radians(a_deg), math.radians(b_deg), math.radians(pa_deg)
    r_eff = a * b / np.sqrt((b * np.cos(phi - pa)) ** 2 + (a * np.sin(phi - pa)) ** 2)
    if kind == "EllipticalDisk":
        norm = 1 / (2 * math.pi * math.sqrt((1 - math.cos(a)) * (1 - math.cos(b))))
        expected = np.where(theta <= r_eff, norm, 0.0)
    elif kind == "EllipticalGeneralGaussian":
        norm = 1 / (2 * math.pi * a * b * 0.7 * math.gamma(1.4))
        expected = np.where(theta <= 5 * a, norm * np.exp(-((theta / r_eff) ** (1 / 0.7))), 0.0)
    else:
        norm = 1 / (2 * math.pi * a * b * (1 - math.exp(-4.5)))
        expo = 0.5 * (theta / r_eff) ** 2
        expected = np.where(expo <= 4.5, norm * np.exp(-expo), 0.0)
    assert np.any(expected == 0) and np.any(expected > 0)
    np.testing.assert_allclose(_eval_spatial(m, pts), expected, rtol=RTOL, atol=1e-250)
    assert m.spatial_model.r_0.value == pytest.approx(a_deg)
    assert m.spatial_model.e.value == pytest.approx(math.sqrt(1 - (b_deg / a_deg) ** 2))


def test_galactic_ellipse_angle_is_rotated(tmp_path):
    spatial = _spatial_xml("EllipticalDisk", par("PA", 30.0), par("MinorRadius", 0.1), par("MajorRadius", 0.3),
                           pos=("GLON", 10.0, "GLAT", 0.0))
    m = _read_spatial(tmp_path, spatial).spatial_model
    rotation = north_rotation(10 * u.deg, 0 * u.deg, "galactic").deg
    assert abs(rotation) > 10  # galactic and celestial north differ a lot there
    assert m.phi.value == pytest.approx(30.0 - rotation)


def test_diffuse_isotropic(tmp_path):
    m = _read_spatial(tmp_path, '<spatialModel type="DiffuseIsotropic">' + par("Value", 2.0) + "</spatialModel>",
                      kind="DiffuseSource")
    assert m.spatial_model.value.quantity == 2.0 * u.Unit("sr-1")


# ----------------------------------------------------------------- temporal


def _phase_source(tmp_path, normalize=True):
    (tmp_path / "pc.fits").write_bytes((DATA / "phasecurve.fits").read_bytes())
    temporal = (f'<temporal type="PhaseCurve" file="pc.fits" normalize="{int(normalize)}">'
                + par("Normalization", 2.0, free=0) + par("MJD", 51544.5, free=0) + par("Phase", 0.1, free=0)
                + par("F0", 0.01) + par("F1", 1e-6) + par("F2", 1e-10) + "</temporal>")
    return read_xml(write_lib(tmp_path, xml_source(PL, temporal=temporal)))[0]


@pytest.mark.parametrize("normalize", [True, False])
def test_phase_curve_tt(tmp_path, normalize):
    model = _phase_source(tmp_path, normalize).temporal_model
    assert model.scale == "tt"
    # GammaLib: nodes (0.1,.2) (.3,1) (.5,.5) (.8,.3), wrapped periodically, mean normalised to 1
    xs = np.array([0.8 - 1, 0.1, 0.3, 0.5, 0.8, 1.1])
    ys = np.array([0.3, 0.2, 1.0, 0.5, 0.3, 0.2])
    grid = np.linspace(0, 1, 200001)
    scale = 1 / np.trapezoid(np.interp(grid, xs, ys), grid) if normalize else 1.0
    t_mjd = 51544.5 + np.linspace(0.0, 3.0, 37)
    times = Time(t_mjd, format="mjd", scale="tt")
    dt = (t_mjd - 51544.5) * 86400.0
    phase = 0.1 + dt * (0.01 + dt * (0.5 * 1e-6 + 1e-10 * dt / 6.0))
    phase -= np.floor(phase)
    expected = 2.0 * scale * np.interp(phase, xs, ys)
    np.testing.assert_allclose(model(times).to_value(""), expected, rtol=1e-7)
    # the same instants given in UTC are converted, not taken as TT
    np.testing.assert_allclose(model(times.utc).to_value(""), expected, rtol=1e-7)


def test_light_curve(tmp_path):
    table = Table({"TIME": [100.0, 200.0, 500.0], "NORM": [0.0, 1.0, 0.5]})
    table.meta.update(MJDREFI=51544, MJDREFF=0.5, TIMESYS="TT", TIMEUNIT="s")
    table.write(tmp_path / "lc.fits")
    temporal = '<temporal type="LightCurve" file="lc.fits">' + par("Normalization", 3.0, free=0) + "</temporal>"
    model = read_xml(write_lib(tmp_path, xml_source(PL, temporal=temporal)))[0].temporal_model
    secs = np.array([50.0, 100.0, 150.0, 350.0, 500.0, 600.0])
    times = Time(51544.5 + secs / 86400.0, format="mjd", scale="tt")
    expected = 3.0 * np.where((secs >= 100) & (secs <= 500), np.interp(secs, [100, 200, 500], [0, 1, 0.5]), 0.0)
    np.testing.assert_allclose(model(times).to_value(""), expected, rtol=1e-7, atol=1e-9)


# ----------------------------------------------------------------- backgrounds


def test_cta_backgrounds(tmp_path):
    bkg = ('<source name="Bkg" type="CTAIrfBackground" instrument="CTA" id="obs1">'
           + spec("PowerLaw", par("Prefactor", 1.1, vmin=0.01, vmax=100), par("Index", 0.2),
                  par("PivotEnergy", 1.0, 1e6, free=0))
           + "</source>"
           + '<source name="Cube" type="CTACubeBackground" instrument="CTA">'
           + spec("Constant", par("Normalization", 0.9)) + "</source>"
           + '<source name="Acc" type="RadialAcceptance" instrument="CTA">'
           + spec("Constant", par("Normalization", 1.0)) + "</source>")
    result = read_xml_detailed(write_lib(tmp_path, bkg))
    assert [m.tag[0] for m in result.models] == ["FoVBackgroundModel", "FoVBackgroundModel"]
    first = result.models[0]
    assert first.datasets_names == ["obs1"]
    assert first.spectral_model.norm.value == 1.1 and first.spectral_model.tilt.value == pytest.approx(-0.2)
    assert result.skipped == ["Acc"]
    assert any("'Acc'" in w and "RadialAcceptance" in w for w in result.warnings)


# ----------------------------------------------------------------- round trips


def _assert_same_parameters(models1, models2, rtol=1e-12):
    assert [m.name for m in models1] == [m.name for m in models2]
    for m1, m2 in zip(models1, models2):
        p1, p2 = m1.parameters, m2.parameters
        assert p1.names == p2.names, m1.name
        for a, b in zip(p1, p2):
            for key in ("value", "error", "min", "max"):
                va, vb = getattr(a, key), getattr(b, key)
                assert np.isclose(va, vb, rtol=rtol, atol=0, equal_nan=True), (m1.name, a.name, key, va, vb)
            assert a.frozen == b.frozen, (m1.name, a.name)
            assert u.Unit(a.unit) == u.Unit(b.unit), (m1.name, a.name)


ALL_KINDS_SOURCES = [
    xml_source(spec("PowerLaw", par("Prefactor", 5.7, 1e-16, 1e-7, 1e3, error=0.3), par("Index", 2.48, -1, 0, 5),
                    par("PivotEnergy", 0.3, 1e6, 0.01, 1e3, free=0)), name="pl"),
    xml_source(spec("PowerLaw", par("PhotonFlux", 1.0, 1e-7, 1e-7, 1e3), par("Index", -2.0, 1, -5, 5),
                    par("LowerLimit", 100.0, 1, 10, 1e6, free=0), par("UpperLimit", 5e5, 1, 10, 1e6, free=0)),
               name="phflux"),
    xml_source(spec("PowerLaw", par("EnergyFlux", 1.0, 1e-7, 1e-7, 1e3), par("Index", -2.0, 1, -5, 5),
                    par("LowerLimit", 100.0, free=0), par("UpperLimit", 5e5, free=0)), name="eflux"),
    xml_source(spec("ExponentialCutoffPowerLaw", par("Prefactor", 5.7, 1e-16), par("Index", 2.48, -1),
                    par("CutoffEnergy", 1.0, 1e6, 0.01, 1000, error=0.1), par("PivotEnergy", 0.3, 1e6, free=0)),
               _spatial_xml("RadialDisk", par("Radius", 0.45, 1, 0.01, 10)), name="ecpl", kind="ExtendedSource"),
    xml_source(spec("SuperExponentialCutoffPowerLaw", par("Prefactor", 1.0, 1e-16), par("Index1", 2.0, -1),
                    par("CutoffEnergy", 1.0, 1e6), par("PivotEnergy", 1.0, 1e6, free=0), par("Index2", 1.5, 1, 0.1, 5)),
               _spatial_xml("RadialGaussian", par("Sigma", 0.2, 1, 0.01, 10, error=0.01)), name="secpl",
               kind="ExtendedSource"),
    xml_source(spec("BrokenPowerLaw", par("Prefactor", 5.7, 1e-16), par("Index1", 2.48, -1),
                    par("BreakEnergy", 0.3, 1e6), par("Index2", 2.70, -1)),
               _spatial_xml("RadialShell", par("Radius", 0.3), par("Width", 0.1)), name="bpl", kind="ExtendedSource"),
    xml_source(spec("SmoothBrokenPowerLaw", par("Prefactor", 5.7, 1e-16), par("Index1", 2.48, -1),
                    par("PivotEnergy", 1.0, 1e6, free=0), par("Index2", 2.70, -1), par("BreakEnergy", 0.3, 1e6),
                    par("BreakSmoothness", 0.2, 1, 0.01, 10)),
               _spatial_xml("EllipticalDisk", par("PA", 45.0, 1, -360, 360), par("MinorRadius", 0.5),
                            par("MajorRadius", 2.0), pos=("GLON", 10.0, "GLAT", 0.5)),
               name="sbpl", kind="ExtendedSource"),
    xml_source(spec("LogParabola", par("Prefactor", 5.878, 1e-17), par("Index", 2.32473, -1),
                    par("Curvature", 0.074, -1, -5, 5), par("PivotEnergy", 1.0, 1e6, free=0)),
               _spatial_xml("EllipticalGaussian", par("PA", 45.0, 1, -360, 360), par("MinorRadius", 0.1),
                            par("MajorRadius", 0.3)), name="lp", kind="ExtendedSource"),
    xml_source(spec("Gaussian", par("Normalization", 1.0, 1e-10), par("Mean", 5.0, 1e6), par("Sigma", 1.0, 1e6)),
               _spatial_xml("RadialRing", par("Radius", 0.45), par("Width", 0.15)), name="line",
               kind="ExtendedSource"),
    xml_source(PL, _spatial_xml("RadialGeneralGaussian", par("Radius", 0.2), par("R_Index", 0.3, 1, 0.01, 10)),
               name="rgg", kind="ExtendedSource"),
    xml_source(PL, _spatial_xml("EllipticalGeneralGaussian", par("PA", 45.0), par("MinorRadius", 0.1),
                                par("MajorRadius", 0.3), par("R_Index", 0.7)), name="egg", kind="ExtendedSource"),
    xml_source(spec("Constant", par("Normalization", 5.7, 1e-16)),
               '<spatialModel type="Composite">' + _spatial_xml("PointSource").replace(
                   "<spatialModel ", '<spatialModel component="core" ')
               + _spatial_xml("RadialGaussian", par("Sigma", 0.2)).replace(
                   "<spatialModel ", '<spatialModel component="halo" scale="2.5" free_scale="1" ')
               + "</spatialModel>", name="const", kind="CompositeSource"),
    xml_source('<spectrum type="NodeFunction">' + _nodes((1e3, 1.0), (1e5, 0.1)) + "</spectrum>", name="nodes"),
    xml_source('<spectrum type="BinFunction">' + par("Index", 2.0, -1, 0, 5) + "".join(
        f"<bin>{par('LowerLimit', lo, free=0)}{par('UpperLimit', hi, free=0)}{par('Intensity', 1.0, 1e-7)}</bin>"
        for lo, hi in ((1e3, 1e4), (1e4, 1e5))) + "</spectrum>", name="bins"),
    xml_source('<spectrum type="Composite">' + spec("PowerLaw", par("Prefactor", 3, 1e-17), par("Index", 3.5, -1),
               par("PivotEnergy", 1, 1e6, free=0)) + spec("LogParabola", par("Prefactor", 5.878, 1e-17),
               par("Index", 2.3, -1), par("Curvature", 0.07, -1), par("PivotEnergy", 1.0, 1e6, free=0))
               + "</spectrum>", name="composite"),
]


def _sources_with_files(tmp_path):
    """Sources whose models read files (copied into ``tmp_path``), plus products and backgrounds."""
    (tmp_path / "pc.fits").write_bytes((DATA / "phasecurve.fits").read_bytes())
    (tmp_path / "ff.txt").write_text((DATA / "filefunction.txt").read_text())
    table = Table({"TIME": [100.0, 200.0, 500.0], "NORM": [0.0, 1.0, 0.5]})
    table.meta.update(MJDREFI=51544, MJDREFF=0.5, TIMESYS="TT", TIMEUNIT="s")
    table.write(tmp_path / "lc.fits")
    cut = spec("ExponentialCutoffPowerLaw", par("Prefactor", 1.0, free=0), par("Index", 0.0, free=0),
               par("CutoffEnergy", 1.0, 1e6, 0.1, 100), par("PivotEnergy", 1.0, 1e6, free=0))
    return [
        xml_source(spec("FileFunction", par("Normalization", 2.0, 1, 0, 10), extra='file="ff.txt"'), name="ff"),
        xml_source('<spectrum type="Exponential">' + spec("Constant", par("Normalization", 3.5, -10.0, 0, 1000))
                   + "</spectrum>", name="expo"),
        xml_source(f'<spectrum type="Multiplicative">{PL}{cut}</spectrum>', name="mult"),
        xml_source(PL, temporal='<temporal type="PhaseCurve" file="pc.fits">' + par("Normalization", 1.0, free=0)
                   + par("MJD", 51544.5, free=0) + par("Phase", 0.0, free=0) + par("F0", 1.0) + par("F1", 0.1)
                   + par("F2", 0.01) + "</temporal>", name="pulsar"),
        xml_source(PL, temporal='<temporal type="LightCurve" file="lc.fits">'
                   + par("Normalization", 2.0, 1, 0, 10, free=1) + "</temporal>", name="flare"),
        '<source name="bkg" type="CTAIrfBackground" instrument="CTA" id="bkg">'
        + spec("PowerLaw", par("Prefactor", 1.1, 1, 0.01, 100, error=0.02), par("Index", 0.2, 1, -5, 5),
               par("PivotEnergy", 1.0, 1e6, free=0)) + "</source>",
    ]


def test_xml_gammapy_xml_round_trip(tmp_path):
    sources = ALL_KINDS_SOURCES + _sources_with_files(tmp_path)
    models = read_xml(write_lib(tmp_path, *sources))
    assert len(models) == len(sources)
    write_xml(models, tmp_path / "again.xml")
    again = read_xml(tmp_path / "again.xml")
    _assert_same_parameters(models, again)
    energy = np.geomspace(0.01, 100, 11) * u.TeV
    for m1, m2 in zip(models, again):
        assert type(m1.spectral_model) is type(m2.spectral_model)
        np.testing.assert_allclose(m1.spectral_model(energy).value, m2.spectral_model(energy).value, rtol=1e-12)
        if isinstance(m1, SkyModel):
            assert type(m1.spatial_model) is type(m2.spatial_model)
            assert type(m1.temporal_model) is type(m2.temporal_model)
    # files next to the XML are written as bare names, as GammaLib does
    assert 'file="ff.txt"' in (tmp_path / "again.xml").read_text()


def test_write_xml_refuses_overwrite(tmp_path):
    models = read_xml(write_lib(tmp_path, ALL_KINDS_SOURCES[0]))
    write_xml(models, tmp_path / "out.xml")
    with pytest.raises(InputError, match="exists"):
        write_xml(models, tmp_path / "out.xml")
    write_xml(models, tmp_path / "out.xml", overwrite=True)


def test_yaml_round_trip_custom_classes(tmp_path):
    models = read_xml(write_lib(tmp_path, *ALL_KINDS_SOURCES, *_sources_with_files(tmp_path)))
    models.write(tmp_path / "m.yaml", write_covariance=False)
    again = Models.read(tmp_path / "m.yaml")
    _assert_same_parameters(models, again)
    energy = np.geomspace(0.01, 100, 11) * u.TeV
    for m1, m2 in zip(models, again):
        assert type(m1.spectral_model) is type(m2.spectral_model)
        assert type(m1.spatial_model) is type(m2.spatial_model)
        np.testing.assert_allclose(m1.spectral_model(energy).value, m2.spectral_model(energy).value, rtol=1e-12)
    assert again["pulsar"].temporal_model.scale == "tt"
    times = Time(51544.5 + np.linspace(0, 0.01, 7), format="mjd", scale="tt")
    for name in ("pulsar", "flare"):
        np.testing.assert_allclose(again[name].temporal_model(times).value, models[name].temporal_model(times).value)


# ----------------------------------------------------------------- bad input


def test_malformed_xml_gives_line(tmp_path):
    path = tmp_path / "bad.xml"
    path.write_text('<?xml version="1.0"?>\n<source_library>\n  <source name="a"" type="PointSource">\n</source_library>')
    with pytest.raises(InputError, match=r"bad\.xml:3:\d+: malformed XML"):
        read_xml(path)


def test_unknown_type_lists_supported(tmp_path):
    path = write_lib(tmp_path, xml_source(spec("Banana", par("Prefactor", 1.0))))
    with pytest.raises(InputError) as info:
        read_xml(path)
    msg = str(info.value)
    assert "'Banana'" in msg and "'Src'" in msg and "PowerLaw" in msg and "LogParabola" in msg


def test_missing_parameter(tmp_path):
    path = write_lib(tmp_path, xml_source(spec("PowerLaw", par("Prefactor", 1.0, 1e-16), par("Index", 2, -1))))
    with pytest.raises(InputError, match="missing parameter 'PivotEnergy' or 'Scale'"):
        read_xml(path)


def test_min_larger_than_max(tmp_path):
    path = write_lib(tmp_path, xml_source(spec("Constant", par("Normalization", 1.0, 1e-16, 10, 1))))
    with pytest.raises(InputError, match="'Normalization': min=10 is larger than max=1"):
        read_xml(path)


@pytest.mark.parametrize("kind", ["FileFunction", "DiffuseMap", "PhaseCurve", "LightCurve"])
def test_missing_file_names_resolved_path(tmp_path, kind):
    """A bare file name is looked up in the XML file's folder (GammaLib's xml_file_expand)."""
    if kind == "FileFunction":
        src = xml_source(spec("FileFunction", par("Normalization", 1.0), extra='file="none.txt"'))
    elif kind == "DiffuseMap":
        src = xml_source(PL, '<spatialModel type="DiffuseMap" file="none.txt">' + par("Normalization", 1.0)
                         + "</spatialModel>", kind="DiffuseSource")
    else:
        src = xml_source(PL, temporal=f'<temporal type="{kind}" file="none.txt">'
                         + par("Normalization", 1.0) + "</temporal>")
    folder = tmp_path / "models"
    folder.mkdir()
    path = write_lib(folder, src)
    with pytest.raises(InputError) as info:
        read_xml(path)
    msg = str(info.value)
    assert str(folder / "none.txt") in msg and kind in msg and "XML file's folder" in msg


def test_file_with_folder_is_relative_to_the_xml_folder_or_allowed(tmp_path, monkeypatch):
    """A name with a folder part: in the XML file's folder, then the allowed folders ("." = GammaLib's rule)."""
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "ff.txt").write_text((DATA / "filefunction.txt").read_text())
    folder = tmp_path / "models"
    folder.mkdir()
    path = write_lib(folder, xml_source(spec("FileFunction", par("Normalization", 1.0), extra='file="sub/ff.txt"')))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError, match=r"'sub/ff.txt' not found in the XML file's folder: .*models/sub/ff\.txt"):
        read_xml(path)
    assert read_xml(path, allowed_dirs=["."])[0].spectral_model.energy.size == 3
    model = read_xml(path, allowed_dirs=[tmp_path])[0]
    # written back elsewhere: the path is kept absolute, read back when its folder is allowed
    write_xml([model], folder / "out.xml")
    monkeypatch.chdir(folder)
    with pytest.raises(InputError, match="outside the allowed folders"):
        read_xml(folder / "out.xml")
    assert read_xml(folder / "out.xml", allowed_dirs=[tmp_path / "sub"])[0].spectral_model.filename.endswith("ff.txt")


def test_environment_variable_in_file_name(tmp_path, monkeypatch):
    """Expanded only when asked; the error without expansion never shows the variable's value."""
    (tmp_path / "ff.txt").write_text((DATA / "filefunction.txt").read_text())
    monkeypatch.setenv("GPSFAST_TEST_DATA", str(tmp_path))
    sub = tmp_path / "xml"
    sub.mkdir()
    src = xml_source(spec("FileFunction", par("Normalization", 1.0), extra='file="$GPSFAST_TEST_DATA/ff.txt"'))
    path = write_lib(sub, src)
    with pytest.raises(InputError, match="environment variable, which is not expanded") as info:
        read_xml(path)
    assert str(tmp_path / "ff.txt") not in str(info.value)
    with pytest.raises(InputError, match="outside the allowed folders"):
        read_xml(path, expand_env=True)
    assert read_xml(path, expand_env=True, allowed_dirs=[tmp_path])[0].spectral_model.energy.size == 3
    gammalib_style = write_lib(tmp_path, src.replace("$GPSFAST_TEST_DATA", "$(GPSFAST_TEST_DATA)"), name="g.xml")
    assert read_xml(gammalib_style, expand_env=True)[0].spectral_model.energy.size == 3


def test_entity_expansion_bomb_rejected(tmp_path):
    path = tmp_path / "bomb.xml"
    path.write_text('<?xml version="1.0"?>\n<!DOCTYPE lolz [<!ENTITY lol "lol">'
                    '<!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">]>\n'
                    '<source_library><source name="&lol2;" type="PointSource"/></source_library>')
    with pytest.raises(InputError, match="entity"):
        read_xml(path)


def test_external_entity_rejected(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("secret")
    path = tmp_path / "ext.xml"
    path.write_text(f'<?xml version="1.0"?>\n<!DOCTYPE x [<!ENTITY ext SYSTEM "file://{secret}">]>\n'
                    '<source_library><source name="&ext;" type="PointSource"/></source_library>')
    with pytest.raises(InputError) as info:
        read_xml(path)
    assert "secret" not in str(info.value).replace(str(secret), "")


def test_empty_source_name(tmp_path):
    with pytest.raises(InputError, match="empty or missing name"):
        read_xml(write_lib(tmp_path, xml_source(PL, name="")))


def test_duplicate_names(tmp_path):
    with pytest.raises(InputError, match=r"model\.xml:2: source 'a' duplicate source name \(first at line 2\)"):
        read_xml(write_lib(tmp_path, xml_source(PL, name="a"), xml_source(PL, name="a")))


def test_not_a_model_file(tmp_path):
    path = tmp_path / "obs.xml"
    path.write_text("<observation_list/>")
    with pytest.raises(InputError, match="expected <source_library>"):
        read_xml(path)


def test_gammapy_model_without_xml_equivalent(tmp_path):
    from gammapy.modeling.models import (
        ConstantFluxSpatialModel,
        PiecewiseNormSpectralModel,
        PointSpatialModel,
        PowerLawSpectralModel,
    )

    model = SkyModel(PowerLawSpectralModel(), ConstantFluxSpatialModel(), name="g")
    with pytest.raises(InputError, match="'g'.*ConstantFluxSpatialModel"):
        write_xml([model], tmp_path / "x.xml")
    norm = PiecewiseNormSpectralModel(energy=[1, 10] * u.TeV)
    model = SkyModel(PowerLawSpectralModel() * norm, PointSpatialModel(), name="p")
    with pytest.raises(InputError, match="'p'.*PiecewiseNormSpectralModel"):
        write_xml([model], tmp_path / "x.xml")
    assert not (tmp_path / "x.xml").exists()


def test_native_gammapy_models_written_with_warnings(tmp_path):
    from gammapy.modeling.models import (
        DiskSpatialModel,
        GaussianSpatialModel,
        PowerLawSpectralModel,
        ShellSpatialModel,
        SmoothBrokenPowerLawSpectralModel,
    )

    models = [
        SkyModel(SmoothBrokenPowerLawSpectralModel(index1=2.5, index2=2.0, beta=0.5),
                 DiskSpatialModel(lon_0="10 deg", lat_0="0.2 deg", r_0="0.2 deg", e=0.5, phi="30 deg",
                                  frame="galactic"), name="disk"),
        SkyModel(PowerLawSpectralModel(), GaussianSpatialModel(sigma="0.2 deg"), name="gauss"),
        SkyModel(PowerLawSpectralModel(), ShellSpatialModel(radius="0.3 deg", width="0.1 deg"), name="shell"),
    ]
    notes = write_xml(models, tmp_path / "n.xml")
    assert any("'disk'" in n and "edge_width" in n for n in notes)
    assert any("'disk'" in n and "beta" in n for n in notes)
    assert any("'gauss'" in n and "GaussianSpatialModel" in n for n in notes)
    assert any("'shell'" in n and "RadialShell" in n for n in notes)
    back = read_xml(tmp_path / "n.xml")
    # a hardening smooth break: gammapy's beta sign flip is carried exactly into GammaLib's beta
    energy = np.geomspace(0.01, 300, 50) * u.TeV
    np.testing.assert_allclose(back["disk"].spectral_model(energy).value,
                               models[0].spectral_model(energy).value, rtol=1e-12)
    disk = back["disk"].spatial_model
    assert (disk.r_0.value, disk.e.value, disk.phi.value) == pytest.approx((0.2, 0.5, 30.0), rel=1e-12)
    assert back["gauss"].spatial_model.sigma.value == pytest.approx(0.2)


@pytest.mark.parametrize("content,message", [
    ("1e5 1e-10\n", "at least two rows"),
    ("1e5 1e-10\n1e6 -2e-12\n", "must be positive"),
    ("1e6 1e-10\n1e5 2e-12\n", "increase strictly"),
    ("1e5 1e-10\n1e6 abc\n", r"ff\.txt:2: FileFunction line needs two numbers"),
])
def test_bad_file_function_table(tmp_path, content, message):
    (tmp_path / "ff.txt").write_text(content)
    path = write_lib(tmp_path, xml_source(spec("FileFunction", par("Normalization", 1.0), extra='file="ff.txt"')))
    with pytest.raises(InputError, match=message):
        read_xml(path)


def test_node_function_needs_increasing_energies(tmp_path):
    s = '<spectrum type="NodeFunction">' + _nodes((1e5, 1.0), (1e3, 0.1)) + "</spectrum>"
    with pytest.raises(InputError, match="'Src'.*increase strictly"):
        read_xml(write_lib(tmp_path, xml_source(s)))


def test_parameter_value_not_a_number(tmp_path):
    s = spec("Constant", '<parameter name="Normalization" value="1.0x" scale="1" free="1"/>')
    with pytest.raises(InputError, match="'Normalization': value='1.0x' is not a number"):
        read_xml(write_lib(tmp_path, xml_source(s)))


def test_zero_scale(tmp_path):
    with pytest.raises(InputError, match="'Normalization': scale=0 must be a finite non-zero number"):
        read_xml(write_lib(tmp_path, xml_source(spec("Constant", par("Normalization", 1.0, 0)))))


def test_missing_value_attribute(tmp_path):
    s = spec("Constant", '<parameter name="Normalization" scale="1" free="1"/>')
    with pytest.raises(InputError, match="'Src'.*'Normalization' has no 'value' attribute"):
        read_xml(write_lib(tmp_path, xml_source(s)))


@pytest.mark.parametrize("spatial", [
    _spatial_xml("RadialDisk", par("Radius", 0.45)),
    _spatial_xml("RadialGaussian", par("Sigma", 0.2)),
    _spatial_xml("RadialShell", par("Radius", 0.3), par("Width", 0.1)),
    _spatial_xml("RadialRing", par("Radius", 0.45), par("Width", 0.15)),
    _spatial_xml("EllipticalDisk", par("PA", 30.0), par("MinorRadius", 0.2), par("MajorRadius", 0.5)),
    _spatial_xml("EllipticalGaussian", par("PA", 30.0), par("MinorRadius", 0.1), par("MajorRadius", 0.3)),
    _spatial_xml("EllipticalGeneralGaussian", par("PA", 30.0), par("MinorRadius", 0.1), par("MajorRadius", 0.2),
                 par("R_Index", 0.5)),
])
def test_spatial_models_work_in_gammapy_integration(tmp_path, spatial):
    """gammapy integrates the converted models over a map: unit total (GammaLib's normalisation)."""
    from gammapy.maps import WcsGeom

    model = _read_spatial(tmp_path, spatial).spatial_model
    geom = WcsGeom.create(skydir=(83.6331, 22.0145), frame="icrs", binsz=0.01, width=3.0)
    total = model.integrate_geom(geom).data.sum()
    assert total == pytest.approx(1.0, rel=1e-2)  # pixelisation of the hard edges
