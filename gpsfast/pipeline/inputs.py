"""The pipeline's input files, read and checked: datasets, truth and known sources.

Every problem is an `~gpsfast.errors.InputError` that names the file and what is
wrong with it, raised before any stage computes on it: a dataset the pipeline
cannot use (not FITS, no background, no counts, NaN or negative values, zero
exposure, nothing in ``mask_safe``, a map smaller than the significance disk)
never gives fits that "succeed" at their start values.
"""
import logging
import warnings
from pathlib import Path

import numpy as np
from astropy.io.fits.verify import VerifyWarning
from gammapy.datasets import MapDataset
from gammapy.maps import WcsGeom

from ..errors import InputError
from ..models import read_catalog, read_xml, read_yaml_models

__all__ = ["read_dataset", "check_dataset", "read_models_file"]

log = logging.getLogger(__name__)

FITS_SIGNATURE = b"SIMPLE  ="


def _is_fits(path):
    with open(path, "rb") as stream:
        return stream.read(len(FITS_SIGNATURE)) == FITS_SIGNATURE


def read_dataset(path, radii=(0.1,)):
    """Read a gammapy MapDataset FITS file and check that the pipeline can use it.

    Parameters
    ----------
    path : str or `~pathlib.Path`
        MapDataset FITS file (``input.datasets``).
    radii : sequence of float
        Correlation radii of the significance maps (deg): the map must be larger
        than the largest disk.

    Returns
    -------
    dataset : `~gammapy.datasets.MapDataset`
        Named after the file (without extensions).

    Raises
    ------
    InputError
        Naming the file and the problem.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"Dataset file not found: {path} (input.datasets)")
    if not _is_fits(path):
        raise InputError(f"Dataset file {path} is not a FITS file (input.datasets)")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", VerifyWarning)
        try:
            dataset = MapDataset.read(path, name=path.name.split(".")[0])
        except Exception as exc:  # noqa: BLE001  any reading failure is the file's
            raise InputError(f"Dataset file {path}: not a readable gammapy MapDataset ({type(exc).__name__}: "
                             f"{exc})".replace("\n", " ")) from None
    for warning in caught:
        log.warning("Dataset file %s: %s", path, " ".join(str(warning.message).split()))
    check_dataset(dataset, str(path), radii)
    return dataset


def _bad_pixels(data):
    """Number of NaN, infinite or negative values."""
    data = np.asarray(data)
    return int(np.count_nonzero(~np.isfinite(data) | (data < 0)))


def check_dataset(dataset, source, radii=(0.1,)):
    """Raise `InputError` (naming ``source``) if the pipeline cannot use a dataset; warn if it holds no counts.

    Parameters
    ----------
    dataset : `~gammapy.datasets.MapDataset`
        The dataset.
    source : str
        Where it comes from (file name), for the messages.
    radii : sequence of float
        Correlation radii of the significance maps (deg).
    """
    for name in ("counts", "background", "exposure"):
        if getattr(dataset, name) is None:
            raise InputError(f"Dataset {source} has no {name.upper()} map: the pipeline needs counts, background "
                             "and exposure")
    if not isinstance(dataset.counts.geom, WcsGeom):
        raise InputError(f"Dataset {source}: {type(dataset.counts.geom).__name__} maps are not supported (WCS maps "
                         "only)")
    counts = np.asarray(dataset.counts.data)
    safe = np.ones(counts.shape, bool) if dataset.mask_safe is None else np.asarray(dataset.mask_safe.data, bool)
    if not safe.any():
        raise InputError(f"Dataset {source}: mask_safe excludes every pixel")
    image = safe.any(axis=0)
    values = {"counts": counts[safe], "background": np.asarray(dataset.background.data)[safe],
              "exposure": np.asarray(dataset.exposure.data)[..., image]}
    for name, data in values.items():
        bad = _bad_pixels(data)
        if bad:
            raise InputError(f"Dataset {source}: {bad} of {data.size} {name} values inside mask_safe are NaN, "
                             "infinite or negative")
    if not np.any(values["exposure"] > 0):
        raise InputError(f"Dataset {source}: the exposure is zero everywhere inside mask_safe")
    if not np.any(values["background"] > 0):
        raise InputError(f"Dataset {source}: the background is zero everywhere inside mask_safe")
    geom = dataset.counts.geom.to_image()
    ny, nx = geom.data_shape
    size = np.array([nx, ny]) * geom.pixel_scales.to_value("deg")
    disk = 2 * max(radii)
    if size.min() < disk:
        raise InputError(
            f"Dataset {source}: its map ({nx} x {ny} pixels, {size[0]:.3g} x {size[1]:.3g} deg) is smaller than "
            f"the significance disk ({disk:g} deg across, significance.radii)"
        )
    if not np.any(values["counts"] > 0):
        log.warning("Dataset %s holds no counts inside mask_safe: no source can be found in it", source)


def read_models_file(path, key):
    """Sky models from a ctools XML, gammapy YAML or catalogue FITS file (by extension), with one-line errors.

    Parameters
    ----------
    path : str or `~pathlib.Path`
        The file.
    key : str
        Configuration key that names it (``input.truth``, ``association.known_sources``).

    Returns
    -------
    models : `~gammapy.modeling.models.Models`
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"Model file not found: {path} ({key})")
    name = path.name.lower()
    if name.endswith(".xml"):
        return read_xml(path)
    if name.endswith((".fits", ".fits.gz", ".fit")):
        return read_catalog(path)
    if not name.endswith((".yaml", ".yml")):
        raise InputError(f"{path} ({key}): unknown model file type; use .xml, .yaml/.yml or .fits/.fits.gz")
    try:
        return read_yaml_models(path)
    except InputError as exc:
        raise InputError(f"{exc} ({key})") from None
