"""Background of survey fits: exclusion masks, FoV background normalisation and tilt, the iteration.

- `exclusion_mask`: the regions of significant emission, found by hysteresis
  thresholding of significance maps (scikit-image's
  ``apply_hysteresis_threshold``), combined over the datasets' maps and
  optionally dilated, as a gammapy exclusion mask (True where the background can
  be fitted);
- `fit_background`: the FoV background normalisation and tilt of every dataset
  (`~gammapy.modeling.models.FoVBackgroundModel`) fitted outside the exclusion
  mask, the sources' predicted counts held fixed (cached once as one npred
  template per dataset), on `gpsfast.fit.fast_datasets`;
- the large-scale diffuse component is in `gpsfast.diffuse` (`diffuse_from_file`,
  `estimate_diffuse`): `fit_background` fits its normalisation with ``free=``;
- `iterate_background`: the survey sequence, first background fit -> source pass
  -> exclusion mask from the residual significance -> background (and diffuse
  normalisation) refitted.
"""
import logging
from dataclasses import dataclass, field

import astropy.units as u
import numpy as np
from astropy.table import Table
from gammapy.datasets import Datasets, MapDataset
from gammapy.estimators import FluxMaps
from gammapy.maps import Map, WcsGeom
from gammapy.modeling import Fit
from gammapy.modeling.models import FoVBackgroundModel, Models, SkyModel, TemplateNPredModel
from scipy.ndimage import binary_dilation
from skimage.filters import apply_hysteresis_threshold

from .errors import InputError
from .fit import fast_datasets, frozen, npred_signal

__all__ = ["BackgroundIteration", "background_models", "exclusion_mask", "fit_background", "iterate_background"]

log = logging.getLogger(__name__)


# ------------------------------------------------------------------ exclusion mask


def _significance_images(significance):
    """``[(label, WcsNDMap image)]`` from maps, FluxMaps, dicts or lists of them."""
    if isinstance(significance, (Map, FluxMaps)):
        items = [("map", significance)]
    elif isinstance(significance, dict):
        items = list(significance.items())
    elif isinstance(significance, (list, tuple)):
        items = [(f"map {k}", item) for k, item in enumerate(significance)]
    else:
        raise InputError(f"exclusion_mask: expected significance maps (Map, FluxMaps, dict or list), "
                         f"got {type(significance).__name__}")
    if not items:
        raise InputError("exclusion_mask: no significance map given")
    images = []
    for label, item in items:
        if isinstance(item, FluxMaps):
            if "sqrt_ts" not in item.available_quantities:
                raise InputError(f"exclusion_mask: {label} has no sqrt_ts map")
            item = item["sqrt_ts"]
        if not isinstance(item, Map) or not isinstance(item.geom, WcsGeom):
            raise InputError(f"exclusion_mask: {label} is not a WCS map ({type(item).__name__})")
        data = np.where(np.isfinite(item.data), item.data, -np.inf)
        if not item.geom.is_image:
            data = data.reshape((-1,) + item.geom.data_shape[-2:]).max(axis=0)
        images.append((label, Map.from_geom(item.geom.to_image(), data=data)))
    return images


def _mask_on_geom(mask, geom, factor=None):
    """A boolean image (True: excluded) on another image geometry; a pixel is excluded if any part of it is."""
    if mask.geom == geom:
        return mask.data.copy()
    if factor is None:
        ratio = np.max(geom.pixel_scales.deg) / np.min(mask.geom.pixel_scales.deg)
        factor = int(np.clip(np.ceil(2 * ratio), 1, 32))
    fine = geom.upsample(factor)
    values = mask.get_by_coord(fine.get_coord(), fill_value=0)
    ny, nx = geom.data_shape
    return np.asarray(values, dtype=bool).reshape(ny, factor, nx, factor).any(axis=(1, 3))


def _disk(radius, geom):
    """Disk structuring element of ``radius`` (pixel centres within it) on ``geom``'s pixels."""
    scale = geom.pixel_scales.deg
    ry, rx = (u.Quantity(radius, "deg").to_value("deg") / scale[::-1]).tolist()
    ny, nx = int(np.floor(ry)), int(np.floor(rx))
    y, x = np.ogrid[-ny: ny + 1, -nx: nx + 1]
    return (y / max(ry, 1e-12)) ** 2 + (x / max(rx, 1e-12)) ** 2 <= 1


def exclusion_mask(significance, geom=None, low=3.0, high=5.0, radius=None):
    """Exclusion mask of the significant emission, by hysteresis thresholding.

    On every significance image, the pixels above ``high`` and the pixels above
    ``low`` connected to them (8-connectivity) are significant
    (``skimage.filters.apply_hysteresis_threshold``); maps with an energy axis
    use the largest significance over it; NaN pixels are not significant. The
    significant regions of all maps are combined (a pixel of ``geom`` is
    excluded when any part of it is significant in any map), then dilated by
    ``radius``.

    Parameters
    ----------
    significance : `~gammapy.maps.Map`, `~gammapy.estimators.FluxMaps`, dict or list of them
        Significance maps, e.g. the output of `gpsfast.detect.significance_maps`
        (FluxMaps: their ``sqrt_ts``), raw or residual.
    geom : `~gammapy.maps.WcsGeom`, optional
        Geometry of the mask (a dataset's; reduced to its image). Default: the
        first map's.
    low, high : float, optional
        Hysteresis thresholds in sigma. Default 3 and 5.
    radius : `~astropy.units.Quantity` or str, optional
        Dilation radius of the excluded regions. Default: no dilation.

    Returns
    -------
    mask : `~gammapy.maps.WcsNDMap`
        Boolean image, gammapy's convention for exclusion masks: True where the
        background can be fitted, False in the excluded regions.
    """
    if not low <= high:
        raise InputError(f"exclusion_mask: need low <= high, got low={low}, high={high}")
    images = _significance_images(significance)
    geom = images[0][1].geom if geom is None else geom.to_image()
    excluded = np.zeros(geom.data_shape, dtype=bool)
    for _, image in images:
        significant = apply_hysteresis_threshold(image.data, low, high)
        excluded |= _mask_on_geom(Map.from_geom(image.geom, data=significant), geom)
    if radius is not None and u.Quantity(radius, "deg").value > 0:
        excluded = binary_dilation(excluded, structure=_disk(radius, geom))
    log.info("exclusion mask: %.1f%% of %d pixels excluded (low %g, high %g)", 100 * excluded.mean(),
             excluded.size, low, high)
    return Map.from_geom(geom, data=~excluded)


# ------------------------------------------------------------------ background fit


def _as_datasets(datasets, caller):
    if isinstance(datasets, MapDataset):
        datasets = [datasets]
    bad = [getattr(d, "name", type(d).__name__) for d in datasets if not isinstance(d, MapDataset)]
    if bad:
        raise InputError(f"{caller}: every dataset must be a MapDataset, not {bad}")
    return Datasets(datasets)


def background_models(datasets, models):
    """The `~gammapy.modeling.models.FoVBackgroundModel` of every dataset, added to ``models`` where missing.

    Parameters
    ----------
    datasets : `~gammapy.datasets.Datasets`
    models : `~gammapy.modeling.models.Models`
        Updated in place: a dataset without a background model gets
        ``FoVBackgroundModel(dataset_name=<name>)`` (norm 1, tilt 0).

    Returns
    -------
    backgrounds : dict
        ``{dataset name: FoVBackgroundModel}``.
    """
    found = {}
    for model in models:
        if isinstance(model, FoVBackgroundModel):
            for name in model.datasets_names or []:
                found.setdefault(name, model)
    for dataset in datasets:
        if dataset.name not in found:
            model = FoVBackgroundModel(dataset_name=dataset.name)
            models.append(model)
            found[dataset.name] = model
            log.info("%s: no background model, %s added", dataset.name, model.name)
        if dataset.background is None:
            raise InputError(f"dataset {dataset.name!r} has no background map: its background cannot be fitted")
    return {d.name: found[d.name] for d in datasets}


def _shallow(dataset, models=None, mask_fit=None):
    """A MapDataset sharing ``dataset``'s maps, with its own models and fit mask."""
    return MapDataset(
        models=models, counts=dataset.counts, exposure=dataset.exposure, background=dataset.background,
        psf=dataset.psf, edisp=dataset.edisp, mask_safe=dataset.mask_safe, mask_fit=mask_fit, gti=dataset.gti,
        meta_table=dataset.meta_table, name=dataset.name, stat_type=dataset.stat_type,
    )


def _kept_image(dataset, exclusion):
    """An exclusion mask on the dataset's image geometry (nearest pixel; outside the mask: kept)."""
    image = exclusion if exclusion.geom.is_image else exclusion.reduce_over_axes(func=np.logical_and)
    geom = dataset._geom.to_image()
    if image.geom == geom:
        return np.asarray(image.data, dtype=bool)
    return np.asarray(image.get_by_coord(geom.get_coord(), fill_value=1), dtype=bool)


def _fit_mask(dataset, exclusion):
    """The dataset's fit mask combined with an exclusion mask."""
    if exclusion is None:
        return dataset.mask_fit
    data = np.broadcast_to(_kept_image(dataset, exclusion), dataset.data_shape)
    if dataset.mask_fit is not None:
        data = data & np.asarray(dataset.mask_fit.data, dtype=bool)
    return Map.from_geom(dataset._geom, data=np.array(data))


def _applies(model, name):
    names = getattr(model, "datasets_names", None)
    return names is None or name in names


def _fixed_template(dataset, models, fixed):
    """Frozen npred template of the fixed sky models on ``dataset`` (None when they add nothing)."""
    names = [m.name for m in fixed if _applies(m, dataset.name)]
    if not names:
        return None
    npred = npred_signal(_shallow(dataset, models=models), model_names=names)
    template = TemplateNPredModel(npred, name=f"{dataset.name}-fixed-npred", datasets_names=[dataset.name],
                                  copy_data=False)
    template.spectral_model.norm.frozen = True
    return template


def _free_names(background, tilt):
    names = [n for n in ("norm", "tilt") if n in background.spectral_model.parameters.names]
    return names if tilt else [n for n in names if n == "norm"]


def _background_row(dataset, background, result, fit_mask):
    pars = background.spectral_model.parameters
    row = {"dataset": dataset.name, "success": bool(result.success), "stat": float(result.total_stat)}
    for name in ("norm", "tilt"):
        row[name] = pars[name].value if name in pars.names else np.nan
        row[f"{name}_err"] = pars[name].error if name in pars.names else np.nan
    row["fit_fraction"] = float(np.mean(fit_mask.data)) if fit_mask is not None else 1.0
    return row


def fit_background(datasets, models=None, exclusion=None, tilt=True, free=None, fast=True, optimize_opts=None):
    """Fit the FoV background normalisation (and tilt) of every dataset, sources held fixed.

    For each dataset, the sky models that are not fitted (all but ``free``) are
    evaluated once (`gpsfast.fit.npred_signal`) into one frozen
    `~gammapy.modeling.models.TemplateNPredModel`; the fit then varies only the
    background's ``norm`` (and ``tilt``) and the free parameters of the ``free``
    models, on the dataset's pixels outside the exclusion mask (``mask_fit``
    combined with the dataset's own fit mask). Without ``free`` models each
    dataset is fitted alone; with them (a diffuse model seen by all datasets)
    the datasets are fitted jointly. The datasets and their masks are not
    changed; the fitted values and errors are written into the background (and
    free) models. The tilt's frozen flag is restored after the fit.

    Parameters
    ----------
    datasets : `~gammapy.datasets.Datasets` or list of `~gammapy.datasets.MapDataset`
        Full datasets.
    models : `~gammapy.modeling.models.Models`, optional
        All models. Default: ``datasets.models``. Datasets without a background
        model get one (`background_models`, added in place).
    exclusion : `~gammapy.maps.WcsNDMap`, optional
        Exclusion mask (True: fitted), e.g. from `exclusion_mask`. Default: the
        datasets' fit masks only.
    tilt : bool, optional
        Fit the tilt too (a power law in energy of the background). Default True.
    free : str, model or list of them, optional
        Sky models fitted with the backgrounds (e.g. the diffuse model: its free
        parameters stay free). Default: none.
    fast : bool, optional
        Fit on `gpsfast.fit.fast_datasets` (default) or on gammapy's datasets.
    optimize_opts : dict, optional
        Minuit options of gammapy's ``Fit``.

    Returns
    -------
    table : `~astropy.table.Table`
        One row per dataset: ``dataset``, ``norm``, ``norm_err``, ``tilt``,
        ``tilt_err``, ``success``, ``stat`` (of its fit, shared by a joint fit),
        ``fit_fraction`` (fraction of the bins fitted).
    """
    datasets = _as_datasets(datasets, "fit_background")
    if not isinstance(models, Models):
        models = Models(datasets.models if models is None else models)
    backgrounds = background_models(datasets, models)
    free = [] if free is None else ([free] if isinstance(free, (str, SkyModel)) else list(free))
    free = [models[m] if isinstance(m, str) else m for m in free]
    free_ids = {id(m) for m in free}
    fixed = [m for m in models if isinstance(m, SkyModel) and id(m) not in free_ids]
    others = [m for m in models if not isinstance(m, (SkyModel, FoVBackgroundModel))]
    prepared = []
    for dataset in datasets:
        template = _fixed_template(dataset, models, fixed)
        fit_models = [backgrounds[dataset.name], *free, *[m for m in others if _applies(m, dataset.name)]]
        mask = _fit_mask(dataset, exclusion)
        prepared.append(_shallow(dataset, models=Models([*fit_models, *([template] if template else [])]),
                                 mask_fit=mask))
    runs = [prepared] if free else [[d] for d in prepared]
    rows = []
    for run in runs:
        result = _fit_backgrounds(run, [backgrounds[d.name] for d in run], free, tilt, fast, optimize_opts)
        rows.extend(_background_row(d, backgrounds[d.name], result, d.mask_fit) for d in run)
        log.info("background fit %s: %s", [d.name for d in run],
                 ", ".join(f"norm {r['norm']:.4f}+-{r['norm_err']:.4f} tilt {r['tilt']:.4f}" for r in rows[-len(run):]))
    return Table(rows=rows)


def _fit_backgrounds(run, backgrounds, free, tilt, fast, optimize_opts):
    fit_models = Models(Datasets(run).models)
    keep = [bkg.spectral_model.parameters[n] for bkg in backgrounds for n in _free_names(bkg, tilt)]
    saved = [(par, par.frozen) for par in keep]
    try:
        for par in keep:
            par.frozen = False
        with frozen(fit_models, keep=[*keep, *free]):
            fit_datasets = fast_datasets(run) if fast else Datasets(run)
            return Fit(optimize_opts=optimize_opts or {}).run(fit_datasets)
    finally:
        for par, was_frozen in saved:
            par.frozen = was_frozen


# ------------------------------------------------------------------ iteration


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
        from astropy.table import vstack

        return vstack(self.tables) if self.tables else Table()


def iterate_background(datasets, models, fit_sources=None, significance=None, iterations=1, low=3.0, high=5.0,
                       radius="0.1 deg", radii=(0.1, 0.2), diffuse=None, smoothing="0.5 deg", tilt=True, fast=True):
    """Background fit, source pass, new exclusion mask from the residuals, background refit.

    1. Exclusion mask (`exclusion_mask`) from ``significance`` (default: the raw
       significance maps of `gpsfast.detect.significance_maps` at ``radii``,
       background only); `fit_background` of every dataset (and of the diffuse
       normalisation with ``diffuse``: a model, or ``"estimate"`` for
       `gpsfast.diffuse.estimate_diffuse` after this first fit, added to ``models``).
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
        Smoothing width of `gpsfast.diffuse.estimate_diffuse`. Default 0.5 deg.
    tilt : bool, optional
        Fit the background tilts. Default True.
    fast : bool, optional
        Fit on `gpsfast.fit.fast_datasets`. Default True.

    Returns
    -------
    result : `BackgroundIteration`
    """
    from .detect import significance_maps

    datasets = _as_datasets(datasets, "iterate_background")
    if iterations and fit_sources is None:
        raise InputError("iterate_background: fit_sources is needed for iterations > 0")
    background_models(datasets, models)
    datasets.models = models
    geom = datasets[0]._geom.to_image()
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
        from .diffuse import estimate_diffuse

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
