"""The model-selection stage: every hypothesis of 10 sources, on gpsfast's fast datasets vs gammapy's.

The patch (5 x 2 deg, PosTeV, CTA-like IRFs) holds 10 sources: point sources,
Gaussians (0.1-0.3 deg) and two shells, power-law and log-parabola spectra,
faked on the FoV background. The generic fit (GeneralizedGaussian +
LogParabola seeds at the true positions, `gpsfast.groups.fit_groups`) runs once,
untimed; then `gpsfast.selection.model_selection` runs once per implementation
(``pedantic``, one round: the stage is minutes long, and deterministic): with
``fast=True`` (`gpsfast.fit.fast_datasets`) and with ``fast=False`` (gammapy's
MapDataset for every likelihood call). Both runs fit the same hypotheses from the
same generic models; the benchmark checks that they choose the same models.
``extra_info`` holds the time per source (median and maximum), the number of
point-like and extended choices and the machine's load.
"""
import os

import astropy.units as u
import numpy as np
import pytest
from gammapy.modeling import Fit
from gammapy.modeling.models import (
    FoVBackgroundModel,
    GaussianSpatialModel,
    GeneralizedGaussianSpatialModel,
    LogParabolaSpectralModel,
    Models,
    PointSpatialModel,
    PowerLawSpectralModel,
    ShellSpatialModel,
    SkyModel,
)

from gpsfast.fit import fast_datasets
from gpsfast.groups import fit_groups
from gpsfast.selection import model_selection
from gpsfast.simulate import make_survey

RESULTS = {}

# lon, lat (deg), kind, size (deg), amplitude at 1 TeV (cm-2 s-1 TeV-1), LogParabola beta (0: power law)
SOURCES = [
    (-2.1, 0.1, "point", 0, 1.5e-12, 0.0),
    (-1.6, -0.3, "gauss", 0.1, 3e-12, 0.0),
    (-1.0, 0.2, "shell", 0.25, 5e-12, 0.0),
    (-0.4, -0.2, "point", 0, 2e-12, 0.3),
    (0.0, 0.35, "gauss", 0.2, 4e-12, 0.0),
    (0.5, -0.25, "point", 0, 8e-13, 0.0),
    (0.9, 0.25, "gauss", 0.3, 6e-12, 0.2),
    (1.4, -0.1, "point", 0, 1.2e-12, 0.0),
    (1.8, 0.3, "shell", 0.2, 4e-12, 0.0),
    (2.2, -0.3, "gauss", 0.1, 2e-12, 0.0),
]


def _true_source(k, lon, lat, kind, size, amplitude, beta):
    position = {"lon_0": lon * u.deg, "lat_0": lat * u.deg, "frame": "galactic"}
    spatial = {
        "point": lambda: PointSpatialModel(**position),
        "gauss": lambda: GaussianSpatialModel(sigma=size * u.deg, **position),
        "shell": lambda: ShellSpatialModel(radius=size * u.deg, width=0.25 * size * u.deg, **position),
    }[kind]()
    unit = u.Unit("cm-2 s-1 TeV-1")
    spectral = (LogParabolaSpectralModel(alpha=2.2, beta=beta, amplitude=amplitude * unit, reference="1 TeV")
                if beta else PowerLawSpectralModel(index=2.4, amplitude=amplitude * unit))
    return SkyModel(spatial_model=spatial, spectral_model=spectral, name=f"src-{k}")


def _seed(model):
    """The pipeline's generic start model at a true source (GeneralizedGaussian + LogParabola, beta frozen)."""
    spatial = model.spatial_model
    seed = GeneralizedGaussianSpatialModel(lon_0=spatial.lon_0.quantity, lat_0=spatial.lat_0.quantity,
                                           r_0="0.1 deg", eta=0.5, frame="galactic")
    seed.r_0.min, seed.r_0.max = 0.015, 0.6
    spectral = LogParabolaSpectralModel(alpha=2.5, beta=0, amplitude="1e-12 cm-2 s-1 TeV-1", reference="1 TeV")
    spectral.beta.frozen = True
    return SkyModel(spatial_model=seed, spectral_model=spectral, name=model.name)


def _generic_fit(datasets, optimize_opts=None):
    return Fit(optimize_opts=optimize_opts or {"strategy": 0, "tol": 1.0}).run(fast_datasets(datasets))


@pytest.fixture(scope="module")
def patch():
    datasets, _ = make_survey(width=5 * u.deg, height=2 * u.deg, presets="postev", seed=8, density=0.01 / u.deg**2)
    truth = Models([_true_source(k, *spec) for k, spec in enumerate(SOURCES)])
    truth.extend(FoVBackgroundModel(dataset_name=d.name) for d in datasets)
    for dataset in datasets:
        dataset.models = truth
        dataset.fake(random_state=21)
    models = Models([_seed(m) for m in truth if isinstance(m, SkyModel)])
    models.extend(FoVBackgroundModel(dataset_name=d.name) for d in datasets)
    generic = fit_groups(datasets, models, fit_function=_generic_fit)
    return datasets, models, int(np.sum(~generic["success"]))


def _run(benchmark, patch, fast):
    datasets, models, generic_failed = patch
    benchmark.group = "model-selection-stage"
    benchmark.extra_info["impl"] = "gpsfast" if fast else "gammapy"
    benchmark.extra_info["load_1min"] = os.getloadavg()[0]
    table, _ = benchmark.pedantic(model_selection, args=(datasets, models), kwargs={"fast": fast}, rounds=1,
                                  iterations=1)
    times = np.asarray(table["time"])
    benchmark.extra_info.update(
        n_sources=len(table), time_per_source_median_s=float(np.median(times)),
        time_per_source_max_s=float(times.max()), n_point=int(np.sum(table["spatial"] == "point")),
        n_extended=int(np.sum(table["spatial"] != "point")), n_flagged=int(np.sum(table["flags"] > 0)),
        generic_fits_failed=generic_failed,
    )
    RESULTS[fast] = table
    return table


def test_model_selection_gpsfast(benchmark, patch):
    table = _run(benchmark, patch, fast=True)
    assert len(table) == len(SOURCES)


def test_model_selection_gammapy(benchmark, patch):
    table = _run(benchmark, patch, fast=False)
    if True in RESULTS:
        assert list(table["spatial"]) == list(RESULTS[True]["spatial"])
        assert list(table["spectral"]) == list(RESULTS[True]["spectral"])
