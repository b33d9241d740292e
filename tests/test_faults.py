"""Fault injection: two runs on one folder, SIGKILL, SIGINT, disk full, --overwrite, changed settings, group-fit
checkpoints, a dying survey worker and workers orphaned by a killed parent."""
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from astropy.io import fits
from astropy.table import Table
from click.testing import CliRunner
from gammapy.datasets import MapDataset
from gammapy.modeling.models import Models

import faults_helper
from gpsfast.cli import cli
from gpsfast.errors import FolderInUseError, InputError
from gpsfast.groups import fit_groups, make_groups
from gpsfast.pipeline import STAGES, PipelineConfig, run_pipeline, run_survey
from gpsfast.pipeline import run as pipeline_run
from gpsfast.pipeline import survey as survey_mode
from gpsfast.pipeline.folder import remove_outputs
from gpsfast.utils import LOCK_NAME

RESUME = "what was written before is kept: run the same command again to resume"


class Stop(Exception):
    """Raised by an injected stage to end a run early."""


def tiny_config(folder, fit=True):
    """A 1.5 x 1 deg simulated patch, one significance radius, one pass of group fits (or none)."""
    return PipelineConfig(input={"width": 1.5, "height": 1.0, "seed": 7}, significance={"radii": [0.1]},
                          fit={"enabled": fit, "residual_passes": 0}, parallel={"n_jobs": 1}, output=folder)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    config = tiny_config(tmp_path_factory.mktemp("faults") / "run")
    return run_pipeline(config), config


def contents(folder):
    """Relative path -> bytes of every file in a folder but the lock file (rewritten by whoever takes the lock)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != LOCK_NAME}


def interrupted_copy(finished, tmp_path, before_stage):
    """A copy of the finished run whose state stops before ``before_stage`` (an interrupted run); its config file."""
    folder, config = finished
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    state = json.loads((copy / "state.json").read_text())
    state["done"] = list(STAGES[: STAGES.index(before_stage)])
    state["seconds"] = {stage: state["seconds"][stage] for stage in state["done"]}
    (copy / "state.json").write_text(json.dumps(state))
    config_path = tmp_path / "config.yaml"
    config_path.write_text(config.model_copy(update={"output": copy}).to_yaml())
    shutil.copy(config_path, copy / "config.yaml")  # as the interrupted run in this folder wrote it
    return copy, config_path


def last_line(result):
    assert "Traceback" not in result.output
    return result.output.strip().splitlines()[-1]


def forbid_stages(monkeypatch, stages):
    for stage in stages:
        monkeypatch.setitem(pipeline_run._STAGE_FUNCTIONS, stage,
                            lambda run, stage=stage: pytest.fail(f"stage {stage} was redone"))


def test_finished_run_leaves_no_temporary_file(finished):
    folder, _ = finished
    hidden = [str(p.relative_to(folder)) for p in folder.rglob(".*") if p.name != LOCK_NAME]
    assert hidden == []
    maps = folder / "maps" / "significance_postev_r0.1.fits"
    assert fits.getheader(maps)["MODEL"] == f"{maps}_model.yaml", "the maps name their own model file"


# ------------------------------------------------------------------ two runs on one folder, SIGKILL

HOLDER = """
import sys, time
from pathlib import Path
from gpsfast.pipeline import PipelineConfig, run_pipeline
from gpsfast.pipeline import run as pipeline_run

def hold(run):
    Path(sys.argv[2]).write_text("in significance")
    time.sleep(300)

pipeline_run._STAGE_FUNCTIONS["significance"] = hold
run_pipeline(PipelineConfig.model_validate_json(Path(sys.argv[1]).read_text()))
"""


def test_second_run_refused_at_once_and_sigkill_frees_the_folder(tmp_path, monkeypatch):
    config = tiny_config(tmp_path / "run", fit=False)
    (tmp_path / "config.json").write_text(config.model_dump_json())
    (tmp_path / "config.yaml").write_text(config.to_yaml())
    marker = tmp_path / "marker"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path / "config.json"), str(marker)])
    try:
        deadline = time.monotonic() + 180
        while not marker.exists():
            assert holder.poll() is None, "the first run ended early"
            assert time.monotonic() < deadline, "the first run did not reach its second stage"
            time.sleep(0.2)
        start = time.monotonic()
        expected = rf"in use by gpsfast run \(pid {holder.pid} on host \S+, started \d{{4}}-\d\d-\d\dT"
        with pytest.raises(FolderInUseError, match=expected):
            run_pipeline(config)
        assert time.monotonic() - start < 5, "refused at once"
        result = CliRunner().invoke(cli, ["run", str(tmp_path / "config.yaml")])
        assert result.exit_code == 1
        assert last_line(result).startswith(f"Error: Output folder {config.output} is in use by gpsfast run (pid "
                                            f"{holder.pid} on host ")
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    finally:
        if holder.poll() is None:
            holder.kill()
    # the kernel released the killed run's lock: the next run starts at once and resumes after its finished stage
    forbid_stages(monkeypatch, ["datasets"])
    ran = []

    def significance(run):
        ran.append("significance")
        raise Stop

    monkeypatch.setitem(pipeline_run._STAGE_FUNCTIONS, "significance", significance)
    with pytest.raises(Stop):
        run_pipeline(config)
    assert ran == ["significance"]


# ------------------------------------------------------------------ --overwrite and changed configuration


def test_overwrite_leaves_nothing_of_the_old_run(finished, tmp_path, monkeypatch):
    folder, config = finished
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    (copy / "notes.txt").write_text("the user's own file")
    old = contents(copy)
    assert {"catalogue.fits", "models.xml", "catalogue.reg"} <= set(old) and any(k.startswith("fits/") for k in old)
    other = config.model_copy(update={"output": copy, "seeds": config.seeds.model_copy(update={"threshold": 1e3})})
    with pytest.raises(InputError, match=r"holds a run made with another configuration \(seeds.threshold: 5.0 -> "
                                         r"1000.0\); use another output folder or --overwrite"):
        run_pipeline(other)
    assert contents(copy) == old, "a refused run changes nothing"
    config_path = tmp_path / "other.yaml"
    config_path.write_text(other.to_yaml())
    start = time.time_ns()
    result = CliRunner().invoke(cli, ["run", str(config_path), "--overwrite"])
    assert result.exit_code == 0, result.output
    assert "no source found (empty models.yaml, no catalogue.fits)" in result.output
    new = contents(copy)
    assert not {"catalogue.fits", "models.xml", "catalogue.reg", "fit_results.ecsv"} & set(new)
    assert not any(k.startswith("fits/") for k in new)
    assert len(Models.read(copy / "models.yaml")) == 0
    old_files = [k for k in new if k != "notes.txt" and (copy / k).stat().st_mtime_ns < start]
    assert old_files == [], "every file is the new run's"
    assert new["notes.txt"] == old["notes.txt"], "files gpsfast did not write are kept"
    assert json.loads((copy / "state.json").read_text())["settings"]["seeds"]["threshold"] == 1e3
    # the same configuration again resumes: nothing is redone
    forbid_stages(monkeypatch, STAGES)
    assert run_pipeline(other) == copy


def test_overwrite_never_deletes_inputs_nor_foreign_folders(finished, tmp_path):
    folder, _ = finished
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    before = contents(copy)
    inside = PipelineConfig(input={"kind": "files", "datasets": [str(copy / "datasets" / "postev.fits")]},
                            output=copy)
    with pytest.raises(InputError, match=rf"--overwrite would delete the input file {copy}/datasets/postev.fits"):
        run_pipeline(inside, overwrite=True)
    assert contents(copy) == before, "nothing deleted"
    mine = tmp_path / "mine"
    (mine / "maps").mkdir(parents=True)
    (mine / "models.yaml").write_text("my own file")
    assert remove_outputs(mine, pipeline_run.OUTPUTS) == [], "not a gpsfast folder: nothing deleted"
    assert (mine / "models.yaml").is_file() and (mine / "maps").is_dir()


def test_changed_input_file_is_refused(finished, tmp_path):
    """A run from files records their digests: the same configuration over changed files is another run."""
    folder, _ = finished
    dataset = tmp_path / "postev.fits"
    shutil.copy(folder / "datasets" / "postev.fits", dataset)
    config = PipelineConfig(input={"kind": "files", "datasets": [str(dataset)]}, fit={"enabled": False},
                            output=tmp_path / "out")

    def stop(run):
        raise Stop

    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(pipeline_run._STAGE_FUNCTIONS, "significance", stop)
        with pytest.raises(Stop):
            run_pipeline(config)
    data = MapDataset.read(dataset, name="postev")
    data.counts.data[0, 0, 0] += 1
    data.write(dataset, overwrite=True)
    with pytest.raises(InputError, match=r"holds a run made from other input files \(input.datasets\[0\] changed\)"):
        run_pipeline(config)


# ------------------------------------------------------------------ SIGINT, disk full, unexpected errors


def test_interrupt_is_one_line_and_keeps_finished_stages(finished, tmp_path, monkeypatch):
    copy, config_path = interrupted_copy(finished, tmp_path, "residual")

    def interrupted(run):
        raise KeyboardInterrupt

    monkeypatch.setitem(pipeline_run._STAGE_FUNCTIONS, "residual", interrupted)
    result = CliRunner().invoke(cli, ["run", str(config_path)])
    assert result.exit_code == 130
    assert last_line(result) == f"Interrupted: {RESUME}"
    assert json.loads((copy / "state.json").read_text())["done"] == list(STAGES[: STAGES.index("residual")])


def test_disk_full_loses_nothing_and_resumes(finished, tmp_path, monkeypatch):
    copy, config_path = interrupted_copy(finished, tmp_path, "catalogue")
    before = contents(copy)
    real_replace, full = os.replace, []

    def replace(src, dst, **kwargs):
        if full:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))
        return real_replace(src, dst, **kwargs)

    catalogue = pipeline_run._STAGE_FUNCTIONS["catalogue"]

    def disk_fills_up(run):
        full.append(True)
        catalogue(run)

    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setitem(pipeline_run._STAGE_FUNCTIONS, "catalogue", disk_fills_up)
    result = CliRunner().invoke(cli, ["run", str(config_path)])
    assert result.exit_code == 1
    line = last_line(result)
    assert line.startswith(f"Error: No space left on the device ({copy / 'catalogue.fits'}): {RESUME}")
    after = contents(copy)
    assert set(after) == set(before), "no temporary or half-written file is left"
    assert {name for name in before if after[name] != before[name]} <= {"run.log"}, "nothing written before is lost"
    # space again: the run resumes at the catalogue
    full.clear()
    monkeypatch.setitem(pipeline_run._STAGE_FUNCTIONS, "catalogue", catalogue)
    forbid_stages(monkeypatch, STAGES[: STAGES.index("catalogue")])
    result = CliRunner().invoke(cli, ["run", str(config_path)])
    assert result.exit_code == 0, result.output
    assert (copy / "catalogue.fits").is_file()
    assert json.loads((copy / "state.json").read_text())["done"] == list(STAGES)


def test_unexpected_error_one_line_traceback_with_verbose(tmp_path, monkeypatch):
    config_path = tmp_path / "config.yaml"
    config_path.write_text(tiny_config(tmp_path / "out").to_yaml())

    def buggy(run):
        raise TypeError("injected bug")

    monkeypatch.setitem(pipeline_run._STAGE_FUNCTIONS, "datasets", buggy)
    result = CliRunner().invoke(cli, ["run", str(config_path)])
    assert result.exit_code == 1
    assert last_line(result) == ("Error: unexpected TypeError: injected bug (a gpsfast bug: run with -v for the "
                                 "traceback and report it)")
    for args in (["-v", "run", str(config_path)], ["run", str(config_path), "-v"]):
        result = CliRunner().invoke(cli, args)
        assert isinstance(result.exception, TypeError), args  # not turned into a one-line error: traceback shown


# ------------------------------------------------------------------ group-fit checkpoints


def test_group_checkpoints_keyed_by_inputs_with_the_outputs_file_mode(finished, tmp_path):
    folder, _ = finished
    fits_files = [p for p in (folder / "fits").rglob("*") if p.is_file()]
    assert fits_files and {p.stat().st_mode & 0o777 for p in fits_files} == {
        (folder / "catalogue.fits").stat().st_mode & 0o777}, "checkpoints get the mode of the other outputs"
    umask = os.umask(0o022)
    try:
        dataset = MapDataset.read(folder / "datasets" / "postev.fits", name="postev")
        models = Models.read(folder / "initial_models.yaml")
        checkpoint = tmp_path / "checkpoint"
        faults_helper.FIT_CALLS.clear()
        fit_groups(dataset, models.copy(), checkpoint=checkpoint, fit_function=faults_helper.counting_fit)
        groups = make_groups(models)
        assert sorted(call[0] for call in faults_helper.FIT_CALLS) == sorted(g.names[0] for g in groups), \
            "one fit per group"
        assert {p.stat().st_mode & 0o777 for p in checkpoint.iterdir()} == {0o644}
        faults_helper.FIT_CALLS.clear()
        fit_groups(dataset, models.copy(), checkpoint=checkpoint, fit_function=faults_helper.counting_fit)
        assert faults_helper.FIT_CALLS == [], "same inputs: resumed"
        other_start = models.copy()
        other_start[0].spectral_model.amplitude.value *= 2
        with pytest.raises(InputError, match="other groups or other inputs"):
            fit_groups(dataset, other_start, checkpoint=checkpoint, fit_function=faults_helper.counting_fit)
        dataset.counts.data[0, 0, 0] += 1
        with pytest.raises(InputError, match="other groups or other inputs"):
            fit_groups(dataset, models.copy(), checkpoint=checkpoint, fit_function=faults_helper.counting_fit)
    finally:
        os.umask(umask)


# ------------------------------------------------------------------ survey: dying worker, changed settings

ROIS = {"roi_width": 1.5, "roi_overlap": 0.5}


@pytest.fixture(scope="module")
def survey_run(tmp_path_factory):
    """A 2-ROI survey in a pool of 2 whose roi-02 worker dies (``os._exit``) once."""
    config = PipelineConfig(input={"width": 2.5, "height": 1.0, "seed": 5}, significance={"radii": [0.1]},
                            fit={"enabled": False}, parallel={"n_jobs": 2},
                            output=tmp_path_factory.mktemp("survey") / "survey")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(survey_mode, "_run_roi", faults_helper.die_once)
        folder = run_survey(config, **ROIS)
    return folder, config


def test_survey_survives_a_dying_roi_worker(survey_run):
    folder, _ = survey_run
    assert (folder / "died-roi-02").is_file(), "the worker of roi-02 died"
    report = json.loads((folder / "survey.json").read_text())
    assert list(report["rois"]) == ["roi-01", "roi-02"] and report["failed"] == {}
    assert len(report["worker_pool_failures"]) == 1
    for roi in ("roi-01", "roi-02"):
        assert json.loads((folder / roi / "pipeline" / "state.json").read_text())["done"] == list(STAGES)
    assert report["n_sources"] == len(Models.read(folder / "models.yaml"))


@pytest.mark.parametrize(
    "change, message",
    [
        ({"seed": 6}, r"config.input.seed: 5 -> 6"),
        ({"roi_width": 2.0}, r"roi_width: 1.5 -> 2.0"),
        ({"roi_overlap": 0.4}, r"roi_overlap: 0.5 -> 0.4"),
        ({"glon_max": 1.0}, r"glon_max: 1.25 -> 1.0"),
    ],
)
def test_survey_refuses_other_settings(survey_run, change, message):
    folder, config = survey_run
    rois = dict(ROIS)
    if "seed" in change:
        config = config.model_copy(update={"input": config.input.model_copy(update=change)})
    else:
        rois.update(change)
    before = contents(folder)
    with pytest.raises(InputError, match=rf"holds a run made with another configuration \(.*{message}.*--overwrite"):
        run_survey(config, **rois)
    assert contents(folder) == before


def test_survey_same_settings_resume_overwrite_and_keyed_cutouts(survey_run, tmp_path, monkeypatch):
    folder, config = survey_run
    copy = tmp_path / "survey"
    shutil.copytree(folder, copy)
    config = config.model_copy(update={"output": copy})
    forbid_stages(monkeypatch, STAGES)
    assert run_survey(config, n_jobs=1, **ROIS) == copy, "same settings: every ROI is finished, nothing redone"
    # cutouts made for another ROI geometry are made again, and the ROI's pipeline folder with them
    roi = Table.read(copy / "rois.ecsv")[0]
    roi["width"] = 1.0
    key = yaml.safe_load((copy / "survey-datasets" / "survey.yaml").read_text())["key"]
    inputs = survey_mode._roi_inputs(roi, copy / "roi-01", copy / "survey-datasets", key)
    assert not (copy / "roi-01" / "pipeline").exists()
    cutout = MapDataset.read(inputs / "postev.fits")
    assert abs(cutout.counts.geom.width[0, 0].to_value("deg") - 1.0) < 0.05
    # --overwrite with other settings: every output of the old survey goes first
    (copy / "notes.txt").write_text("mine")
    other = config.model_copy(update={"input": config.input.model_copy(update={"seed": 6})})

    def stop(*args):
        raise Stop

    monkeypatch.setattr(survey_mode, "_survey_datasets", stop)
    with pytest.raises(Stop):
        run_survey(other, overwrite=True, **ROIS)
    assert sorted(p.name for p in copy.iterdir()) == [".gpsfast.lock", "died-roi-02", "notes.txt", "rois.ecsv",
                                                      "state.json"], "only the new survey's first files and ours"
    assert json.loads((copy / "state.json").read_text())["settings"]["config"]["input"]["seed"] == 6


# ------------------------------------------------------------------ orphaned workers

ORPHANING_PARENT = """
import sys
import faults_helper
from gpsfast.pipeline import survey
survey._run_roi = faults_helper.sleep_roi
survey._run_all(sys.argv[1:], 2, "loky", None)
"""


def _running(pid):
    """The process exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_survey_workers_end_with_their_killed_parent(tmp_path):
    if not Path("/proc/self/stat").is_file():
        pytest.skip("needs /proc to see the worker processes")
    pid_files = [tmp_path / f"worker-{i}" for i in range(2)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).parent),
                                                                     os.environ.get("PYTHONPATH")]))}
    parent = subprocess.Popen([sys.executable, "-c", ORPHANING_PARENT, *map(str, pid_files)], env=env)
    workers = []
    try:
        deadline = time.monotonic() + 180
        while not all(p.is_file() and p.read_text() for p in pid_files):
            assert parent.poll() is None and time.monotonic() < deadline, "the ROI tasks did not start"
            time.sleep(0.2)
        workers = [int(p.read_text()) for p in pid_files]
        assert all(_running(pid) for pid in workers)
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=30)
        deadline = time.monotonic() + 10
        while any(_running(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [pid for pid in workers if _running(pid)], "workers outlive their killed parent"
    finally:
        if parent.poll() is None:
            parent.kill()
        for pid in workers:
            if _running(pid):
                os.kill(pid, signal.SIGKILL)
