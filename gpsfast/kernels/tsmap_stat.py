"""The Cash statistic of one TS-map fit position, on its gathered elements (`gpsfast.kernels.tsmap`).

`_gather` collects the elements of a fit position (counts, background, model of
every pixel of the kernel window, plane by plane) into a per-thread workspace,
with the sums that do not depend on the norm; the statistic, its derivative,
the root bounds and the norm error of gammapy's default (Cython) fit statistics
are then evaluated on the workspace. The workspace layout (rows ``_PC`` ...
``_T3``, sums ``_S_FREE`` ... ``_POSITIVE_ZERO``) is shared with
`gpsfast.kernels.tsmap`.
"""
import math

import numpy as np
from numba import njit

from gpsfast.kernels.elementary import MANTISSA_BITS, ONE_BITS, TRUNCATION, log_of_parts

__all__ = ["LOG_TRUNCATION", "log_into", "log_truncated"]

LOG_TRUNCATION = math.log(float(np.float32(TRUNCATION)))
"""Logarithm used for truncated predicted counts (gammapy's Cython statistic takes it in single precision)."""

_FAST = {"reassoc"}
"""Numba fast-math flags of the vectorised loops: re-association only (no fused multiply-add, IEEE NaN and
infinity semantics are kept)."""


# rows of the per-thread workspace: elements with counts > 0 and model != 0 (PC, PB, PM, PL, PI: counts,
# background, model, log of the background, index in the window), without counts and with model != 0
# (QB, QM, QI), scratch rows (T1, T2, T3)
_PC, _PB, _PM, _PL, _PI, _QB, _QM, _QI, _T1, _T2, _T3 = range(11)
_WS_ROWS = 11
# the per-position sums returned by `_gather`
(_S_FREE, _NULL_ZERO, _NULL_MODEL, _S_COUNTS, _S_MODEL, _S_POSITIVE, _S_BACKGROUND, _S_MODEL_POSITIVE,
 _N_NONFINITE, _N_ZERO, _POSITIVE_ZERO) = range(11)


@njit(cache=True, nogil=True, error_model="numpy", fastmath=_FAST)
def log_into(values, out, scratch, n):
    """Natural logarithm of positive values, vectorised.

    `gpsfast.kernels.elementary.log_of_parts` on the mantissa and exponent bits
    of each value; within 2 ulp of the C library ``log``.

    Parameters
    ----------
    values : ndarray, shape (>= n,), float64
        Positive normal numbers or +inf.
    out : ndarray, shape (>= n,), float64
        Result (may not be ``values``).
    scratch : ndarray, shape (>= n,), float64
        Scratch space.
    n : int
        Number of values.
    """
    bits = values[:n].view(np.int64)
    mantissa_bits = scratch[:n].view(np.int64)
    for i in range(n):
        b = bits[i]
        mantissa_bits[i] = (b & MANTISSA_BITS) | ONE_BITS
        out[i] = np.float64(((b >> 52) & 0x7FF) - 1023)
    mantissa = scratch[:n]
    for i in range(n):
        result = log_of_parts(mantissa[i], out[i])
        out[i] = np.inf if values[i] == np.inf else result


@njit(cache=True, nogil=True, error_model="numpy")
def _gather(counts, background, log_background, exposure, pattern_id, window_pattern, pid_plane, kernels,
            k_offset, k_ny, k_nx, shape, y, x, ws):
    """Elements of the fit at pixel (y, x) and their sums that do not depend on the norm.

    The window of every plane around the pixel is read from the flattened (C
    order) maps of shape ``shape`` = ``(n_planes, ny, nx)`` (``pattern_id`` and
    ``window_pattern``: ``(n_maps, ny, nx)``, see `ts_map`); its elements with
    model != 0 are stored in the workspace, with counts > 0 (P rows) or not
    (Q rows); the elements with zero counts, background and model are dropped.

    Returns
    -------
    sizes : tuple
        Number of P and Q elements.
    consts : tuple
        Sums over the valid elements, indexed by the ``_S_*``, ``_NULL_*`` and
        ``_N_*`` constants (see `_element_sums`).
    """
    ny = shape[1]
    nx = shape[2]
    pc = ws[_PC]
    pb = ws[_PB]
    pm = ws[_PM]
    pl = ws[_PL]
    qb = ws[_QB]
    qm = ws[_QM]
    kernel_row = ws[_T1]
    n_p = 0
    n_q = 0
    # sums over the elements with model == 0: counts, positive counts, background, Cash terms, number
    zero_counts = 0.0
    zero_positive = 0.0
    zero_background = 0.0
    zero_null = 0.0
    n_zero = 0.0
    index = 0.0
    for p in range(shape[0]):
        ky = k_ny[p]
        kx = k_nx[p]
        y0 = y - ky // 2
        x0 = x - kx // 2
        size = ky * kx
        pid_map = pid_plane[p]
        # one kernel for the whole window unless its pixels have different mask patterns
        window = 0 if pid_map < 0 else window_pattern[(pid_map * ny + y) * nx + x]
        lookup = window < 0
        for dy in range(ky):
            row = (p * ny + y0 + dy) * nx + x0
            k_row = k_offset[p] + dy * kx
            if lookup:
                pid_row = (pid_map * ny + y0 + dy) * nx + x0
                for dx in range(kx):
                    kernel_row[dx] = kernels[k_row + pattern_id[pid_row + dx] * size + dx]
                values = kernel_row
                start = 0
            else:
                values = kernels
                start = k_row + window * size
            for dx in range(kx):
                index += 1.0
                ci = counts[row + dx]
                bi = background[row + dx]
                mi = values[start + dx] * exposure[row + dx]
                if mi == 0.0:
                    if ci != 0.0 or bi != 0.0:
                        c_positive = ci if ci > 0.0 else 0.0
                        zero_counts += ci
                        zero_positive += c_positive
                        zero_background += bi
                        if bi > TRUNCATION:
                            zero_null += bi - c_positive * log_background[row + dx]
                        else:
                            zero_null += TRUNCATION - c_positive * LOG_TRUNCATION
                        n_zero += 1.0
                    continue
                # branch-free: counts > 0 is a coin toss from one element to the next
                counted = ci > 0.0
                pc[n_p] = ci
                pb[n_p] = bi
                pm[n_p] = mi
                pl[n_p] = log_background[row + dx]
                ws[_PI, n_p] = index
                qb[n_q] = bi
                qm[n_q] = mi
                ws[_QI, n_q] = index
                n_p += counted
                n_q += not counted
    sizes = (n_p, n_q)
    return sizes, _element_sums(ws, sizes, zero_counts, zero_positive, zero_background, zero_null, n_zero)


@njit(cache=True, nogil=True, error_model="numpy", fastmath=_FAST)
def _element_sums(ws, sizes, zero_counts, zero_positive, zero_background, zero_null, n_zero):
    """Sums over the valid elements of a position that do not depend on the norm.

    Returns
    -------
    consts : tuple
        Indexed by the ``_S_*``, ``_NULL_*`` and ``_N_*`` constants: model of
        the elements with model > 0 and no counts; Cash terms at zero norm of
        the elements with model == 0, and != 0; counts; model; positive counts;
        ``background + 0 * model``; positive model; number of non-finite model
        values; number of elements with model == 0, and their positive counts.
    """
    n_p, n_q = sizes
    pc = ws[_PC]
    pb = ws[_PB]
    pm = ws[_PM]
    pl = ws[_PL]
    qb = ws[_QB]
    qm = ws[_QM]
    s_counts = zero_counts
    s_positive = zero_positive
    s_background = zero_background
    s_model = 0.0
    s_model_positive = 0.0
    s_free = 0.0
    null_model = 0.0
    n_nonfinite = 0.0
    for i in range(n_p):
        ci = pc[i]
        bi = pb[i]
        mi = pm[i]
        finite = abs(mi) < np.inf
        s_counts += ci
        s_positive += ci
        s_background += bi + 0.0 * mi
        s_model += mi
        s_model_positive += mi if mi > 0.0 else 0.0
        n_nonfinite += 0.0 if finite else 1.0
        null_model += bi - ci * pl[i] if (bi > TRUNCATION) & finite else TRUNCATION - ci * LOG_TRUNCATION
    for i in range(n_q):
        bi = qb[i]
        mi = qm[i]
        finite = abs(mi) < np.inf
        s_background += bi + 0.0 * mi
        s_model += mi
        s_model_positive += mi if mi > 0.0 else 0.0
        s_free += mi if mi > 0.0 else 0.0
        n_nonfinite += 0.0 if finite else 1.0
        null_model += bi if (bi > TRUNCATION) & finite else TRUNCATION
    return (s_free, zero_null, null_model, s_counts, s_model, s_positive, s_background, s_model_positive,
            n_nonfinite, n_zero, zero_positive)


@njit(cache=True, nogil=True, error_model="numpy", fastmath=_FAST)
def _cash_root(x, ws, n_p, s_free):
    """Derivative of the Cash statistic (``f_cash_root_cython``); ``s_free``: model of the elements without counts."""
    pc = ws[_PC]
    pb = ws[_PB]
    pm = ws[_PM]
    total = 0.0
    for i in range(n_p):
        total += pm[i] * (1.0 - pc[i] / (x * pm[i] + pb[i])) if pm[i] > 0.0 else 0.0
    return 2.0 * (s_free + total)


@njit(cache=True, nogil=True, error_model="numpy", fastmath=_FAST)
def _cash_terms(x, ws, sizes):
    """Sum of the Cash terms at a finite norm ``x`` of the elements with model != 0."""
    n_p, n_q = sizes
    pc = ws[_PC]
    pb = ws[_PB]
    pm = ws[_PM]
    qb = ws[_QB]
    qm = ws[_QM]
    npred = ws[_T1]
    logs = ws[_T2]
    for i in range(n_p):
        npr = pb[i] + x * pm[i]
        npred[i] = npr if npr > TRUNCATION else TRUNCATION
    log_into(npred, logs, ws[_T3], n_p)
    total = 0.0
    for i in range(n_p):
        total += npred[i] - pc[i] * (logs[i] if npred[i] > TRUNCATION else LOG_TRUNCATION)
    for i in range(n_q):
        npr = qb[i] + x * qm[i]
        total += npr if npr > TRUNCATION else TRUNCATION
    return total


@njit(cache=True, nogil=True, error_model="numpy")
def _cash_terms_nonfinite(x, ws, sizes, consts):
    """Cash statistic at an infinite or NaN norm (``x * 0`` is NaN: every model == 0 element is truncated)."""
    n_p, n_q = sizes
    total = consts[_N_ZERO] * TRUNCATION - consts[_POSITIVE_ZERO] * LOG_TRUNCATION
    for i in range(n_p):
        npr = ws[_PB, i] + x * ws[_PM, i]
        if npr > TRUNCATION:
            total += npr - ws[_PC, i] * math.log(npr)
        else:
            total += TRUNCATION - ws[_PC, i] * LOG_TRUNCATION
    for i in range(n_q):
        npr = ws[_QB, i] + x * ws[_QM, i]
        total += npr if npr > TRUNCATION else TRUNCATION
    return 2.0 * total


@njit(cache=True, nogil=True, error_model="numpy")
def _ordered_sums(x, ws, sizes):
    """Derivative of the Cash statistic at ``x`` and the positive model, summed in gammapy's element order.

    The P and Q elements are merged back by their window index, so both sums are
    the sequential sums of ``f_cash_root_cython`` and ``norm_bounds_cython``.
    """
    n_p, n_q = sizes
    i = 0
    j = 0
    total = 0.0
    s_model = 0.0
    while i < n_p or j < n_q:
        if j >= n_q or (i < n_p and ws[_PI, i] < ws[_QI, j]):
            mi = ws[_PM, i]
            if mi > 0.0:
                s_model += mi
                total += mi * (1.0 - ws[_PC, i] / (x * mi + ws[_PB, i]))
            i += 1
        else:
            mi = ws[_QM, j]
            if mi > 0.0:
                s_model += mi
                total += mi
            j += 1
    return 2.0 * total, s_model


@njit(cache=True, nogil=True, error_model="numpy")
def _stat(x, ws, sizes, consts):
    """Cash statistic at norm ``x``."""
    if math.isinf(x) or math.isnan(x):
        return _cash_terms_nonfinite(x, ws, sizes, consts)
    if x == 0.0:
        return 2.0 * (consts[_NULL_ZERO] + consts[_NULL_MODEL])
    return 2.0 * (consts[_NULL_ZERO] + _cash_terms(x, ws, sizes))


@njit(cache=True, nogil=True, error_model="numpy", fastmath=_FAST)
def _ratios(num, den, out, n):
    """``num / den`` where ``den > 0``, +inf elsewhere."""
    for i in range(n):
        out[i] = num[i] / den[i] if den[i] > 0.0 else np.inf


@njit(cache=True, nogil=True, error_model="numpy")
def _norm_bounds(ws, sizes, consts):
    """Root bounds of ``norm_bounds_cython``.

    Returns
    -------
    bounds : tuple
        ``(norm_min, norm_max, norm_min_total, degenerate)``; ``degenerate``
        when all elements with counts and model > 0 have the same background
        to model ratio (one such element, typically): the root is then on a
        bound, where the sign of the derivative is rounding noise, and the
        bounds and derivative are summed in gammapy's order.
    """
    n_p, n_q = sizes
    ratio = ws[_T1]
    _ratios(ws[_PB], ws[_PM], ratio, n_p)
    sn_min = 1e14
    sn_max = -np.inf
    c_min = 1.0
    for i in range(n_p):
        if ratio[i] < sn_min:
            sn_min = ratio[i]
            c_min = ws[_PC, i]
        if ratio[i] < np.inf:
            sn_max = ratio[i] if ratio[i] > sn_max else sn_max
    sn_min_total = sn_min
    _ratios(ws[_QB], ws[_QM], ratio, n_q)
    for i in range(n_q):
        sn_min_total = ratio[i] if ratio[i] < sn_min_total else sn_min_total
    degenerate = sn_max - sn_min <= 1e-12 * abs(sn_min)
    s_model = _ordered_sums(0.0, ws, sizes)[1] if degenerate else consts[_S_MODEL_POSITIVE]
    return c_min / s_model - sn_min, consts[_S_POSITIVE] / s_model - sn_min, -sn_min_total, degenerate


@njit(cache=True, nogil=True, error_model="numpy", fastmath=_FAST)
def _norm_err(norm, n_sigma, ws, n_p, n_nonfinite):
    """``sqrt(1 / d2) * n_sigma`` with d2 the second derivative of the Cash statistic.

    Only the elements with counts > 0 and model != 0 contribute, except that a
    non-finite model value anywhere makes d2 NaN (``0 * inf`` in NumPy).
    """
    if n_nonfinite > 0.0:
        return np.nan
    pc = ws[_PC]
    pb = ws[_PB]
    pm = ws[_PM]
    total = 0.0
    for i in range(n_p):
        bottom = pb[i] + norm * pm[i]
        bottom = bottom * bottom
        total += (pm[i] * pm[i] * pc[i]) / bottom if bottom != 0.0 else 0.0
    return math.sqrt(1.0 / total) * n_sigma


@njit(cache=True, nogil=True)
def log_truncated(background):
    """``log(b)`` where ``b > TRUNCATION``, else ``LOG_TRUNCATION``.

    Parameters
    ----------
    background : ndarray, shape (n_planes, ny, nx), float64

    Returns
    -------
    log_background : ndarray, same shape, float64
    """
    out = np.empty_like(background)
    flat_in = background.reshape(-1)
    flat_out = out.reshape(-1)
    for i in range(flat_in.shape[0]):
        v = flat_in[i]
        flat_out[i] = math.log(v) if v > TRUNCATION else LOG_TRUNCATION
    return flat_out.reshape(background.shape)
