"""Generalized Gaussian (Sersic-like) surface brightness, evaluated and pixel-integrated.

The profile is gammapy's ``GeneralizedGaussianSpatialModel``::

    f = norm * exp(-z ** (1 / eta)),   z = sep / r_eff(dphi)
    1 / r_eff ** 2 = sin(dphi) ** 2 / b ** 2 + cos(dphi) ** 2 / r_0 ** 2
    norm = 1 / (2 pi b r_0 eta Gamma(2 eta)),   b = r_0 sqrt(1 - e ** 2)

with ``sep`` the angular separation and ``dphi = phi - pa`` where ``pa`` is the
position angle (east of north) of the point seen from the centre.

Directions are handled as unit vectors: with ``c`` the centre, ``n`` and ``t`` the
local north and east unit vectors at the centre (rows of the 3 x 3 ``basis``), a
direction ``p`` has ``a = p.c = cos(sep)``, ``bn = p.n = sin(sep) cos(pa)`` and
``be = p.t = sin(sep) sin(pa)``: the position angle never has to be formed, and
the separation needs an ``atan2`` only beyond 5.7 deg (a short series below).

The shape vector passed to the kernels is
``(cos(phi), sin(phi), 1 / b ** 2, 1 / r_0 ** 2, 1 / (2 eta), norm)``
with lengths in radians; ``norm`` is in sr-1.

Pixel grids are described by the WCS pieces that wcslib uses: the 2 x 2
pixel-to-intermediate matrix (``CDELT`` times ``PC``, degrees per pixel), ``CRPIX``
(1-based) and the projection code; ``basis`` then maps native spherical unit
vectors of that projection straight to (a, bn, be).
"""
import math

import numpy as np
from numba import njit

from gpsfast.kernels.elementary import MANTISSA_BITS, ONE_BITS, log_of_parts

__all__ = [
    "PROJ_CAR",
    "PROJ_SIN",
    "PROJ_TAN",
    "generalized_gaussian_grid",
    "generalized_gaussian_points",
]

PROJ_CAR = 0
PROJ_TAN = 1
PROJ_SIN = 2

_DEG = math.pi / 180.0
_R0 = 180.0 / math.pi


# atan(t) / t = sum_k (-1)^k t^(2k) / (2k + 1); 8 terms are exact to 1e-17 for
# t^2 <= 0.01 (separations below 5.7 deg), where they replace the slower atan2
_SERIES_T2_MAX = 0.01


@njit(cache=True, nogil=True)
def _sep_over_sin_squared(a, h2):
    """(sep / sin(sep)) ** 2 from a = cos(sep) and h2 = sin(sep) ** 2 (h2 > 0)."""
    if a > 0.0:
        t2 = h2 / (a * a)
        if t2 <= _SERIES_T2_MAX:
            s = 1.0 / 15.0 - t2 / 17.0
            s = 1.0 / 13.0 - t2 * s
            s = 1.0 / 11.0 - t2 * s
            s = 1.0 / 9.0 - t2 * s
            s = 1.0 / 7.0 - t2 * s
            s = 1.0 / 5.0 - t2 * s
            s = 1.0 / 3.0 - t2 * s
            s = 1.0 - t2 * s
            # s = atan(t) / t = sep / tan(sep); sep / sin(sep) = s / cos(sep)
            ratio = s / a
            return ratio * ratio
    h = math.sqrt(h2)
    ratio = math.atan2(h, a) / h
    return ratio * ratio


@njit(cache=True, nogil=True)
def _z_squared(a, bn, be, shape):
    """(sep / r_eff) ** 2 from the direction projections (a, bn, be); NaN stays NaN."""
    cos_phi = shape[0]
    sin_phi = shape[1]
    h2 = bn * bn + be * be
    if h2 > 0.0:
        u = sin_phi * bn - cos_phi * be
        v = cos_phi * bn + sin_phi * be
        return _sep_over_sin_squared(a, h2) * (u * u * shape[2] + v * v * shape[3])
    if h2 == 0.0:
        # centre (position angle 0 as in astropy) or its antipode
        sep = 0.0 if a >= 0.0 else math.pi
        return sep * sep * (sin_phi * sin_phi * shape[2] + cos_phi * cos_phi * shape[3])
    return math.nan


# exp(-t) rounds to 0.0 beyond this (and libm's underflow path is slow)
_T_UNDERFLOW = 745.1332


@njit(cache=True, nogil=True)
def _brightness(z2, shape):
    """Surface brightness from (sep / r_eff) ** 2."""
    if z2 == 0.0:
        return shape[5]
    power = shape[4]
    if power == 1.0:
        t = z2
    elif power == 0.5:
        t = math.sqrt(z2)
    else:
        t = math.exp(math.log(z2) * power)
    if t > _T_UNDERFLOW:
        return 0.0
    return shape[5] * math.exp(-t)


# Row-wise brightness: exp(-exp(power * log(z2))) written with polynomials and
# exponent-bit arithmetic, in short loops without calls that the compiler turns
# into SIMD code (libm's scalar exp / log dominate otherwise). Relative accuracy
# is about 1e-12.
# fdlibm's split of ln(2) for the argument reduction of the exponential
_LN2_HI = 6.93147180369123816490e-01
_LN2_LO = 1.90821492927058770002e-10
_INV_LN2 = 1.4426950408889634
# below exp(-700) t is so small that exp(-t) == 1; above exp(7) exp(-t) == 0
_LOG_T_MIN = -700.0
_LOG_T_MAX = 7.0


@njit(cache=True, nogil=True, error_model="numpy")
def _exp_reduced(r):
    """exp(r) for |r| <= ln(2) / 2 (Taylor series to r ** 14)."""
    p = 1.0 / 87178291200.0
    p = 1.0 / 6227020800.0 + r * p
    p = 1.0 / 479001600.0 + r * p
    p = 1.0 / 39916800.0 + r * p
    p = 1.0 / 3628800.0 + r * p
    p = 1.0 / 362880.0 + r * p
    p = 1.0 / 40320.0 + r * p
    p = 1.0 / 5040.0 + r * p
    p = 1.0 / 720.0 + r * p
    p = 1.0 / 120.0 + r * p
    p = 1.0 / 24.0 + r * p
    p = 1.0 / 6.0 + r * p
    p = 0.5 + r * p
    p = 1.0 + r * p
    return 1.0 + r * p


@njit(cache=True, nogil=True, error_model="numpy")
def _brightness_block(z2, n, power, norm, out, work_f, work_i, poly, scale, scale2):
    """out[:n] = brightness of z2[:n]; the other arrays are scratch of the same size."""
    z2_bits = z2.view(np.int64)
    mantissa = work_i.view(np.float64)
    for k in range(n):
        bits = z2_bits[k]
        work_f[k] = ((bits >> 52) & 0x7FF) - 1023
        work_i[k] = (bits & MANTISSA_BITS) | ONE_BITS
    # t = exp(power * log(z2)) = poly * 2 ** k
    for k in range(n):
        y = power * log_of_parts(mantissa[k], work_f[k])
        y = min(max(y, _LOG_T_MIN), _LOG_T_MAX)
        kf = math.floor(y * _INV_LN2 + 0.5)
        poly[k] = _exp_reduced((y - kf * _LN2_HI) - kf * _LN2_LO)
        work_i[k] = (np.int64(kf) + 1023) << 52
    # exp(-t) = poly * 2 ** k, the power of two in two halves (results may be subnormal)
    t_scale = work_i.view(np.float64)
    for k in range(n):
        t = min(poly[k] * t_scale[k], _T_UNDERFLOW)
        kf = math.floor(-t * _INV_LN2 + 0.5)
        work_f[k] = _exp_reduced((-t - kf * _LN2_HI) - kf * _LN2_LO)
        ki = np.int64(kf)
        half = ki >> 1
        scale[k] = (half + 1023) << 52
        scale2[k] = (ki - half + 1023) << 52
    scale_f = scale.view(np.float64)
    scale2_f = scale2.view(np.float64)
    for k in range(n):
        value = norm * work_f[k] * scale_f[k] * scale2_f[k]
        z = z2[k]
        value = 0.0 if poly[k] * t_scale[k] > _T_UNDERFLOW else value
        value = norm if z == 0.0 else value
        out[k] = z if z != z else value


@njit(cache=True, nogil=True)
def generalized_gaussian_points(lon, lat, basis, shape):
    """Surface brightness at sky positions.

    Parameters
    ----------
    lon, lat : 1D float64 arrays
        Positions in radians, in the model frame.
    basis : (3, 3) float64 array
        Rows: unit vectors of the centre, local north and local east.
    shape : (6,) float64 array
        Shape vector (see the module docstring).

    Returns
    -------
    values : 1D float64 array
        Surface brightness in sr-1.
    """
    out = np.empty(lon.size)
    for k in range(lon.size):
        clat = math.cos(lat[k])
        px = clat * math.cos(lon[k])
        py = clat * math.sin(lon[k])
        pz = math.sin(lat[k])
        a = basis[0, 0] * px + basis[0, 1] * py + basis[0, 2] * pz
        bn = basis[1, 0] * px + basis[1, 1] * py + basis[1, 2] * pz
        be = basis[2, 0] * px + basis[2, 1] * py + basis[2, 2] * pz
        out[k] = _brightness(_z_squared(a, bn, be, shape), shape)
    return out


@njit(cache=True, nogil=True)
def _native_vector(proj, x, y):
    """Native spherical unit vector of intermediate coordinates (x, y) in degrees."""
    if proj == PROJ_CAR:
        if abs(y) > 90.0:
            return math.nan, math.nan, math.nan
        ct = math.cos(y * _DEG)
        return ct * math.cos(x * _DEG), ct * math.sin(x * _DEG), math.sin(y * _DEG)
    if proj == PROJ_TAN:
        inv = 1.0 / math.sqrt(x * x + y * y + _R0 * _R0)
        return -y * inv, x * inv, _R0 * inv
    # PROJ_SIN (orthographic, no obliqueness parameters)
    x0 = x / _R0
    y0 = y / _R0
    r2 = x0 * x0 + y0 * y0
    if r2 > 1.0:
        return math.nan, math.nan, math.nan
    return -y0, x0, math.sqrt(1.0 - r2)


_CHUNK = 512


@njit(cache=True, nogil=True, error_model="numpy")
def generalized_gaussian_grid(
    x0, y0, nx, ny, factor, proj, pix2img, crpix, basis, shape, weights
):
    """Mean surface brightness over sub-pixels of a block of WCS pixels.

    Each pixel ``(y0 + j, x0 + i)`` (0-based) is split into ``factor x factor``
    sub-pixels whose centres sit at ``(k + 0.5) / factor - 0.5`` pixel; the output
    is the mean of the profile at those centres (the pixel centre itself when
    ``factor`` is 1), times ``weights[j, i]`` when ``weights`` is not empty.

    Parameters
    ----------
    x0, y0 : int
        0-based pixel index of the first column and row of the block.
    nx, ny : int
        Block size in pixels.
    factor : int
        Oversampling factor (>= 1).
    proj : int
        ``PROJ_CAR``, ``PROJ_TAN`` or ``PROJ_SIN``.
    pix2img : (2, 2) float64 array
        Pixel to intermediate coordinates matrix, degrees per pixel.
    crpix : (2,) float64 array
        Reference pixel, 1-based (FITS convention).
    basis : (3, 3) float64 array
        Maps native unit vectors of the projection to (a, bn, be).
    shape : (6,) float64 array
        Shape vector (see the module docstring).
    weights : 2D float64 array
        Per-pixel factor of shape (ny, nx) (e.g. solid angles), or an empty array.

    Returns
    -------
    values : (ny, nx) float64 array
    """
    out = np.empty((ny, nx))
    use_weights = weights.size > 0
    inv_factor = 1.0 / factor
    nsx = nx * factor
    # 1-based pixel coordinate of the sub-pixel centres minus CRPIX
    dx = np.empty(nsx)
    for k in range(nsx):
        dx[k] = x0 + (k + 0.5) * inv_factor + 0.5 - crpix[0]
    dy = np.empty(ny * factor)
    for k in range(ny * factor):
        dy[k] = y0 + (k + 0.5) * inv_factor + 0.5 - crpix[1]

    separable = proj == PROJ_CAR and pix2img[0, 1] == 0.0 and pix2img[1, 0] == 0.0
    col = np.empty((3, nsx if separable else 0))
    if separable:
        # CAR with a diagonal matrix: native longitude per column, latitude per row
        for k in range(nsx):
            phi = pix2img[0, 0] * dx[k] * _DEG
            cp = math.cos(phi)
            sp = math.sin(phi)
            for m in range(3):
                col[m, k] = basis[m, 0] * cp + basis[m, 1] * sp

    cos_phi, sin_phi = shape[0], shape[1]
    inv_minor2, inv_r02 = shape[2], shape[3]
    a_buf = np.empty(_CHUNK)
    bn_buf = np.empty(_CHUNK)
    be_buf = np.empty(_CHUNK)
    z2 = np.empty(_CHUNK)
    values = np.empty(_CHUNK)
    work_f = np.empty(_CHUNK)
    poly = np.empty(_CHUNK)
    work_i = np.empty(_CHUNK, dtype=np.int64)
    scale = np.empty(_CHUNK, dtype=np.int64)
    scale2 = np.empty(_CHUNK, dtype=np.int64)
    acc = np.empty(nx)
    for j in range(ny):
        acc[:] = 0.0
        for sj in range(j * factor, (j + 1) * factor):
            if separable:
                theta = pix2img[1, 1] * dy[sj]
                ct = math.cos(theta * _DEG) if abs(theta) <= 90.0 else math.nan
                st = math.sin(theta * _DEG)
                ta = basis[0, 2] * st
                tn = basis[1, 2] * st
                te = basis[2, 2] * st
            for c0 in range(0, nsx, _CHUNK):
                n = min(_CHUNK, nsx - c0)
                # direction projections of the sub-pixels
                if separable:
                    for k in range(n):
                        a_buf[k] = ct * col[0, c0 + k] + ta
                        bn_buf[k] = ct * col[1, c0 + k] + tn
                        be_buf[k] = ct * col[2, c0 + k] + te
                else:
                    for k in range(n):
                        x = pix2img[0, 0] * dx[c0 + k] + pix2img[0, 1] * dy[sj]
                        y = pix2img[1, 0] * dx[c0 + k] + pix2img[1, 1] * dy[sj]
                        px, py, pz = _native_vector(proj, x, y)
                        a_buf[k] = basis[0, 0] * px + basis[0, 1] * py + basis[0, 2] * pz
                        bn_buf[k] = basis[1, 0] * px + basis[1, 1] * py + basis[1, 2] * pz
                        be_buf[k] = basis[2, 0] * px + basis[2, 1] * py + basis[2, 2] * pz
                # z ** 2 with the small-angle series; far or odd points counted
                n_far = 0
                for k in range(n):
                    a = a_buf[k]
                    bn = bn_buf[k]
                    be = be_buf[k]
                    u = sin_phi * bn - cos_phi * be
                    v = cos_phi * bn + sin_phi * be
                    t2 = (bn * bn + be * be) / (a * a)
                    q = 1.0 / 15.0 - t2 / 17.0
                    q = 1.0 / 13.0 - t2 * q
                    q = 1.0 / 11.0 - t2 * q
                    q = 1.0 / 9.0 - t2 * q
                    q = 1.0 / 7.0 - t2 * q
                    q = 1.0 / 5.0 - t2 * q
                    q = 1.0 / 3.0 - t2 * q
                    q = (1.0 - t2 * q) / a
                    z2[k] = q * q * (u * u * inv_minor2 + v * v * inv_r02)
                    n_far += (a <= 0.0) | (t2 > _SERIES_T2_MAX)
                if n_far > 0:
                    for k in range(n):
                        a = a_buf[k]
                        if a <= 0.0 or (bn_buf[k] ** 2 + be_buf[k] ** 2) > _SERIES_T2_MAX * a * a:
                            z2[k] = _z_squared(a, bn_buf[k], be_buf[k], shape)
                _brightness_block(
                    z2, n, shape[4], shape[5], values, work_f, work_i, poly, scale, scale2
                )
                for k in range(n):
                    acc[(c0 + k) // factor] += values[k]
        norm = inv_factor * inv_factor
        for i in range(nx):
            value = acc[i] * norm
            if use_weights:
                value *= weights[j, i]
            out[j, i] = value
    return out
