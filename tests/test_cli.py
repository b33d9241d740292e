import os
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from gammapy.datasets import MapDataset
from gammapy.modeling.models import Models

from gpsfast.cli import cli

SMALL = ["--width", "1.5", "--height", "1", "--seed", "2"]


def run(*args):
    return CliRunner().invoke(cli, list(args))


def test_simulate_writes_readable_outputs(tmp_path):
    out = tmp_path / "patch"
    result = run("simulate", "--out", str(out), *SMALL)
    assert result.exit_code == 0, result.output
    assert "subtev" in result.output and "postev" in result.output and "sources" in result.output
    models = Models.read(out / "true_models.yaml")
    assert "diffuse-large-scale" in models.names
    for name in ("subtev", "postev"):
        dataset = MapDataset.read(out / f"{name}.fits")
        dataset.models = models  # the true sky and the dataset's background model: what the counts were drawn from
        npred = dataset.npred().data.sum()
        assert abs(dataset.counts.data.sum() - npred) < 5 * np.sqrt(npred), name


def test_simulate_one_preset(tmp_path):
    result = run("simulate", "--out", str(tmp_path / "p"), "--preset", "postev", *SMALL)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "p" / "postev.fits").is_file() and not (tmp_path / "p" / "subtev.fits").exists()


def test_existing_folder_needs_overwrite(tmp_path):
    out = tmp_path / "patch"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    result = run("simulate", "--out", str(out), *SMALL)
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        f"Error: Output folder {out} exists and is not empty; use --overwrite to replace it"
    ]
    assert (out / "mine.txt").read_text() == "keep me"
    result = run("simulate", "--out", str(out), "--overwrite", "--preset", "subtev", *SMALL)
    assert result.exit_code == 0, result.output
    assert (out / "subtev.fits").is_file()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--preset", "tev"], "Invalid value for '--preset'"),
        (["--width", "0"], "Error: Invalid value for '--width': 0.0 is not in the range 0<x<=360."),
        (["--height", "-2"], "Error: Invalid value for '--height': -2.0 is not in the range 0<x<=180."),
        (["--irf", "/does/not/exist.fits"], "Error: IRF file not found: /does/not/exist.fits"),
    ],
)
def test_bad_input_one_line(tmp_path, args, message):
    result = run("simulate", "--out", str(tmp_path / "x"), *args)
    assert result.exit_code != 0
    assert message in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "x").exists()


def test_irf_not_an_irf_file(tmp_path):
    bad = tmp_path / "bad.fits"
    bad.write_bytes(b"\x00" * 100)
    result = run("simulate", "--out", str(tmp_path / "x"), "--irf", str(bad))
    assert result.exit_code == 1
    assert result.output.startswith(f"Error: Not a readable IRF FITS file: {bad}")


def test_unwritable_output(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = run("simulate", "--out", str(blocker / "sub"))
    assert result.exit_code == 1
    assert result.output.strip() == f"Error: Output path {blocker / 'sub'}: {blocker} is not a folder"


@pytest.mark.skipif(not os.path.isdir("/proc") or os.geteuid() != 0, reason="needs /proc, and root ignores chmod")
def test_unwritable_output_proc():
    result = run("simulate", "--out", "/proc/gpsfast-out")
    assert result.exit_code == 1
    assert result.output.startswith("Error: Output folder /proc is not writable")


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write into read-only folders")
def test_unwritable_output_readonly(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    result = run("simulate", "--out", str(locked / "out"))
    assert result.exit_code == 1
    assert "is not writable" in result.output


def test_console_script_entry_point():
    result = subprocess.run(
        [sys.executable, "-c", "from gpsfast.cli import main; main()", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "simulate" in result.stdout


CRAB_XML = """<?xml version="1.0"?>
<source_library title="t">
  <source name="Crab" type="PointSource">
    <spectrum type="PowerLaw">
      <parameter name="Prefactor" value="5.7" scale="1e-16" min="1e-07" max="1000" free="1"/>
      <parameter name="Index" value="2.48" scale="-1" min="0" max="5" free="1"/>
      <parameter name="PivotEnergy" value="0.3" scale="1e6" min="0.01" max="1000" free="0"/>
    </spectrum>
    <spatialModel type="PointSource">
      <parameter name="RA" value="83.6331" scale="1" min="-360" max="360" free="0"/>
      <parameter name="DEC" value="22.0145" scale="1" min="-90" max="90" free="0"/>
    </spatialModel>
  </source>
</source_library>
"""


def test_convert_xml_yaml_fits(tmp_path):
    xml = tmp_path / "in.xml"
    xml.write_text(CRAB_XML)
    result = run("convert", str(xml), str(tmp_path / "out.yaml"))
    assert result.exit_code == 0, result.output
    assert "1 sources" in result.output and "PointSpatialModel 1" in result.output
    models = Models.read(tmp_path / "out.yaml")
    assert models.names == ["Crab"]
    assert models["Crab"].spectral_model.index.value == 2.48
    result = run("convert", str(tmp_path / "out.yaml"), str(tmp_path / "cat.fits"))
    assert result.exit_code == 0, result.output
    assert (tmp_path / "cat.fits").is_file()


def test_convert_errors_one_line(tmp_path):
    xml = tmp_path / "bad.xml"
    xml.write_text("<source_library><source name='x' type='PointSource'>")
    result = run("convert", str(xml), str(tmp_path / "out.yaml"))
    assert result.exit_code == 1
    assert result.output.startswith("Error: ") and str(xml) in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "out.yaml").exists()
    result = run("convert", str(tmp_path / "missing.xml"), str(tmp_path / "out.yaml"))
    assert result.exit_code == 1 and "missing.xml" in result.output
