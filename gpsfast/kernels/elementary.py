"""Scalar building blocks shared by the kernels.

- `TRUNCATION` and `truncated`: gammapy's truncation of the predicted counts in
  the Cash statistic (`gpsfast.kernels.cash`, `gpsfast.kernels.plfit`,
  `gpsfast.kernels.tsmap`);
- `power_law_integral`: gammapy's analytic integral of a power law over one
  energy bin (`gpsfast.kernels.npred`, `gpsfast.kernels.plfit`);
- `log_of_parts`: the natural logarithm from the mantissa and exponent of a
  float, a polynomial without library calls that the compiler vectorises inside
  loops (`gpsfast.kernels.tsmap.log_into`, `gpsfast.kernels.sersic`).

Numba's on-disk cache does not see changes of this module in the kernels that
use it: after editing it, delete the cached ``gpsfast/kernels/__pycache__/*.nbi``
and ``*.nbc`` files.
"""
import math
from decimal import Decimal, localcontext

import numpy as np
from numba import njit

__all__ = ["LN2_HI", "LN2_LO", "MANTISSA_BITS", "ONE_BITS", "TRUNCATION", "log_of_parts", "power_law_integral",
           "truncated"]

TRUNCATION = 1e-25
"""Predicted counts below this are replaced by it in the Cash statistic (gammapy's ``TRUNCATION_VALUE``)."""

# log(2) split in a high part with 21 trailing zero bits (exact products with exponents) and the rest
with localcontext() as _context:
    _context.prec = 40
    _LN2 = Decimal(2).ln()
    LN2_HI = float((np.array([float(_LN2)]).view(np.int64) & ~((1 << 21) - 1)).view(np.float64)[0])
    LN2_LO = float(_LN2 - Decimal(LN2_HI))
_SQRT2 = math.sqrt(2.0)
MANTISSA_BITS = (1 << 52) - 1
"""Mask of the mantissa bits of a float64."""
ONE_BITS = 1023 << 52
"""Exponent bits of 1.0: ``(bits & MANTISSA_BITS) | ONE_BITS`` is the mantissa as a float in [1, 2)."""


@njit(inline="always")
def truncated(mu):
    """``mu`` where ``mu > TRUNCATION``, else `TRUNCATION` (NaN included)."""
    return mu if mu > TRUNCATION else TRUNCATION


@njit(cache=True, nogil=True, error_model="numpy")
def power_law_integral(energy_min, energy_max, index, amplitude, reference):
    """gammapy's ``PowerLawSpectralModel.evaluate_integral`` for one interval.

    ``amplitude (E / reference) ** -index`` integrated from ``energy_min`` to
    ``energy_max`` (energies and ``reference`` in one unit): the logarithm where
    ``|1 - index| <= 1e-8`` (NumPy's ``isclose`` to 0), else the power law.
    """
    val = -1.0 * index + 1.0
    # np.isclose(val, 0): |val| <= 1e-8
    if abs(val) <= 1e-8:
        return amplitude * reference * math.log(energy_max / energy_min)
    prefactor = amplitude * reference / val
    upper = (energy_max / reference) ** val
    lower = (energy_min / reference) ** val
    return prefactor * (upper - lower)


@njit(inline="always")
def log_of_parts(mantissa, exponent):
    """Natural logarithm of ``mantissa * 2 ** exponent`` for a mantissa in [1, 2) (within 2 ulp of ``log``).

    ``log(m 2**e) = e log(2) + 2 atanh((m - 1) / (m + 1))`` with ``m`` brought
    into ``[sqrt(2) / 2, sqrt(2)]`` and the atanh series to 11 terms. Inlined
    into the calling loop (no call, vectorisable); ``exponent`` is a float.
    """
    big = mantissa > _SQRT2
    m = mantissa * 0.5 if big else mantissa
    e = exponent + 1.0 if big else exponent
    f = m - 1.0
    s = f / (2.0 + f)
    z = s * s
    p = 1.0 / 23.0
    p = p * z + 1.0 / 21.0
    p = p * z + 1.0 / 19.0
    p = p * z + 1.0 / 17.0
    p = p * z + 1.0 / 15.0
    p = p * z + 1.0 / 13.0
    p = p * z + 1.0 / 11.0
    p = p * z + 1.0 / 9.0
    p = p * z + 1.0 / 7.0
    p = p * z + 1.0 / 5.0
    p = p * z + 1.0 / 3.0
    return e * LN2_HI + (e * LN2_LO + (2.0 * s + 2.0 * s * z * p))
