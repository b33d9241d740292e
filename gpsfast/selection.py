"""Model selection: alternative spatial and spectral hypotheses per source, chosen by likelihood ratio.

After the generic fit of a group (GeneralizedGaussian + LogParabola seeds,
`gpsfast.groups.fit_groups`), `model_selection` fits, for every source, the
hypotheses of the survey design on a cutout of the datasets around it:

- spatial (with the source's fitted spectrum): ``point``, ``gauss``,
  ``sersic`` (a symmetric generalized Gaussian, ``eta`` free), ``shell``, and
  ``elongated``: the preferred symmetric filled model (Gaussian or Sersic) with
  its eccentricity ``e`` and angle ``phi`` free;
- spectral (with the chosen spatial model, its parameters free too): ``pl``,
  ``lp`` (LogParabola) and ``ecpl`` (exponential cutoff power law);

and chooses (`choose_spatial`, `choose_spectral`, thresholds in
`SelectionThresholds`):

- extended if ``TS_ext = stat(point) - stat(gauss) > ts_ext`` (2 dlogL of the
  nested Gaussian vs point hypotheses), else point;
- among extended models, Sersic over Gaussian and elongated over symmetric when
  their statistic improves by more than ``ts_shape`` (nested); a shell over the
  best filled model when its AIC (``stat + 2 k``, k its number of spatial
  parameters) is lower by more than ``delta_aic`` (not nested);
- curved (the better of LP and ECPL) if ``TS_curv = stat(pl) - stat(curved) >
  ts_curv``, else PL;
- for point sources, a 95% upper limit on the extension: the Gaussian ``sigma``
  where the profile of the statistic (position fixed at the point-source fit,
  spectrum refitted at every ``sigma``) rises by 2.71 above its minimum.

Defaults follow the gamma-ray catalogue conventions: TS_ext > 16 (Lande et al.
2012, ApJ 756, 5; the Fermi-LAT extended source catalogue, Ackermann et al.
2017, ApJ 843, 139), TS_curv > 16 (4 sigma; 3FGL, Acero et al. 2015, ApJS 218,
23; 4FGL uses 4), delta AIC > 10 ("essentially no support" for the worse model,
Burnham & Anderson 2002), the size upper limit at 95% CL for sources compatible
with point-like as in the HGPS (H.E.S.S. Collaboration 2018, A&A 612, A1).

The other sources
-----------------
Each source is fitted on a cutout with the other sources at their generic best
fit: the sources outside its group are evaluated once into a frozen npred
template per cutout (`gpsfast.groups.make_group_task`). Neighbours that overlap
it strongly (overlap weight ``(r_i + r_j - d) / (r_i + r_j)`` above
``joint_overlap``, r the source extent combined with the PSF radius) would bias
its hypotheses if held fixed: they are fitted jointly in every hypothesis (and
in the null hypothesis without the source), their free parameters other than
the shape ones free, starting from their generic fit each time. Every source
starts from the same generic models: the result does not depend on the order.

The TS of a hypothesis is ``stat(null) - stat(hypothesis)`` on the cutout, the
null being the cutout without the source.
"""
import logging
import time
from dataclasses import dataclass

import astropy.units as u
import joblib
import numpy as np
from astropy.coordinates import Angle, SkyCoord
from astropy.table import Table
from gammapy.modeling import Fit
from gammapy.modeling.models import (
    ExpCutoffPowerLawSpectralModel,
    GaussianSpatialModel,
    GeneralizedGaussianSpatialModel,
    LogParabolaSpectralModel,
    Models,
    PointSpatialModel,
    PowerLawSpectralModel,
    ShellSpatialModel,
    SkyModel,
    TemplateSpatialModel,
)
from scipy.optimize import brentq

from .errors import InputError
from .fit import SHAPE_PARAMETERS, fast_datasets
from .groups import Group, make_group_task, source_extent
from .models import GeneralizedGaussianSpatialModel as FastGeneralizedGaussian
from .utils import progress_bar

__all__ = [
    "FLAG_AT_BOUND",
    "FLAG_FIT_FAILED",
    "FLAG_UL_NOT_FOUND",
    "SPATIAL_HYPOTHESES",
    "SPECTRAL_HYPOTHESES",
    "SelectionThresholds",
    "choose_spatial",
    "choose_spectral",
    "hessian_errors",
    "model_selection",
]

log = logging.getLogger(__name__)

SPATIAL_HYPOTHESES = ("point", "gauss", "sersic", "shell", "elongated")
SPECTRAL_HYPOTHESES = ("pl", "lp", "ecpl")
SPATIAL_DOF = {"point": 2, "gauss": 3, "sersic": 4, "shell": 4, "elongated_gauss": 5, "elongated_sersic": 6}
"""Spatial parameters of each hypothesis (the AIC's k; the spectrum is common to all)."""

FLAG_FIT_FAILED = 1
"""A hypothesis fit did not converge (named in the ``failed`` column)."""
FLAG_UL_NOT_FOUND = 2
"""The extension profile did not rise by the upper-limit delta TS below the largest size (half the cutout)."""
FLAG_AT_BOUND = 4
"""A free parameter of the chosen model ended at one of its bounds."""

SIZE_MIN, SIZE_MAX = 0.01, 2.0
"""Bounds of the sizes (deg): the smallest is far below any PSF, the point-like limit of the nested tests."""
POSITION_STEP = 0.01
"""Start step of minuit on the positions (deg)."""
OPTIMIZE_OPTS = {"strategy": 0, "tol": 1.0}
"""Minuit options of a hypothesis fit: strategy 0 converges where strategy 1 and 2 stall on the small
discontinuities of binned likelihoods in a source's size and position (shell fits)."""
RETRY_OPTS = {"strategy": 1, "tol": 1.0, "migrad_opts": {"ncall": 1500}}
"""Minuit options of the retry of a hypothesis fit that did not converge."""


class _FixedSupport:
    """A spatial model whose integration grid and support are fixed at creation.

    gammapy oversamples a pixel by ``ceil(pixel / evaluation_bin_size_min)``,
    a factor that jumps as a size changes, and its evaluator cuts the model out
    over ``evaluation_radius`` when it is updated, which only a move of the
    position triggers: a model that grows is truncated. Both make the
    likelihood depend on the path of the fit (shell fits stalled for thousands
    of calls, ending 80 in TS apart from the same parameters). Here the bin
    (``bin_size``) is set from the starting size and the support (``support``)
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


class _Gaussian(_FixedSupport, GaussianSpatialModel):
    """`~gammapy.modeling.models.GaussianSpatialModel` with a fixed grid and support."""


class _Sersic(_FixedSupport, FastGeneralizedGaussian):
    """gpsfast's compiled generalized Gaussian with a fixed grid and support."""


class _Shell(_FixedSupport, ShellSpatialModel):
    """`~gammapy.modeling.models.ShellSpatialModel` with a fixed grid and support."""


# gammapy collects a model's parameters from its own class body only
for _cls, _base in ((_Gaussian, GaussianSpatialModel), (_Sersic, GeneralizedGaussianSpatialModel),
                    (_Shell, ShellSpatialModel)):
    _cls.default_parameters = _base.default_parameters
PLAIN = {_Gaussian: GaussianSpatialModel, _Sersic: GeneralizedGaussianSpatialModel, _Shell: ShellSpatialModel}


def _fixed(cls, size, support, largest=0.02, **kwargs):
    """A `_FixedSupport` model: bin of a quarter of ``size`` in [0.004, largest] deg, ``support`` in deg."""
    model = cls(**kwargs)
    model.bin_size = float(np.clip(size / 4, 0.004, largest)) * u.deg
    model.support = support * u.deg
    return model


def _plain(spatial):
    """The gammapy model of a hypothesis (same parameters, ``e`` >= 0), for the output."""
    plain = PLAIN.get(type(spatial))
    if plain is None:
        return spatial
    spatial = plain.from_parameters(spatial.parameters, frame=spatial.frame)
    if "e" in spatial.parameters.names:
        spatial.e.value, spatial.e.min = abs(spatial.e.value), 0.0
    return spatial


@dataclass(frozen=True)
class SelectionThresholds:
    """Decision thresholds of the model selection (see the module notes).

    Attributes
    ----------
    ts_ext : float
        Extended when ``TS_ext`` > this. Default 16.
    ts_curv : float
        Curved spectrum when ``TS_curv`` > this. Default 16.
    ts_shape : float
        Sersic over Gaussian, elongated over symmetric: improvement of the
        statistic above this. Default 16.
    delta_aic : float
        Shell over filled: AIC lower by more than this. Default 10.
    ul_delta_ts : float
        Rise of the statistic defining the extension upper limit. Default 2.71 (95%).
    """

    ts_ext: float = 16.0
    ts_curv: float = 16.0
    ts_shape: float = 16.0
    delta_aic: float = 10.0
    ul_delta_ts: float = 2.71


def _finite(stat, key):
    return key in stat and np.isfinite(stat[key])


def choose_spatial(stat, thresholds=None):
    """Spatial hypothesis chosen from the fit statistics of the hypotheses.

    Parameters
    ----------
    stat : dict
        ``{hypothesis: fit statistic (-2 log L)}`` with ``point`` and ``gauss``
        and any of ``sersic``, ``shell``, ``elongated_gauss``,
        ``elongated_sersic`` (missing or NaN: not fitted).
    thresholds : `SelectionThresholds`, optional

    Returns
    -------
    chosen : str
    ts_ext : float
        ``stat["point"] - stat["gauss"]``.
    """
    t = thresholds or SelectionThresholds()
    ts_ext = stat["point"] - stat["gauss"]
    if not ts_ext > t.ts_ext:
        return "point", ts_ext
    best = "gauss"
    if _finite(stat, "sersic") and stat["gauss"] - stat["sersic"] > t.ts_shape:
        best = "sersic"
    elongated = f"elongated_{best}"
    if _finite(stat, elongated) and stat[best] - stat[elongated] > t.ts_shape:
        best = elongated
    if _finite(stat, "shell"):
        aic_best = stat[best] + 2 * SPATIAL_DOF[best]
        if aic_best - (stat["shell"] + 2 * SPATIAL_DOF["shell"]) > t.delta_aic:
            best = "shell"
    return best, ts_ext


def choose_spectral(stat, thresholds=None):
    """Spectral hypothesis chosen from the fit statistics of the hypotheses.

    Parameters
    ----------
    stat : dict
        ``{hypothesis: fit statistic}`` with ``pl`` and any of ``lp``, ``ecpl``.
    thresholds : `SelectionThresholds`, optional

    Returns
    -------
    chosen : str
    ts_curv : float
        ``stat["pl"]`` minus the better curved statistic (NaN without one).
    """
    t = thresholds or SelectionThresholds()
    curved = [k for k in ("lp", "ecpl") if _finite(stat, k)]
    if not curved:
        return "pl", np.nan
    best = min(curved, key=stat.get)
    ts_curv = stat["pl"] - stat[best]
    return (best if ts_curv > t.ts_curv else "pl"), ts_curv


# ------------------------------------------------------------------ hypotheses


def _position(spatial):
    return {"lon_0": spatial.lon_0.quantity, "lat_0": spatial.lat_0.quantity, "frame": spatial.frame}


def _bounded(spatial, reach, sizes=()):
    """Positions bounded to the start +- ``reach`` (deg), start steps set; sizes bounded."""
    for name in ("lon_0", "lat_0"):
        par = spatial.parameters[name]
        par.min, par.max = par.value - reach, par.value + reach
        par.error = POSITION_STEP
    for name, low, high in sizes:
        par = spatial.parameters[name]
        par.min, par.max = low, high
        par.value = float(np.clip(par.value, low, high))
        par.frozen = False
        par.error = 0.1 * par.value
    return spatial


def _spatial_hypothesis(kind, cutout, fitted, reach):
    """Spatial model of a hypothesis, started from the generic fit (and the fitted symmetric model)."""
    spatial = cutout.generic.spatial_model
    position = _position(spatial)
    extent = max(source_extent(spatial).to_value("deg"), 0.02)
    reach = max(reach, extent)
    support, size_max = cutout.support, cutout.size_max
    if kind == "point":
        return _bounded(PointSpatialModel(**position), reach)
    if kind == "gauss":
        model = _fixed(_Gaussian, extent / 2, support, sigma=extent / 2 * u.deg, **position)
        return _bounded(model, reach, [("sigma", SIZE_MIN, size_max)])
    if kind == "sersic":
        names = spatial.parameters.names
        r_0 = spatial.r_0.value if "r_0" in names else extent / 1.4
        eta = spatial.eta.value if "eta" in names else 0.5
        model = _fixed(_Sersic, r_0 / 2, support, r_0=r_0 * u.deg, eta=eta, e=0, **position)
        return _bounded(model, reach, [("r_0", SIZE_MIN, size_max), ("eta", 0.05, 1.0)])
    if kind == "shell":
        # edges sampled at a quarter pixel: coarser steps stall minuit, finer ones only cost
        model = _fixed(_Shell, min(cutout.pixel, 0.5 * extent), support, largest=0.02,
                       radius=0.75 * extent * u.deg, width=0.25 * extent * u.deg, **position)
        return _bounded(model, reach, [("radius", SIZE_MIN, size_max), ("width", 2 * SIZE_MIN, size_max)])
    base = fitted[kind.replace("elongated_", "")].spatial_model.copy()
    e = spatial.e.value if "e" in spatial.parameters.names and spatial.e.value > 0.1 else 0.3
    # the models are even in e: with e in [-0.95, 0.95] a round source is an interior minimum, not a bound
    # where minuit stalls (the sign is dropped in the output)
    base.e.value, base.e.min, base.e.max, base.e.frozen = e, -0.95, 0.95, False
    base.phi.value = spatial.phi.value if "phi" in spatial.parameters.names else 0.0
    base.phi.frozen = False
    return _bounded(base, reach)


def _reference_slope(spectral):
    names = spectral.parameters.names
    reference = spectral.reference.quantity if "reference" in names else 1 * u.TeV
    slope = next((spectral.parameters[n].value for n in ("alpha", "index") if n in names), 2.5)
    return reference, slope, spectral(reference)


def _spectral_hypothesis(kind, spectral):
    reference, slope, amplitude = _reference_slope(spectral)
    common = {"amplitude": amplitude, "reference": reference}
    if kind == "pl":
        model = PowerLawSpectralModel(index=slope, **common)
        model.index.min, model.index.max = 0.5, 6.0
    elif kind == "lp":
        beta = spectral.beta.value if "beta" in spectral.parameters.names and spectral.beta.value > 0.02 else 0.1
        model = LogParabolaSpectralModel(alpha=slope, beta=beta, **common)
        model.alpha.min, model.alpha.max, model.beta.min, model.beta.max = 0.5, 6.0, 0.0, 2.0
        model.beta.frozen = False
    else:
        model = ExpCutoffPowerLawSpectralModel(index=slope, lambda_=0.05 / u.TeV, **common)
        model.index.min, model.index.max, model.lambda_.min, model.lambda_.max = 0.5, 6.0, 0.0, 10.0
    model.amplitude.min = 0
    return model


# ------------------------------------------------------------------ fits on a source's cutout


@dataclass(frozen=True)
class _Settings:
    spatial: tuple
    spectral: tuple
    thresholds: SelectionThresholds
    extension_ul: bool
    fit_all: bool
    fast: bool
    optimize_opts: tuple
    reach: float


class _Cutout:
    """A source's cutout datasets, the fixed models around it and its jointly fitted neighbours."""

    def __init__(self, task, name, settings):
        self.datasets = task.make_datasets()
        models = self.datasets.models
        self.generic = models[name]
        self.neighbours = [models[n] for n in task.group.names if n != name]
        self.fixed = [m for m in models if m.name not in task.group.names]
        for par in (p for m in self.fixed for p in m.parameters):
            par.frozen = True
        for neighbour in self.neighbours:
            for par in neighbour.spatial_model.parameters:
                par.frozen = par.frozen or par.name in SHAPE_PARAMETERS
        self.start = [(par, par.value) for m in self.neighbours for par in m.parameters]
        self.settings = settings
        half = task.group.width.to_value("deg") / 2
        self.support, self.size_max = half * np.sqrt(2), min(SIZE_MAX, half)
        self.pixel = min(float(np.min(d.counts.geom.pixel_scales.deg)) for d in self.datasets)

    def _set(self, model, neighbours):
        for par, value in neighbours:
            par.value = value
        members = ([model] if model is not None else []) + self.neighbours
        self.datasets.models = Models([*members, *self.fixed])
        datasets = fast_datasets(self.datasets) if self.settings.fast else self.datasets
        return datasets, Models(members).parameters.free_parameters

    def fit(self, model):
        """Fit ``model`` (None: the null hypothesis) with the neighbours from their start.

        Returns (stat, success, the neighbours' fitted values).
        """
        datasets, free = self._set(model, self.start)
        if not free:
            return float(datasets.stat_sum()), True, self.start
        options = dict(self.settings.optimize_opts) or dict(OPTIMIZE_OPTS)
        start = time.perf_counter()
        result = Fit(optimize_opts=options).optimize(datasets)
        if not result.success:
            result = Fit(optimize_opts=dict(RETRY_OPTS)).optimize(datasets)
        log.debug("%s: %s fitted in %.2f s (%d calls, %s)", self.generic.name,
                  "null" if model is None else f"{type(model.spatial_model).__name__} + "
                  f"{type(model.spectral_model).__name__}", time.perf_counter() - start, result.nfev,
                  "converged" if result.success else result.message)
        return float(result.total_stat), bool(result.success), [(p, p.value) for p, _ in self.start]

    def covariance(self, model, neighbours):
        """Parameter errors of a fitted ``model`` (its neighbours at their values of that fit): `hessian_errors`."""
        datasets, free = self._set(model, neighbours)
        if free:
            hessian_errors(datasets, list(free))


def _stat_at(datasets, parameters, values):
    for par, value in zip(parameters, values):
        par.value = value
    return datasets.stat_sum()


def _steps_inside(parameters, values, steps):
    """Steps shortened to stay inside the bounds (NaN at a bound)."""
    room = np.array([min(abs(v - p.min) if np.isfinite(p.min) else np.inf,
                         abs(p.max - v) if np.isfinite(p.max) else np.inf) for p, v in zip(parameters, values)])
    steps = np.minimum(steps, 0.9 * room)
    return np.where(steps > 0, steps, np.nan)


def hessian_errors(datasets, parameters):
    """Errors from a central finite-difference Hessian of the fit statistic (-2 log L) at the best fit.

    gammapy's maps are float32: the statistic has a rounding noise of about
    1e-5, and minuit's HESSE, whose steps are chosen for double precision,
    returns errors on positions and sizes that are too small by factors up to
    20 and change from one call to the next. Here the steps are half the
    conditional errors of a first, diagonal pass (the statistic then changes by
    about 0.25, far above the noise). Parameters at a bound, or with a
    non-positive curvature, get a NaN error.

    Parameters
    ----------
    datasets : `~gammapy.datasets.Datasets`
        Datasets at the best fit (their ``stat_sum`` is evaluated).
    parameters : list of `~gammapy.modeling.Parameter`
        Free parameters; their ``error`` is set (values are restored).
    """
    values = np.array([p.value for p in parameters])
    center = datasets.stat_sum()
    steps = np.array([POSITION_STEP if p.name in ("lon_0", "lat_0") else max(0.05 * abs(p.value), 1e-3 * p.scale)
                      for p in parameters])
    try:
        for full in (False, True):
            steps = _steps_inside(parameters, values, steps)
            hessian = np.full((len(values), len(values)), np.nan)
            for i in np.flatnonzero(np.isfinite(steps)):
                shift = np.zeros(len(values))
                shift[i] = steps[i]
                hessian[i, i] = (_stat_at(datasets, parameters, values + shift) - 2 * center
                                 + _stat_at(datasets, parameters, values - shift)) / steps[i] ** 2
            if not full:
                with np.errstate(invalid="ignore", divide="ignore"):
                    steps = 0.5 * np.sqrt(2 / np.diag(hessian))
                continue
            ok = np.flatnonzero(np.isfinite(np.diag(hessian)) & (np.diag(hessian) > 0))
            for a, i in enumerate(ok):
                for j in ok[a + 1:]:
                    corners = []
                    for si, sj in ((1, 1), (1, -1), (-1, 1), (-1, -1)):
                        shift = np.zeros(len(values))
                        shift[i], shift[j] = si * steps[i], sj * steps[j]
                        corners.append(_stat_at(datasets, parameters, values + shift))
                    hessian[i, j] = hessian[j, i] = (corners[0] - corners[1] - corners[2] + corners[3]) / (
                        4 * steps[i] * steps[j])
    finally:
        _stat_at(datasets, parameters, values)
    errors = np.full(len(values), np.nan)
    if len(ok):
        try:
            covariance = 2 * np.linalg.inv(hessian[np.ix_(ok, ok)])
            errors[ok] = np.sqrt(np.where(np.diag(covariance) > 0, np.diag(covariance), np.nan))
        except np.linalg.LinAlgError:
            log.debug("singular Hessian for %s", [p.name for p in parameters])
    for par, error in zip(parameters, errors):
        par.error = error


class _Hypotheses:
    """Fitted hypotheses of one source: statistics, models, failures."""

    def __init__(self, cutout, name):
        self.cutout, self.name = cutout, name
        self.stat, self.models, self.neighbours, self.failed = {}, {}, {}, []

    def run(self, kind, spatial, spectral):
        generic = self.cutout.generic
        model = SkyModel(spatial_model=spatial, spectral_model=spectral, name=self.name,
                         datasets_names=generic.datasets_names)
        stat, success, neighbours = self.cutout.fit(model)
        if not success:
            self.failed.append(kind)
        self.stat[kind], self.models[kind], self.neighbours[kind] = stat, model, neighbours
        return model


def _spatial_stage(hyp, settings):
    cutout, t = hyp.cutout, settings.thresholds
    generic = cutout.generic

    def run(kind):
        spatial = _spatial_hypothesis(kind, cutout, hyp.models, settings.reach)
        hyp.run(kind, spatial, generic.spectral_model.copy())

    run("point")
    run("gauss")
    if hyp.stat["point"] - hyp.stat["gauss"] > t.ts_ext or settings.fit_all:
        for kind in ("sersic", "shell"):
            if kind in settings.spatial:
                run(kind)
        if "elongated" in settings.spatial:
            sersic = _finite(hyp.stat, "sersic") and hyp.stat["gauss"] - hyp.stat["sersic"] > t.ts_shape
            run("elongated_sersic" if sersic else "elongated_gauss")
    return choose_spatial(hyp.stat, t)


def _spectral_stage(hyp, spatial_kind, settings):
    """Spectral hypotheses with the chosen spatial model held at its best fit."""
    base = hyp.models[spatial_kind]
    spectral = _Hypotheses(hyp.cutout, hyp.name)
    for kind in settings.spectral:
        spatial = base.spatial_model.copy()
        for par in spatial.parameters:
            par.frozen = True
        spectral.run(kind, spatial, _spectral_hypothesis(kind, base.spectral_model))
    chosen, ts_curv = choose_spectral(spectral.stat, settings.thresholds)
    return spectral, chosen, ts_curv


def _with_errors(hyp, spectral, spatial_kind, spectral_kind):
    """The chosen model with the spatial parameters of the spatial stage free again, and its errors.

    The errors come from the covariance at the spectral stage's best fit (the
    spatial parameters at the spatial stage's best fit): the morphology moves
    very little with the spectral shape.
    """
    model = spectral.models[spectral_kind]
    for par, free in zip(model.spatial_model.parameters, hyp.models[spatial_kind].spatial_model.parameters):
        par.frozen = free.frozen
    hyp.cutout.covariance(model, spectral.neighbours[spectral_kind])
    return model


def _extension_ul(cutout, point, delta):
    """95% upper limit on the Gaussian sigma (deg) of a point-like source; NaN when not found.

    The profile is that of a Gaussian at the point-source position, its
    spectrum refitted at every sigma; its minimum is the fit with sigma free
    (gammapy's point source is spread over the pixels around it, so that the
    best Gaussian of a point-like source has a sigma of a fraction of a pixel,
    not zero). The limit is where the profile rises by ``delta`` above it.
    """
    position = _position(point.spatial_model)

    def fit(sigma, free=False):
        spatial = _fixed(_Gaussian, SIZE_MIN if free else sigma, cutout.support, sigma=sigma * u.deg,
                         **position)
        for par in spatial.parameters:
            par.frozen = par.name != "sigma" or not free
        spatial.sigma.min, spatial.sigma.max = SIZE_MIN, cutout.size_max
        model = SkyModel(spatial_model=spatial, spectral_model=point.spectral_model.copy(), name=point.name,
                         datasets_names=point.datasets_names)
        return cutout.fit(model)[0], spatial.sigma.value

    best, low = fit(2 * SIZE_MIN, free=True)
    sigma = max(2 * low, 2 * SIZE_MIN)
    while sigma <= cutout.size_max:
        stat = fit(sigma)[0]
        if stat - best > delta:
            return brentq(lambda s: fit(s)[0] - best - delta, low, sigma, xtol=1e-3)
        best = min(best, stat)
        low, sigma = sigma, 2 * sigma
    return np.nan


def _at_bound(model):
    """Whether a free parameter is within 1e-4 (relative) or 1e-3 errors of one of its bounds."""
    for par in model.parameters.free_parameters:
        for bound in (par.min, par.max):
            distance = abs(par.value - bound)
            if np.isfinite(bound) and (distance <= 1e-4 * (abs(par.value) + abs(bound))
                                       or distance <= 1e-3 * abs(par.error)):
                return True
    return False


def _select_source(task, name, settings):
    """All hypotheses of one source (in a worker): (table row, chosen model)."""
    start = time.perf_counter()
    cutout = _Cutout(task, name, settings)
    stat_null = cutout.fit(None)[0]
    spatial = _Hypotheses(cutout, name)
    spatial_kind, ts_ext = _spatial_stage(spatial, settings)
    spectral, spectral_kind, ts_curv = _spectral_stage(spatial, spatial_kind, settings)
    chosen = _with_errors(spatial, spectral, spatial_kind, spectral_kind)
    stat_chosen = spectral.stat[spectral_kind]
    failed = spatial.failed + spectral.failed
    flags = FLAG_FIT_FAILED if failed else 0
    extension_ul = np.nan
    if spatial_kind == "point" and settings.extension_ul:
        extension_ul = _extension_ul(cutout, chosen.copy(name=name), settings.thresholds.ul_delta_ts)
        flags |= FLAG_UL_NOT_FOUND if not np.isfinite(extension_ul) else 0
    flags |= FLAG_AT_BOUND if _at_bound(chosen) else 0
    row = {"name": name, "spatial": spatial_kind, "spectral": spectral_kind, "ts": stat_null - stat_chosen}
    elongated = next((k for k in spatial.stat if k.startswith("elongated_")), "")
    for kind in SPATIAL_HYPOTHESES:
        key = elongated if kind == "elongated" else kind
        row[f"ts_{kind}"] = stat_null - spatial.stat[key] if key in spatial.stat else np.nan
    for kind in SPECTRAL_HYPOTHESES:
        row[f"ts_{kind}"] = stat_null - spectral.stat[kind] if kind in spectral.stat else np.nan
    row.update(ts_ext=ts_ext, ts_curv=ts_curv, extension_ul=extension_ul, elongated=elongated, flags=flags,
               failed=",".join(failed), stat_null=stat_null,
               time=time.perf_counter() - start)
    chosen = SkyModel(spatial_model=_plain(chosen.spatial_model), spectral_model=chosen.spectral_model,
                      name=name, datasets_names=chosen.datasets_names)
    return row, chosen


# ------------------------------------------------------------------ driver


def _sources(models):
    return [m for m in models if isinstance(m, SkyModel) and m.spatial_model is not None
            and not isinstance(m.spatial_model, TemplateSpatialModel)]


def _selection_group(index, name, sources, radii, positions, joint_overlap, margin):
    """The `~gpsfast.groups.Group` of one source: itself and the neighbours it overlaps strongly."""
    k = [m.name for m in sources].index(name)
    separation = positions[k].separation(positions).deg
    reach = radii[k] + radii
    weight = np.where(reach > 0, (reach - separation) / np.where(reach > 0, reach, 1), 0)
    members = [k] + [j for j in np.argsort(separation) if j != k and weight[j] > joint_overlap]
    half = max(separation[j] + 2 * radii[j] for j in members) + margin
    names = tuple(sources[j].name for j in members)
    return Group(index, names, name, positions[k], Angle(2 * half, "deg"))


def _table(rows):
    table = Table(rows=rows)
    for column in ("extension_ul",):
        table[column].unit = "deg"
    table["time"].unit = "s"
    return table


def model_selection(datasets, models, names=None, spatial=SPATIAL_HYPOTHESES, spectral=SPECTRAL_HYPOTHESES,
                    thresholds=None, extension_ul=True, fit_all=False, joint_overlap=0.5, psf_radius="0.1 deg",
                    margin="0.3 deg", position_range="0.3 deg", fast=True, n_jobs=1, optimize_opts=None,
                    progress=False):
    """Fit the alternative hypotheses of every source and choose its spatial and spectral models.

    See the module notes for the hypotheses, the decision rules and the
    treatment of the other sources.

    Parameters
    ----------
    datasets : `~gammapy.datasets.Datasets`
        Full MapDatasets (fitted jointly on each source's cutout).
    models : `~gammapy.modeling.models.Models`
        All models after the generic fit (sources, backgrounds, diffuse); not changed.
    names : list of str, optional
        Sources to test. Default: every sky model with a spatial model that is
        not a template.
    spatial : sequence of str, optional
        Spatial hypotheses among `SPATIAL_HYPOTHESES`; ``point`` and ``gauss``
        are always fitted (the extension test).
    spectral : sequence of str, optional
        Spectral hypotheses among `SPECTRAL_HYPOTHESES` (``pl`` always fitted).
    thresholds : `SelectionThresholds`, optional
        Decision thresholds (defaults: TS_ext 16, TS_curv 16, shape 16, delta AIC 10).
    extension_ul : bool, optional
        Compute the 95% extension upper limit of point-like sources. Default True.
    fit_all : bool, optional
        Fit the Sersic, shell and elongated hypotheses of point-like sources too
        (their TS columns; by default only when ``TS_ext`` passes).
    joint_overlap : float, optional
        Neighbours overlapping more than this are fitted jointly. Default 0.5.
    psf_radius, margin : `~astropy.coordinates.Angle` or str, optional
        PSF radius combined with the source extents, and the cutout margin.
    position_range : `~astropy.coordinates.Angle` or str, optional
        Positions are bounded to the generic fit +- this, or +- the source
        extent when larger. Default 0.3 deg.
    fast : bool, optional
        Fit on `gpsfast.fit.fast_datasets` (default) or gammapy's datasets.
    n_jobs : int, optional
        Worker processes (joblib loky); 1 runs in-process. Default 1.
    optimize_opts : dict, optional
        Minuit options (a failed fit is retried with ``strategy=2``).
    progress : bool, optional
        Show a progress bar.

    Returns
    -------
    table : `~astropy.table.Table`
        One row per source: ``name``, ``spatial`` (point, gauss, sersic, shell,
        elongated_gauss, elongated_sersic), ``spectral`` (pl, lp, ecpl), ``ts``
        (of the chosen model), ``ts_<hypothesis>`` for every hypothesis (NaN:
        not fitted), ``ts_ext``, ``ts_curv``, ``extension_ul`` (deg, point-like
        sources), ``elongated`` (which elongated model was fitted), ``flags``
        (`FLAG_FIT_FAILED`, `FLAG_UL_NOT_FOUND`, `FLAG_AT_BOUND`), ``failed``,
        ``stat_null``, ``time`` (s).
    models : `~gammapy.modeling.models.Models`
        ``models`` with each tested source replaced by its chosen model (same
        name, fitted values and errors); the other models are the same objects.
    """
    datasets, models, names, settings = _check(datasets, models, names, spatial, spectral, thresholds,
                                               extension_ul, fit_all, fast, optimize_opts, position_range)
    sources = _sources(models)
    psf = u.Quantity(psf_radius, "deg").value
    radii = np.array([np.hypot(source_extent(m.spatial_model).to_value("deg"), psf) for m in sources])
    positions = SkyCoord([m.position.galactic for m in sources])
    margin = u.Quantity(margin, "deg").value

    def tasks():
        for index, name in enumerate(names):
            group = _selection_group(index, name, sources, radii, positions, joint_overlap, margin)
            yield make_group_task(datasets, models, group), name

    if n_jobs == 1:
        results = (_select_source(task, name, settings) for task, name in tasks())
    else:
        parallel = joblib.Parallel(n_jobs=n_jobs, return_as="generator")
        results = parallel(joblib.delayed(_select_source)(task, name, settings) for task, name in tasks())
    rows, chosen = [], {}
    for row, model in progress_bar(results, desc="model selection", show=progress, total=len(names)):
        rows.append(row)
        chosen[row["name"]] = model
        log.info("%s: %s + %s (TS_ext %.1f, TS_curv %.1f)", row["name"], row["spatial"], row["spectral"],
                 row["ts_ext"], row["ts_curv"])
    return _table(rows), Models([chosen.get(m.name, m) for m in models])


def _check(datasets, models, names, spatial, spectral, thresholds, extension_ul, fit_all, fast, optimize_opts,
           position_range):
    from gammapy.datasets import Datasets, MapDataset

    datasets = Datasets([datasets] if isinstance(datasets, MapDataset) else datasets)
    bad = [d.name for d in datasets if not isinstance(d, MapDataset)]
    if bad:
        raise InputError(f"model_selection: every dataset must be a MapDataset, not {bad}")
    models = models if isinstance(models, Models) else Models(models)
    known = [m.name for m in _sources(models)]
    names = known if names is None else list(names)
    missing = [n for n in names if n not in known]
    if missing:
        raise InputError(f"model_selection: no source named {missing} among {known}")
    unknown = [k for k in spatial if k not in SPATIAL_HYPOTHESES] + [k for k in spectral if k not in
                                                                      SPECTRAL_HYPOTHESES]
    if unknown:
        raise InputError(f"model_selection: unknown hypotheses {unknown}; spatial: {list(SPATIAL_HYPOTHESES)}, "
                         f"spectral: {list(SPECTRAL_HYPOTHESES)}")
    settings = _Settings(tuple(spatial), tuple(dict.fromkeys(("pl", *spectral))),
                         thresholds or SelectionThresholds(), bool(extension_ul), bool(fit_all), bool(fast),
                         tuple(sorted((optimize_opts or {}).items())), u.Quantity(position_range, "deg").value)
    return datasets, models, names, settings
