"""The embedded default data: a simulated patch of the CTA Galactic Plane Survey.

`make_survey` builds the SubTeV and PosTeV datasets of a survey patch (CTA-like
or user-given IRFs, a pointing pattern along the plane, stacked exposure) and
fills them with counts from a synthetic Galactic source population plus a
large-scale diffuse component (``MapDataset.fake``). `write_survey` and
`read_survey` store it as gammapy FITS datasets and gammapy YAML models, so that
every later stage can be checked against the truth.
"""
import logging
from pathlib import Path

import astropy.units as u
import numpy as np
import yaml
from astropy.coordinates import SkyCoord
from astropy.table import Table
from gammapy.datasets import Datasets, MapDataset
from gammapy.maps import Map, WcsGeom
from gammapy.utils.scripts import to_yaml, write_yaml
from gammapy.modeling.models import (
    ExpCutoffPowerLawSpectralModel,
    FoVBackgroundModel,
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

from ._version import __version__
from .errors import InputError
from .irf import fast_irfs, load_irfs, make_cta_like_irfs
from .survey import PRESETS, check_patch_size, get_preset, make_pointings, make_survey_datasets
from .utils import atomic_dir

__all__ = [
    "CRAB_FLUX_ABOVE_1TEV",
    "DEFAULT_CENTER",
    "make_population",
    "make_diffuse_model",
    "make_survey",
    "sources_table",
    "write_survey",
    "read_survey",
]

log = logging.getLogger(__name__)

CRAB_FLUX_ABOVE_1TEV = 2.26e-11 * u.Unit("cm-2 s-1")
DEFAULT_CENTER = SkyCoord(0, 0, unit="deg", frame="galactic")
DIFFUSE_NAME = "diffuse-large-scale"
DIFFUSE_FILENAME = "true_diffuse.fits"

SPATIAL_FRACTIONS = {"point": 0.3, "gauss": 0.3, "gen_gauss": 0.25, "shell": 0.15}
SPECTRAL_FRACTIONS = {"pl": 0.5, "ecpl": 0.25, "lp": 0.25}

ENERGY_RANGES = {"subtev": (0.05 * u.TeV, 1 * u.TeV), "postev": (1 * u.TeV, 100 * u.TeV)}


def _truncated_power_law(rng, n, low, high, alpha):
    """Draw fluxes with N(>S) ~ S^-alpha between ``low`` and ``high``."""
    u_ = rng.uniform(size=n)
    a, b = low**-alpha, high**-alpha
    return (a - u_ * (a - b)) ** (-1 / alpha)


def _latitudes(rng, n, b_min, b_max, scale):
    """Latitudes concentrated towards b = 0 (Gaussian profile), inside [b_min, b_max]."""
    lats = np.empty(0)
    while lats.size < n:
        draw = rng.normal(0, scale, size=4 * n + 16)
        lats = np.concatenate([lats, draw[(draw > b_min) & (draw < b_max)]])
        if b_min > 3 * scale or b_max < -3 * scale:
            lats = np.concatenate([lats, rng.uniform(b_min, b_max, size=n)])
    return lats[:n]


def _spatial_model(kind, rng, lon, lat):
    position = dict(lon_0=lon * u.deg, lat_0=lat * u.deg, frame="galactic")
    if kind == "point":
        return PointSpatialModel(**position)
    if kind == "gauss":
        return GaussianSpatialModel(sigma=np.exp(rng.uniform(np.log(0.05), np.log(0.4))) * u.deg, **position)
    if kind == "gen_gauss":
        return GeneralizedGaussianSpatialModel(
            r_0=np.exp(rng.uniform(np.log(0.05), np.log(0.4))) * u.deg,
            eta=rng.uniform(0.2, 0.8),
            e=rng.uniform(0, 0.6),
            phi=rng.uniform(0, 180) * u.deg,
            **position,
        )
    outer = rng.uniform(0.2, 0.6)
    width = outer * rng.uniform(0.15, 0.3)
    return ShellSpatialModel(radius=(outer - width) * u.deg, width=width * u.deg, **position)


def _spectral_model(kind, rng):
    if kind == "pl":
        return PowerLawSpectralModel(index=np.clip(rng.normal(2.4, 0.3), 1.8, 3.2))
    if kind == "ecpl":
        return ExpCutoffPowerLawSpectralModel(
            index=np.clip(rng.normal(2.0, 0.3), 1.5, 2.8),
            lambda_=1 / np.exp(rng.uniform(np.log(3), np.log(50))) / u.TeV,
        )
    return LogParabolaSpectralModel(alpha=np.clip(rng.normal(2.3, 0.3), 1.6, 3.0), beta=rng.uniform(0.05, 0.3))


def _set_flux_above_1tev(spectral, flux):
    """Scale the amplitude so that the integral flux above 1 TeV is ``flux``."""
    current = spectral.integral(1 * u.TeV, 1e3 * u.TeV)
    spectral.amplitude.quantity = spectral.amplitude.quantity * (flux / current).to_value("")


def make_population(
    center=DEFAULT_CENTER,
    width=10 * u.deg,
    height=6 * u.deg,
    density=0.5 / u.deg**2,
    flux_min=0.01,
    flux_max=1.0,
    logn_logs_slope=1.0,
    latitude_scale=0.5 * u.deg,
    seed=0,
):
    """Synthetic Galactic source population in a survey patch.

    Point, Gaussian, shell and GeneralizedGaussian sources with power-law,
    exponential-cutoff power-law and log-parabola spectra. Fluxes above 1 TeV
    follow N(>S) ~ S^-slope between ``flux_min`` and ``flux_max`` (Crab units);
    latitudes follow a Gaussian of width ``latitude_scale`` around b = 0;
    longitudes are uniform. Sources lie at least 0.2 deg inside the patch.

    Parameters
    ----------
    center : `~astropy.coordinates.SkyCoord`
        Centre of the patch.
    width, height : `~astropy.coordinates.Angle`
        Size of the patch.
    density : `~astropy.units.Quantity`
        Mean number of sources above ``flux_min`` per solid angle; the number
        drawn is Poisson distributed.
    flux_min, flux_max : float
        Flux range above 1 TeV in Crab units (2.26e-11 cm-2 s-1).
    logn_logs_slope : float
        Slope of the cumulative logN-logS.
    latitude_scale : `~astropy.coordinates.Angle`
        Width of the latitude distribution.
    seed : int
        Random seed: the same seed gives the same population.

    Returns
    -------
    models : `~gammapy.modeling.models.Models`
        One `SkyModel` per source, named ``SIM-001``, ``SIM-002``, ...
    """
    width, height = check_patch_size(width, height)
    if not 0 < flux_min < flux_max:
        raise InputError(f"Need 0 < flux_min < flux_max, got flux_min={flux_min}, flux_max={flux_max}")
    rng = np.random.default_rng(seed)
    center = center.galactic
    area = (width * height).to("deg2")
    n_sources = rng.poisson((u.Quantity(density, "deg-2") * area).to_value(""))
    margin = min(0.2, width.to_value("deg") / 4, height.to_value("deg") / 4)
    half_w, half_h = width.to_value("deg") / 2 - margin, height.to_value("deg") / 2 - margin
    lons = center.l.wrap_at("180d").deg + rng.uniform(-half_w, half_w, size=n_sources)
    b_min, b_max = center.b.deg - half_h, center.b.deg + half_h
    lats = _latitudes(rng, n_sources, b_min, b_max, u.Quantity(latitude_scale, "deg").to_value("deg"))
    fluxes = _truncated_power_law(rng, n_sources, flux_min, flux_max, logn_logs_slope)
    spatial_kinds = rng.choice(list(SPATIAL_FRACTIONS), p=list(SPATIAL_FRACTIONS.values()), size=n_sources)
    spectral_kinds = rng.choice(list(SPECTRAL_FRACTIONS), p=list(SPECTRAL_FRACTIONS.values()), size=n_sources)
    models = []
    for idx in range(n_sources):
        spatial = _spatial_model(spatial_kinds[idx], rng, lons[idx] % 360, lats[idx])
        spectral = _spectral_model(spectral_kinds[idx], rng)
        _set_flux_above_1tev(spectral, fluxes[idx] * CRAB_FLUX_ABOVE_1TEV)
        models.append(SkyModel(spatial_model=spatial, spectral_model=spectral, name=f"SIM-{idx + 1:03d}"))
    log.info("Simulated population: %d sources in %.1f deg2", n_sources, area.value)
    return Models(models)


def make_diffuse_model(
    center=DEFAULT_CENTER,
    width=10 * u.deg,
    height=6 * u.deg,
    intensity=0.005,
    latitude_scale=0.7 * u.deg,
    index=2.6,
    binsz=0.05,
):
    """Large-scale diffuse emission of the Galactic plane.

    A template Gaussian in latitude with a gentle modulation in longitude,
    covering the patch and one degree beyond, with a power-law spectrum.

    Parameters
    ----------
    center : `~astropy.coordinates.SkyCoord`
        Centre of the patch.
    width, height : `~astropy.coordinates.Angle`
        Size of the patch.
    intensity : float
        Flux above 1 TeV per square degree on the plane (b = 0), in Crab units.
    latitude_scale : `~astropy.coordinates.Angle`
        Gaussian width of the latitude profile.
    index : float
        Spectral index.
    binsz : float
        Pixel size of the template in degrees.

    Returns
    -------
    model : `~gammapy.modeling.models.SkyModel`
        Named ``diffuse-large-scale``.
    """
    width, height = check_patch_size(width, height)
    geom = WcsGeom.create(
        skydir=center.galactic,
        width=(width.to_value("deg") + 2, height.to_value("deg") + 2),
        binsz=binsz,
        frame="galactic",
    )
    coords = geom.get_coord()
    lon = coords.skycoord.l.wrap_at("180d").deg
    lat = coords.skycoord.b.deg
    profile = np.exp(-0.5 * (lat / u.Quantity(latitude_scale, "deg").to_value("deg")) ** 2)
    profile *= 1 + 0.3 * np.sin(2 * np.pi * lon / 7.0)
    solid_angle = geom.solid_angle().to_value("deg2")
    total = intensity * np.sum(profile * solid_angle)
    template = Map.from_geom(geom, data=profile / geom.solid_angle().to_value("sr"), unit="sr-1")
    spatial = TemplateSpatialModel(template, normalize=True, filename=DIFFUSE_FILENAME)
    spectral = PowerLawSpectralModel(index=index)
    _set_flux_above_1tev(spectral, total * CRAB_FLUX_ABOVE_1TEV)
    return SkyModel(spatial_model=spatial, spectral_model=spectral, name=DIFFUSE_NAME)


def _presets(presets):
    if isinstance(presets, str):
        presets = list(PRESETS) if presets == "both" else [presets]
    presets = [get_preset(p) for p in presets]
    if not presets:
        raise InputError("No dataset preset given; choose subtev, postev or both")
    return presets


def _irfs(irf):
    if irf is None:
        return make_cta_like_irfs()
    if isinstance(irf, dict):
        return irf
    return load_irfs(irf)


def make_survey(
    width=10 * u.deg,
    height=6 * u.deg,
    center=DEFAULT_CENTER,
    presets="both",
    seed=0,
    irf=None,
    livetime=1 * u.h,
    spacing=1.5 * u.deg,
    density=0.5 / u.deg**2,
    progress=False,
):
    """Simulate a patch of the Galactic Plane Survey.

    Parameters
    ----------
    width, height : `~astropy.coordinates.Angle` or float
        Size of the patch in Galactic longitude and latitude (deg if float).
    center : `~astropy.coordinates.SkyCoord`
        Centre of the patch (default l = 0, b = 0).
    presets : str or list
        ``"subtev"``, ``"postev"``, ``"both"`` or a list of presets.
    seed : int
        Random seed of the population and of the counts.
    irf : str, `~pathlib.Path` or dict, optional
        IRF FITS file or IRF dictionary; the analytic CTA-like IRFs by default.
    livetime : `~astropy.units.Quantity`
        Livetime of each pointing.
    spacing : `~astropy.coordinates.Angle`
        Distance between pointings.
    density : `~astropy.units.Quantity`
        Source density above 1% Crab.
    progress : bool
        Show progress bars.

    Returns
    -------
    datasets : `~gammapy.datasets.Datasets`
        One `MapDataset` per preset, named after it, with simulated counts and
        the true models set.
    models : `~gammapy.modeling.models.Models`
        The true sky models (sources, diffuse) and one `FoVBackgroundModel` per dataset.
    """
    width, height = check_patch_size(width, height)
    presets = _presets(presets)
    irfs = _irfs(irf)
    center = center.galactic
    sky_models = make_population(center, width, height, density=density, seed=seed)
    sky_models.append(make_diffuse_model(center, width, height))
    rng = np.random.default_rng([seed, 1])
    datasets, backgrounds = Datasets(), []
    for preset in presets:
        pointings = make_pointings(center, width, height, preset.offset_max, spacing=spacing, livetime=livetime)
        dataset = make_survey_datasets(irfs, pointings, preset, center, width, height, progress=progress)
        background = FoVBackgroundModel(dataset_name=dataset.name)
        dataset.models = Models([*sky_models, background])
        with fast_irfs(dataset):
            dataset.fake(random_state=int(rng.integers(2**31 - 1)))
        datasets.append(dataset)
        backgrounds.append(background)
    models = Models([*sky_models, *backgrounds])
    for dataset in datasets:
        dataset.models = models
    return datasets, models


def sources_table(models):
    """Truth table of simulated sources.

    Parameters
    ----------
    models : `~gammapy.modeling.models.Models`
        Sky models (background and template models are skipped).

    Returns
    -------
    table : `~astropy.table.Table`
        Columns name, spatial_type, spectral_type, glon, glat (deg), size (deg:
        sigma, r_0, outer shell radius or 0), flux_subtev (0.05-1 TeV) and
        flux_postev (1-100 TeV) in cm-2 s-1.
    """
    rows = []
    for model in models:
        if not isinstance(model, SkyModel) or isinstance(model.spatial_model, TemplateSpatialModel):
            continue
        spatial = model.spatial_model
        position = spatial.position.galactic
        rows.append(
            {
                "name": model.name,
                "spatial_type": spatial.tag[0],
                "spectral_type": model.spectral_model.tag[0],
                "glon": position.l.wrap_at("180d").deg,
                "glat": position.b.deg,
                "size": _size(spatial),
                "flux_subtev": model.spectral_model.integral(*ENERGY_RANGES["subtev"]).to_value("cm-2 s-1"),
                "flux_postev": model.spectral_model.integral(*ENERGY_RANGES["postev"]).to_value("cm-2 s-1"),
            }
        )
    names = ["name", "spatial_type", "spectral_type", "glon", "glat", "size", "flux_subtev", "flux_postev"]
    table = Table(rows=rows, names=names) if rows else Table(names=names, dtype=["U32"] * 3 + ["f8"] * 5)
    for name in ("glon", "glat", "size"):
        table[name].unit = "deg"
    for name in ("flux_subtev", "flux_postev"):
        table[name].unit = "cm-2 s-1"
    return table


def _size(spatial):
    if isinstance(spatial, GaussianSpatialModel):
        return spatial.sigma.quantity.to_value("deg")
    if isinstance(spatial, GeneralizedGaussianSpatialModel):
        return spatial.r_0.quantity.to_value("deg")
    if isinstance(spatial, ShellSpatialModel):
        return (spatial.radius.quantity + spatial.width.quantity).to_value("deg")
    return 0.0


def _write_true_models(folder, models):
    """Write models as YAML with the diffuse template beside it, referenced by a relative name.

    gammapy's `Models.write` writes templates to their ``filename`` relative to the
    working directory; the components are serialised one by one instead.
    """
    components = []
    for model in models:
        data = model.to_dict()
        if isinstance(getattr(model, "spatial_model", None), TemplateSpatialModel):
            model.spatial_model.map.write(folder / DIFFUSE_FILENAME, overwrite=True)
            data["spatial"]["filename"] = DIFFUSE_FILENAME
        components.append(data)
    write_yaml(to_yaml({"components": components}), folder / "true_models.yaml", overwrite=True)


def write_survey(path, datasets, models, meta=None, overwrite=False):
    """Write a simulated survey: datasets (gammapy FITS) and true models (gammapy YAML).

    The folder is written atomically: on error, nothing is left half-written and
    an existing folder is kept.

    Parameters
    ----------
    path : str or `~pathlib.Path`
        Output folder. It holds ``<dataset name>.fits`` for each dataset,
        ``true_models.yaml`` (plus the diffuse template ``true_diffuse.fits``,
        referenced relative to the folder),
        ``true_sources.ecsv`` and ``survey.yaml`` (settings and versions).
    datasets : `~gammapy.datasets.Datasets`
        Simulated datasets.
    models : `~gammapy.modeling.models.Models`
        True models.
    meta : dict, optional
        Settings stored in ``survey.yaml``.
    overwrite : bool
        Replace an existing, non-empty folder.

    Returns
    -------
    path : `~pathlib.Path`
        The output folder.
    """
    path = Path(path).expanduser().absolute()
    with atomic_dir(path, overwrite=overwrite) as tmp:
        for dataset in datasets:
            dataset.write(tmp / f"{dataset.name}.fits")
        _write_true_models(tmp, models)
        sources_table(models).write(tmp / "true_sources.ecsv")
        info = {**(meta or {}), "gpsfast_version": __version__, "datasets": [d.name for d in datasets]}
        (tmp / "survey.yaml").write_text(yaml.safe_dump(info, sort_keys=False))
    return path


def read_survey(path):
    """Read a survey written by `write_survey`.

    Parameters
    ----------
    path : str or `~pathlib.Path`
        Folder written by `write_survey` or ``gpsfast simulate``.

    Returns
    -------
    datasets : `~gammapy.datasets.Datasets`
        The datasets, with the true models set.
    models : `~gammapy.modeling.models.Models`
        The true models.
    """
    path = Path(path).expanduser()
    info_file = path / "survey.yaml"
    if not info_file.is_file():
        raise InputError(f"Not a gpsfast survey folder (no survey.yaml): {path}")
    info = yaml.safe_load(info_file.read_text())
    models = Models.read(path / "true_models.yaml")
    datasets = Datasets()
    for name in info["datasets"]:
        dataset = MapDataset.read(path / f"{name}.fits", name=name)
        dataset.models = models
        datasets.append(dataset)
    return datasets, models
