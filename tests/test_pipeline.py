"""The survey pipeline: configuration, a full small run, resume, refusal to mix runs."""
import json
import time

import numpy as np
import pytest
from astropy.coordinates import SkyCoord
from astropy.table import Table
from click.testing import CliRunner
from gammapy.modeling.models import Models, SkyModel, TemplateSpatialModel

from gpsfast.cli import cli
from gpsfast.errors import InputError
from gpsfast.models import read_catalog
from gpsfast.pipeline import STAGES, PipelineConfig, load_config, run_pipeline
from gpsfast.pipeline import run as pipeline_run


def small_config(tmp_path, **input_kwargs):
    kwargs = {"width": 2.0, "height": 1.5, "seed": 7, **input_kwargs}
    return PipelineConfig(input=kwargs, output=tmp_path / "out")


RUN_SECONDS = {}
"""Wall time of the `finished_run` fixture's run, measured around it."""


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    config = small_config(tmp_path_factory.mktemp("pipeline"))
    start = time.perf_counter()
    folder = run_pipeline(config)
    RUN_SECONDS["run"] = time.perf_counter() - start
    return folder, config


def _at_bound(par):
    """A free parameter at its min or max (within 1e-6 relative or 1% of its error), as the catalogue's Flag says."""
    error = par.error if np.isfinite(par.error) else 0.0
    bounds = [b for b in (par.min, par.max) if np.isfinite(b)]
    return not par.frozen and any(
        abs(par.value - b) <= max(1e-6 * max(abs(par.value), abs(b)), 0.01 * error) for b in bounds)


def _expected_flag(model):
    """Flag bits from the fitted parameters: 1 position, 2 size (spatial r_0/sigma/radius/width), 4 any other."""
    flag = 0
    for component in (model.spectral_model, model.spatial_model, model.temporal_model):
        for par in [] if component is None else component.parameters:
            if _at_bound(par):
                if par.name in ("lon_0", "lat_0"):
                    flag |= 1
                elif component is model.spatial_model and par.name in ("r_0", "sigma", "radius", "width"):
                    flag |= 2
                else:
                    flag |= 4
    return flag


def test_outputs(finished_run):
    folder, _ = finished_run
    for name in ("catalogue.fits", "catalogue.reg", "models.yaml", "models.xml", "initial_models.yaml",
                 "fit_results.ecsv", "seeds.fits", "seeds.reg", "validation.json", "validation_matches.ecsv",
                 "run.log", "config.yaml", "significance_postev_r0.1.png", "residual_postev_r0.2.png",
                 "maps/significance_subtev_r0.2.fits", "maps/residual_subtev_r0.1.fits", "maps/index_postev.fits"):
        assert (folder / name).is_file(), name
    state = json.loads((folder / "state.json").read_text())
    assert state["done"] == list(STAGES)
    # the stage times are seconds of this run: together at most its wall time, the simulation not instantaneous
    assert list(state["seconds"]) == list(STAGES)
    assert state["seconds"]["datasets"] > 0 and sum(state["seconds"].values()) <= RUN_SECONDS["run"]
    models = read_catalog(folder / "catalogue.fits")
    assert len(models) == len(Models.read(folder / "models.yaml")) > 0
    report = json.loads((folder / "validation.json").read_text())
    assert report["catalogue"]["n_sources"] == len(models)
    truth = [m for m in Models.read(folder / "datasets" / "true_models.yaml")
             if isinstance(m, SkyModel) and not isinstance(m.spatial_model, TemplateSpatialModel)]
    assert report["n_true_sources"] == len(truth)
    # completeness per flux bin and false sources, counted here from the per-source table
    sources = Table.read(folder / "validation_sources.ecsv")
    flux, found = np.asarray(sources["flux_postev"]), np.asarray(sources["in_catalogue"], dtype=bool)
    bins = report["catalogue"]["completeness_vs_flux"]
    assert sum(row["n_true"] for row in bins) == report["n_true_sources"]
    for row in bins:
        inside = (flux >= row["flux_min"]) & (flux < row["flux_max"])
        assert (row["n_true"], row["n_found"]) == (inside.sum(), found[inside].sum()), row
    assert report["catalogue"]["false_sources"] == len(models) - found.sum()
    # a true source counts as found only with a catalogue source within the 0.3 deg matching radius
    catalogue = SkyCoord([m.position.galactic for m in models])
    for name in sources["name"][found]:
        true_position = next(m for m in truth if m.name == name).position
        assert catalogue.separation(true_position).deg.min() <= 0.3, name
    assert (folder / "completeness.png").is_file()
    assert report["seeds"]["n_seeds"] >= len(models)


def test_catalogue_ts_and_seed_columns(finished_run):
    """The catalogue's TS and Npred per dataset, and the seeds' nesting and associations, per source."""

    from gpsfast.detect import SeedCatalog

    folder, _ = finished_run
    table = Table.read(folder / "catalogue.fits", hdu="CATALOG")
    seeds = {str(row["name"]): row for row in SeedCatalog.read(folder / "seeds.fits").table}
    assert {"TS_subtev", "TS_postev", "Npred_subtev", "Npred_postev", "TS", "Npred"} <= set(table.colnames)
    assert np.all(np.isfinite(table["TS"])) and np.all(table["Npred"] > 0)
    assert np.allclose(table["TS"], table["TS_subtev"] + table["TS_postev"])
    # the brightest source is significant
    assert table["TS"].max() > 25
    from_seeds = [row for row in table if str(row["Source_Name"]) in seeds]
    assert from_seeds
    for row in from_seeds:
        seed = seeds[str(row["Source_Name"])]
        assert bool(row["Main"]) == (not bool(seed["nested"]))
        assert str(row["Assoc"]).strip() == str(seed["assoc"]).strip()
    # seeds associated with the simulated truth carry the true source's name into the catalogue
    assert any(str(row["Assoc"]).strip().startswith("SIM-") for row in from_seeds)
    fitted = Models.read(folder / "models.yaml")
    assert list(table["Flag"]) == [_expected_flag(fitted[str(name).strip()]) for name in table["Source_Name"]]


def test_group_fits_move_sources_towards_truth(finished_run):
    """The fitted catalogue is closer to the true positions than the initial seed models."""

    from gpsfast.pipeline.modelling import match_catalogue

    folder, _ = finished_run
    fits = Table.read(folder / "fit_results.ecsv")
    assert len(fits) >= 1 and fits["success"].all()
    sources = Table.read(folder / "validation_sources.ecsv")
    bright = list(sources["name"][sources["expected_sqrt_ts"] >= 5])
    truth = Models([m for m in Models.read(folder / "datasets" / "true_models.yaml") if m.name in bright])
    fitted = match_catalogue(truth, Models.read(folder / "models.yaml"))
    initial = match_catalogue(truth, Models.read(folder / "initial_models.yaml"))
    assert len(fitted) == len(bright) >= 1
    assert np.median(fitted["separation"]) < np.median(initial["separation"])


def test_residual_maps_flatter_than_significance(finished_run):
    """Subtracting the catalogue's models removes the significant excess."""
    from gammapy.estimators import FluxMaps

    folder, _ = finished_run
    raw = FluxMaps.read(folder / "maps" / "significance_postev_r0.1.fits")["sqrt_ts"].data
    residual = FluxMaps.read(folder / "maps" / "residual_postev_r0.1.fits")["sqrt_ts"].data
    assert np.nanmax(raw) > 8
    assert np.nanmax(np.abs(residual)) < 0.5 * np.nanmax(raw)


def test_seed_fluxes_close_to_truth(finished_run):
    """The initial seed models' fluxes are the right order of magnitude (catches unit slips)."""
    import astropy.units as u

    folder, _ = finished_run
    pairs = Table.read(folder / "associations_truth.ecsv")
    pairs = pairs[pairs["rank_source"] == 1]
    truth = Models.read(folder / "datasets" / "true_models.yaml")
    models = Models.read(folder / "models.yaml")
    energy = (1 * u.TeV, 100 * u.TeV)
    ratio = [
        (models[p["seed"]].spectral_model.integral(*energy) / truth[p["source"]].spectral_model.integral(*energy)).value
        for p in pairs
    ]
    assert len(ratio) >= 1
    assert 0.2 < np.median(ratio) < 5
    assert (folder / "flux_recovery.png").is_file()


def test_rerun_same_config_skips_everything(finished_run, monkeypatch):
    folder, config = finished_run
    calls = []
    for stage in STAGES:
        monkeypatch.setitem(pipeline_run._STAGE_FUNCTIONS, stage, lambda run, stage=stage: calls.append(stage))
    run_pipeline(config)
    assert calls == []


def test_resume_after_failure(tmp_path, monkeypatch):
    config = small_config(tmp_path, seed=3)
    original = pipeline_run._STAGE_FUNCTIONS["association"]

    def broken(run):
        raise RuntimeError("killed during association")

    monkeypatch.setitem(pipeline_run._STAGE_FUNCTIONS, "association", broken)
    with pytest.raises(RuntimeError, match="killed"):
        run_pipeline(config)
    state = json.loads((config.output / "state.json").read_text())
    assert state["done"] == ["datasets", "significance", "seeds"]
    done_before = []
    for stage in ("datasets", "significance", "seeds"):
        monkeypatch.setitem(pipeline_run._STAGE_FUNCTIONS, stage, lambda run, stage=stage: done_before.append(stage))
    monkeypatch.setitem(pipeline_run._STAGE_FUNCTIONS, "association", original)
    run_pipeline(config)
    assert done_before == [], "finished stages are not redone"
    state = json.loads((config.output / "state.json").read_text())
    assert state["done"] == list(STAGES)
    assert list(state["seconds"]) == list(STAGES), "the times of the stages done before the failure are kept"


def test_refuses_to_mix_runs(finished_run):
    folder, config = finished_run
    other = config.model_copy(update={"seeds": config.seeds.model_copy(update={"threshold": 6.0})})
    with pytest.raises(InputError, match="another configuration"):
        run_pipeline(other)


def test_resumes_with_other_parallel_settings(finished_run, monkeypatch):
    """Worker count and backend do not change the results: the finished run is taken as it is."""
    folder, config = finished_run
    before = (folder / "catalogue.fits").read_bytes()
    for stage in STAGES:
        monkeypatch.setitem(pipeline_run._STAGE_FUNCTIONS, stage, lambda run: pytest.fail("a stage was redone"))
    other = config.model_copy(update={"parallel": config.parallel.model_copy(update={"n_jobs": 2})})
    assert run_pipeline(other) == folder
    assert (folder / "catalogue.fits").read_bytes() == before


@pytest.mark.parametrize(
    "text, message",
    [
        ("seeds:\n  treshold: 5\n", "seeds.treshold: Extra inputs are not permitted"),
        ("seeds:\n  threshold: high\n", "seeds.threshold: Input should be a valid number"),
        ("input:\n  width: -1\n", "input.width: Input should be greater than 0"),
        ("input:\n  kind: files\n", "input.kind is 'files' but input.datasets is empty"),
        ("parallel:\n  backend: spark\n", "parallel.backend: Input should be 'loky' or 'dask'"),
        ("parallel:\n  n_jobs: 0\n", "parallel.n_jobs: Value error, n_jobs must be -1"),
        ("parallel:\n  n_jobs: -2\n", "parallel.n_jobs: Input should be greater than or equal to -1"),
        ("- a\n- b\n", "must be a mapping"),
    ],
)
def test_config_errors(tmp_path, text, message):
    path = tmp_path / "config.yaml"
    path.write_text(text)
    with pytest.raises(InputError, match=message):
        load_config(path)
    assert str(path) in str(pytest.raises(InputError, load_config, path).value)


def test_missing_files(tmp_path):
    with pytest.raises(InputError, match="Configuration file not found"):
        load_config(tmp_path / "nope.yaml")
    config = PipelineConfig(input={"kind": "files", "datasets": [str(tmp_path / "x.fits")]}, output=tmp_path / "o")
    with pytest.raises(InputError, match="Dataset file not found: .*x.fits"):
        run_pipeline(config)


def test_cli_print_config_and_errors(tmp_path):
    result = CliRunner().invoke(cli, ["run", "--print-config"])
    assert result.exit_code == 0
    assert load_config(None).to_yaml() == result.output.rstrip("\n") + "\n"
    bad = tmp_path / "bad.yaml"
    bad.write_text("seeds:\n  treshold: 5\n")
    result = CliRunner().invoke(cli, ["run", str(bad)])
    assert result.exit_code == 1
    assert result.output.strip() == f"Error: {bad}: seeds.treshold: Extra inputs are not permitted"
