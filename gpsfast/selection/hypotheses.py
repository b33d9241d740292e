"""Hypothesis models of the model selection and their fits on a source's cutout (`gpsfast.selection`).

- `FixedGaussian`, `FixedSersic`, `FixedShell`: gammapy's Gaussian, gpsfast's
  compiled generalized Gaussian and gammapy's shell with an integration grid and
  a support fixed at creation, so that the likelihood of a fit does not depend
  on its path (`FixedSupport`); `plain_model` gives the gammapy model back;
- `spatial_hypothesis` and `spectral_hypothesis`: the start models of each
  hypothesis, from the generic fit;
- `SourceCutout`: a source's cutout datasets with the fixed models around it
  and its jointly fitted neighbours, fitting and recording hypotheses;
- `hessian_errors`: parameter errors from a finite-difference Hessian, robust
  to the float32 rounding noise of gammapy's statistic.
"""
import logging
import time

import astropy.units as u
import numpy as np
from gammapy.modeling import Fit
from gammapy.modeling.models import (ExpCutoffPowerLawSpectralModel, GaussianSpatialModel,
                                     GeneralizedGaussianSpatialModel, LogParabolaSpectralModel, Models,
                                     PointSpatialModel, PowerLawSpectralModel, ShellSpatialModel, SkyModel)

from ..evaluate import fast_datasets
from ..modeling import SHAPE_PARAMETERS
from ..groups import source_extent
from ..models import GeneralizedGaussianSpatialModel as FastGeneralizedGaussian

__all__ = ["FixedGaussian", "FixedSersic", "FixedShell", "FixedSupport", "SourceCutout", "fixed_model",
           "hessian_errors", "plain_model", "spatial_hypothesis", "spectral_hypothesis"]

log = logging.getLogger(__name__)

SIZE_MIN, SIZE_MAX = 0.01, 2.0
"""Bounds of the sizes (deg): the smallest is far below any PSF, the point-like end of the nested tests."""
POSITION_STEP = 0.01
"""Start step of minuit on the positions (deg)."""
OPTIMIZE_OPTS = {"strategy": 0, "tol": 1.0}
"""Minuit options of a hypothesis fit (strategy 1 and 2 stall on the rounding noise of the statistic;
tol 1 is an EDM of 2e-3, far below what a TS needs)."""
RETRY_OPTS = {"strategy": 1, "tol": 1.0, "migrad_opts": {"ncall": 1500}}
"""Minuit options of the retry of a fit that did not converge."""


class FixedSupport:
    """Mixin: a spatial model whose integration grid (``bin_size``) and support (``support``) are fixed.

    gammapy oversamples a pixel by ``ceil(pixel / evaluation_bin_size_min)``, a
    factor that jumps as a size changes, and its evaluator cuts a model out over
    ``evaluation_radius`` only when the position moves: a growing model is
    truncated. Both made the likelihood depend on the path of the fit (shell
    fits stalled for thousands of calls, ending 80 in TS apart at the same
    parameters). Here the bin is set from the starting size and the support
    covers the whole cutout.
    """

    bin_size = 0.01 * u.deg
    support = 1.0 * u.deg

    @property
    def evaluation_bin_size_min(self):
        return self.bin_size

    @property
    def evaluation_radius(self):
        return self.support


class FixedGaussian(FixedSupport, GaussianSpatialModel):
    """`~gammapy.modeling.models.GaussianSpatialModel` with a fixed grid and support."""


class FixedSersic(FixedSupport, FastGeneralizedGaussian):
    """gpsfast's compiled generalized Gaussian with a fixed grid and support."""


class FixedShell(FixedSupport, ShellSpatialModel):
    """`~gammapy.modeling.models.ShellSpatialModel` with a fixed grid and support."""


PLAIN = {FixedGaussian: GaussianSpatialModel, FixedSersic: GeneralizedGaussianSpatialModel,
         FixedShell: ShellSpatialModel}
"""The gammapy class of each `FixedSupport` model."""
for _cls, _base in PLAIN.items():
    _cls.default_parameters = _base.default_parameters  # gammapy collects them from the class body only


def fixed_model(cls, size, support, largest=0.02, **kwargs):
    """A `FixedSupport` model.

    Parameters
    ----------
    cls : type
        `FixedGaussian`, `FixedSersic` or `FixedShell`.
    size : float
        Starting size (deg): the bin is a quarter of it, within [0.004, ``largest``] deg.
    support : float
        Radius (deg) over which the model is evaluated.
    **kwargs
        Model parameters.

    Returns
    -------
    model : ``cls``
    """
    model = cls(**kwargs)
    model.bin_size = float(np.clip(size / 4, 0.004, largest)) * u.deg
    model.support = support * u.deg
    return model


def plain_model(spatial):
    """The gammapy model of a `FixedSupport` model (same parameters, ``e`` >= 0); other models as they are.

    Parameters
    ----------
    spatial : `~gammapy.modeling.models.SpatialModel`

    Returns
    -------
    spatial : `~gammapy.modeling.models.SpatialModel`
    """
    plain = PLAIN.get(type(spatial))
    if plain is None:
        return spatial
    spatial = plain.from_parameters(spatial.parameters, frame=spatial.frame)
    if "e" in spatial.parameters.names:
        spatial.e.value, spatial.e.min = abs(spatial.e.value), 0.0
    return spatial


def position_of(spatial):
    """``lon_0``, ``lat_0`` and ``frame`` of a spatial model, as keyword arguments of another."""
    return {"lon_0": spatial.lon_0.quantity, "lat_0": spatial.lat_0.quantity, "frame": spatial.frame}


def bounded(spatial, reach, sizes=()):
    """Positions bounded to the start +- ``reach`` (deg) with start steps; ``sizes`` (name, min, max) freed."""
    for name in ("lon_0", "lat_0"):
        par = spatial.parameters[name]
        par.min, par.max, par.error = par.value - reach, par.value + reach, POSITION_STEP
    for name, low, high in sizes:
        par = spatial.parameters[name]
        par.min, par.max, par.frozen = low, high, False
        par.value = float(np.clip(par.value, low, high))
        par.error = 0.1 * par.value
    return spatial


def spatial_hypothesis(kind, cutout, fitted, reach):
    """Start model of a spatial hypothesis, from the generic fit.

    Parameters
    ----------
    kind : str
        ``point``, ``gauss``, ``sersic``, ``shell``, ``elongated_gauss`` or ``elongated_sersic``.
    cutout : `SourceCutout`
        The source's cutout (its generic model, support, largest size, pixel size).
    fitted : dict
        Fitted models by hypothesis (the elongated models start from the fitted symmetric one).
    reach : float
        Positions are bounded to the start +- ``reach`` or the source extent, whichever is larger (deg).

    Returns
    -------
    spatial : `~gammapy.modeling.models.SpatialModel`
    """
    spatial = cutout.generic.spatial_model
    position, names = position_of(spatial), spatial.parameters.names
    extent = max(source_extent(spatial).to_value("deg"), 0.02)
    reach, support, size_max = max(reach, extent), cutout.support, cutout.size_max
    if kind == "point":
        return bounded(PointSpatialModel(**position), reach)
    if kind == "gauss":
        model = fixed_model(FixedGaussian, extent / 2, support, sigma=extent / 2 * u.deg, **position)
        return bounded(model, reach, [("sigma", SIZE_MIN, size_max)])
    if kind == "sersic":
        r_0 = spatial.r_0.value if "r_0" in names else extent / 1.4
        eta = spatial.eta.value if "eta" in names else 0.5
        model = fixed_model(FixedSersic, r_0 / 2, support, r_0=r_0 * u.deg, eta=eta, e=0, **position)
        return bounded(model, reach, [("r_0", SIZE_MIN, size_max), ("eta", 0.05, 1.0)])
    if kind == "shell":  # edges sampled at a quarter pixel: coarser stalls minuit, finer only costs
        model = fixed_model(FixedShell, min(cutout.pixel, 0.5 * extent), support, radius=0.75 * extent * u.deg,
                       width=0.25 * extent * u.deg, **position)
        return bounded(model, reach, [("radius", SIZE_MIN, size_max), ("width", 2 * SIZE_MIN, size_max)])
    base = fitted[kind.replace("elongated_", "")].spatial_model.copy()
    # the models are even in e: in [-0.95, 0.95] a round source is an interior minimum, not a bound where
    # minuit stalls (the sign is dropped in the output)
    base.e.value = spatial.e.value if "e" in names and spatial.e.value > 0.1 else 0.3
    base.e.min, base.e.max, base.e.frozen, base.phi.frozen = -0.95, 0.95, False, False
    base.phi.value = spatial.phi.value if "phi" in names else 0.0
    return bounded(base, reach)


def spectral_hypothesis(kind, spectral):
    """Start model of a spectral hypothesis: the dN/dE and slope of ``spectral`` at its reference energy.

    Parameters
    ----------
    kind : str
        ``pl``, ``lp`` or ``ecpl``.
    spectral : `~gammapy.modeling.models.SpectralModel`
        Fitted spectrum of the source.

    Returns
    -------
    spectral : `~gammapy.modeling.models.SpectralModel`
    """
    names = spectral.parameters.names
    reference = spectral.reference.quantity if "reference" in names else 1 * u.TeV
    slope = next((spectral.parameters[n].value for n in ("alpha", "index") if n in names), 2.5)
    common = {"amplitude": spectral(reference), "reference": reference}
    if kind == "pl":
        model = PowerLawSpectralModel(index=slope, **common)
        model.index.min, model.index.max = 0.5, 6.0
    elif kind == "lp":
        beta = spectral.beta.value if "beta" in names and spectral.beta.value > 0.02 else 0.1
        model = LogParabolaSpectralModel(alpha=slope, beta=beta, **common)
        model.alpha.min, model.alpha.max, model.beta.min, model.beta.max = 0.5, 6.0, 0.0, 2.0
        model.beta.frozen = False
    else:
        model = ExpCutoffPowerLawSpectralModel(index=slope, lambda_=0.05 / u.TeV, **common)
        model.index.min, model.index.max, model.lambda_.min, model.lambda_.max = 0.5, 6.0, 0.0, 10.0
    model.amplitude.min = 0
    return model


class SourceCutout:
    """A source's cutout datasets, the fixed models around it, its joint neighbours and its fitted hypotheses.

    The models of the group task other than its members are frozen; the
    neighbours (the other members) keep their free parameters but their shape,
    and every fit starts them from their generic fit.

    Parameters
    ----------
    task : `~gpsfast.groups.GroupTask`
        The source's group (itself first, then its joint neighbours).
    name : str
        The source.
    fast : bool, optional
        Fit on `gpsfast.fit.fast_datasets`. Default True.
    optimize_opts : dict, optional
        Minuit options; default `OPTIMIZE_OPTS` (a failed fit is retried with `RETRY_OPTS`).

    Attributes
    ----------
    stat, models, failed : dict, dict, list
        Fit statistic and fitted model of each recorded hypothesis; those that did not converge.
    """

    def __init__(self, task, name, fast=True, optimize_opts=None):
        self.datasets = task.make_datasets()
        models = self.datasets.models
        self.name, self.generic = name, models[name]
        self.fast, self.optimize_opts = fast, dict(optimize_opts or OPTIMIZE_OPTS)
        self.neighbours = [models[n] for n in task.group.names if n != name]
        self.fixed = [m for m in models if m.name not in task.group.names]
        for par in (p for m in self.fixed for p in m.parameters):
            par.frozen = True
        for par in (p for m in self.neighbours for p in m.spatial_model.parameters):
            par.frozen = par.frozen or par.name in SHAPE_PARAMETERS
        self.start = [(par, par.value) for m in self.neighbours for par in m.parameters]
        half = task.group.width.to_value("deg") / 2
        self.support, self.size_max = half * np.sqrt(2), min(SIZE_MAX, half)
        self.pixel = min(float(np.min(d.counts.geom.pixel_scales.deg)) for d in self.datasets)
        self.stat, self.models, self.after, self.failed = {}, {}, {}, []

    def _set(self, model, neighbours):
        for par, value in neighbours:
            par.value = value
        members = ([model] if model is not None else []) + self.neighbours
        self.datasets.models = Models([*members, *self.fixed])
        datasets = fast_datasets(self.datasets) if self.fast else self.datasets
        return datasets, Models(members).parameters.free_parameters

    def fit(self, model):
        """Fit ``model`` (None: the null hypothesis) with the neighbours from their start.

        Parameters
        ----------
        model : `~gammapy.modeling.models.SkyModel` or None

        Returns
        -------
        stat, success, neighbours : float, bool, list
            Fit statistic, convergence, the neighbours' ``(parameter, fitted value)``.
        """
        datasets, free = self._set(model, self.start)
        if not free:
            return float(datasets.stat_sum()), True, self.start
        start = time.perf_counter()
        result = Fit(optimize_opts=dict(self.optimize_opts)).optimize(datasets)
        if not result.success:
            result = Fit(optimize_opts=dict(RETRY_OPTS)).optimize(datasets)
        log.debug("%s: %s fitted in %.2f s (%d calls, %s)", self.name, "null" if model is None else
                  f"{type(model.spatial_model).__name__} + {type(model.spectral_model).__name__}",
                  time.perf_counter() - start, result.nfev, "converged" if result.success else result.message)
        return float(result.total_stat), bool(result.success), [(p, p.value) for p, _ in self.start]

    def run(self, kind, spatial, spectral):
        """Fit and record one hypothesis (named ``kind``); returns its sky model."""
        model = SkyModel(spatial_model=spatial, spectral_model=spectral, name=self.name,
                         datasets_names=self.generic.datasets_names)
        self.stat[kind], success, self.after[kind] = self.fit(model)
        self.models[kind] = model
        if not success:
            self.failed.append(kind)
        return model

    def errors(self, kind):
        """Set the errors of a recorded hypothesis (its neighbours as in its fit), from `hessian_errors`."""
        datasets, free = self._set(self.models[kind], self.after[kind])
        if free:
            hessian_errors(datasets, list(free))


def _stat_at(datasets, parameters, values):
    for par, value in zip(parameters, values):
        par.value = value
    return datasets.stat_sum()


def _curvature(datasets, parameters, values, center, steps, i, j=None):
    """Second derivative of the statistic in parameters ``i`` and ``j`` (central differences)."""
    def at(si, sj):
        shift = np.zeros(len(values))
        shift[i] += si * steps[i]
        if j is not None:
            shift[j] += sj * steps[j]
        return _stat_at(datasets, parameters, values + shift)

    if j is None:
        return (at(1, 0) - 2 * center + at(-1, 0)) / steps[i] ** 2
    return (at(1, 1) - at(1, -1) - at(-1, 1) + at(-1, -1)) / (4 * steps[i] * steps[j])


def hessian_errors(datasets, parameters):
    """Errors from a central finite-difference Hessian of the fit statistic (-2 log L) at the best fit.

    gammapy's float32 maps put a rounding noise of ~1e-5 on the statistic;
    minuit's HESSE, with steps chosen for double precision, then returns
    position and size errors too small by up to 20x, different at every call.
    Here the steps are half the conditional errors of a first, diagonal pass
    (the statistic changes by ~0.25, far above the noise), kept inside the
    bounds. Parameters at a bound or with a non-positive curvature get NaN.

    Parameters
    ----------
    datasets : `~gammapy.datasets.Datasets`
        Datasets at the best fit.
    parameters : list of `~gammapy.modeling.Parameter`
        Free parameters: their ``error`` is set, their values are restored.
    """
    values = np.array([p.value for p in parameters])
    room = np.array([min(v - p.min if np.isfinite(p.min) else np.inf, p.max - v if np.isfinite(p.max) else np.inf)
                     for p, v in zip(parameters, values)])
    steps = np.array([POSITION_STEP if p.name in ("lon_0", "lat_0") else max(0.05 * abs(p.value), 1e-3 * p.scale)
                      for p in parameters])
    n = len(values)
    hessian = np.full((n, n), np.nan)
    try:
        center = datasets.stat_sum()
        for full in (False, True):
            steps = np.where(np.minimum(steps, 0.9 * room) > 0, np.minimum(steps, 0.9 * room), np.nan)
            ok = np.flatnonzero(np.isfinite(steps))
            for i in ok:
                hessian[i, i] = _curvature(datasets, parameters, values, center, steps, i)
            ok = ok[hessian[ok, ok] > 0]
            if not full:
                steps = np.full(n, np.nan)
                steps[ok] = 0.5 * np.sqrt(2 / hessian[ok, ok])
                continue
            for a, i in enumerate(ok):
                for j in ok[a + 1:]:
                    hessian[i, j] = hessian[j, i] = _curvature(datasets, parameters, values, center, steps, i, j)
    finally:
        _stat_at(datasets, parameters, values)
    errors = np.full(n, np.nan)
    try:
        variance = np.diag(2 * np.linalg.inv(hessian[np.ix_(ok, ok)])) if len(ok) else []
        errors[ok] = np.sqrt(np.where(np.asarray(variance) > 0, variance, np.nan))
    except np.linalg.LinAlgError:
        log.debug("singular Hessian for %s", [p.name for p in parameters])
    for par, error in zip(parameters, errors):
        par.error = error


