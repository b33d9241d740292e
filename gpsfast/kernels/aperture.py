"""Disk sums of a cube: at many positions, or as a masked full-map correlation.

A cube is a ``(n_energy, ny, nx)`` array; a mask is a boolean ``(n_mask, ny, nx)``
array with ``n_mask`` either ``n_energy`` or 1 (one spatial mask for every energy
plane). Pixel ``(i, j)`` (column, row) has its centre at pixel coordinates
``(i, j)``, as in gammapy and astropy (origin 0).

Membership follows ``regions``: a pixel is inside a circle of pixel radius ``r``
centred on ``(cx, cy)`` when ``hypot(i - cx, j - cy) < r`` (strictly), computed
in float64 with the C library ``hypot`` that NumPy also uses, so that pixel
membership is bit-for-bit the one of ``CirclePixelRegion.contains``.
"""
import math

import numpy as np
from numba import njit, types
from numba.extending import intrinsic, overload

__all__ = [
    "aperture_pixels",
    "aperture_sums",
    "correlate_masked",
    "disk_weights",
    "pixel_sums",
]


@njit(cache=True, nogil=True)
def _inside(dx, dy, d2, r):
    """``hypot(dx, dy) < r``, calling ``hypot`` only near the boundary.

    ``d2 = dx * dx + dy * dy`` is within a few ulp of the exact squared
    distance, so outside a relative band of 1e-12 around ``r**2`` the
    comparison is decided without it; inside the band the C ``hypot`` decides,
    as in ``regions``.
    """
    rr = r * r
    if d2 < rr * (1.0 - 1e-12):
        return True
    if d2 > rr * (1.0 + 1e-12):
        return False
    return math.hypot(dx, dy) < r


@njit(cache=True, nogil=True)
def aperture_sums(cube, mask, cx, cy, r, x_lo, y_lo, x_hi, y_hi):
    """Sums of a cube in disks around many positions.

    Only pixels inside the window ``[x_lo, x_hi) x [y_lo, y_hi)`` of the cube
    count; the disk centre ``(cx, cy)`` is given relative to the window
    origin, i.e. pixel ``(i, j)`` of the cube is at distance
    ``hypot((i - x_lo) - cx, (j - y_lo) - cy)`` from the centre. (gammapy decides
    region membership on a cutout, whose pixel grid starts at the window origin.)

    Parameters
    ----------
    cube : ndarray, shape (n_energy, ny, nx)
        Data: float32 or float64, or the unsigned-integer view of byte-swapped
        floats (see `pixel_sums`). Non-finite values propagate into the sums of
        the disks that select them.
    mask : ndarray, shape (n_mask, ny, nx), bool
        Pixels to use; ``n_mask`` is ``n_energy`` or 1.
    cx, cy : ndarray, shape (n,), float64
        Disk centres in window pixel coordinates.
    r : ndarray, shape (n,), float64
        Disk radii in pixels.
    x_lo, y_lo, x_hi, y_hi : ndarray, shape (n,), int64
        Windows, clipped to the cube by the kernel.

    Returns
    -------
    sums : ndarray, shape (n, n_energy), float64
        Sum of ``cube`` over the disk pixels with ``mask`` true.
    norm : ndarray, shape (n, n_energy), float64
        Number of disk pixels with ``mask`` true.
    norm_all : ndarray, shape (n,), float64
        Number of disk pixels, masked or not.

    Notes
    -----
    `aperture_pixels` then `pixel_sums`: to sum several cubes on the same
    disks, call those two directly and list the disk pixels once.
    """
    _, ny, nx = cube.shape
    pix, start, stop, norm_all = aperture_pixels(ny, nx, cx, cy, r, x_lo, y_lo, x_hi, y_hi)
    sums, norm = pixel_sums(cube, mask, pix, start, stop)
    return sums, norm, norm_all


@njit(cache=True, nogil=True)
def aperture_pixels(ny, nx, cx, cy, r, x_lo, y_lo, x_hi, y_hi):
    """Pixels of disks around many positions on a ``(ny, nx)`` image.

    Parameters are those of `aperture_sums` (disks, windows).

    Returns
    -------
    pix : ndarray, shape (m,), int64
        Flat pixel index ``j * nx + i`` of the disk pixels, disk after disk,
        each in row-major order.
    start, stop : ndarray, shape (n,), int64
        Disk ``s`` is ``pix[start[s]:stop[s]]``.
    norm_all : ndarray, shape (n,), float64
        Number of pixels of each disk.
    """
    n = cx.shape[0]
    start = np.zeros(n + 1, dtype=np.int64)
    box = np.zeros((n, 4), dtype=np.int64)
    for s in range(n):
        # bounding box of the disk (1 pixel margin), inside the window
        box[s, 0] = max(x_lo[s], max(0, x_lo[s] + int(math.floor(cx[s] - r[s])) - 1))
        box[s, 1] = min(x_hi[s], min(nx, x_lo[s] + int(math.ceil(cx[s] + r[s])) + 2))
        box[s, 2] = max(y_lo[s], max(0, y_lo[s] + int(math.floor(cy[s] - r[s])) - 1))
        box[s, 3] = min(y_hi[s], min(ny, y_lo[s] + int(math.ceil(cy[s] + r[s])) + 2))
        size = max(0, box[s, 1] - box[s, 0]) * max(0, box[s, 3] - box[s, 2])
        start[s + 1] = start[s] + size
    pix = np.empty(start[n], dtype=np.int64)
    stop = start[:n].copy()
    norm_all = np.zeros(n, dtype=np.float64)
    for s in range(n):
        m = start[s]
        for j in range(box[s, 2], box[s, 3]):
            dy = float(j - y_lo[s]) - cy[s]
            for i in range(box[s, 0], box[s, 1]):
                dx = float(i - x_lo[s]) - cx[s]
                if _inside(dx, dy, dx * dx + dy * dy, r[s]):
                    pix[m] = j * nx + i
                    m += 1
        stop[s] = m
        norm_all[s] = m - start[s]
    return pix, start[:n].copy(), stop, norm_all


@njit(cache=True, nogil=True)
def pixel_sums(cube, mask, pix, start, stop):
    """Sums of every energy plane of a cube over lists of pixels.

    Parameters
    ----------
    cube : ndarray, shape (n_energy, ny, nx)
        float32 or float64 data; or, for floats stored in the non-native byte
        order (FITS data are big-endian), their raw bytes viewed as native
        uint32 or uint64 (``data.view(np.uint32)``): the values read are
        byte-swapped back, so that no swapped copy of the cube is needed.
    mask : ndarray, shape (n_mask, ny, nx), bool
        Pixels to use; ``n_mask`` is ``n_energy`` or 1.
    pix, start, stop : ndarray
        Pixel lists, as returned by `aperture_pixels`.

    Returns
    -------
    sums : ndarray, shape (n, n_energy), float64
        Sum of ``cube`` over the listed pixels with ``mask`` true, in list order.
    norm : ndarray, shape (n, n_energy), float64
        Number of listed pixels with ``mask`` true.
    """
    n_energy = cube.shape[0]
    n_mask = mask.shape[0]
    # flat planes (a view of C-contiguous arrays, else a contiguous copy)
    flat = np.ascontiguousarray(cube).reshape(n_energy, cube.shape[1] * cube.shape[2])
    flat_mask = np.ascontiguousarray(mask).reshape(n_mask, mask.shape[1] * mask.shape[2])
    n = start.shape[0]
    sums = np.zeros((n, n_energy), dtype=np.float64)
    norm = np.zeros((n, n_energy), dtype=np.float64)
    # pixel after pixel, all energies at once: the sums of the energies are
    # independent chains of additions, which the processor overlaps; each sum
    # still adds its pixels in list order
    acc = np.zeros(n_energy, dtype=np.float64)
    count = np.zeros(n_energy, dtype=np.float64)
    for s in range(n):
        acc[:] = 0.0
        count[:] = 0.0
        for k in range(start[s], stop[s]):
            p = pix[k]
            if n_mask == 1:
                if flat_mask[0, p]:
                    for e in range(n_energy):
                        acc[e] += _value(flat[e, p])
                        count[e] += 1.0
            else:
                for e in range(n_energy):
                    if flat_mask[e, p]:
                        acc[e] += _value(flat[e, p])
                        count[e] += 1.0
        sums[s] = acc
        norm[s] = count
    return sums, norm


@intrinsic
def _swapped_float(typingctx, raw):
    """The float whose bytes are those of the unsigned integer ``raw``, reversed."""
    if raw not in (types.uint32, types.uint64):
        return None
    out = types.float32 if raw.bitwidth == 32 else types.float64

    def codegen(context, builder, signature, args):
        swapped = builder.bswap(args[0])
        return builder.bitcast(swapped, context.get_value_type(out))

    return out(raw), codegen


def _value(x):
    """A cube element as a float (`pixel_sums`)."""


@overload(_value, jit_options={"cache": True})
def _value_overload(x):
    if isinstance(x, types.Float):
        return lambda x: x
    if x in (types.uint32, types.uint64):
        return lambda x: _swapped_float(x)
    return None


@njit(cache=True, nogil=True)
def _weight_runs(weights):
    """Split each row of a 2D weight array into runs of equal non-zero values.

    Returns an ``(n_runs, 4)`` float64 array of ``(row, start, stop, value)``
    with ``stop`` exclusive.
    """
    ky, kx = weights.shape
    runs = np.empty((ky * kx, 4), dtype=np.float64)
    n = 0
    for r in range(ky):
        c = 0
        while c < kx:
            v = weights[r, c]
            if v == 0.0:
                c += 1
                continue
            start = c
            while c < kx and weights[r, c] == v:
                c += 1
            runs[n, 0] = r
            runs[n, 1] = start
            runs[n, 2] = c
            runs[n, 3] = v
            n += 1
    return runs[:n]


@njit(cache=True, nogil=True)
def correlate_masked(cube, mask, weights):
    """Correlate every energy plane of a cube with a 2D weight array, honouring a mask.

    ``out[e, y, x] = sum(weights[a, b] * cube[e, y + a - ca, x + b - cb])`` over
    the kernel pixels that fall inside the map and have ``mask`` true, with
    ``(ca, cb) = (ky // 2, kx // 2)`` the kernel centre (the correlation of
    ``scipy.ndimage.correlate`` with zero padding outside the map). Each kernel
    row is split into runs of equal weight, each summed in constant time from
    row prefix sums, so a top-hat (disk) kernel costs one operation per kernel
    row and output pixel. The prefix sums are padded (zero rows above and
    below the map, constant columns left and right), so that map edges need no
    special case and the loop over the pixels of a row vectorises.

    Parameters
    ----------
    cube : ndarray, shape (n_energy, ny, nx), float
        Data.
    mask : ndarray, shape (n_mask, ny, nx), bool
        Pixels to use; ``n_mask`` is ``n_energy`` or 1.
    weights : ndarray, shape (ky, kx), float64
        Kernel, odd sizes, centred on ``(ky // 2, kx // 2)``.

    Returns
    -------
    out : ndarray, shape (n_energy, ny, nx), float64
        Correlated cube. An output pixel whose kernel footprint contains a
        non-finite value of ``cube`` (with ``mask`` true) is NaN.
    """
    n_energy, ny, nx = cube.shape
    n_mask = mask.shape[0]
    runs = _weight_runs(weights)
    n_runs = runs.shape[0]
    # run offsets relative to the output pixel
    ca = weights.shape[0] // 2
    cb = weights.shape[1] // 2
    dr = np.empty(n_runs, dtype=np.int64)
    da = np.empty(n_runs, dtype=np.int64)
    db = np.empty(n_runs, dtype=np.int64)
    for k in range(n_runs):
        dr[k] = int(runs[k, 0]) - ca
        da[k] = int(runs[k, 1]) - cb
        db[k] = int(runs[k, 2]) - cb
    pad_y = 0
    pad_x = 0
    if n_runs > 0:
        pad_y = max(0, max(-dr.min(), dr.max()))
        pad_x = max(0, max(-da.min(), db.max()))
    prefix = np.zeros((ny + 2 * pad_y, nx + 1 + 2 * pad_x), dtype=np.float64)
    n_bad = np.zeros((ny + 2 * pad_y, nx + 1 + 2 * pad_x), dtype=np.int64)
    out = np.zeros((n_energy, ny, nx), dtype=np.float64)
    for e in range(n_energy):
        any_bad = _padded_prefix(cube[e], mask[min(np.int64(e), n_mask - 1)], pad_y, pad_x,
                                 prefix, n_bad)
        _correlate_plane(prefix, runs[:, 3], dr + pad_y, da + pad_x, db + pad_x, out[e])
        if any_bad:
            _flag_bad(n_bad, dr + pad_y, da + pad_x, db + pad_x, out[e])
    return out


@njit(cache=True, nogil=True)
def _padded_prefix(plane, mask, pad_y, pad_x, prefix, n_bad):
    """Row prefix sums of the finite masked values and counts of the non-finite ones.

    Row ``j`` of the plane goes to row ``j + pad_y``; column ``i + 1 + pad_x``
    holds the sum over columns ``< i + 1``. The padding rows stay zero, the
    left padding columns zero and the right ones equal to the row total.
    Returns whether any masked value is non-finite.
    """
    ny, nx = plane.shape
    width = prefix.shape[1]
    any_bad = False
    for j in range(ny):
        acc = 0.0
        bad = 0
        prow = prefix[j + pad_y]
        brow = n_bad[j + pad_y]
        for i in range(nx):
            if mask[j, i]:
                v = plane[j, i]
                if math.isfinite(v):
                    acc += v
                else:
                    bad += 1
                    any_bad = True
            prow[pad_x + i + 1] = acc
            brow[pad_x + i + 1] = bad
        for i in range(pad_x + nx + 1, width):
            prow[i] = acc
            brow[i] = bad
    return any_bad


@njit(cache=True, nogil=True)
def _correlate_plane(prefix, weight, row, start, stop, out):
    """Add ``weight[k] * (prefix[y + row[k], x + stop[k]] - prefix[y + row[k], x + start[k]])``.

    The rows and columns of padded prefix sums are slices, so that the inner
    loop has non-negative indices only (no wrap-around test, it vectorises).
    """
    ny, nx = out.shape
    for y in range(ny):
        row_out = out[y]
        for k in range(weight.shape[0]):
            r = y + row[k]
            hi = prefix[r, stop[k]:stop[k] + nx]
            lo = prefix[r, start[k]:start[k] + nx]
            w = weight[k]
            for x in range(nx):
                row_out[x] += w * (hi[x] - lo[x])


@njit(cache=True, nogil=True)
def _flag_bad(n_bad, row, start, stop, out):
    """Set to NaN the output pixels whose footprint holds a non-finite value."""
    ny, nx = out.shape
    for y in range(ny):
        for x in range(nx):
            for k in range(row.shape[0]):
                brow = n_bad[y + row[k]]
                if brow[x + stop[k]] != brow[x + start[k]]:
                    out[y, x] = np.nan
                    break


@njit(cache=True, nogil=True)
def disk_weights(radius):
    """Top-hat kernel of a disk of pixel radius ``radius`` centred on a pixel.

    Pixel ``(a, b)`` of the returned ``(2n + 1, 2n + 1)`` array is 1 where
    ``hypot(b - n, a - n) < radius`` (the `aperture_sums` and ``regions``
    membership for a centre on a pixel centre), else 0.
    """
    n = max(0, int(math.ceil(radius)) - 1)
    size = 2 * n + 1
    out = np.zeros((size, size), dtype=np.float64)
    for a in range(size):
        for b in range(size):
            dx = float(b - n)
            dy = float(a - n)
            if _inside(dx, dy, dx * dx + dy * dy, radius):
                out[a, b] = 1.0
    return out
