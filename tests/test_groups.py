"""Fits by groups of overlapping sources: grouping, group fits, pools, faults, checkpoints."""
import logging
import os
import pickle

import astropy.units as u
import numpy as np
import pytest
from astropy.coordinates import SkyCoord
from gammapy.maps import Map, WcsGeom
from gammapy.modeling import Fit
from gammapy.modeling.models import (
    FoVBackgroundModel,
    GaussianSpatialModel,
    Models,
    PointSpatialModel,
    PowerLawSpectralModel,
    SkyModel,
    TemplateNPredModel,
    TemplateSpatialModel,
)
from numpy.testing import assert_allclose

from gpsfast.errors import InputError
from gpsfast.fit import fast_irfs
from gpsfast.groups import (
    GroupResult,
    fit_group_task,
    fit_groups,
    make_group_task,
    make_groups,
    run_fit,
    source_extent,
)

# name, glon, glat (deg), Gaussian sigma (deg; None: point source), amplitude at 1 TeV (cm-2 s-1 TeV-1)
SOURCES = [
    ("p0", -0.7, 0.1, None, 8e-13),
    ("g1", -0.2, -0.1, 0.1, 1.5e-12),
    ("g1b", -0.05, -0.05, None, 6e-13),
    ("p2", 0.35, 0.15, None, 6e-13),
    ("g3", 0.7, -0.1, 0.08, 1e-12),
]
CHEAP = ("p0", "p2", "g3")


def source(name, lon, lat, sigma=None, amplitude=1e-12, index=2.3):
    position = {"lon_0": lon * u.deg, "lat_0": lat * u.deg, "frame": "galactic"}
    if sigma is None:
        spatial = PointSpatialModel(**position)
    else:
        spatial = GaussianSpatialModel(sigma=sigma * u.deg, **position)
    spectral = PowerLawSpectralModel(index=index, amplitude=amplitude * u.Unit("cm-2 s-1 TeV-1"))
    return SkyModel(spatial_model=spatial, spectral_model=spectral, name=name)


def simulate(survey_cache, presets="postev", seed=3):
    """A 2 x 1 deg patch (CTA-like IRFs) with the SOURCES faked on a FoV background."""
    datasets, _ = survey_cache(2, 1, presets=presets, seed=seed, density=0.01)
    models = Models([source(*spec) for spec in SOURCES])
    models.extend(FoVBackgroundModel(dataset_name=d.name) for d in datasets)
    for k, dataset in enumerate(datasets):
        dataset.models = models
        dataset.fake(random_state=seed + k)
    return datasets, models


@pytest.fixture(scope="module")
def patch(survey_cache):
    return simulate(survey_cache)


def fresh_models(patch):
    """Independent copy of the true models, for one fit run."""
    return Models([m.copy(name=m.name) for m in patch[1]])


def cheap_groups(models):
    return [g for g in make_groups(models) if set(g.names) <= set(CHEAP)]


@pytest.fixture(scope="module")
def group_fit(patch):
    """One in-process group fit of the whole patch: (models after the fit, table)."""
    models = fresh_models(patch)
    table = fit_groups(patch[0], models)
    return models, table


# ------------------------------------------------------------------ hooks (module level: picklable)

FIT_CALLS = []


def counting_fit(datasets, optimize_opts=None):
    FIT_CALLS.append(tuple(sorted(datasets.models.names)))
    return run_fit(datasets, optimize_opts)


def interrupting_fit(datasets, optimize_opts=None):
    if "p2" in datasets.models.names:
        raise KeyboardInterrupt
    return counting_fit(datasets, optimize_opts)


def raising_fit(datasets, optimize_opts=None):
    """p0 raises on its first attempt; g3 raises on every attempt."""
    names = datasets.models.names
    if "g3" in names or ("p0" in names and not optimize_opts):
        raise RuntimeError("injected failure")
    return run_fit(datasets, optimize_opts)


def dask_worker_fit(datasets, optimize_opts=None):
    """Fails unless it runs on a dask worker."""
    import distributed

    distributed.get_worker()
    return run_fit(datasets, optimize_opts)


def dying_fit(datasets, optimize_opts=None):
    """The worker fitting p2 dies on the first attempt (not with the safe settings)."""
    if "p2" in datasets.models.names and not optimize_opts:
        os._exit(3)
    return run_fit(datasets, optimize_opts)


# ------------------------------------------------------------------ groups


def test_make_groups_overlap_isolated_and_skipped():
    background = FoVBackgroundModel(dataset_name="d")
    geom = WcsGeom.create(skydir=(0, 0), width=2, binsz=0.5, frame="galactic")
    diffuse = SkyModel(PowerLawSpectralModel(), TemplateSpatialModel(Map.from_geom(geom, data=1.0, unit="sr-1")),
                       name="diffuse")
    models = Models([
        source("a", 0.0, 0.0, 0.1, 1e-12),
        source("b", 0.25, 0.0, None, 3e-12),  # 0.25 deg < 2 sigma (+) PSF of a, plus PSF of b
        source("c", 2.0, 0.0, None),
        diffuse,
        background,
    ])
    groups = make_groups(models, psf_radius="0.1 deg")
    assert [g.names for g in groups] == [("a", "b"), ("c",)]
    assert groups[0].main == "b"  # brightest
    assert [g.index for g in groups] == [0, 1]
    # the cutout covers each member's extent
    for group in groups:
        for name in group.names:
            sep = group.center.separation(models[name].position).deg
            extent = np.hypot(source_extent(models[name].spatial_model).deg, 0.1)
            assert sep + extent < group.width.deg / 2
    # no overlap without the PSF term for the point sources far apart; a is alone when b moves away
    models["b"].spatial_model.lon_0.value = 0.45
    assert [g.names for g in make_groups(models)] == [("a",), ("b",), ("c",)]


def test_make_groups_cap_cuts_weakest_edges():
    lons = [0.0, 0.1, 0.2, 0.38, 0.48, 0.58, 0.68]  # weakest link between 0.2 and 0.38
    models = Models([source(f"s{k}", lon, 0.0) for k, lon in enumerate(lons)])
    assert [len(g.names) for g in make_groups(models, max_size=10)] == [7]
    groups = make_groups(models, max_size=4)
    assert [g.names for g in groups] == [("s0", "s1", "s2"), ("s3", "s4", "s5", "s6")]
    groups = make_groups(models, max_size=2)
    assert all(len(g.names) <= 2 for g in groups)
    assert sorted(n for g in groups for n in g.names) == sorted(models.names)


def test_make_groups_bad_input():
    with pytest.raises(InputError, match="max_size"):
        make_groups(Models([source("a", 0, 0)]), max_size=0)
    assert make_groups(Models([FoVBackgroundModel(dataset_name="d")])) == []


# ------------------------------------------------------------------ fits


def test_group_fit_recovers_injected_parameters(patch, group_fit):
    models, table = group_fit
    truth = patch[1]
    assert list(table["sources"]) == ["p0", "g1,g1b", "p2", "g3"]
    assert table["success"].all() and (table["attempts"] == 1).all()
    assert list(table["n_free"]) == [4, 11, 4, 7]  # 4 per point source, 5 per Gaussian, + e, phi of a main
    for name, *_ in SOURCES:
        for par in models[name].parameters.free_parameters:
            expected = truth[name].parameters[par.name].value
            assert par.error > 0
            assert abs(par.value - expected) < 3.5 * par.error, (name, par.name, par.value, expected, par.error)


def test_group_fit_agrees_with_global_fit(patch):
    """Groups (g1, g1b) and (p2) against one global fit of the same free parameters.

    The global fit starts from the group results (to keep the test fast): it
    must stay there, the group solution being the global optimum.
    """
    datasets = patch[0]
    fitted = ("g1", "g1b", "p2")
    models = fresh_models(patch)
    groups = [g for g in make_groups(models) if set(g.names) <= set(fitted)]
    table = fit_groups(datasets, models, groups=groups, release=False)
    assert table["success"].all() and list(table["n_free"]) == [9, 4]
    global_models = Models([m.copy(name=m.name) for m in models])
    for model in global_models:
        if model.name not in fitted:
            model.parameters.freeze_all()
    datasets.models = global_models
    try:
        with fast_irfs(datasets):
            result = Fit().run(datasets)
    finally:
        datasets.models = patch[1]
    assert result.success
    for name in fitted:
        for par_name in ("lon_0", "lat_0", "amplitude"):
            ours = models[name].parameters[par_name]
            theirs = global_models[name].parameters[par_name]
            assert abs(ours.value - theirs.value) < 0.5 * theirs.error, (name, par_name)
            assert_allclose(ours.error, theirs.error, rtol=0.3)


def test_wrapped_longitude_converges_to_the_same_position(patch, group_fit):
    """lon_0 = 359.3 deg instead of -0.7 deg: gammapy's default start step (one autoscale unit,
    100 deg here) would move the source out of its cutout; the group fit starts with a step of at most 0.1 deg (POSITION_STEP)."""
    models = fresh_models(patch)
    models["p0"].spatial_model.lon_0.value += 360
    groups = [g for g in make_groups(models) if g.names == ("p0",)]
    table = fit_groups(patch[0], models, groups=groups)
    assert table["success"].all() and table["attempts"][0] == 1
    fitted, reference = models["p0"].parameters, group_fit[0]["p0"].parameters
    assert 359 < fitted["lon_0"].value < 360
    for name in ("lon_0", "lat_0", "amplitude", "index"):
        expected = reference[name].value + (360 if name == "lon_0" else 0)
        assert abs(fitted[name].value - expected) < 0.05 * reference[name].error, name
        assert_allclose(fitted[name].error, reference[name].error, rtol=0.05)


def test_joint_subtev_postev_cutouts_share_the_group_models(survey_cache):
    datasets, models = simulate(survey_cache, presets="both")
    group = next(g for g in make_groups(models) if g.names == ("p2",))
    task = make_group_task(datasets, models, group)
    assert all(cutout.models is None for cutout in task.cutouts)  # the outer npred is left to the worker
    cutouts = task.make_datasets()
    assert cutouts.names == ["subtev", "postev"]
    for full, cutout in zip(datasets, cutouts):
        assert cutout.counts.geom.data_shape[1:] < full.counts.geom.data_shape[1:]
        assert cutout.models.names == ["p2", f"{full.name}-bkg", f"{full.name}-outer-sources"]
    assert cutouts[0].models["p2"] is cutouts[1].models["p2"]
    result = fit_group_task(task)
    assert result.success
    position = models["p2"].position
    fitted = SkyCoord(*[result.parameters["p2"][n][0] for n in ("lon_0", "lat_0")], unit="deg", frame="galactic")
    assert fitted.separation(position).deg < 3 * result.parameters["p2"]["lon_0"][1] + 0.01


def test_outer_sources_are_cached_as_a_frozen_npred_template(patch):
    datasets, models = patch
    group = next(g for g in make_groups(models) if g.names == ("g1", "g1b"))
    task = make_group_task(datasets, models, group)
    assert sorted(m.name for m in task.outer["postev"]) == ["g3", "p0", "p2"]
    template = task.make_datasets()["postev"].models["postev-outer-sources"]
    assert template.parameters.free_parameters.names == []
    # p0 and p2 lie in the cutout, g3 near it: their npred on the full dataset, cut out
    expected = datasets["postev"].npred_signal(model_names=["p0", "p2", "g3"]).cutout(group.center, group.width)
    assert template.map.geom.data_shape == expected.geom.data_shape
    assert expected.data.sum() > 100
    assert_allclose(template.map.data.sum(), expected.data.sum(), rtol=0.02)
    assert np.abs(template.map.data - expected.data).max() < 0.05 * expected.data.max()


def test_expected_outer_source_warnings_are_dropped_in_the_fit(patch, caplog):
    """g3 lies outside the cutout of (g1, g1b): gammapy warns when its npred is cached there, as
    intended; the group fit drops those warnings (in whichever process runs it) and leaves gammapy's
    loggers as they were."""
    datasets, models = patch
    group = next(g for g in make_groups(models) if g.names == ("g1", "g1b"))
    task = make_group_task(datasets, fresh_models(patch), group)
    expected = ("outside valid IRF map range", "is outside the target geom but contributes inside")

    def outer_warnings():
        return [r for r in caplog.records if any(text in r.getMessage() for text in expected)]

    with caplog.at_level(logging.WARNING):
        task.make_datasets()
        assert outer_warnings(), "the condition arises when the template is made outside the group fit"
        caplog.clear()
        result = fit_group_task(task)
    assert result.success
    assert outer_warnings() == []
    assert all(not logging.getLogger(name).filters for name in ("gammapy.irf.core", "gammapy.datasets.evaluator"))


def test_existing_npred_templates_are_cut_out(patch):
    datasets, models = patch
    npred = datasets["postev"].npred_background() * 0.1
    template = TemplateNPredModel(npred, name="cached", datasets_names=["postev"])
    group = make_groups(models)[0]
    task = make_group_task(datasets, Models([*fresh_models(patch), template]), group)
    cutout = task.make_datasets()["postev"]
    cut = cutout.models["cached"]
    expected = npred.cutout(group.center, group.width)
    assert cut.map.geom == cutout.counts.geom
    assert_allclose(cut.map.data, expected.data)
    assert cut is not template and cut.spectral_model.norm.value == template.spectral_model.norm.value


def test_tasks_pickle_and_give_identical_results(patch):
    cloudpickle = pytest.importorskip("cloudpickle", reason="cloudpickle (installed with dask[distributed]) is absent")
    datasets, models = patch
    group = next(g for g in make_groups(models) if g.names == ("g3",))
    direct = fit_group_task(make_group_task(datasets, models, group))
    blob = pickle.dumps(make_group_task(datasets, models, group))
    assert len(blob) < 0.5 * len(pickle.dumps(datasets))  # cutouts shipped, not the full maps
    for loads, dumps in ((pickle.loads, pickle.dumps), (cloudpickle.loads, cloudpickle.dumps)):
        task = loads(dumps(make_group_task(datasets, models, group)))
        result = fit_group_task(task)
        assert result.success
        assert result.parameters == direct.parameters
        assert result.stat == direct.stat
    result = cloudpickle.loads(cloudpickle.dumps(direct))
    assert GroupResult.from_dict(result.to_dict()) == direct


# ------------------------------------------------------------------ faults and checkpoints


def test_failed_cutout_set_up_is_reported_without_retry(patch):
    datasets, models = patch
    group = next(g for g in make_groups(models) if g.names == ("p2",))
    task = make_group_task(datasets, models, group)
    task.outer["postev"] = [models["g3"].spatial_model]  # not a sky model: the outer npred cannot be computed
    result = fit_group_task(task)
    assert not result.success and result.attempts == 1 and result.parameters == {}
    assert result.message.startswith("cutout models: ")


def test_raising_group_is_retried_and_reported(patch):
    models = fresh_models(patch)
    before = models["g3"].parameters.value.copy()
    table = fit_groups(patch[0], models, groups=cheap_groups(models), fit_function=raising_fit)
    rows = {row["sources"]: row for row in table}
    assert rows["p0"]["success"] and rows["p0"]["attempts"] == 2
    assert "injected failure" in rows["p0"]["message"]
    assert rows["p2"]["success"] and rows["p2"]["attempts"] == 1
    assert not rows["g3"]["success"] and rows["g3"]["attempts"] == 2
    assert rows["g3"]["message"].count("injected failure") == 2
    assert_allclose(models["g3"].parameters.value, before)  # failed group: values untouched
    assert models["p2"].parameters["lon_0"].error > 0


def test_dead_worker_is_recovered_in_process_pool(patch, group_fit):
    models = fresh_models(patch)
    groups = [g for g in make_groups(models) if g.names in (("p0",), ("p2",))]
    table = fit_groups(patch[0], models, groups=groups, n_jobs=2, fit_function=dying_fit)
    rows = {row["sources"]: row for row in table}
    assert len(table) == 2 and table["success"].all()
    assert rows["p2"]["attempts"] == 2 and "worker died" in rows["p2"]["message"]
    reference = group_fit[0]
    for name in ("p0",):  # the other group: same result as in-process
        assert_allclose(models[name].parameters.value, reference[name].parameters.value, rtol=1e-9)


def test_interrupted_run_resumes_from_checkpoint(patch, group_fit, tmp_path):
    models = fresh_models(patch)
    groups = cheap_groups(models)
    FIT_CALLS.clear()
    with pytest.raises(KeyboardInterrupt):
        fit_groups(patch[0], models, groups=groups, checkpoint=tmp_path, fit_function=interrupting_fit)
    done = {call[0] for call in FIT_CALLS}
    assert [call[0] for call in FIT_CALLS] == ["g3", "p0"]  # costliest group (the widest cutout) first
    assert all(call[1:] == ("postev-bkg", "postev-outer-sources") for call in FIT_CALLS)
    assert len(list(tmp_path.glob("iter000-*.json"))) == len(done)
    FIT_CALLS.clear()
    table = fit_groups(patch[0], models, groups=groups, checkpoint=tmp_path, fit_function=counting_fit)
    assert sorted(call[0] for call in FIT_CALLS) == sorted(set(CHEAP) - done)  # done groups not refitted
    assert list(table["sources"]) == ["p0", "p2", "g3"] and table["success"].all()
    for name in CHEAP:
        assert_allclose(models[name].parameters.value, group_fit[0][name].parameters.value, rtol=1e-9)
    FIT_CALLS.clear()
    again = fit_groups(patch[0], fresh_models(patch), groups=groups, checkpoint=tmp_path, fit_function=counting_fit)
    assert FIT_CALLS == [] and len(again) == 3
    with pytest.raises(InputError, match="other groups"):
        fit_groups(patch[0], models, groups=groups[:2], checkpoint=tmp_path)


def test_dask_local_cluster_matches_loky(patch):
    distributed = pytest.importorskip("distributed", reason="dask.distributed is not installed")
    import dask

    datasets = patch[0]
    loky_models = fresh_models(patch)
    groups = cheap_groups(loky_models)
    loky = fit_groups(datasets, loky_models, groups=groups, n_jobs=2)
    dask_models = fresh_models(patch)
    dying_models = fresh_models(patch)
    dying_groups = [g for g in groups if g.names in (("p0",), ("p2",))]
    # a task whose worker dies is failed at once (default: re-run on up to 3 more workers)
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}), distributed.LocalCluster(
        processes=True, n_workers=2, threads_per_worker=1, dashboard_address=None
    ) as cluster, distributed.Client(cluster) as client:
        table = fit_groups(datasets, dask_models, groups=groups, client=client, fit_function=dask_worker_fit)
        dying = fit_groups(datasets, dying_models, groups=dying_groups, client=client, fit_function=dying_fit)
    rows = {row["sources"]: row for row in dying}
    assert dying["success"].all() and rows["p0"]["attempts"] == 1
    assert rows["p2"]["attempts"] == 2 and "KilledWorker" in rows["p2"]["message"]
    assert table["success"].all() and (table["attempts"] == 1).all()  # every fit ran on a dask worker
    assert list(table["stat"]) == list(loky["stat"])
    for name in CHEAP:
        assert_allclose(dask_models[name].parameters.value, loky_models[name].parameters.value, rtol=1e-9)


def test_fit_groups_bad_input(patch):
    datasets, _models = patch
    with pytest.raises(InputError, match="backend"):
        fit_groups(datasets, fresh_models(patch), backend="spark")
    with pytest.raises(InputError, match="max_iterations"):
        fit_groups(datasets, fresh_models(patch), max_iterations=0)
    far = Models([*fresh_models(patch), source("far", 5.0, 0.0)])
    group = make_groups(far)[-1]
    with pytest.raises(InputError, match=r"group 4 \['far'\]: its cutout is outside every dataset"):
        fit_groups(datasets, far, groups=[group])


def test_iterations_stop_when_parameters_settle(patch, group_fit):
    models = fresh_models(patch)
    groups = [g for g in make_groups(models) if g.names in (("p0",), ("p2",))]
    table = fit_groups(patch[0], models, groups=groups, max_iterations=4, tolerance=0.1)
    assert table.meta["converged"] and table.meta["iterations"] == 2  # the 2nd pass moves nothing
    assert list(table["iteration"]) == [0, 0, 1, 1] and table["success"].all()
    for name in ("p0", "p2"):
        for par in models[name].parameters.free_parameters:
            first = group_fit[0][name].parameters[par.name]
            assert abs(par.value - first.value) < 0.1 * first.error


def test_dask_backend_without_a_client_is_a_clear_error(patch):
    distributed = pytest.importorskip("distributed", reason="dask.distributed is not installed")
    try:
        distributed.get_client()
        pytest.skip("a dask client is already running in this process")
    except ValueError:
        pass
    models = fresh_models(patch)
    with pytest.raises(InputError, match="needs a running distributed.Client"):
        fit_groups(patch[0], models, groups=cheap_groups(models)[:1], backend="dask")
