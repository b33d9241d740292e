"""Survey-fit helpers, gathered under their historical import path.

The names live in the modules of their job and are re-exported here unchanged,
so that ``from gpsfast.fit import ...`` keeps working:

- `gpsfast.modeling`: `frozen`, `select_models`, `main_source`, `release_shape`,
  `SHAPE_PARAMETERS`, `cache_outer_sources`;
- `gpsfast.irf`: `FastPSFMap`, `FastEDispKernelMap`, `fast_irfs`;
- `gpsfast.evaluate`: `FastMapDataset`, `FastDatasets`, `fast_dataset`,
  `fast_datasets`, `npred_signal`;
- `gpsfast.groups`: `fit_groups`, `make_groups`, `Group`.

New code may import from those modules directly.
"""
from gpsfast.evaluate import FastDatasets, FastMapDataset, fast_dataset, fast_datasets, npred_signal
from gpsfast.groups import Group, fit_groups, make_groups
from gpsfast.irf import FastEDispKernelMap, FastPSFMap, fast_irfs
from gpsfast.modeling import (
    SHAPE_PARAMETERS,
    cache_outer_sources,
    frozen,
    main_source,
    release_shape,
    select_models,
)

__all__ = [
    "SHAPE_PARAMETERS",
    "FastDatasets",
    "FastEDispKernelMap",
    "FastMapDataset",
    "FastPSFMap",
    "Group",
    "cache_outer_sources",
    "fast_dataset",
    "fast_datasets",
    "fast_irfs",
    "fit_groups",
    "frozen",
    "main_source",
    "make_groups",
    "npred_signal",
    "release_shape",
    "select_models",
]
