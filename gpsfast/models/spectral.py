"""Spectral models that reproduce GammaLib spectral models gammapy has no exact equivalent for.

Every class here is a regular gammapy `~gammapy.modeling.models.SpectralModel`,
registered in gammapy's spectral model registry on import, so that gammapy's
``Models.read`` / ``Models.write`` (YAML) round-trip them.
"""
import logging
from pathlib import Path

import numpy as np
import astropy.units as u
from gammapy.modeling import Parameter, Parameters
from gammapy.modeling.models import (
    SPECTRAL_MODEL_REGISTRY,
    ExpCutoffPowerLawSpectralModel,
    PowerLaw2SpectralModel,
    SpectralModel,
)

from .._compat import parameters_from_dict
from ..errors import InputError

__all__ = [
    "GammaLibPowerLaw2SpectralModel",
    "GammaLibSuperExpCutoffPowerLawSpectralModel",
    "BinFunctionSpectralModel",
    "NodeFunctionSpectralModel",
    "PowerLawEnergyFluxSpectralModel",
    "GammaLibSmoothBrokenPowerLawSpectralModel",
    "FileFunctionSpectralModel",
    "ExponentialSpectralModel",
    "read_file_function",
]

log = logging.getLogger(__name__)


class NodeFunctionSpectralModel(SpectralModel):
    r"""GammaLib ``NodeFunction``: power laws between (energy, intensity) nodes.

    The value is linear interpolation in :math:`(\log E, \log I)` between the two
    bracketing nodes, and the first / last power-law segment is *extrapolated*
    beyond the nodes (gammapy's `PiecewiseNormSpectralModel` clamps flat
    instead). A single node gives a constant.

    Parameters
    ----------
    energies : list of `~gammapy.modeling.Parameter` or `~astropy.units.Quantity`
        Node energies, named ``energy_<i>``.
    intensities : list of `~gammapy.modeling.Parameter` or `~astropy.units.Quantity`
        Node intensities (differential flux), named ``intensity_<i>``.
    """

    tag = ["NodeFunctionSpectralModel", "node-function"]

    def __init__(self, energies, intensities):
        if len(energies) != len(intensities) or len(energies) < 1:
            raise InputError(
                "NodeFunctionSpectralModel needs as many intensities as energies (at least one node)"
            )
        pars = []
        for kind, items in (("energy", energies), ("intensity", intensities)):
            for i, item in enumerate(items):
                if isinstance(item, Parameter):
                    pars.append(item)
                else:
                    pars.append(Parameter(f"{kind}_{i}", u.Quantity(item), frozen=kind == "energy"))
        self.default_parameters = Parameters(pars)
        super().__init__()

    @property
    def n_nodes(self):
        """Number of nodes."""
        return len(self.default_parameters) // 2

    def __call__(self, energy):
        return self.evaluate(energy, *[p.quantity for p in self.parameters])

    def evaluate(self, energy, *values):
        n = len(values) // 2
        e_unit = values[0].unit
        energies = np.array([v.to_value(e_unit) for v in values[:n]], dtype=float)
        i_unit = values[n].unit
        intens = np.array([v.to_value(i_unit) for v in values[n:]], dtype=float)
        energy = u.Quantity(energy)
        x = np.log10(energy.to_value(e_unit))
        if n == 1:
            return np.full(np.shape(x), intens[0]) * i_unit
        xn = np.log10(energies)
        yn = np.log10(intens)
        idx = np.clip(np.searchsorted(xn, x, side="right") - 1, 0, n - 2)
        x1, x2 = xn[idx], xn[idx + 1]
        w2 = (x - x1) / (x2 - x1)
        y = yn[idx] * (1.0 - w2) + yn[idx + 1] * w2
        return np.power(10.0, y) * i_unit

    def to_dict(self, full_output=False):
        # node parameters have no class defaults: always write them in full
        return super().to_dict(full_output=True)

    @classmethod
    def from_dict(cls, data, **kwargs):
        data = data["spectral"]
        parameters = Parameters.from_dict(data["parameters"])
        n = len(parameters) // 2
        return cls(list(parameters)[:n], list(parameters)[n:])


class BinFunctionSpectralModel(SpectralModel):
    r"""GammaLib ``BinFunction``: a power law of common index inside each energy bin.

    :math:`\phi(E) = I_b (E / \sqrt{E_{min,b} E_{max,b}})^{-\Gamma}` for
    :math:`E_{min,b} \le E < E_{max,b}` (the first such bin), zero outside all bins.

    Parameters
    ----------
    index : float or `~gammapy.modeling.Parameter`
        Spectral index :math:`\Gamma` (GammaLib's ``Index`` is :math:`-\Gamma`).
    emins, emaxs, intensities : list of `~gammapy.modeling.Parameter` or `~astropy.units.Quantity`
        Bin bounds (``emin_<i>``, ``emax_<i>``) and intensities (``intensity_<i>``).
    """

    tag = ["BinFunctionSpectralModel", "bin-function"]

    def __init__(self, index, emins, emaxs, intensities):
        if not (len(emins) == len(emaxs) == len(intensities)) or len(emins) < 1:
            raise InputError("BinFunctionSpectralModel needs the same number (>= 1) of emin, emax and intensities")
        pars = [index if isinstance(index, Parameter) else Parameter("index", index)]
        for kind, items in (("emin", emins), ("emax", emaxs), ("intensity", intensities)):
            for i, item in enumerate(items):
                if isinstance(item, Parameter):
                    pars.append(item)
                else:
                    pars.append(Parameter(f"{kind}_{i}", u.Quantity(item), frozen=kind != "intensity"))
        self.default_parameters = Parameters(pars)
        super().__init__()

    @property
    def n_bins(self):
        """Number of bins."""
        return (len(self.default_parameters) - 1) // 3

    def __call__(self, energy):
        return self.evaluate(energy, *[p.quantity for p in self.parameters])

    def evaluate(self, energy, index, *values):
        n = len(values) // 3
        e_unit = values[0].unit
        emin = np.array([v.to_value(e_unit) for v in values[:n]])
        emax = np.array([v.to_value(e_unit) for v in values[n : 2 * n]])
        i_unit = values[2 * n].unit
        intens = np.array([v.to_value(i_unit) for v in values[2 * n :]])
        e = np.atleast_1d(u.Quantity(energy).to_value(e_unit))
        result = np.zeros(e.shape)
        done = np.zeros(e.shape, dtype=bool)
        gamma = -u.Quantity(index).to_value("")
        for lo, hi, value in zip(emin, emax, intens):
            inside = (e >= lo) & (e < hi) & ~done
            result[inside] = value * (e[inside] / np.sqrt(lo * hi)) ** gamma
            done |= inside
        return result.reshape(np.shape(u.Quantity(energy).value)) * i_unit

    def to_dict(self, full_output=False):
        # bin parameters have no class defaults: always write them in full
        return super().to_dict(full_output=True)

    @classmethod
    def from_dict(cls, data, **kwargs):
        pars = list(Parameters.from_dict(data["spectral"]["parameters"]))
        n = (len(pars) - 1) // 3
        return cls(pars[0], pars[1 : n + 1], pars[n + 1 : 2 * n + 1], pars[2 * n + 1 :])


class PowerLawEnergyFluxSpectralModel(SpectralModel):
    r"""GammaLib ``PowerLaw`` in its energy-flux form (``EnergyFlux`` parameter).

    .. math::
        \phi(E) = F_E \frac{2 - \Gamma}{E_{max}^{2-\Gamma} - E_{min}^{2-\Gamma}} E^{-\Gamma}

    and :math:`F_E / \ln(E_{max}/E_{min}) E^{-2}` for :math:`\Gamma = 2`, where
    :math:`F_E` is the energy flux between ``emin`` and ``emax``.
    """

    tag = ["PowerLawEnergyFluxSpectralModel", "pl-eflux"]
    energy_flux = Parameter("energy_flux", "1e-11 erg cm-2 s-1", interp="log")
    index = Parameter("index", 2.0)
    emin = Parameter("emin", "0.1 TeV", frozen=True)
    emax = Parameter("emax", "100 TeV", frozen=True)

    @staticmethod
    def evaluate(energy, energy_flux, index, emin, emax):
        gamma = -np.asarray(u.Quantity(index).to_value(""), dtype=float)
        e_unit = emin.unit
        e = u.Quantity(energy).to_value(e_unit)
        e1, e2 = emin.value, emax.to_value(e_unit)
        flux = energy_flux.to_value("erg cm-2 s-1") * u.erg.to(e_unit)
        if np.all(gamma == -2.0):
            norm = flux / np.log(e2 / e1)
        else:
            norm = flux * (gamma + 2.0) / (np.power(e2, gamma + 2.0) - np.power(e1, gamma + 2.0))
        return norm * np.power(e, gamma) * u.Unit(f"cm-2 s-1 {e_unit}-1")


class GammaLibPowerLaw2SpectralModel(PowerLaw2SpectralModel):
    r"""GammaLib ``PowerLaw`` in its photon-flux form (``GModelSpectralPlawPhotonFlux``), index 1 included.

    .. math::
        \phi(E) = F \frac{1 - \Gamma}{E_{max}^{1-\Gamma} - E_{min}^{1-\Gamma}} E^{-\Gamma}
        \quad (\Gamma \ne 1), \qquad
        \phi(E) = \frac{F}{\ln(E_{max}/E_{min})} E^{-1} \quad (\Gamma = 1)

    gammapy's `~gammapy.modeling.models.PowerLaw2SpectralModel` divides 0 by 0 at
    :math:`\Gamma = 1` (GammaLib's ``Index = -1``).
    """

    tag = ["GammaLibPowerLaw2SpectralModel", "gl-pl2"]
    amplitude, index, emin, emax = (PowerLaw2SpectralModel.default_parameters[name].copy()
                                    for name in ("amplitude", "index", "emin", "emax"))

    @staticmethod
    def evaluate(energy, amplitude, index, emin, emax):
        if u.Quantity(index).to_value("") == 1.0:
            return amplitude / np.log((emax / emin).to_value("")) / energy
        return PowerLaw2SpectralModel.evaluate(energy, amplitude, index, emin, emax)

    @staticmethod
    def evaluate_integral(energy_min, energy_max, amplitude, index, emin, emax):
        if u.Quantity(index).to_value("") == 1.0:
            return amplitude * np.log((energy_max / energy_min).to_value("")) / np.log((emax / emin).to_value(""))
        return PowerLaw2SpectralModel.evaluate_integral(energy_min, energy_max, amplitude, index, emin, emax)


class GammaLibSuperExpCutoffPowerLawSpectralModel(ExpCutoffPowerLawSpectralModel):
    r"""GammaLib ``SuperExponentialCutoffPowerLaw`` (``GModelSpectralSuperExpPlaw``).

    :math:`\phi_0 (E/E_0)^{-\Gamma} \exp(-(\lambda E)^{\alpha})` with
    :math:`\lambda = 1/E_{cut}` and :math:`\alpha` = ``Index2``: gammapy's formula,
    kept as its own class so that it is written back as a super-exponential
    cut-off (``Index2`` with its bounds and free flag) even when ``Index2`` is 1.
    """

    tag = ["GammaLibSuperExpCutoffPowerLawSpectralModel", "gl-secpl"]
    index, amplitude, reference, lambda_, alpha = (
        ExpCutoffPowerLawSpectralModel.default_parameters[name].copy()
        for name in ("index", "amplitude", "reference", "lambda_", "alpha")
    )


class GammaLibSmoothBrokenPowerLawSpectralModel(SpectralModel):
    r"""GammaLib ``SmoothBrokenPowerLaw``.

    .. math::
        \phi(E) = \phi_0 \left(\frac{E}{E_0}\right)^{-\Gamma_1}
        \left[1 + \left(\frac{E}{E_b}\right)^{(\Gamma_2 - \Gamma_1)/\beta}\right]^{-\beta}

    gammapy's `SmoothBrokenPowerLawSpectralModel` multiplies :math:`\beta` by
    :math:`\mathrm{sign}(\Gamma_2-\Gamma_1)`, which differs for a hardening break.
    """

    tag = ["GammaLibSmoothBrokenPowerLawSpectralModel", "gl-sbpl"]
    amplitude = Parameter("amplitude", "1e-12 cm-2 s-1 TeV-1", interp="log")
    index1 = Parameter("index1", 2.0)
    reference = Parameter("reference", "1 TeV", frozen=True)
    index2 = Parameter("index2", 2.0)
    ebreak = Parameter("ebreak", "1 TeV")
    beta = Parameter("beta", 1.0)

    @staticmethod
    def evaluate(energy, amplitude, index1, reference, index2, ebreak, beta):
        pwl = amplitude * (energy / reference) ** (-index1)
        brk = (1 + (energy / ebreak) ** ((index2 - index1) / beta)) ** (-beta)
        return pwl * brk


def read_file_function(path):
    """Read a GammaLib ``FileFunction`` ASCII table (energy in MeV, intensity in ph/cm2/s/MeV).

    Parameters
    ----------
    path : str or `~pathlib.Path`
        Table file: two columns separated by blanks or commas, ``#`` comments allowed.

    Returns
    -------
    energy, values : `~astropy.units.Quantity`
        Node energies (MeV) and intensities (cm-2 s-1 MeV-1).

    Raises
    ------
    InputError
        Binary content, a line that is not two numbers, a non-finite number,
        fewer than two rows, non-positive or non-increasing values; the
        message names the file and line but never echoes the file's text.
    """
    from .xmlfiles import read_text_file

    path = Path(path)
    rows = []
    for lineno, line in enumerate(read_text_file(path, "FileFunction table").splitlines(), start=1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        fields = text.replace(",", " ").split()
        try:
            energy, intensity = float(fields[0]), float(fields[1])
        except (ValueError, IndexError):
            raise InputError(
                f"{path}:{lineno}: FileFunction line needs two numbers (energy in MeV, intensity)"
            ) from None
        if not (np.isfinite(energy) and np.isfinite(intensity)):
            raise InputError(f"{path}:{lineno}: FileFunction row is not finite (energy={energy}, "
                             f"intensity={intensity})")
        rows.append((energy, intensity))
    if len(rows) < 2:
        raise InputError(f"{path}: FileFunction table needs at least two rows, found {len(rows)}")
    data = np.array(rows)
    if np.any(data <= 0):
        raise InputError(f"{path}: FileFunction energies and intensities must be positive (log-log interpolation)")
    if np.any(np.diff(data[:, 0]) <= 0):
        raise InputError(f"{path}: FileFunction energies must increase strictly")
    return data[:, 0] * u.MeV, data[:, 1] * u.Unit("cm-2 s-1 MeV-1")


class FileFunctionSpectralModel(SpectralModel):
    r"""GammaLib ``FileFunction``: ``norm`` times a tabulated spectrum.

    The table is interpolated linearly in :math:`(\log_{10} E, \log_{10} I)` and
    extrapolated along the first / last segment, as GammaLib does.

    Parameters
    ----------
    energy, values : `~astropy.units.Quantity`
        Table nodes.
    norm : float or `~gammapy.modeling.Parameter`
        Normalisation factor.
    filename : str, optional
        File the table was read from; used for serialisation.
    """

    tag = ["FileFunctionSpectralModel", "file-function"]
    norm = Parameter("norm", 1.0, unit="", interp="log")

    def __init__(self, energy, values, norm=norm.quantity, filename=None):
        self.energy = u.Quantity(energy)
        self.values = u.Quantity(values)
        self.filename = None if filename is None else str(filename)
        super().__init__(norm=norm)

    @classmethod
    def read(cls, filename, norm=1.0):
        """Read the table from a GammaLib file-function file."""
        energy, values = read_file_function(filename)
        return cls(energy, values, norm=norm, filename=filename)

    def evaluate(self, energy, norm):
        x = np.log10(u.Quantity(energy).to_value(self.energy.unit))
        xn = np.log10(self.energy.value)
        with np.errstate(divide="ignore"):
            yn = np.log10(self.values.value)
        if len(xn) == 1:
            y = np.full(np.shape(x), yn[0])
        else:
            idx = np.clip(np.searchsorted(xn, x, side="right") - 1, 0, len(xn) - 2)
            w2 = (x - xn[idx]) / (xn[idx + 1] - xn[idx])
            y = yn[idx] * (1.0 - w2) + yn[idx + 1] * w2
        return norm * np.power(10.0, y) * self.values.unit

    def to_dict(self, full_output=False):
        data = super().to_dict(full_output)
        data["spectral"]["filename"] = self.filename
        data["spectral"]["energy"] = {"data": self.energy.value.tolist(), "unit": str(self.energy.unit)}
        data["spectral"]["values"] = {"data": self.values.value.tolist(), "unit": str(self.values.unit)}
        return data

    @classmethod
    def from_dict(cls, data, **kwargs):
        data = data["spectral"]
        energy = u.Quantity(data["energy"]["data"], data["energy"]["unit"])
        values = u.Quantity(data["values"]["data"], data["values"]["unit"])
        pars = parameters_from_dict(data["parameters"], cls.default_parameters)
        return cls(energy, values, norm=pars["norm"], filename=data.get("filename"))


class ExponentialSpectralModel(SpectralModel):
    r"""GammaLib ``Exponential``: :math:`\exp(M(E))` of a dimensionless spectral model :math:`M`.

    Parameters
    ----------
    model : `~gammapy.modeling.models.SpectralModel`
        Exponent model; it must evaluate to a dimensionless quantity.
    unit : str
        Unit of the result: GammaLib's value is a plain number, read in
        ph/cm2/s/MeV for a source spectrum and dimensionless inside a product.
    """

    tag = ["ExponentialSpectralModel", "exp"]

    def __init__(self, model, unit=""):
        self.model = model
        self.unit = u.Unit(unit)
        super().__init__()

    @property
    def parameters(self):
        return self.model.parameters

    def __call__(self, energy):
        return self.evaluate(energy)

    def evaluate(self, energy):
        return np.exp(u.Quantity(self.model(energy)).to_value("")) * self.unit

    def to_dict(self, full_output=False):
        inner = self.model.to_dict(full_output)["spectral"]
        return {"spectral": {"type": self.tag[0], "unit": self.unit.to_string(), "model": inner}}

    @classmethod
    def from_dict(cls, data, **kwargs):
        inner = data["spectral"]["model"]
        inner_cls = SPECTRAL_MODEL_REGISTRY.get_cls(inner["type"])
        return cls(inner_cls.from_dict({"spectral": inner}), unit=data["spectral"].get("unit", ""))


for _cls in (
    GammaLibPowerLaw2SpectralModel,
    GammaLibSuperExpCutoffPowerLawSpectralModel,
    BinFunctionSpectralModel,
    NodeFunctionSpectralModel,
    PowerLawEnergyFluxSpectralModel,
    GammaLibSmoothBrokenPowerLawSpectralModel,
    FileFunctionSpectralModel,
    ExponentialSpectralModel,
):
    if _cls not in SPECTRAL_MODEL_REGISTRY:
        SPECTRAL_MODEL_REGISTRY.append(_cls)
