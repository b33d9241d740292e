"""Bad inputs of `gpsfast run` and `gpsfast survey`: each gives a one-line error naming the file or key and what is
wrong, before any stage computes on it; a patch without sources ends cleanly and says so."""
import json
import re

import astropy.units as u
import numpy as np
import pytest
from astropy.coordinates import SkyCoord
from click.testing import CliRunner
from gammapy.datasets import MapDataset
from gammapy.modeling.models import Models

from gpsfast.cli import cli
from gpsfast.errors import InputError
from gpsfast.pipeline import PipelineConfig, load_config


@pytest.fixture(scope="module")
def good(tmp_path_factory, postev_patch):
    """A simulated 1.5 x 1 deg PosTeV dataset (file) and its folder for the bad variants."""
    folder = tmp_path_factory.mktemp("bad-inputs")
    datasets, _ = postev_patch()
    datasets[0].write(folder / "postev.fits")
    return folder / "postev.fits"


def variant(good, name, change):
    """A copy of the good dataset file changed by ``change(dataset)`` (which may return a new dataset)."""
    dataset = MapDataset.read(good, name="postev")
    dataset = change(dataset) or dataset
    path = good.parent / name / "postev.fits"
    path.parent.mkdir(exist_ok=True)
    dataset.write(path, overwrite=True)
    return path


def set_data(attribute, value):
    def change(dataset):
        getattr(dataset, attribute).data[...] = value
    return change


def without_background(dataset):
    dataset.background = None


def one_pixel(dataset):
    return dataset.cutout(SkyCoord(0, 0, unit="deg", frame="galactic"), width=0.02 * u.deg, name="postev")


def text_file(good, name, text):
    path = good.parent / name
    path.write_text(text)
    return path


def variant_table(good):
    from astropy.table import Table

    path = good.parent / "table.fits"
    Table({"a": [1, 2]}).write(path, overwrite=True)
    return path


# name -> (how to make the dataset file, message fragment); the message must also name the file
DATASET_CASES = {
    "not-fits": (lambda good: text_file(good, "not-fits.fits", "SIMPLE? no\n"), "is not a FITS file"),
    "missing": (lambda good: good.parent / "nowhere" / "postev.fits", "Dataset file not found"),
    "fits-table-not-a-dataset": (lambda good: variant_table(good), "has no COUNTS map"),
    "fits-broken": (lambda good: text_file(good, "broken.fits", "SIMPLE  = T\nnot a header"),
                    "not a readable gammapy MapDataset"),
    "no-background": (lambda good: variant(good, "nobkg", without_background), "has no BACKGROUND map"),
    "nan-exposure": (lambda good: variant(good, "nanexp", set_data("exposure", np.nan)),
                     "exposure values inside mask_safe are NaN"),
    "zero-exposure": (lambda good: variant(good, "zeroexp", set_data("exposure", 0)), "exposure is zero everywhere"),
    "nan-counts": (lambda good: variant(good, "nancounts", set_data("counts", np.nan)),
                   "counts values inside mask_safe are NaN"),
    "negative-background": (lambda good: variant(good, "negbkg", set_data("background", -1)),
                            "background values inside mask_safe are NaN, infinite or negative"),
    "empty-mask-safe": (lambda good: variant(good, "nomask", set_data("mask_safe", False)),
                        "mask_safe excludes every pixel"),
    "single-pixel": (lambda good: variant(good, "onepix", one_pixel), "(1 x 1 pixels, 0.03 x 0.03 deg) is smaller "
                     "than the significance disk (0.4 deg across, significance.radii)"),
}


def run_cli(args):
    result = CliRunner().invoke(cli, args)
    lines = result.output.strip().splitlines()
    assert "Traceback" not in result.output
    return result.exit_code, lines[-1] if lines else ""


@pytest.mark.parametrize("case", list(DATASET_CASES))
def test_bad_dataset_file_one_line_error(good, tmp_path, case):
    make, message = DATASET_CASES[case]
    path = make(good)
    config = tmp_path / "config.yaml"
    config.write_text(PipelineConfig(input={"kind": "files", "datasets": [str(path)]}).to_yaml())
    code, line = run_cli(["run", str(config), "--out", str(tmp_path / "out")])
    assert code == 1
    assert line.startswith("Error: ") and message in line and str(path) in line, line
    state = json.loads((tmp_path / "out" / "state.json").read_text()) if (tmp_path / "out" / "state.json").exists() \
        else {"done": []}
    assert state["done"] == [], "no stage finished on a bad dataset"


def test_two_files_with_one_dataset_name(good, tmp_path):
    other = variant(good, "copy", lambda dataset: None)
    config = tmp_path / "config.yaml"
    config.write_text(PipelineConfig(input={"kind": "files", "datasets": [str(good), str(other)]}).to_yaml())
    code, line = run_cli(["run", str(config), "--out", str(tmp_path / "out")])
    assert code == 1 and "two files give the same dataset name" in line


# truth / known-source model files: (key, file name, content, message fragment)
MODEL_FILE_CASES = [
    ("truth", "broken.yaml", "components: [1, 2\n", ":2:1: malformed YAML: expected ',' or ']'"),
    ("truth", "no-components.yaml", "foo: bar\n", "not a gammapy model file (no 'components' list) (input.truth)"),
    ("truth", "twice.yaml", "components: []\ncomponents: []\n", ":2: duplicate key 'components' (first given at line 1)"),
    ("truth", "table.ecsv", "# %ECSV 1.0\n", "unknown model file type; use .xml, .yaml/.yml or .fits/.fits.gz"),
    ("truth", "absent.yaml", None, "Input file not found"),
    ("known_sources", "broken.yaml", "components: {\n", "malformed YAML"),
    ("known_sources", "binary.yaml", b"\x00\xff\xfe", "cannot read the YAML model file as UTF-8 text"),
]


@pytest.mark.parametrize("key, name, content, message", MODEL_FILE_CASES)
def test_bad_model_file_one_line_error_before_any_stage(good, tmp_path, monkeypatch, key, name, content, message):
    from gpsfast.pipeline import run as pipeline_run

    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    data = {"input": {"kind": "files", "datasets": [str(good)]}}
    if key == "truth":
        data["input"]["truth"] = str(path)
    else:
        data["association"] = {"known_sources": str(path)}
    config = tmp_path / "config.yaml"
    config.write_text(PipelineConfig.model_validate(data).to_yaml())
    monkeypatch.setitem(pipeline_run._STAGE_FUNCTIONS, "datasets", lambda run: pytest.fail("a stage ran"))
    code, line = run_cli(["run", str(config), "--out", str(tmp_path / "out")])
    assert code == 1
    assert line.startswith("Error: ") and message in line and str(path) in line, line
    assert ("(input.truth)" if key == "truth" else "(association.known_sources)") in line, "the key is named"


# configuration values: (YAML text, message fragment)
CONFIG_CASES = [
    ("input:\n  seed: -1\n", "input.seed: Input should be greater than or equal to 0"),
    ("input:\n  glat: 95\n", "input.glat: Input should be less than or equal to 90"),
    ("input:\n  glat: -91\n", "input.glat: Input should be greater than or equal to -90"),
    ("input:\n  height: -1\n", "input.height: Input should be greater than 0"),
    ("input:\n  width: .nan\n", "input.width: Input should be a finite number"),
    ("significance:\n  radii: [0.1, -0.2]\n", "significance.radii.1: Input should be greater than 0"),
    ("significance:\n  radii: []\n", "significance.radii: List should have at least 1 item"),
    ("seeds:\n  min_distance: -0.1\n", "seeds.min_distance: Input should be greater than 0"),
    ("seeds:\n  threshold: .inf\n", "seeds.threshold: Input should be a finite number"),
    ("association:\n  min_radius: -0.1\n", "association.min_radius: Input should be greater than 0"),
    ("spectra:\n  index_radius: -0.2\n", "spectra.index_radius: Input should be greater than 0"),
    ("spectra:\n  min_seed_radius: 0\n", "spectra.min_seed_radius: Input should be greater than 0"),
    ("fit:\n  margin: -0.3\n", "fit.margin: Input should be greater than or equal to 0"),
    ("fit:\n  position_range: -1\n", "fit.position_range: Input should be greater than 0"),
    ("fit:\n  min_separation: 0\n", "fit.min_separation: Input should be greater than 0"),
    ("fit:\n  residual_min_separation: -1\n", "fit.residual_min_separation: Input should be greater than 0"),
    ("fit:\n  max_group_size: 0\n", "fit.max_group_size: Input should be greater than or equal to 1"),
    ("seeds:\n  threshold: 5\n  threshold: 6\n", "3: duplicate key 'threshold' (first given at line 2)"),
    ("seeds: {}\nseeds: {}\n", "2: duplicate key 'seeds' (first given at line 1)"),
    ("seeds: [1\n", "2:1: malformed YAML: expected ',' or ']'"),
    (b"\xc4\x00\xff binary", "cannot read the configuration file as UTF-8 text (UnicodeDecodeError)"),
]


@pytest.mark.parametrize("text, message", CONFIG_CASES)
def test_bad_configuration_value_one_line_error(tmp_path, text, message):
    path = tmp_path / "config.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(InputError, match=re.escape(message)):
        load_config(path)
    for command in ("run", "survey"):
        code, line = run_cli([command, str(path), "--out", str(tmp_path / "out")])
        assert code == 1 and line.startswith(f"Error: {path}") and message in line, line


# survey options: (arguments, message fragment)
SURVEY_CASES = [
    (["--roi-width", "-2"], "survey.roi_width (-2.0) must be larger than 0 deg"),
    (["--roi-width", "nan"], "survey.roi_width must be a finite number, got nan"),
    (["--roi-overlap", "-1"], "survey.roi_overlap (-1.0) must be in [0, roi_width = 10.0)"),
    (["--roi-overlap", "10"], "survey.roi_overlap (10.0) must be in [0, roi_width = 10.0)"),
    (["--glon-min", "3", "--glon-max", "1"], "survey.glon_max (1.0) must be larger than survey.glon_min (3.0)"),
    (["--glon-max", "inf"], "survey.glon_max must be a finite number, got inf"),
    (["--n-jobs", "0"], "run_survey: n_jobs must be -1 or at least 1, got 0"),
]


@pytest.mark.parametrize("args, message", SURVEY_CASES)
def test_bad_survey_option_one_line_error(tmp_path, args, message):
    code, line = run_cli(["survey", "--out", str(tmp_path / "out"), *args])
    assert code == 1 and line == f"Error: {message}", line
    assert not (tmp_path / "out").exists(), "refused before anything is written"


def test_patch_without_sources_ends_cleanly_and_says_so(good, tmp_path):
    """A pure-background patch: no seed, an empty catalogue, a warning in run.log and a clear console line."""
    def pure_background(dataset):
        dataset.counts.data = np.random.default_rng(1).poisson(dataset.background.data).astype(float)

    path = variant(good, "purebkg", pure_background)
    config = tmp_path / "config.yaml"
    config.write_text(PipelineConfig(input={"kind": "files", "datasets": [str(path)]},
                                     significance={"radii": [0.1]}).to_yaml())
    result = CliRunner().invoke(cli, ["run", str(config), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "no source found (empty models.yaml, no catalogue.fits)" in result.output
    folder = tmp_path / "out"
    assert len(Models.read(folder / "models.yaml")) == 0
    assert not any((folder / name).exists() for name in ("catalogue.fits", "models.xml", "catalogue.reg"))
    log = (folder / "run.log").read_text()
    assert "WARNING gpsfast.pipeline.run: No seed above sqrt_ts 5 in the significance maps of postev" in log
    assert "No source found: the catalogue is empty" in log


# gpsfast simulate options: (arguments, message fragment)
SIMULATE_CASES = [
    (["--glat", "100"], "Invalid value for '--glat': 100.0 is not in the range -90<=x<=90."),
    (["--glon", "nan"], "Invalid value for '--glon': nan is not a finite number."),
    (["--seed", "-1"], "Invalid value for '--seed': -1 is not in the range x>=0."),
    (["--width", "-1"], "Invalid value for '--width': -1.0 is not in the range 0<x<=360."),
    (["--livetime", "0"], "Invalid value for '--livetime': 0.0 is not in the range x>0."),
]


@pytest.mark.parametrize("args, message", SIMULATE_CASES)
def test_bad_simulate_option_one_line_error(tmp_path, args, message):
    code, line = run_cli(["simulate", "--out", str(tmp_path / "out"), *args])
    assert code == 2 and line == f"Error: {message}", line
    assert not (tmp_path / "out").exists()
