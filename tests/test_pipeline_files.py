"""The pipeline on dataset files (``input.kind: files``): with no truth nor known sources, with YAML truth and known
sources that no seed matches; the validation's count of seeds without a true source."""
import json

import astropy.units as u
import numpy as np
import pytest
from astropy.table import Table
from gammapy.modeling.models import Models, PointSpatialModel, PowerLawSpectralModel, SkyModel

from gpsfast.detect import SeedCatalog
from gpsfast.models import read_catalog
from gpsfast.pipeline import PipelineConfig, run_pipeline
from gpsfast.pipeline.report import _false_seeds


@pytest.fixture(scope="module")
def dataset_file(tmp_path_factory, postev_patch):
    """A simulated 1.5 x 1 deg PosTeV dataset written as a gammapy MapDataset FITS file."""
    datasets, _ = postev_patch()
    path = tmp_path_factory.mktemp("files") / "postev.fits"
    datasets[0].write(path)
    return path


def files_config(dataset_file, folder, **input_options):
    return PipelineConfig(input={"kind": "files", "datasets": [str(dataset_file)], **input_options},
                          significance={"radii": [0.1]}, fit={"enabled": False}, parallel={"n_jobs": 1},
                          output=folder)


def test_files_without_truth_or_known_sources_give_a_catalogue(dataset_file, tmp_path):
    folder = run_pipeline(files_config(dataset_file, tmp_path / "out"))
    models = Models.read(folder / "models.yaml")
    assert len(models) > 0
    assert [m.name for m in read_catalog(folder / "catalogue.fits")] == list(models.names)
    table = Table.read(folder / "catalogue.fits", hdu="CATALOG", mask_invalid=False)
    assert [str(value).strip() for value in table["Assoc"]] == [""] * len(models), "no reference: no association"
    assert not (folder / "validation.json").exists(), "no truth: no validation"


def test_yaml_truth_and_known_sources_that_no_seed_matches(dataset_file, tmp_path):
    """Every seed is unassociated (its ``assoc`` is read back from FITS as a masked empty column)."""
    far = SkyModel(spatial_model=PointSpatialModel(lon_0=5 * u.deg, lat_0=0 * u.deg, frame="galactic"),
                   spectral_model=PowerLawSpectralModel(), name="far-away")
    truth = tmp_path / "truth.yaml"
    Models([far]).write(truth)
    config = files_config(dataset_file, tmp_path / "out", truth=str(truth))
    config = config.model_copy(update={"association": config.association.model_copy(update={"known_sources": truth})})
    folder = run_pipeline(config)
    seeds = SeedCatalog.read(folder / "seeds.fits").table
    assert len(seeds) > 0
    report = json.loads((folder / "validation.json").read_text())
    assert report["n_true_sources"] == 1, "the YAML truth is read"
    assert report["seeds"]["n_seeds"] == len(seeds)
    assert report["seeds"]["false_seeds"] == len(seeds)
    assert len(Table.read(folder / "associations_known.ecsv")) == 0, "the YAML known sources are read"


def test_false_seeds_counts_the_seeds_without_a_true_source(tmp_path):
    seeds = SeedCatalog(Table({"name": ["S1", "S2", "S3"], "glon": [0.0, 0.5, 1.0], "glat": [0.0] * 3,
                               "radius": [0.1] * 3, "sqrt_ts": [9.0, 7.0, 6.0],
                               "assoc": np.array(["", "SIM-1", ""], dtype="U64")}))
    seeds.write(tmp_path / "seeds.fits")
    seeds = SeedCatalog.read(tmp_path / "seeds.fits")
    pairs = Table(rows=[("S2", "SIM-1")], names=["seed", "source"])
    assert _false_seeds(seeds, pairs) == 2
    assert _false_seeds(seeds, pairs[:0]) == 3
