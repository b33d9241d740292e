"""`fast_irfs`: the fast IRF maps in datasets, for the duration of a block."""
import contextlib

from gammapy.datasets import MapDataset
from gammapy.irf import EDispKernelMap, PSFMap

from gpsfast.irf.edisp import FastEDispKernelMap
from gpsfast.irf.psf import FastPSFMap

__all__ = ["fast_irfs"]


@contextlib.contextmanager
def fast_irfs(datasets):
    """Use `FastPSFMap` and `FastEDispKernelMap` in the datasets inside the block.

    The datasets' ``psf`` (a `~gammapy.irf.PSFMap`) and ``edisp`` (an
    `~gammapy.irf.EDispKernelMap`) are swapped for their fast subclasses sharing
    the same maps, then restored; other IRF types are left alone. npred, fits
    and everything else computed inside are gammapy's, with the same results
    (kernels equal to float32 rounding).

    Parameters
    ----------
    datasets : `~gammapy.datasets.Datasets`, list of datasets or one `~gammapy.datasets.MapDataset`
        Datasets to accelerate.

    Yields
    ------
    datasets : list of `~gammapy.datasets.MapDataset`
    """
    datasets = [datasets] if isinstance(datasets, MapDataset) else list(datasets)
    saved = [(dataset, dataset.psf, dataset.edisp) for dataset in datasets]
    try:
        for dataset, psf, edisp in saved:
            if isinstance(psf, PSFMap) and not isinstance(psf, FastPSFMap):
                dataset.psf = FastPSFMap.from_psf_map(psf)
            if type(edisp) is EDispKernelMap:
                dataset.edisp = FastEDispKernelMap.from_edisp_map(edisp)
        yield datasets
    finally:
        for dataset, psf, edisp in saved:
            dataset.psf = psf
            dataset.edisp = edisp

