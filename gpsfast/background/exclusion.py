"""Exclusion masks: the regions of significant emission, by hysteresis thresholding of significance maps.

scikit-image's ``apply_hysteresis_threshold`` on every map, the masks combined
(a pixel is excluded when any map finds it significant) on one geometry and
optionally dilated: a gammapy exclusion mask, True where the background can be
fitted.
"""
import logging

import astropy.units as u
import numpy as np
from gammapy.estimators import FluxMaps
from gammapy.maps import Map, WcsGeom
from scipy.ndimage import binary_dilation
from skimage.filters import apply_hysteresis_threshold

from ..errors import InputError

__all__ = ["exclusion_mask"]

log = logging.getLogger(__name__)


def _significance_images(significance):
    """``[(label, WcsNDMap image)]`` from maps, FluxMaps, dicts or lists of them."""
    if isinstance(significance, (Map, FluxMaps)):
        items = [("map", significance)]
    elif isinstance(significance, dict):
        items = list(significance.items())
    elif isinstance(significance, (list, tuple)):
        items = [(f"map {k}", item) for k, item in enumerate(significance)]
    else:
        raise InputError(f"exclusion_mask: expected significance maps (Map, FluxMaps, dict or list), "
                         f"got {type(significance).__name__}")
    if not items:
        raise InputError("exclusion_mask: no significance map given")
    images = []
    for label, item in items:
        if isinstance(item, FluxMaps):
            if "sqrt_ts" not in item.available_quantities:
                raise InputError(f"exclusion_mask: {label} has no sqrt_ts map")
            item = item["sqrt_ts"]
        if not isinstance(item, Map) or not isinstance(item.geom, WcsGeom):
            raise InputError(f"exclusion_mask: {label} is not a WCS map ({type(item).__name__})")
        data = np.where(np.isfinite(item.data), item.data, -np.inf)
        if not item.geom.is_image:
            data = data.reshape((-1,) + item.geom.data_shape[-2:]).max(axis=0)
        images.append((label, Map.from_geom(item.geom.to_image(), data=data)))
    return images


def _mask_on_geom(mask, geom, factor=None):
    """A boolean image (True: excluded) on another image geometry; a pixel is excluded if any part of it is."""
    if mask.geom == geom:
        return mask.data.copy()
    if factor is None:
        ratio = np.max(geom.pixel_scales.deg) / np.min(mask.geom.pixel_scales.deg)
        factor = int(np.clip(np.ceil(2 * ratio), 1, 32))
    fine = geom.upsample(factor)
    values = mask.get_by_coord(fine.get_coord(), fill_value=0)
    ny, nx = geom.data_shape
    return np.asarray(values, dtype=bool).reshape(ny, factor, nx, factor).any(axis=(1, 3))


def _disk(radius, geom):
    """Disk structuring element of ``radius`` (pixel centres within it) on ``geom``'s pixels."""
    scale = geom.pixel_scales.deg
    ry, rx = (u.Quantity(radius, "deg").to_value("deg") / scale[::-1]).tolist()
    ny, nx = int(np.floor(ry)), int(np.floor(rx))
    y, x = np.ogrid[-ny: ny + 1, -nx: nx + 1]
    return (y / max(ry, 1e-12)) ** 2 + (x / max(rx, 1e-12)) ** 2 <= 1


def exclusion_mask(significance, geom=None, low=3.0, high=5.0, radius=None):
    """Exclusion mask of the significant emission, by hysteresis thresholding.

    On every significance image, the pixels above ``high`` and the pixels above
    ``low`` connected to them (8-connectivity) are significant
    (``skimage.filters.apply_hysteresis_threshold``); maps with an energy axis
    use the largest significance over it; NaN pixels are not significant. The
    significant regions of all maps are combined (a pixel of ``geom`` is
    excluded when any part of it is significant in any map), then dilated by
    ``radius``.

    Parameters
    ----------
    significance : `~gammapy.maps.Map`, `~gammapy.estimators.FluxMaps`, dict or list of them
        Significance maps, e.g. the output of `gpsfast.detect.significance_maps`
        (FluxMaps: their ``sqrt_ts``), raw or residual.
    geom : `~gammapy.maps.WcsGeom`, optional
        Geometry of the mask (a dataset's; reduced to its image). Default: the
        first map's.
    low, high : float, optional
        Hysteresis thresholds in sigma. Default 3 and 5.
    radius : `~astropy.units.Quantity` or str, optional
        Dilation radius of the excluded regions. Default: no dilation.

    Returns
    -------
    mask : `~gammapy.maps.WcsNDMap`
        Boolean image, gammapy's convention for exclusion masks: True where the
        background can be fitted, False in the excluded regions.
    """
    if not low <= high:
        raise InputError(f"exclusion_mask: need low <= high, got low={low}, high={high}")
    images = _significance_images(significance)
    geom = images[0][1].geom if geom is None else geom.to_image()
    excluded = np.zeros(geom.data_shape, dtype=bool)
    for _, image in images:
        significant = apply_hysteresis_threshold(image.data, low, high)
        excluded |= _mask_on_geom(Map.from_geom(image.geom, data=significant), geom)
    if radius is not None and u.Quantity(radius, "deg").value > 0:
        excluded = binary_dilation(excluded, structure=_disk(radius, geom))
    log.info("exclusion mask: %.1f%% of %d pixels excluded (low %g, high %g)", 100 * excluded.mean(),
             excluded.size, low, high)
    return Map.from_geom(geom, data=~excluded)


# ------------------------------------------------------------------ background fit
