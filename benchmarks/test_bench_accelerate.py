"""Drop-in mode: the same plain gammapy calls outside and inside ``gpsfast.accelerated()``.

Data: the GPS-realistic PosTeV patch (10 x 6 deg at 0.03 deg, 20 energy bins,
survey IRF maps), fixture ``postev_gps``. The sources are gammapy
``GeneralizedGaussianSpatialModel`` s with ``LogParabolaSpectralModel`` spectra,
built with gammapy's own classes (a fixed random population); gpsfast runs the
very same code inside ``accelerated()``.

- ``npred cold 50 sources``: ``dataset.npred()`` with fresh evaluators every round
  (PSF and EDisp kernel lookups, spatial integration and convolution of every
  source), the issue's "cold npred of 50 sources".
- ``likelihood call``: one ``dataset.stat_sum()`` after one free parameter moved by
  1e-4 relative (as a Minuit gradient step), on a 3 x 3 deg cutout with a 3-source
  group (19 free parameters: amplitude, alpha, beta, lon_0, lat_0, r_0 of each
  source, the background norm); rounds cycle through the parameters. The
  ``spatial`` variant only moves ``r_0`` (re-integration and convolution each call).
"""
import contextlib
import copy

import numpy as np
import astropy.units as u
import pytest
from gammapy.modeling.models import (
    FoVBackgroundModel,
    GeneralizedGaussianSpatialModel,
    LogParabolaSpectralModel,
    Models,
    SkyModel,
)

from gpsfast.accelerate import accelerated
from gpsfast.evaluate import fast_dataset


def population(center, width, height, n_sources, seed=1):
    """Generalized Gaussian sources with LogParabola spectra, as a gammapy script builds them."""
    rng = np.random.default_rng(seed)
    lon0, lat0 = center.l.deg, center.b.deg
    models = []
    for idx in range(n_sources):
        spatial = GeneralizedGaussianSpatialModel(
            lon_0=(lon0 + rng.uniform(-width / 2, width / 2)) * u.deg,
            lat_0=(lat0 + rng.uniform(-height / 2, height / 2)) * u.deg,
            r_0=rng.uniform(0.05, 0.5) * u.deg,
            eta=rng.uniform(0.2, 1.0),
            e=rng.uniform(0.0, 0.8),
            phi=rng.uniform(0, 180) * u.deg,
            frame="galactic",
        )
        spectral = LogParabolaSpectralModel(
            amplitude=rng.uniform(1e-13, 5e-12) * u.Unit("cm-2 s-1 TeV-1"),
            reference=1 * u.TeV,
            alpha=rng.uniform(2.0, 2.8),
            beta=rng.uniform(0.0, 0.2),
        )
        models.append(SkyModel(spectral_model=spectral, spatial_model=spatial, name=f"gg-{idx:03d}"))
    return models


def run_as(impl, function, *args):
    if impl == "gpsfast":
        with accelerated():
            return function(*args)
    return function(*args)


@pytest.mark.parametrize("impl", ["gammapy", "gpsfast"])
def test_npred_cold_50_sources(benchmark, postev_gps, impl):
    dataset = copy.deepcopy(postev_gps)
    geom = dataset.counts.geom
    width, height = (w.to_value("deg") for w in geom.width[:, 0])
    sources = population(geom.center_skydir, width - 0.5, height - 0.5, n_sources=50)
    models = Models([*sources, dataset.background_model])
    benchmark.group = "drop-in: npred cold 50 GeneralizedGaussian sources PosTeV 10x6 deg"
    benchmark.extra_info["impl"] = impl

    def setup():
        dataset.models = models  # fresh evaluators: every kernel looked up again

    def npred():
        return run_as(impl, dataset.npred)

    setup()
    npred()  # warm-up: Numba compilation, gammapy's cached geometries
    result = benchmark.pedantic(npred, setup=setup, rounds=3, iterations=1)
    assert result.data.sum() > dataset.npred_background().data.sum()


def group_cutout(postev_gps):
    """3 x 3 deg cutout with a 3-source group and its 19 free parameters."""
    center = postev_gps.counts.geom.center_skydir
    dataset = postev_gps.cutout(center, width=3 * u.deg, name="group")
    sources = population(center, 1.0, 0.6, n_sources=3, seed=7)
    background = FoVBackgroundModel(dataset_name="group")
    models = Models([*sources, background])
    models.freeze()
    for source in sources:
        for name in ("amplitude", "alpha", "beta", "lon_0", "lat_0", "r_0"):
            source.parameters[name].frozen = False
    background.spectral_model.norm.frozen = False
    dataset.models = models
    return dataset


@pytest.mark.parametrize("variant", ["all parameters", "spatial"])
@pytest.mark.parametrize("impl", ["gammapy", "gpsfast"])
def test_likelihood_call(benchmark, postev_gps, impl, variant):
    dataset = group_cutout(postev_gps)
    free = dataset.models.parameters.free_parameters
    assert len(free) == 19
    if variant == "spatial":
        free = [par for par in free if par.name == "r_0"]
    state = {"step": 0}

    def move_one_parameter():
        par = free[state["step"] % len(free)]
        sign = 1 if (state["step"] // len(free)) % 2 == 0 else -1
        par.value *= 1 + sign * 1e-4
        state["step"] += 1

    benchmark.group = f"drop-in: one likelihood call, 3-source group cutout 3x3 deg ({variant})"
    benchmark.extra_info["impl"] = impl

    def call():
        with accelerated() if impl == "gpsfast" else contextlib.nullcontext():
            reference = dataset.stat_sum()  # warm-up: evaluators, kernels
            benchmark.pedantic(dataset.stat_sum, setup=move_one_parameter, rounds=150, iterations=1)
        return reference

    assert np.isfinite(call())



@pytest.mark.parametrize("variant", ["all parameters", "spatial"])
@pytest.mark.parametrize("impl", ["gammapy", "gpsfast"])
def test_likelihood_call_fast_dataset(benchmark, postev_gps, impl, variant):
    dataset = group_cutout(postev_gps)
    if impl == "gpsfast":
        dataset = fast_dataset(dataset)
    free = dataset.models.parameters.free_parameters
    assert len(free) == 19
    if variant == "spatial":
        free = [par for par in free if par.name == "r_0"]
    state = {"step": 0}

    def move_one_parameter():
        par = free[state["step"] % len(free)]
        sign = 1 if (state["step"] // len(free)) % 2 == 0 else -1
        par.value *= 1 + sign * 1e-4
        state["step"] += 1

    benchmark.group = f"FastMapDataset: one likelihood call, 3-source group cutout 3x3 deg ({variant})"
    benchmark.extra_info["impl"] = impl
    reference = dataset.stat_sum()  # warm-up: evaluators, kernels, compilation
    benchmark.pedantic(dataset.stat_sum, setup=move_one_parameter, rounds=190, iterations=1)
    assert np.isfinite(reference)
