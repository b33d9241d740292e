"""Fits by groups of overlapping sources, in process pools and on dask clusters.

- `make_groups`: the sky models whose extents (source size combined with the
  PSF radius) overlap form a graph, weighted by the overlap; its connected
  components are the groups, and a group larger than ``max_size`` is split by
  cutting its weakest edges (`gpsfast.groups.grouping`);
- `fit_groups`: each group is fitted with gammapy's ``Fit`` on cutouts of the
  datasets (SubTeV and PosTeV jointly), the other sources cached as one npred
  template per cutout, the main source's shape released; the results are merged
  back into the global models, iterating until the parameters settle
  (`gpsfast.groups.driver`). Groups run in-process, in a joblib ``loky`` process
  pool or on a dask.distributed cluster (one future per group), with retries,
  worker-death recovery (`gpsfast.groups.execution`) and an on-disk checkpoint
  (`gpsfast.groups.checkpoint`).

Only a `GroupTask` is shipped to a worker (`gpsfast.groups.tasks`): cutouts of
the datasets, copies of the group's models and the outer models that reach the
cutout; the worker computes their npred template and fits, with one retry in
safe settings (`gpsfast.groups.worker`).
"""
from .driver import fit_groups
from .grouping import Group, make_groups, source_extent
from .tasks import GroupResult, GroupTask, make_group_task, run_fit
from .worker import POSITION_STEP, SAFE_OPTIMIZE_OPTS, fit_group_task

__all__ = [
    "Group",
    "GroupResult",
    "GroupTask",
    "POSITION_STEP",
    "SAFE_OPTIMIZE_OPTS",
    "fit_group_task",
    "fit_groups",
    "make_group_task",
    "make_groups",
    "run_fit",
    "source_extent",
]
