"""The pipeline's stages done twice, with gpsfast calls and with plain gammapy calls, timed stage by stage.

Stages (those of ``gpsfast.pipeline.run`` from the significance maps to the residual maps):

``significance``
    excess / significance maps at every correlation radius for every dataset (background only);
``seeds``
    peaks above the threshold, merged over the maps;
``spectra``
    one spectrum per seed and dataset (seed circles fully inside the map);
``models``
    `gpsfast.pipeline.modelling.select_seeds` and `seed_models` (GeneralizedGaussian + LogParabola,
    index 2.5, amplitude from the PosTeV seed spectrum), and the overlap groups (`gpsfast.groups.make_groups`);
``fit``
    one fit per group: gpsfast fits cutouts with the other sources cached (`gpsfast.groups.fit_groups`, the
    compiled GeneralizedGaussian of `gpsfast.models.accelerate_models`, as the pipeline does); the reference
    runs gammapy's ``Fit`` on the full datasets with every model present and everything but the group's
    members frozen (the pipeline's defaults: shapes eta, e, phi and the curvature beta frozen);
``catalogue``
    the fitted models written out (YAML without covariance; gpsfast also writes its FITS catalogue);
``residual``
    significance maps of the datasets with the fitted models.

The index map of the pipeline's spectra stage has no plain-gammapy counterpart and is left out of both sides
(both start from index 2.5). Both sides build their own seed models from their own seeds; the reference's
fit stage fits gpsfast's initial models and groups, so that both fit the same sources. Fitting every group
with plain gammapy on the full maps takes hours (about 0.5 s per likelihood call on a loaded machine), so
`gammapy_reference` measures gammapy's time per likelihood call on a fixed sample of groups
(`sample_groups`) and extrapolates with the calls each group's fit needs (counted in gpsfast's fits of the
same groups by `CallCounter`); what was measured and what was extrapolated are reported separately.
A second fit-stage reference, gammapy at its best without gpsfast's caching, fits each group on gammapy
cutouts of the datasets around the group with every model present (`_time_calls_cutout`); it is measured
the same way (set-up and time per call on the sampled groups) and reported beside the first.
"""
import contextlib
import time
from pathlib import Path

import astropy.units as u
import numpy as np
from astropy.coordinates import SkyCoord
from astropy.table import Table, vstack
from gammapy.datasets import Datasets
from gammapy.estimators import ExcessMapEstimator
from gammapy.estimators.utils import find_peaks
from gammapy.modeling import Fit
from gammapy.modeling.models import Models, SkyModel
from regions import CircleSkyRegion

from gpsfast.detect import find_seeds, significance_maps
from gpsfast.evaluate import FastDatasets
from gpsfast.irf import fast_irfs
from gpsfast.groups import fit_groups, make_groups
from gpsfast.models import accelerate_models, write_catalog
from gpsfast.pipeline.modelling import (
    accelerated_fit,
    seed_amplitude,
    seed_models,
    select_seeds,
)
from gpsfast.spectra import extract_spectra

RADII = (0.1, 0.2)
THRESHOLD = 5.0
MIN_DISTANCE = 0.1
MERGE_DISTANCE = 0.1
MIN_SEED_RADIUS = 0.1
MIN_SEPARATION = 0.2
POSITION_RANGE = 0.2
MAX_GROUP_SIZE = 4
MARGIN = "0.3 deg"
INDEX = 2.5
DEFAULT_AMPLITUDE = 1e-13
SAMPLE_QUANTILES = (1 / 6, 1 / 2, 5 / 6)
CALLS_PER_GROUP = 40
STAGES = ("significance", "seeds", "spectra", "models", "fit", "catalogue", "residual")


class StageTimer:
    """Wall time of named stages (``perf_counter``), accumulated per stage."""

    def __init__(self):
        self.times = {}

    @contextlib.contextmanager
    def __call__(self, stage):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.times[stage] = self.times.get(stage, 0.0) + time.perf_counter() - start

    @property
    def total(self):
        return sum(self.times.values())


# ------------------------------------------------------------------ shared bookkeeping


def background_only(datasets):
    """Copies of the datasets holding only their ``<name>-bkg`` background model (a copy)."""
    out = Datasets()
    for dataset in datasets:
        copy = dataset.copy(name=dataset.name)
        copy.models = [m.copy(name=m.name) for m in (dataset.models or []) if m.name == f"{dataset.name}-bkg"]
        out.append(copy)
    return out


def backgrounds(datasets):
    """Copies of the datasets' ``<name>-bkg`` models."""
    return [m.copy(name=m.name) for d in datasets for m in (d.models or []) if m.name == f"{d.name}-bkg"]


def with_models(datasets, sources):
    """Fresh copies of the datasets with their background and (copies of) the source models."""
    out = Datasets()
    sources = [m.copy(name=m.name) for m in sources]
    for dataset, background in zip(datasets, backgrounds(datasets)):
        copy = dataset.copy(name=dataset.name)
        copy.models = [*sources, background]
        out.append(copy)
    return out


def seed_regions(seeds, dataset):
    """Circles (radius at least `MIN_SEED_RADIUS`) of the seeds lying fully inside a dataset's map.

    Returns
    -------
    names, regions : list of str, list of `~regions.CircleSkyRegion`
    """
    geom = dataset.counts.geom.to_image()
    position = SkyCoord(np.asarray(seeds["glon"]), np.asarray(seeds["glat"]), unit="deg", frame="galactic")
    radius = np.maximum(np.asarray(seeds["radius"], dtype=float), MIN_SEED_RADIUS)
    x, y = geom.coord_to_pix({"skycoord": position})
    r_pix = radius / np.mean(geom.pixel_scales.to_value("deg"))
    nx, ny = geom.data_shape[-1], geom.data_shape[-2]
    inside = (x - r_pix >= 0) & (y - r_pix >= 0) & (x + r_pix <= nx - 1) & (y + r_pix <= ny - 1)
    names = [str(n) for n, keep in zip(seeds["name"], inside) if keep]
    regions = [CircleSkyRegion(p, r * u.deg) for p, r, keep in zip(position, radius, inside) if keep]
    return names, regions


def spectra_table(spectra):
    """Seed spectra (`~gammapy.datasets.SpectrumDataset` s named after the seeds) as the table
    `gpsfast.pipeline.modelling.seed_amplitude` reads."""
    first = spectra[0]
    rows = []
    for spectrum in spectra:
        mask = spectrum.mask_safe.data.ravel() if spectrum.mask_safe is not None else True
        excess = (spectrum.counts.data.ravel() - spectrum.background.data.ravel()) * mask
        rows.append((spectrum.name, excess, spectrum.exposure.quantity.ravel()))
    table = Table(rows=rows, names=["name", "excess", "exposure"])
    table.meta["energy_edges"] = list(first.counts.geom.axes["energy"].edges.to_value("TeV"))
    table.meta["energy_true_edges"] = list(first.exposure.geom.axes["energy_true"].edges.to_value("TeV"))
    return table


def initial_models(seeds, spectra):
    """Seed models of the kept seeds; amplitudes from the PosTeV seed spectra when there are some."""
    kept = select_seeds(seeds, MIN_SEPARATION)
    table = spectra_table(spectra) if spectra is not None and len(spectra) else None
    names = set(table["name"]) if table is not None else set()
    amplitude = [
        seed_amplitude(table, name, INDEX) if name in names else DEFAULT_AMPLITUDE for name in kept["name"]
    ]
    return seed_models(kept, np.full(len(kept), INDEX), amplitude, position_range=POSITION_RANGE)


def groups_of(models, datasets):
    """Overlap groups of the source models (backgrounds given to `make_groups` as the pipeline does)."""
    return make_groups(Models([*models, *backgrounds(datasets)]), max_size=MAX_GROUP_SIZE, margin=MARGIN)


def sample_groups(groups, quantiles=SAMPLE_QUANTILES):
    """A fixed sample of groups of typical sizes: those at ``quantiles`` of the list sorted by (size, index)."""
    ordered = sorted(groups, key=lambda g: (len(g.names), g.index))
    picks = sorted({round(q * (len(ordered) - 1)) for q in quantiles}) if ordered else []
    return [ordered[k] for k in picks]


# ------------------------------------------------------------------ plain gammapy


def gammapy_seeds(maps):
    """Peaks of every significance map (gammapy's ``find_peaks``), merged within `MERGE_DISTANCE`.

    A peak's radius is the correlation radius of the map it was found in (gammapy gives no size).
    """
    tables = []
    for radius, sqrt_ts in maps:
        peaks = find_peaks(sqrt_ts, threshold=THRESHOLD, min_distance=f"{MIN_DISTANCE} deg")
        if not len(peaks):
            continue
        position = SkyCoord(peaks["ra"], peaks["dec"], unit="deg").galactic
        tables.append(Table({
            "glon": position.l.wrap_at(180 * u.deg).deg, "glat": position.b.deg,
            "radius": np.full(len(peaks), radius), "sqrt_ts": np.asarray(peaks["value"], dtype=float),
        }))
    if not tables:
        return Table(names=["name", "glon", "glat", "radius", "sqrt_ts"], dtype=[str, float, float, float, float])
    peaks = select_seeds(vstack(tables), MERGE_DISTANCE)
    peaks.add_column([f"PEAK-{k + 1:03d}" for k in range(len(peaks))], name="name", index=0)
    return peaks


class CallCounter:
    """Group-fit function for `gpsfast.groups.fit_groups` counting the likelihood calls of every group.

    It runs the pipeline's fit function (`gpsfast.pipeline.modelling.accelerated_fit`) and counts the calls
    of ``FastDatasets.stat_sum`` (one per likelihood evaluation: minimiser, covariance, retries).
    In-process fits only.

    Attributes
    ----------
    calls : dict
        Sorted member names -> number of likelihood calls.
    """

    def __init__(self):
        self.calls = {}

    def __call__(self, datasets, optimize_opts=None):
        names = tuple(sorted(m.name for m in datasets.models if isinstance(m, SkyModel)))
        original = FastDatasets.stat_sum

        def counted(fast):
            self.calls[names] = self.calls.get(names, 0) + 1
            return original(fast)

        FastDatasets.stat_sum = counted
        try:
            return accelerated_fit(datasets, optimize_opts)
        finally:
            FastDatasets.stat_sum = original


def _free_states(models):
    return {id(p): p.frozen for p in models.parameters}


def _time_calls(datasets, models, group, states, n_calls):
    """Seconds per likelihood call of gammapy's ``Fit`` of one group on the full datasets.

    The group's members are free as in the seed models and every other parameter frozen; minuit (migrad)
    runs for about ``n_calls`` calls.
    """
    members = set(group.names)
    for model in models:
        for par in model.parameters:
            par.frozen = states[id(par)] if model.name in members else True
    fit = Fit(optimize_opts={"migrad_opts": {"ncall": n_calls}})
    start = time.perf_counter()
    result = fit.optimize(datasets)
    return (time.perf_counter() - start) / max(result.nfev, 1), result.nfev


def _time_calls_cutout(datasets, models, group, states, n_calls):
    """Set-up and per-call seconds of gammapy's ``Fit`` of one group on gammapy cutouts of the datasets.

    What a gammapy user does at best without gpsfast's caching: ``MapDataset.cutout`` of every dataset
    around the group (same cutout as gpsfast's), every model present (gammapy skips those that do not
    reach the cutout and keeps the npred of frozen ones), the members free as in the seed models and
    everything else frozen. The set-up is the cutouts and their first likelihood (every model's npred).

    Returns
    -------
    setup, per_call, nfev : float, float, int
    """
    members = set(group.names)
    for model in models:
        for par in model.parameters:
            par.frozen = states[id(par)] if model.name in members else True
    start = time.perf_counter()
    cutouts = Datasets()
    for dataset in datasets:
        cutout = dataset.cutout(position=group.center, width=group.width, mode="trim", name=dataset.name)
        cutout.models = models
        cutouts.append(cutout)
    cutouts.stat_sum()
    setup = time.perf_counter() - start
    fit = Fit(optimize_opts={"migrad_opts": {"ncall": n_calls}})
    start = time.perf_counter()
    result = fit.optimize(cutouts)
    return setup, (time.perf_counter() - start) / max(result.nfev, 1), result.nfev


def gammapy_reference(datasets, output, fit_models=None, fit_group_list=None, calls=None, n_calls=CALLS_PER_GROUP):
    """The pipeline's stages with plain gammapy calls; the fit stage measured on a sample of groups.

    The fit stage fits the same groups as gpsfast (``fit_models``, ``fit_group_list``), with gammapy's
    ``Fit`` on the full datasets with every model present. Fitting them all takes hours, so it is
    measured on a sample (`sample_groups`): for each sampled group, gammapy's time per likelihood call
    over about ``n_calls`` minimiser calls. The stage is extrapolated as the set-up (the first likelihood
    of all models, measured) plus that mean time per call times the likelihood calls each group's fit
    needs (``calls``, counted in gpsfast's fits of the same groups: same models, free parameters and
    minimiser).

    Parameters
    ----------
    datasets : `~gammapy.datasets.Datasets`
        Background-only datasets (`background_only`).
    output : `~pathlib.Path`
        Folder for the catalogue.
    fit_models, fit_group_list : `~gammapy.modeling.models.Models`, list of `~gpsfast.groups.Group`, optional
        Initial models and groups of the fit stage; default: those of this side's own seeds.
    calls : dict, optional
        Sorted member names -> likelihood calls of the group's fit (`CallCounter.calls`); default
        `CALLS_PER_GROUP` times the group size.
    n_calls : int, optional
        Minimiser calls timed per sampled group.

    Returns
    -------
    info : dict
        ``times`` (measured seconds per stage; ``fit``: set-up plus sampled calls), ``fit_setup``,
        ``fit_call`` (seconds per call, per sampled group), ``fit_sample`` (extrapolated seconds per
        sampled group), ``fit_all`` (extrapolated fit stage), ``measured``, ``total`` (end to end with
        the extrapolated fit stage), the same for fits on gammapy cutouts (``fit_cutouts_setup``,
        ``fit_cutouts_call``, ``fit_cutouts_all``, ``total_cutouts``), counts.
    """
    timer = StageTimer()
    with timer("significance"):
        maps = [
            (radius, ExcessMapEstimator(correlation_radius=f"{radius} deg").run(dataset)["sqrt_ts"])
            for dataset in datasets for radius in RADII
        ]
    with timer("seeds"):
        seeds = gammapy_seeds(maps)
    with timer("spectra"):
        spectra = {}
        for dataset in datasets:
            names, regions = seed_regions(seeds, dataset)
            spectra[dataset.name] = [dataset.to_spectrum_dataset(r, name=n) for n, r in zip(names, regions)]
    with timer("models"):
        models = initial_models(seeds, spectra.get("postev"))
        groups = groups_of(models, datasets)
    own = {"n_seeds": len(seeds), "n_sources": len(models), "n_groups": len(groups)}
    if fit_models is not None:
        models, groups = fit_models, fit_group_list
    calls = calls or {}
    group_calls = [calls.get(tuple(sorted(g.names)), CALLS_PER_GROUP * len(g.names)) for g in groups]
    sample = sample_groups(groups)
    full = with_models(datasets, models)
    fitted = full.models
    states = _free_states(fitted)
    with timer("fit"):
        start = time.perf_counter()
        full.stat_sum()
        setup = time.perf_counter() - start
        timed = [_time_calls(full, fitted, group, states, n_calls) for group in sample]
    with timer("fit_cutouts"):
        timed_cutouts = [_time_calls_cutout(datasets, fitted, group, states, n_calls) for group in sample]
    sources = Models([fitted[name] for name in models.names])
    with timer("catalogue"):
        sources.write(Path(output) / "gammapy_models.yaml", overwrite=True, write_covariance=False)
    with timer("residual"):
        for dataset in with_models(datasets, sources):
            for radius in RADII:
                ExcessMapEstimator(correlation_radius=f"{radius} deg").run(dataset)
    per_call = [t for t, _ in timed]
    sample_calls = [calls.get(tuple(sorted(g.names)), CALLS_PER_GROUP * len(g.names)) for g in sample]
    fit_sample = [t * n for t, n in zip(per_call, sample_calls)]
    fit_all = setup + (np.mean(per_call) * sum(group_calls) if per_call else 0.0)
    cutout_setup = [t for t, _, _ in timed_cutouts]
    cutout_call = [t for _, t, _ in timed_cutouts]
    fit_cutouts = (np.mean(cutout_setup) * len(groups) + np.mean(cutout_call) * sum(group_calls)) if sample else 0.0
    measured = timer.total - timer.times.pop("fit_cutouts")
    return {
        "times": timer.times,
        "measured": measured,
        "fit_setup": setup,
        "fit_call": per_call,
        "fit_sample_calls_timed": [n for _, n in timed],
        "fit_sample_calls": sample_calls,
        "fit_sample_sizes": [len(g.names) for g in sample],
        "fit_sample": fit_sample,
        "fit_all": fit_all,
        "fit_all_per_group": setup + (np.mean(fit_sample) * len(groups) if fit_sample else 0.0),
        "fit_calls": sum(group_calls),
        "total": measured - timer.times["fit"] + fit_all,
        "fit_cutouts_setup": cutout_setup,
        "fit_cutouts_call": cutout_call,
        "fit_cutouts_all": fit_cutouts,
        "total_cutouts": measured - timer.times["fit"] + fit_cutouts,
        "own": own,
        "n_sources": len(models),
        "n_groups": len(groups),
        "group_sizes": [len(g.names) for g in groups],
    }


# ------------------------------------------------------------------ gpsfast


def gpsfast_pipeline(datasets, output, n_jobs=1, counter=None):
    """The same stages with gpsfast calls, measured fully.

    Parameters
    ----------
    datasets : `~gammapy.datasets.Datasets`
        Background-only datasets (`background_only`).
    output : `~pathlib.Path`
        Folder for the catalogue.
    n_jobs : int
        Worker processes of the group fits (1: in-process).
    counter : `CallCounter`, optional
        Group-fit function counting the likelihood calls (in-process fits only).

    Returns
    -------
    info : dict
        ``times`` per stage, ``total``, ``fit_group_mean`` (mean in-worker seconds per group), counts, fit
        successes, and the ``initial_models`` and ``groups`` (for `gpsfast_fit_time`).
    """
    timer = StageTimer()
    with timer("significance"):
        maps = significance_maps(datasets, RADII)
    with timer("seeds"):
        seeds = find_seeds(maps, threshold=THRESHOLD, min_distance=f"{MIN_DISTANCE} deg", hough=False,
                           merge_distance=f"{MERGE_DISTANCE} deg").table
    with timer("spectra"):
        spectra = {}
        for dataset in datasets:
            names, regions = seed_regions(seeds, dataset)
            spectra[dataset.name] = extract_spectra(dataset, regions, names=names) if regions else []
    with timer("models"):
        models = initial_models(seeds, spectra.get("postev"))
        groups = groups_of(models, datasets)
    with timer("fit"):
        everything = Models([*[m.copy(name=m.name) for m in models], *backgrounds(datasets)])
        accelerate_models(everything)
        table = fit_groups(datasets, everything, groups=groups, n_jobs=n_jobs, fit_function=counter or accelerated_fit,
                           release=False)
        fitted = Models([everything[name] for name in models.names])
    with timer("catalogue"):
        write_catalog(fitted, Path(output) / "gpsfast_catalogue.fits", overwrite=True)
        fitted.write(Path(output) / "gpsfast_models.yaml", overwrite=True, write_covariance=False)
    with timer("residual"):
        residual = with_models(datasets, fitted)
        accelerate_models(residual.models)
        with fast_irfs(residual):
            significance_maps(residual, RADII, background_only=False)
    return {
        "times": timer.times,
        "total": timer.total,
        "fit_group_mean": float(np.mean(table["time"])) if len(table) else 0.0,
        "n_seeds": len(seeds),
        "n_sources": len(models),
        "n_groups": len(groups),
        "n_fit_success": int(np.sum(table["success"])),
        "group_sizes": [len(g.names) for g in groups],
        "initial_models": models,
        "groups": groups,
    }


def gpsfast_fit_time(datasets, models, groups, n_jobs):
    """Wall time of `gpsfast.groups.fit_groups` of copies of ``models`` with ``n_jobs`` workers."""
    start = time.perf_counter()
    everything = Models([*[m.copy(name=m.name) for m in models], *backgrounds(datasets)])
    accelerate_models(everything)
    fit_groups(datasets, everything, groups=groups, n_jobs=n_jobs, fit_function=accelerated_fit, release=False)
    return time.perf_counter() - start
