"""Fitting one group in a worker: a first attempt, one retry with safe settings, failures reported, not raised."""
import contextlib
import logging
import time

import astropy.units as u
import numpy as np

from ..modeling import SHAPE_PARAMETERS, release_shape
from .tasks import GroupResult

__all__ = ["POSITION_STEP", "SAFE_OPTIMIZE_OPTS", "fit_group_task"]

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
