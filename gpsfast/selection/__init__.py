"""Model selection: alternative spatial and spectral hypotheses per source, chosen by likelihood ratio.

After the generic fit (GeneralizedGaussian + LogParabola, `gpsfast.groups.fit_groups`),
`model_selection` fits for every source, on a cutout of the datasets around it:

- spatial hypotheses, with the source's generic spectrum: ``point``, ``gauss``,
  ``sersic`` (symmetric generalized Gaussian, ``eta`` free), ``shell`` and
  ``elongated`` (the preferred symmetric filled model with ``e`` and ``phi`` free);
- spectral hypotheses, with the chosen spatial model held at its best fit:
  ``pl``, ``lp`` (LogParabola), ``ecpl`` (exponential cutoff power law);

and chooses (`choose_spatial`, `choose_spectral`, `SelectionThresholds`): extended
if ``TS_ext = stat(point) - stat(gauss) > ts_ext``; among extended models, Sersic
over Gaussian and elongated over symmetric if the statistic improves by more than
``ts_shape`` (nested); a shell over the best filled model if its AIC (``stat +
2 k``, k spatial parameters, `SPATIAL_DOF`) is lower by more than ``delta_aic``
(not nested); curved (the better of LP and ECPL) if ``TS_curv = stat(pl) -
stat(curved) > ts_curv``. Point-like sources get a 95% upper limit on the
extension: the Gaussian sigma where the profile of the statistic (position fixed,
spectrum refitted) rises by 2.71 above its minimum. The TS of a hypothesis is
``stat(null) - stat(hypothesis)`` on the cutout, the null without the source.

Defaults follow the catalogue conventions: TS_ext > 16 (Lande et al. 2012, ApJ
756, 5; Fermi-LAT FGES, Ackermann et al. 2017, ApJ 843, 139), TS_curv > 16 (4
sigma, 3FGL: Acero et al. 2015, ApJS 218, 23; 4FGL uses 4), delta AIC > 10
("essentially no support" for the worse model, Burnham & Anderson 2002), size
upper limits at 95% CL for sources compatible with point-like (HGPS, H.E.S.S.
Collaboration 2018, A&A 612, A1).

The other sources: those outside a source's group keep their generic best fit,
evaluated once into a frozen npred template per cutout
(`gpsfast.groups.make_group_task`). Neighbours overlapping it strongly (weight
``(r_i + r_j - d) / (r_i + r_j)`` > ``joint_overlap``, r the extent combined with
the PSF radius) would bias its hypotheses if fixed: they are refitted in every
hypothesis and in the null (their non-shape free parameters, from their generic
fit each time). Every source starts from the same generic models: the result
does not depend on the order, and sources run in parallel (``n_jobs``).

Errors of the chosen model come from `hessian_errors` (a finite-difference
Hessian): gammapy's float32 maps put a rounding noise of ~1e-5 on the statistic
and minuit's HESSE then returns position and size errors too small by up to 20x.
"""
import logging
import time
from dataclasses import dataclass

import astropy.units as u
import joblib
import numpy as np
from astropy.coordinates import Angle, SkyCoord
from astropy.table import Table
from gammapy.datasets import Datasets, MapDataset
from gammapy.modeling.models import Models, SkyModel, TemplateSpatialModel
from scipy.optimize import brentq

from ..errors import InputError
from ..groups import Group, make_group_task, source_extent
from .hypotheses import (SIZE_MIN, FixedGaussian, SourceCutout, fixed_model, hessian_errors, plain_model,
                         position_of, spatial_hypothesis, spectral_hypothesis)
from ..utils import progress_bar

__all__ = ["FLAG_AT_BOUND", "FLAG_FIT_FAILED", "FLAG_UL_NOT_FOUND", "SPATIAL_DOF", "SPATIAL_HYPOTHESES",
           "SPECTRAL_HYPOTHESES", "SelectionThresholds", "choose_spatial", "choose_spectral", "hessian_errors",
           "model_selection"]

log = logging.getLogger(__name__)

SPATIAL_HYPOTHESES = ("point", "gauss", "sersic", "shell", "elongated")
SPECTRAL_HYPOTHESES = ("pl", "lp", "ecpl")
SPATIAL_DOF = {"point": 2, "gauss": 3, "sersic": 4, "shell": 4, "elongated_gauss": 5, "elongated_sersic": 6}
"""Spatial parameters of each hypothesis (the AIC's k; the spectrum is common to all)."""

FLAG_FIT_FAILED = 1
"""A hypothesis fit did not converge (named in the ``failed`` column)."""
FLAG_UL_NOT_FOUND = 2
"""The extension profile did not rise by the upper-limit delta TS below half the cutout width."""
FLAG_AT_BOUND = 4
"""A free parameter of the chosen model ended at one of its bounds."""

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
        Sersic over Gaussian, elongated over symmetric: statistic improvement above this. Default 16.
    delta_aic : float
        Shell over filled: AIC lower by more than this. Default 10.
    ul_delta_ts : float
        Rise of the statistic at the extension upper limit. Default 2.71 (95%, one-sided).
    """

    ts_ext: float = 16.0
    ts_curv: float = 16.0
    ts_shape: float = 16.0
    delta_aic: float = 10.0
    ul_delta_ts: float = 2.71


def _finite(stat, key):
    return key in stat and np.isfinite(stat[key])


def choose_spatial(stat, thresholds=None):
    """Spatial hypothesis chosen from the fit statistics of the hypotheses (rules: module notes).

    Parameters
    ----------
    stat : dict
        ``{hypothesis: fit statistic (-2 log L)}`` with ``point``, ``gauss`` and any of ``sersic``,
        ``shell``, ``elongated_gauss``, ``elongated_sersic`` (missing or NaN: not fitted).
    thresholds : `SelectionThresholds`, optional

    Returns
    -------
    chosen, ts_ext : str, float
        The hypothesis and ``stat["point"] - stat["gauss"]``.
    """
    t = thresholds or SelectionThresholds()
    ts_ext = stat["point"] - stat["gauss"]
    if not ts_ext > t.ts_ext:
        return "point", ts_ext
    best = "sersic" if _finite(stat, "sersic") and stat["gauss"] - stat["sersic"] > t.ts_shape else "gauss"
    elongated = f"elongated_{best}"
    if _finite(stat, elongated) and stat[best] - stat[elongated] > t.ts_shape:
        best = elongated
    if _finite(stat, "shell"):
        if stat[best] + 2 * SPATIAL_DOF[best] - stat["shell"] - 2 * SPATIAL_DOF["shell"] > t.delta_aic:
            best = "shell"
    return best, ts_ext


def choose_spectral(stat, thresholds=None):
    """Spectral hypothesis chosen from the fit statistics of the hypotheses (rules: module notes).

    Parameters
    ----------
    stat : dict
        ``{hypothesis: fit statistic}`` with ``pl`` and any of ``lp``, ``ecpl``.
    thresholds : `SelectionThresholds`, optional

    Returns
    -------
    chosen, ts_curv : str, float
        The hypothesis and ``stat["pl"]`` minus the better curved statistic (NaN without one).
    """
    t = thresholds or SelectionThresholds()
    curved = [k for k in ("lp", "ecpl") if _finite(stat, k)]
    if not curved:
        return "pl", np.nan
    best = min(curved, key=stat.get)
    ts_curv = stat["pl"] - stat[best]
    return (best if ts_curv > t.ts_curv else "pl"), ts_curv


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


# ------------------------------------------------------------------ one source


def _spatial_stage(cutout, settings):
    """Spatial hypotheses with the generic spectrum; the extended ones only past TS_ext (or ``fit_all``)."""
    t = settings.thresholds

    def run(kind):
        cutout.run(kind, spatial_hypothesis(kind, cutout, cutout.models, settings.reach),
                   cutout.generic.spectral_model.copy())

    run("point")
    run("gauss")
    if cutout.stat["point"] - cutout.stat["gauss"] > t.ts_ext or settings.fit_all:
        for kind in ("sersic", "shell"):
            if kind in settings.spatial:
                run(kind)
        if "elongated" in settings.spatial:
            sersic = _finite(cutout.stat, "sersic") and cutout.stat["gauss"] - cutout.stat["sersic"] > t.ts_shape
            run("elongated_sersic" if sersic else "elongated_gauss")
    return choose_spatial(cutout.stat, t)


def _spectral_stage(cutout, spatial_kind, settings):
    """Spectral hypotheses with the chosen spatial model held at its best fit (recorded as ``spectral:<kind>``)."""
    base = cutout.models[spatial_kind]
    for kind in settings.spectral:
        spatial = base.spatial_model.copy()
        for par in spatial.parameters:
            par.frozen = True
        cutout.run(f"spectral:{kind}", spatial, spectral_hypothesis(kind, base.spectral_model))
    stat = {k: cutout.stat[f"spectral:{k}"] for k in settings.spectral}
    return choose_spectral(stat, settings.thresholds)


def _extension_ul(cutout, point, delta):
    """95% upper limit on the Gaussian sigma (deg) of a point-like source; NaN when not found.

    The profile is that of a Gaussian at the point-source position, its spectrum
    refitted at every sigma; its minimum is the fit with sigma free too
    (gammapy's point source is spread over the pixels around it: the best
    Gaussian of a point-like source has a sigma of a fraction of a pixel, not 0).
    """
    position = position_of(point.spatial_model)

    def fit(sigma, free=False):
        spatial = fixed_model(FixedGaussian, SIZE_MIN if free else sigma, cutout.support, sigma=sigma * u.deg,
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
        best, low, sigma = min(best, stat), sigma, 2 * sigma
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
    """All hypotheses of one source (runs in a worker): (table row, chosen model)."""
    start = time.perf_counter()
    cutout = SourceCutout(task, name, settings.fast, dict(settings.optimize_opts))
    stat_null = cutout.fit(None)[0]
    spatial_kind, ts_ext = _spatial_stage(cutout, settings)
    spectral_kind, ts_curv = _spectral_stage(cutout, spatial_kind, settings)
    kind = f"spectral:{spectral_kind}"
    chosen = cutout.models[kind]
    # errors with the spatial parameters free again, at the spectral stage's best fit (the morphology
    # moves very little with the spectral shape)
    for par, fitted in zip(chosen.spatial_model.parameters, cutout.models[spatial_kind].spatial_model.parameters):
        par.frozen = fitted.frozen
    cutout.errors(kind)
    flags = (FLAG_FIT_FAILED if cutout.failed else 0) | (FLAG_AT_BOUND if _at_bound(chosen) else 0)
    extension_ul = np.nan
    if spatial_kind == "point" and settings.extension_ul:
        extension_ul = _extension_ul(cutout, chosen.copy(name=name), settings.thresholds.ul_delta_ts)
        flags |= 0 if np.isfinite(extension_ul) else FLAG_UL_NOT_FOUND
    elongated = next((k for k in cutout.stat if k.startswith("elongated_")), "")
    keys = {**{k: k for k in SPATIAL_HYPOTHESES}, "elongated": elongated,
            **{k: f"spectral:{k}" for k in SPECTRAL_HYPOTHESES}}
    row = {"name": name, "spatial": spatial_kind, "spectral": spectral_kind, "ts": stat_null - cutout.stat[kind]}
    row.update({f"ts_{k}": stat_null - cutout.stat[key] if key in cutout.stat else np.nan for k, key in keys.items()})
    row.update(ts_ext=ts_ext, ts_curv=ts_curv, extension_ul=extension_ul, elongated=elongated, flags=flags,
               failed=",".join(cutout.failed), stat_null=stat_null, time=time.perf_counter() - start)
    chosen = SkyModel(spatial_model=plain_model(chosen.spatial_model), spectral_model=chosen.spectral_model,
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
    return Group(index, tuple(sources[j].name for j in members), name, positions[k], Angle(2 * half, "deg"))


def model_selection(datasets, models, names=None, spatial=SPATIAL_HYPOTHESES, spectral=SPECTRAL_HYPOTHESES,
                    thresholds=None, extension_ul=True, fit_all=False, joint_overlap=0.5, psf_radius="0.1 deg",
                    margin="0.3 deg", position_range="0.3 deg", fast=True, n_jobs=1, optimize_opts=None,
                    progress=False):
    """Fit the alternative hypotheses of every source and choose its spatial and spectral models.

    See the module notes for the hypotheses, the decisions and the other sources.

    Parameters
    ----------
    datasets : `~gammapy.datasets.Datasets`
        Full MapDatasets (fitted jointly on each source's cutout).
    models : `~gammapy.modeling.models.Models`
        All models after the generic fit (sources, backgrounds, diffuse); not changed.
    names : list of str, optional
        Sources to test. Default: every sky model with a spatial model that is not a template.
    spatial, spectral : sequence of str, optional
        Hypotheses among `SPATIAL_HYPOTHESES` and `SPECTRAL_HYPOTHESES`; ``point``,
        ``gauss`` and ``pl`` are always fitted.
    thresholds : `SelectionThresholds`, optional
        Decision thresholds (defaults: TS_ext 16, TS_curv 16, shape 16, delta AIC 10).
    extension_ul : bool, optional
        Compute the 95% extension upper limit of point-like sources. Default True.
    fit_all : bool, optional
        Fit the Sersic, shell and elongated hypotheses of point-like sources too (by
        default only past ``TS_ext``).
    joint_overlap : float, optional
        Neighbours overlapping more than this are fitted jointly. Default 0.5.
    psf_radius, margin : `~astropy.coordinates.Angle` or str, optional
        PSF radius combined with the source extents (0.1 deg), cutout margin (0.3 deg).
    position_range : `~astropy.coordinates.Angle` or str, optional
        Positions are bounded to the generic fit +- this or the source extent,
        whichever is larger. Default 0.3 deg.
    fast : bool, optional
        Fit on `gpsfast.fit.fast_datasets` (default) or on gammapy's datasets.
    n_jobs : int, optional
        Worker processes (joblib loky); 1 runs in-process. Default 1.
    optimize_opts : dict, optional
        Minuit options (default `gpsfast.selection.hypotheses.OPTIMIZE_OPTS`; a failed fit is retried with
        `gpsfast.selection.hypotheses.RETRY_OPTS`).
    progress : bool, optional
        Show a progress bar.

    Returns
    -------
    table : `~astropy.table.Table`
        One row per source: ``name``, ``spatial`` (point, gauss, sersic, shell,
        elongated_gauss, elongated_sersic), ``spectral`` (pl, lp, ecpl), ``ts`` (of
        the chosen model), ``ts_<hypothesis>`` for every hypothesis (NaN: not
        fitted), ``ts_ext``, ``ts_curv``, ``extension_ul`` (deg), ``elongated``
        (the elongated model fitted), ``flags`` (`FLAG_FIT_FAILED`,
        `FLAG_UL_NOT_FOUND`, `FLAG_AT_BOUND`), ``failed``, ``stat_null``, ``time`` (s).
    models : `~gammapy.modeling.models.Models`
        ``models`` with each tested source replaced by its chosen model (same name,
        fitted values and errors); the other models are the same objects.
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
    table = Table(rows=rows)
    table["extension_ul"].unit, table["time"].unit = "deg", "s"
    return table, Models([chosen.get(m.name, m) for m in models])


def _check(datasets, models, names, spatial, spectral, thresholds, extension_ul, fit_all, fast, optimize_opts,
           position_range):
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
    unknown = [k for k in spatial if k not in SPATIAL_HYPOTHESES] + [k for k in spectral
                                                                      if k not in SPECTRAL_HYPOTHESES]
    if unknown:
        raise InputError(f"model_selection: unknown hypotheses {unknown}; spatial: {list(SPATIAL_HYPOTHESES)}, "
                         f"spectral: {list(SPECTRAL_HYPOTHESES)}")
    settings = _Settings(tuple(spatial), tuple(dict.fromkeys(("pl", *spectral))),
                         thresholds or SelectionThresholds(), bool(extension_ul), bool(fit_all), bool(fast),
                         tuple(sorted((optimize_opts or {}).items())), u.Quantity(position_range, "deg").value)
    return datasets, models, names, settings
