"""GammaLib spectral types (``<spectrum type=...>``) in the type registry.

Fluxes are differential (ph/cm2/s/MeV) or integral (ph/cm2/s) in GammaLib and
per TeV in gammapy; in a relative context (a background, a factor of a
product, the spectrum of a map cube) they are plain factors. Indices are
negative in GammaLib. A cutoff energy is gammapy's ``1 / lambda_``.
"""
import operator
from xml.etree.ElementTree import SubElement

import astropy.units as u
from gammapy.modeling import Parameter
from gammapy.modeling.models import (
    BrokenPowerLawSpectralModel,
    CompoundSpectralModel,
    ConstantSpectralModel,
    ExpCutoffPowerLawSpectralModel,
    GaussianSpectralModel,
    LogParabolaSpectralModel,
    PowerLaw2SpectralModel,
    PowerLawSpectralModel,
    SmoothBrokenPowerLawSpectralModel,
)

from ...errors import InputError
from ..spectral import (
    BinFunctionSpectralModel,
    ExponentialSpectralModel,
    FileFunctionSpectralModel,
    GammaLibPowerLaw2SpectralModel,
    GammaLibSmoothBrokenPowerLawSpectralModel,
    GammaLibSuperExpCutoffPowerLawSpectralModel,
    NodeFunctionSpectralModel,
    PowerLawEnergyFluxSpectralModel,
    read_file_function,
)
from ..spectral_table import GammaLibTableSpectralModel
from .params import CUTOFF, DIFF_FLUX, ENERGY, INDEX, INVERSE_CUTOFF, PHOTON_FLUX, PLAIN, Conversion, parse_pars, pick
from .registry import Par, XmlType, read_component, register, write_component

__all__ = ["read_spectral"]

SPECTRUM = "spectrum"
PREFACTOR = Par("Prefactor", "amplitude", DIFF_FLUX)
PIVOT = Par("PivotEnergy", "reference", ENERGY, aliases=("Scale",))
LOWER, UPPER = Par("LowerLimit", "emin", ENERGY), Par("UpperLimit", "emax", ENERGY)
INDEX1, INDEX2 = Par("Index1", "index1", INDEX), Par("Index2", "index2", INDEX)
BREAK = Par("BreakEnergy", "ebreak", ENERGY, aliases=("BreakValue",))
NORM = Par("Normalization", "norm")


def read_spectral(ctx, el, physical=True):
    """A ``<spectrum>`` element as a gammapy spectral model (``physical``: a flux, else a relative factor)."""
    return read_component(ctx, el, SPECTRUM, physical)


def _spectrum(*names, cls, pars=(), **options):
    return register(XmlType(SPECTRUM, names, cls, pars, **options))


def _plain_cutoff(model):
    """An exponential cutoff power law that is not super-exponential (``alpha`` a fixed 1)."""
    return model.alpha.value == 1.0 and model.alpha.frozen


def _alpha_one():
    return Parameter("alpha", 1.0, frozen=True)


# --------------------------------------------------------------------------- power laws

_spectrum("PowerLaw", "PowerLaw2", cls=GammaLibPowerLaw2SpectralModel, writes=(PowerLaw2SpectralModel,),
          signature=("PhotonFlux", "Integral"),
          pars=(Par("PhotonFlux", "amplitude", PHOTON_FLUX, aliases=("Integral",)), Par("Index", "index", INDEX),
                LOWER, UPPER))
_spectrum("PowerLaw", cls=PowerLawEnergyFluxSpectralModel, signature=("EnergyFlux",),
          pars=(Par("EnergyFlux", "energy_flux", Conversion("erg cm-2 s-1", 1.0, "erg cm-2 s-1")),
                Par("Index", "index", INDEX), LOWER, UPPER))
_spectrum("PowerLaw", cls=PowerLawSpectralModel,
          pars=(Par("Prefactor", "amplitude", DIFF_FLUX, aliases=("Normalization",)), Par("Index", "index", INDEX),
                PIVOT))

# GModelSpectralExpInvPlaw: written for a cutoff at infinity (lambda_ = 0) or one that may go there
_spectrum("ExponentialCutoffPowerLaw", "ExpCutoff", cls=ExpCutoffPowerLawSpectralModel,
          signature=("InverseCutoffEnergy",),
          write_if=lambda m: _plain_cutoff(m) and (m.lambda_.value == 0 or m.lambda_.min == 0),
          pars=(PREFACTOR, Par("Index", "index", INDEX), Par("InverseCutoffEnergy", "lambda_", INVERSE_CUTOFF),
                PIVOT),
          fixed=(("alpha", _alpha_one),))
_spectrum("ExponentialCutoffPowerLaw", "ExpCutoff", cls=ExpCutoffPowerLawSpectralModel, write_if=_plain_cutoff,
          pars=(PREFACTOR, Par("Index", "index", INDEX), Par("CutoffEnergy", "lambda_", CUTOFF, aliases=("Cutoff",)),
                PIVOT),
          fixed=(("alpha", _alpha_one),))
_spectrum("SuperExponentialCutoffPowerLaw", "PLSuperExpCutoff", cls=GammaLibSuperExpCutoffPowerLawSpectralModel,
          writes=(ExpCutoffPowerLawSpectralModel,),
          pars=(PREFACTOR, Par("Index1", "index", INDEX), Par("CutoffEnergy", "lambda_", CUTOFF, aliases=("Cutoff",)),
                PIVOT, Par("Index2", "alpha")))
_spectrum("BrokenPowerLaw", cls=BrokenPowerLawSpectralModel, pars=(PREFACTOR, INDEX1, BREAK, INDEX2))

SMOOTH_BROKEN = (PREFACTOR, INDEX1, PIVOT, INDEX2, BREAK,
                 Par("BreakSmoothness", "beta", aliases=("Beta",)))
_spectrum("SmoothBrokenPowerLaw", cls=GammaLibSmoothBrokenPowerLawSpectralModel, pars=SMOOTH_BROKEN)


def _write_gammapy_smooth_broken(entry, el, model, name, warn):
    """gammapy multiplies beta by sign(index2 - index1): GammaLib's beta is that product."""
    sign = 1.0 if model.index2.value >= model.index1.value else -1.0
    beta = model.beta.copy()
    beta.value, beta.min, beta.max = sign * beta.value, *sorted((sign * beta.min, sign * beta.max))
    for par in entry.pars:
        par.conversion.write(el, par.xml, beta if par.name == "beta" else getattr(model, par.name))
    if sign < 0 or not (model.index1.frozen and model.index2.frozen):
        warn(f"source {name!r}: SmoothBrokenPowerLaw beta written as beta*sign(index2-index1)="
             f"{beta.value}; exact only while the break keeps its direction")


_spectrum("SmoothBrokenPowerLaw", cls=SmoothBrokenPowerLawSpectralModel, pars=SMOOTH_BROKEN, readable=False,
          write=_write_gammapy_smooth_broken)

# Fermi-style names (natural log, as GammaLib's)
_spectrum("LogParabola", cls=LogParabolaSpectralModel, signature=("alpha",), writable=False,
          pars=(Par("norm", "amplitude", DIFF_FLUX), Par("alpha", "alpha"), Par("beta", "beta"),
                Par("Eb", "reference", ENERGY)))
_spectrum("LogParabola", cls=LogParabolaSpectralModel,
          pars=(PREFACTOR, Par("Index", "alpha", INDEX), Par("Curvature", "beta", INDEX), PIVOT))
_spectrum("Gaussian", cls=GaussianSpectralModel,
          pars=(Par("Normalization", "amplitude", PHOTON_FLUX, aliases=("Prefactor",)), Par("Mean", "mean", ENERGY),
                Par("Sigma", "sigma", ENERGY)))
_spectrum("Constant", "ConstantValue", cls=ConstantSpectralModel,
          pars=(Par("Normalization", "const", DIFF_FLUX, aliases=("Value",)),))


# --------------------------------------------------------------------------- tabulated


def _read_file_function(entry, ctx, el, pars, physical):
    path = ctx.resolve(el)
    try:
        energy, values = read_file_function(path)
    except InputError as exc:
        raise ctx.error(f"FileFunction: {exc}", el) from None
    kwargs = entry.read_kwargs(ctx, el, pars)
    if not physical:
        values = values.value * u.one
    return FileFunctionSpectralModel(energy, values, filename=str(path), **kwargs)


def _write_file_function(entry, el, model, name, warn):
    el.set("file", str(model.filename))
    entry.write_parameters(el, model)


_spectrum("FileFunction", cls=FileFunctionSpectralModel, pars=(Par("Normalization", "norm", aliases=("Prefactor",)),),
          read=_read_file_function,
          write=_write_file_function)


def _read_nodes(entry, ctx, el, pars, physical):
    nodes = el.findall("node")
    if not nodes:
        raise ctx.error("NodeFunction needs at least one <node>", el)
    energies, intensities = [], []
    for i, node in enumerate(nodes):
        npars = parse_pars(ctx, node)
        energies.append(ENERGY.read(pick(ctx, node, npars, "Energy"), f"energy_{i}"))
        intensities.append(DIFF_FLUX.read(pick(ctx, node, npars, "Intensity"), f"intensity_{i}", physical))
    e_values = [e.value for e in energies]
    if any(b <= a for a, b in zip(e_values, e_values[1:])) or min(e_values) <= 0:
        raise ctx.error(f"NodeFunction node energies must be positive and increase strictly, got {e_values} TeV", el)
    if physical and min(i.value for i in intensities) <= 0:
        raise ctx.error("NodeFunction node intensities must be positive (interpolated in log-log), got "
                        f"{[i.value for i in intensities]}", el)
    return NodeFunctionSpectralModel(energies, intensities)


def _write_nodes(entry, el, model, name, warn):
    pars = list(model.parameters)
    n = model.n_nodes
    for e_par, i_par in zip(pars[:n], pars[n:]):
        node = SubElement(el, "node")
        ENERGY.write(node, "Energy", e_par)
        DIFF_FLUX.write(node, "Intensity", i_par)


_spectrum("NodeFunction", cls=NodeFunctionSpectralModel, read=_read_nodes, write=_write_nodes)


def _read_bins(entry, ctx, el, pars, physical):
    index = pick(ctx, el, pars, "Index")
    bins = el.findall("bin")
    if not bins:
        raise ctx.error("BinFunction needs at least one <bin>", el)
    emins, emaxs, intensities = [], [], []
    for i, item in enumerate(bins):
        bpars = parse_pars(ctx, item)
        emins.append(ENERGY.read(pick(ctx, item, bpars, "LowerLimit"), f"emin_{i}"))
        emaxs.append(ENERGY.read(pick(ctx, item, bpars, "UpperLimit"), f"emax_{i}"))
        intensities.append(DIFF_FLUX.read(pick(ctx, item, bpars, "Intensity"), f"intensity_{i}", physical))
        if not 0 < emins[-1].value < emaxs[-1].value:
            raise ctx.error(f"BinFunction bin {i}: needs 0 < LowerLimit < UpperLimit", item)
    return BinFunctionSpectralModel(INDEX.read(index, "index"), emins, emaxs, intensities)


def _write_bins(entry, el, model, name, warn):
    pars = list(model.parameters)
    n = model.n_bins
    INDEX.write(el, "Index", pars[0])
    for lo, hi, value in zip(pars[1 : n + 1], pars[n + 1 : 2 * n + 1], pars[2 * n + 1 :]):
        item = SubElement(el, "bin")
        ENERGY.write(item, "LowerLimit", lo)
        ENERGY.write(item, "UpperLimit", hi)
        DIFF_FLUX.write(item, "Intensity", value)


_spectrum("BinFunction", cls=BinFunctionSpectralModel, read=_read_bins, write=_write_bins)


# --------------------------------------------------------------------------- composites

_OPERATORS = {"Composite": operator.add, "Multiplicative": operator.mul}


def _read_compound(entry, ctx, el, pars, physical):
    """Sum (``Composite``) or product (``Multiplicative``, its factors after the first relative) of components."""
    kind = entry.xml_type
    children = el.findall("spectrum")
    if not children:
        raise ctx.error(f"{kind} spectrum has no <spectrum> component", el)
    model = read_spectral(ctx, children[0], physical)
    op = _OPERATORS[kind]
    for child in children[1:]:
        child_model = read_spectral(ctx, child, physical if kind == "Composite" else False)
        model = CompoundSpectralModel(model, child_model, op)
    return model


def _flatten(model, op):
    if isinstance(model, CompoundSpectralModel) and model.operator is op:
        return _flatten(model.model1, op) + _flatten(model.model2, op)
    return [model]


def _write_compound(entry, el, model, name, warn):
    for part in _flatten(model, model.operator):
        write_component(el, part, SPECTRUM, name, warn)


for _kind, _op in _OPERATORS.items():
    _spectrum(_kind, cls=CompoundSpectralModel, write_if=lambda m, op=_op: m.operator is op, read=_read_compound,
              write=_write_compound)


def _read_exponential(entry, ctx, el, pars, physical):
    children = el.findall("spectrum")
    if len(children) != 1:
        raise ctx.error("Exponential spectrum needs exactly one <spectrum> exponent", el)
    unit = "cm-2 s-1 MeV-1" if physical else ""
    return ExponentialSpectralModel(read_spectral(ctx, children[0], physical=False), unit=unit)


def _write_exponential(entry, el, model, name, warn):
    write_component(el, model.model, SPECTRUM, name, warn)


_spectrum("Exponential", cls=ExponentialSpectralModel, read=_read_exponential, write=_write_exponential)


def _read_table(entry, ctx, el, pars, physical):
    """``TableModel``: the FITS table, ``Normalization`` and optional table parameter values from the XML."""
    path = ctx.resolve(el, gz=True).resolve()
    norm = NORM.read(ctx, el, pars)
    try:
        model = GammaLibTableSpectralModel.read(
            path, norm=norm, energy_scale=el.get("energyscale"), unit="cm-2 s-1 MeV-1" if physical else ""
        )
    except InputError as exc:
        raise ctx.error(f"TableModel: {exc}", el) from None
    table_names = model.table_parameters.names
    for name in pars:
        if name != "Normalization" and name not in table_names:
            ctx.warn(f"TableModel parameter {name!r} is not in the table {path.name} "
                     f"({', '.join(table_names)}): ignored, as GammaLib does")
    for par in model.table_parameters:
        if par.name in pars:
            new = PLAIN.read(pars[par.name], par.name)
            par.value, par.min, par.max, par.error, par.frozen = new.value, new.min, new.max, new.error, new.frozen
    return model


def _write_table(entry, el, model, name, warn):
    if not model.filename:
        raise InputError(f"source {name!r}: table model has no filename to write")
    el.set("file", str(model.filename))
    if model.energy_scale is not None:
        el.set("energyscale", model.energy_scale)
    entry.write_parameters(el, model)
    for par in model.table_parameters:
        PLAIN.write(el, par.name, par)


_spectrum("TableModel", cls=GammaLibTableSpectralModel, pars=(NORM,), read=_read_table, write=_write_table)
