"""The survey's background sequence: background fit -> source pass -> exclusion from the residuals -> refit."""
import logging
from dataclasses import dataclass, field

from astropy.table import Table, vstack
from gammapy.modeling.models import SkyModel

from ..detect import significance_maps
from ..errors import InputError
from .common import as_datasets
from .diffuse import estimate_diffuse
from .exclusion import exclusion_mask
from .fov import background_models, fit_background

__all__ = ["BackgroundIteration", "iterate_background"]

log = logging.getLogger(__name__)


@dataclass
class BackgroundIteration:
    """What `iterate_background` did, pass by pass.

    Attributes
    ----------
    masks : list of `~gammapy.maps.WcsNDMap`
        Exclusion mask of each background fit (the first from the raw
        significance, then from the residual significance).
    tables : list of `~astropy.table.Table`
        `fit_background` table of each pass (with a ``pass`` column).
    diffuse : `~gammapy.modeling.models.SkyModel` or None
        The diffuse model fitted with the backgrounds.
    """

    masks: list = field(default_factory=list)
    tables: list = field(default_factory=list)
    diffuse: object = None

    @property
    def table(self):
        """All passes in one table."""
        return vstack(self.tables) if self.tables else Table()


def iterate_background(datasets, models, fit_sources=None, significance=None, iterations=1, low=3.0, high=5.0,
                       radius="0.1 deg", radii=(0.1, 0.2), diffuse=None, smoothing="0.5 deg", tilt=True, fast=True):
    """Background fit, source pass, new exclusion mask from the residuals, background refit.

    1. Exclusion mask (`exclusion_mask`) from ``significance`` (default: the raw
       significance maps of `gpsfast.detect.significance_maps` at ``radii``,
       background only); `fit_background` of every dataset (and of the diffuse
       normalisation with ``diffuse``: a model, or ``"estimate"`` for
       `gpsfast.background.estimate_diffuse` after this first fit, added to ``models``).
    2. ``iterations`` times: ``fit_sources(datasets, models)`` (the source pass,
       e.g. `gpsfast.groups.fit_groups` with the pipeline's fit function); an
       exclusion mask from the residual significance maps (the datasets with all
       ``models``: what the sources do not explain); `fit_background` again.
       Pixels of modelled sources now take part in the background fit (their
       npred is held fixed), unless their residuals are significant.

    Parameters
    ----------
    datasets : `~gammapy.datasets.Datasets`
        Full datasets; ``datasets.models`` is set to ``models``.
    models : `~gammapy.modeling.models.Models`
        All models; updated in place (fitted values, added background and
        diffuse models).
    fit_sources : callable, optional
        ``fit_sources(datasets, models)``; required when ``iterations`` > 0.
    significance : maps, optional
        First significance maps (any `exclusion_mask` input), e.g. the ones the
        detection step made.
    iterations : int, optional
        Source passes followed by a background refit. Default 1.
    low, high : float, optional
        Hysteresis thresholds (sigma). Default 3 and 5.
    radius : `~astropy.units.Quantity` or str, optional
        Dilation of the exclusion regions. Default 0.1 deg.
    radii : sequence of float, optional
        Correlation radii (deg) of the significance maps. Default (0.1, 0.2).
    diffuse : `~gammapy.modeling.models.SkyModel` or "estimate", optional
        Diffuse model fitted with the backgrounds. Default: none.
    smoothing : `~astropy.units.Quantity` or str, optional
        Smoothing width of `gpsfast.background.estimate_diffuse`. Default 0.5 deg.
    tilt : bool, optional
        Fit the background tilts. Default True.
    fast : bool, optional
        Fit on `gpsfast.fit.fast_datasets`. Default True.

    Returns
    -------
    result : `BackgroundIteration`
    """

    datasets = as_datasets(datasets, "iterate_background")
    if iterations and fit_sources is None:
        raise InputError("iterate_background: fit_sources is needed for iterations > 0")
    background_models(datasets, models)
    datasets.models = models
    geom = datasets[0].geoms["geom"].to_image()
    if significance is None:
        significance = significance_maps(datasets, radii=radii, background_only=True)
    result = BackgroundIteration()
    mask = exclusion_mask(significance, geom=geom, low=low, high=high, radius=radius)
    if isinstance(diffuse, SkyModel) and diffuse.name not in models.names:
        models.append(diffuse)
    free = [diffuse] if isinstance(diffuse, SkyModel) else None
    table = fit_background(datasets, models, mask, tilt=tilt, free=free, fast=fast)
    if isinstance(diffuse, str):
        if diffuse != "estimate":
            raise InputError(f"iterate_background: diffuse must be a sky model or 'estimate', got {diffuse!r}")
        datasets.models = models
        diffuse, mask = estimate_diffuse(datasets, mask, smoothing=smoothing, tilt=tilt, low=low, high=high,
                                         radius=radius, radii=radii)
        models.append(diffuse)
        free = [diffuse]
        table = fit_background(datasets, models, mask, tilt=tilt, free=free, fast=fast)
    result.diffuse = diffuse
    _record(result, mask, table, 0)
    for step in range(1, int(iterations) + 1):
        datasets.models = models
        fit_sources(datasets, models)
        datasets.models = models
        residual = significance_maps(datasets, radii=radii, background_only=False)
        mask = exclusion_mask(residual, geom=geom, low=low, high=high, radius=radius)
        _record(result, mask, fit_background(datasets, models, mask, tilt=tilt, free=free, fast=fast), step)
    datasets.models = models
    return result


def _record(result, mask, table, step):
    table["pass"] = step
    result.masks.append(mask)
    result.tables.append(table)
