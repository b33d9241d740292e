"""Write gammapy `~gammapy.modeling.models.Models` as a ctools / GammaLib XML model file.

Each parameter is written as GammaLib's ``value * scale`` with a power-of-ten
scale chosen so that reading the file back gives the same float (``scale = 1``
otherwise); indices are written with ``scale = -1`` (GammaLib indices are
negative). gpsfast's exact GammaLib model classes are written exactly; gammapy's
own models that GammaLib lacks are written as the closest GammaLib model with a
warning naming the source and the difference, or refused with `InputError`.
"""
import logging
import math
import operator
from pathlib import Path
from xml.etree.ElementTree import Element, ElementTree, SubElement, indent

import numpy as np
import astropy.units as u
from gammapy.modeling.models import (
    BrokenPowerLawSpectralModel,
    CompoundSpectralModel,
    ConstantSpatialModel,
    ConstantSpectralModel,
    ConstantTemporalModel,
    DiskSpatialModel,
    ExpCutoffPowerLawSpectralModel,
    FoVBackgroundModel,
    GaussianSpatialModel,
    GaussianSpectralModel,
    GeneralizedGaussianSpatialModel,
    LogParabolaSpectralModel,
    PointSpatialModel,
    PowerLaw2SpectralModel,
    PowerLawNormSpectralModel,
    PowerLawSpectralModel,
    Shell2SpatialModel,
    ShellSpatialModel,
    SkyModel,
    SmoothBrokenPowerLawSpectralModel,
    TemplateSpatialModel,
)

from ..errors import InputError
from ..utils import atomic_output
from .spatial import (
    GammaLibCompositeSpatialModel,
    GammaLibDiskSpatialModel,
    GammaLibEllipticalDiskSpatialModel,
    GammaLibEllipticalGaussianSpatialModel,
    GammaLibEllipticalGeneralGaussianSpatialModel,
    GammaLibGaussianSpatialModel,
    GammaLibRingSpatialModel,
    GammaLibShellSpatialModel,
    phi_to_pa,
)
from .spectral import (
    BinFunctionSpectralModel,
    ExponentialSpectralModel,
    FileFunctionSpectralModel,
    GammaLibSmoothBrokenPowerLawSpectralModel,
    GammaLibSuperExpCutoffPowerLawSpectralModel,
    NodeFunctionSpectralModel,
    PowerLawEnergyFluxSpectralModel,
)
from .spectral_table import GammaLibTableSpectralModel
from .diffuse import GammaLibDiffuseCubeSpatialModel, GammaLibDiffuseMapSpatialModel
from .dmprofiles import _GammaLibDMProfile
from .profiles import GammaLibGaussianProfileSpatialModel
from .xmlio import DM_HALO_PARAMETERS, DM_PROFILES
from .temporal import GammaLibConstantTemporalModel, GammaLibLightCurveTemporalModel, GammaLibPhaseCurveTemporalModel

__all__ = ["write_xml"]

log = logging.getLogger(__name__)


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


def _par_el(parent, name, value, error=0.0, vmin=np.nan, vmax=np.nan, free=False, sign=1.0):
    """Append a ``<parameter>``: the physical (GammaLib-unit) value, written as ``value * scale``."""
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


def _write_par(parent, name, par, unit=None, negate=False, offset=0.0):
    """Write gammapy parameter ``par`` converted to ``unit`` (GammaLib units)."""
    conv = 1.0 if unit is None else u.Unit(par.unit).to(u.Unit(unit))
    sign = -1.0 if negate else 1.0
    lo, hi = par.min * conv + offset, par.max * conv + offset
    value = par.value * conv + offset
    if negate:
        value, lo, hi = -value, -hi, -lo
    _par_el(parent, name, value, abs(par.error * conv), lo, hi, not par.frozen, sign)


def _write_reciprocal(parent, name, par, unit):
    """Write ``1 / par`` converted to ``unit`` (e.g. ``lambda_`` as a cutoff energy in MeV)."""
    q = par.quantity
    value = (1.0 / q).to_value(unit) if par.value != 0 else np.inf
    conv = (1.0 / u.Quantity(1.0, par.unit)).to_value(unit)
    hi = conv / par.min if np.isfinite(par.min) and par.min > 0 else np.nan
    lo = conv / par.max if np.isfinite(par.max) and par.max > 0 else np.nan
    error = conv * par.error / par.value**2 if par.value != 0 else 0.0
    _par_el(parent, name, value, error, lo, hi, not par.frozen)


def _file_attr(filename, xml_path):
    """File name as GammaLib writes it: bare when next to the XML file, else absolute."""
    path = Path(filename).resolve()
    if path.parent == Path(xml_path).resolve().parent:
        return path.name
    return str(path)


def _diff_unit(par):
    return "cm-2 s-1 MeV-1" if u.Unit(par.unit).physical_type != "dimensionless" else None


def _write_spectral(parent, model, name, warn):
    el = SubElement(parent, "spectrum")
    if isinstance(model, PowerLawSpectralModel):
        el.set("type", "PowerLaw")
        _write_par(el, "Prefactor", model.amplitude, _diff_unit(model.amplitude))
        _write_par(el, "Index", model.index, negate=True)
        _write_par(el, "PivotEnergy", model.reference, "MeV")
    elif isinstance(model, PowerLaw2SpectralModel):
        el.set("type", "PowerLaw")
        unit = "cm-2 s-1" if u.Unit(model.amplitude.unit).physical_type != "dimensionless" else None
        _write_par(el, "PhotonFlux", model.amplitude, unit)
        _write_par(el, "Index", model.index, negate=True)
        _write_par(el, "LowerLimit", model.emin, "MeV")
        _write_par(el, "UpperLimit", model.emax, "MeV")
    elif isinstance(model, PowerLawEnergyFluxSpectralModel):
        el.set("type", "PowerLaw")
        _write_par(el, "EnergyFlux", model.energy_flux, "erg cm-2 s-1")
        _write_par(el, "Index", model.index, negate=True)
        _write_par(el, "LowerLimit", model.emin, "MeV")
        _write_par(el, "UpperLimit", model.emax, "MeV")
    elif isinstance(model, ExpCutoffPowerLawSpectralModel):
        plain = model.alpha.value == 1.0 and model.alpha.frozen
        plain = plain and not isinstance(model, GammaLibSuperExpCutoffPowerLawSpectralModel)
        el.set("type", "ExponentialCutoffPowerLaw" if plain else "SuperExponentialCutoffPowerLaw")
        _write_par(el, "Prefactor", model.amplitude, _diff_unit(model.amplitude))
        _write_par(el, "Index" if plain else "Index1", model.index, negate=True)
        if plain and (model.lambda_.value == 0 or model.lambda_.min == 0):
            _write_par(el, "InverseCutoffEnergy", model.lambda_, "MeV-1")
        else:
            _write_reciprocal(el, "CutoffEnergy", model.lambda_, "MeV")
        _write_par(el, "PivotEnergy", model.reference, "MeV")
        if not plain:
            _write_par(el, "Index2", model.alpha)
    elif isinstance(model, BrokenPowerLawSpectralModel):
        el.set("type", "BrokenPowerLaw")
        _write_par(el, "Prefactor", model.amplitude, _diff_unit(model.amplitude))
        _write_par(el, "Index1", model.index1, negate=True)
        _write_par(el, "BreakEnergy", model.ebreak, "MeV")
        _write_par(el, "Index2", model.index2, negate=True)
    elif isinstance(model, SmoothBrokenPowerLawSpectralModel):
        # gammapy multiplies beta by sign(index2 - index1): GammaLib's beta is that product
        el.set("type", "SmoothBrokenPowerLaw")
        sign = 1.0 if model.index2.value >= model.index1.value else -1.0
        beta = model.beta.copy()
        beta.value, beta.min, beta.max = sign * beta.value, *sorted((sign * beta.min, sign * beta.max))
        _write_par(el, "Prefactor", model.amplitude, _diff_unit(model.amplitude))
        _write_par(el, "Index1", model.index1, negate=True)
        _write_par(el, "PivotEnergy", model.reference, "MeV")
        _write_par(el, "Index2", model.index2, negate=True)
        _write_par(el, "BreakEnergy", model.ebreak, "MeV")
        _write_par(el, "BreakSmoothness", beta)
        if sign < 0 or not (model.index1.frozen and model.index2.frozen):
            warn(f"source {name!r}: SmoothBrokenPowerLaw beta written as beta*sign(index2-index1)="
                          f"{beta.value}; exact only while the break keeps its direction")
    elif isinstance(model, GammaLibSmoothBrokenPowerLawSpectralModel):
        el.set("type", "SmoothBrokenPowerLaw")
        _write_par(el, "Prefactor", model.amplitude, _diff_unit(model.amplitude))
        _write_par(el, "Index1", model.index1, negate=True)
        _write_par(el, "PivotEnergy", model.reference, "MeV")
        _write_par(el, "Index2", model.index2, negate=True)
        _write_par(el, "BreakEnergy", model.ebreak, "MeV")
        _write_par(el, "BreakSmoothness", model.beta)
    elif isinstance(model, LogParabolaSpectralModel):
        el.set("type", "LogParabola")
        _write_par(el, "Prefactor", model.amplitude, _diff_unit(model.amplitude))
        _write_par(el, "Index", model.alpha, negate=True)
        _write_par(el, "Curvature", model.beta, negate=True)
        _write_par(el, "PivotEnergy", model.reference, "MeV")
    elif isinstance(model, GaussianSpectralModel):
        el.set("type", "Gaussian")
        unit = "cm-2 s-1" if u.Unit(model.amplitude.unit).physical_type != "dimensionless" else None
        _write_par(el, "Normalization", model.amplitude, unit)
        _write_par(el, "Mean", model.mean, "MeV")
        _write_par(el, "Sigma", model.sigma, "MeV")
    elif isinstance(model, ConstantSpectralModel):
        el.set("type", "Constant")
        _write_par(el, "Normalization", model.const, _diff_unit(model.const))
    elif isinstance(model, FileFunctionSpectralModel):
        el.set("type", "FileFunction")
        el.set("file", str(model.filename))
        _write_par(el, "Normalization", model.norm)
    elif isinstance(model, NodeFunctionSpectralModel):
        el.set("type", "NodeFunction")
        pars = list(model.parameters)
        n = model.n_nodes
        for e_par, i_par in zip(pars[:n], pars[n:]):
            node = SubElement(el, "node")
            _write_par(node, "Energy", e_par, "MeV")
            _write_par(node, "Intensity", i_par, _diff_unit(i_par))
    elif isinstance(model, BinFunctionSpectralModel):
        el.set("type", "BinFunction")
        pars = list(model.parameters)
        n = model.n_bins
        _write_par(el, "Index", pars[0], negate=True)
        for lo, hi, value in zip(pars[1 : n + 1], pars[n + 1 : 2 * n + 1], pars[2 * n + 1 :]):
            item = SubElement(el, "bin")
            _write_par(item, "LowerLimit", lo, "MeV")
            _write_par(item, "UpperLimit", hi, "MeV")
            _write_par(item, "Intensity", value, _diff_unit(value))
    elif isinstance(model, GammaLibTableSpectralModel):
        el.set("type", "TableModel")
        if not model.filename:
            raise InputError(f"source {name!r}: table model has no filename to write")
        el.set("file", str(model.filename))
        if model.energy_scale is not None:
            el.set("energyscale", model.energy_scale)
        _write_par(el, "Normalization", model.norm)
        for par in model.table_parameters:
            _write_par(el, par.name, par)
    elif isinstance(model, ExponentialSpectralModel):
        el.set("type", "Exponential")
        _write_spectral(el, model.model, name, warn)
    elif isinstance(model, CompoundSpectralModel) and model.operator in (operator.add, operator.mul):
        kind = "Composite" if model.operator is operator.add else "Multiplicative"
        el.set("type", kind)
        for part in _flatten(model, model.operator):
            _write_spectral(el, part, name, warn)
    else:
        raise InputError(
            f"source {name!r}: spectral model {type(model).__name__} has no GammaLib XML equivalent in gpsfast"
        )


def _flatten(model, op):
    if isinstance(model, CompoundSpectralModel) and model.operator is op:
        return _flatten(model.model1, op) + _flatten(model.model2, op)
    return [model]


def _write_position(el, model):
    lon_name, lat_name = ("GLON", "GLAT") if model.frame == "galactic" else ("RA", "DEC")
    if model.frame not in ("galactic", "icrs", "fk5"):
        raise InputError(f"spatial frame {model.frame!r} cannot be written to XML (use icrs or galactic)")
    _write_par(el, lon_name, model.lon_0, "deg")
    _write_par(el, lat_name, model.lat_0, "deg")


_ELLIPTICAL_XML = {
    GammaLibEllipticalDiskSpatialModel: "EllipticalDisk",
    GammaLibEllipticalGaussianSpatialModel: "EllipticalGaussian",
    GammaLibEllipticalGeneralGaussianSpatialModel: "EllipticalGeneralGaussian",
}


def _write_ellipse(el, model, major):
    """Position, PA (east of celestial north), MinorRadius and MajorRadius of an elliptical model."""
    _write_position(el, model)
    rot = u.Quantity(phi_to_pa(0.0, model.lon_0.quantity, model.lat_0.quantity, model.frame)).to_value("deg")
    _write_par(el, "PA", model.phi, "deg", offset=rot)
    minor = major.copy()
    factor = math.sqrt(1.0 - model.e.value**2)
    minor.value = major.value * factor
    minor.error = major.error * factor
    minor.frozen = model.e.frozen and major.frozen
    _write_par(el, "MinorRadius", minor, "deg")
    _write_par(el, "MajorRadius", major, "deg")


def _write_native_spatial(el, model, name, warn):
    """gammapy's own spatial models: the closest GammaLib model, with a warning naming the difference."""
    elliptical = "e" in model.parameters.names and not (model.e.value == 0 and model.e.frozen)
    if isinstance(model, GaussianSpatialModel):
        el.set("type", "EllipticalGaussian" if elliptical else "RadialGaussian")
        if elliptical:
            _write_ellipse(el, model, model.sigma)
        else:
            _write_position(el, model)
            _write_par(el, "Sigma", model.sigma, "deg")
        warn(f"source {name!r}: gammapy GaussianSpatialModel written as GammaLib {el.get('type')}; "
             "GammaLib's is flat-sky (and cut at 3 r_eff when elliptical): profiles differ at order sigma^2")
    elif isinstance(model, DiskSpatialModel):
        el.set("type", "EllipticalDisk" if elliptical else "RadialDisk")
        if elliptical:
            _write_ellipse(el, model, model.r_0)
        else:
            _write_position(el, model)
            _write_par(el, "Radius", model.r_0, "deg")
        if model.edge_width.value > 0:
            warn(f"source {name!r}: DiskSpatialModel edge_width={model.edge_width.value} not representable; "
                 f"GammaLib {el.get('type')} has a hard edge")
    elif isinstance(model, (ShellSpatialModel, Shell2SpatialModel)):
        el.set("type", "RadialShell")
        _write_position(el, model)
        if isinstance(model, ShellSpatialModel):
            radius, width = model.radius, model.width
        else:
            radius, width = model.r_0.copy(), model.eta.copy()
            radius.value = model.r_0.value * (1 - model.eta.value)
            width.value = model.r_0.value * model.eta.value
            width.unit = radius.unit
            width.min = width.max = np.nan
        _write_par(el, "Radius", radius, "deg")
        _write_par(el, "Width", width, "deg")
        warn(f"source {name!r}: gammapy {type(model).__name__} (flat-sky projection) written as GammaLib "
             "RadialShell (spherical projection): profiles differ at order radius^2")
    elif isinstance(model, GeneralizedGaussianSpatialModel):
        el.set("type", "EllipticalGeneralGaussian")
        _write_ellipse(el, model, model.r_0)
        _write_par(el, "R_Index", model.eta)
        warn(f"source {name!r}: GammaLib EllipticalGeneralGaussian is cut at 5 semi-major axes")
    else:
        return False
    return True


def _write_spatial(parent, model, name, warn):
    el = SubElement(parent, "spatialModel")
    if isinstance(model, PointSpatialModel):
        el.set("type", "PointSource")
        _write_position(el, model)
    elif isinstance(model, GammaLibDiskSpatialModel):
        el.set("type", "RadialDisk")
        _write_position(el, model)
        _write_par(el, "Radius", model.r_0, "deg")
    elif isinstance(model, GammaLibGaussianSpatialModel):
        el.set("type", "RadialGaussian")
        _write_position(el, model)
        _write_par(el, "Sigma", model.sigma, "deg")
    elif isinstance(model, GammaLibGaussianProfileSpatialModel):
        el.set("type", "GaussianProfile")
        _write_position(el, model)
        _write_par(el, "Sigma", model.sigma, "deg")
    elif isinstance(model, GammaLibShellSpatialModel):
        el.set("type", "RadialShell")
        _write_position(el, model)
        _write_par(el, "Radius", model.radius, "deg")
        _write_par(el, "Width", model.width, "deg")
    elif isinstance(model, GammaLibRingSpatialModel):
        el.set("type", "RadialRing")
        _write_position(el, model)
        _write_par(el, "Radius", model.radius, "deg")
        _write_par(el, "Width", model.width, "deg")
    elif isinstance(model, GeneralizedGaussianSpatialModel) and model.e.value == 0 and model.e.frozen:
        el.set("type", "RadialGeneralGaussian")
        _write_position(el, model)
        _write_par(el, "Radius", model.r_0, "deg")
        _write_par(el, "R_Index", model.eta)
    elif type(model) in _ELLIPTICAL_XML:
        el.set("type", _ELLIPTICAL_XML[type(model)])
        _write_ellipse(el, model, model.r_0)
        if isinstance(model, GammaLibEllipticalGeneralGaussianSpatialModel):
            _write_par(el, "R_Index", model.eta)
    elif isinstance(model, _GammaLibDMProfile):
        _write_dm_profile(el, model)
    elif _write_native_spatial(el, model, name, warn):
        pass
    elif isinstance(model, GammaLibCompositeSpatialModel):
        el.set("type", "Composite")
        for sub_model, comp_name, scale in zip(model.models, model.names, model._scales):
            child = _write_spatial(el, sub_model, name, warn)
            child.set("component", comp_name)
            if scale.value != 1.0 or not scale.frozen:
                child.set("scale", _fmt(scale.value))
                child.set("free_scale", "0" if scale.frozen else "1")
    elif isinstance(model, ConstantSpatialModel):
        el.set("type", "DiffuseIsotropic")
        _write_par(el, "Value", model.value, "sr-1")
    elif isinstance(model, GammaLibDiffuseMapSpatialModel):
        el.set("type", "DiffuseMap")
        if not model.filename:
            raise InputError(f"source {name!r}: diffuse map has no filename to write")
        el.set("file", str(model.filename))
        if not model.normalize:
            el.set("normalize", "0")
        _write_par(el, "Normalization", model.norm)
    elif isinstance(model, GammaLibDiffuseCubeSpatialModel):
        el.set("type", "DiffuseMapCube")
        if not model.filename:
            raise InputError(f"source {name!r}: map cube has no filename to write")
        el.set("file", str(model.filename))
        _write_par(el, "Normalization", model.norm)
    elif isinstance(model, TemplateSpatialModel):
        el.set("type", "DiffuseMap" if model.map.geom.is_image else "DiffuseMapCube")
        if not model.filename:
            raise InputError(f"source {name!r}: template spatial model has no filename to write")
        el.set("file", str(model.filename))
        if model.map.geom.is_image and not model.normalize:
            el.set("normalize", "0")
        _par_el(el, "Normalization", 1.0, vmin=0.001, vmax=1000.0)
    else:
        raise InputError(
            f"source {name!r}: spatial model {type(model).__name__} has no exact GammaLib XML equivalent; "
            "use gpsfast.models GammaLib* spatial models"
        )
    return el


def _write_dm_profile(el, model):
    """A GammaLib dark-matter profile (XML names and units as in `gpsfast.models.xmlio.DM_PROFILES`)."""
    for kind, (cls, extra) in DM_PROFILES.items():
        if type(model) is cls:
            break
    else:
        raise InputError(f"dark-matter profile class {type(model).__name__} has no GammaLib XML type")
    el.set("type", kind)
    _write_position(el, model)
    for xml_name, (par_name, unit) in DM_HALO_PARAMETERS.items():
        _write_par(el, xml_name, model.parameters[par_name], unit)
    for xml_name, par_name in extra.items():
        _write_par(el, xml_name, model.parameters[par_name])


def _write_temporal(parent, model, name, warn):
    el = SubElement(parent, "temporal")
    if isinstance(model, GammaLibConstantTemporalModel):
        el.set("type", "Constant")
        _write_par(el, "Normalization", model.norm)
    elif isinstance(model, ConstantTemporalModel):
        el.set("type", "Constant")
        _par_el(el, "Normalization", 1.0, vmin=0.0, vmax=1000.0)
    elif isinstance(model, GammaLibPhaseCurveTemporalModel):
        el.set("type", "PhaseCurve")
        el.set("file", str(model.filename))
        el.set("normalize", "1" if model.normalize else "0")
        if model.scale != "tt":
            warn(f"source {name!r}: phase-curve reference time scale {model.scale!r} written as TT MJD")
        _write_par(el, "Normalization", model.norm)
        _write_par(el, "MJD", model.t_ref, "day")
        _write_par(el, "Phase", model.phi_ref)
        _write_par(el, "F0", model.f0, "s-1")
        _write_par(el, "F1", model.f1, "s-2")
        _write_par(el, "F2", model.f2, "s-3")
    elif isinstance(model, GammaLibLightCurveTemporalModel):
        el.set("type", "LightCurve")
        el.set("file", str(model.filename))
        _write_par(el, "Normalization", model.norm)
    else:
        raise InputError(f"source {name!r}: temporal model {type(model).__name__} has no GammaLib XML equivalent")


def _write_background(root, model, warn):
    # gammapy names the model "<dataset>-bkg": the XML source takes the dataset name. No ``id``: GammaLib
    # would apply the model only to the observation of that id (a dataset name is not an observation id)
    name = model.datasets_names[0] if model.datasets_names else model.name
    src = SubElement(root, "source", {"name": name, "type": "CTAIrfBackground", "instrument": "CTA"})
    spec = model.spectral_model
    if isinstance(spec, PowerLawNormSpectralModel):
        el = SubElement(src, "spectrum", {"type": "PowerLaw"})
        _write_par(el, "Prefactor", spec.norm)
        _write_par(el, "Index", spec.tilt, negate=True)
        _write_par(el, "PivotEnergy", spec.reference, "MeV")
    else:
        raise InputError(f"background {model.name!r}: spectral model {type(spec).__name__} cannot be written to XML")
    if model.spatial_model is not None:
        warn(f"background {model.name!r}: spatial correction model not written (no CTAIrfBackground equivalent)")


def _source_type(spatial):
    if isinstance(spatial, PointSpatialModel):
        return "PointSource"
    if isinstance(spatial, (ConstantSpatialModel, TemplateSpatialModel)):
        return "DiffuseSource"
    if isinstance(spatial, GammaLibCompositeSpatialModel):
        return "CompositeSource"
    return "ExtendedSource"


def write_xml(models, path, overwrite=False):
    """Write gammapy models as a ctools / GammaLib XML model file.

    Parameters
    ----------
    models : `~gammapy.modeling.models.Models` or list of models
        Sky models (and `~gammapy.modeling.models.FoVBackgroundModel`, written
        as ``CTAIrfBackground``).
    path : str or `~pathlib.Path`
        Output file.
    overwrite : bool
        Replace an existing file.

    Returns
    -------
    warnings : list of str
        Conversions that are not exact, one line each.

    Raises
    ------
    InputError
        If the file exists and ``overwrite`` is False, or a model has no XML equivalent.
    """
    messages = []

    def warn(text):
        messages.append(text)
        log.warning(text)

    root = Element("source_library", {"title": "source library"})
    models = list(models)
    names = [m.name for m in models]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise InputError(f"write_xml: duplicate source names: {', '.join(dupes)}")
    for model in models:
        if isinstance(model, FoVBackgroundModel):
            _write_background(root, model, warn)
            continue
        if not isinstance(model, SkyModel):
            raise InputError(f"model {model.name!r} of type {type(model).__name__} cannot be written to XML")
        if model.spatial_model is None:
            raise InputError(f"source {model.name!r} has no spatial model; GammaLib sky sources need one")
        kind = _source_type(model.spatial_model)
        src = SubElement(root, "source", {"name": model.name, "type": kind})
        _write_spectral(src, model.spectral_model, model.name, warn)
        _write_spatial(src, model.spatial_model, model.name, warn)
        if model.temporal_model is not None:
            _write_temporal(src, model.temporal_model, model.name, warn)
    for el in root.iter():
        if el.get("file"):
            el.set("file", _file_attr(el.get("file"), path))
    indent(root, space="  ")
    with atomic_output(path, overwrite) as tmp:
        ElementTree(root).write(tmp, encoding="UTF-8", xml_declaration=True)
    return messages
