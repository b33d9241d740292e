"""Fits by groups of overlapping sources, in process pools and on dask clusters.

- `make_groups`: the sky models whose extents (source size combined with the
  PSF radius) overlap form a graph, weighted by the overlap; its connected
  components are the groups, and a group larger than ``max_size`` is split by
  cutting its weakest edges;
- `fit_groups`: each group is fitted with gammapy's ``Fit`` on cutouts of the
  datasets (SubTeV and PosTeV jointly), the other sources cached as one npred
  template per cutout, the main source's shape released; the results are merged
  back into the global models, iterating until the parameters settle. Groups run
  in-process, in a joblib ``loky`` process pool or on a dask.distributed cluster
  (one future per group), with retries, worker-death recovery and an on-disk
  checkpoint.

Only a `GroupTask` is shipped to a worker: cutouts of the datasets (made in the
parent, cheap), copies of the group's models and the outer models that reach
the cutout; the worker computes their npred template, the expensive part of
the set-up, so that the parent process stays free to dispatch. It pickles with
pickle and cloudpickle.
"""
import contextlib
import hashlib
import json
import logging
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import astropy.units as u
import joblib
import numpy as np
from astropy.coordinates import Angle, SkyCoord
from astropy.nddata import NoOverlapError
from astropy.table import Table
from gammapy.datasets import Datasets, MapDataset
from gammapy.modeling import Fit
from gammapy.modeling.models import (
    Models,
    SkyModel,
    TemplateNPredModel,
    TemplateSpatialModel,
)
from regions import RectangleSkyRegion
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from .errors import GpsfastError, InputError
from .evaluate import npred_signal
from .irf import fast_irfs
from .modeling import SHAPE_PARAMETERS, main_source, release_shape
from .modeling import applies_to as _applies
from .utils import file_mode, progress_bar

__all__ = [
    "Group",
    "GroupResult",
    "GroupTask",
    "fit_group_task",
    "fit_groups",
    "make_group_task",
    "make_groups",
    "run_fit",
    "source_extent",
]

log = logging.getLogger(__name__)

SAFE_OPTIMIZE_OPTS = {"strategy": 2}
"""Minuit options of the retry (safer settings; the shape parameters stay frozen)."""

POSITION_STEP = 0.1 * u.deg
"""Largest start step of minuit on a free ``lon_0`` / ``lat_0``.

minuit's start step on a parameter is its error, or one autoscale unit when it
has none: 100 deg for a longitude of 356.7 deg, 1 deg for 3.3 deg. The first
gradient then moves the source out of its cutout and the fit fails without
moving ("estimated distance to minimum too large"). Larger steps are cut to
this one; smaller ones (sources within 1 deg of the origin) are left as they
are."""


# --------------------------------------------------------------------- groups


def source_extent(spatial_model):
    """Containment-like radius of a spatial model (about 86% for a Gaussian).

    Rule: ``2 sigma`` for Gaussians; ``r_0 (1 + 0.8 eta)`` for generalized
    Gaussians (``1.4 r_0`` = 2 sigma at eta = 0.5); ``radius + width`` for
    shells; ``r_0`` for disks; otherwise ``evaluation_radius / 2.5`` (0 for
    point sources).

    Parameters
    ----------
    spatial_model : `~gammapy.modeling.models.SpatialModel`
        Spatial model.

    Returns
    -------
    radius : `~astropy.coordinates.Angle`
    """
    pars = spatial_model.parameters
    names = set(pars.names)
    if "sigma" in names:
        return Angle(2 * pars["sigma"].quantity)
    if {"r_0", "eta"} <= names:
        return Angle(pars["r_0"].quantity * (1 + 0.8 * pars["eta"].value))
    if {"radius", "width"} <= names:
        return Angle(pars["radius"].quantity + pars["width"].quantity)
    if "r_0" in names:
        return Angle(pars["r_0"].quantity)
    radius = spatial_model.evaluation_radius
    return Angle(0 * u.deg if radius is None else radius / 2.5)


@dataclass(frozen=True)
class Group:
    """A group of overlapping sources fitted together.

    Attributes
    ----------
    index : int
        Position of the group in the list.
    names : tuple of str
        Names of the member sky models.
    main : str
        Name of the brightest member (its shape parameters are released).
    center : `~astropy.coordinates.SkyCoord`
        Centre of the cutout (galactic).
    width : `~astropy.coordinates.Angle`
        Width of the square cutout: the members' extents plus a margin.
    """

    index: int
    names: tuple
    main: str
    center: SkyCoord
    width: Angle

    @property
    def key(self):
        """Stable identifier of the group (hash of its member names)."""
        return hashlib.sha1("\n".join(sorted(self.names)).encode()).hexdigest()[:16]

    @property
    def region(self):
        """`~regions.RectangleSkyRegion` of the cutout."""
        return RectangleSkyRegion(center=self.center, width=self.width, height=self.width)


def _group_sources(models):
    """Sky models with a spatial model that is not a template (backgrounds, diffuse skipped)."""
    return [
        model
        for model in models
        if isinstance(model, SkyModel)
        and model.spatial_model is not None
        and not isinstance(model.spatial_model, TemplateSpatialModel)
    ]


def _overlap_graph(positions, radii):
    """Edges (i, j, weight) of the sources whose extents overlap.

    The weight is the overlap relative to the summed radii, in (0, 1]:
    ``(r_i + r_j - d_ij) / (r_i + r_j)``.
    """
    n = len(radii)
    sep = positions[:, None].separation(positions[None, :]).deg
    reach = radii[:, None] + radii[None, :]
    with np.errstate(divide="ignore", invalid="ignore"):
        weight = np.where(reach > 0, (reach - sep) / reach, 0.0)
    i, j = np.nonzero(np.triu(weight > 0, k=1))
    return i, j, weight[i, j], n


def _components(n, i, j):
    graph = coo_matrix((np.ones(len(i)), (i, j)), shape=(n, n))
    return connected_components(graph, directed=False)[1]


def _split(members, edges, max_size):
    """Split a component by cutting its weakest edges until no part exceeds ``max_size``.

    Edges are removed one at a time, weakest first (ties: the later pair in
    source order first); after each cut the connected components are
    recomputed and only the parts still too large are cut further.
    """
    if len(members) <= max_size:
        return [members]
    local = {m: k for k, m in enumerate(members)}
    inside = [(local[a], local[b], w) for a, b, w in edges if a in local and b in local]
    inside.sort(key=lambda e: (e[2], -e[0], -e[1]))
    while inside:
        inside.pop(0)
        labels = _components(len(members), [e[0] for e in inside], [e[1] for e in inside])
        if labels.max() > 0:
            parts = [[m for m, lab in zip(members, labels) if lab == k] for k in range(labels.max() + 1)]
            return [piece for part in parts for piece in _split(part, edges, max_size)]
    return [[m] for m in members]


def _group_geometry(positions, radii, margin):
    """Centre (mean direction) and width of a square covering members plus margin."""
    cart = positions.cartesian.xyz.value
    mean = cart.mean(axis=1)
    center = SkyCoord(*mean, representation_type="cartesian", frame=positions.frame)
    center = SkyCoord(center.spherical.lon, center.spherical.lat, frame=positions.frame)
    half = np.max(center.separation(positions).deg + radii)
    return center, Angle(2 * (half + margin), "deg")


def make_groups(models, psf_radius="0.1 deg", max_size=5, margin="0.3 deg"):
    """Groups of sky models whose extents overlap.

    Each source's extent is `source_extent` combined in quadrature with
    ``psf_radius``; two sources overlap when their separation is smaller than the
    sum of their extents, with the weight ``(r_i + r_j - d) / (r_i + r_j)``. The
    connected components of that graph are the groups. A group with more than
    ``max_size`` members is split by removing its weakest edges one by one
    (weakest first) until every part has at most ``max_size`` members.
    Background models and template (diffuse) sky models are not grouped.

    Parameters
    ----------
    models : `~gammapy.modeling.models.Models` or list of models
        All models.
    psf_radius : `~astropy.coordinates.Angle` or str, optional
        PSF containment radius combined with each source size. Default 0.1 deg.
    max_size : int, optional
        Largest number of sources in a group. Default 5.
    margin : `~astropy.coordinates.Angle` or str, optional
        Margin around the members' extents in the cutout. Default 0.3 deg.

    Returns
    -------
    groups : list of `Group`
        Ordered by the first member's position in ``models``.
    """
    if int(max_size) < 1:
        raise InputError(f"make_groups: max_size must be >= 1, got {max_size}")
    sources = _group_sources(list(models))
    if not sources:
        return []
    psf = Angle(psf_radius).deg
    radii = np.array([np.hypot(source_extent(m.spatial_model).deg, psf) for m in sources])
    positions = SkyCoord([m.position.galactic for m in sources])
    i, j, weight, n = _overlap_graph(positions, radii)
    labels = _components(n, i, j)
    edges = list(zip(i.tolist(), j.tolist(), weight.tolist()))
    parts = []
    for label in range(labels.max() + 1):
        members = [k for k in range(n) if labels[k] == label]
        parts.extend(_split(members, edges, int(max_size)))
    parts.sort(key=min)
    groups = []
    for index, part in enumerate(parts):
        members = [sources[k] for k in part]
        center, width = _group_geometry(positions[part], radii[part], Angle(margin).deg)
        main = main_source(members).name
        groups.append(Group(index, tuple(m.name for m in members), main, center, width))
    log.info("%d sources in %d groups (largest %d)", n, len(groups), max(len(g.names) for g in groups))
    return groups


# ---------------------------------------------------------------- tasks


@dataclass
class GroupTask:
    """What a worker needs to fit one group: cutouts of the datasets and the models they need.

    The cutouts are made where the task is built (map slices, cheap); the
    expensive part, the npred of the sources outside the group, is computed by
    `make_datasets` in the worker.

    Attributes
    ----------
    group : `Group`
    iteration : int
    cutouts : list of `~gammapy.datasets.MapDataset`
        Cutouts (same names as the full datasets) of the datasets the group
        overlaps, without models.
    members : list of `~gammapy.modeling.models.SkyModel`
        The group's models, copied by `make_datasets` (the fit changes the copies).
    backgrounds : dict
        ``{dataset name: [models]}``: the background models of each cutout
        (npred templates cut out as the dataset).
    outer : dict
        ``{dataset name: [models]}``: the sources outside the group that may add
        counts to each cutout (and diffuse models).
    fit_function : callable
        ``fit_function(datasets, optimize_opts)`` returning a gammapy ``FitResult``.
    release : bool
        Release the main source's shape parameters (first attempt only).
    safe : bool
        Start directly with the safe settings (after a worker died on this group).
    """

    group: Group
    iteration: int
    cutouts: list
    members: list
    backgrounds: dict
    outer: dict
    fit_function: object
    release: bool = True
    safe: bool = False

    def make_datasets(self):
        """The cutouts with their models, ready to fit.

        Each cutout gets copies of the group's members (one copy shared by all
        cutouts), its backgrounds and, when sources outside the group reach it,
        their npred as one frozen `~gammapy.modeling.models.TemplateNPredModel`
        named ``<dataset>-outer-sources``. Each call makes new copies of the
        members.

        Returns
        -------
        datasets : `~gammapy.datasets.Datasets`
        """
        datasets = Datasets()
        copies = [_copy_model(m) for m in self.members]
        for cutout in self.cutouts:
            name = cutout.name
            outer = self.outer[name]
            templates = [_outer_template(cutout, outer)] if outer else []
            members = [m for m in copies if _applies(m, name)]
            cutout.models = Models([*members, *self.backgrounds[name], *templates])
            datasets.append(cutout)
        return datasets


@dataclass
class GroupResult:
    """Result of one group fit (JSON-serialisable through `to_dict`).

    Attributes
    ----------
    index, key : int, str
        The group's `Group.index` and `Group.key`.
    iteration : int
    names : tuple of str
        Member sources.
    main : str
        Main source.
    success : bool
        Whether a fit attempt converged.
    stat : float
        Total fit statistic of the cutouts (NaN when every attempt raised).
    n_free : int
        Number of free parameters of the last attempt.
    time : float
        Wall time of the attempts in the worker (s).
    attempts : int
        Fit attempts, including one whose worker died.
    message : str
        What went wrong in each failed attempt; empty after a clean first fit.
    parameters : dict
        ``{model name: {parameter name: [value, error]}}``; empty on failure.
    """

    index: int
    key: str
    iteration: int
    names: tuple
    main: str
    success: bool
    stat: float
    n_free: int
    time: float
    attempts: int
    message: str
    parameters: dict = field(default_factory=dict)

    def to_dict(self):
        """Plain dictionary (JSON types) of the result."""
        data = asdict(self)
        data["names"] = list(self.names)
        return data

    @classmethod
    def from_dict(cls, data):
        """Result from a dictionary written by `to_dict`."""
        data = dict(data)
        data["names"] = tuple(data["names"])
        return cls(**data)


def _copy_model(model):
    return model.copy(name=model.name)


def _outer_models(models, group, reach):
    """Models outside the group that may add counts to its cutout."""
    outer = []
    for model in models:
        if not isinstance(model, SkyModel) or model.name in group.names:
            continue
        spatial = model.spatial_model
        if spatial is None or isinstance(spatial, TemplateSpatialModel):
            outer.append(model)
            continue
        radius = spatial.evaluation_radius
        radius = 0 if radius is None else radius.to_value("deg")
        if group.center.separation(model.position).deg < reach + radius:
            outer.append(model)
    return outer


def _cut_background(model, group):
    """Copy of a background model; npred templates get their map cut out as the datasets."""
    if not isinstance(model, TemplateNPredModel):
        return _copy_model(model)
    npred = model.map.cutout(position=group.center, width=group.width, mode="trim")
    return TemplateNPredModel(npred, spectral_model=model.spectral_model.copy(), name=model.name,
                              datasets_names=model.datasets_names)


def _outer_template(cutout, outer):
    """Frozen npred template of the outer sources on a cutout."""
    cutout.models = Models(outer)
    npred = npred_signal(cutout, model_names=[m.name for m in outer])
    template = TemplateNPredModel(npred, name=f"{cutout.name}-outer-sources", datasets_names=[cutout.name])
    template.spectral_model.norm.frozen = True
    return template


def make_group_task(datasets, models, group, iteration=0, fit_function=None, release=True):
    """Build the `GroupTask` of a group: cutouts of every dataset and the models they need.

    Only map slices and model selections are done here; the outer sources'
    npred is computed where the task runs (`GroupTask.make_datasets`).

    Parameters
    ----------
    datasets : `~gammapy.datasets.Datasets`
        Full datasets (MapDataset).
    models : `~gammapy.modeling.models.Models`
        All models (sources, backgrounds, diffuse).
    group : `Group`
    iteration : int, optional
    fit_function : callable, optional
        ``fit_function(datasets, optimize_opts)``; default `run_fit`.
    release : bool, optional
        Release the main source's shape parameters in the fit. Default True.

    Returns
    -------
    task : `GroupTask`
    """
    members = [models[name] for name in group.names]
    around = _outer_models(models, group, reach=group.width.deg / np.sqrt(2) + 1.0)
    cutouts, backgrounds, outer = [], {}, {}
    for dataset in datasets:
        try:
            cutout = dataset.cutout(position=group.center, width=group.width, mode="trim", name=dataset.name)
        except NoOverlapError:
            log.debug("group %d does not overlap dataset %s", group.index, dataset.name)
            continue
        cutouts.append(cutout)
        backgrounds[dataset.name] = [
            _cut_background(m, group) for m in models if not isinstance(m, SkyModel) and _applies(m, dataset.name)
        ]
        outer[dataset.name] = [m for m in around if _applies(m, dataset.name)]
    if not cutouts:
        raise InputError(f"group {group.index} {list(group.names)}: its cutout is outside every dataset")
    return GroupTask(group, iteration, cutouts, members, backgrounds, outer, fit_function or run_fit, release)


# ---------------------------------------------------------------- worker


def run_fit(datasets, optimize_opts=None):
    """Default fit of a group: gammapy ``Fit`` (minuit) with the fast IRF kernels.

    Parameters
    ----------
    datasets : `~gammapy.datasets.Datasets`
    optimize_opts : dict, optional
        Minuit options.

    Returns
    -------
    result : `~gammapy.modeling.FitResult`
    """
    with fast_irfs(datasets):
        return Fit(optimize_opts=optimize_opts or {}).run(datasets)


def _prepare(task, datasets, safe):
    """Freeze everything but the group's own free parameters; release the main shape."""
    models = datasets.models
    for model in models:
        if model.name not in task.group.names:
            for par in model.parameters:
                par.frozen = True
    main = models[task.group.main]
    shape = [p for p in main.spatial_model.parameters if p.name in SHAPE_PARAMETERS]
    if safe:
        for par in shape:
            par.frozen = True
    elif shape and task.release:
        release_shape(main)
    _set_position_steps(models, task.group.names)
    return len(models.parameters.free_parameters.unique_parameters)


def _set_position_steps(models, names):
    """Cut the start steps of the members' free positions to `POSITION_STEP` (through their error)."""
    largest = POSITION_STEP.to_value("deg")
    for name in names:
        for par in models[name].parameters.free_parameters:
            if par.name not in ("lon_0", "lat_0"):
                continue
            if np.isfinite(par.error) and par.error > 0:
                step = u.Quantity(par.error, par.unit).to_value("deg")
            else:
                probe = par.copy()
                probe.autoscale()
                step = u.Quantity(probe.scale, par.unit).to_value("deg")
            if step > largest:
                par.error = POSITION_STEP.to_value(par.unit)


def _fitted_parameters(task, datasets):
    models = datasets.models
    return {
        name: {p.name: [float(p.value), float(p.error)] for p in models[name].parameters}
        for name in task.group.names
        if name in models.names
    }


def _attempt(task, datasets, safe):
    """One fit attempt: (success, stat, n_free, message)."""
    n_free = _prepare(task, datasets, safe)
    result = task.fit_function(datasets, SAFE_OPTIMIZE_OPTS if safe else None)
    message = "" if result.success else f"not converged: {result.message}"
    return bool(result.success), float(result.total_stat), n_free, message


def _result(task, start, success=False, stat=float("nan"), n_free=0, attempts=1, message="", parameters=None):
    group = task.group
    return GroupResult(group.index, group.key, task.iteration, group.names, group.main, success, stat, n_free,
                       time.perf_counter() - start, attempts, message, parameters or {})


class _ExpectedOuterSourceWarnings(logging.Filter):
    """Drops gammapy's warnings about sources outside a cutout: caching their npred there is the intent."""

    MESSAGES = ("outside valid IRF map range", "is outside the target geom but contributes inside")
    LOGGERS = ("gammapy.irf.core", "gammapy.datasets.evaluator")

    def filter(self, record):
        return not any(text in record.getMessage() for text in self.MESSAGES)


@contextlib.contextmanager
def _quiet_outer_sources():
    """`_ExpectedOuterSourceWarnings` on gammapy's loggers inside the block (in whichever process runs it)."""
    quiet = _ExpectedOuterSourceWarnings()
    for name in quiet.LOGGERS:
        logging.getLogger(name).addFilter(quiet)
    try:
        yield
    finally:
        for name in quiet.LOGGERS:
            logging.getLogger(name).removeFilter(quiet)


def fit_group_task(task):
    """Fit one group (in a worker): a first attempt, then one retry with safe settings.

    The cutouts' models are set up first (`GroupTask.make_datasets`: the outer
    sources' npred is computed here); a failure there is reported without a
    retry. Start steps of free positions are cut to `POSITION_STEP`. The retry
    (shape parameters frozen, minuit ``strategy=2``, start values and errors
    restored) follows a fit that raised or did not converge. Exceptions are
    caught and reported in the result. gammapy's warnings that a source lies
    outside the cutout's IRF maps or geometry are dropped (the outer sources
    are there on purpose).

    Parameters
    ----------
    task : `GroupTask`

    Returns
    -------
    result : `GroupResult`
    """
    with _quiet_outer_sources():
        return _fit_task(task)


def _fit_task(task):
    start = time.perf_counter()
    try:
        datasets = task.make_datasets()
    except Exception as exc:  # noqa: BLE001  reported, not raised: the other groups go on
        return _result(task, start, message=f"cutout models: {type(exc).__name__}: {exc}")
    saved = [(p, p.value, p.error, p.frozen) for p in datasets.models.parameters]
    messages, attempts = [], 0
    success, stat, n_free = False, float("nan"), 0
    for safe in ([True] if task.safe else [False, True]):
        attempts += 1
        for par, value, error, was_frozen in saved:
            par.value, par.error, par.frozen = value, error, was_frozen
        try:
            success, stat, n_free, message = _attempt(task, datasets, safe)
        except Exception as exc:  # noqa: BLE001  any failure of a fit is reported, not raised
            success, message = False, f"{type(exc).__name__}: {exc}"
        if message:
            messages.append(f"attempt {attempts}{' (safe)' if safe else ''}: {message}")
        if success:
            break
    parameters = _fitted_parameters(task, datasets) if success else {}
    return _result(task, start, success, stat, n_free, attempts, "; ".join(messages), parameters)


# ---------------------------------------------------------------- checkpoint


def _update_with_array(digest, array):
    array = np.ascontiguousarray(array)
    digest.update(f"{array.dtype.str}{array.shape}".encode())
    digest.update(array.data)


def _dataset_arrays(dataset):
    maps = [dataset.counts, dataset.exposure, dataset.background, dataset.mask_safe, dataset.mask_fit,
            getattr(dataset.psf, "psf_map", None), getattr(dataset.edisp, "edisp_map", None)]
    return [m.data for m in maps if m is not None]


def _tag(component):
    tag = getattr(component, "tag", "")
    return tag[0] if isinstance(tag, (list, tuple)) else str(tag)


def _inputs_fingerprint(datasets, models, release):
    """Digest of what the group fits depend on: the datasets' content and geometry, the starting models.

    Parameters
    ----------
    datasets : `~gammapy.datasets.Datasets`
        Counts, exposure, background, masks, PSF and energy dispersion maps, and
        each map geometry's WCS, are hashed.
    models : `~gammapy.modeling.models.Models`
        Each model's name, component types and every parameter's value, unit,
        bounds and frozen flag are hashed.
    release : bool
        Release of the main source's shape.

    Returns
    -------
    digest : str
        32 hex digits.
    """
    digest = hashlib.blake2b(digest_size=16)
    for dataset in datasets:
        geom = dataset.counts.geom
        wcs = geom.wcs.to_header_string() if hasattr(geom, "wcs") else repr(geom)
        digest.update(f"{dataset.name}|{wcs}|{list(geom.axes.names)}".encode())
        for array in _dataset_arrays(dataset):
            _update_with_array(digest, array)
    for model in models:
        parts = [model.name, type(model).__name__]
        parts += [_tag(getattr(model, name, None)) for name in ("spatial_model", "spectral_model", "temporal_model")]
        parts += [(p.name, p.value, str(p.unit), p.min, p.max, p.frozen) for p in model.parameters]
        digest.update(repr(parts).encode())
    digest.update(repr(bool(release)).encode())
    return digest.hexdigest()


class _Checkpoint:
    """Results of finished groups, one JSON file each, written atomically (file mode as ``open`` gives).

    ``groups.json`` records the groups and the `_inputs_fingerprint` of the run that
    wrote the folder: results are only resumed by a run with the same of both.
    """

    def __init__(self, path, groups, fingerprint):
        self.path = Path(path).expanduser()
        self.path.mkdir(parents=True, exist_ok=True)
        meta = self.path / "groups.json"
        expected = {"groups": [list(g.names) for g in groups], "inputs": fingerprint}
        if meta.is_file():
            if json.loads(meta.read_text()) != expected:
                raise InputError(f"checkpoint {self.path} was written for other groups or other inputs (datasets, "
                                 "starting models); use an empty folder")
        else:
            self._write(meta, expected)

    @staticmethod
    def _write(path, data):
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        try:
            os.fchmod(fd, file_mode())
            with os.fdopen(fd, "w") as stream:
                json.dump(data, stream)
                stream.flush()
                os.fsync(stream.fileno())
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def _file(self, iteration, key):
        return self.path / f"iter{iteration:03d}-{key}.json"

    def save(self, result):
        self._write(self._file(result.iteration, result.key), result.to_dict())

    def load(self, iteration, groups):
        done = {}
        for group in groups:
            path = self._file(iteration, group.key)
            if path.is_file():
                done[group.key] = GroupResult.from_dict(json.loads(path.read_text()))
        return done


# ---------------------------------------------------------------- execution


def _uses_dask(backend, client):
    return client is not None or backend == "dask"


def _in_process(n_jobs, backend, client):
    return n_jobs == 1 and not _uses_dask(backend, client)


def _dask_client(client):
    """The given client, or the current dask.distributed client."""
    if client is not None:
        return client
    try:
        import distributed
    except ImportError:
        raise InputError("fit_groups: backend='dask' needs dask.distributed (pip install 'dask[distributed]')") from None
    try:
        return distributed.get_client()
    except ValueError:
        raise InputError("fit_groups: backend='dask' needs a running distributed.Client, or pass client=") from None


def _run_on_dask(tasks, client):
    """Submit every task to the cluster; yield results as they complete.

    dask re-runs a task whose worker died on another worker; a task that keeps
    killing workers ends with ``KilledWorker`` and gives a "worker died" result,
    without affecting the other tasks.
    """
    import distributed

    client = _dask_client(client)
    futures = {client.submit(fit_group_task, task, pure=False): task for task in tasks}
    for future in distributed.as_completed(list(futures)):
        try:
            yield future.result()
        except Exception as exc:  # noqa: BLE001  KilledWorker and other cluster errors
            yield _died(futures[future], exc)


def _run_tasks(tasks, n_jobs, backend, client):
    """Yield results of tasks; a dead loky worker raises from the pool (not from a fit)."""
    if _in_process(n_jobs, backend, client):
        for task in tasks:
            yield fit_group_task(task)
        return
    if _uses_dask(backend, client):
        yield from _run_on_dask(tasks, client)
        return
    parallel = joblib.Parallel(n_jobs=n_jobs, backend=backend, return_as="generator_unordered")
    yield from parallel(joblib.delayed(fit_group_task)(task) for task in tasks)


def _died(task, exc):
    """Failed result of a task whose worker process died."""
    group = task.group
    return GroupResult(group.index, group.key, task.iteration, group.names, group.main, False, float("nan"), 0,
                       0.0, 1, f"worker died: {type(exc).__name__}: {exc}")


def _needs_retry(result):
    """A first attempt lost with its worker: retried once with safe settings."""
    return result.message.startswith("worker died") and result.attempts == 1


def _isolated(task, backend, client):
    """Run one task alone in a worker process; a failed result if the worker dies."""
    try:
        (result,) = _run_tasks([task], 2, backend, client)
        return result
    except Exception as exc:  # noqa: BLE001  pool errors: the worker died
        return _died(task, exc)


def _retry_safe(task, first, backend, client):
    """Re-run, alone and with safe settings, a group whose worker died."""
    log.warning("group %d %s: %s; retrying with safe settings", task.group.index, task.group.names, first.message)
    task.safe = True
    retry = _isolated(task, backend, client)
    retry.attempts += first.attempts
    retry.message = "; ".join(filter(None, [f"attempt 1: {first.message}", retry.message]))
    return retry


def _cost(group):
    """Rough cost of a group fit, for the dispatch order: (number of members)^2 x cutout area."""
    return len(group.names) ** 2 * group.width.deg**2


def _run_iteration(datasets, models, groups, iteration, options, store):
    """Fit every group once (from the same starting models); results by group key."""
    results = store.load(iteration, groups) if store else {}
    if results:
        log.info("iteration %d: %d groups resumed from the checkpoint", iteration, len(results))
    # costliest groups first: the long fits do not end up alone at the tail of the pool
    pending = sorted((g for g in groups if g.key not in results), key=lambda g: (-_cost(g), g.index))
    backend, client = options["backend"], options["client"]
    tasks = {}

    def task_of(group):
        if group.key not in tasks:
            tasks[group.key] = make_group_task(
                datasets, models, group, iteration, options["fit_function"], options["release"]
            )
        return tasks[group.key]

    def record(result):
        results[result.key] = result
        if _needs_retry(result):
            return
        tasks.pop(result.key, None)  # its cutouts are not needed any more
        if store:
            store.save(result)

    bar = progress_bar(None, desc=f"group fits (iteration {iteration})", show=options["progress"],
                       total=len(pending))
    try:
        for result in _run_tasks((task_of(g) for g in pending), options["n_jobs"], backend, client):
            record(result)
            bar.update()
    except Exception as exc:  # a worker died: the unfinished groups are re-run alone
        if isinstance(exc, GpsfastError) or _in_process(options["n_jobs"], backend, client):
            raise
        log.warning("iteration %d: worker pool failed (%s: %s)", iteration, type(exc).__name__, exc)
        for group in pending:
            if group.key not in results:
                record(_isolated(task_of(group), backend, client))
                bar.update()
    finally:
        bar.close()
    for group in pending:
        if _needs_retry(results[group.key]):
            record(_retry_safe(task_of(group), results[group.key], backend, client))
    return results


def _merge(models, results):
    """Copy fitted values and errors into the global models; largest shift in sigma."""
    shift = 0.0
    for result in results:
        for name, pars in result.parameters.items():
            model = models[name]
            for par_name, (value, error) in pars.items():
                par = model.parameters[par_name]
                if not par.frozen or par_name in SHAPE_PARAMETERS:
                    scale = error if error > 0 else max(abs(par.value), 1e-30)
                    shift = max(shift, abs(value - par.value) / scale)
                par.value, par.error = value, error
    return shift


def _table(results):
    rows = [
        (r.iteration, r.index, ",".join(r.names), r.main, r.success, r.stat, r.n_free, r.time, r.attempts,
         r.message)
        for r in results
    ]
    names = ["iteration", "group", "sources", "main", "success", "stat", "n_free", "time", "attempts", "message"]
    dtype = [int, int, str, str, bool, float, int, float, int, str]
    table = Table(rows=rows, names=names, dtype=dtype) if rows else Table(names=names, dtype=dtype)
    table["time"].unit = "s"
    return table


def _check_inputs(datasets, models, n_jobs, backend, max_iterations):
    if isinstance(datasets, MapDataset):
        datasets = Datasets([datasets])
    bad = [d.name for d in datasets if not isinstance(d, MapDataset)]
    if bad:
        raise InputError(f"fit_groups: every dataset must be a MapDataset, not {bad}")
    if backend not in ("loky", "multiprocessing", "threading", "dask"):
        raise InputError(f"fit_groups: unknown backend {backend!r}; use loky, dask, multiprocessing or threading")
    if int(max_iterations) < 1 or (n_jobs is not None and int(n_jobs) == 0):
        raise InputError(f"fit_groups: need max_iterations >= 1 and n_jobs != 0, got {max_iterations}, {n_jobs}")
    models = models if isinstance(models, Models) else Models(models)
    return Datasets(datasets), models


def fit_groups(
    datasets,
    models,
    groups=None,
    n_jobs=1,
    backend="loky",
    client=None,
    checkpoint=None,
    max_iterations=1,
    tolerance=0.1,
    progress=False,
    fit_function=None,
    release=True,
    **group_options,
):
    """Fit sources by groups of overlapping sources and merge the results.

    Each group is fitted with gammapy's ``Fit`` on cutouts of all datasets (fitted
    jointly), its members free as in ``models`` and its main source's shape
    parameters released; the other sources are cached as one npred template per
    cutout, backgrounds are frozen. All groups of an iteration start from the
    same models; their fitted values and errors are then copied into ``models``
    (in place). Iterations stop when no parameter moved by more than
    ``tolerance`` times its error, or after ``max_iterations``.

    The parent process only cuts the datasets out and dispatches; each worker
    computes its cutouts' outer-source npred template and fits. Groups are
    dispatched costliest first (members squared times cutout area), so that a
    long fit does not end up alone at the tail of the pool. Pool workers are
    reused across iterations and calls (joblib's reusable loky executor).

    A fit that raises or does not converge is retried once with safe settings
    (shape parameters frozen, minuit ``strategy=2``). When a worker process
    dies, the finished results are kept and the unfinished groups are re-run
    one at a time in a fresh worker; the group whose worker dies again is
    retried once with safe settings, then reported failed. In-process runs
    (``n_jobs=1`` without dask) cannot survive a crash of the process itself:
    use ``checkpoint`` to resume.

    Parameters
    ----------
    datasets : `~gammapy.datasets.Datasets`
        Full MapDatasets (e.g. SubTeV and PosTeV).
    models : `~gammapy.modeling.models.Models`
        All models; updated in place.
    groups : list of `Group`, optional
        Default: ``make_groups(models, **group_options)``.
    n_jobs : int, optional
        Worker processes (loky); 1 runs in-process. Default 1.
    backend : {"loky", "dask", "multiprocessing", "threading"}, optional
        joblib backend, or "dask" for the current dask.distributed client.
        Default "loky".
    client : `distributed.Client`, optional
        Run on this dask cluster: one future per group (``client.submit``),
        results collected as they complete.
    checkpoint : str or `~pathlib.Path`, optional
        Folder where each finished group's result is written as it completes; a
        re-run with the same folder, groups and inputs (a digest of the
        datasets, the starting models and ``release``) resumes without refitting
        them; with other inputs it raises `~gpsfast.errors.InputError`. The fit
        function is not part of the fingerprint.
    max_iterations : int, optional
        Default 1.
    tolerance : float, optional
        Convergence: largest parameter change in units of its error. Default 0.1.
    progress : bool, optional
        Show a progress bar.
    fit_function : callable, optional
        ``fit_function(datasets, optimize_opts)`` returning a gammapy ``FitResult``;
        default `run_fit`. It must be picklable by reference for worker pools.
    release : bool, optional
        Release the main source's shape parameters (``r_0``, ``eta``, ``e``,
        ``phi`` where it has them). Default True.
    **group_options
        ``psf_radius``, ``max_size``, ``margin`` of `make_groups`.

    Returns
    -------
    table : `~astropy.table.Table`
        One row per group and iteration: iteration, group, sources, main,
        success, stat, n_free, time (s), attempts, message. ``table.meta`` holds
        ``iterations`` and ``converged``.
    """
    datasets, models = _check_inputs(datasets, models, n_jobs, backend, max_iterations)
    groups = make_groups(models, **group_options) if groups is None else list(groups)
    store = None
    if checkpoint is not None:
        store = _Checkpoint(checkpoint, groups, _inputs_fingerprint(datasets, models, release))
    options = {"n_jobs": n_jobs, "backend": backend, "client": client, "progress": progress,
               "fit_function": fit_function or run_fit, "release": release}
    rows, converged, iteration = [], False, 0
    for iteration in range(int(max_iterations)):
        results = _run_iteration(datasets, models, groups, iteration, options, store)
        ordered = [results[g.key] for g in groups]
        shift = _merge(models, [r for r in ordered if r.success])
        rows.extend(ordered)
        failed = sum(not r.success for r in ordered)
        log.info("iteration %d: %d groups, %d failed, largest shift %.3g sigma", iteration, len(groups),
                 failed, shift)
        if shift < tolerance:
            converged = True
            break
    table = _table(rows)
    table.meta.update(iterations=iteration + 1, converged=converged)
    return table
