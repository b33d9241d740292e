"""Pixel-grid rules shared by the IRF lookups, the spectra and the drop-in mode.

- `image_key_parts` / `image_key`: what the pixel <-> sky transform of a
  `~gammapy.maps.WcsGeom` image depends on, as a hashable key (cache keys of
  kernel grids and cutout slices);
- `nearest_pixel` / `half_way`: the nearest pixel of a pixel coordinate, with
  the tie rule of the gammapy call being reproduced.
"""
import numpy as np

__all__ = ["half_way", "image_key", "image_key_parts", "nearest_pixel"]


def image_key_parts(geom):
    """What a WcsGeom image's pixel <-> sky transform depends on, but the reference pixel; and the reference pixel.

    Parameters
    ----------
    geom : `~gammapy.maps.WcsGeom`
        Geometry (its image part is used).

    Returns
    -------
    parts : tuple or None
        ``(key, crpix)``: ``key`` holds the WCS numbers (reference value, pixel
        size, PC matrix, poles, equinox), types, units, projection parameters,
        frame and the image shape, last; ``crpix`` is the reference pixel
        (float array). None where the geometry is irregular or its WCS has
        distortions (no key is sure to describe it).
    """
    wcs = geom.wcs
    if not geom.is_regular or wcs.has_distortion:
        return None
    prm = wcs.wcs
    numbers = np.concatenate(
        [prm.crval, prm.cdelt, prm.get_pc().ravel(), [prm.lonpole, prm.latpole, prm.equinox]]
    )
    key = (
        numbers.tobytes(),
        tuple(prm.ctype),
        tuple(str(unit) for unit in prm.cunit),
        tuple(prm.get_pv()),
        prm.radesys,
        prm.has_cd(),
        tuple(int(n) for n in geom.data_shape[-2:]),
    )
    return key, np.array(prm.crpix, dtype=float)


def image_key(geom):
    """`image_key_parts` with the reference pixel in the key: equal keys, equal pixel grids (None: no key)."""
    parts = image_key_parts(geom)
    if parts is None:
        return None
    key, crpix = parts
    return key + (crpix.tobytes(),)


def nearest_pixel(pix, n, ties="down"):
    """Index of the pixel nearest to pixel coordinates ``pix`` on an axis of ``n`` pixels, clipped to it.

    Parameters
    ----------
    pix : float or ndarray
        Pixel coordinates (pixel centres at 0, 1, ..., n - 1).
    n : int
        Number of pixels.
    ties : {"down", "up"}
        Where a coordinate half-way between two pixel centres goes:
        ``"down"`` as ``scipy.interpolate.RegularGridInterpolator(method="nearest")``
        (gammapy's ``interp_by_pix``), ``"up"`` as ``floor(pix + 0.5)`` (the
        pixel whose bounds contain ``pix``, gammapy's ``coord_to_idx``).

    Returns
    -------
    index : ndarray of int64 (scalar for a scalar ``pix``)
    """
    pix = np.asarray(pix, dtype=float)
    if ties == "down":
        index = np.ceil(pix - 0.5)
    elif ties == "up":
        index = np.floor(pix + 0.5)
    else:
        raise ValueError(f"ties must be 'down' or 'up', got {ties!r}")
    return np.clip(index, 0, n - 1).astype(np.int64)


def half_way(pix):
    """Whether pixel coordinates lie exactly half-way between two pixel centres (where the tie rule decides)."""
    shifted = np.asarray(pix, dtype=float) + 0.5
    return np.floor(shifted) == shifted
