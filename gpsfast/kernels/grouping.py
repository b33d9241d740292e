"""Sums of groups of consecutive planes of a cube (energy-axis resampling)."""
import numpy as np
from numba import njit

__all__ = ["group_planes"]


@njit(cache=True, nogil=True)
def group_planes(cube, mask, starts, stops, logical_or):
    """Sum (or OR) consecutive planes of a cube, weighted by a mask.

    ``out[k] = sum(cube[starts[k]:stops[k]] * mask[starts[k]:stops[k]], axis=0)``;
    planes at or beyond ``cube.shape[0]`` count as zero. With ``logical_or`` the
    result is 1 where any plane of the group has a non-zero ``cube`` (the mask is
    then ignored).

    Parameters
    ----------
    cube : ndarray, shape (n, ny, nx)
        Data (any real dtype; booleans for ``logical_or``).
    mask : ndarray, shape (n, ny, nx), bool
        Weights (0 or 1).
    starts, stops : ndarray of int64, shape (n_groups,)
        Plane ranges of the groups (``stop`` exclusive).
    logical_or : bool
        OR instead of a masked sum.

    Returns
    -------
    out : ndarray, shape (n_groups, ny, nx), float64
    """
    n, ny, nx = cube.shape
    n_groups = starts.shape[0]
    out = np.zeros((n_groups, ny, nx), dtype=np.float64)
    for j in range(ny):
        for k in range(n_groups):
            for e in range(starts[k], min(stops[k], n)):
                for i in range(nx):
                    if logical_or:
                        if cube[e, j, i]:
                            out[k, j, i] = 1.0
                    elif mask[e, j, i]:
                        out[k, j, i] += cube[e, j, i]
    return out
