"""Spatial and temporal parts of the XML reader: GammaLib ``<spatialModel>`` and ``<temporal>`` elements."""
import functools
import math

import astropy.units as u
from gammapy.modeling import Parameter
from gammapy.modeling.models import (
    ConstantSpatialModel,
    ConstantTemporalModel,
    GeneralizedGaussianSpatialModel,
    PointSpatialModel,
)

from ..errors import InputError
from .bulk import build_component
from .diffuse import GammaLibDiffuseCubeSpatialModel, GammaLibDiffuseMapSpatialModel
from .profiles import GammaLibGaussianProfileSpatialModel
from .dmprofiles import GammaLibDMBurkertSpatialModel, GammaLibDMEinastoSpatialModel, GammaLibDMZhaoSpatialModel
from .spatial import (
    GammaLibCompositeSpatialModel,
    GammaLibDiskSpatialModel,
    GammaLibEllipticalDiskSpatialModel,
    GammaLibEllipticalGaussianSpatialModel,
    GammaLibEllipticalGeneralGaussianSpatialModel,
    GammaLibGaussianSpatialModel,
    GammaLibRingSpatialModel,
    GammaLibShellSpatialModel,
    pa_to_phi,
)
from .temporal import (
    GammaLibConstantTemporalModel,
    GammaLibLightCurveTemporalModel,
    GammaLibPhaseCurveTemporalModel,
)
from .xmlfiles import check_fits_file
from .xml_common import SPATIAL_TYPES, XmlPar, parse_pars, pick, unknown

__all__ = ["read_spatial", "read_temporal", "DM_PROFILES", "DM_HALO_PARAMETERS"]


def _position(ctx, el, pars):
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


#: Size parameters of the spatial models, positive (zero allowed for the inner radii in `_ZERO_ALLOWED`).
_SIZES = ("Radius", "Sigma", "Width", "MajorRadius", "MinorRadius", "R_Index")
_ZERO_ALLOWED = {("RadialShell", "Radius"), ("ShellFunction", "Radius"), ("RadialRing", "Radius")}


def _check_sizes(ctx, el, kind, pars):
    """Radii, widths, sigmas and R_Index must be positive (an inner radius may be zero)."""
    for name in _SIZES:
        if name not in pars:
            continue
        value = pars[name].value
        if value < 0 or (value == 0 and (kind, name) not in _ZERO_ALLOWED):
            need = ">= 0" if (kind, name) in _ZERO_ALLOWED else "> 0"
            raise ctx.error(f"spatialModel {kind!r}: parameter {name!r} = {value:g} must be {need}", el)


def read_spatial(ctx, el):
    """A ``<spatialModel>`` element as a gammapy spatial model."""
    kind = el.get("type")
    pars = parse_pars(ctx, el)
    p = functools.partial(pick, ctx, el, pars)
    if kind in ("DiffuseIsotropic", "ConstantValue"):
        value = p("Value", "Normalization").to_gammapy("value", 1.0, "sr-1")
        return build_component(ConstantSpatialModel, value=value)
    if kind in ("DiffuseMap", "SpatialMap", "DiffuseMapCube", "MapCubeFunction"):
        return _read_map(ctx, el, kind, p("Normalization", "Prefactor", "Value").to_gammapy("norm"))
    if kind not in SPATIAL_TYPES:
        raise ctx.error(unknown("spatialModel", kind), el)
    if kind == "Composite":
        return _read_spatial_composite(ctx, el)
    _check_sizes(ctx, el, kind, pars)
    lon, lat, frame = _position(ctx, el, pars)
    pos = dict(lon_0=lon.to_gammapy("lon_0", 1.0, "deg"), lat_0=lat.to_gammapy("lat_0", 1.0, "deg"), frame=frame)
    if kind in DM_PROFILES:
        return _read_dm_profile(ctx, el, p, kind, pos)
    if kind in ("PointSource", "SkyDirFunction"):
        return build_component(PointSpatialModel, **pos)
    if kind in ("RadialDisk", "DiskFunction"):
        return build_component(GammaLibDiskSpatialModel, r_0=p("Radius").to_gammapy("r_0", 1.0, "deg"), **pos)
    if kind == "GaussianProfile":
        sigma = p("Sigma").to_gammapy("sigma", 1.0, "deg")
        return build_component(GammaLibGaussianProfileSpatialModel, sigma=sigma, **pos)
    if kind in ("RadialGaussian", "GaussFunction"):
        sigma = p("Sigma").to_gammapy("sigma", 1.0, "deg")
        return build_component(GammaLibGaussianSpatialModel, sigma=sigma, **pos)
    if kind in ("RadialShell", "ShellFunction"):
        return build_component(GammaLibShellSpatialModel,
            radius=p("Radius").to_gammapy("radius", 1.0, "deg"),
            width=p("Width").to_gammapy("width", 1.0, "deg"),
            **pos,
        )
    if kind == "RadialRing":
        return build_component(GammaLibRingSpatialModel,
            radius=p("Radius").to_gammapy("radius", 1.0, "deg"),
            width=p("Width").to_gammapy("width", 1.0, "deg"),
            **pos,
        )
    if kind == "RadialGeneralGaussian":
        return build_component(GeneralizedGaussianSpatialModel,
            r_0=p("Radius").to_gammapy("r_0", 1.0, "deg"),
            eta=p("R_Index").to_gammapy("eta"),
            e=Parameter("e", 0.0, min=0, max=1, frozen=True),
            phi=Parameter("phi", 0.0, unit="deg", frozen=True),
            **pos,
        )
    if kind == "EllipticalGeneralGaussian":
        shape = _ellipse(ctx, p("PA"), p("MajorRadius"), p("MinorRadius"), lon, lat, frame)
        eta = p("R_Index").to_gammapy("eta")
        return build_component(GammaLibEllipticalGeneralGaussianSpatialModel, eta=eta, **shape, **pos)
    if kind in ("EllipticalDisk", "EllipticalGaussian", "EllipticalGauss"):
        cls = GammaLibEllipticalDiskSpatialModel if kind == "EllipticalDisk" else GammaLibEllipticalGaussianSpatialModel
        shape = _ellipse(ctx, p("PA"), p("MajorRadius"), p("MinorRadius"), lon, lat, frame)
        return build_component(cls, **shape, **pos)
    raise ctx.error(unknown("spatialModel", kind), el)


def _read_map(ctx, el, kind, norm):
    """DiffuseMap or DiffuseMapCube, prepared and interpolated as GammaLib does, with Normalization as ``norm``."""
    path = ctx.resolve(el, gz=True)
    try:
        check_fits_file(path, "map")
        if kind in ("DiffuseMapCube", "MapCubeFunction"):
            return GammaLibDiffuseCubeSpatialModel.read(path, norm=norm)
        normalize = el.get("normalize", "1").strip().lower() not in ("0", "false")
        return GammaLibDiffuseMapSpatialModel.read(path, normalize=normalize, norm=norm)
    except InputError as exc:
        raise ctx.error(f"{kind}: {exc}", el) from None
    except Exception as exc:
        raise ctx.error(f"{kind}: cannot read map {path} ({type(exc).__name__}: {_first_line(exc)})", el) from None


def _first_line(exc):
    """First line of an exception message, at most 200 characters."""
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else ""


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


def _read_dm_profile(ctx, el, p, kind, pos):
    cls, extra = DM_PROFILES[kind]
    kwargs = {name: p(xml_name).to_gammapy(name, 1.0, unit) for xml_name, (name, unit) in DM_HALO_PARAMETERS.items()}
    kwargs.update({name: p(xml_name).to_gammapy(name) for xml_name, name in extra.items()})
    ctx.warn(f"{kind}: line-of-sight integral and normalisation computed exactly; GammaLib tabulates the "
             "profile on 100 nodes (values differ at the level of that interpolation)")
    return build_component(cls, **kwargs, **pos)


def _read_spatial_composite(ctx, el):
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


def _ellipse(ctx, pa, major, minor, lon, lat, frame):
    """MajorRadius, MinorRadius, PA (east of celestial north) to gammapy r_0, e, phi (model frame)."""
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
    rot = u.Quantity(pa_to_phi(0.0, lon.value * u.deg, lat.value * u.deg, frame)).to_value("deg")
    return dict(
        r_0=major.to_gammapy("r_0", 1.0, "deg"),
        e=Parameter("e", e, min=0.0, max=1.0, error=e_err, frozen=not (minor.free or major.free)),
        phi=XmlPar("PA", pa_value, pa.error, pa.min, pa.max, pa.free).to_gammapy("phi", 1.0, "deg", offset=rot),
    )


# --------------------------------------------------------------------------- temporal


def read_temporal(ctx, el):
    """A ``<temporal>`` element as a gammapy temporal model."""
    kind = el.get("type")
    pars = parse_pars(ctx, el)
    p = functools.partial(pick, ctx, el, pars)
    if kind == "Constant":
        norm = p("Normalization")
        if norm.value == 1.0 and not norm.free:
            return ConstantTemporalModel()
        return build_component(GammaLibConstantTemporalModel, norm=norm.to_gammapy("norm"))
    if kind not in ("PhaseCurve", "LightCurve"):
        raise ctx.error(unknown("temporal", kind), el)
    path = ctx.resolve(el, gz=True)
    try:
        check_fits_file(path, f"{kind} file")
        if kind == "LightCurve":
            return GammaLibLightCurveTemporalModel(path, norm=p("Normalization").to_gammapy("norm"))
        normalize = el.get("normalize", "1").strip().lower() in ("1", "true", "yes")
        return GammaLibPhaseCurveTemporalModel.read(
            path,
            normalize=normalize,
            norm=p("Normalization").to_gammapy("norm"),
            t_ref=p("MJD").to_gammapy("t_ref", 1.0, "day"),
            phi_ref=p("Phase").to_gammapy("phi_ref"),
            f0=p("F0").to_gammapy("f0", 1.0, "s-1"),
            f1=p("F1").to_gammapy("f1", 1.0, "s-2"),
            f2=p("F2").to_gammapy("f2", 1.0, "s-3"),
        )
    except InputError as exc:
        raise ctx.error(f"temporal {kind}: {exc}", el) from None


# --------------------------------------------------------------------------- sources
