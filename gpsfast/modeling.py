"""Model management for survey fits: freezing, selecting and releasing parameters.

- `frozen`: context manager freezing every parameter but a chosen set, restoring
  the exact previous frozen states on exit (also when an exception is raised);
- `select_models`: the sky models whose centre is inside (or outside) a region,
  a mask map or a geometry;
- `main_source` and `release_shape`: the brightest source of a group and the
  release of its shape parameters (`SHAPE_PARAMETERS`: ``r_0``, ``eta``, ``e``,
  ``phi``);
- `cache_outer_sources`: the npred of the sources centred outside each dataset's
  fit mask, computed once and stacked into one `~gammapy.modeling.models.TemplateNPredModel`
  per dataset;
- `applies_to`: whether a model is evaluated on a dataset (its ``datasets_names``).
"""
import contextlib
import logging
from pathlib import Path

import numpy as np
import astropy.units as u
from astropy.coordinates import SkyCoord
from regions import Region
from gammapy.maps import Geom, Map, RegionGeom
from gammapy.modeling import Parameter, Parameters
from gammapy.datasets import Datasets, MapDataset
from gammapy.modeling.models import (
    DatasetModels,
    ModelBase,
    Models,
    SkyModel,
    TemplateNPredModel,
)

from gpsfast.errors import InputError
from gpsfast.irf import fast_irfs

__all__ = [
    "SHAPE_PARAMETERS",
    "applies_to",
    "cache_outer_sources",
    "frozen",
    "main_source",
    "release_shape",
    "select_models",
]

log = logging.getLogger(__name__)

SHAPE_PARAMETERS = ("r_0", "eta", "e", "phi")


def _as_model_list(models):
    """List of models from Models, DatasetModels, a list of models or one model."""
    if isinstance(models, (Models, DatasetModels)):
        return list(models)
    if isinstance(models, ModelBase):
        return [models]
    if isinstance(models, (list, tuple)) and all(isinstance(m, ModelBase) for m in models):
        return list(models)
    raise InputError(
        f"expected gammapy models (Models, a list of models or one model), got {type(models).__name__}"
    )


def _unique_parameters(parameters):
    """Parameters without duplicates (linked parameters appear once), in order."""
    seen = set()
    unique = []
    for par in parameters:
        if id(par) not in seen:
            seen.add(id(par))
            unique.append(par)
    return unique


def _model_parameters(model_list):
    return _unique_parameters(par for model in model_list for par in model.parameters)


def _kept_parameters(keep, model_list, parameters):
    """Parameters named by ``keep`` (models, model names, parameters), checked against the models."""
    if keep is None:
        return []
    if isinstance(keep, (str, Parameter, ModelBase)):
        keep = [keep]
    by_name = {model.name: model for model in model_list if hasattr(model, "name")}
    known = {id(par) for par in parameters}
    kept = []
    for item in keep:
        if isinstance(item, str):
            if item not in by_name:
                raise InputError(
                    f"frozen: no model named {item!r} among {sorted(by_name)}"
                )
            kept.extend(by_name[item].parameters)
        elif isinstance(item, Parameter):
            kept.append(item)
        elif isinstance(item, (ModelBase, Parameters)):
            kept.extend(item.parameters if isinstance(item, ModelBase) else item)
        else:
            raise InputError(
                f"frozen: keep items must be model names, models or parameters, got {type(item).__name__}"
            )
    for par in kept:
        if id(par) not in known:
            raise InputError(f"frozen: parameter {par.name!r} does not belong to the given models")
    return _unique_parameters(kept)


@contextlib.contextmanager
def frozen(models, keep=None, restore_values=False):
    """Freeze every parameter except those of ``keep``; restore the previous state on exit.

    On exit (normal or through an exception) every parameter gets back its
    previous ``frozen`` flag, and with ``restore_values`` its previous value and
    error too. Kept parameters keep their own frozen state: a frozen parameter
    of a kept model stays frozen. Linked parameters (one object in several
    models) are handled once.

    Parameters
    ----------
    models : `~gammapy.modeling.models.Models`, list of models or one model
        Models whose parameters are frozen.
    keep : str, model, `~gammapy.modeling.Parameter` or list of them, optional
        Model names, models (sky models or their spectral / spatial parts) or
        parameters left as they are. Default: freeze everything.
    restore_values : bool, optional
        Also restore values and errors on exit. Default is False (fit results
        obtained inside the block are kept).

    Yields
    ------
    free : `~gammapy.modeling.Parameters`
        The parameters still free inside the block.

    Examples
    --------
    >>> with frozen(models, keep="src-1") as free:   # doctest: +SKIP
    ...     fit.run(datasets)
    """
    model_list = _as_model_list(models)
    parameters = _model_parameters(model_list)
    kept_ids = {id(par) for par in _kept_parameters(keep, model_list, parameters)}
    saved = [(par, par.frozen, par.value, par.error) for par in parameters]
    try:
        for par in parameters:
            if id(par) not in kept_ids:
                par.frozen = True
        yield Parameters([par for par in parameters if not par.frozen])
    finally:
        for par, was_frozen, value, error in saved:
            par.frozen = was_frozen
            if restore_values:
                par.value = value
                par.error = error


def _sky_models(model_list):
    return [
        model
        for model in model_list
        if isinstance(model, SkyModel) and model.spatial_model is not None
    ]


def _positions_inside(positions, where):
    """Boolean array: which of ``positions`` (SkyCoord) are inside ``where``."""
    if isinstance(where, (Region, list, tuple)) and not isinstance(where, Map):
        regions = list(where) if isinstance(where, (list, tuple)) else [where]
        if not regions or not all(isinstance(r, Region) for r in regions):
            raise InputError("select_models: expected a region, a list of regions, a mask map or a geometry")
        return np.asarray(RegionGeom.from_regions(regions).contains(positions), dtype=bool)
    if isinstance(where, Map):
        mask = where
        if not mask.geom.is_image:
            mask = mask.reduce_over_axes(func=np.logical_or)
        values = mask.get_by_coord({"skycoord": positions}, fill_value=0)
        return np.nan_to_num(np.asarray(values, dtype=float)) != 0
    if isinstance(where, Geom):
        return np.asarray(where.to_image().contains({"skycoord": positions}), dtype=bool)
    raise InputError(
        f"select_models: expected a region, a mask map or a geometry, got {type(where).__name__}"
    )


def select_models(models, where, inside=True):
    """Sky models whose centre is inside (or outside) a region, a mask or a geometry.

    Parameters
    ----------
    models : `~gammapy.modeling.models.Models` or list of models
        Candidate models; only sky models with a spatial model are considered
        (background and template models have no centre).
    where : `~regions.SkyRegion`, list of regions, `~gammapy.maps.Map` or `~gammapy.maps.Geom`
        Region(s); a mask map (the centre must fall on a non-zero pixel; cubes are
        reduced with a logical OR over non-spatial axes); or a geometry (the
        centre must fall on one of its pixels).
    inside : bool, optional
        Select the models inside (default) or outside ``where``.

    Returns
    -------
    selected : `~gammapy.modeling.models.Models`
        The selected models (the same objects, in input order).
    """
    candidates = _sky_models(_as_model_list(models))
    if not candidates:
        return Models([])
    centres = [model.position for model in candidates]
    lon = u.Quantity([centre.data.lon for centre in centres])
    lat = u.Quantity([centre.data.lat for centre in centres])
    frames = [model.spatial_model.frame for model in candidates]
    contained = np.zeros(len(candidates), dtype=bool)
    for frame in set(frames):
        in_frame = np.array([f == frame for f in frames])
        positions = SkyCoord(lon[in_frame], lat[in_frame], frame=frame)
        contained[in_frame] = _positions_inside(positions, where)
    keep = contained if inside else ~contained
    return Models([model for model, selected in zip(candidates, keep) if selected])


def main_source(models, energy_min="1 TeV", energy_max="100 TeV"):
    """Brightest sky model of a group: highest integral flux between two energies.

    Parameters
    ----------
    models : `~gammapy.modeling.models.Models` or list of models
        The group.
    energy_min, energy_max : `~astropy.units.Quantity` or str, optional
        Energy range of the integral flux. Default is 1 to 100 TeV.

    Returns
    -------
    model : `~gammapy.modeling.models.SkyModel`
        The brightest source.
    """
    candidates = _sky_models(_as_model_list(models))
    if not candidates:
        raise InputError("main_source: the group has no sky model with a spatial model")
    energy_min, energy_max = u.Quantity(energy_min), u.Quantity(energy_max)
    fluxes = [
        model.spectral_model.integral(energy_min, energy_max).to_value("cm-2 s-1")
        for model in candidates
    ]
    return candidates[int(np.nanargmax(fluxes))]


def release_shape(model, names=SHAPE_PARAMETERS):
    """Unfreeze the shape parameters of a source (the main source of a group).

    Parameters
    ----------
    model : `~gammapy.modeling.models.SkyModel`, spatial model, or group of models
        The source, or a group (`~gammapy.modeling.models.Models` or list) whose
        `main_source` is released.
    names : sequence of str, optional
        Shape parameters to release, where the spatial model has them.
        Default: ``r_0``, ``eta``, ``e``, ``phi``.

    Returns
    -------
    released : `~gammapy.modeling.Parameters`
        The parameters now free.
    """
    if isinstance(model, (Models, DatasetModels, list, tuple)):
        model = main_source(model)
    spatial = model.spatial_model if isinstance(model, SkyModel) else model
    if spatial is None or getattr(spatial, "type", None) != "spatial":
        raise InputError(
            f"release_shape: {getattr(model, 'name', type(model).__name__)!r} has no spatial model"
        )
    released = [spatial.parameters[name] for name in names if name in spatial.parameters.names]
    if not released:
        raise InputError(
            f"release_shape: spatial model {type(spatial).__name__} of "
            f"{getattr(model, 'name', '?')!r} has none of the parameters {list(names)}"
        )
    for par in released:
        par.frozen = False
    log.debug("released %s of %s", [par.name for par in released], getattr(model, "name", "?"))
    return Parameters(released)


def applies_to(model, dataset_name):
    """Whether ``model`` is evaluated on the dataset named ``dataset_name``.

    Parameters
    ----------
    model : `~gammapy.modeling.models.ModelBase`
        A sky or background model; models without ``datasets_names`` (or with
        None) apply to every dataset.
    dataset_name : str
        Dataset name.

    Returns
    -------
    applies : bool
    """
    names = getattr(model, "datasets_names", None)
    return names is None or dataset_name in names


def _fit_mask_image(dataset):
    """Fit mask of a dataset as a boolean image, None when the dataset has none."""
    mask = dataset.mask_fit
    if mask is None:
        return None
    if not mask.geom.is_image:
        mask = mask.reduce_over_axes(func=np.logical_or)
    return mask


def _outer_sources(dataset, sources):
    """Names of the sources of ``dataset`` centred outside its fit mask."""
    mask = _fit_mask_image(dataset)
    applicable = [model for model in sources if applies_to(model, dataset.name)]
    if mask is None or not applicable:
        return []
    return select_models(applicable, mask, inside=False).names


def cache_outer_sources(datasets, models=None, freeze_norm=True, path=None, overwrite=False):
    """Replace the sources centred outside each dataset's fit mask by one npred template.

    For each dataset, the sky models whose centre is outside its fit mask
    (``mask_fit``, reduced over energy; datasets without a fit mask keep all
    their sources) have their predicted counts computed once with gammapy's
    ``MapDataset.npred_signal`` (IRF kernels from `fast_irfs`) and summed into one
    `~gammapy.modeling.models.TemplateNPredModel` named ``<dataset>-outer-sources``.
    Those sources are then dropped from that dataset (their ``datasets_names``
    lists the datasets where they stay), sources that are outside every fit mask
    are dropped from the model list, and ``datasets.models`` is set to the
    result.

    The sky models are the same objects as in ``models``: their ``datasets_names``
    is updated in place.

    Parameters
    ----------
    datasets : `~gammapy.datasets.Datasets` or list of `~gammapy.datasets.MapDataset`
        Datasets with their fit masks.
    models : `~gammapy.modeling.models.Models`, optional
        All models (sources, backgrounds). Default: ``datasets.models``.
    freeze_norm : bool, optional
        Freeze the norm of the templates (default) or leave it free.
    path : str or `~pathlib.Path`, optional
        Folder where each template map is written as ``<dataset>_outer_npred.fits``
        (the template's ``filename``, so that ``Models.write`` refers to it).
        Default: not written.
    overwrite : bool, optional
        Overwrite existing template files. Default is False.

    Returns
    -------
    models : `~gammapy.modeling.models.Models`
        The new model list: the sources still fitted somewhere, the other
        models (backgrounds) and the templates.
    """
    if isinstance(datasets, MapDataset):
        datasets = [datasets]
    bad = [type(d).__name__ for d in datasets if not isinstance(d, MapDataset)]
    if bad:
        raise InputError(f"cache_outer_sources: every dataset must be a MapDataset, got {bad}")
    datasets = Datasets(datasets)
    models = Models(datasets.models if models is None else models)
    sources = _sky_models(list(models))
    outer = {dataset.name: _outer_sources(dataset, sources) for dataset in datasets}

    templates = []
    for dataset in datasets:
        names = outer[dataset.name]
        if not names:
            continue
        if dataset.models is None or not set(names) <= set(dataset.models.names):
            dataset.models = models
        with fast_irfs(dataset):
            npred = dataset.npred_signal(model_names=names)
        template = TemplateNPredModel(
            npred, name=f"{dataset.name}-outer-sources", datasets_names=[dataset.name], copy_data=False
        )
        template.spectral_model.norm.frozen = freeze_norm
        if path is not None:
            filename = Path(path) / f"{dataset.name}_outer_npred.fits"
            filename.parent.mkdir(parents=True, exist_ok=True)
            npred.write(filename, overwrite=overwrite)
            template.filename = str(filename)
        templates.append(template)
        log.info("%s: %d outer sources cached in %s", dataset.name, len(names), template.name)

    source_ids = {id(model) for model in sources}
    kept = []
    for model in models:
        if id(model) not in source_ids:
            kept.append(model)
            continue
        applicable = [d.name for d in datasets if applies_to(model, d.name)]
        inside = [name for name in applicable if model.name not in outer[name]]
        if not inside:
            log.debug("%s is outside every fit mask: removed", model.name)
            continue
        if inside != applicable:
            model.datasets_names = inside
        kept.append(model)

    new_models = Models([*kept, *templates])
    datasets.models = new_models
    return new_models
