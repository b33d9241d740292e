"""Lookups in IRF maps as gammapy does them: interpolation weights and the safe mask.

gammapy interpolates IRF maps with ``scipy.interpolate.RegularGridInterpolator``
(through ``ScaledRegularGridInterpolator``, on axes scaled by their ``interp``):
the cell indices and weights are computed here once and applied to many values.
"""
import numpy as np
from gammapy.utils.interpolation import interpolation_scale

from gpsfast import _compat

__all__ = ["CachedMaskSafe", "interp_axis", "linear_weights", "scaled_cell_weights"]


def linear_weights(pix, n):
    """Cell index and weight of linear interpolation / extrapolation on ``range(n)``.

    As scipy's ``RegularGridInterpolator`` (``fill_value=None``): the edge cells
    extrapolate; an axis of length 1 is ignored (gammapy squeezes it).
    """
    if n == 1:
        return np.zeros(np.shape(pix), dtype=int), np.zeros(np.shape(pix))
    index = np.clip(np.floor(pix).astype(int), 0, n - 2)
    return index, pix - index


def interp_axis(values, index, weight, axis):
    """Linear interpolation of ``values`` along ``axis`` with precomputed weights."""
    lower = np.take(values, index, axis=axis)
    if values.shape[axis] == 1:
        return lower
    upper = np.take(values, index + 1, axis=axis)
    return lower * (1 - weight) + upper * weight


def scaled_cell_weights(axis, coord):
    """Cell index and weight of ``coord`` on an IRF axis, as gammapy's interpolator finds them.

    The axis centres and the coordinates are scaled with the axis' ``interp``
    scale (gammapy's ``ScaledRegularGridInterpolator``), then located as
    ``scipy.interpolate.RegularGridInterpolator`` does (edge cells extrapolate).
    """
    scale = interpolation_scale(axis.interp)
    grid = np.asarray(scale(axis.center), dtype=float)
    values = np.asarray(scale(coord), dtype=float)
    index = np.clip(np.searchsorted(grid, values, side="right") - 1, 0, grid.size - 2)
    return index, (values - grid[index]) / (grid[index + 1] - grid[index])


class CachedMaskSafe:
    """IRF map mixin caching ``mask_safe_image`` (gammapy recomputes it per lookup)."""

    @property
    def mask_safe_image(self):
        """Mask safe for the map (cached per IRF map object)."""
        cached = self.__dict__.get("_fast_mask_safe")
        if cached is None or cached[0] is not _compat.irf_map(self):
            cached = (_compat.irf_map(self), super().mask_safe_image)
            self.__dict__["_fast_mask_safe"] = cached
        return cached[1]
