"""Model management for survey fits: freezing, selecting and releasing parameters.

- `frozen`: context manager freezing every parameter but a chosen set, restoring
  the exact previous frozen states on exit (also when an exception is raised);
- `select_models`: the sky models whose centre is inside (or outside) a region,
  a mask map or a geometry;
- `main_source` and `release_shape`: the brightest source of a group and the
  release of its shape parameters (``r_0``, ``eta``, ``e``, ``phi``);
- `FastPSFMap`, `FastEDispKernelMap` and `fast_irfs`: gammapy's
  ``get_psf_kernel`` (about 85% of the time of a cold ``MapDataset.npred``),
  ``containment_radius`` and ``get_edisp_kernel`` giving the same results from
  cached geometry, separable interpolation and per-pixel lookups;
- `npred_signal`: gammapy's ``MapDataset.npred_signal`` with those kernels;
- `cache_outer_sources`: the npred of the sources centred outside each dataset's
  fit mask, computed once and stacked into one `~gammapy.modeling.models.TemplateNPredModel`
  per dataset;
- `FastMapDataset`, `fast_dataset` and `fast_datasets`: a MapDataset whose
  ``npred_signal`` and ``stat_sum`` (the likelihood call of a fit) evaluate its
  sources from cached spatial and spectral pieces with compiled kernels, same
  statistic as gammapy's to rounding.
"""
import contextlib
import logging
from pathlib import Path

import numpy as np
import astropy.units as u
from astropy.coordinates import SkyCoord
from regions import Region
from gammapy.maps import Geom, Map, RegionGeom, WcsGeom
from gammapy.modeling import Parameter, Parameters
from gammapy.datasets import Datasets, MapDataset
from gammapy.irf import EDispKernelMap, PSFMap
from gammapy.modeling.models import (
    DatasetModels,
    LogParabolaSpectralModel,
    ModelBase,
    Models,
    PowerLawSpectralModel,
    SkyModel,
    TemplateNPredModel,
)

from gpsfast import _compat
from gpsfast.errors import InputError
from gpsfast.irf import FastEDispKernelMap, FastPSFMap, fast_irfs
from gpsfast.irf import convolve

__all__ = [
    "SHAPE_PARAMETERS",
    "FastDatasets",
    "FastEDispKernelMap",
    "FastMapDataset",
    "FastPSFMap",
    "cache_outer_sources",
    "fast_dataset",
    "fast_datasets",
    "fast_irfs",
    "frozen",
    "main_source",
    "npred_signal",
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


def _applies_to(model, dataset_name):
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
    applicable = [model for model in sources if _applies_to(model, dataset.name)]
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
        applicable = [d.name for d in datasets if _applies_to(model, d.name)]
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


def npred_signal(dataset, model_names=None, stack=True):
    """gammapy's ``MapDataset.npred_signal`` with the IRF kernels of `fast_irfs`.

    Same result as ``dataset.npred_signal(model_names, stack)``; the PSF and
    energy dispersion kernels of sources whose evaluators need them (first call,
    moved sources) are computed by `FastPSFMap` and `FastEDispKernelMap`.

    Parameters
    ----------
    dataset : `~gammapy.datasets.MapDataset`
        Dataset with its models set.
    model_names : str or list of str, optional
        Models to predict; default all sky models.
    stack : bool, optional
        Sum the models (default) or return one map per model on a label axis.

    Returns
    -------
    npred : `~gammapy.maps.Map`
        Predicted signal counts.
    """
    if not isinstance(dataset, MapDataset):
        raise InputError(f"npred_signal: expected a MapDataset, got {type(dataset).__name__}")
    with fast_irfs(dataset):
        return dataset.npred_signal(model_names=model_names, stack=stack)


def __getattr__(name):
    """`fit_groups`, `make_groups` and `Group` of `gpsfast.groups` (imported lazily: it imports this module)."""
    if name in ("fit_groups", "make_groups", "Group"):
        from gpsfast import groups

        return getattr(groups, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# --------------------------------------------------------------------------
# Fast likelihood evaluation: FastMapDataset
# --------------------------------------------------------------------------
class _SourceNpred:
    """One source's predicted counts on its evaluator's cutout, with its cached pieces.

    ``flux_exposure`` (true energy x pixels) is the PSF-convolved spatial
    integral times the exposure: it changes with the spatial parameters or the
    IRFs (when gammapy's evaluator updates its cutout and kernels). The spectral
    integrals per true-energy bin change with the spectral parameters; the
    energy dispersion matrix folds them into reconstructed energy.
    """

    def __init__(self, evaluator):
        self.evaluator = evaluator
        self.irfs = None
        self.spatial_values = None
        self.spectral_key = None
        self.flux_exposure = None
        self.edisp = None
        self.box = None
        self.npred = None
        self.spatial_twin = None
        self.spectral_grid = None
        self.checked_spatial_values = None
        self.finite = True
        self.supported = None
        self.unit_scale = None
        self.current_spatial_values = None
        self.components = None

    def _irfs_changed(self, dataset_geom):
        evaluator = self.evaluator
        irfs = (evaluator.exposure, evaluator.psf, evaluator.edisp, dataset_geom)
        if self.irfs is not None and all(a is b for a, b in zip(irfs, self.irfs)):
            return False
        self.irfs = irfs
        return True

    def _spatial_model(self):
        """The spatial model, or its compiled twin for a plain gammapy generalized Gaussian."""
        from gammapy.modeling.models import GeneralizedGaussianSpatialModel as GammapyModel

        from gpsfast.models.sersic import GeneralizedGaussianSpatialModel as FastModel

        spatial = self.evaluator.model.spatial_model
        if type(spatial) is not GammapyModel:
            return spatial
        key = (spatial, spatial.frame, *spatial.parameters)
        twin = self.spatial_twin
        if twin is None or len(twin[0]) != len(key) or not all(
            a is b or (isinstance(a, str) and a == b) for a, b in zip(twin[0], key)
        ):
            twin = (key, FastModel.from_gammapy(spatial))
            self.spatial_twin = twin
        return twin[1]

    def _update_flux_exposure(self):
        """PSF-convolved spatial integral times exposure, (n_true, n_pixels) float64."""
        evaluator = self.evaluator
        spatial = self._spatial_model()
        values = spatial.integrate_geom(self.image_geom)
        data = values.data
        psf = evaluator.psf
        if psf is not None:
            # gammapy's WcsNDMap.convolve (what MapEvaluator.apply_psf runs), on arrays
            convolved = None
            if self.psf_same_pixels:
                convolved = convolve.convolve_planes(data.astype(np.float32)[np.newaxis], psf)
            data = values.convolve(psf).data if convolved is None else convolved
        exposure = evaluator.exposure.data
        if data.ndim == 2:
            data = np.broadcast_to(data, exposure.shape)
        # float32 x float32 is exact in float64
        flux_exposure = np.multiply(data, exposure, dtype=float)
        self.flux_exposure = flux_exposure.reshape(exposure.shape[0], -1)
        self.finite = bool(np.isfinite(flux_exposure).all())
        self.exposure_unit = evaluator.exposure.unit * values.unit

    def _update_irfs(self, dataset_geom):
        """Energy dispersion matrix and stacking slices of the evaluator's current cutout."""
        evaluator = self.evaluator
        edisp = evaluator.edisp if evaluator.edisp is not None else _compat.evaluator_edisp_diagonal(evaluator)
        self.edisp = np.asarray(edisp.pdf_matrix, dtype=float)
        geom = evaluator.geom
        slices = geom.cutout_slices(dataset_geom)
        (py, px), (cy, cx) = slices["parent-slices"], slices["cutout-slices"]
        self.box = (int(py.start), int(py.stop), int(px.start), int(px.stop), int(cy.start), int(cx.start))
        self.image_shape = geom.data_shape[-2:]
        self.image_geom = geom.to_image()
        self.energy_edges = geom.axes["energy_true"].edges
        psf = evaluator.psf
        self.psf_same_pixels = psf is not None and bool(
            np.allclose(geom.pixel_scales.deg, psf.psf_kernel_map.geom.pixel_scales.deg, rtol=1e-5)
            and psf.psf_kernel_map.data.ndim == 3
        )

    def _spectral_integrals(self):
        """Integrals of the spectrum over the true-energy bins, and their unit."""
        from gpsfast.kernels.npred import log_parabola_integrals, power_law_integrals

        spectral = self.evaluator.model.spectral_model
        edges = self.energy_edges
        unit = edges.unit
        if isinstance(spectral, PowerLawSpectralModel):
            amplitude = spectral.amplitude
            integrals = power_law_integrals(
                edges.value[:-1], edges.value[1:], amplitude.value,
                _value_in(spectral.reference, unit), _value_in(spectral.index, u.dimensionless_unscaled),
            )
            return integrals, amplitude.unit * unit
        grid = self.spectral_grid
        if grid is None or grid[0] is not edges:
            # gammapy's integrate_spectrum grid: ndecade=100, the same number of points per bin
            energy_min, energy_max = edges[:-1], edges[1:]
            num = np.maximum(np.max(100 * np.log10(energy_max / energy_min)), 2)
            energy = np.geomspace(energy_min, energy_max, num=int(num), axis=-1)
            grid = (edges, np.ascontiguousarray(energy.to_value(unit)))
            self.spectral_grid = grid
        amplitude = spectral.amplitude
        integrals = log_parabola_integrals(
            grid[1], amplitude.value, _value_in(spectral.reference, unit),
            _value_in(spectral.alpha, u.dimensionless_unscaled),
            _value_in(spectral.beta, u.dimensionless_unscaled),
        )
        return integrals, amplitude.unit * unit

    def _unit_scale(self, unit):
        """Factor converting the spectral integral times exposure to counts."""
        key = (unit, self.exposure_unit)
        if self.unit_scale is None or self.unit_scale[0] != key:
            self.unit_scale = (key, (unit * self.exposure_unit).to(""))
        return self.unit_scale[1]

    def compute(self, dataset_geom):
        """Predicted counts on the cutout, (n_reco, ny, nx) float64."""
        from gpsfast.kernels.npred import fold_energy

        spatial, spectral, _ = _compat.sky_model_parts(self.evaluator.model)
        irfs_changed = self._irfs_changed(dataset_geom)
        spatial_values = self.current_spatial_values
        if spatial_values is None:
            spatial_values = _parameter_state(spatial)
        if irfs_changed:
            self._update_irfs(dataset_geom)
        if irfs_changed or spatial_values != self.spatial_values:
            self._update_flux_exposure()
            self.spatial_values = spatial_values
            self.npred = None
        spectral_key = _parameter_state(spectral)
        if self.npred is None or spectral_key != self.spectral_key:
            integrals, unit = self._spectral_integrals()
            scale = self._unit_scale(unit)
            weights = (integrals * scale)[:, np.newaxis] * self.edisp
            if self.finite:
                npred = fold_energy(weights, self.flux_exposure)
            else:
                npred = weights.T @ self.flux_exposure
            self.npred = npred.reshape((npred.shape[0],) + tuple(self.image_shape))
            self.spectral_key = spectral_key
        return self.npred

    def needs_update(self):
        """gammapy's ``evaluator.needs_update``, skipped while the spatial parameters stay where it said no.

        With unchanged spatial parameters gammapy's answer cannot change (its
        position check compares with the position of the last update), so it is
        asked again only after they moved.
        """
        self.current_spatial_values = None
        model = self.evaluator.model
        spatial = _compat.sky_model_parts(model)[0] if type(model) is SkyModel else None
        if spatial is None:
            return self.evaluator.needs_update
        spatial_values = _parameter_state(spatial)
        self.current_spatial_values = spatial_values
        if spatial_values == self.checked_spatial_values:
            return False
        needs = self.evaluator.needs_update
        self.checked_spatial_values = None if needs else spatial_values
        return needs


def _parameter_state(model):
    """Values and units of a model's parameters (the Parameter objects read directly)."""
    return tuple(
        (par.value, par.unit, id(par))
        for par in _compat.parameter_objects(model, _parameter_names(type(model)))
    )


_PARAMETER_NAMES = {}
_UNIT_FACTORS = {}


def _value_in(par, unit):
    """Value of a Parameter in ``unit``, as ``par.quantity.to_value(unit)`` (factor kept per unit pair)."""
    key = (par.unit, unit)
    factor = _UNIT_FACTORS.get(key)
    if factor is None:
        factor = u.Quantity(1.0, par.unit).to_value(unit)
        _UNIT_FACTORS[key] = factor
    value = par.value
    return value if factor == 1.0 else value * factor


def _parameter_names(cls):
    names = _PARAMETER_NAMES.get(cls)
    if names is None:
        names = tuple(cls.default_parameters.names)
        _PARAMETER_NAMES[cls] = names
    return names


def _components(model):
    """Identities of a sky model's spatial, spectral and temporal models (read directly)."""
    return tuple(id(part) for part in _compat.sky_model_parts(model))


def _fast_source_supported(evaluator):
    """Whether `_SourceNpred` reproduces gammapy's evaluation of this evaluator's model."""
    model = evaluator.model
    return (
        type(model) is SkyModel
        and model.spatial_model is not None
        and not model.spatial_model.is_energy_dependent
        and model.temporal_model is None
        and type(model.spectral_model) in (PowerLawSpectralModel, LogParabolaSpectralModel)
        and all(model.apply_irf.get(name, False) for name in ("exposure", "psf", "edisp"))
        and evaluator.exposure is not None
        and evaluator.psf_containment is None
        and not evaluator.geom.is_region
        and not evaluator.apply_psf_after_edisp
        and isinstance(evaluator.geom, WcsGeom)
    )


def _signal_blocks(dataset, states, model_names=None):
    """Predicted signal counts of ``dataset`` as blocks; ``states`` keeps the sources' pieces.

    gammapy's ``MapDataset.npred_signal(model_names, stack=True)`` before the
    sum: the evaluators are updated as gammapy does (mask image computed once),
    supported sources go through `_SourceNpred`, the others through their
    gammapy evaluator, stacked together into one full-size block (kept, for all
    models, while the evaluators' cached npred maps are unchanged).

    Returns
    -------
    blocks : list of (ndarray, tuple)
        Source arrays (n_energy, h, w) and their boxes ``(y0, y1, x0, x1, cy0, cx0)``:
        the map rows and columns they cover and where those start in the array.
    """
    geom = _compat.dataset_geom(dataset)
    evaluators = dataset.evaluators
    if model_names is not None:
        names = [model_names] if isinstance(model_names, str) else list(model_names)
        evaluators = {name: dataset.evaluators[name] for name in names}
    mask_image = None
    blocks, by_gammapy = [], []
    for name, evaluator in evaluators.items():
        state = states.get(name)
        if state is None or state.evaluator is not evaluator:
            state = _SourceNpred(evaluator)
            states[name] = state
        if state.needs_update():
            if mask_image is None:
                mask_image = dataset.mask_image
            evaluator.update(dataset.exposure, dataset.psf, dataset.edisp, geom, mask_image)
            state.supported = None
        if not evaluator.contributes:
            continue
        if state.supported is None or state.components != _components(evaluator.model):
            state.supported = _fast_source_supported(evaluator)
            state.components = _components(evaluator.model)
        if not state.supported:
            by_gammapy.append(evaluator.compute_npred())
            continue
        npred = state.compute(geom)
        if not state.finite:
            # gammapy's Map.stack sets non-finite values to zero
            npred = np.where(np.isfinite(npred), npred, 0.0)
        blocks.append((npred, state.box))
    if by_gammapy:
        ny, nx = geom.data_shape[-2:]
        blocks.append((_stacked_by_gammapy(by_gammapy, geom, states if model_names is None else None),
                       (0, ny, 0, nx, 0, 0)))
    return blocks


_GAMMAPY_KEY = "\0gammapy-evaluated"


def _stacked_by_gammapy(npred_maps, geom, states=None):
    """The npred maps of gammapy's evaluators stacked on ``geom`` as ``Map.stack`` does (one float64 array).

    gammapy's evaluators return the same cached map while their model's parameters
    do not change: with ``states`` (the all-models path of the likelihood), the
    stacked array is kept and recomputed only when one of the maps is another one.
    """
    cached = states.get(_GAMMAPY_KEY) if states is not None else None
    if (
        cached is not None
        and cached[1] is geom
        and len(cached[0]) == len(npred_maps)
        and all(a is b for a, b in zip(cached[0], npred_maps))
    ):
        return cached[2]
    stacked = Map.from_geom(geom, dtype=float)
    for npred in npred_maps:
        stacked.stack(npred)
    if states is not None:
        states[_GAMMAPY_KEY] = (tuple(npred_maps), geom, stacked.data)
    return stacked.data


def _signal_array(dataset, states, model_names=None):
    """Predicted signal counts of ``dataset`` summed on its geometry (float64 array)."""
    total = np.zeros(_compat.dataset_geom(dataset).data_shape)
    for values, (y0, y1, x0, x1, cy0, cx0) in _signal_blocks(dataset, states, model_names):
        total[..., y0:y1, x0:x1] += values[..., cy0 : cy0 + y1 - y0, cx0 : cx0 + x1 - x0]
    return total


def _background_array(dataset, states):
    """gammapy's ``npred_background().data``, recomputed only when the background model or map changes."""
    background = dataset.background
    model = dataset.background_model
    if not (model and background):
        return None if background is None else np.asarray(background.data, dtype=float)
    parts = [model.spectral_model]
    if getattr(model, "spatial_model", None) is not None:
        parts.append(model.spatial_model)
    key = (id(model), id(background), id(background.data)) + tuple(
        _parameter_state(part) for part in parts
    )
    cached = states.get(_BACKGROUND_KEY)
    if cached is None or cached[0] != key:
        values = u.Quantity(model.evaluate_geom(geom=background.geom)).to_value("")
        # what gammapy's ``background * values`` computes (float32 map times float64 values)
        cached = (key, np.multiply(background.data, values), background)
        states[_BACKGROUND_KEY] = cached
    return cached[1]


def _counts_and_mask(dataset):
    """Counts (native byte order) and the mask (safe and fit masks combined), read at every call."""
    counts = dataset.counts.data
    if not counts.dtype.isnative:
        counts = counts.astype(counts.dtype.newbyteorder("="))
    mask = None
    for part in (dataset.mask_safe, dataset.mask_fit):
        if part is not None:
            data = np.asarray(part.data, dtype=bool)
            mask = data if mask is None else mask & data
    if mask is None:
        mask = np.ones(counts.shape, dtype=bool)
    return np.ascontiguousarray(counts), np.ascontiguousarray(mask)


_BACKGROUND_KEY = "\0background"


def _cash_stat_sum(dataset, states):
    """gammapy's ``MapDataset.stat_sum`` (Cash): background plus the source blocks, compiled Cash sum."""
    from gpsfast.kernels.cash import cash_sum_masked

    blocks = _signal_blocks(dataset, states)
    background = _background_array(dataset, states)
    shape = _compat.dataset_geom(dataset).data_shape
    if background is None:
        background = np.zeros(shape)
    npred = None
    for values, (y0, y1, x0, x1, cy0, cx0) in blocks:
        block = values[..., cy0 : cy0 + y1 - y0, cx0 : cx0 + x1 - x0]
        if npred is None and block.shape == background.shape:
            npred = background + block
            continue
        if npred is None:
            npred = background.copy()
        npred[..., y0:y1, x0:x1] += block
    if npred is None:
        npred = background
    counts, mask = _counts_and_mask(dataset)
    return cash_sum_masked(counts.ravel(), npred.ravel(), mask.ravel())


def _fast_stat_supported(dataset):
    return dataset.stat_type == "cash" and dataset.counts is not None


class FastMapDataset(MapDataset):
    """`~gammapy.datasets.MapDataset` whose ``npred_signal`` and ``stat_sum`` are compiled.

    The same dataset for gammapy (same maps, models, masks, I/O; gammapy's
    ``MapEvaluator`` still decides when a source's cutout, PSF and energy
    dispersion kernels are updated), with the predicted counts of sky models
    with a PowerLaw or LogParabola spectrum (and any spatial model that is not
    energy dependent; plain gammapy generalized Gaussians run the compiled
    `gpsfast.models.GeneralizedGaussianSpatialModel`) computed from cached
    pieces:

    - the PSF-convolved spatial integral times the exposure, per true energy,
      recomputed only when the spatial parameters or the evaluator's IRFs change;
    - the spectral integral per true-energy bin with gammapy's own rule
      (analytic for a power law; ``integrate_spectrum``'s log-log trapezoids for
      a log parabola), folded with the energy dispersion matrix into a
      (true x reconstructed) weight matrix applied in one compiled pass;
    - the sum with gammapy's ``npred_background`` and the Cash statistic over the
      mask in one compiled pass.

    Other models (templates, other spectra, temporal models) go through
    gammapy's evaluator. ``stat_sum`` equals gammapy's to rounding. Use
    `fast_dataset` / `fast_datasets` to make one from an existing dataset. It
    pickles (the caches are dropped) and deep-copies like a MapDataset.
    """

    def _fast_states(self):
        states = self.__dict__.get("_fast_sources")
        if states is None:
            states = {}
            self.__dict__["_fast_sources"] = states
        return states

    def __getstate__(self):
        state = self.__dict__.copy()
        state.pop("_fast_sources", None)
        return state

    def npred_signal(self, model_names=None, stack=True):
        """Model predicted signal counts, as `~gammapy.datasets.MapDataset.npred_signal`.

        Parameters
        ----------
        model_names : str or list of str, optional
            Models to predict; default all.
        stack : bool, optional
            Sum the models (default, the fast path) or one map per model
            (gammapy's path).

        Returns
        -------
        npred : `~gammapy.maps.Map`
        """
        if not stack:
            return super().npred_signal(model_names=model_names, stack=stack)
        data = _signal_array(self, self._fast_states(), model_names)
        return Map.from_geom(_compat.dataset_geom(self), data=data)

    def stat_sum(self):
        """Total fit statistic, as `~gammapy.datasets.MapDataset.stat_sum` (Cash: compiled).

        Returns
        -------
        stat : float
        """
        if not _fast_stat_supported(self):
            return super().stat_sum()
        return _cash_stat_sum(self, self._fast_states())


def fast_dataset(dataset):
    """`FastMapDataset` sharing the maps, models and evaluators of a `~gammapy.datasets.MapDataset`.

    The PSF and energy dispersion maps are swapped for `FastPSFMap` and
    `FastEDispKernelMap` sharing the same data. The new dataset has its own
    evaluator dictionary holding the same evaluator objects, so that kernels
    already computed are kept. Setting ``models`` on either dataset does not
    affect the other.

    Parameters
    ----------
    dataset : `~gammapy.datasets.MapDataset`
        Dataset (exactly a MapDataset or a `FastMapDataset`).

    Returns
    -------
    dataset : `FastMapDataset`
    """
    if isinstance(dataset, FastMapDataset):
        return dataset
    if type(dataset) is not MapDataset:
        raise InputError(f"fast_dataset: expected a gammapy MapDataset, got {type(dataset).__name__}")
    fast = _compat.copy_as(dataset, FastMapDataset)
    fast.__dict__.pop("_fast_sources", None)
    _compat.set_dataset_evaluators(fast, dict(_compat.dataset_evaluators(dataset)))
    if isinstance(dataset.psf, PSFMap) and not isinstance(dataset.psf, FastPSFMap):
        fast.psf = FastPSFMap.from_psf_map(dataset.psf)
    if type(dataset.edisp) is EDispKernelMap:
        fast.edisp = FastEDispKernelMap.from_edisp_map(dataset.edisp)
    return fast


class FastDatasets(Datasets):
    """`~gammapy.datasets.Datasets` whose ``stat_sum`` does not rebuild the model list at every call.

    gammapy's ``Datasets.stat_sum`` gathers the datasets' models into a new
    ``DatasetModels`` at every call to add the parameter priors (about a third
    of a group fit's time with `FastMapDataset` s). Here the parameter list is
    kept while the datasets' models and their Parameter objects are the same
    objects (checked at every call); priors and penalties are read at every
    call. Same value as gammapy's.
    """

    def _prior_parameters(self):
        models = {}
        for dataset in self:
            if dataset.models is not None:
                for model in dataset.models:
                    models[model] = model
        key = tuple(_parameter_objects_key(model) for model in models)
        cached = self.__dict__.get("_fast_parameters")
        if cached is None or cached[0] != key:
            parameters = [par for model in models for par in model.parameters]
            cached = (key, parameters, list(models))
            self.__dict__["_fast_parameters"] = cached
        return cached[1]

    def stat_sum(self):
        """Total fit statistic with the priors and penalties, as `~gammapy.datasets.Datasets.stat_sum`.

        Returns
        -------
        stat : float
        """
        prior_stat_sum = 0.0
        for par in self._prior_parameters():
            if par.prior is not None:
                prior_stat_sum += par.prior_stat_sum()
        penalties = _compat.datasets_penalties(self)
        if penalties is not None:
            for penalty in penalties:
                prior_stat_sum += penalty.stat_sum()
        stat_sum = 0.0
        for dataset in self:
            stat_sum += dataset.stat_sum()
        return stat_sum + prior_stat_sum


def _parameter_objects_key(model):
    """Identities of a model and of its Parameter objects, read without building ``Parameters``."""
    spatial, spectral, temporal = _compat.sky_model_parts(model)
    subs = [spectral, spatial, temporal]
    if not any(sub is not None for sub in subs) or not all(
        sub is None or _is_simple(type(sub)) for sub in subs
    ):
        return (id(model),) + tuple(id(par) for par in model.parameters)
    ids = [id(model)]
    for sub in subs:
        if sub is not None:
            ids.append(id(sub))
            ids.extend(id(par) for par in _compat.parameter_objects(sub, _parameter_names(type(sub))))
    return tuple(ids)


_SIMPLE_TYPES = {}


def _is_simple(cls):
    """Whether a model class keeps all its parameters as its own named Parameter attributes."""
    simple = _SIMPLE_TYPES.get(cls)
    if simple is None:
        names = _parameter_names(cls)
        simple = bool(names) and all(isinstance(cls.__dict__.get(name) or getattr(cls, name, None), Parameter)
                                     for name in names)
        simple = simple and not hasattr(cls, "model1")
        _SIMPLE_TYPES[cls] = simple
    return simple


def fast_datasets(datasets):
    """`FastDatasets` where every plain MapDataset is a `FastMapDataset`.

    The datasets share their maps and models (the same Parameter objects) with
    the inputs: ``Fit().run(fast_datasets(datasets))`` leaves the fitted values in
    the input models, with the same best fit as ``Fit().run(datasets)``. The
    penalties of a `~gammapy.datasets.Datasets` input are kept.

    Parameters
    ----------
    datasets : `~gammapy.datasets.Datasets`, list of datasets or one MapDataset
        Datasets; those that are not exactly MapDatasets are kept as they are.

    Returns
    -------
    datasets : `FastDatasets`
        New container of the fast datasets (sharing maps and models with the inputs).
    """
    if isinstance(datasets, MapDataset):
        datasets = [datasets]
    fast = FastDatasets(
        [fast_dataset(d) if type(d) in (MapDataset, FastMapDataset) else d for d in datasets]
    )
    penalties = _compat.datasets_penalties(datasets)
    if penalties is not None:
        _compat.set_datasets_penalties(fast, penalties)
    return fast
