"""Flux points of overlapping sources fitted jointly: one norm per source per energy bin.

- `group_flux_points`: flux points of chosen sources on the datasets as they
  are. In each flux-point energy bin every source's predicted counts keep the
  shape of its fitted model and only its norm scales them; the norms of all the
  chosen sources are fitted together (the crosstalk of overlapping sources is
  kept in their joint likelihood), every other model (sources, diffuse,
  background) is fixed at its current value. Each source's npred cube is
  computed once (`gpsfast.fit.FastMapDataset`), the per-bin likelihood of the
  norms is solved by the compiled Newton / Brent kernels of
  `gpsfast.kernels.normfit`.
- `flux_points`: the same for every source of a model list, group by group of
  overlapping sources (`gpsfast.groups.make_groups`), the npred of all sources
  computed once and the group's subtracted from it for the fixed part.

The results are gammapy `~gammapy.estimators.FluxPoints` (``sed_type_init``
"likelihood") with the quantities of gammapy's ``FluxPointsEstimator``
(``reoptimize=False``): norm, norm_err, norm_errn, norm_errp, norm_ul, ts,
npred, npred_excess, stat, stat_null, stat_scan, counts, success, and the
source's spectral model as reference model. Conventions, as gammapy's:
``norm_err`` is ``n_sigma`` times the curvature error, the asymmetric errors
are where the likelihood profile rises by ``n_sigma**2``, the upper limit where
it rises by ``n_sigma_ul**2`` (gammapy's default ``n_sigma_ul=2``: delta TS 4;
``n_sigma_ul=1.645`` gives the one-sided 95% limit, delta TS 2.71). With
several sources the profiles refit the other norms, and ts is that profile at
norm 0 minus its minimum (gammapy's ``FluxCollectionEstimator`` keeps the
other norms at their best fit for ts: a larger ts for correlated sources).

Differences from gammapy: the norms are kept where no pixel gets a negative
predicted count (gammapy clips those to zero and can end on meaningless large
negative norms): each norm above ``-min(fixed / npred_source) / n`` over the
pixels without counts (``n`` sources in the group), the same result as
gammapy's wherever gammapy's has no negative prediction. A source without
counts where it predicts any has no likelihood minimum: its norm ends at that
bound (0 without background), its upper limit from there, with no curvature
error and no lower error. Datasets that do not cover a bin get counts 0 and
npred NaN in it (gammapy's estimator fails on datasets with disjoint energy
ranges).
"""
import logging

import numpy as np
import astropy.units as u
from astropy.table import Table
from gammapy.datasets import MapDataset
from gammapy.estimators import FluxPoints
from gammapy.maps import MapAxis
from gammapy.modeling import Parameter
from gammapy.modeling.models import Models, SkyModel, TemplateSpatialModel

from .errors import InputError
from .evaluate import fast_datasets
from .groups import make_groups
from .utils import progress_bar

__all__ = ["OPTIONAL_QUANTITIES", "default_norm", "flux_points", "group_flux_points"]

log = logging.getLogger(__name__)

OPTIONAL_QUANTITIES = ("errn-errp", "ul", "scan")
"""Optional quantities (gammapy's ``selection_optional`` names); all are computed by default."""


def default_norm():
    """The norm parameter of gammapy's flux estimators: value 1, 11 scan values from 0.2 to 5 (log).

    Returns
    -------
    norm : `~gammapy.modeling.Parameter`
    """
    return Parameter(name="norm", value=1, unit="", interp="log", scan_min=0.2, scan_max=5, scan_n_values=11)


def _sources(models, sources):
    """Names of the sky models to estimate (default: every source with a non-template spatial model)."""
    if models is None:
        raise InputError("flux points: the datasets have no models")
    if sources is None:
        names = [
            m.name for m in models
            if isinstance(m, SkyModel) and m.spatial_model is not None
            and not isinstance(m.spatial_model, TemplateSpatialModel)
        ]
    else:
        items = [sources] if isinstance(sources, (str, SkyModel)) else list(sources)
        names = [item.name if isinstance(item, SkyModel) else str(item) for item in items]
        unknown = [name for name in names if name not in models.names]
        if unknown:
            raise InputError(f"flux points: no model named {unknown} in the datasets' models")
    if len(set(names)) != len(names):
        raise InputError(f"flux points: sources given twice in {names}")
    return names


def _energy_edges(energy_edges):
    edges = u.Quantity(energy_edges)
    if edges.ndim != 1 or edges.size < 2 or not edges.unit.is_equivalent("TeV"):
        raise InputError(f"flux points: energy_edges must be at least two energies, got {energy_edges!r}")
    if not np.all(np.diff(edges.value) > 0) or not np.all(np.isfinite(edges.value)):
        raise InputError(f"flux points: energy_edges must be finite and increasing, got {edges}")
    return edges


def _selection(selection_optional):
    if selection_optional is None:
        return set()
    selection = {selection_optional} if isinstance(selection_optional, str) else set(selection_optional)
    if "all" in selection:
        return set(OPTIONAL_QUANTITIES)
    unknown = selection - set(OPTIONAL_QUANTITIES)
    if unknown:
        raise InputError(f"flux points: unknown optional quantities {sorted(unknown)}; use {OPTIONAL_QUANTITIES}")
    return selection


class _DatasetData:
    """What a dataset gives every group: counts, mask, background npred, optionally all sources' npred."""

    def __init__(self, dataset, with_total=False):
        self.name = dataset.name
        self.axis = dataset.counts.geom.axes["energy"]
        self.counts = np.asarray(dataset.counts.data, dtype=float)
        mask = dataset.mask
        self.mask = np.ones(self.counts.shape, bool) if mask is None else np.asarray(mask.data, bool)
        self.background = np.zeros(self.counts.shape)
        if dataset.background is not None:
            self.background += dataset.npred_background().data
        self.total = np.asarray(dataset.npred_signal().data, dtype=float) if with_total else None
        self._slices = {}

    def energy_slice(self, energy_min, energy_max):
        """Reconstructed-energy bins of a flux-point bin, as gammapy's ``slice_by_energy`` (None: no overlap)."""
        key = (float(energy_min.to_value("TeV")), float(energy_max.to_value("TeV")))
        if key not in self._slices:
            try:
                group = self.axis.group_table(edges=u.Quantity([energy_min, energy_max]))
                normal = group[[str(kind).strip() == "normal" for kind in group["bin_type"]]]
            except ValueError:
                normal = []
            self._slices[key] = (
                slice(int(normal["idx_min"][0]), int(normal["idx_max"][0]) + 1) if len(normal) else None
            )
        return self._slices[key]


class _DatasetArrays:
    """A dataset's data with the fixed npred and one npred cube per source (norm 1) of a group."""

    def __init__(self, dataset, data, names):
        self.data = data
        self.name, self.axis, self.counts, self.mask = data.name, data.axis, data.counts, data.mask
        evaluated = set(dataset.evaluators)
        here = [name for name in names if name in evaluated]
        self.signals = [
            np.asarray(dataset.npred_signal(model_names=[name]).data, dtype=float) if name in here else None
            for name in names
        ]
        if data.total is not None:
            # all sources minus the group's (float rounding kept non-negative)
            fixed = data.total - sum(cube for cube in self.signals if cube is not None)
            fixed = data.background + np.clip(fixed, 0, None)
        else:
            fixed = data.background.copy()
            others = [name for name in dataset.evaluators if name not in here]
            if others:
                fixed += dataset.npred_signal(model_names=others).data
        self.fixed = fixed

    def energy_slice(self, energy_min, energy_max):
        return self.data.energy_slice(energy_min, energy_max)


def _bin_pixels(arrays, slices, n_sources):
    """Pixel vectors of one bin: the pixels some source reaches, and the sums over the others."""
    from gpsfast.kernels.cash import cash_sum_masked

    counts, fixed, signal, owner = [], [], [], []
    constant, info = 0.0, {}
    for index, (data, part) in enumerate(zip(arrays, slices)):
        if part is None:
            continue
        mask = data.mask[part]
        c, f = data.counts[part][mask], data.fixed[part][mask]
        s = np.zeros((c.size, n_sources))
        for k, cube in enumerate(data.signals):
            if cube is not None:
                s[:, k] = cube[part][mask]
        support = np.any(s != 0, axis=1)
        rest_c, rest_f = c[~support], f[~support]
        constant += cash_sum_masked(rest_c, rest_f, np.ones(rest_c.size, bool)) if rest_c.size else 0.0
        info[index] = (float(c.sum()), float(np.clip(rest_f, 0, None).sum()), s.sum(axis=0))
        counts.append(c[support])
        fixed.append(f[support])
        signal.append(s[support])
        owner.append(np.full(int(support.sum()), index))
    if not counts:
        return None
    return (
        np.ascontiguousarray(np.concatenate(counts)),
        np.ascontiguousarray(np.concatenate(fixed)),
        np.ascontiguousarray(np.concatenate(signal)),
        np.concatenate(owner),
        constant,
        info,
    )


def _reference_model(model, energy_edges):
    """gammapy's reference model of a source's flux points: its spectral model (a template for templates)."""
    if isinstance(model.spatial_model, TemplateSpatialModel):
        geom = model.spatial_model.map.geom
        axis = MapAxis.from_energy_bounds(
            energy_edges[0] * 0.3, energy_edges[-1] * 1.7, nbin=20, per_decade=True, name="energy_true"
        )
        return Models([model]).to_template_spectral_model(geom.to_image().to_cube([axis]))
    return model.spectral_model


def _reference_fluxes(model, energy_min, energy_max):
    axis = MapAxis.from_energy_edges(u.Quantity([energy_min, energy_max]))
    with np.errstate(invalid="ignore", divide="ignore"):
        fluxes = model.reference_fluxes(energy_axis=axis)
    return {key: value.item() for key, value in fluxes.items()}


def _empty_rows(reference, energy_min, energy_max, n_datasets, names, options, contributes):
    """Rows of a bin without data: gammapy's NaN result (no dataset) or its no-mask result."""
    nan = np.nan
    rows = []
    for name in names:
        row = _reference_fluxes(reference[name], energy_min, energy_max)
        row.update(norm=nan, stat=0.0 if contributes else nan, success=False, norm_err=nan, ts=nan,
                   npred=np.full(n_datasets, nan), stat_null=0.0 if contributes else nan)
        if "errn-errp" in options["selection"]:
            row.update(norm_errp=nan, norm_errn=nan)
        if "ul" in options["selection"]:
            row["norm_ul"] = nan
        if "scan" in options["selection"]:
            row.update(norm_scan=options["scan"], stat_scan=np.full(options["scan"].size, nan))
        row.update(counts=np.zeros(n_datasets), datasets=options["datasets"],
                   npred_excess=np.zeros(n_datasets) if contributes else np.full(n_datasets, nan))
        rows.append(row)
    return rows


def _check_ranges(used, energy_min, energy_max):
    """Warn when datasets cover overlapping but different parts of a bin (misaligned energy axes)."""
    ranges = [(data.axis.edges[part.start], data.axis.edges[part.stop], data.name) for data, part in used]
    for i, (lo_a, hi_a, name_a) in enumerate(ranges):
        for lo_b, hi_b, name_b in ranges[i + 1:]:
            overlap = min(hi_a, hi_b) > max(lo_a, lo_b) * (1 + 1e-6)
            same = np.isclose(lo_a, lo_b, rtol=1e-6) and np.isclose(hi_a, hi_b, rtol=1e-6)
            if overlap and not same:
                log.warning(
                    "flux points %s - %s: datasets %s (%s - %s) and %s (%s - %s) cover different parts of the "
                    "bin (energy axes not aligned); the norm mixes both ranges",
                    energy_min, energy_max, name_a, lo_a, hi_a, name_b, lo_b, hi_b,
                )


def _bin_rows(arrays, names, reference, energy_min, energy_max, options):
    """One row per source for one flux-point bin."""
    from gpsfast.kernels.normfit import norm_points, saturated_stat

    slices = [data.energy_slice(energy_min, energy_max) for data in arrays]
    used = [(data, part) for data, part in zip(arrays, slices) if part is not None]
    n_datasets, n_sources = len(arrays), len(names)
    if not used:
        log.warning("flux points: no dataset contributes in %s - %s", energy_min, energy_max)
        return _empty_rows(reference, energy_min, energy_max, n_datasets, names, options, False)
    e_min = min(data.axis.edges[part.start] for data, part in used)
    e_max = max(data.axis.edges[part.stop] for data, part in used)
    _check_ranges(used, energy_min, energy_max)
    if not any(data.mask[part].any() for data, part in used):
        return _empty_rows(reference, e_min, e_max, n_datasets, names, options, True)
    counts, fixed, signal, owner, constant, info = _bin_pixels(arrays, slices, n_sources)
    selection = options["selection"]
    norm, err, errn, errp, ul, ts, null, scan, success, deviance = norm_points(
        counts, fixed, signal, float(options["n_sigma"]), float(options["n_sigma_ul"]), options["scan"],
        "errn-errp" in selection, "ul" in selection,
    )
    offset = constant + saturated_stat(counts)
    mu = np.clip(fixed + signal @ np.nan_to_num(norm), 0, None)
    npred = np.full(n_datasets, np.nan)
    counts_sum = np.zeros(n_datasets)
    for index, (total_counts, rest_npred, _) in info.items():
        npred[index] = mu[owner == index].sum() + rest_npred
        counts_sum[index] = total_counts
    rows = []
    for k, name in enumerate(names):
        row = _reference_fluxes(reference[name], e_min, e_max)
        excess = np.full(n_datasets, np.nan)
        for index, (_, _, signal_sums) in info.items():
            excess[index] = norm[k] * signal_sums[k]
        row.update(norm=norm[k], stat=deviance + offset, success=bool(success[k]), norm_err=err[k], ts=ts[k],
                   npred=npred, stat_null=null[k] + offset)
        if "errn-errp" in selection:
            row.update(norm_errp=errp[k], norm_errn=errn[k])
        if "ul" in selection:
            row["norm_ul"] = ul[k]
        if "scan" in selection:
            row.update(norm_scan=options["scan"], stat_scan=scan[k] + offset)
        row.update(counts=counts_sum, datasets=options["datasets"], npred_excess=excess)
        rows.append(row)
    return rows


def _check_datasets(datasets):
    if isinstance(datasets, MapDataset):
        datasets = [datasets]
    bad = [type(d).__name__ for d in datasets if not isinstance(d, MapDataset)]
    if bad or not len(datasets):
        raise InputError(f"flux points: expected MapDatasets, got {bad or 'none'}")
    return datasets


def _options(datasets, energy_edges, n_sigma, n_sigma_ul, selection_optional, norm):
    for name, value in (("n_sigma", n_sigma), ("n_sigma_ul", n_sigma_ul)):
        if not (np.isfinite(value) and value > 0):
            raise InputError(f"flux points: {name} must be positive, got {value}")
    norm = default_norm() if norm is None else norm
    return {
        "edges": _energy_edges(energy_edges),
        "selection": _selection(selection_optional),
        "n_sigma": n_sigma,
        "n_sigma_ul": n_sigma_ul,
        "scan": np.asarray(norm.scan_values, dtype=float),
        "datasets": datasets.names,
    }


def _estimate(datasets, models, data, names, options):
    """Flux points of the sources ``names`` on fast datasets whose `_DatasetData` are ``data``."""
    edges = options["edges"]
    reference = {name: _reference_model(models[name], edges) for name in names}
    arrays = [_DatasetArrays(dataset, part, names) for dataset, part in zip(datasets, data)]
    rows = {name: [] for name in names}
    for energy_min, energy_max in zip(edges[:-1], edges[1:]):
        for name, row in zip(names, _bin_rows(arrays, names, reference, energy_min, energy_max, options)):
            rows[name].append(row)
    meta = {"n_sigma": options["n_sigma"], "n_sigma_ul": options["n_sigma_ul"], "sed_type_init": "likelihood"}
    return {
        name: FluxPoints.from_table(
            table=Table(rows[name], meta=meta), reference_model=reference[name].copy(), gti=datasets.gti,
            format="gadf-sed",
        )
        for name in names
    }


def group_flux_points(
    datasets,
    sources=None,
    energy_edges=(1, 10) * u.TeV,
    n_sigma=1,
    n_sigma_ul=2,
    selection_optional="all",
    norm=None,
):
    """Flux points of sources fitted jointly, one norm per source per energy bin, the other models fixed.

    In each bin of ``energy_edges`` (snapped to the datasets' reconstructed
    energy edges as gammapy's ``slice_by_energy`` does), the predicted counts
    are the fixed models (background at its current norm, the other sky
    models) plus each source's npred for its current model times its norm; the
    norms of all ``sources`` are fitted together on the datasets' safe and fit
    masks. For one source this is gammapy's
    ``FluxPointsEstimator(reoptimize=False)``.

    Parameters
    ----------
    datasets : `~gammapy.datasets.Datasets`, list of `~gammapy.datasets.MapDataset` or one MapDataset
        Datasets with their models set. Datasets may cover different energy
        ranges (SubTeV and PosTeV); where two of them cover the same part of a
        bin their energy axes must be aligned (a warning says where not).
    sources : str, `~gammapy.modeling.models.SkyModel` or list of them, optional
        The sources fitted jointly. Default: every sky model with a spatial
        model that is not a template. Keep it to a group of overlapping sources
        (`flux_points` does it for all): the npred cubes of all of them are
        held in memory.
    energy_edges : `~astropy.units.Quantity`, optional
        Edges of the flux-point bins. Default 1 to 10 TeV.
    n_sigma : float, optional
        Confidence level of ``norm_err`` (times the curvature error) and of
        ``norm_errn`` / ``norm_errp`` (profile rising by ``n_sigma**2``). Default 1.
    n_sigma_ul : float, optional
        Upper limits where the profile rises by ``n_sigma_ul**2``. Default 2.
    selection_optional : str or list of str, optional
        "all" (default), or some of "errn-errp", "ul", "scan"; None: norm,
        norm_err and ts only.
    norm : `~gammapy.modeling.Parameter`, optional
        Norm parameter whose ``scan_values`` are the profile points
        (``stat_scan``). Default: `default_norm` (as gammapy's estimators).

    Returns
    -------
    flux_points : dict
        ``{source name: FluxPoints}`` in the order of ``sources``.
    """
    datasets = fast_datasets(_check_datasets(datasets))
    models = datasets.models
    names = _sources(models, sources)
    options = _options(datasets, energy_edges, n_sigma, n_sigma_ul, selection_optional, norm)
    data = [_DatasetData(dataset) for dataset in datasets]
    return _estimate(datasets, models, data, names, options)


def _group_names(groups, models):
    """Member names of each group (`~gpsfast.groups.Group` or lists of names), checked against the models."""
    names = [list(group.names) if hasattr(group, "names") else list(group) for group in groups]
    flat = [name for group in names for name in group]
    unknown = sorted(set(flat) - set(models.names))
    if unknown:
        raise InputError(f"flux points: groups name sources {unknown} that are not in the models")
    if len(set(flat)) != len(flat):
        raise InputError("flux points: a source is in several groups")
    return names


def flux_points(
    datasets,
    models=None,
    energy_edges=(1, 10) * u.TeV,
    groups=None,
    n_sigma=1,
    n_sigma_ul=2,
    selection_optional="all",
    norm=None,
    progress=False,
):
    """Flux points of every source, fitted jointly within each group of overlapping sources.

    The npred of all sources is computed once per dataset (the compiled
    evaluator of `gpsfast.fit.FastMapDataset`). For each group
    (`gpsfast.groups.make_groups` of ``models`` by default) the fixed counts
    are the background plus that npred minus the members', and the members'
    norms are fitted jointly in each energy bin as in `group_flux_points`, on
    the full datasets (the same statistic as gammapy's ``FluxPointsEstimator``
    run on them source by source, except for the joint fit within groups).

    Parameters
    ----------
    datasets : `~gammapy.datasets.Datasets`, list of MapDatasets or one MapDataset
        Datasets.
    models : `~gammapy.modeling.models.Models`, optional
        All models (sources, diffuse, backgrounds) at their fitted values, set
        on the datasets. Default: the datasets' models.
    energy_edges : `~astropy.units.Quantity`, optional
        Edges of the flux-point bins. Default 1 to 10 TeV.
    groups : list of `~gpsfast.groups.Group` or list of lists of source names, optional
        Sources fitted jointly. Default: ``make_groups(models)``.
    n_sigma, n_sigma_ul, selection_optional, norm
        As in `group_flux_points`.
    progress : bool, optional
        Show a progress bar over the groups.

    Returns
    -------
    flux_points : dict
        ``{source name: FluxPoints}``, in the order of the groups.
    """
    datasets = fast_datasets(_check_datasets(datasets))
    if models is not None:
        datasets.models = Models(models)
    models = datasets.models
    if models is None:
        raise InputError("flux points: the datasets have no models")
    groups = _group_names(make_groups(models) if groups is None else groups, models)
    options = _options(datasets, energy_edges, n_sigma, n_sigma_ul, selection_optional, norm)
    data = [_DatasetData(dataset, with_total=True) for dataset in datasets]
    points = {}
    for names in progress_bar(groups, desc="flux points", show=progress):
        points.update(_estimate(datasets, models, data, names, options))
    log.info("flux points of %d sources in %d groups", len(points), len(groups))
    return points
