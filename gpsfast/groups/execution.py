"""Running the group tasks of an iteration in-process, in a joblib pool or on dask, surviving dead workers."""
import logging

import joblib

from ..errors import GpsfastError, InputError
from ..utils import progress_bar
from .tasks import GroupResult, make_group_task
from .worker import fit_group_task

__all__ = ["run_iteration"]

log = logging.getLogger("gpsfast.groups")


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


def run_iteration(datasets, models, groups, iteration, options, store):
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
