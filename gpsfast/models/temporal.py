"""Temporal models reproducing GammaLib's ``PhaseCurve`` and ``LightCurve`` exactly.

GammaLib times are Terrestrial Time (TT); these classes use ``scale="tt"``
(gammapy's default is UTC). Both carry GammaLib's ``Normalization`` as ``norm``.
"""
from pathlib import Path

import numpy as np
import astropy.units as u
from astropy.io import fits
from astropy.table import Table
from astropy.time import Time
from gammapy.modeling import Parameter
from gammapy.modeling.models import (
    TEMPORAL_MODEL_REGISTRY,
    ConstantTemporalModel,
    TemplatePhaseCurveTemporalModel,
    TemporalModel,
)

from .._compat import parameters_from_dict, phase_curve_phase
from ..errors import InputError

__all__ = [
    "GammaLibConstantTemporalModel",
    "GammaLibPhaseCurveTemporalModel",
    "GammaLibLightCurveTemporalModel",
    "gammalib_phase_nodes",
]


class GammaLibConstantTemporalModel(ConstantTemporalModel):
    """GammaLib temporal ``Constant`` (``GModelTemporalConst::eval``): the value is ``norm``.

    gammapy's `~gammapy.modeling.models.ConstantTemporalModel` is 1; GammaLib's
    ``Normalization`` multiplies the source flux.
    """

    tag = ["GammaLibConstantTemporalModel", "gl-const"]
    norm = Parameter("norm", 1.0, unit="", frozen=True)

    @staticmethod
    def evaluate(time, norm):
        return np.ones(np.shape(time)) * u.Quantity(norm).to_value("") * u.one

    def integral(self, t_min, t_max):
        """Integrated norm over the time intervals (``norm`` times gammapy's constant)."""
        return self.norm.value * super().integral(t_min, t_max)


def gammalib_phase_nodes(phase, norm, normalize=True):
    """Phase-curve nodes as GammaLib prepares them.

    Values above 1 are clipped to 1, the curve is wrapped periodically so that
    nodes exist at phase 0 and 1, and (``normalize``) scaled to a mean of 1
    over one period.

    Parameters
    ----------
    phase, norm : `~numpy.ndarray`
        ``PHASE`` and ``NORM`` columns (phase in [0, 1], increasing).
    normalize : bool
        Scale to unit mean.

    Returns
    -------
    phase, norm : `~numpy.ndarray`
        Nodes covering exactly [0, 1].
    """
    phase = np.asarray(phase, dtype=float)
    norm = np.asarray(norm, dtype=float)
    if len(phase) < 2 or np.any(np.diff(phase) <= 0) or phase[0] < 0 or phase[-1] > 1:
        raise InputError("phase curve needs at least two nodes with increasing PHASE within [0, 1]")
    x = list(phase)
    y = list(np.minimum(norm, 1.0))
    if phase[0] > 0.0:
        x.insert(0, phase[-1] - 1.0)
        y.insert(0, y[-1])
    if phase[-1] < 1.0:
        x.append(phase[0] + 1.0)
        y.append(y[1] if phase[0] > 0.0 else y[0])
    x, y = np.array(x), np.array(y)
    x_out = np.concatenate([[0.0], x[(x > 0) & (x < 1)], [1.0]])
    y_out = np.interp(x_out, x, y)
    if normalize:
        integral = np.sum(0.5 * np.diff(x_out) * (y_out[1:] + y_out[:-1]))
        if integral <= 0:
            raise InputError("integral over the phase curve is not positive")
        y_out = y_out / integral
    return x_out, y_out


class GammaLibPhaseCurveTemporalModel(TemplatePhaseCurveTemporalModel):
    r"""GammaLib ``PhaseCurve``: ``norm`` times the periodic phase curve.

    Phase :math:`\Phi(t) = \Phi_0 + f_0 \Delta t + \dot f \Delta t^2/2 + \ddot f \Delta t^3/6`
    with :math:`\Delta t = t - t_{ref}` (TT), reduced to [0, 1]; the curve is
    interpolated linearly between nodes, wrapped periodically as GammaLib does.

    Parameters
    ----------
    table : `~astropy.table.Table`
        ``PHASE`` and ``NORM`` columns, as in the file.
    filename : str
        Phase-curve FITS file (serialisation).
    normalize : bool
        GammaLib ``normalize`` attribute: scale the curve to unit mean.
    """

    tag = ["GammaLibPhaseCurveTemporalModel", "gl-phase"]
    norm = Parameter("norm", 1.0, unit="", frozen=True)
    t_ref = Parameter("t_ref", 51544.5, unit="day", frozen=True)
    phi_ref = Parameter("phi_ref", 0.0, unit="", frozen=True)
    f0 = Parameter("f0", 1.0, unit="s-1", frozen=True)
    f1 = Parameter("f1", 0.0, unit="s-2", frozen=True)
    f2 = Parameter("f2", 0.0, unit="s-3", frozen=True)

    def __init__(self, table, filename=None, normalize=True, **kwargs):
        kwargs.setdefault("scale", "tt")
        self.raw_table = Table(table, copy=True)
        self.normalize = bool(normalize)
        x, y = gammalib_phase_nodes(table["PHASE"], table["NORM"], self.normalize)
        self.table = Table({"PHASE": x, "NORM": y})
        self.filename = None if filename is None else str(filename)
        TemporalModel.__init__(self, **kwargs)

    @classmethod
    def read(cls, path, normalize=True, **kwargs):
        """Read the ``PHASE`` / ``NORM`` table from the first extension of a FITS file."""
        path = Path(path)
        if not path.is_file():
            raise InputError(f"phase-curve file not found: {path}")
        try:
            with fits.open(path) as hdul:
                table = Table.read(hdul[1])
            phase = np.asarray(table["PHASE"], dtype=float)
            norm = np.asarray(table["NORM"], dtype=float)
        except (OSError, IndexError, KeyError, ValueError, TypeError) as exc:
            raise InputError(f"{path}: not a phase-curve FITS table with PHASE and NORM columns "
                             f"({type(exc).__name__})") from None
        if not (np.all(np.isfinite(phase)) and np.all(np.isfinite(norm))):
            row = int(np.nonzero(~(np.isfinite(phase) & np.isfinite(norm)))[0][0])
            raise InputError(f"{path}: phase-curve row {row + 1} is not finite (PHASE={phase[row]}, NORM={norm[row]})")
        try:
            return cls(table, filename=str(path), normalize=normalize, **kwargs)
        except InputError as exc:
            raise InputError(f"{path}: {exc}") from None

    def evaluate(self, time, norm, t_ref, phi_ref, f0, f1, f2):
        phase, _ = phase_curve_phase(time, t_ref, phi_ref, f0, f1, f2)
        values = np.interp(phase, self.table["PHASE"].data, self.table["NORM"].data)
        return norm * values * u.one

    def to_dict(self, full_output=False):
        data = TemporalModel.to_dict(self, full_output)
        data["temporal"]["filename"] = self.filename
        data["temporal"]["normalize"] = self.normalize
        return data

    @classmethod
    def from_dict(cls, data, **kwargs):
        temporal = data["temporal"]
        pars = parameters_from_dict(temporal["parameters"], cls.default_parameters)
        kwargs = {p.name: p for p in pars}
        kwargs["scale"] = temporal.get("scale", "tt")
        return cls.read(temporal["filename"], normalize=temporal.get("normalize", True), **kwargs)


def _read_light_curve(path):
    """TIME (s since MJDREF, TT) and NORM columns of a GammaLib light-curve file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"light-curve file not found: {path}")
    try:
        with fits.open(path) as hdul:
            hdu = hdul[1]
            header = hdu.header
            mjdref = header.get("MJDREFI", 0) + header.get("MJDREFF", 0.0)
            if "MJDREF" in header:
                mjdref = header["MJDREF"]
            unit = u.Unit(header.get("TIMEUNIT", "s"))
            time = np.asarray(hdu.data["TIME"], dtype=float) * unit
            norm = np.asarray(hdu.data["NORM"], dtype=float)
            timesys = str(header.get("TIMESYS", "TT")).lower()
            mjdref = float(mjdref)
    except (OSError, IndexError, KeyError, ValueError, TypeError) as exc:
        raise InputError(f"{path}: not a light-curve FITS table with TIME and NORM columns "
                         f"({type(exc).__name__})") from None
    finite = np.isfinite(time.value) & np.isfinite(norm)
    if not np.all(finite):
        row = int(np.nonzero(~finite)[0][0])
        raise InputError(f"{path}: light-curve row {row + 1} is not finite (TIME={time.value[row]}, NORM={norm[row]})")
    if len(time) < 1 or np.any(np.diff(time.value) <= 0):
        raise InputError(f"{path}: light-curve TIME must increase strictly (at least one row)")
    return mjdref, time, norm, timesys


class GammaLibLightCurveTemporalModel(TemporalModel):
    """GammaLib ``LightCurve``: ``norm`` times a light curve interpolated linearly, zero outside it.

    Parameters
    ----------
    filename : str
        FITS file with ``TIME`` (relative to ``MJDREFI``+``MJDREFF``) and ``NORM`` columns.
    """

    tag = ["GammaLibLightCurveTemporalModel", "gl-lightcurve"]
    norm = Parameter("norm", 1.0, unit="", frozen=True)

    def __init__(self, filename, **kwargs):
        self.filename = str(filename)
        mjdref, time, norm, timesys = _read_light_curve(filename)
        kwargs.setdefault("scale", timesys if timesys in Time.SCALES else "tt")
        self._t_mjd = mjdref + time.to_value("day")
        self._values = norm
        super().__init__(**kwargs)

    def evaluate(self, time, norm):
        t = u.Quantity(time).to_value("day")
        inside = (t >= self._t_mjd[0]) & (t <= self._t_mjd[-1])
        return np.where(inside, norm * np.interp(t, self._t_mjd, self._values), 0.0) * u.one

    def to_dict(self, full_output=False):
        data = super().to_dict(full_output)
        data["temporal"]["filename"] = self.filename
        return data

    @classmethod
    def from_dict(cls, data, **kwargs):
        temporal = data["temporal"]
        pars = parameters_from_dict(temporal["parameters"], cls.default_parameters)
        return cls(temporal["filename"], norm=pars["norm"], scale=temporal.get("scale", "tt"))


for _cls in (GammaLibConstantTemporalModel, GammaLibPhaseCurveTemporalModel, GammaLibLightCurveTemporalModel):
    if _cls not in TEMPORAL_MODEL_REGISTRY:
        TEMPORAL_MODEL_REGISTRY.append(_cls)
