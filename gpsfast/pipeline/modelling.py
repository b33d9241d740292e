"""Initial source models from seeds, and the fitted catalogue's comparison with the truth.

Seeds come in clusters: the same source is found at two radii, in two energy
ranges, by peaks and by Hough circles. `select_seeds` keeps the strongest seed
of each cluster; `seed_models` turns the kept seeds into GeneralizedGaussian +
LogParabola sky models whose parameters are bounded around the seed, so that a
group fit cannot wander off to a neighbour or to an unphysical shape.
"""
import logging
import os

import astropy.units as u
import numpy as np
from astropy.coordinates import SkyCoord
from astropy.table import Table
from gammapy.modeling import Fit
from gammapy.modeling.models import (
    GeneralizedGaussianSpatialModel,
    LogParabolaSpectralModel,
    Models,
    SkyModel,
)

from ..accelerate import accelerated
from ..fit import fast_datasets
from ..utils import exit_with_parent

__all__ = ["accelerated_fit", "PoolFit", "match_catalogue", "seed_amplitude", "seed_models", "select_seeds"]

log = logging.getLogger(__name__)

REFERENCE_ENERGY = 1 * u.TeV


def select_seeds(table, min_separation=0.2, max_merge_radius=0.5):
    """Seeds kept as sources: the strongest of every cluster of nearby seeds.

    Hough circles that contain other seeds (``method`` "hough" with
    ``n_children`` > 0, where the table has these columns) are dropped: their
    emission is that of the seeds inside. The others are taken by decreasing
    ``sqrt_ts``; a seed is kept when, for every seed kept before it, it lies
    farther than ``min_separation`` and outside that seed's radius (capped at
    ``max_merge_radius``): an extended source found as several peaks becomes
    one source; a real neighbour inside it is found again in the residual maps.

    Parameters
    ----------
    table : `~astropy.table.Table`
        Seed table with ``glon``, ``glat``, ``radius`` (deg) and ``sqrt_ts``.
    min_separation : float, optional
        Smallest separation between two kept seeds (deg). Default 0.2.
    max_merge_radius : float, optional
        Largest seed radius used for merging (deg). Default 0.5.

    Returns
    -------
    kept : `~astropy.table.Table`
        The kept rows, strongest first.
    """
    if {"method", "n_children"} <= set(table.colnames):
        table = table[~((table["method"] == "hough") & (np.asarray(table["n_children"]) > 0))]
    if not len(table):
        return table[:0]
    order = np.argsort(-np.asarray(table["sqrt_ts"], dtype=float), kind="stable")
    positions = SkyCoord(np.asarray(table["glon"])[order], np.asarray(table["glat"])[order], unit="deg",
                         frame="galactic")
    reach = np.maximum(np.minimum(np.asarray(table["radius"], dtype=float)[order], max_merge_radius),
                       min_separation)
    kept = []
    for k in range(len(order)):
        if not kept or np.all(positions[k].separation(positions[kept]).deg > reach[kept]):
            kept.append(k)
    log.info("%d of %d seeds kept as sources (min separation %g deg)", len(kept), len(table), min_separation)
    return table[order[kept]]


def seed_amplitude(spectra, name, index):
    """dN/dE at 1 TeV of a power law of ``index`` matching a seed's excess.

    Parameters
    ----------
    spectra : `~astropy.table.Table`
        Seed spectra of one dataset (`gpsfast.spectra.extract_spectra_table`).
    name : str
        Seed name.
    index : float
        Power-law index.

    Returns
    -------
    amplitude : float
        In cm-2 s-1 TeV-1; 1e-14 when the seed has no exposure there.
    """
    row = spectra[list(spectra["name"]).index(name)]
    edges = np.asarray(spectra.meta["energy_edges"])
    true_edges = np.asarray(spectra.meta["energy_true_edges"])
    shape = (edges[1:] ** (1 - index) - edges[:-1] ** (1 - index)) / (1 - index)
    offset = int(np.argmin(np.abs(true_edges - edges[0])))
    unit = spectra["exposure"].unit or u.Unit("m2 s")
    exposure = (np.asarray(row["exposure"]) * unit).to_value("cm2 s")[offset: offset + len(shape)]
    expected = np.nansum(exposure * shape)
    return max(float(np.nansum(row["excess"]) / expected), 1e-16) if expected > 0 else 1e-14


def _spatial(row, position_range, r_0_range):
    r_0 = float(np.clip(0.5 * row["radius"], *r_0_range))
    spatial = GeneralizedGaussianSpatialModel(
        lon_0=row["glon"] * u.deg, lat_0=row["glat"] * u.deg, r_0=r_0 * u.deg, eta=0.5, e=0, phi=0 * u.deg,
        frame="galactic",
    )
    for name, center in (("lon_0", row["glon"]), ("lat_0", row["glat"])):
        par = spatial.parameters[name]
        par.min, par.max = center - position_range, center + position_range
    spatial.r_0.min, spatial.r_0.max = r_0_range[0] / 2, r_0_range[1]
    spatial.eta.min, spatial.eta.max = 0.05, 1.0
    spatial.e.min, spatial.e.max = 0.0, 0.9
    for par in (spatial.eta, spatial.e, spatial.phi):
        par.frozen = True
    return spatial


def _spectral(index, amplitude, free_beta):
    spectral = LogParabolaSpectralModel(
        amplitude=amplitude * u.Unit("cm-2 s-1 TeV-1"), alpha=index, beta=0.0, reference=REFERENCE_ENERGY,
    )
    spectral.amplitude.min = 0
    spectral.alpha.min, spectral.alpha.max = 1.0, 5.0
    spectral.beta.min, spectral.beta.max = 0.0, 1.0
    spectral.beta.frozen = not free_beta
    return spectral


def seed_models(table, index=None, amplitude=None, position_range=0.2, r_0_range=(0.03, 0.5), free_beta=False):
    """GeneralizedGaussian + LogParabola sky models at the seeds, bounded around them.

    Parameters
    ----------
    table : `~astropy.table.Table`
        Seeds (``name``, ``glon``, ``glat``, ``radius`` in deg).
    index : sequence of float, optional
        Starting spectral index per seed (e.g. from an index map). Default 2.5.
    amplitude : sequence of float, optional
        Starting dN/dE at 1 TeV per seed (cm-2 s-1 TeV-1). Default 1e-13.
    position_range : float, optional
        ``lon_0`` and ``lat_0`` are bounded to the seed position +- this (deg).
    r_0_range : tuple of float, optional
        The starting ``r_0`` is half the seed radius clipped to this range (deg);
        ``r_0`` is bounded to [lower / 2, upper].
    free_beta : bool, optional
        Fit the LogParabola curvature ``beta`` (starting at 0, bounded to [0, 1]);
        frozen at 0 (a power law) by default.

    Returns
    -------
    models : `~gammapy.modeling.models.Models`
        Named after the seeds; positions, ``r_0``, amplitude and alpha free,
        ``eta``, ``e``, ``phi`` frozen (a group fit may release its main source's).
    """
    n = len(table)
    index = np.full(n, 2.5) if index is None else np.asarray(index, dtype=float)
    amplitude = np.full(n, 1e-13) if amplitude is None else np.asarray(amplitude, dtype=float)
    models = []
    for row, gamma, norm in zip(table, index, amplitude):
        models.append(SkyModel(
            spatial_model=_spatial(row, position_range, r_0_range),
            spectral_model=_spectral(gamma, norm, free_beta),
            name=str(row["name"]),
        ))
    return Models(models)


FIRST_OPTIMIZE_OPTS = {"strategy": 0, "tol": 0.1, "migrad_opts": {"ncall": 1500, "iterate": 2}}
"""Minuit options of a pipeline group fit's first attempt (fewest likelihood calls; at most 2 x 1500 calls
before the strategy-1 continuation: a first attempt that has not converged by then rarely does, a source at
a position bound made it wander for 7000 calls on the demo patch)."""

RETRY_OPTIMIZE_OPTS = {"strategy": 1, "tol": 0.1, "migrad_opts": {"ncall": 1500}}
"""Minuit options of a continued or repeated attempt (at most 1500 likelihood calls)."""


def accelerated_fit(datasets, optimize_opts=None):
    """Group fit function of the pipeline: gammapy ``Fit`` on `gpsfast.fit.fast_datasets`.

    The first attempt runs minuit with strategy 0 (`FIRST_OPTIMIZE_OPTS`); when it
    does not converge, minuit goes on from where it stopped with strategy 1
    (`RETRY_OPTIMIZE_OPTS`). The retry of `gpsfast.groups.fit_groups` (any
    ``optimize_opts`` given) uses `RETRY_OPTIMIZE_OPTS` directly.

    Parameters
    ----------
    datasets : `~gammapy.datasets.Datasets`
        A group's cutout datasets.
    optimize_opts : dict, optional
        Set by `~gpsfast.groups.fit_groups` for its retry.

    Returns
    -------
    result : `~gammapy.modeling.FitResult`
    """
    fast = fast_datasets(datasets)
    with accelerated():
        if optimize_opts:
            return Fit(optimize_opts=dict(RETRY_OPTIMIZE_OPTS)).run(fast)
        result = Fit(optimize_opts=dict(FIRST_OPTIMIZE_OPTS)).run(fast)
        if not result.success:
            log.debug("strategy 0 did not converge (%s): continuing with strategy 1", result.message)
            result = Fit(optimize_opts=dict(RETRY_OPTIMIZE_OPTS)).run(fast)
    return result


class PoolFit:
    """`accelerated_fit` for a worker pool: a worker runs it, then ends when the process that made it dies.

    Made in the dispatching process (which it remembers); in a loky worker the
    first call starts `gpsfast.utils.exit_with_parent`, so that a SIGKILL of the
    pipeline does not leave its workers fitting for minutes.
    """

    def __init__(self):
        self.parent = os.getpid()

    def __call__(self, datasets, optimize_opts=None):
        exit_with_parent(self.parent)
        return accelerated_fit(datasets, optimize_opts)


def match_catalogue(truth, models, max_separation=0.3):
    """Match true sources to catalogue sources, nearest first, one to one.

    Parameters
    ----------
    truth : `~gammapy.modeling.models.Models`
        True sources (those with a position are matched).
    models : `~gammapy.modeling.models.Models`
        Catalogue sources.
    max_separation : float, optional
        Largest separation of a match (deg). Default 0.3.

    Returns
    -------
    pairs : `~astropy.table.Table`
        ``source``, ``model``, ``separation`` (deg), ``dlon``, ``dlat`` (deg,
        catalogue minus truth).
    """
    def positioned(items):
        return [m for m in items if isinstance(m, SkyModel) and m.spatial_model is not None
                and hasattr(m.spatial_model, "lon_0")]

    true_sources, sources = positioned(truth), positioned(models)
    names = ["source", "model", "separation", "dlon", "dlat"]
    if not true_sources or not sources:
        return Table(names=names, dtype=[str, str, float, float, float])
    true_pos = SkyCoord([m.position.galactic for m in true_sources])
    pos = SkyCoord([m.position.galactic for m in sources])
    separation = true_pos[:, None].separation(pos[None, :]).deg
    rows, used_true, used = [], set(), set()
    for flat in np.argsort(separation, axis=None):
        i, j = np.unravel_index(flat, separation.shape)
        if separation[i, j] > max_separation:
            break
        if i in used_true or j in used:
            continue
        used_true.add(i)
        used.add(j)
        dlon = (pos[j].l - true_pos[i].l).wrap_at(180 * u.deg).deg
        rows.append((true_sources[i].name, sources[j].name, separation[i, j], dlon, pos[j].b.deg - true_pos[i].b.deg))
    return Table(rows=rows, names=names, dtype=[str, str, float, float, float]) if rows else \
        Table(names=names, dtype=[str, str, float, float, float])
