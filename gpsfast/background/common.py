"""Dataset helpers shared by the background, diffuse and iteration modules."""
import numpy as np
from gammapy.datasets import Datasets, MapDataset

from ..errors import InputError

__all__ = ["as_datasets", "kept_image", "shallow_copy"]


def as_datasets(datasets, caller):
    if isinstance(datasets, MapDataset):
        datasets = [datasets]
    bad = [getattr(d, "name", type(d).__name__) for d in datasets if not isinstance(d, MapDataset)]
    if bad:
        raise InputError(f"{caller}: every dataset must be a MapDataset, not {bad}")
    return Datasets(datasets)


def shallow_copy(dataset, models=None, mask_fit=None):
    """A MapDataset sharing ``dataset``'s maps, with its own models and fit mask."""
    return MapDataset(
        models=models, counts=dataset.counts, exposure=dataset.exposure, background=dataset.background,
        psf=dataset.psf, edisp=dataset.edisp, mask_safe=dataset.mask_safe, mask_fit=mask_fit, gti=dataset.gti,
        meta_table=dataset.meta_table, name=dataset.name, stat_type=dataset.stat_type,
    )


def kept_image(dataset, exclusion):
    """An exclusion mask on the dataset's image geometry (nearest pixel; outside the mask: kept)."""
    image = exclusion if exclusion.geom.is_image else exclusion.reduce_over_axes(func=np.logical_and)
    geom = dataset.geoms["geom"].to_image()
    if image.geom == geom:
        return np.asarray(image.data, dtype=bool)
    return np.asarray(image.get_by_coord(geom.get_coord(), fill_value=1), dtype=bool)
