"""The geometry shortcuts of the drop-in mode: ``WcsGeom.cutout``, ``cutout_slices``, ``SkyModel.contributes``.

Each function gives gammapy's result for the plain cases (a regular WCS without
distortions, positions in the geometry's frame) and None where gammapy's own code
must run. `cutout_slices` keeps its results in a module-wide cache, cleared when
the mode ends (`clear_caches`).
"""
import copy
import threading

import astropy.units as u
import numpy as np
from astropy.coordinates import SkyCoord
from astropy.nddata.utils import NoOverlapError, overlap_slices
from gammapy.maps import WcsGeom
from gammapy.utils.array import round_up_to_odd

from gpsfast import _compat
from gpsfast.pixels import image_key_parts

__all__ = ["clear_caches", "cutout_slices", "mask_cutout_any", "trim_cutout"]

_SLICES = {}
_SLICES_LOCK = threading.Lock()
_MAX_SLICES = 4096


def clear_caches():
    """Drop the cutout slices kept by `cutout_slices`."""
    with _SLICES_LOCK:
        _SLICES.clear()


def cutout_slices(geom, parent, mode, original):
    """``geom.cutout_slices(parent, mode=mode)``, kept per (WCS, shape, WCS, shape, mode).

    A geometry that differs from the parent only by an integer shift of the
    reference pixel (what ``cutout`` makes) gets its slices from that shift:
    gammapy finds the parent pixel of the cutout's centre through sky
    coordinates, which lands on the same pixel (to rounding far below the
    half pixel where ``overlap_slices`` rounds). ``original`` is gammapy's
    ``cutout_slices``; None for geometries that are not sure to be plain.
    """
    own, other = image_key_parts(geom), image_key_parts(parent)
    if own is None or other is None:
        return None
    key = own[0] + (own[1].tobytes(),), other[0] + (other[1].tobytes(),), mode
    slices = _SLICES.get(key)
    if slices is None:
        slices = _shifted_slices(own, other, mode)
        if slices is None:
            slices = original(geom, parent, mode=mode)
        # inserted whole; the caller works on its own reference (threads may clear the cache)
        with _SLICES_LOCK:
            if len(_SLICES) >= _MAX_SLICES:
                _SLICES.clear()
            _SLICES[key] = slices
    return dict(slices)


def _shifted_slices(own, parent, mode):
    """Cutout slices of a geometry shifted by whole pixels from its parent, else None."""
    if own[0][:-1] != parent[0][:-1]:
        return None
    shift = parent[1] - own[1]
    if not np.all(np.abs(shift - np.round(shift)) < 1e-9):
        return None
    shape = own[0][-1]
    # the parent pixel of the cutout's centre pixel, (y, x)
    position = [(n - 1) / 2.0 + offset for n, offset in zip(shape, np.round(shift)[::-1])]
    slices = overlap_slices(
        large_array_shape=parent[0][-1], small_array_shape=shape, position=position, mode=mode
    )
    return {"parent-slices": slices[0], "cutout-slices": slices[1]}


def _sky_pixel(geom, position):
    """Pixel (x, y) of a scalar SkyCoord on a WCS geometry in its own frame, else None.

    As ``skycoord_to_pixel(position, wcs, mode="all")`` where no frame
    transformation is needed.
    """
    wcs = geom.wcs
    if (
        not isinstance(position, SkyCoord)
        or not position.isscalar
        or position.frame.name != geom.frame
        or geom.frame not in ("galactic", "icrs")
        or wcs.has_distortion
        or wcs.sip is not None
        or (str(wcs.wcs.cunit[0]), str(wcs.wcs.cunit[1])) != ("deg", "deg")
    ):
        return None
    data = position.data
    if not hasattr(data, "lon"):
        return None
    x, y = wcs.all_world2pix(data.lon.deg, data.lat.deg, 0)
    return float(x), float(y)


def trim_cutout(geom, position, width, odd_npix, min_npix):
    """gammapy's ``WcsGeom.cutout`` in "trim" mode for a plain WCS, else None.

    Same size rule (``Cutout2D``: pixels rounded to the nearest integer, odd
    if asked), same pixel position and ``overlap_slices``; the cutout WCS is the
    parent's with the reference pixel moved by the slice origin, as ``Cutout2D``
    does.
    """
    if not geom.is_regular:
        return None
    pix = _sky_pixel(geom, position)
    if pix is None:
        return None
    width = _compat.check_width(width) * u.deg
    width_npix = np.clip((width / geom.pixel_scales).to_value(""), min_npix, None)
    if odd_npix:
        width_npix = round_up_to_odd(width_npix)
    shape = tuple(int(np.round(side)) for side in np.atleast_1d(width_npix)[::-1])
    if len(shape) != 2:
        return None
    large_shape = geom.data_shape[-2:]
    # raises NoOverlapError as Cutout2D does
    slices, _ = overlap_slices(large_shape, shape, pix[::-1], mode="trim")
    wcs = copy.deepcopy(geom.wcs)
    wcs.wcs.crpix -= (slices[1].start, slices[0].start)
    cutout_shape = (slices[0].stop - slices[0].start, slices[1].stop - slices[1].start)
    wcs.array_shape = cutout_shape
    return _compat.geom_init_copy(geom, wcs=wcs, npix=cutout_shape[::-1])


def mask_cutout_any(model, mask, margin):
    """gammapy's ``SkyModel.contributes`` for an image mask on a plain WCS geometry, else None.

    gammapy cuts the mask out with ``Map.cutout`` (``Cutout2D`` in "trim" mode,
    then the parent slices of that cutout) and looks for a true pixel: the
    parent slices are those of ``Cutout2D``'s ``overlap_slices``, found here with
    the same pixel position, size and rounding, with no cutout geometry built.
    """
    geom = mask.geom
    spatial = model.spatial_model
    if (
        type(geom) is not WcsGeom
        or not geom.is_image
        or spatial is None
    ):
        return None
    radius = model.evaluation_radius
    if radius is None:
        return None
    width = _compat.check_width(2 * radius + _compat.CUTOUT_MARGIN + u.Quantity(margin)) * u.deg
    width_npix = np.clip((width / geom.pixel_scales).to_value(""), 1, None)
    shape = tuple(int(np.round(side)) for side in width_npix[::-1])
    pix = _sky_pixel(geom, spatial.position)
    if pix is None:
        return None
    x, y = pix
    try:
        slices, _ = overlap_slices(geom.data_shape, shape, (y, x), mode="trim")
    except (NoOverlapError, ValueError):
        return False
    return bool(np.any(mask.data[slices]))
