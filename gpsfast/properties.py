"""Per-source catalogue quantities from fitted gammapy models and datasets.

- `energy_flux`: energy flux in a band with its error from the model's
  covariance (linear propagation; the integral photon flux is written by
  `gpsfast.models.catalog.write_catalog`);
- `pivot_energy`: decorrelation energy, where the relative error of dN/dE
  propagated from the covariance is smallest;
- `position_error`: 68% and 95% error ellipses and circles from the lon / lat
  covariance (2D Gaussian);
- `containment_radius`: R68 (or any fraction) of a spatial model, integrated
  numerically from the model itself;
- `significance`: sqrt(TS) with a sign;
- `iau_names`: IAU-style designations (``CTA JHHMM+DDd``, truncated coordinates);
- `exposure_livetime`: exposure and livetime of a dataset at source positions;
- `covariance_check`, `profile_errors`, `robust_errors`: profile-likelihood
  (MINOS) errors where the covariance errors are not to be trusted.
"""
import logging
import string

import numpy as np
import astropy.units as u
from astropy.coordinates import FK5, Angle, SkyCoord
from astropy.table import Table
from gammapy.modeling import Fit
from gammapy.modeling.models import PointSpatialModel, SkyModel, TemplateSpatialModel

from .errors import InputError
from .evaluate import fast_datasets
from .survey import PRESETS

__all__ = [
    "containment_radius",
    "covariance_check",
    "energy_flux",
    "exposure_livetime",
    "iau_names",
    "pivot_energy",
    "position_error",
    "profile_errors",
    "robust_errors",
    "significance",
]

log = logging.getLogger(__name__)


# ------------------------------------------------------------------ spectra


def _spectral(model):
    spectral = model.spectral_model if isinstance(model, SkyModel) else model
    if spectral is None or getattr(spectral, "type", None) != "spectral":
        raise InputError(f"expected a spectral model or a sky model, got {type(model).__name__}")
    return spectral


def _propagate(spectral, function):
    """``function(spectral)`` and its 1-sigma error, propagated linearly from the free parameters' covariance.

    The derivatives are central differences with steps of 1e-3 of each
    parameter's error (of its value where the error is 0).
    """
    value = function(spectral)
    free = [par for par in spectral.parameters if not par.frozen]
    if not free:
        return value, np.nan * value
    covariance = spectral.covariance.get_subcovariance(free)
    if not np.all(np.isfinite(covariance)):
        return value, np.nan * value
    model = spectral.copy()
    pars = [model.parameters[par.name] for par in free]
    gradient = []
    for par in pars:
        start = par.value
        step = 1e-3 * (par.error if par.error > 0 else max(abs(start), 1e-30))
        par.value = start + step
        upper = function(model)
        par.value = start - step
        lower = function(model)
        par.value = start
        gradient.append(((upper - lower) / (2 * step)).to_value(value.unit))
    gradient = np.array(gradient)
    variance = gradient @ covariance @ gradient
    return value, np.sqrt(max(variance, 0.0)) * value.unit


def energy_flux(model, energy_min="1 TeV", energy_max="100 TeV"):
    """Energy flux in a band and its error from the model's covariance.

    Parameters
    ----------
    model : `~gammapy.modeling.models.SpectralModel` or `~gammapy.modeling.models.SkyModel`
        Fitted model (its ``covariance`` set by the fit).
    energy_min, energy_max : `~astropy.units.Quantity` or str, optional
        Band. Default 1 to 100 TeV.

    Returns
    -------
    flux, error : `~astropy.units.Quantity`
        In erg cm-2 s-1; the error is NaN without a covariance.
    """
    energy_min, energy_max = u.Quantity(energy_min), u.Quantity(energy_max)
    value, error = _propagate(_spectral(model), lambda m: m.energy_flux(energy_min, energy_max))
    return value.to("erg cm-2 s-1"), error.to("erg cm-2 s-1")


def _relative_dnde_error(spectral, energy):
    value, error = _propagate(spectral, lambda m: m(energy))
    return (error / value).to_value("")


def pivot_energy(model, energy_min="10 GeV", energy_max="1 PeV"):
    """Pivot (decorrelation) energy: where the relative error of dN/dE is smallest.

    The error of dN/dE is propagated linearly from the free parameters'
    covariance; its relative value is minimised over log energy (a grid of 61
    points, then a bounded scalar minimisation around the best). For a power law
    this is ``E_0 exp(cov(phi_0, Gamma) / (phi_0 sigma_Gamma**2))``.

    Parameters
    ----------
    model : `~gammapy.modeling.models.SpectralModel` or `~gammapy.modeling.models.SkyModel`
        Fitted model (its ``covariance`` set by the fit).
    energy_min, energy_max : `~astropy.units.Quantity` or str, optional
        Search range. Default 10 GeV to 1 PeV.

    Returns
    -------
    energy : `~astropy.units.Quantity`
        In TeV; NaN without a covariance or when the minimum is at an end of the
        range (no decorrelation energy inside it).
    """
    import scipy.optimize

    spectral = _spectral(model)
    log_min, log_max = np.log(u.Quantity(energy_min).to_value("TeV")), np.log(u.Quantity(energy_max).to_value("TeV"))
    grid = np.linspace(log_min, log_max, 61)
    values = np.array([_relative_dnde_error(spectral, np.exp(x) * u.TeV) for x in grid])
    if not np.any(np.isfinite(values)):
        return np.nan * u.TeV
    best = int(np.nanargmin(values))
    if best in (0, grid.size - 1):
        log.warning("pivot_energy: the relative flux error is smallest at an end of %s - %s", energy_min, energy_max)
        return np.nan * u.TeV
    result = scipy.optimize.minimize_scalar(
        lambda x: _relative_dnde_error(spectral, np.exp(x) * u.TeV),
        bounds=(grid[best - 1], grid[best + 1]), method="bounded", options={"xatol": 1e-8},
    )
    return np.exp(result.x) * u.TeV


# ------------------------------------------------------------------ positions


def _rayleigh_factor(fraction):
    """Radius over sigma containing ``fraction`` of a circular 2D Gaussian: sqrt(-2 ln(1 - fraction))."""
    return np.sqrt(-2 * np.log1p(-fraction))


def position_error(model, fractions=(0.68, 0.95)):
    """Position error ellipses and circles from the lon / lat covariance (a 2D Gaussian).

    The covariance of ``lon_0`` and ``lat_0`` is taken to the tangent plane
    (``lon`` offsets times ``cos(lat)``); its eigenvalues give the 1-sigma
    semi-axes. The ellipse containing a fraction ``p`` has semi-axes
    ``k_p sigma`` with ``k_p = sqrt(-2 ln(1 - p))`` (1.5096 at 68%, 2.4477 at
    95%, as the HGPS ``Pos_Err_68`` / ``Pos_Err_95`` ratio). The error circle is
    the circle of the same area, radius ``k_p sqrt(sigma_major sigma_minor)``
    (exact for a circular error; for an ellipse it contains slightly less than
    ``p``).

    Parameters
    ----------
    model : `~gammapy.modeling.models.SkyModel` or spatial model
        Fitted model with ``lon_0`` / ``lat_0`` and their covariance.
    fractions : sequence of float, optional
        Containment fractions. Default 68% and 95%.

    Returns
    -------
    errors : dict
        ``sigma_major``, ``sigma_minor`` (deg), ``position_angle`` (of the major
        axis, from the +lat axis towards +lon, deg), and for each fraction ``p``
        ``r{100 p}`` (circle radius), ``semi_major{100 p}``, ``semi_minor{100 p}``:
        `~astropy.coordinates.Angle`; NaN without a covariance.
    """
    spatial = model.spatial_model if isinstance(model, SkyModel) else model
    if spatial is None or "lon_0" not in spatial.parameters.names:
        raise InputError(f"position_error: {getattr(model, 'name', type(model).__name__)!r} has no position")
    lon, lat = spatial.parameters["lon_0"], spatial.parameters["lat_0"]
    covariance = spatial.covariance.get_subcovariance([lon, lat]) * u.Quantity(1, lon.unit).to_value("deg") ** 2
    scale = np.diag([np.cos(lat.quantity.to_value("rad")), 1.0])
    covariance = scale @ covariance @ scale
    if np.all(np.isfinite(covariance)):
        eigenvalues, eigenvectors = np.linalg.eigh(covariance)
        eigenvalues = np.clip(eigenvalues, 0, None)
        sigma_minor, sigma_major = np.sqrt(eigenvalues)
        major = eigenvectors[:, 1]
        angle = np.degrees(np.arctan2(major[0], major[1])) % 180
    else:
        sigma_minor = sigma_major = angle = np.nan
    result = {"sigma_major": Angle(sigma_major, "deg"), "sigma_minor": Angle(sigma_minor, "deg"),
              "position_angle": Angle(angle, "deg")}
    for fraction in fractions:
        label = f"{100 * fraction:g}"
        factor = _rayleigh_factor(fraction)
        result[f"r{label}"] = Angle(factor * np.sqrt(sigma_major * sigma_minor), "deg")
        result[f"semi_major{label}"] = Angle(factor * sigma_major, "deg")
        result[f"semi_minor{label}"] = Angle(factor * sigma_minor, "deg")
    return result


def containment_radius(model, fraction=0.68, n_radii=2000, n_angles=72):
    """Radius around the model position containing a fraction of a spatial model's flux (R68).

    The model is evaluated on a polar grid around its position (``n_radii``
    radii up to 1.5 times its evaluation radius; ``n_angles`` position angles
    when it is elongated or not radially symmetric, one otherwise), the flux is
    accumulated with the ``sin(r)`` area element, and the radius is
    interpolated where the cumulated fraction reaches ``fraction`` of the flux
    inside the grid. A point source gives 0.

    Parameters
    ----------
    model : `~gammapy.modeling.models.SkyModel` or spatial model
        Gaussian, disk, shell, generalized Gaussian, ... (templates are not supported).
    fraction : float, optional
        Containment fraction. Default 0.68.
    n_radii, n_angles : int, optional
        Grid size.

    Returns
    -------
    radius : `~astropy.coordinates.Angle`
    """
    spatial = model.spatial_model if isinstance(model, SkyModel) else model
    if not 0 < fraction < 1:
        raise InputError(f"containment_radius: fraction must be in (0, 1), got {fraction}")
    if isinstance(spatial, PointSpatialModel):
        return Angle(0, "deg")
    if spatial is None or isinstance(spatial, TemplateSpatialModel) or spatial.evaluation_radius is None:
        raise InputError(f"containment_radius: no radial extent for {type(spatial).__name__}")
    symmetric = all(
        name not in spatial.parameters.names or spatial.parameters[name].value == 0 for name in ("e", "eta_e")
    )
    angles = np.array([0.0]) if symmetric else np.linspace(0, 360, n_angles, endpoint=False)
    r_max = 1.5 * spatial.evaluation_radius.to_value("deg")
    radii = (np.arange(n_radii) + 0.5) * r_max / n_radii
    center = spatial.position
    offsets = center.directional_offset_by(
        Angle(angles[:, None], "deg"), Angle(np.broadcast_to(radii, (angles.size, n_radii)), "deg")
    )
    offsets = offsets.transform_to(spatial.frame) if spatial.frame != offsets.frame.name else offsets
    values = u.Quantity(spatial(offsets.data.lon, offsets.data.lat)).value
    profile = np.nansum(values, axis=0) * np.sin(np.radians(radii))
    cumulated = np.cumsum(profile)
    if not cumulated[-1] > 0:
        return Angle(np.nan, "deg")
    cumulated /= cumulated[-1]
    edges = radii + 0.5 * r_max / n_radii
    return Angle(np.interp(fraction, np.concatenate([[0.0], cumulated]), np.concatenate([[0.0], edges])), "deg")


def significance(ts, sign=None):
    """Significance from a test statistic: ``sign * sqrt(|ts|)``.

    Parameters
    ----------
    ts : float or array
        Test statistic (negative where the source model is worse than none).
    sign : float or array, optional
        Sign source, e.g. the fitted amplitude or norm; default the sign of ``ts``.

    Returns
    -------
    significance : float or ndarray
    """
    ts = np.asarray(ts, dtype=float)
    direction = np.sign(ts) if sign is None else np.sign(np.asarray(sign, dtype=float))
    return direction * np.sqrt(np.abs(ts))


def iau_names(positions, prefix="CTA"):
    """IAU-style source designations from J2000 positions, e.g. ``CTA J1745-290``.

    As the IAU recommends and the H.E.S.S. catalogues do (``HESS J1745-290``),
    the coordinates are truncated, not rounded: right ascension to the minute
    of time (``HHMM``), declination to 0.1 degree (``+DDd``, the sign always
    written). Sources with the same designation get the suffixes ``" A"``,
    ``" B"``, ... in input order (as in HGPS: ``HESS J1018-589 A``).

    Parameters
    ----------
    positions : `~astropy.coordinates.SkyCoord`
        Positions, any frame (converted to FK5 J2000).
    prefix : str, optional
        Designation prefix. Default "CTA".

    Returns
    -------
    names : list of str
    """
    coords = SkyCoord(positions).transform_to(FK5(equinox="J2000"))
    coords = coords.reshape(-1) if not coords.isscalar else coords.reshape((1,))
    # a tiny margin so that values printed as exact (-29.0) do not truncate one step down
    minutes = np.floor(coords.ra.hour * 60 + 1e-7).astype(int) % (24 * 60)
    tenths = np.floor(np.abs(coords.dec.deg) * 10 + 1e-7).astype(int)
    signs = np.where(coords.dec.deg < 0, "-", "+")
    base = [f"{prefix} J{m // 60:02d}{m % 60:02d}{s}{t // 10:02d}{t % 10}" for m, t, s in zip(minutes, tenths, signs)]
    names, counts = list(base), {name: base.count(name) for name in set(base)}
    for name in (name for name, count in counts.items() if count > 1):
        if counts[name] > len(string.ascii_uppercase):
            raise InputError(f"iau_names: {counts[name]} sources share the designation {name}")
        for letter, index in zip(string.ascii_uppercase, [k for k, n in enumerate(base) if n == name]):
            names[index] = f"{name} {letter}"
    return names


def exposure_livetime(dataset, positions, energy_true="1 TeV", offset_max=None):
    """Exposure and livetime of a dataset at source positions.

    The exposure is the dataset's exposure map interpolated at the position and
    ``energy_true``. The livetime at a position sums the livetimes of the runs
    pointed within ``offset_max`` of it (pointings from the dataset's
    ``meta_table``; per-run livetimes from its ``LIVETIME`` column, else the
    exposure's total ``livetime`` shared equally between the runs). Positions
    outside the map get NaN and ``outside`` True.

    Parameters
    ----------
    dataset : `~gammapy.datasets.MapDataset`
        Stacked dataset.
    positions : `~astropy.coordinates.SkyCoord`
        Source positions.
    energy_true : `~astropy.units.Quantity` or str, optional
        True energy of the exposure. Default 1 TeV.
    offset_max : `~astropy.coordinates.Angle`, optional
        Field-of-view radius of a run; default the survey preset's of the
        dataset's name (``subtev``, ``postev``).

    Returns
    -------
    table : `~astropy.table.Table`
        Columns ``exposure`` (cm2 s), ``livetime`` (h), ``n_obs`` and ``outside``.
    """
    if dataset.exposure is None:
        raise InputError(f"exposure_livetime: dataset {dataset.name!r} has no exposure map")
    positions = SkyCoord(positions)
    positions = positions.reshape((1,)) if positions.isscalar else positions.reshape(-1)
    geom = dataset.exposure.geom
    outside = ~np.asarray(geom.to_image().contains(positions), dtype=bool)
    energy = np.full(positions.shape, u.Quantity(energy_true).to_value("TeV")) * u.TeV
    exposure = dataset.exposure.interp_by_coord({"skycoord": positions, "energy_true": energy}, fill_value=np.nan)
    exposure = (exposure * dataset.exposure.unit).to_value("cm2 s")
    exposure[outside] = np.nan
    if offset_max is None:
        if dataset.name not in PRESETS:
            raise InputError(f"exposure_livetime: give offset_max for dataset {dataset.name!r} (not a survey preset)")
        offset_max = PRESETS[dataset.name].offset_max
    livetime, n_obs = _livetime(dataset, positions, Angle(offset_max))
    livetime[outside] = np.nan
    return Table({"exposure": exposure * u.Unit("cm2 s"), "livetime": livetime * u.h, "n_obs": n_obs,
                  "outside": outside})


def _livetime(dataset, positions, offset_max):
    """Livetime (h) and number of runs within ``offset_max`` of each position."""
    meta = dataset.meta_table
    columns = set() if meta is None else set(meta.colnames)
    total = dataset.exposure.meta.get("livetime")
    if not {"RA_PNT", "DEC_PNT"} <= columns or (total is None and "LIVETIME" not in columns):
        log.warning("exposure_livetime: dataset %s has no run pointings or livetime: livetime NaN", dataset.name)
        return np.full(len(positions), np.nan), np.zeros(len(positions), int)
    ra, dec = (np.concatenate([np.ravel(v) for v in meta[name]]).astype(float) for name in ("RA_PNT", "DEC_PNT"))
    if "LIVETIME" in columns:
        per_run = u.Quantity(np.concatenate([np.ravel(v) for v in meta["LIVETIME"]]), meta["LIVETIME"].unit or "s")
    else:
        per_run = np.full(ra.size, 1.0 / ra.size) * u.Quantity(total)
    pointings = SkyCoord(ra, dec, unit="deg", frame="icrs")
    within = positions[:, None].separation(pointings[None, :]) < offset_max
    return (within * per_run.to_value("h")[None, :]).sum(axis=1), within.sum(axis=1)


# ------------------------------------------------------------------ honest errors


def covariance_check(datasets, parameters=None, n_sigma=1, bound_margin=1.0, asymmetry=0.2):
    """Free parameters whose covariance error is not to be trusted, and why.

    Criteria (in this order; the first that applies is the reason):

    - ``covariance``: the error is not finite and positive, or the covariance
      matrix of the free parameters is not positive definite;
    - ``bound``: the parameter is within ``bound_margin * n_sigma`` errors of its
      ``min`` or ``max``;
    - ``asymmetric``: the fit statistic at ``value +- n_sigma * error`` (the other
      parameters fixed; two likelihood calls) rises by ``d+`` and ``d-`` with
      ``|d+ - d-| / (d+ + d-) > asymmetry`` (a parabolic profile gives 0,
      whatever the correlations).

    Parameters
    ----------
    datasets : `~gammapy.datasets.Datasets` or list of datasets
        Datasets with their fitted models (covariance set by the fit).
    parameters : list of `~gammapy.modeling.Parameter`, optional
        Parameters to check; default all free parameters.
    n_sigma, bound_margin, asymmetry : float, optional
        See above. Defaults 1, 1 and 0.2.

    Returns
    -------
    table : `~astropy.table.Table`
        ``model``, ``parameter``, ``value``, ``error``, ``reason`` ("" when the
        covariance error is fine) for each checked parameter.
    """
    datasets = fast_datasets(datasets)
    models = datasets.models
    free = models.parameters.free_parameters.unique_parameters
    parameters = list(free) if parameters is None else list(parameters)
    covariance = models.covariance.get_subcovariance(free)
    try:
        positive = bool(np.all(np.isfinite(covariance))) and np.linalg.cholesky(covariance) is not None
    except np.linalg.LinAlgError:
        positive = False
    stat = datasets.stat_sum()
    rows = [
        (*_owned(models, par), par.value, par.error, _reason(datasets, stat, par, positive, n_sigma, bound_margin,
                                                             asymmetry))
        for par in parameters
    ]
    return _table(rows, ["model", "parameter", "value", "error", "reason"], [str, str, float, float, str])


def _owned(models, par):
    """(model name, parameter name) of a parameter."""
    for model in models:
        if any(p is par for p in model.parameters):
            return model.name, par.name
    return "", par.name


def _table(rows, names, dtype):
    return Table(rows=rows, names=names, dtype=dtype) if rows else Table(names=names, dtype=dtype)


def _reason(datasets, stat, par, positive, n_sigma, bound_margin, asymmetry):
    """Why the covariance error of a parameter is poor ("" when it is not); see `covariance_check`."""
    error = par.error
    if not (positive and np.isfinite(error) and error > 0):
        return "covariance"
    reach = bound_margin * n_sigma * error
    if par.value - par.min < reach or par.max - par.value < reach:  # False for NaN bounds
        return "bound"
    start, rises = par.value, []
    for direction in (1, -1):
        par.value = start + direction * n_sigma * error
        rises.append(datasets.stat_sum() - stat)
    par.value = start
    return "asymmetric" if abs(rises[0] - rises[1]) > asymmetry * abs(rises[0] + rises[1]) else ""


def profile_errors(datasets, parameters, n_sigma=1, fit=None):
    """Profile-likelihood (MINOS) errors of fitted parameters, the other free parameters refitted.

    gammapy's ``Fit.confidence`` (minuit's MINOS by default) on the fast
    datasets of `gpsfast.fit.fast_datasets` (the same statistic, compiled).

    Parameters
    ----------
    datasets : `~gammapy.datasets.Datasets` or list of datasets
        Datasets with their fitted models.
    parameters : list of `~gammapy.modeling.Parameter`
        Parameters to profile (free parameters of the models).
    n_sigma : float, optional
        Confidence level: where the profile rises by ``n_sigma**2``. Default 1.
    fit : `~gammapy.modeling.Fit`, optional
        Default ``Fit()`` (minuit).

    Returns
    -------
    table : `~astropy.table.Table`
        ``model``, ``parameter``, ``value``, ``error`` (covariance), ``errn``,
        ``errp`` (positive numbers, NaN where MINOS failed), ``success``.
    """
    datasets = fast_datasets(datasets)
    models = datasets.models
    fit = Fit() if fit is None else fit
    rows = []
    for par in parameters:
        owner = _owned(models, par)
        if par.frozen:
            raise InputError(f"profile_errors: parameter {owner[1]!r} of {owner[0]!r} is frozen")
        result = fit.confidence(datasets=datasets, parameter=par, sigma=n_sigma)
        success = bool(result.get("success", result.get("success_errp", False)))
        rows.append((*owner, par.value, par.error, float(result["errn"]), float(result["errp"]), success))
    return _table(rows, ["model", "parameter", "value", "error", "errn", "errp", "success"],
                  [str, str, float, float, float, float, bool])


def robust_errors(datasets, parameters=None, n_sigma=1, fit=None, **criteria):
    """Covariance errors where they hold, profile-likelihood errors where `covariance_check` says they do not.

    Parameters
    ----------
    datasets : `~gammapy.datasets.Datasets` or list of datasets
        Datasets with their fitted models.
    parameters : list of `~gammapy.modeling.Parameter`, optional
        Default all free parameters.
    n_sigma : float, optional
        Confidence level. Default 1.
    fit : `~gammapy.modeling.Fit`, optional
        Fit of the profiles (default minuit).
    **criteria
        ``bound_margin``, ``asymmetry`` of `covariance_check`.

    Returns
    -------
    table : `~astropy.table.Table`
        The columns of `covariance_check` plus ``errn``, ``errp`` (the covariance
        error on both sides where it holds) and ``method`` ("covariance" or
        "profile").
    """
    datasets = fast_datasets(datasets)
    if parameters is None:
        parameters = list(datasets.models.parameters.free_parameters.unique_parameters)
    checked = list(parameters)
    table = covariance_check(datasets, checked, n_sigma=n_sigma, **criteria)
    table["errn"] = n_sigma * table["error"]
    table["errp"] = n_sigma * table["error"]
    table["method"] = np.array(["covariance"] * len(table), dtype="U10")
    poor = [k for k, reason in enumerate(table["reason"]) if reason]
    if poor:
        profiled = profile_errors(datasets, [checked[k] for k in poor], n_sigma=n_sigma, fit=fit)
        for k, row in zip(poor, profiled):
            table["errn"][k], table["errp"][k], table["method"][k] = row["errn"], row["errp"], "profile"
    return table
