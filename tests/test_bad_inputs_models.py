"""Bad, hostile and unphysical model files: each gives one line naming file, line, source and value.

Cases of issue 13 (items 7, 9, 10) for the model-file readers: untrusted ``file=``
attributes, non-finite or unphysical parameters, referenced files that are not
what they claim, catalogue FITS tables and YAML files written by hand.
"""
import os
import re
from pathlib import Path

import numpy as np
import pytest
from astropy.table import Table
from click.testing import CliRunner
from gammapy.modeling.models import PointSpatialModel, PowerLawSpectralModel, SkyModel

from gpsfast.cli import cli
from gpsfast.errors import InputError
from gpsfast.models import read_catalog, read_xml, read_xml_detailed, read_yaml_models, write_catalog

DATA = Path(__file__).parent / "data" / "models"
FF = (DATA / "filefunction.txt").read_text()


def par(name, value, scale=1.0, vmin=None, vmax=None, free=1):
    attrs = f'name="{name}" value="{value}" scale="{scale}" free="{free}"'
    attrs += "" if vmin is None else f' min="{vmin}"'
    attrs += "" if vmax is None else f' max="{vmax}"'
    return f"<parameter {attrs}/>"


PL = ('<spectrum type="PowerLaw">' + par("Prefactor", 1.0, 1e-16) + par("Index", -2.0, 1, -5, 5)
      + par("PivotEnergy", 1.0, 1e6, free=0) + "</spectrum>")
POINT = '<spatialModel type="PointSource">' + par("RA", 83.6) + par("DEC", 22.0) + "</spatialModel>"


def source(spectrum=PL, spatial=POINT, temporal="", kind="PointSource"):
    return f'<source name="Bad" type="{kind}">{spectrum}{spatial}{temporal}</source>'


def ff(file):
    return source(spectrum=f'<spectrum type="FileFunction" file="{file}">' + par("Normalization", 1.0) + "</spectrum>")


def gauss(sigma):
    return source(spatial='<spatialModel type="RadialGaussian">' + par("RA", 83.6) + par("DEC", 22.0)
                  + par("Sigma", sigma) + "</spatialModel>", kind="ExtendedSource")


def temporal(kind, file):
    pars = par("Normalization", 1.0)
    if kind == "PhaseCurve":
        pars += par("MJD", 51544.5) + par("Phase", 0.0) + par("F0", 1.0) + par("F1", 0.0) + par("F2", 0.0)
    return source(temporal=f'<temporal type="{kind}" file="{file}">{pars}</temporal>')


def write_model(folder, xml_source, files=None):
    """The bad source on line 3 of ``model.xml`` in ``folder``, with its referenced ``files``."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in (files or {}).items():
        path = folder / name
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    path = folder / "model.xml"
    path.write_text(f'<?xml version="1.0"?>\n<source_library title="bad">\n{xml_source}\n</source_library>\n')
    return path


# (case id, source on line 3, files next to the model file, expected fragment after "model.xml:3: source 'Bad' ")
ERROR_CASES = [
    ("traversal", ff("../../etc/passwd"), {}, r"'\.\./\.\./etc/passwd' is outside the allowed folders"),
    ("absolute-outside", ff("/etc/hostname"), {}, r"'/etc/hostname' is outside the allowed folders"),
    ("proc-environ", ff("/proc/self/environ"), {}, r"'/proc/self/environ' is outside the allowed folders"),
    ("env-var", ff("$HOME/ff.txt"), {}, r"'\$HOME/ff\.txt' not found .*environment variable, which is not expanded"),
    ("gammalib-env-var", ff("$(GAMMALIB)/ff.txt"), {}, r"not found .*environment variable, which is not expanded"),
    ("nan-value", source(spectrum=PL.replace('value="1.0" scale="1e-16"', 'value="nan" scale="1e-16"')), {},
     r"parameter 'Prefactor': value=nan is not a finite number"),
    ("inf-value", source(spectrum=PL.replace('value="-2.0"', 'value="inf"')), {},
     r"parameter 'Index': value=inf is not a finite number"),
    ("nan-min", source(spectrum=PL.replace('min="-5"', 'min="nan"')), {},
     r"parameter 'Index': min=nan is not a number"),
    ("negative-radius", source(spatial='<spatialModel type="RadialDisk">' + par("RA", 83.6) + par("DEC", 22.0)
                               + par("Radius", -0.1) + "</spatialModel>", kind="ExtendedSource"), {},
     r"'RadialDisk': parameter 'Radius' = -0\.1 must be > 0"),
    ("sigma-zero", gauss(0.0), {}, r"'RadialGaussian': parameter 'Sigma' = 0 must be > 0"),
    ("negative-axis", source(spatial='<spatialModel type="EllipticalGaussian">' + par("RA", 83.6) + par("DEC", 22.0)
                             + par("PA", 0.0) + par("MinorRadius", -0.1) + par("MajorRadius", 0.3)
                             + "</spatialModel>", kind="ExtendedSource"), {},
     r"parameter 'MinorRadius' = -0\.1 must be > 0"),
    ("glat-100", source(spatial='<spatialModel type="PointSource">' + par("GLON", 10.0) + par("GLAT", 100.0)
                        + "</spatialModel>"), {}, r"GLAT=100 deg is not a latitude"),
    ("nan-filefunction-row", ff("ff.txt"), {"ff.txt": "1e5 1e-10\n1e6 nan\n1e7 1e-14\n"},
     r"FileFunction: .*ff\.txt:2: FileFunction row is not finite \(energy=1000000\.0, intensity=nan\)"),
    ("binary-filefunction", ff("ff.txt"), {"ff.txt": b"\x00\x01\x02\xff\xfe binary"},
     r"ff\.txt: not a text FileFunction table \(binary or undecodable content\)"),
    ("nan-node-energy", source(spectrum='<spectrum type="NodeFunction"><node>' + par("Energy", "nan")
                               + par("Intensity", 1.0, 1e-7) + "</node></spectrum>"), {},
     r"parameter 'Energy': value=nan is not a finite number"),
    ("phase-curve-not-fits", temporal("PhaseCurve", "pc.fits"), {"pc.fits": "PHASE NORM\n0 1\n"},
     r"temporal PhaseCurve: .*pc\.fits: PhaseCurve file is not a FITS file"),
    ("light-curve-not-fits", temporal("LightCurve", "lc.fits"), {"lc.fits": b"\x00" * 100},
     r"temporal LightCurve: .*lc\.fits: LightCurve file is not a FITS file"),
    ("map-not-fits", source(spatial='<spatialModel type="DiffuseMap" file="map.fits">' + par("Normalization", 1.0)
                            + "</spatialModel>", kind="DiffuseSource"), {"map.fits": "not a map"},
     r"DiffuseMap: .*map\.fits: map is not a FITS file"),
]


@pytest.mark.parametrize("case,xml,files,fragment", ERROR_CASES, ids=[c[0] for c in ERROR_CASES])
def test_bad_source_one_line_error(tmp_path, monkeypatch, case, xml, files, fragment):
    monkeypatch.setenv("GAMMALIB", str(tmp_path))
    path = write_model(tmp_path / "models", xml, files)
    with pytest.raises(InputError) as info:
        read_xml(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}:3: source 'Bad' "), message
    assert re.search(fragment, message), message


def test_refused_files_are_never_echoed(tmp_path, monkeypatch):
    """Neither a refused file's content nor an environment value appears in the message."""
    monkeypatch.setenv("GPSFAST_SECRET", "s3cr3t-value")
    outside = tmp_path / "secret.txt"
    outside.write_text("1e5 TOP-SECRET-LINE\n")
    folder = tmp_path / "models"
    folder.mkdir()
    os.symlink(outside, folder / "link.txt")
    for name in ("../secret.txt", str(outside), "link.txt", "/proc/self/environ", "$GPSFAST_SECRET/x.txt"):
        with pytest.raises(InputError) as info:
            read_xml(write_model(folder, ff(name)))
        message = str(info.value)
        assert "TOP-SECRET" not in message and "s3cr3t" not in message, message
        assert "refused" in message or "not expanded" in message, message
    # a FileFunction line that is not numbers: named by line, not echoed
    with pytest.raises(InputError, match=r"ff\.txt:2: FileFunction line needs two numbers") as info:
        read_xml(write_model(folder, ff("ff.txt"), {"ff.txt": "1e5 1e-10\nroot:x:0:0:root:/root:/bin/bash\n"}))
    assert "root:x" not in str(info.value)


def test_allowed_dirs_and_expand_env_opt_in(tmp_path, monkeypatch):
    data = tmp_path / "data"
    data.mkdir()
    (data / "ff.txt").write_text(FF)
    monkeypatch.setenv("MYDATA", str(data))
    path = write_model(tmp_path / "models", ff("$MYDATA/ff.txt"))
    with pytest.raises(InputError, match="outside the allowed folders"):
        read_xml(path, expand_env=True)
    assert read_xml(path, expand_env=True, allowed_dirs=[data])[0].spectral_model.energy.size == 3
    # an allowed folder does not open its parents
    with pytest.raises(InputError, match="outside the allowed folders"):
        read_xml(write_model(tmp_path / "models", ff("../../etc/passwd")), allowed_dirs=[data])


def test_element_line_and_value_outside_range_warns(tmp_path):
    """A warning (GammaLib refuses the file) naming file, line of the parameter, source, parameter and value."""
    path = tmp_path / "model.xml"
    path.write_text('<?xml version="1.0"?>\n<source_library>\n<source name="Crab" type="PointSource">\n'
                    '<spectrum type="PowerLaw">\n' + par("Prefactor", 1.0, 1e-16, 1e-3, 1e3) + "\n"
                    + par("Index", -7.0, 1, -5, 5) + "\n" + par("PivotEnergy", 1.0, 1e6, free=0) + "\n"
                    + "</spectrum>\n" + POINT + "\n</source>\n</source_library>\n")
    result = read_xml_detailed(path)
    assert result.models["Crab"].spectral_model.index.value == 7.0
    [warning] = result.warnings
    assert warning.startswith(f"{path}:6: source 'Crab' parameter 'Index': value=-7 is outside [min, max] = [-5, 5]")


def test_deeply_nested_xml_refused(tmp_path):
    path = tmp_path / "deep.xml"
    path.write_text('<?xml version="1.0"?>\n<source_library>\n' + "<a>" * 3000 + "</a>" * 3000 + "\n</source_library>")
    with pytest.raises(InputError, match=rf"deep\.xml:3: XML elements nested deeper than \d+ levels: refused"):
        read_xml(path)


def test_too_many_sources_refused_before_building(tmp_path, monkeypatch):
    import gpsfast.models.xmlio

    path = write_model(tmp_path, "\n".join(source().replace('"Bad"', f'"S{i}"') for i in range(5)))
    with pytest.raises(InputError, match=r"5 sources, more than max_sources=4: refused"):
        read_xml(path, max_sources=4)
    monkeypatch.setattr(gpsfast.models.xmlio, "_BYTES_PER_SOURCE", 100)
    with pytest.raises(InputError, match=r"too large for max_sources=5 .*refused before reading"):
        read_xml(path, max_sources=5)
    monkeypatch.undo()
    assert len(read_xml(path, max_sources=5)) == 5


# ----------------------------------------------------------------- catalogue FITS


def _catalogue(tmp_path):
    models = [SkyModel(PowerLawSpectralModel(), PointSpatialModel(lon_0=f"{lon} deg", frame="galactic"), name=name)
              for lon, name in ((1.0, "a"), (2.0, "b"))]
    path = tmp_path / "cat.fits"
    write_catalog(models, path)
    return path, Table.read(path, hdu="CATALOG", mask_invalid=False)


def _remove(table, column):
    table.remove_column(column)


def _set(column, row, value):
    def edit(table):
        table[column][row] = value
    return edit


def _set_unit(column, unit):
    def edit(table):
        table[column].unit = unit
    return edit


CATALOGUE_CASES = [
    ("missing-err", lambda t: _remove(t, "spectral_index_err"), r"row 1 \('a'\): parameter column\(s\) "
                                                                 r"'spectral_index_err' missing"),
    ("missing-unit", lambda t: _remove(t, "spatial_lon_0_unit"), r"row 1 \('a'\): .*'spatial_lon_0_unit' missing"),
    ("bogus-unit", _set("spectral_amplitude_unit", 1, "bananas"),
     r"row 2 \('b'\): column 'spectral_amplitude': unit 'bananas'"),
    ("bogus-column-unit", _set_unit("spatial_lon_0", "parsec"),
     r"row 1 \('a'\): column 'spatial_lon_0': unit 'deg' \(column unit 'pc'\) is not a valid or compatible unit"),
    ("nan-amplitude", _set("spectral_amplitude", 1, np.nan), r"row 2 \('b'\): column 'spectral_amplitude' value is "
                                                             r"nan \(not finite\)"),
    ("min-above-max", lambda t: (_set("spectral_index_min", 0, 10.0)(t), _set("spectral_index_max", 0, 1.0)(t)),
     r"row 1 \('a'\): column 'spectral_index': min=10\.0 is larger than max=1\.0"),
    ("duplicate-names", _set("Source_Name", 1, "a"), r"duplicate source name 'a' in rows 1 and 2"),
    ("unknown-type", _set("Model_Structure", 0, '{"spectral": {"type": "NoSuchSpectralModel", "parameters": []}}'),
     r"row 1 \('a'\): cannot build the model \(spectral 'NoSuchSpectralModel'\)"),
    ("bad-json", _set("Model_Structure", 1, "{not json"), r"row 2 \('b'\): Model_Structure is not valid JSON"),
]


@pytest.mark.parametrize("case,edit,fragment", CATALOGUE_CASES, ids=[c[0] for c in CATALOGUE_CASES])
def test_bad_catalogue_one_line_error(tmp_path, case, edit, fragment):
    path, table = _catalogue(tmp_path)
    if table["Model_Structure"].dtype.itemsize < 200:
        table["Model_Structure"] = table["Model_Structure"].astype("U400")
    edit(table)
    table.write(path, overwrite=True)
    with pytest.raises(InputError) as info:
        read_catalog(path)
    message = str(info.value)
    assert "\n" not in message and message.startswith(str(path)), message
    assert re.search(fragment, message), message


def test_catalogue_non_ascii_name_refused_before_writing(tmp_path):
    models = [SkyModel(PowerLawSpectralModel(), PointSpatialModel(), name="Sgr A\u2605")]
    with pytest.raises(InputError, match=r"source 'Sgr A★' \(row 1\), column 'Source_Name': .*non-ASCII character "
                                         r"'★' \(U\+2605\)"):
        write_catalog(models, tmp_path / "cat.fits")
    assert not (tmp_path / "cat.fits").exists()


# ----------------------------------------------------------------- YAML


YAML = """components:
- name: a
  type: SkyModel
  spectral:
    type: PowerLawSpectralModel
    parameters:
    - name: index
      value: 2.0
  spectral:
    type: LogParabolaSpectralModel
"""


@pytest.mark.parametrize("text,fragment", [
    (YAML, r"m\.yaml:9: duplicate key 'spectral' \(first given at line 4\)"),
    ("components:\n- name: a\n  name: b\n  type: SkyModel\n", r"m\.yaml:3: duplicate key 'name'"),
    ("components: [\n", r"m\.yaml:2:1: malformed YAML"),
    ("metadata: {}\n", r"m\.yaml: not a gammapy model file \(no 'components' list\)"),
])
def test_bad_yaml_one_line_error(tmp_path, text, fragment):
    (tmp_path / "m.yaml").write_text(text)
    with pytest.raises(InputError, match=fragment) as info:
        read_yaml_models(tmp_path / "m.yaml")
    assert "\n" not in str(info.value)


def test_cli_convert_bad_inputs_no_traceback(tmp_path):
    runner = CliRunner()
    for path in (write_model(tmp_path / "x", ff("/proc/self/environ")), tmp_path / "m.yaml"):
        if path.suffix == ".yaml":
            path.write_text(YAML)
        result = runner.invoke(cli, ["convert", str(path), str(tmp_path / "out.fits")])
        assert result.exit_code == 1, result.output
        assert result.output.startswith("Error: ") and "Traceback" not in result.output
        assert len(result.output.strip().splitlines()) == 1, result.output
    assert not (tmp_path / "out.fits").exists()
