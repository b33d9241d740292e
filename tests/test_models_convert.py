"""``convert()`` (XML <-> YAML -> catalogue FITS) and the real GammaLib / ctools XML files."""
import json
import math
from pathlib import Path

import defusedxml.ElementTree as safe_et
import numpy as np
import astropy.units as u
import pytest
from astropy.coordinates import SkyCoord
from gammapy.modeling.models import Models, SkyModel

from gpsfast.errors import InputError
from gpsfast.models import convert, read_catalog, read_xml, read_xml_detailed

SHARED = Path(__file__).parents[1].parent / "shared" / "data"
XML_DIR = SHARED / "xml"
needs_shared = pytest.mark.skipif(not XML_DIR.is_dir(), reason=f"shared real data not found at {XML_DIR}")

SOURCES = """<?xml version="1.0"?>
<source_library title="t">
  <source name="Crab" type="PointSource">
    <spectrum type="PowerLaw">
      <parameter name="Prefactor" value="5.7" error="0.1" scale="1e-16" min="1e-07" max="1000" free="1"/>
      <parameter name="Index" value="2.48" scale="-1" min="0" max="5" free="1"/>
      <parameter name="PivotEnergy" value="0.3" scale="1e6" min="0.01" max="1000" free="0"/>
    </spectrum>
    <spatialModel type="PointSource">
      <parameter name="RA" value="83.6331" scale="1" min="-360" max="360" free="0"/>
      <parameter name="DEC" value="22.0145" scale="1" min="-90" max="90" free="0"/>
    </spatialModel>
  </source>
  <source name="Shell" type="ExtendedSource">
    <spectrum type="LogParabola">
      <parameter name="Prefactor" value="5.878" scale="1e-17" min="1e-07" max="1000" free="1"/>
      <parameter name="Index" value="2.3" scale="-1" min="0" max="5" free="1"/>
      <parameter name="Curvature" value="0.07" scale="-1" min="-5" max="5" free="1"/>
      <parameter name="PivotEnergy" value="1" scale="1e6" min="0.01" max="1000" free="0"/>
    </spectrum>
    <spatialModel type="RadialShell">
      <parameter name="GLON" value="120.1" scale="1" min="-360" max="360" free="1"/>
      <parameter name="GLAT" value="1.4" scale="1" min="-90" max="90" free="1"/>
      <parameter name="Radius" value="0.3" scale="1" min="0.01" max="10" free="1"/>
      <parameter name="Width" value="0.1" scale="1" min="0.01" max="10" free="1"/>
    </spatialModel>
  </source>
  <source name="Background" type="CTAIrfBackground" instrument="CTA">
    <spectrum type="PowerLaw">
      <parameter name="Prefactor" value="1" scale="1" min="0.001" max="1000" free="1"/>
      <parameter name="Index" value="0" scale="1" min="-5" max="5" free="1"/>
      <parameter name="PivotEnergy" value="1" scale="1e6" min="0.01" max="1000" free="0"/>
    </spectrum>
  </source>
</source_library>
"""


@pytest.fixture
def xml_file(tmp_path):
    path = tmp_path / "in.xml"
    path.write_text(SOURCES)
    return path


def _same(m1, m2):
    assert [m.name for m in m1] == [m.name for m in m2]
    for a, b in zip(m1, m2):
        for pa, pb in zip(a.parameters, b.parameters):
            assert pa.name == pb.name
            for key in ("value", "error", "min", "max"):
                assert np.isclose(getattr(pa, key), getattr(pb, key), rtol=1e-12, equal_nan=True), (a.name, pa.name)
            assert pa.frozen == pb.frozen


def test_xml_yaml_xml_fits(tmp_path, xml_file):
    summary = convert(xml_file, tmp_path / "m.yaml")
    assert "2 sources, 1 background models" in summary
    assert "PointSpatialModel 1" in summary and "GammaLibShellSpatialModel 1" in summary
    assert "LogParabolaSpectralModel 1" in summary
    yaml_models = Models.read(tmp_path / "m.yaml")
    _same(read_xml(xml_file), yaml_models)

    convert(tmp_path / "m.yaml", tmp_path / "back.xml")
    _same(read_xml(xml_file), read_xml(tmp_path / "back.xml"))

    summary = convert(tmp_path / "back.xml", tmp_path / "cat.fits")
    assert "not sky models" in summary and "Background" in summary
    sky = [m for m in read_xml(xml_file) if isinstance(m, SkyModel)]
    _same(sky, read_catalog(tmp_path / "cat.fits"))
    convert(tmp_path / "cat.fits", tmp_path / "from_cat.yaml")
    _same(sky, Models.read(tmp_path / "from_cat.yaml"))


def test_refuses_overwrite_and_writes_atomically(tmp_path, xml_file):
    out = tmp_path / "m.yaml"
    out.write_text("keep me")
    with pytest.raises(InputError, match="exists"):
        convert(xml_file, out)
    assert out.read_text() == "keep me"
    convert(xml_file, out, overwrite=True)
    assert "components" in out.read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.xml", "m.yaml"]  # no temporary left behind


def test_failed_conversion_leaves_no_file(tmp_path):
    bad = tmp_path / "bad.xml"
    bad.write_text(SOURCES.replace('type="RadialShell"', 'type="Nope"'))
    with pytest.raises(InputError, match="'Nope'"):
        convert(bad, tmp_path / "out.yaml")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.xml"]


@pytest.mark.parametrize("name", ["out.txt", "out"])
def test_unknown_extension(tmp_path, xml_file, name):
    with pytest.raises(InputError, match=r"\.xml, \.yaml/\.yml or \.fits"):
        convert(xml_file, tmp_path / name)


def test_missing_input(tmp_path):
    with pytest.raises(InputError, match="not found"):
        convert(tmp_path / "none.yaml", tmp_path / "out.xml")


# ----------------------------------------------------------------- real files


#: Model types with no exact gammapy representation in gpsfast: a clear error is expected (none left).
UNSUPPORTED = ()


def _raw_positions(path):
    """Source name -> (lon, lat, frame) from the raw XML, value x scale."""
    out = {}
    for src in safe_et.parse(str(path)).getroot().findall("source"):
        spatial = src.find("spatialModel")
        if spatial is None:
            continue
        pars = {p.get("name"): float(p.get("value")) * float(p.get("scale", 1)) for p in spatial.findall("parameter")}
        if "RA" in pars:
            out[src.get("name")] = (pars["RA"], pars["DEC"], "icrs")
        elif "GLON" in pars:
            out[src.get("name")] = (pars["GLON"], pars["GLAT"], "galactic")
    return out


@needs_shared
def test_real_xml_files_convert():
    files = sorted(XML_DIR.rglob("*.xml"))
    assert len(files) > 100
    converted, n_sources = 0, 0
    uses_new_types = set()
    for path in files:
        try:
            root = safe_et.parse(str(path)).getroot()
        except Exception:
            with pytest.raises(InputError, match=rf"{path.name}:\d+:\d+: malformed XML"):
                read_xml(path)
            continue
        if root.tag != "source_library":
            with pytest.raises(InputError, match="expected <source_library>"):
                read_xml(path)
            continue
        try:
            result = read_xml_detailed(path)
        except InputError as exc:
            msg = str(exc)
            if "environment variable, which is not expanded" in msg:
                assert "$" in msg, msg
            elif " not found in the XML file's folder: " in msg:
                missing = Path(msg.rsplit("folder: ", 1)[1])
                assert not missing.exists() and path.parent in missing.parents, msg
            else:
                assert "supported types" in msg and any(f"'{t}'" in msg for t in UNSUPPORTED), msg
            continue
        if any(t in path.read_text() for t in ('"TableModel"', '"DMBurkertProfile"', '"DMEinastoProfile"',
                                                '"DMZhaoProfile"')):
            uses_new_types.add(path.name)
        converted += 1
        raw = root.findall("source")
        assert result.n_sources == len(raw) == len(result.models) + len(result.skipped), path
        n_sources += len(result.models)
        positions = _raw_positions(path)
        for model in result.models:
            if isinstance(model, SkyModel) and model.name in positions and hasattr(model.spatial_model, "lon_0"):
                lon, lat, frame = positions[model.name]
                assert model.spatial_model.frame == frame
                expected = SkyCoord(lon, lat, unit="deg", frame=frame)
                assert model.spatial_model.position.separation(expected).deg < 1e-9, (path, model.name)
    assert converted >= 120
    assert n_sources >= 150
    assert uses_new_types == {"crab_table.xml", "model_point_table.xml", "model_profile_dmburkert.xml",
                              "model_profile_dmeinasto.xml", "model_profile_dmzhao.xml"}


@needs_shared
def test_legacy_group_count_matches_provenance():
    counts = json.loads((SHARED / "_provenance" / "xmlcount.json").read_text())["groups"]
    expected = counts["gammalib test/data legacy_*.xml"]
    files = sorted((XML_DIR / "gammalib" / "test" / "data").glob("legacy_*.xml"))
    assert len(files) == expected["files"]
    assert sum(len(read_xml(f)) for f in files) == expected["sources"]


@needs_shared
def test_real_malformed_file_gives_line():
    path = XML_DIR / "ctools" / "test" / "data" / "statistics.xml"
    with pytest.raises(InputError, match=r"statistics\.xml:110:7: malformed XML"):
        read_xml(path)


@needs_shared
def test_real_phase_curve_and_light_curve():
    data = XML_DIR / "gammalib" / "test" / "data"
    pulsar = read_xml(data / "model_temporal_phasecurve.xml")[0].temporal_model
    assert pulsar.tag[0] == "GammaLibPhaseCurveTemporalModel" and pulsar.scale == "tt"
    assert (pulsar.f0.value, pulsar.f1.value, pulsar.f2.value) == (1.0, 0.1, 0.01)
    assert pulsar.t_ref.value == 51544.5
    # normalised: mean of the curve over one period is 1
    grid = np.linspace(0, 1, 100001)
    mean = np.trapezoid(np.interp(grid, pulsar.table["PHASE"], pulsar.table["NORM"]), grid)
    assert math.isclose(mean, 1.0, rel_tol=1e-6)
    light = read_xml(data / "model_temporal_lightcurve.xml")[0].temporal_model
    assert light.tag[0] == "GammaLibLightCurveTemporalModel"


# ----------------------------------------------------------------- lenient mode

LENIENT = """<?xml version="1.0"?>
<source_library title="t">
  <source name="Good" type="PointSource">{pl}{point}</source>
  <source name="" type="DiffuseSource">{pl}{iso}</source>
  <source name="Typo" type="PointSource"><spectrum type="PowerLaw">
    <parameter name="Prefactor" value="5.7" scale="1-07" free="1"/>
    <parameter name="Index" value="-2.4" scale="1" free="1"/>
    <parameter name="PivotEnergy" value="1" scale="1e6" free="0"/></spectrum>{point}</source>
  <source name="Pulsar" type="PointSource">{pl}{point}{phase}</source>
  <source name="Good" type="PointSource">{pl}{point}</source>
</source_library>
"""
PL_XML = ('<spectrum type="PowerLaw"><parameter name="Prefactor" value="1" scale="1e-16" free="1"/>'
          '<parameter name="Index" value="-2" scale="1" free="1"/>'
          '<parameter name="PivotEnergy" value="1" scale="1e6" free="0"/></spectrum>')
POINT_XML = ('<spatialModel type="PointSource"><parameter name="RA" value="83.6" scale="1" free="0"/>'
             '<parameter name="DEC" value="22.0" scale="1" free="0"/></spatialModel>')
ISO_XML = '<spatialModel type="DiffuseIsotropic"><parameter name="Value" value="1" scale="1" free="0"/></spatialModel>'
PHASE_XML = ('<temporal type="PhaseCurve" file="pc.fits">' + "".join(
    f'<parameter name="{n}" value="{v}" scale="1" free="0"/>'
    for n, v in (("Normalization", 1), ("MJD", 51544.5), ("Phase", 0), ("F0", 1), ("F1", 0), ("F2", 0)))
    + "</temporal>")


@pytest.fixture
def mixed_file(tmp_path):
    """Issue 16's cases: an empty name, ``scale="1-07"``, a phase curve with a duplicated PHASE row, a duplicate."""
    from astropy.table import Table

    Table({"PHASE": [0.0, 0.5, 0.5, 1.0], "NORM": [1.0, 0.5, 0.4, 1.0]}).write(tmp_path / "pc.fits")
    path = tmp_path / "mixed.xml"
    path.write_text(LENIENT.format(pl=PL_XML, point=POINT_XML, iso=ISO_XML, phase=PHASE_XML))
    return path


def test_lenient_converts_good_sources_and_lists_bad_ones(mixed_file):
    result = read_xml_detailed(mixed_file, strict=False)
    assert result.models.names == ["Good"]
    reasons = [(b.line, b.source, b.reason) for b in result.bad]
    assert [r[:2] for r in reasons] == [(4, ""), (6, "Typo"), (9, "Pulsar"), (10, "Good")]
    assert "empty or missing name" in reasons[0][2]
    assert "scale='1-07' is not a number" in reasons[1][2]
    assert "phase curve needs" in reasons[2][2] and "pc.fits" in reasons[2][2]
    assert "duplicate source name (first at line 3)" in reasons[3][2]
    for bad in result.bad:
        assert str(bad).startswith(f"{mixed_file}:{bad.line}: source {bad.source!r} ") and "\n" not in str(bad)
    with pytest.raises(InputError, match=r"mixed\.xml:4: source '' a <source> of type 'DiffuseSource' has an empty"):
        read_xml(mixed_file)


def test_convert_lenient_summary_and_strict(tmp_path, mixed_file):
    summary = convert(mixed_file, tmp_path / "out.yaml", strict=False)
    assert "1 sources, 0 background models (1 good, 4 bad)" in summary
    bad_lines = [line for line in summary.splitlines() if line.startswith("  bad (not converted): ")]
    assert len(bad_lines) == 4 and all(str(mixed_file) in line for line in bad_lines)
    assert Models.read(tmp_path / "out.yaml").names == ["Good"]
    with pytest.raises(InputError, match="empty or missing name"):
        convert(mixed_file, tmp_path / "strict.yaml", strict=True)
    assert not (tmp_path / "strict.yaml").exists()


def test_cli_convert_lenient_by_default(tmp_path, mixed_file):
    from click.testing import CliRunner

    from gpsfast.cli import cli

    result = CliRunner().invoke(cli, ["convert", str(mixed_file), str(tmp_path / "out.xml")])
    assert result.exit_code == 0, result.output
    assert "(1 good, 4 bad)" in result.output and result.output.count("bad (not converted)") == 4
    result = CliRunner().invoke(cli, ["convert", "--strict", str(mixed_file), str(tmp_path / "s.xml")])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_lenient_catalogue_rows(tmp_path):
    from astropy.table import Table
    from gammapy.modeling.models import PointSpatialModel, PowerLawSpectralModel

    from gpsfast.models import write_catalog

    models = [SkyModel(PowerLawSpectralModel(), PointSpatialModel(), name=n) for n in ("a", "b", "c")]
    write_catalog(models, tmp_path / "cat.fits")
    table = Table.read(tmp_path / "cat.fits", hdu="CATALOG")
    table["spectral_amplitude"][1] = np.nan
    table.write(tmp_path / "cat.fits", overwrite=True)
    assert read_catalog(tmp_path / "cat.fits", strict=False).names == ["a", "c"]
    summary = convert(tmp_path / "cat.fits", tmp_path / "out.yaml", strict=False)
    assert "(2 good, 1 bad)" in summary and "row 2 ('b'): column 'spectral_amplitude' value is nan" in summary


@needs_shared
def test_real_files_lenient():
    """Every real model file converts in lenient mode; each source left out has a one-line reason."""
    n_bad, partial = 0, []
    for path in sorted(XML_DIR.rglob("*.xml")):
        try:
            result = read_xml_detailed(path, strict=False)
        except InputError as exc:
            assert "malformed XML" in str(exc) or "expected <source_library>" in str(exc), exc
            continue
        for bad in result.bad:
            assert str(bad).startswith(f"{path}:{bad.line}: source ") and "\n" not in str(bad)
        n_bad += len(result.bad)
        if result.bad and len(result.models):
            partial.append(path.name)
    assert n_bad >= 5 and "1dc_howto.xml" in partial


# ----------------------------------------------------------------- referenced files in written YAML / catalogues


def _models_with_files(folder):
    """A FileFunction, a phase curve and a DiffuseMap, their files in ``folder``, named relative to the working
    directory."""
    import shutil

    from gpsfast.models import FileFunctionSpectralModel, GammaLibPhaseCurveTemporalModel
    from gpsfast.models.diffuse import GammaLibDiffuseMapSpatialModel
    from gammapy.modeling.models import PointSpatialModel, PowerLawSpectralModel

    data = Path(__file__).parent / "data" / "models"
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(data / "filefunction.txt", folder / "ff.txt")
    shutil.copy(data / "phasecurve.fits", folder / "pc.fits")
    from astropy.io import fits
    from astropy.wcs import WCS

    wcs = WCS(naxis=2)
    wcs.wcs.ctype, wcs.wcs.crval, wcs.wcs.crpix, wcs.wcs.cdelt = ["GLON-CAR", "GLAT-CAR"], [10, 0], [3, 3], [-0.1, 0.1]
    fits.PrimaryHDU(np.arange(25.0).reshape(5, 5), header=wcs.to_header()).writeto(folder / "map.fits")
    import os

    def name(file):
        return os.path.relpath(folder / file)

    models = Models([
        SkyModel(FileFunctionSpectralModel.read(name("ff.txt")), PointSpatialModel(), name="ff"),
        SkyModel(PowerLawSpectralModel(), PointSpatialModel(),
                 GammaLibPhaseCurveTemporalModel.read(name("pc.fits")), name="pulsar"),
        SkyModel(PowerLawSpectralModel(), GammaLibDiffuseMapSpatialModel.read(name("map.fits")), name="map"),
    ])
    assert not Path(models["ff"].spectral_model.filename).is_absolute()
    return models


def test_written_yaml_and_catalogue_read_from_any_folder(tmp_path, monkeypatch):
    """Files named relative to the working directory are written relative to the output file (or absolute)."""
    from gpsfast.models import write_catalog
    from gpsfast.models.yamlio import write_yaml_models

    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    inside = _models_with_files(tmp_path / "work" / "out")  # files in the output folder
    write_yaml_models(inside, tmp_path / "work" / "out" / "m.yaml")
    write_catalog(inside, tmp_path / "work" / "out" / "cat.fits")
    text = (tmp_path / "work" / "out" / "m.yaml").read_text()
    assert "filename: ff.txt" in text and "filename: pc.fits" in text and "filename: map.fits" in text
    # move the whole output folder and read it from yet another working directory
    (tmp_path / "work" / "out").rename(tmp_path / "moved")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    energy = np.geomspace(0.2, 20, 5) * u.TeV
    for back in (Models.read(tmp_path / "moved" / "m.yaml"), read_catalog(tmp_path / "moved" / "cat.fits")):
        assert back.names == ["ff", "pulsar", "map"]
        np.testing.assert_allclose(back["ff"].spectral_model(energy).value,
                                   inside["ff"].spectral_model(energy).value, rtol=1e-12)
        np.testing.assert_allclose(back["map"].spatial_model.map.data, inside["map"].spatial_model.map.data)


def test_files_outside_the_output_folder_written_absolute(tmp_path, monkeypatch):
    from gpsfast.models.yamlio import write_yaml_models

    monkeypatch.chdir(tmp_path)
    models = _models_with_files(tmp_path / "data")
    (tmp_path / "out").mkdir()
    summary_path = tmp_path / "out" / "m.yaml"
    write_yaml_models(models, summary_path)
    assert f"filename: {tmp_path / 'data' / 'ff.txt'}" in summary_path.read_text()
    monkeypatch.chdir(tmp_path / "out")
    assert Models.read(summary_path).names == ["ff", "pulsar", "map"]
