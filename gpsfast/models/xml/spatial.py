"""GammaLib spatial types (``<spatialModel type=...>``) in the type registry.

Positions are ``RA``/``DEC`` (icrs) or ``GLON``/``GLAT`` (galactic), sizes in
degrees. Elliptical models: ``r_0`` = MajorRadius, ``e = sqrt(1 - (b/a)^2)``,
and ``phi`` (model frame) = PA (east of celestial north) minus the position
angle of the model frame's north at the centre. gammapy's own models that
GammaLib lacks are written as the closest GammaLib type, with a warning naming
what differs.
"""
import math

import astropy.units as u
import numpy as np
from gammapy.modeling import Parameter
from gammapy.modeling.models import (
    ConstantSpatialModel,
    DiskSpatialModel,
    GaussianSpatialModel,
    GeneralizedGaussianSpatialModel,
    PointSpatialModel,
    Shell2SpatialModel,
    ShellSpatialModel,
    TemplateSpatialModel,
)

from ...errors import InputError
from ..bulk import build_component
from ..diffuse import GammaLibDiffuseCubeSpatialModel, GammaLibDiffuseMapSpatialModel
from ..dmprofiles import GammaLibDMBurkertSpatialModel, GammaLibDMEinastoSpatialModel, GammaLibDMZhaoSpatialModel
from ..profiles import GammaLibGaussianProfileSpatialModel
from ..spatial import (
    GammaLibCompositeSpatialModel,
    GammaLibDiskSpatialModel,
    GammaLibEllipticalDiskSpatialModel,
    GammaLibEllipticalGaussianSpatialModel,
    GammaLibEllipticalGeneralGaussianSpatialModel,
    GammaLibGaussianSpatialModel,
    GammaLibRingSpatialModel,
    GammaLibShellSpatialModel,
    pa_to_phi,
    phi_to_pa,
)
from ..xmlfiles import check_fits_file
from .params import DEG, PLAIN, Conversion, XmlPar, par_element, pick, write_par
from .registry import Geometry, Par, XmlType, read_component, register, write_component

__all__ = ["DM_HALO_PARAMETERS", "DM_PROFILES", "read_spatial"]

SPATIAL = "spatialModel"


def read_spatial(ctx, el):
    """A ``<spatialModel>`` element as a gammapy spatial model."""
    return read_component(ctx, el, SPATIAL)


def _spatial(*names, cls, pars=(), **options):
    return register(XmlType(SPATIAL, names, cls, pars, **options))


# --------------------------------------------------------------------------- geometry

#: Size parameters of the spatial models, positive (zero allowed for the inner radii in `_ZERO_ALLOWED`).
_SIZES = ("Radius", "Sigma", "Width", "MajorRadius", "MinorRadius", "R_Index")
_ZERO_ALLOWED = {("RadialShell", "Radius"), ("ShellFunction", "Radius"), ("RadialRing", "Radius")}


def _check_sizes(ctx, el, pars):
    """Radii, widths, sigmas and R_Index must be positive (an inner radius may be zero)."""
    kind = el.get("type")
    for name in _SIZES:
        if name not in pars:
            continue
        value = pars[name].value
        if value < 0 or (value == 0 and (kind, name) not in _ZERO_ALLOWED):
            need = ">= 0" if (kind, name) in _ZERO_ALLOWED else "> 0"
            raise ctx.error(f"spatialModel {kind!r}: parameter {name!r} = {value:g} must be {need}", el)


def _lon_lat(ctx, el, pars):
    if "RA" in pars or "DEC" in pars:
        lon, lat, frame = pick(ctx, el, pars, "RA"), pick(ctx, el, pars, "DEC"), "icrs"
    elif "GLON" in pars or "GLAT" in pars:
        lon, lat, frame = pick(ctx, el, pars, "GLON"), pick(ctx, el, pars, "GLAT"), "galactic"
    else:
        raise ctx.error(f"spatialModel {el.get('type')!r} needs RA/DEC or GLON/GLAT parameters", el)
    if not -90.0 <= lat.value <= 90.0:
        raise ctx.error(f"spatialModel {el.get('type')!r}: {lat.name}={lat.value:g} deg is not a latitude "
                        "(must be within [-90, 90])", el)
    return lon, lat, frame


class Position(Geometry):
    """``RA``/``DEC`` or ``GLON``/``GLAT`` <-> ``lon_0``, ``lat_0`` and ``frame`` (sizes checked on reading)."""

    def read(self, ctx, el, pars):
        _check_sizes(ctx, el, pars)
        lon, lat, frame = _lon_lat(ctx, el, pars)
        return dict(lon_0=DEG.read(lon, "lon_0"), lat_0=DEG.read(lat, "lat_0"), frame=frame)

    def write(self, el, model):
        lon_name, lat_name = ("GLON", "GLAT") if model.frame == "galactic" else ("RA", "DEC")
        if model.frame not in ("galactic", "icrs", "fk5"):
            raise InputError(f"spatial frame {model.frame!r} cannot be written to XML (use icrs or galactic)")
        DEG.write(el, lon_name, model.lon_0)
        DEG.write(el, lat_name, model.lat_0)


class Ellipse(Position):
    """The position, and ``PA``, ``MinorRadius``, ``MajorRadius`` <-> ``r_0``, ``e``, ``phi``.

    Parameters
    ----------
    major : str
        gammapy parameter written as ``MajorRadius`` (``r_0``, or ``sigma`` of a
        gammapy Gaussian); it is read as ``r_0``.
    """

    def __init__(self, major="r_0"):
        self.major = major

    def read(self, ctx, el, pars):
        """MajorRadius, MinorRadius, PA (east of celestial north) to gammapy r_0, e, phi (model frame)."""
        position = super().read(ctx, el, pars)
        pa, major, minor = (pick(ctx, el, pars, name) for name in ("PA", "MajorRadius", "MinorRadius"))
        a, b = major.value, minor.value
        pa_value = pa.value
        if b > a:
            ctx.warn("elliptical model has MinorRadius > MajorRadius: axes swapped and PA rotated by 90 deg")
            major, minor = minor, major
            a, b = b, a
            pa_value += 90.0
        e = math.sqrt(1.0 - (b / a) ** 2)
        # error propagation of e = sqrt(1 - (b/a)^2), neglecting the a-b correlation
        e_err = 0.0
        if e > 0:
            e_err = (b / (a * a * e)) * math.hypot(minor.error, b * major.error / a)
        lon, lat = position["lon_0"].value, position["lat_0"].value
        rot = u.Quantity(pa_to_phi(0.0, lon * u.deg, lat * u.deg, position["frame"])).to_value("deg")
        return dict(
            r_0=DEG.read(major, "r_0"),
            e=Parameter("e", e, min=0.0, max=1.0, error=e_err, frozen=not (minor.free or major.free)),
            phi=XmlPar("PA", pa_value, pa.error, pa.min, pa.max, pa.free).to_gammapy("phi", 1.0, "deg", offset=rot),
            **position,
        )

    def write(self, el, model):
        """Position, PA (east of celestial north), MinorRadius and MajorRadius of an elliptical model."""
        super().write(el, model)
        major = getattr(model, self.major)
        rot = u.Quantity(phi_to_pa(0.0, model.lon_0.quantity, model.lat_0.quantity, model.frame)).to_value("deg")
        write_par(el, "PA", model.phi, "deg", offset=rot)
        minor = major.copy()
        factor = math.sqrt(1.0 - model.e.value**2)
        minor.value = major.value * factor
        minor.error = major.error * factor
        minor.frozen = model.e.frozen and major.frozen
        DEG.write(el, "MinorRadius", minor)
        DEG.write(el, "MajorRadius", major)


POSITION = Position()
RADIUS = Par("Radius", "r_0", DEG)
SIGMA = Par("Sigma", "sigma", DEG)
SHELL = (Par("Radius", "radius", DEG), Par("Width", "width", DEG))
R_INDEX = Par("R_Index", "eta")


def _radial(model):
    """A model without ellipticity parameters, or with ``e`` a fixed 0."""
    return "e" not in model.parameters.names or (model.e.value == 0 and model.e.frozen)


def _elliptical(model):
    return not _radial(model)


# --------------------------------------------------------------------------- analytic models

_spatial("PointSource", "SkyDirFunction", cls=PointSpatialModel, geometry=POSITION)
_spatial("RadialDisk", "DiskFunction", cls=GammaLibDiskSpatialModel, geometry=POSITION, pars=(RADIUS,))
_spatial("RadialGaussian", "GaussFunction", cls=GammaLibGaussianSpatialModel, geometry=POSITION, pars=(SIGMA,))
_spatial("RadialShell", "ShellFunction", cls=GammaLibShellSpatialModel, geometry=POSITION, pars=SHELL)
_spatial("EllipticalDisk", cls=GammaLibEllipticalDiskSpatialModel, geometry=Ellipse())
_spatial("EllipticalGaussian", "EllipticalGauss", cls=GammaLibEllipticalGaussianSpatialModel, geometry=Ellipse())
_spatial("RadialRing", cls=GammaLibRingSpatialModel, geometry=POSITION, pars=SHELL)
_spatial("RadialGeneralGaussian", cls=GeneralizedGaussianSpatialModel, geometry=POSITION, write_if=_radial,
         pars=(RADIUS, R_INDEX),
         fixed=(("e", lambda: Parameter("e", 0.0, min=0, max=1, frozen=True)),
                ("phi", lambda: Parameter("phi", 0.0, unit="deg", frozen=True))))
_spatial("GaussianProfile", cls=GammaLibGaussianProfileSpatialModel, geometry=POSITION, pars=(SIGMA,))
_spatial("EllipticalGeneralGaussian", cls=GammaLibEllipticalGeneralGaussianSpatialModel, geometry=Ellipse(),
         pars=(R_INDEX,))

# gammapy's own models, written as the closest GammaLib type


def _gaussian_warning(model, name, xml_type):
    return (f"source {name!r}: gammapy GaussianSpatialModel written as GammaLib {xml_type}; GammaLib's is flat-sky "
            "(and cut at 3 r_eff when elliptical): profiles differ at order sigma^2")


def _disk_warning(model, name, xml_type):
    if model.edge_width.value > 0:
        return (f"source {name!r}: DiskSpatialModel edge_width={model.edge_width.value} not representable; "
                f"GammaLib {xml_type} has a hard edge")
    return None


def _shell_warning(model, name, xml_type):
    return (f"source {name!r}: gammapy {type(model).__name__} (flat-sky projection) written as GammaLib "
            "RadialShell (spherical projection): profiles differ at order radius^2")


def _write_shell2(entry, el, model, name, warn):
    """gammapy's ``Shell2SpatialModel`` (``r_0`` outer radius, ``eta`` width fraction) as a RadialShell."""
    POSITION.write(el, model)
    radius, width = model.r_0.copy(), model.eta.copy()
    radius.value = model.r_0.value * (1 - model.eta.value)
    width.value = model.r_0.value * model.eta.value
    width.unit = radius.unit
    width.min = width.max = np.nan
    DEG.write(el, "Radius", radius)
    DEG.write(el, "Width", width)


NATIVE = {"readable": False}
_spatial("RadialGaussian", cls=GaussianSpatialModel, geometry=POSITION, pars=(SIGMA,), write_if=_radial,
         warning=_gaussian_warning, **NATIVE)
_spatial("EllipticalGaussian", cls=GaussianSpatialModel, geometry=Ellipse("sigma"), warning=_gaussian_warning,
         **NATIVE)
_spatial("RadialDisk", cls=DiskSpatialModel, geometry=POSITION, pars=(RADIUS,), write_if=_radial,
         warning=_disk_warning, **NATIVE)
_spatial("EllipticalDisk", cls=DiskSpatialModel, geometry=Ellipse(), warning=_disk_warning, **NATIVE)
_spatial("RadialShell", cls=ShellSpatialModel, geometry=POSITION, pars=SHELL, warning=_shell_warning, **NATIVE)
_spatial("RadialShell", cls=Shell2SpatialModel, write=_write_shell2, warning=_shell_warning, **NATIVE)
_spatial("EllipticalGeneralGaussian", cls=GeneralizedGaussianSpatialModel, geometry=Ellipse(), pars=(R_INDEX,),
         warning=lambda model, name, xml_type: f"source {name!r}: GammaLib EllipticalGeneralGaussian is cut at 5 "
                                               "semi-major axes",
         **NATIVE)


# --------------------------------------------------------------------------- diffuse models

_spatial("DiffuseIsotropic", "ConstantValue", cls=ConstantSpatialModel,
         pars=(Par("Value", "value", Conversion("sr-1", 1.0, "sr-1"), aliases=("Normalization",)),))


def _first_line(exc):
    """First line of an exception message, at most 200 characters."""
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else ""


def _read_map(entry, ctx, el, pars, physical):
    """DiffuseMap or DiffuseMapCube, prepared and interpolated as GammaLib does, with Normalization as ``norm``."""
    kind = el.get("type")
    kwargs = entry.read_kwargs(ctx, el, pars)
    path = ctx.resolve(el, gz=True)
    try:
        check_fits_file(path, "map")
        if entry.cls is GammaLibDiffuseCubeSpatialModel:
            return GammaLibDiffuseCubeSpatialModel.read(path, **kwargs)
        normalize = el.get("normalize", "1").strip().lower() not in ("0", "false")
        return GammaLibDiffuseMapSpatialModel.read(path, normalize=normalize, **kwargs)
    except InputError as exc:
        raise ctx.error(f"{kind}: {exc}", el) from None
    except Exception as exc:
        raise ctx.error(f"{kind}: cannot read map {path} ({type(exc).__name__}: {_first_line(exc)})", el) from None


def _write_map(entry, el, model, name, warn):
    if not model.filename:
        what = "diffuse map" if entry.xml_type == "DiffuseMap" else "map cube"
        raise InputError(f"source {name!r}: {what} has no filename to write")
    el.set("file", str(model.filename))
    if entry.xml_type == "DiffuseMap" and not model.normalize:
        el.set("normalize", "0")
    entry.write_parameters(el, model)


MAP_NORM = Par("Normalization", "norm", aliases=("Prefactor", "Value"))
_spatial("DiffuseMap", "SpatialMap", cls=GammaLibDiffuseMapSpatialModel, pars=(MAP_NORM,), read=_read_map,
         write=_write_map)
_spatial("DiffuseMapCube", "MapCubeFunction", cls=GammaLibDiffuseCubeSpatialModel, pars=(MAP_NORM,), read=_read_map,
         write=_write_map)


def _write_template(entry, el, model, name, warn):
    """gammapy's own map template: written with a fixed ``Normalization`` of 1 (it has no such parameter)."""
    if not model.filename:
        raise InputError(f"source {name!r}: template spatial model has no filename to write")
    el.set("file", str(model.filename))
    if model.map.geom.is_image and not model.normalize:
        el.set("normalize", "0")
    par_element(el, "Normalization", 1.0, vmin=0.001, vmax=1000.0)


_spatial("DiffuseMap", cls=TemplateSpatialModel, write_if=lambda m: m.map.geom.is_image, write=_write_template,
         **NATIVE)
_spatial("DiffuseMapCube", cls=TemplateSpatialModel, write=_write_template, **NATIVE)


def _read_composite(entry, ctx, el, pars, physical):
    children = el.findall("spatialModel")
    if not children:
        raise ctx.error("Composite spatialModel has no <spatialModel> component", el)
    models, scales, names = [], [], []
    for i, child in enumerate(children):
        models.append(read_spatial(ctx, child))
        names.append(child.get("component") or str(i + 1))
        try:
            scale = float(child.get("scale", "1"))
        except ValueError:
            scale = math.nan
        if not (math.isfinite(scale) and scale > 0):
            raise ctx.error(f"Composite component {names[-1]!r}: scale={child.get('scale')!r} is not a positive "
                            "number", child)
        free = child.get("free_scale", "0").strip().lower() in ("1", "true", "yes")
        scales.append(Parameter(f"scale_{i}", scale, min=1e-10, max=1e13, frozen=not free))
    if len(set(names)) != len(names):
        raise ctx.error(f"Composite spatialModel has duplicate component names: {', '.join(names)}", el)
    return GammaLibCompositeSpatialModel(models, scales=scales, names=names)


def _write_composite(entry, el, model, name, warn):
    for sub_model, comp_name, scale in zip(model.models, model.names, model.scales):
        child = write_component(el, sub_model, SPATIAL, name, warn)
        child.set("component", comp_name)
        if scale.value != 1.0 or not scale.frozen:
            child.set("scale", repr(float(scale.value)))
            child.set("free_scale", "0" if scale.frozen else "1")


_spatial("Composite", cls=GammaLibCompositeSpatialModel, read=_read_composite, write=_write_composite)


# --------------------------------------------------------------------------- dark matter

#: GammaLib dark-matter profile types -> (gpsfast class, extra shape parameters XML -> gammapy).
DM_PROFILES = {
    "DMBurkertProfile": (GammaLibDMBurkertSpatialModel, {}),
    "DMEinastoProfile": (GammaLibDMEinastoSpatialModel, {"Alpha": "alpha"}),
    "DMZhaoProfile": (GammaLibDMZhaoSpatialModel, {"Alpha": "alpha", "Beta": "beta", "Gamma": "gamma"}),
}
#: Halo parameters shared by the DM profiles: XML name -> (gammapy name, unit).
DM_HALO_PARAMETERS = {
    "ScaleRadius": ("scale_radius", "kpc"),
    "ScaleDensity": ("scale_density", "GeV cm-3"),
    "HaloDistance": ("halo_distance", "kpc"),
    "ThetaMin": ("theta_min", "deg"),
    "ThetaMax": ("theta_max", "deg"),
    "CoreRadius": ("core_radius", "kpc"),
}


def _read_dm_profile(entry, ctx, el, pars, physical):
    kwargs = entry.read_kwargs(ctx, el, pars)
    ctx.warn(f"{entry.xml_type}: line-of-sight integral and normalisation computed exactly; GammaLib tabulates the "
             "profile on 100 nodes (values differ at the level of that interpolation)")
    return build_component(entry.cls, **kwargs)


_HALO = tuple(Par(xml, name, Conversion(unit, 1.0, unit)) for xml, (name, unit) in DM_HALO_PARAMETERS.items())
for _kind, (_cls, _extra) in DM_PROFILES.items():
    _spatial(_kind, cls=_cls, geometry=POSITION, pars=_HALO + tuple(Par(x, n, PLAIN) for x, n in _extra.items()),
             read=_read_dm_profile)
