"""GammaLib temporal types (``<temporal type=...>``) in the type registry."""
from gammapy.modeling.models import ConstantTemporalModel

from ...errors import InputError
from ..bulk import build_component
from ..temporal import GammaLibConstantTemporalModel, GammaLibLightCurveTemporalModel, GammaLibPhaseCurveTemporalModel
from ..xmlfiles import check_fits_file
from .params import Conversion, par_element
from .registry import Par, XmlType, read_component, register

__all__ = ["read_temporal"]

TEMPORAL = "temporal"
NORM = Par("Normalization", "norm")


def read_temporal(ctx, el):
    """A ``<temporal>`` element as a gammapy temporal model."""
    return read_component(ctx, el, TEMPORAL)


def _temporal(*names, cls, pars=(), **options):
    return register(XmlType(TEMPORAL, names, cls, pars, **options))


def _read_constant(entry, ctx, el, pars, physical):
    """gammapy's ``ConstantTemporalModel`` for a fixed Normalization of 1, else GammaLib's with its ``norm``."""
    norm = NORM.read(ctx, el, pars)
    if norm.value == 1.0 and norm.frozen:
        return ConstantTemporalModel()
    return build_component(GammaLibConstantTemporalModel, norm=norm)


_temporal("Constant", cls=GammaLibConstantTemporalModel, pars=(NORM,), read=_read_constant)
_temporal("Constant", cls=ConstantTemporalModel, readable=False,
          write=lambda entry, el, model, name, warn: par_element(el, "Normalization", 1.0, vmin=0.0, vmax=1000.0))


def _read_curve(entry, ctx, el, pars, physical):
    """A light curve, or a phase curve with its timing solution, from a FITS file."""
    kind = entry.xml_type
    path = ctx.resolve(el, gz=True)
    try:
        check_fits_file(path, f"{kind} file")
        kwargs = entry.read_kwargs(ctx, el, pars)
        if entry.cls is GammaLibLightCurveTemporalModel:
            return GammaLibLightCurveTemporalModel(path, **kwargs)
        normalize = el.get("normalize", "1").strip().lower() in ("1", "true", "yes")
        return GammaLibPhaseCurveTemporalModel.read(path, normalize=normalize, **kwargs)
    except InputError as exc:
        raise ctx.error(f"temporal {kind}: {exc}", el) from None


def _write_light_curve(entry, el, model, name, warn):
    el.set("file", str(model.filename))
    entry.write_parameters(el, model)


def _write_phase_curve(entry, el, model, name, warn):
    el.set("file", str(model.filename))
    el.set("normalize", "1" if model.normalize else "0")
    if model.scale != "tt":
        warn(f"source {name!r}: phase-curve reference time scale {model.scale!r} written as TT MJD")
    entry.write_parameters(el, model)


_temporal("LightCurve", cls=GammaLibLightCurveTemporalModel, pars=(NORM,), read=_read_curve,
          write=_write_light_curve)
_temporal("PhaseCurve", cls=GammaLibPhaseCurveTemporalModel, read=_read_curve, write=_write_phase_curve,
          pars=(NORM, Par("MJD", "t_ref", Conversion("day", 1.0, "day")), Par("Phase", "phi_ref"),
                Par("F0", "f0", Conversion("s-1", 1.0, "s-1")), Par("F1", "f1", Conversion("s-2", 1.0, "s-2")),
                Par("F2", "f2", Conversion("s-3", 1.0, "s-3"))))
