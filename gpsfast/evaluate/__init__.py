"""The likelihood engine: gammapy datasets whose npred and Cash statistic are compiled.

- `FastMapDataset`, `fast_dataset` (`gpsfast.evaluate.datasets`): a
  `~gammapy.datasets.MapDataset` whose ``npred_signal`` and ``stat_sum`` evaluate
  its sources from cached spatial and spectral pieces with compiled kernels
  (`gpsfast.evaluate.source`, `gpsfast.evaluate.engine`), same statistic as
  gammapy's to rounding;
- `FastDatasets`, `fast_datasets`: the container whose ``stat_sum`` does not
  rebuild the model list at every call;
- `npred_signal`: gammapy's ``MapDataset.npred_signal`` with the fast IRF kernels.
"""
from gpsfast.evaluate.datasets import FastDatasets, FastMapDataset, fast_dataset, fast_datasets, npred_signal

__all__ = ["FastDatasets", "FastMapDataset", "fast_dataset", "fast_datasets", "npred_signal"]
