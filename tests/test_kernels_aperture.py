"""Tests of gpsfast.kernels.aperture against plain NumPy / SciPy / regions references."""
import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal
from regions import CirclePixelRegion, PixCoord
from scipy import ndimage

from gpsfast.kernels.aperture import (
    aperture_pixels,
    aperture_sums,
    correlate_masked,
    disk_weights,
    pixel_sums,
)


def _reference(cube, mask, cx, cy, r, win):
    """Plain NumPy disk sums over the whole cube."""
    n_energy, ny, nx = cube.shape
    jj, ii = np.mgrid[:ny, :nx]
    x_lo, y_lo, x_hi, y_hi = win
    d = np.hypot((ii - x_lo) - cx, (jj - y_lo) - cy)
    inside = (ii >= x_lo) & (ii < x_hi) & (jj >= y_lo) & (jj < y_hi) & (d < r)
    sel = np.broadcast_to(mask, cube.shape) & inside
    sums = np.array([np.sum(cube[e][sel[e]], dtype=np.float64) for e in range(n_energy)])
    norm = np.array([np.sum(sel[e]) for e in range(n_energy)])
    return sums, norm, inside.sum()


def _run(cube, mask, cx, cy, r, win):
    f = np.float64
    i = np.int64
    return aperture_sums(
        cube, mask, np.array([cx], f), np.array([cy], f), np.array([r], f), np.array([win[0]], i),
        np.array([win[1]], i), np.array([win[2]], i), np.array([win[3]], i),
    )


@pytest.fixture(scope="module")
def cube():
    rng = np.random.default_rng(42)
    return rng.uniform(0, 5, size=(3, 41, 37)).astype(np.float32)


def test_aperture_sums_matches_numpy(cube):
    rng = np.random.default_rng(1)
    mask = rng.random(cube.shape) > 0.3
    for _ in range(25):
        cx, cy = rng.uniform(-3, 40), rng.uniform(-3, 44)
        r = rng.uniform(0.3, 12)
        win = (int(rng.integers(-2, 10)), int(rng.integers(-2, 10)), int(rng.integers(20, 40)),
               int(rng.integers(20, 45)))
        sums, norm, norm_all = _run(cube, mask, cx, cy, r, win)
        ref = _reference(cube, mask, cx, cy, r, win)
        assert_allclose(sums[0], ref[0], rtol=1e-12, atol=1e-9)
        assert_allclose(norm[0], ref[1], rtol=1e-12, atol=1e-12)
        assert_allclose(norm_all[0], ref[2], rtol=1e-12, atol=1e-12)


def test_aperture_membership_is_regions_membership():
    """Pixel-centred apertures with integer radii: the boundary case."""
    ny, nx = 50, 60
    ones = np.ones((1, ny, nx))
    mask = np.ones((1, ny, nx), bool)
    jj, ii = np.mgrid[:ny, :nx]
    pix = PixCoord(ii, jj)
    rng = np.random.default_rng(3)
    for _ in range(40):
        cx = float(rng.integers(15, 45)) + rng.choice([0.0, 0.5, 1e-13, -1e-13])
        cy = float(rng.integers(15, 35)) + rng.choice([0.0, 0.5, 1e-13, -1e-13])
        r = float(rng.integers(1, 14)) + rng.choice([0.0, 1e-12, -1e-12, np.sqrt(2) - 1])
        ref = CirclePixelRegion(PixCoord(cx, cy), r).contains(pix)
        _, norm, norm_all = _run(ones, mask, cx, cy, r, (0, 0, nx, ny))
        assert norm_all[0] == norm[0, 0] == ref.sum()


def test_aperture_sums_nan_and_empty():
    cube = np.ones((2, 10, 10), np.float32)
    cube[1, 5, 5] = np.nan
    mask = np.ones((1, 10, 10), bool)
    sums, norm, _ = _run(cube, mask, 5.0, 5.0, 1.5, (0, 0, 10, 10))
    assert sums[0, 0] == 9 and np.isnan(sums[0, 1])
    # the NaN pixel masked out: no NaN
    mask2 = np.ones((2, 10, 10), bool)
    mask2[1, 5, 5] = False
    sums, norm, _ = _run(cube, mask2, 5.0, 5.0, 1.5, (0, 0, 10, 10))
    assert_array_equal(sums[0], [9, 8])
    assert_array_equal(norm[0], [9, 8])
    # an aperture with no pixel centre inside
    sums, norm, norm_all = _run(cube, mask, 5.5, 5.5, 0.5, (0, 0, 10, 10))
    assert sums[0, 0] == 0 and norm_all[0] == 0
    # an aperture outside the cube
    sums, norm, norm_all = _run(cube, mask, 30.0, 5.0, 3.0, (0, 0, 10, 10))
    assert norm_all[0] == 0


@pytest.mark.parametrize("radius", [0.7, 1.0, 2.0, 3.3, 6.0])
def test_disk_weights_is_regions_disk(radius):
    w = disk_weights(radius)
    n = w.shape[0] // 2
    jj, ii = np.mgrid[: 2 * n + 3, : 2 * n + 3]
    ref = CirclePixelRegion(PixCoord(n + 1, n + 1), radius).contains(PixCoord(ii, jj))
    assert ref[0].sum() == 0 and ref[-1].sum() == 0  # nothing cut away
    assert_array_equal(w, ref[1:-1, 1:-1].astype(float))


@pytest.mark.parametrize("n_mask", [1, 3])
def test_correlate_masked_matches_scipy(cube, n_mask):
    rng = np.random.default_rng(5)
    mask = rng.random((n_mask,) + cube.shape[1:]) > 0.2
    gauss = np.exp(-0.5 * (np.hypot(*np.mgrid[-3:4, -3:4]) / 1.5) ** 2)
    for weights in [disk_weights(4.0), disk_weights(1.0), gauss, rng.uniform(size=(3, 5))]:
        out = correlate_masked(cube, mask, weights)
        data = np.where(np.broadcast_to(mask, cube.shape), cube, 0).astype(float)
        ref = np.stack([ndimage.correlate(p, weights, mode="constant", cval=0.0) for p in data])
        assert_allclose(out, ref, rtol=1e-10, atol=1e-9)


def test_correlate_masked_counts_exact_and_nan():
    rng = np.random.default_rng(6)
    counts = rng.poisson(3.0, size=(2, 30, 31)).astype(np.float32)
    mask = np.ones((1, 30, 31), bool)
    w = disk_weights(5.0)
    out = correlate_masked(counts, mask, w)
    ref = np.stack([ndimage.correlate(p.astype(np.int64), w.astype(np.int64), mode="constant")
                    for p in counts])
    assert_array_equal(out, ref)
    counts[0, 10, 10] = np.nan
    out = correlate_masked(counts, mask, w)
    jj, ii = np.mgrid[:30, :31]
    near = np.hypot(ii - 10, jj - 10) < 5.0
    assert np.all(np.isnan(out[0][near])) and np.all(np.isfinite(out[0][~near]))
    assert np.all(np.isfinite(out[1]))
    mask[0, 10, 10] = False
    assert np.all(np.isfinite(correlate_masked(counts, mask, w)))


@pytest.mark.parametrize("weights", [disk_weights(20.0), np.zeros((3, 3)), np.ones((1, 1))])
def test_correlate_masked_kernel_larger_than_map_or_empty(weights):
    rng = np.random.default_rng(5)
    cube = rng.poisson(3.0, size=(3, 5, 7)).astype(float)
    mask = np.ones((1, 5, 7), dtype=bool)
    out = correlate_masked(cube, mask, np.ascontiguousarray(weights, dtype=np.float64))
    ref = np.stack([ndimage.correlate(p, weights, mode="constant", cval=0.0) for p in cube])
    np.testing.assert_allclose(out, ref, rtol=1e-12, atol=1e-12)


def _apertures(rng, n, ny, nx):
    cx, cy = rng.uniform(-2, nx + 1, n), rng.uniform(-2, ny + 1, n)
    r = rng.uniform(0.3, 9, n)
    lo = rng.integers(-2, 6, (2, n))
    hi = np.stack([rng.integers(nx - 6, nx + 3, n), rng.integers(ny - 6, ny + 3, n)])
    return (cx, cy, r, lo[0], lo[1], hi[0], hi[1])


def test_aperture_pixels_are_the_aperture():
    """Pixel lists: the pixels of each disk, in row-major order."""
    rng = np.random.default_rng(11)
    ny, nx = 23, 29
    args = _apertures(rng, 12, ny, nx)
    pix, start, stop, norm_all = aperture_pixels(ny, nx, *args)
    for s in range(12):
        cx, cy, r, x_lo, y_lo, x_hi, y_hi = (a[s] for a in args)
        listed = pix[start[s]:stop[s]]
        assert np.all(np.diff(listed) > 0)  # row-major, no duplicate
        assert norm_all[s] == len(listed)
        # the same pixels as the reference
        jj, ii = np.divmod(np.arange(ny * nx), nx)
        d = np.hypot((ii - x_lo) - cx, (jj - y_lo) - cy)
        inside = (d < r) & (ii >= x_lo) & (ii < x_hi) & (jj >= y_lo) & (jj < y_hi)
        assert_array_equal(listed, np.flatnonzero(inside))
    assert norm_all.sum() > 0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n_mask", [1, 4])
def test_pixel_sums_byteswapped_and_in_list_order(dtype, n_mask):
    """Big-endian floats (FITS data) read through their unsigned-integer view give
    the same sums as the native array, bit for bit, including NaN, infinities,
    subnormals and negative zeros; each sum adds its pixels in list order."""
    rng = np.random.default_rng(12)
    ny, nx = 19, 21
    cube = rng.normal(0, 3, (4, ny, nx)).astype(dtype)
    cube[0, 9, 10] = np.nan
    cube[1, 9, 11] = np.inf
    cube[2, 8, 10] = np.finfo(dtype).smallest_subnormal
    cube[3, 10, 10] = -0.0
    mask = rng.random((n_mask, ny, nx)) > 0.2
    args = _apertures(rng, 15, ny, nx)
    pix, start, stop, _ = aperture_pixels(ny, nx, *args)
    native = pixel_sums(cube, mask, pix, start, stop)
    big = cube.astype(cube.dtype.newbyteorder(">"))
    raw = big.view(np.uint32 if dtype == np.float32 else np.uint64)
    swapped = pixel_sums(raw, mask, pix, start, stop)
    for a, b in zip(native, swapped):
        assert_array_equal(a, b)
    assert np.isnan(native[0]).any()  # the NaN pixel is in an aperture: the test is not empty
    for s in range(15):
        for e in range(4):
            acc = count = 0.0
            for k in range(start[s], stop[s]):
                if mask[min(e, n_mask - 1)].ravel()[pix[k]]:
                    acc += float(cube[e].ravel()[pix[k]])
                    count += 1
            assert_array_equal(native[0][s, e], acc)
            assert native[1][s, e] == count


def test_aperture_sums_is_pixels_then_sums():
    rng = np.random.default_rng(13)
    cube = rng.uniform(0, 5, (3, 17, 18))
    mask = rng.random((1, 17, 18)) > 0.3
    args = _apertures(rng, 9, 17, 18)
    whole = aperture_sums(cube, mask, *args)
    pix, start, stop, norm_all = aperture_pixels(17, 18, *args)
    parts = pixel_sums(cube, mask, pix, start, stop) + (norm_all,)
    for a, b in zip(whole, parts):
        assert_array_equal(a, b)


def test_pixel_sums_non_contiguous_inputs():
    """Strided views (e.g. a sub-grid of a map) give the sums of their contiguous copies."""
    rng = np.random.default_rng(14)
    big = rng.uniform(0, 5, (3, 20, 36))
    cube = big[:, :, ::2]
    mask = (rng.random((3, 20, 36)) > 0.3)[:, :, ::2]
    args = _apertures(rng, 7, 20, 18)
    pix, start, stop, _ = aperture_pixels(20, 18, *args)
    strided = pixel_sums(cube, mask, pix, start, stop)
    copied = pixel_sums(np.ascontiguousarray(cube), np.ascontiguousarray(mask), pix, start, stop)
    for a, b in zip(strided, copied):
        assert_array_equal(a, b)
    assert np.any(strided[1] > 0)
