"""One GammaLib ``<parameter>`` in both directions: parsed and converted to gammapy, converted back and written.

GammaLib (``GModelPar``) stores a parameter as the XML attributes times
``scale`` (min and max swap when ``scale < 0``), in MeV, cm, s and degrees; the
gammapy models here are in TeV, cm, s and degrees. A `Conversion` says how one
parameter's GammaLib value becomes the gammapy value (``factor`` and unit) and
back (the unit GammaLib writes): the type registry (`gpsfast.models.xml.registry`)
pairs each XML parameter name with a gammapy parameter name and a conversion.
"""
import math
from dataclasses import dataclass
from xml.etree.ElementTree import SubElement

import astropy.units as u
import numpy as np
from gammapy.modeling import Parameter

from .common import DIFF_FLUX_UNIT, MEV_TO_TEV, as_unit

__all__ = [
    "CUTOFF",
    "DEG",
    "DIFF_FLUX",
    "ENERGY",
    "INDEX",
    "INVERSE_CUTOFF",
    "PHOTON_FLUX",
    "PLAIN",
    "Conversion",
    "Reciprocal",
    "XmlPar",
    "par_element",
    "parse_par",
    "parse_pars",
    "pick",
    "write_par",
]


@dataclass
class XmlPar:
    """One ``<parameter>`` element, scaled to GammaLib's physical units (MeV, cm, s, deg)."""

    name: str
    value: float
    error: float
    min: float
    max: float
    free: bool

    def to_gammapy(self, name, factor=1.0, unit="", offset=0.0):
        """gammapy parameter ``factor * x + offset`` (min and max swap for a negative factor)."""
        lo, hi = factor * self.min + offset, factor * self.max + offset
        if factor < 0:
            lo, hi = hi, lo
        return Parameter(
            name,
            factor * self.value + offset,
            unit=as_unit(unit),
            min=lo,
            max=hi,
            error=abs(factor) * self.error,
            frozen=not self.free,
        )

    def to_gammapy_reciprocal(self, name, unit):
        """gammapy parameter ``1 / x`` (e.g. a cutoff energy to ``lambda_``)."""
        value = 1.0 / self.value if self.value != 0 else np.inf
        lo = 1.0 / self.max if np.isfinite(self.max) and self.max != 0 else np.nan
        hi = 1.0 / self.min if np.isfinite(self.min) and self.min > 0 else np.nan
        error = self.error / self.value**2 if self.value != 0 else 0.0
        return Parameter(name, value, unit=as_unit(unit), min=lo, max=hi, error=error, frozen=not self.free)


# --------------------------------------------------------------------------- reading


def _float_attr(ctx, el, key, default=None):
    text = el.get(key)
    if text is None:
        if default is None:
            raise ctx.error(f"parameter {el.get('name')!r} has no {key!r} attribute", el)
        return default
    try:
        return float(text)
    except ValueError:
        raise ctx.error(f"parameter {el.get('name')!r}: {key}={text!r} is not a number", el) from None


def parse_par(ctx, el):
    """One ``<parameter>``: value, error, min, max times ``scale``; non-finite values refused.

    A value outside [min, max] is kept with a warning (GammaLib refuses such a file).
    """
    name = el.get("name")
    if not name:
        raise ctx.error("a <parameter> element has no name", el)
    scale = _float_attr(ctx, el, "scale", 1.0)
    if scale == 0 or not math.isfinite(scale):
        raise ctx.error(f"parameter {name!r}: scale={el.get('scale')} must be a finite non-zero number", el)
    value = _float_attr(ctx, el, "value")
    error = _float_attr(ctx, el, "error", 0.0)
    for key, number in (("value", value), ("error", error)):
        if not math.isfinite(number):
            raise ctx.error(f"parameter {name!r}: {key}={el.get(key)} is not a finite number", el)
    vmin = _float_attr(ctx, el, "min", np.nan)
    vmax = _float_attr(ctx, el, "max", np.nan)
    for key, number in (("min", vmin), ("max", vmax)):
        if el.get(key) is not None and math.isnan(number):
            raise ctx.error(f"parameter {name!r}: {key}={el.get(key)} is not a number", el)
    if vmin > vmax:
        raise ctx.error(f"parameter {name!r}: min={el.get('min')} is larger than max={el.get('max')}", el)
    lo, hi = vmin * scale, vmax * scale
    if scale < 0:
        lo, hi = hi, lo
    value, error = value * scale, abs(error * scale)
    if value < lo or value > hi:
        ctx.warn(f"parameter {name!r}: value={value:g} is outside [min, max] = [{lo:g}, {hi:g}] "
                 "(GammaLib refuses this; kept as given)", el)
    free = el.get("free", "0").strip().lower() in ("1", "true")  # GModelPar::read
    return XmlPar(name, value, error, lo, hi, free)


def parse_pars(ctx, el):
    """The ``<parameter>`` children of ``el`` by name (a name twice is refused)."""
    pars = {}
    for child in el.findall("parameter"):
        par = parse_par(ctx, child)
        if par.name in pars:
            raise ctx.error(f"{el.tag} {el.get('type')!r} has parameter {par.name!r} twice", child)
        pars[par.name] = par
    return pars


def pick(ctx, el, pars, *names):
    """The parameter under the first of several alternative names."""
    for name in names:
        if name in pars:
            return pars[name]
    alts = " or ".join(repr(n) for n in names)
    raise ctx.error(
        f"{el.tag} of type {el.get('type')!r} is missing parameter {alts} (has: {', '.join(pars) or 'none'})", el
    )


# --------------------------------------------------------------------------- writing


def _fmt(x):
    return repr(float(x))


def _choose_scale(values, sign):
    """Scale (times ``sign``) for a parameter: 1 for ordinary magnitudes, else the value's power of ten.

    The power of ten is used only if every value (value, error, min, max)
    reads back to the same float; otherwise the scale is ``sign``.
    """
    finite = [v for v in values if np.isfinite(v) and v != 0]
    if not finite or 1e-3 <= abs(finite[0]) < 1e4:
        return sign
    scale = sign * 10.0 ** math.floor(math.log10(abs(finite[0])))
    for v in values:
        if np.isfinite(v) and float(_fmt(v / scale)) * scale != v:
            return sign
    return scale


def par_element(parent, name, value, error=0.0, vmin=np.nan, vmax=np.nan, free=False, sign=1.0):
    """Append a ``<parameter>``: the physical (GammaLib-unit) value, written as ``value * scale``.

    The scale is a power of ten chosen so that reading the file back gives the
    same float (``1`` for ordinary magnitudes); ``sign = -1`` writes a GammaLib
    index (negative) from a gammapy one.
    """
    scale = _choose_scale([value, error, vmin, vmax], sign)
    lo, hi = vmin / scale, vmax / scale
    if scale < 0:
        lo, hi = hi, lo
    attrs = {"name": name, "value": _fmt(value / scale)}
    if error and np.isfinite(error):
        attrs["error"] = _fmt(abs(error / scale))
    attrs["scale"] = _fmt(scale)
    if np.isfinite(lo):
        attrs["min"] = _fmt(lo)
    if np.isfinite(hi):
        attrs["max"] = _fmt(hi)
    attrs["free"] = "1" if free else "0"
    SubElement(parent, "parameter", attrs)


def write_par(parent, name, par, unit=None, negate=False, offset=0.0):
    """Write gammapy parameter ``par`` converted to ``unit`` (GammaLib units), plus ``offset``, negated if asked."""
    conv = 1.0 if unit is None else u.Unit(par.unit).to(u.Unit(unit))
    sign = -1.0 if negate else 1.0
    lo, hi = par.min * conv + offset, par.max * conv + offset
    value = par.value * conv + offset
    if negate:
        value, lo, hi = -value, -hi, -lo
    par_element(parent, name, value, abs(par.error * conv), lo, hi, not par.frozen, sign)


# --------------------------------------------------------------------------- conversions


@dataclass(frozen=True)
class Conversion:
    """A GammaLib parameter value (GammaLib units) <-> a gammapy parameter: ``gammapy = factor * GammaLib``.

    Attributes
    ----------
    unit : str
        Unit of the gammapy parameter read.
    factor : float
        gammapy value per GammaLib value (negative for indices: min and max swap).
    xml_unit : str or None
        Unit GammaLib writes the parameter in (None: written as the gammapy value).
    relative : bool
        A flux that is a relative factor (dimensionless, ``factor`` 1) in a
        non-physical context: a background spectrum, a factor of a product, a
        spectrum multiplying a map cube.
    """

    unit: str = ""
    factor: float = 1.0
    xml_unit: str = None
    relative: bool = False

    def read(self, par, name, physical=True):
        """gammapy `~gammapy.modeling.Parameter` ``name`` of an `XmlPar`."""
        if self.relative and not physical:
            return par.to_gammapy(name, 1.0, "")
        return par.to_gammapy(name, self.factor, self.unit)

    def write(self, el, xml_name, par):
        """Append gammapy parameter ``par`` to ``el`` as ``<parameter name=xml_name>``."""
        unit = self.xml_unit
        if self.relative and u.Unit(par.unit).physical_type == "dimensionless":
            unit = None
        write_par(el, xml_name, par, unit, negate=self.factor < 0)


@dataclass(frozen=True)
class Reciprocal(Conversion):
    """gammapy ``1 / x`` of a GammaLib energy: a cutoff energy (MeV) <-> gammapy's ``lambda_`` (TeV-1)."""

    unit: str = "TeV-1"
    xml_unit: str = "MeV"

    def read(self, par, name, physical=True):
        in_tev = XmlPar(par.name, par.value * MEV_TO_TEV, par.error * MEV_TO_TEV, par.min * MEV_TO_TEV,
                        par.max * MEV_TO_TEV, par.free)
        return in_tev.to_gammapy_reciprocal(name, self.unit)

    def write(self, el, xml_name, par):
        q = par.quantity
        value = (1.0 / q).to_value(self.xml_unit) if par.value != 0 else np.inf
        conv = (1.0 / u.Quantity(1.0, par.unit)).to_value(self.xml_unit)
        hi = conv / par.min if np.isfinite(par.min) and par.min > 0 else np.nan
        lo = conv / par.max if np.isfinite(par.max) and par.max > 0 else np.nan
        error = conv * par.error / par.value**2 if par.value != 0 else 0.0
        par_element(el, xml_name, value, error, lo, hi, not par.frozen)


PLAIN = Conversion()
"""Dimensionless, the same number in GammaLib and gammapy."""
INDEX = Conversion(factor=-1.0)
"""A spectral index: negative in GammaLib."""
ENERGY = Conversion("TeV", MEV_TO_TEV, "MeV")
DEG = Conversion("deg", 1.0, "deg")
DIFF_FLUX = Conversion(DIFF_FLUX_UNIT, 1 / MEV_TO_TEV, "cm-2 s-1 MeV-1", relative=True)
"""A differential flux (ph/cm2/s/MeV in GammaLib), or a relative factor."""
PHOTON_FLUX = Conversion("cm-2 s-1", 1.0, "cm-2 s-1", relative=True)
"""An integral flux (ph/cm2/s), or a relative factor."""
INVERSE_CUTOFF = Conversion("TeV-1", 1 / MEV_TO_TEV, "MeV-1")
CUTOFF = Reciprocal()
