"""Running the group tasks of an iteration in-process, in a joblib pool or on dask, surviving dead workers.

The dispatch, the pool failures and the dead workers are `gpsfast.parallel`'s;
here a group whose worker died is retried once, alone and with safe settings.
"""
import logging

from ..errors import InputError
from ..parallel import WorkerDied, run_alone, run_tasks
from ..utils import progress_bar
from .tasks import GroupResult, make_group_task
from .worker import fit_group_task

__all__ = ["dask_client", "run_iteration"]

log = logging.getLogger("gpsfast.groups")


def dask_client(backend, client):
    """The dask client the group fits run on: ``client``, the current one for ``backend="dask"``, else None."""
    if client is not None or backend != "dask":
        return client
    try:
        import distributed
    except ImportError:
        raise InputError("fit_groups: backend='dask' needs dask.distributed (pip install 'dask[distributed]')") from None
    try:
        return distributed.get_client()
    except ValueError:
        raise InputError("fit_groups: backend='dask' needs a running distributed.Client, or pass client=") from None


def _died(task, exc):
    """Failed result of a task whose worker process died."""
    group = task.group
    return GroupResult(group.index, group.key, task.iteration, group.names, group.main, False, float("nan"), 0,
                       0.0, 1, WorkerDied(exc).message)


def _needs_retry(result):
    """A first attempt lost with its worker: retried once with safe settings."""
    return result.message.startswith("worker died") and result.attempts == 1


def _retry_safe(task, first, backend, client):
    """Re-run, alone and with safe settings, a group whose worker died."""
    log.warning("group %d %s: %s; retrying with safe settings", task.group.index, task.group.names, first.message)
    task.safe = True
    outcome = run_alone(fit_group_task, task, backend, client)
    retry = _died(task, outcome.error) if isinstance(outcome, WorkerDied) else outcome
    retry.attempts += first.attempts
    retry.message = "; ".join(filter(None, [f"attempt 1: {first.message}", retry.message]))
    return retry


def _cost(group):
    """Rough cost of a group fit, for the dispatch order: (number of members)^2 x cutout area."""
    return len(group.names) ** 2 * group.width.deg**2


def run_iteration(datasets, models, groups, iteration, options, store):
    """Fit every group once (from the same starting models); results by group key."""
    results = store.load(iteration, groups) if store else {}
    if results:
        log.info("iteration %d: %d groups resumed from the checkpoint", iteration, len(results))
    # costliest groups first: the long fits do not end up alone at the tail of the pool
    pending = sorted((g for g in groups if g.key not in results), key=lambda g: (-_cost(g), g.index))
    backend, client = options["backend"], options["client"]
    by_key = {group.key: group for group in pending}
    tasks = {}

    def task_of(key):
        if key not in tasks:
            tasks[key] = make_group_task(
                datasets, models, by_key[key], iteration, options["fit_function"], options["release"]
            )
        return tasks[key]

    def record(result):
        results[result.key] = result
        if _needs_retry(result):
            return
        tasks.pop(result.key, None)  # its cutouts are not needed any more
        if store:
            store.save(result)

    def pool_failed(exc, n_unfinished, last):
        log.warning("iteration %d: worker pool failed (%s: %s); %d unfinished groups run alone", iteration,
                    type(exc).__name__, exc, n_unfinished)

    bar = progress_bar(None, desc=f"group fits (iteration {iteration})", show=options["progress"],
                       total=len(pending))
    try:
        for key, outcome in run_tasks(fit_group_task, by_key, task_of, options["n_jobs"], backend, client,
                                      on_pool_failure=pool_failed):
            record(_died(task_of(key), outcome.error) if isinstance(outcome, WorkerDied) else outcome)
            bar.update()
    finally:
        bar.close()
    for group in pending:
        if _needs_retry(results[group.key]):
            record(_retry_safe(task_of(group.key), results[group.key], backend, client))
    return results
