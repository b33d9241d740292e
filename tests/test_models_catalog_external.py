"""Catalogues made by others: the CTA-GPS gammapy catalogue schema and H.E.S.S. HGPS, and unknown schemas."""
from pathlib import Path

import numpy as np
import pytest
import astropy.units as u
from astropy.table import Table

from gpsfast.errors import InputError
from gpsfast.models import convert, read_catalog

HGPS = Path(__file__).parents[1].parent / "shared" / "data" / "catalogs" / "hgps_catalog_v1.fits.gz"

#: The CTA-GPS gammapy catalogue columns (issue 16), in that order; no units in the header.
CTA_GPS_COLUMNS = [
    "Name", "GLON", "err_GLON", "GLAT", "err_GLAT", "R68", "SpatialModel", "Reff", "err_Reff", "eta", "err_eta",
    "fwidth", "err_fwidth", "e", "err_e", "phi", "err_phi", "SpetralModel", "amplitude", "err_amplitude", "alpha",
    "err_alpha", "beta", "err_beta", "Eref", "NestFlag", "Main", "Parent", "F_subTeV", "F_postTeV", "Npred_subTeV",
    "Npred_postTeV", "Asso_Name", "Asso_Dist", "Asso_SFoverlap", "Asso_TS", "TSnull_subTeV", "TSnull_postTeV",
    "TSnull", "TSbkg", "TSall",
]
ROWS = [
    # Name, GLON, GLAT, SpatialModel, Reff, eta, fwidth, e, phi, SpetralModel, amplitude, alpha, beta, Eref
    ("CTA J0001", 0.5, -0.2, "Point", np.nan, np.nan, np.nan, np.nan, np.nan, "PL", 2e-13, 2.4, np.nan, 1.0),
    ("CTA J0002", 350.2, 0.7, "GeneralizedGaussian", 0.3, 0.4, np.nan, 0.6, 35.0, "LP", 5e-13, 2.1, 0.15, 2.0),
    ("CTA J0003", 10.0, 1.1, "ShellOut", 0.5, np.nan, 0.2, np.nan, np.nan, "PowerLaw", 1e-12, 2.7, np.nan, 0.5),
]


def cta_gps_table(rows=ROWS):
    """A small table in the CTA-GPS schema, every column of the list, errors 1% of the values."""
    data = {name: [] for name in CTA_GPS_COLUMNS}
    keys = ("Name", "GLON", "GLAT", "SpatialModel", "Reff", "eta", "fwidth", "e", "phi", "SpetralModel", "amplitude",
            "alpha", "beta", "Eref")
    for i, row in enumerate(rows):
        values = dict(zip(keys, row))
        for name in CTA_GPS_COLUMNS:
            if name in values:
                data[name].append(values[name])
            elif name.startswith("err_"):
                data[name].append(0.01 * abs(values[name[4:]]))
            elif name in ("Parent", "Asso_Name"):
                data[name].append("")
            elif name in ("NestFlag", "Main"):
                data[name].append(i % 2)
            else:
                data[name].append(1.0 + i)
    return Table(data)


def test_cta_gps_schema(tmp_path):
    cta_gps_table().write(tmp_path / "cta_gps.fits")
    models = read_catalog(tmp_path / "cta_gps.fits")
    assert models.names == ["CTA J0001", "CTA J0002", "CTA J0003"]
    point, gauss, shell = models
    assert [type(m.spatial_model).__name__ for m in models] == [
        "PointSpatialModel", "GeneralizedGaussianSpatialModel", "Shell2SpatialModel"]
    assert point.spatial_model.frame == "galactic" and point.spatial_model.lon_0.value == 0.5
    assert point.spatial_model.lat_0.error == pytest.approx(0.002)
    g = gauss.spatial_model
    assert (g.r_0.quantity, g.eta.value, g.e.value, g.phi.quantity) == (0.3 * u.deg, 0.4, 0.6, 35 * u.deg)
    assert g.r_0.error == pytest.approx(0.003)
    assert (shell.spatial_model.r_0.value, shell.spatial_model.eta.value) == (0.5, 0.2)
    energy = np.geomspace(0.05, 100, 9)
    # amplitude in cm-2 s-1 TeV-1 at Eref (TeV); log-parabola in the natural log (gammapy's)
    np.testing.assert_allclose(point.spectral_model(energy * u.TeV).to_value("cm-2 s-1 TeV-1"),
                               2e-13 * energy**-2.4, rtol=1e-12)
    x = energy / 2.0
    np.testing.assert_allclose(gauss.spectral_model(energy * u.TeV).to_value("cm-2 s-1 TeV-1"),
                               5e-13 * x ** (-2.1 - 0.15 * np.log(x)), rtol=1e-12)
    np.testing.assert_allclose(shell.spectral_model(energy * u.TeV).to_value("cm-2 s-1 TeV-1"),
                               1e-12 * (energy / 0.5) ** -2.7, rtol=1e-12)
    assert gauss.spectral_model.amplitude.error == pytest.approx(5e-15)
    assert gauss.spectral_model.reference.frozen


@pytest.mark.parametrize("edit,fragment", [
    (lambda t: t.__setitem__("SpatialModel", ["Point", "Disk", "ShellOut"]),
     r"row 2 \('CTA J0002'\): unknown SpatialModel 'Disk'"),
    (lambda t: t["amplitude"].__setitem__(0, np.nan), r"row 1 \('CTA J0001'\): column 'amplitude' value is nan"),
    (lambda t: t["Name"].__setitem__(2, "CTA J0001"), r"row 3 \('CTA J0001'\): duplicate source name \(first in row 1"),
    (lambda t: t.__setitem__("SpetralModel", ["PL", "ECPL", "PL"]), r"row 2 \('CTA J0002'\): unknown SpetralModel"),
])
def test_cta_gps_bad_rows(tmp_path, edit, fragment):
    table = cta_gps_table()
    table["SpatialModel"] = table["SpatialModel"].astype("U32")
    edit(table)
    table.write(tmp_path / "cta_gps.fits")
    with pytest.raises(InputError, match=fragment) as info:
        read_catalog(tmp_path / "cta_gps.fits")
    assert str(info.value).startswith(str(tmp_path / "cta_gps.fits")) and "\n" not in str(info.value)
    assert len(read_catalog(tmp_path / "cta_gps.fits", strict=False)) == 2
    summary = convert(tmp_path / "cta_gps.fits", tmp_path / "out.yaml", strict=False)
    assert "(2 good, 1 bad)" in summary


def test_unknown_schema(tmp_path):
    Table({"RA": [1.0], "DEC": [2.0], "flux": [3.0]}).write(tmp_path / "other.fits")
    with pytest.raises(InputError, match=r"other\.fits: not a gpsfast catalogue nor another known schema "
                                         r"\(gpsfast survey catalogue .*CTA-GPS .*HGPS.*\); the file holds .*RA, DEC"):
        read_catalog(tmp_path / "other.fits")
    (tmp_path / "text.fits").write_text("not FITS at all")
    with pytest.raises(InputError, match=r"text\.fits: not a FITS catalogue"):
        read_catalog(tmp_path / "text.fits")


@pytest.mark.skipif(not HGPS.is_file(), reason=f"HGPS catalogue not found at {HGPS} (../shared/data absent)")
def test_hgps_catalogue():
    from gammapy.catalog import SourceCatalogHGPS

    models = read_catalog(HGPS)
    reference = SourceCatalogHGPS(str(HGPS))
    assert models.names == reference.to_models().names and len(models) >= len(reference.table)
    table = reference.table
    gaussians = [i for i, row in enumerate(table) if row["Spatial_Model"].strip() == "Gaussian"
                 and str(row["Source_Name"]).strip() in models.names]
    assert len(gaussians) > 10
    row = table[gaussians[0]]
    model = models[str(row["Source_Name"]).strip()]
    assert model.spatial_model.sigma.quantity.to_value("deg") == pytest.approx(float(row["Size"]), rel=1e-6)
    position = model.spatial_model.position.galactic
    assert (position.l.deg, position.b.deg) == pytest.approx((float(row["GLON"]), float(row["GLAT"])), abs=1e-6)
