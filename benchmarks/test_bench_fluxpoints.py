"""Flux points of every source of a patch: gpsfast vs gammapy's FluxPointsEstimator and FluxCollectionEstimator.

Patch: 4 x 2 deg, PosTeV, CTA-like IRFs, seed 11 (6 sources: groups of 1, 1, 3 and 1), the diffuse
component left out (gammapy 2.1's ``FluxCollectionEstimator`` fails with a ``KeyError`` on the
datasets' template model), counts faked from the sources and the background; 4 flux-point bins from
1 to 100 TeV on edges of the dataset's energy axis (``FluxCollectionEstimator`` drops the reconstructed
bins that straddle an edge, ``FluxPointsEstimator`` and gpsfast snap the edge to the nearest bin edge). The
10 x 6 deg patch is too slow for gammapy's estimators in a benchmark run: on it
gammapy's ``FluxPointsEstimator`` re-evaluates every model of the sliced datasets in each bin (about
1 min per source and bin here, on the 4 x 2 deg patch ~15 s); gpsfast alone is timed on it
(``test_flux_points_gps_patch``, both presets).

Pairs, same bins and same optional quantities:

- ``flux-points-every-source``: gpsfast's `flux_points` (joint norms within the groups of overlapping
  sources) against gammapy's ``FluxPointsEstimator(reoptimize=False)`` run source by source (errn-errp,
  ul, scan);
- ``flux-points-all-joint``: gpsfast's `group_flux_points` of all the sources fitted jointly against
  gammapy 2.1's ``FluxCollectionEstimator`` (``solver=Fit()``, errn-errp; its upper limits only below
  ``n_sigma_ul``, gpsfast's everywhere); the largest norm difference in units of the error is recorded for
  the points with TS >= 25 in both (where a bin has unconstrained sources, gammapy's fit wanders to
  negative predicted counts, e.g. norms of -1e7, that gpsfast's bounds exclude, and moves their
  neighbours' norms).

The norms of the isolated sources (groups of one: the same likelihood in both) are compared in units of
their error (minuit's convergence tolerance, EDM < 2e-4, allows up to ~0.02 sigma).

Each runs once (``pedantic``, one round); gpsfast's compiled kernels are loaded by an untimed call first.
"""
import os

import astropy.units as u
import numpy as np
import pytest
from gammapy.datasets import Datasets
from gammapy.estimators import FluxPointsEstimator
from gammapy.estimators.points.sed import FluxCollectionEstimator
from gammapy.modeling import Fit
from gammapy.maps import MapAxis
from gammapy.modeling.models import Models, SkyModel, TemplateSpatialModel

from gpsfast.fluxpoints import flux_points, group_flux_points
from gpsfast.groups import make_groups
from gpsfast.simulate import make_survey

EDGES = MapAxis.from_energy_bounds("1 TeV", "100 TeV", nbin=10, per_decade=True).edges[::5]
SELECTION = ["errn-errp", "ul", "scan"]
RESULTS = {}


@pytest.fixture(scope="module")
def patch():
    datasets, models = make_survey(width=4 * u.deg, height=2 * u.deg, presets="postev", seed=11,
                                   density=1.25 / u.deg**2)
    models = Models([m for m in models
                     if not (isinstance(m, SkyModel) and isinstance(m.spatial_model, TemplateSpatialModel))])
    fresh = Datasets()
    for dataset in datasets:
        dataset.models = models
        dataset.fake(random_state=3)
        fresh.append(dataset.copy(name=dataset.name))
    fresh.models = models
    return fresh, models


def _sources(models):
    return [m.name for m in models if isinstance(m, SkyModel)]


def _norm_pulls(ours, theirs, names, ts_min=None):
    """Largest norm difference in units of gammapy's norm_err (on the points with ts >= ts_min in both)."""
    pulls = []
    for n in names:
        a, b = ours[n], theirs[n]
        pull = np.abs(a.norm.data.ravel() - b.norm.data.ravel()) / b.norm_err.data.ravel()
        if ts_min is not None:
            pull = pull[(a.ts.data.ravel() >= ts_min) & (b.ts.data.ravel() >= ts_min)]
        pulls.extend(pull)
    return float(np.nanmax(pulls))


def test_flux_points_gpsfast(benchmark, patch):
    benchmark.group = "flux-points-every-source"
    benchmark.extra_info["impl"] = "gpsfast"
    datasets, models = patch
    flux_points(datasets, models, energy_edges=EDGES[:2], groups=[[_sources(models)[0]]])
    benchmark.extra_info["load_1min"] = os.getloadavg()[0]
    points = benchmark.pedantic(flux_points, args=(datasets, models), rounds=1, iterations=1,
                                kwargs={"energy_edges": EDGES, "selection_optional": SELECTION})
    assert sorted(points) == sorted(_sources(models))
    benchmark.extra_info["n_sources"] = len(points)
    benchmark.extra_info["n_groups"] = len(make_groups(models))
    RESULTS["gpsfast"] = points


def _gammapy_every_source(datasets, names):
    return {
        name: FluxPointsEstimator(energy_edges=EDGES, source=name, selection_optional=SELECTION).run(datasets)
        for name in names
    }


def test_flux_points_gammapy(benchmark, patch):
    benchmark.group = "flux-points-every-source"
    benchmark.extra_info["impl"] = "gammapy"
    datasets, models = patch
    names = _sources(models)
    benchmark.extra_info["load_1min"] = os.getloadavg()[0]
    points = benchmark.pedantic(_gammapy_every_source, args=(datasets, names), rounds=1, iterations=1)
    if "gpsfast" in RESULTS:
        # isolated sources: the same likelihood, the norms agree
        isolated = [g.names[0] for g in make_groups(models) if len(g.names) == 1]
        difference = _norm_pulls(RESULTS["gpsfast"], points, isolated)
        benchmark.extra_info["isolated_norm_max_diff_in_sigma"] = difference
        assert difference < 0.05


def test_flux_points_all_joint_gpsfast(benchmark, patch):
    benchmark.group = "flux-points-all-joint"
    benchmark.extra_info["impl"] = "gpsfast"
    datasets, models = patch
    names = _sources(models)
    group_flux_points(datasets, sources=names[:1], energy_edges=EDGES[:2])
    benchmark.extra_info["load_1min"] = os.getloadavg()[0]
    points = benchmark.pedantic(group_flux_points, args=(datasets,), rounds=1, iterations=1,
                                kwargs={"sources": names, "energy_edges": EDGES,
                                        "selection_optional": ["errn-errp", "ul"]})
    RESULTS["joint"] = points


def test_flux_points_all_joint_gammapy(benchmark, patch):
    benchmark.group = "flux-points-all-joint"
    benchmark.extra_info["impl"] = "gammapy"
    datasets, models = patch
    sources = [models[name] for name in _sources(models)]
    estimator = FluxCollectionEstimator(energy_edges=EDGES, models=sources, solver=Fit(),
                                        selection_optional=["errn-errp"])
    benchmark.extra_info["load_1min"] = os.getloadavg()[0]
    result = benchmark.pedantic(estimator.run, args=(datasets,), rounds=1, iterations=1)
    if "joint" in RESULTS:
        names = [m.name for m in sources]
        benchmark.extra_info["joint_norm_max_diff_in_sigma_ts25"] = _norm_pulls(
            RESULTS["joint"], result["flux_points"], names, ts_min=25
        )


def test_flux_points_gps_patch(benchmark, survey_gps):
    """gpsfast alone on the 10 x 6 deg patch (both presets, the true models, diffuse included)."""
    benchmark.group = "flux-points-gps-patch (gpsfast only)"
    datasets, models = survey_gps
    datasets.models = models
    edges = [0.1, 0.3, 1, 3, 10, 30, 100] * u.TeV
    flux_points(datasets, models, energy_edges=edges[:2], groups=[[_sources(models)[0]]])
    benchmark.extra_info["load_1min"] = os.getloadavg()[0]
    points = benchmark.pedantic(flux_points, args=(datasets, models), rounds=1, iterations=1,
                                kwargs={"energy_edges": edges, "selection_optional": SELECTION})
    benchmark.extra_info["n_sources"] = len(points)
    benchmark.extra_info["n_groups"] = len(make_groups(models))
    benchmark.extra_info["seconds_per_source"] = benchmark.stats.stats.median / len(points)
