"""Shared pieces of the XML reader: type names, parameters, error locations."""
import functools
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import astropy.units as u
from gammapy.modeling import Parameter

from ..errors import InputError
from .xmlfiles import FileResolver

log = logging.getLogger("gpsfast.models.xmlio")

MEV_TO_TEV = 1e-6
DIFF_FLUX_UNIT = "cm-2 s-1 TeV-1"

SKY_SOURCE_TYPES = ("PointSource", "ExtendedSource", "DiffuseSource", "CompositeSource")
BACKGROUND_TYPES = ("CTAIrfBackground", "CTACubeBackground", "CTAAeffBackground")
#: Instrument-specific background / data-space models that are not sky models:
#: skipped with a warning naming the source.
SKIPPED_SOURCE_TYPES = (
    "RadialAcceptance",
    "CTABackground",
    "CTASkyCube",
    "DRBPhibarNodes",
    "DRBFitting",
    "DataSpace",
    "SPIBackground",
)

SPECTRAL_TYPES = (
    "PowerLaw",
    "PowerLaw2",
    "ExponentialCutoffPowerLaw",
    "ExpCutoff",
    "SuperExponentialCutoffPowerLaw",
    "PLSuperExpCutoff",
    "BrokenPowerLaw",
    "SmoothBrokenPowerLaw",
    "LogParabola",
    "Gaussian",
    "Constant",
    "ConstantValue",
    "FileFunction",
    "NodeFunction",
    "BinFunction",
    "Composite",
    "Multiplicative",
    "Exponential",
    "TableModel",
)
SPATIAL_TYPES = (
    "PointSource",
    "SkyDirFunction",
    "RadialDisk",
    "DiskFunction",
    "RadialGaussian",
    "GaussFunction",
    "RadialShell",
    "ShellFunction",
    "EllipticalDisk",
    "EllipticalGaussian",
    "EllipticalGauss",
    "RadialRing",
    "RadialGeneralGaussian",
    "GaussianProfile",
    "EllipticalGeneralGaussian",
    "DiffuseIsotropic",
    "ConstantValue",
    "DiffuseMap",
    "SpatialMap",
    "DiffuseMapCube",
    "MapCubeFunction",
    "Composite",
    "DMBurkertProfile",
    "DMEinastoProfile",
    "DMZhaoProfile",
)
TEMPORAL_TYPES = ("Constant", "LightCurve", "PhaseCurve")

#: Every XML type name ``read_xml`` understands, by element kind.
SUPPORTED_XML_TYPES = {
    "source": SKY_SOURCE_TYPES + BACKGROUND_TYPES,
    "spectrum": SPECTRAL_TYPES,
    "spatialModel": SPATIAL_TYPES,
    "temporal": TEMPORAL_TYPES,
}
#: GammaLib types gpsfast recognises but cannot represent exactly in gammapy, and why.
NOT_REPRESENTABLE = {}


def unknown(kind, name):
    """Message for an unknown or unsupported type, listing the supported ones."""
    supported = ", ".join(SUPPORTED_XML_TYPES[kind])
    reason = NOT_REPRESENTABLE.get(name)
    what = f"unsupported {kind} type {name!r} ({reason})" if reason else f"unknown {kind} type {name!r}"
    return f"{what}; supported types: {supported}"


def location(path, line=None, source=None):
    """``file:line: source 'name'`` as the messages of the XML reader start."""
    text = f"{path}:{line}:" if line else f"{path}:"
    if source is not None:
        text += f" source {source!r}"
    return text


class SourceError(InputError):
    """An error in one source of a model file: file, line, source name and the reason, on one line."""

    def __init__(self, path, line, source, reason):
        self.path, self.line, self.source, self.reason = str(path), line, source, reason
        super().__init__(f"{location(path, line, source)} {reason}")


@functools.lru_cache(maxsize=None)
def as_unit(text):
    """`astropy.units.Unit` of a unit string, parsed once (parsing costs ~0.1 ms a call)."""
    return u.Unit(text)


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


class Context:
    """Where the reader is in the file (for messages), the referenced-file resolver and the warnings."""

    def __init__(self, path, resolver=None):
        self.path = Path(path)
        self.resolver = resolver if resolver is not None else FileResolver(path)
        self.source = None
        self.line = None
        self.warnings = []

    def _line(self, el):
        return getattr(el, "sourceline", None) or self.line

    def error(self, message, el=None):
        """A `SourceError` at element ``el`` (default: the current source)."""
        return SourceError(self.path, self._line(el), self.source, message)

    def warn(self, message, el=None):
        """Record and log a warning at element ``el``."""
        text = f"{location(self.path, self._line(el), self.source)} {message}"
        self.warnings.append(text)
        log.warning(text)

    def resolve(self, element, gz=False):
        """Path of the element's ``file`` attribute (see `~gpsfast.models.xmlfiles.FileResolver`)."""
        try:
            return self.resolver.resolve(element.get("file"), gz=gz)
        except InputError as exc:
            raise self.error(f"{element.tag} of type {element.get('type')!r}: {exc}", element) from None


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


def align(model):
    """Give each parameter its class default's interp / scale settings (gammapy's YAML writer needs them)."""
    for attr in ("model1", "model2", "model"):
        sub = getattr(model, attr, None)
        if sub is not None and hasattr(sub, "default_parameters"):
            align(sub)
    for par, default in zip(model.parameters, model.default_parameters):
        if par.name == default.name:
            par.interp = default.interp
            par.scale_method = default.scale_method
            par.scale_transform = default.scale_transform
    return model
