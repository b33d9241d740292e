"""Survey mode: ROIs along the plane, merged without duplicates at the seams, resumable."""
import json

import numpy as np
import pytest
from astropy.coordinates import SkyCoord
from astropy.table import Table
from gammapy.modeling.models import Models

from gpsfast.errors import InputError, RunError
from gpsfast.pipeline import PipelineConfig, load_config, make_rois, run_survey
from gpsfast.pipeline import run as pipeline_run


def test_rois_tile_the_strip():
    rois = make_rois(-5, 5, 0.0, width=4, height=2, overlap=1)
    assert len(rois) == 3
    np.testing.assert_allclose(rois["glon"], [-3, 0, 3])
    np.testing.assert_allclose(rois["core_max"][:-1], rois["core_min"][1:])
    assert rois["core_min"][0] == -np.inf and rois["core_max"][-1] == np.inf
    assert rois["glon"][-1] + 2 >= 5


@pytest.mark.parametrize("args, message", [((5, 5, 0, 4, 2, 1), "must be larger"), ((0, 5, 0, 4, 2, 4), "roi_overlap")])
def test_roi_errors(args, message):
    with pytest.raises(InputError, match=message):
        make_rois(*args)


def strip_config(tmp_path):
    return PipelineConfig(input={"width": 5.0, "height": 1.5, "seed": 5}, output=tmp_path / "survey")


def merged_positions(folder):
    models = Models.read(folder / "models.yaml")
    names = [m.name for m in models]
    positions = SkyCoord([m.spatial_model.position.galactic for m in models])
    return names, positions


def test_survey_merge_and_resume(tmp_path, monkeypatch):
    config = strip_config(tmp_path)
    config = config.model_copy(update={"parallel": config.parallel.model_copy(update={"n_jobs": 2})})
    original = pipeline_run._STAGE_FUNCTIONS["seeds"]

    def fail_in_second_roi(run):
        if "roi-02" in str(run.folder):
            raise RuntimeError("interrupted in roi-02")
        original(run)

    monkeypatch.setitem(pipeline_run._STAGE_FUNCTIONS, "seeds", fail_in_second_roi)
    with pytest.raises(RunError, match="1 of 3 ROIs failed .roi-02: RuntimeError: interrupted in roi-02"):
        run_survey(config, roi_width=2.5, roi_overlap=0.5, n_jobs=1)
    for roi in ("roi-01", "roi-03"):
        state = json.loads((config.output / roi / "pipeline" / "state.json").read_text())
        assert state["done"] == list(pipeline_run.STAGES), f"{roi} is complete and kept"
    report = json.loads((config.output / "survey.json").read_text())
    assert list(report["failed"]) == ["roi-02"], "the failed ROI is reported, the others merged"
    roi_config = load_config(config.output / "roi-01" / "pipeline" / "config.yaml")
    assert roi_config.parallel.n_jobs == 1, "no process pool inside a ROI: the ROIs are the parallel tasks"

    calls = []
    for stage in pipeline_run.STAGES:
        function = original if stage == "seeds" else pipeline_run._STAGE_FUNCTIONS[stage]

        def counted(run, stage=stage, function=function):
            calls.append((run.folder.parent.name, stage))
            function(run)

        monkeypatch.setitem(pipeline_run._STAGE_FUNCTIONS, stage, counted)
    folder = run_survey(config, roi_width=2.5, roi_overlap=0.5, n_jobs=1)
    assert not [c for c in calls if c[0] == "roi-01"], "the finished ROI is not redone"
    assert ("roi-02", "seeds") in calls and ("roi-02", "datasets") not in calls, "roi-02 resumes at its failed stage"

    report = json.loads((folder / "survey.json").read_text())
    names, positions = merged_positions(folder)
    assert report["n_sources"] == len(names) > 0
    assert len(set(names)) == len(names)
    roi_of = np.array([name.split("-SEED")[0] for name in names])
    separation = positions[:, None].separation(positions[None, :]).deg
    different_roi = roi_of[:, None] != roi_of[None, :]
    assert not np.any((separation < 0.05) & different_roi), "no duplicate sources at the seams"
    assert (folder / "catalogue.fits").is_file() and (folder / "seeds.fits").is_file()
    # the merged catalogue keeps each ROI catalogue's rows: TS, associations, flags
    merged = Table.read(folder / "catalogue.fits", hdu="CATALOG")
    for row in merged:
        roi = str(row["ROI"]).strip()
        own = Table.read(folder / roi / "pipeline" / "catalogue.fits", hdu="CATALOG")
        source = own[[f"{roi}-{str(n).strip()}" == str(row["Source_Name"]).strip() for n in own["Source_Name"]]]
        assert len(source) == 1
        for column in ("TS", "Npred", "Flag", "Assoc", "GLON"):
            assert source[column][0] == row[column], column


def test_survey_needs_simulation(tmp_path):
    config = PipelineConfig(input={"kind": "files", "datasets": ["x.fits"]}, output=tmp_path / "s")
    with pytest.raises(InputError, match="input.kind must be 'simulate'"):
        run_survey(config)


def test_survey_on_a_dask_cluster_matches_loky(tmp_path):
    pytest.importorskip("distributed", reason="dask.distributed is not installed")
    config = strip_config(tmp_path / "loky")
    with_dask = config.model_copy(update={"output": tmp_path / "dask" / "survey",
                                          "parallel": config.parallel.model_copy(update={"backend": "dask"})})
    tables = []
    for run_config, n_jobs in ((config, 1), (with_dask, 2)):
        folder = run_survey(run_config, roi_width=2.5, roi_overlap=0.5, n_jobs=n_jobs)
        table = Table.read(folder / "catalogue.fits", hdu="CATALOG")
        table.sort("Source_Name")
        tables.append(table)
    loky, dask = tables
    assert len(loky) > 0 and list(loky["Source_Name"]) == list(dask["Source_Name"])
    for column in ("GLON", "GLAT", "TS", "Flux_1_100TeV"):
        np.testing.assert_allclose(dask[column], loky[column], rtol=1e-9, err_msg=column)
