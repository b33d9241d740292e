"""CTA-like instrument response functions, analytic or read from a FITS file.

The analytic response needs no download. Its effective area and background rate
were shaped after the public CTA prod5 South (20 deg zenith, 50 h) response:

- effective area: a saturating log-logistic in energy with a steep threshold,
  ~0.7 km2 at 1 TeV and ~3 km2 above 30 TeV on axis, falling off with offset
  (to half at ~3.5 deg at 1 TeV, sooner at low energy);
- PSF: one Gaussian, 68% containment 0.1 deg at 1 TeV, narrowing as E^-0.25
  (0.21 deg at 50 GeV, 0.03 deg at 100 TeV) and broadening slightly off axis;
- energy dispersion: Gaussian in migration, 10% resolution, no bias;
- background: hadronic rate ~ 1.2e-4 s-1 MeV-1 sr-1 at 1 TeV with a power law of
  index 2.7, the same threshold roll-off and the same offset fall-off as the
  effective area.
"""
import logging
from pathlib import Path

import astropy.units as u
import numpy as np
from gammapy.irf import (
    PSF3D,
    Background2D,
    EffectiveAreaTable2D,
    EnergyDispersion2D,
    load_irf_dict_from_file,
)
from gammapy.maps import MapAxis

from gpsfast.errors import InputError

__all__ = [
    "PSF_R68_1TEV",
    "background_rate",
    "effective_area",
    "load_irfs",
    "make_cta_like_irfs",
    "psf_containment_radius_68",
]

log = logging.getLogger(__name__)

REQUIRED_IRFS = ("aeff", "psf", "edisp", "bkg")

AEFF_MAX_M2 = 3.0e6
AEFF_E_HALF_TEV = 3.07
AEFF_SLOPE = 0.98
THRESHOLD_TEV = 0.045
THRESHOLD_POWER = 2.0

OFFSET_HALF_DEG = 3.5
OFFSET_HALF_SLOPE = 0.05
OFFSET_POWER = 5.0

PSF_R68_1TEV = 0.1 * u.deg
PSF_ENERGY_SLOPE = 0.25
PSF_OFFSET_BROADENING = 0.1

EDISP_SIGMA = 0.1

BKG_RATE_1TEV = 1.2e-4
BKG_INDEX = 2.7

GAUSS_R68_PER_SIGMA = np.sqrt(-2 * np.log(1 - 0.68))

ENERGY_TRUE_AXIS = MapAxis.from_energy_bounds(
    0.01, 300, nbin=20, per_decade=True, unit="TeV", name="energy_true"
)
ENERGY_AXIS = MapAxis.from_energy_bounds(
    0.01, 300, nbin=20, per_decade=True, unit="TeV", name="energy"
)
OFFSET_AXIS = MapAxis.from_bounds(0, 6, nbin=24, unit="deg", name="offset")
MIGRA_AXIS = MapAxis.from_bounds(0.2, 5, nbin=200, node_type="edges", name="migra")
RAD_AXIS = MapAxis.from_bounds(0, 1.5, nbin=300, unit="deg", name="rad")


def _threshold(energy_tev):
    return np.exp(-((THRESHOLD_TEV / energy_tev) ** THRESHOLD_POWER))


def _offset_factor(energy_tev, offset_deg):
    offset_half = OFFSET_HALF_DEG * energy_tev**OFFSET_HALF_SLOPE
    return 1 / (1 + (offset_deg / offset_half) ** OFFSET_POWER)


def effective_area(energy_true, offset):
    """Analytic CTA-like effective area.

    Parameters
    ----------
    energy_true : `~astropy.units.Quantity`
        True energy.
    offset : `~astropy.coordinates.Angle`
        Offset from the pointing position (broadcast against ``energy_true``).

    Returns
    -------
    aeff : `~astropy.units.Quantity`
        Effective area in m2.
    """
    energy = energy_true.to_value("TeV")
    offset = u.Quantity(offset).to_value("deg")
    rise = 1 / (1 + (energy / AEFF_E_HALF_TEV) ** -AEFF_SLOPE)
    value = AEFF_MAX_M2 * rise * _threshold(energy) * _offset_factor(energy, offset)
    return value * u.m**2


def psf_containment_radius_68(energy_true, offset=0 * u.deg):
    """68% containment radius of the analytic Gaussian PSF.

    Parameters
    ----------
    energy_true : `~astropy.units.Quantity`
        True energy.
    offset : `~astropy.coordinates.Angle`
        Offset from the pointing position.

    Returns
    -------
    radius : `~astropy.coordinates.Angle`
        Radius containing 68% of the PSF.
    """
    energy = energy_true.to_value("TeV")
    offset = u.Quantity(offset).to_value("deg")
    broadening = 1 + PSF_OFFSET_BROADENING * (offset / 3.0) ** 2
    return PSF_R68_1TEV * energy**-PSF_ENERGY_SLOPE * broadening


def background_rate(energy, offset):
    """Analytic hadronic background rate per solid angle.

    Parameters
    ----------
    energy : `~astropy.units.Quantity`
        Reconstructed energy.
    offset : `~astropy.coordinates.Angle`
        Offset from the pointing position.

    Returns
    -------
    rate : `~astropy.units.Quantity`
        Background rate in s-1 MeV-1 sr-1.
    """
    energy = energy.to_value("TeV")
    offset = u.Quantity(offset).to_value("deg")
    value = BKG_RATE_1TEV * energy**-BKG_INDEX * _threshold(energy)
    return value * _offset_factor(energy, offset) * u.Unit("s-1 MeV-1 sr-1")


def _make_aeff():
    energy = ENERGY_TRUE_AXIS.center[:, np.newaxis]
    offset = OFFSET_AXIS.center[np.newaxis, :]
    data = effective_area(energy, offset)
    return EffectiveAreaTable2D(axes=[ENERGY_TRUE_AXIS, OFFSET_AXIS], data=data.value, unit=data.unit)


def _make_psf():
    energy = ENERGY_TRUE_AXIS.center[:, np.newaxis, np.newaxis]
    offset = OFFSET_AXIS.center[np.newaxis, :, np.newaxis]
    rad = RAD_AXIS.center[np.newaxis, np.newaxis, :]
    sigma = psf_containment_radius_68(energy, offset).to_value("rad") / GAUSS_R68_PER_SIGMA
    rad = rad.to_value("rad")
    data = np.exp(-0.5 * (rad / sigma) ** 2) / (2 * np.pi * sigma**2)
    return PSF3D(axes=[ENERGY_TRUE_AXIS, OFFSET_AXIS, RAD_AXIS], data=data, unit="sr-1")


def _make_edisp():
    return EnergyDispersion2D.from_gauss(
        energy_axis_true=ENERGY_TRUE_AXIS,
        migra_axis=MIGRA_AXIS,
        offset_axis=OFFSET_AXIS,
        bias=0,
        sigma=EDISP_SIGMA,
    )


def _make_bkg():
    energy = ENERGY_AXIS.center[:, np.newaxis]
    offset = OFFSET_AXIS.center[np.newaxis, :]
    data = background_rate(energy, offset)
    return Background2D(axes=[ENERGY_AXIS, OFFSET_AXIS], data=data.value, unit=data.unit)


def make_cta_like_irfs():
    """Build the analytic CTA-like instrument response.

    Returns
    -------
    irfs : dict
        ``{"aeff": EffectiveAreaTable2D, "psf": PSF3D, "edisp": EnergyDispersion2D,
        "bkg": Background2D}``, as `gammapy.irf.load_irf_dict_from_file` returns.
    """
    return {"aeff": _make_aeff(), "psf": _make_psf(), "edisp": _make_edisp(), "bkg": _make_bkg()}


def load_irfs(filename):
    """Read an instrument response from a GADF FITS file.

    Parameters
    ----------
    filename : str or `~pathlib.Path`
        FITS file holding effective area, PSF, energy dispersion and background
        (e.g. a CTA prod5 or 1DC response).

    Returns
    -------
    irfs : dict
        The IRF components, keyed ``aeff``, ``psf``, ``edisp``, ``bkg``.

    Raises
    ------
    InputError
        If the file does not exist, is not a FITS IRF file, or lacks a component.
    """
    path = Path(filename).expanduser()
    if not path.is_file():
        raise InputError(f"IRF file not found: {path}")
    try:
        irfs = load_irf_dict_from_file(path)
    except Exception as exc:
        raise InputError(f"Not a readable IRF FITS file: {path} ({type(exc).__name__}: {exc})") from None
    missing = [name for name in REQUIRED_IRFS if name not in irfs]
    if missing:
        raise InputError(
            f"IRF file {path} lacks {', '.join(missing)} "
            f"(found: {', '.join(irfs) or 'no IRF HDU'}); gpsfast needs {', '.join(REQUIRED_IRFS)}"
        )
    log.info("Read IRFs %s from %s", ", ".join(irfs), path)
    return {name: irfs[name] for name in REQUIRED_IRFS}
