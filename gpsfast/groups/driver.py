"""`fit_groups`: every group fitted on its cutouts, the results merged into the models, iterated until they settle."""
import logging

from astropy.table import Table
from gammapy.datasets import Datasets, MapDataset
from gammapy.modeling.models import Models

from ..errors import InputError
from ..modeling import SHAPE_PARAMETERS
from .checkpoint import Checkpoint, inputs_fingerprint
from .execution import dask_client, run_iteration
from .grouping import make_groups
from .tasks import run_fit

__all__ = ["fit_groups"]

log = logging.getLogger("gpsfast.groups")


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
        store = Checkpoint(checkpoint, groups, inputs_fingerprint(datasets, models, release))
    options = {"n_jobs": n_jobs, "backend": backend, "client": dask_client(backend, client), "progress": progress,
               "fit_function": fit_function or run_fit, "release": release}
    rows, converged, iteration = [], False, 0
    for iteration in range(int(max_iterations)):
        results = run_iteration(datasets, models, groups, iteration, options, store)
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
