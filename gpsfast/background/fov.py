"""The FoV background normalisation and tilt of every dataset, fitted outside an exclusion mask.

The sources' predicted counts are held fixed (cached once as one npred template
per dataset) and only the `~gammapy.modeling.models.FoVBackgroundModel` norm and
tilt (and the free parameters of the ``free`` models, e.g. a diffuse
component's normalisation) are fitted, on `gpsfast.evaluate.fast_datasets`.
"""
import logging

import numpy as np
from astropy.table import Table
from gammapy.datasets import Datasets
from gammapy.maps import Map
from gammapy.modeling import Fit
from gammapy.modeling.models import FoVBackgroundModel, Models, SkyModel, TemplateNPredModel

from ..errors import InputError
from ..evaluate import fast_datasets, npred_signal
from ..modeling import applies_to, frozen
from .common import as_datasets, kept_image, shallow_copy

__all__ = ["background_models", "fit_background"]

log = logging.getLogger(__name__)


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


def _fit_mask(dataset, exclusion):
    """The dataset's fit mask combined with an exclusion mask."""
    if exclusion is None:
        return dataset.mask_fit
    data = np.broadcast_to(kept_image(dataset, exclusion), dataset.data_shape)
    if dataset.mask_fit is not None:
        data = data & np.asarray(dataset.mask_fit.data, dtype=bool)
    return Map.from_geom(dataset.geoms["geom"], data=np.array(data))


def _fixed_template(dataset, models, fixed):
    """Frozen npred template of the fixed sky models on ``dataset`` (None when they add nothing)."""
    names = [m.name for m in fixed if applies_to(m, dataset.name)]
    if not names:
        return None
    npred = npred_signal(shallow_copy(dataset, models=models), model_names=names)
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
    datasets = as_datasets(datasets, "fit_background")
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
        fit_models = [backgrounds[dataset.name], *free, *[m for m in others if applies_to(m, dataset.name)]]
        mask = _fit_mask(dataset, exclusion)
        prepared.append(shallow_copy(dataset, models=Models([*fit_models, *([template] if template else [])]),
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
