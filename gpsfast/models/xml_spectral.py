"""Spectral part of the XML reader: GammaLib ``<spectrum>`` elements to gammapy spectral models."""
import functools
import operator

import astropy.units as u
from gammapy.modeling import Parameter
from gammapy.modeling.models import (
    BrokenPowerLawSpectralModel,
    CompoundSpectralModel,
    ConstantSpectralModel,
    ExpCutoffPowerLawSpectralModel,
    GaussianSpectralModel,
    LogParabolaSpectralModel,
    PowerLawSpectralModel,
)

from ..errors import InputError
from .bulk import build_component
from .spectral import (
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
from .spectral_table import GammaLibTableSpectralModel
from .xml_common import DIFF_FLUX_UNIT, MEV_TO_TEV, XmlPar, parse_pars, pick, unknown

__all__ = ["read_spectral"]


def _amplitude(par, name, physical, unit=DIFF_FLUX_UNIT, factor=1 / MEV_TO_TEV):
    if physical:
        return par.to_gammapy(name, factor, unit)
    return par.to_gammapy(name, 1.0, "")


def _energy(par, name):
    return par.to_gammapy(name, MEV_TO_TEV, "TeV")


def _inverse_cutoff(cutoff):
    """gammapy's ``lambda_`` (TeV-1) from a GammaLib cutoff energy (MeV)."""
    in_tev = XmlPar(cutoff.name, cutoff.value * MEV_TO_TEV, cutoff.error * MEV_TO_TEV,
                    cutoff.min * MEV_TO_TEV, cutoff.max * MEV_TO_TEV, cutoff.free)
    return in_tev.to_gammapy_reciprocal("lambda_", "TeV-1")


def _index(par, name):
    return par.to_gammapy(name, -1.0, "")


# --------------------------------------------------------------------------- spectral


def read_spectral(ctx, el, physical=True):
    """A ``<spectrum>`` element as a gammapy spectral model (``physical``: a flux, else a relative factor)."""
    kind = el.get("type")
    pars = parse_pars(ctx, el)
    p = functools.partial(pick, ctx, el, pars)
    if kind in ("PowerLaw", "PowerLaw2"):
        if "PhotonFlux" in pars or "Integral" in pars or kind == "PowerLaw2":
            return build_component(GammaLibPowerLaw2SpectralModel,
                amplitude=_amplitude(p("PhotonFlux", "Integral"), "amplitude", physical, "cm-2 s-1", 1.0),
                index=_index(p("Index"), "index"),
                emin=_energy(p("LowerLimit"), "emin"),
                emax=_energy(p("UpperLimit"), "emax"),
            )
        if "EnergyFlux" in pars:
            return build_component(PowerLawEnergyFluxSpectralModel,
                energy_flux=p("EnergyFlux").to_gammapy("energy_flux", 1.0, "erg cm-2 s-1"),
                index=_index(p("Index"), "index"),
                emin=_energy(p("LowerLimit"), "emin"),
                emax=_energy(p("UpperLimit"), "emax"),
            )
        return build_component(PowerLawSpectralModel,
            amplitude=_amplitude(p("Prefactor", "Normalization"), "amplitude", physical),
            index=_index(p("Index"), "index"),
            reference=_energy(p("PivotEnergy", "Scale"), "reference"),
        )
    if kind in ("ExponentialCutoffPowerLaw", "ExpCutoff"):
        if "InverseCutoffEnergy" in pars:
            lambda_ = p("InverseCutoffEnergy").to_gammapy("lambda_", 1 / MEV_TO_TEV, "TeV-1")
        else:
            lambda_ = _inverse_cutoff(p("CutoffEnergy", "Cutoff"))
        return build_component(ExpCutoffPowerLawSpectralModel,
            amplitude=_amplitude(p("Prefactor"), "amplitude", physical),
            index=_index(p("Index"), "index"),
            reference=_energy(p("PivotEnergy", "Scale"), "reference"),
            lambda_=lambda_,
            alpha=Parameter("alpha", 1.0, frozen=True),
        )
    if kind in ("SuperExponentialCutoffPowerLaw", "PLSuperExpCutoff"):
        return build_component(GammaLibSuperExpCutoffPowerLawSpectralModel,
            amplitude=_amplitude(p("Prefactor"), "amplitude", physical),
            index=_index(p("Index1"), "index"),
            reference=_energy(p("PivotEnergy", "Scale"), "reference"),
            lambda_=_inverse_cutoff(p("CutoffEnergy", "Cutoff")),
            alpha=p("Index2").to_gammapy("alpha"),
        )
    if kind == "BrokenPowerLaw":
        return build_component(BrokenPowerLawSpectralModel,
            amplitude=_amplitude(p("Prefactor"), "amplitude", physical),
            index1=_index(p("Index1"), "index1"),
            index2=_index(p("Index2"), "index2"),
            ebreak=_energy(p("BreakEnergy", "BreakValue"), "ebreak"),
        )
    if kind == "SmoothBrokenPowerLaw":
        return build_component(GammaLibSmoothBrokenPowerLawSpectralModel,
            amplitude=_amplitude(p("Prefactor"), "amplitude", physical),
            index1=_index(p("Index1"), "index1"),
            reference=_energy(p("PivotEnergy", "Scale"), "reference"),
            index2=_index(p("Index2"), "index2"),
            ebreak=_energy(p("BreakEnergy", "BreakValue"), "ebreak"),
            beta=p("BreakSmoothness", "Beta").to_gammapy("beta"),
        )
    if kind == "LogParabola":
        if "alpha" in pars:
            return build_component(LogParabolaSpectralModel,
                amplitude=_amplitude(p("norm"), "amplitude", physical),
                alpha=p("alpha").to_gammapy("alpha"),
                beta=p("beta").to_gammapy("beta"),
                reference=_energy(p("Eb"), "reference"),
            )
        return build_component(LogParabolaSpectralModel,
            amplitude=_amplitude(p("Prefactor"), "amplitude", physical),
            alpha=_index(p("Index"), "alpha"),
            beta=_index(p("Curvature"), "beta"),
            reference=_energy(p("PivotEnergy", "Scale"), "reference"),
        )
    if kind == "Gaussian":
        return build_component(GaussianSpectralModel,
            amplitude=_amplitude(p("Normalization", "Prefactor"), "amplitude", physical, "cm-2 s-1", 1.0),
            mean=_energy(p("Mean"), "mean"),
            sigma=_energy(p("Sigma"), "sigma"),
        )
    if kind in ("Constant", "ConstantValue"):
        const = _amplitude(p("Normalization", "Value"), "const", physical)
        return build_component(ConstantSpectralModel, const=const)
    if kind == "FileFunction":
        path = ctx.resolve(el)
        try:
            energy, values = read_file_function(path)
        except InputError as exc:
            raise ctx.error(f"FileFunction: {exc}", el) from None
        if not physical:
            values = values.value * u.one
        norm = p("Normalization", "Prefactor").to_gammapy("norm")
        return FileFunctionSpectralModel(energy, values, norm=norm, filename=str(path))
    if kind == "NodeFunction":
        nodes = el.findall("node")
        if not nodes:
            raise ctx.error("NodeFunction needs at least one <node>", el)
        energies, intensities = [], []
        for i, node in enumerate(nodes):
            npars = parse_pars(ctx, node)
            energies.append(_energy(pick(ctx, node, npars, "Energy"), f"energy_{i}"))
            intensities.append(_amplitude(pick(ctx, node, npars, "Intensity"), f"intensity_{i}", physical))
        e_values = [e.value for e in energies]
        if any(b <= a for a, b in zip(e_values, e_values[1:])) or min(e_values) <= 0:
            raise ctx.error(f"NodeFunction node energies must be positive and increase strictly, got {e_values} TeV",
                            el)
        if physical and min(i.value for i in intensities) <= 0:
            raise ctx.error("NodeFunction node intensities must be positive (interpolated in log-log), got "
                            f"{[i.value for i in intensities]}", el)
        return NodeFunctionSpectralModel(energies, intensities)
    if kind == "BinFunction":
        return _read_bins(ctx, el, p("Index"), physical)
    if kind in ("Composite", "Multiplicative"):
        children = el.findall("spectrum")
        if not children:
            raise ctx.error(f"{kind} spectrum has no <spectrum> component", el)
        model = read_spectral(ctx, children[0], physical)
        op = operator.add if kind == "Composite" else operator.mul
        for child in children[1:]:
            child_model = read_spectral(ctx, child, physical if kind == "Composite" else False)
            model = CompoundSpectralModel(model, child_model, op)
        return model
    if kind == "Exponential":
        children = el.findall("spectrum")
        if len(children) != 1:
            raise ctx.error("Exponential spectrum needs exactly one <spectrum> exponent", el)
        unit = "cm-2 s-1 MeV-1" if physical else ""
        return ExponentialSpectralModel(read_spectral(ctx, children[0], physical=False), unit=unit)
    if kind == "TableModel":
        return _read_table(ctx, el, pars, physical)
    raise ctx.error(unknown("spectrum", kind), el)


def _read_table(ctx, el, pars, physical):
    """``TableModel``: the FITS table, ``Normalization`` and optional table parameter values from the XML."""
    path = ctx.resolve(el, gz=True).resolve()
    norm = pick(ctx, el, pars, "Normalization").to_gammapy("norm")
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
            new = pars[par.name].to_gammapy(par.name)
            par.value, par.min, par.max, par.error, par.frozen = new.value, new.min, new.max, new.error, new.frozen
    return model


def _read_bins(ctx, el, index, physical):
    bins = el.findall("bin")
    if not bins:
        raise ctx.error("BinFunction needs at least one <bin>", el)
    emins, emaxs, intensities = [], [], []
    for i, item in enumerate(bins):
        bpars = parse_pars(ctx, item)
        emins.append(_energy(pick(ctx, item, bpars, "LowerLimit"), f"emin_{i}"))
        emaxs.append(_energy(pick(ctx, item, bpars, "UpperLimit"), f"emax_{i}"))
        intensities.append(_amplitude(pick(ctx, item, bpars, "Intensity"), f"intensity_{i}", physical))
        if not 0 < emins[-1].value < emaxs[-1].value:
            raise ctx.error(f"BinFunction bin {i}: needs 0 < LowerLimit < UpperLimit", item)
    return BinFunctionSpectralModel(_index(index, "index"), emins, emaxs, intensities)
