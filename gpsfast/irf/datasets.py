"""`fast_irfs`: the fast IRF maps in datasets, for the duration of a block."""
import contextlib

from gammapy.datasets import MapDataset

from gpsfast import twins
from gpsfast.irf import edisp, psf  # noqa: F401 (they register FastEDispKernelMap and FastPSFMap as twins)

__all__ = ["fast_irfs"]


@contextlib.contextmanager
def fast_irfs(datasets):
    """Use `FastPSFMap` and `FastEDispKernelMap` in the datasets inside the block.

    The datasets' ``psf`` (a `~gammapy.irf.PSFMap`) and ``edisp`` (an
    `~gammapy.irf.EDispKernelMap`) are swapped for their fast twins sharing
    the same maps (`gpsfast.twins`), then restored; other IRF types, and
    subclasses of these, are left alone. npred, fits
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
        for dataset, psf_map, edisp_map in saved:
            dataset.psf = twins.fast_or_same(psf_map)
            dataset.edisp = twins.fast_or_same(edisp_map)
        yield datasets
    finally:
        for dataset, psf_map, edisp_map in saved:
            dataset.psf = psf_map
            dataset.edisp = edisp_map

