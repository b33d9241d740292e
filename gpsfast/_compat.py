"""Every access of gpsfast to private gammapy and regions names, each behind one small function.

gpsfast is pinned to ``gammapy>=2.0,<2.2`` (``regions<0.12``). The fast paths read a
few attributes and call a few helpers that gammapy and regions do not document:
they are all here, so that a change of gammapy shows up in one file, and
``tests/test_compat.py`` checks each of them against the installed versions
(the test names the function to update when gammapy changes it).

Where a private name is used to skip a constructor (building many small gammapy
objects), `direct_init_ok` checks once per process that the constructors set
exactly the attributes set here; if not, the public constructors are used.
"""
import copy
import functools
import logging

import astropy.units as u
import numpy as np
from astropy.coordinates import SkyCoord
from gammapy.datasets.evaluator import CUTOUT_MARGIN
from gammapy.datasets.metadata import MapDatasetMetaData
from gammapy.irf import EDispKernelMap, EDispMap
from gammapy.irf.psf.map import PSF_MAX_OVERSAMPLING
from gammapy.maps import MapAxes, MapAxis, RegionGeom, RegionNDMap, WcsGeom
from gammapy.maps.utils import _check_width
from gammapy.modeling.models import Models, SkyModel, TemplatePhaseCurveTemporalModel
from gammapy.modeling.models.core import (
    _build_parameters_from_dict,
    _check_fov_background_models,
    _recursive_dict_filename_update,
    _set_models_link,
)
from gammapy.modeling.models.spatial import MAX_OVERSAMPLING
from pydantic import BaseModel
from regions import PointSkyRegion, RegionMeta, RegionVisual

# the helper that CircleSkyRegion.to_pixel uses (pixel centre and local pixel
# scale); it accepts array SkyCoords, which lets all regions go in one call
from regions._utils.wcs_helpers import pixel_scale_angle_at_skycoord

__all__ = [
    "CUTOUT_MARGIN",
    "MAX_OVERSAMPLING",
    "PSF_MAX_OVERSAMPLING",
    "REGION_GEOM_BINSZ_WCS",
    "cached_solid_angle",
    "check_width",
    "copy_as",
    "dataset_evaluators",
    "dataset_geom",
    "dataset_metas",
    "datasets_penalties",
    "direct_init_ok",
    "evaluator_edisp_diagonal",
    "geom_init_copy",
    "init_with_shadows",
    "irf_map",
    "link_models",
    "map_init_copy",
    "nearest_valid_position",
    "new_irf_map",
    "new_models",
    "new_point_region",
    "new_region_geom",
    "new_region_nd_map",
    "parameter_objects",
    "parameters_from_dict",
    "phase_curve_phase",
    "pixel_scale_angle_at_skycoord",
    "psf_irf",
    "set_dataset_evaluators",
    "set_datasets_penalties",
    "sky_model_parts",
    "sky_model_without_unit_check",
    "update_filenames",
]

log = logging.getLogger(__name__)

REGION_GEOM_BINSZ_WCS = u.Quantity(0.1, u.deg)
"""``RegionGeom``'s default ``binsz_wcs``, parsed once."""

_SKY_MODEL_PARTS = ("_spatial_model", "_spectral_model", "_temporal_model")


# ----------------------------------------------------------------------------
# IRF maps
# ----------------------------------------------------------------------------
def irf_map(irf):
    """The map an IRF map object wraps (``IRFMap._irf_map``: ``psf_map``, ``edisp_map``, ...)."""
    return irf._irf_map


def psf_irf(psf):
    """The PSF map as a `~gammapy.irf.PSF3D`-like IRF over pixel indices (``PSFMap._psf_irf``)."""
    return psf._psf_irf


def nearest_valid_position(irf, position):
    """``position``, moved to the nearest pixel where the IRF map is safe (``IRFMap._get_nearest_valid_position``)."""
    return irf._get_nearest_valid_position(position)


# ----------------------------------------------------------------------------
# datasets and their evaluators
# ----------------------------------------------------------------------------
def dataset_geom(dataset):
    """The geometry a `~gammapy.datasets.MapDataset` predicts counts on (``MapDataset._geom``)."""
    return dataset._geom


def dataset_evaluators(dataset):
    """The dictionary of a dataset's ``MapEvaluator`` objects, by model name (``MapDataset._evaluators``)."""
    return dataset._evaluators


def set_dataset_evaluators(dataset, evaluators):
    """Give a dataset its own evaluator dictionary (``MapDataset._evaluators``)."""
    dataset._evaluators = evaluators


def evaluator_edisp_diagonal(evaluator):
    """The diagonal energy dispersion a ``MapEvaluator`` uses without edisp (``MapEvaluator._edisp_diagonal``)."""
    return evaluator._edisp_diagonal


def datasets_penalties(datasets):
    """The penalties of a `~gammapy.datasets.Datasets` (``Datasets._penalties``), None where it has none."""
    return getattr(datasets, "_penalties", None)


def set_datasets_penalties(datasets, penalties):
    """Set the penalties of a `~gammapy.datasets.Datasets` (``Datasets._penalties``)."""
    datasets._penalties = penalties


def copy_as(obj, cls):
    """A new ``cls`` object sharing every attribute of ``obj`` (a shallow copy, re-classed).

    gammapy datasets keep their whole state in the instance ``__dict__`` (no
    ``__slots__``): a subclass that adds only methods can take it over.
    """
    new = cls.__new__(cls)
    new.__dict__.update(obj.__dict__)
    return new


# ----------------------------------------------------------------------------
# models
# ----------------------------------------------------------------------------
def sky_model_parts(model):
    """A `~gammapy.modeling.models.SkyModel`'s (spatial, spectral, temporal) models, read without properties.

    ``SkyModel`` keeps them as ``_spatial_model``, ``_spectral_model`` and
    ``_temporal_model``; missing ones are None.
    """
    parts = model.__dict__
    return tuple(parts.get(name) for name in _SKY_MODEL_PARTS)


def parameter_objects(model, names):
    """The `~gammapy.modeling.Parameter` objects of a model, read from its ``__dict__``.

    gammapy's ``Parameter`` is a descriptor storing the object in the model's
    ``__dict__`` under the parameter name; reading it there skips building a
    ``Parameters`` list (the likelihood path reads them at every call).
    """
    objects = model.__dict__
    return [objects[name] for name in names]


def parameters_from_dict(data, default_parameters):
    """`~gammapy.modeling.Parameters` of a YAML parameter list, completed from the class defaults.

    gammapy's ``from_dict`` of its models does this with
    ``gammapy.modeling.models.core._build_parameters_from_dict`` (a warning for
    each parameter the list lacks).
    """
    return _build_parameters_from_dict(data, default_parameters)


def phase_curve_phase(time, t_ref, phi_ref, f0, f1, f2):
    """Phase in [0, 1) and period number of a timing solution at ``time`` (all Quantities).

    ``TemplatePhaseCurveTemporalModel._time_to_phase``: ``phi_ref + dt (f0 +
    dt / 2 (f1 + dt / 3 f2))`` with ``dt = time - t_ref``.
    """
    return TemplatePhaseCurveTemporalModel._time_to_phase(time, t_ref, phi_ref, f0, f1, f2)


def new_models(models, covariance):
    """``Models(models)`` holding ``covariance`` (a `~gammapy.modeling.covariance.Covariance`) as its covariance.

    gammapy's constructor builds the dense covariance matrix of all parameters;
    here ``Models._models``, ``_background_models`` (from
    ``core._check_fov_background_models``, which refuses two FoV background
    models for one dataset with a ValueError) and ``_covariance`` are set on a
    ``Models([])`` made by gammapy's constructor. The model names must be unique
    (not checked here).
    """
    models = list(models)
    result = Models([])
    result._models = models
    result._background_models = _check_fov_background_models(models)
    result._covariance = covariance
    return result


def update_filenames(component, path):
    """In a YAML model dictionary, the ``filename`` entries of files found under ``path`` become full paths.

    ``gammapy.modeling.models.core._recursive_dict_filename_update`` (in place).
    """
    _recursive_dict_filename_update(component, path)


def link_models(models):
    """Share the parameters that YAML ``link`` entries name between the models (``core._set_models_link``)."""
    _set_models_link(models)


def init_with_shadows(cls, shadows, **kwargs):
    """``cls(**kwargs)`` run with instance attributes ``shadows`` hiding the class's while ``__init__`` runs.

    The shadows are removed afterwards (unless ``__init__`` replaced them).
    gpsfast uses it to skip two costs of gammapy's model constructors: the deep
    copy of ``default_parameters`` (`gpsfast.models.bulk.build_component`) and
    `sky_model_without_unit_check`.
    """
    obj = cls.__new__(cls)
    obj.__dict__.update(shadows)
    try:
        cls.__init__(obj, **kwargs)
    finally:
        for name, value in shadows.items():
            if obj.__dict__.get(name) is value:
                del obj.__dict__[name]
    return obj


def _no_unit_check():
    return None


def sky_model_without_unit_check(**kwargs):
    """``SkyModel(**kwargs)`` without ``SkyModel._check_unit`` (an evaluation of the model on a small WCS geometry).

    For callers that checked the units themselves.
    """
    return init_with_shadows(SkyModel, {"_check_unit": _no_unit_check}, **kwargs)


# ----------------------------------------------------------------------------
# maps and geometries
# ----------------------------------------------------------------------------
def geom_init_copy(geom, **kwargs):
    """Copy of a geometry with some constructor arguments replaced (``Geom._init_copy``)."""
    return geom._init_copy(**kwargs)


def map_init_copy(sky_map, **kwargs):
    """Copy of a map with some constructor arguments replaced (``Map._init_copy``)."""
    return sky_map._init_copy(**kwargs)


def check_width(width):
    """A width argument of ``WcsGeom.cutout`` as (lon, lat) degrees (``gammapy.maps.utils._check_width``)."""
    return _check_width(width)


def cached_solid_angle(geom):
    """The pixel solid angles gammapy has already computed for a `~gammapy.maps.WcsGeom`, else None.

    ``WcsGeom.solid_angle`` caches them in the lazy property ``_solid_angle``.
    """
    return geom.__dict__.get("_solid_angle")


# ----------------------------------------------------------------------------
# gammapy and regions objects built without their constructors' checks
# ----------------------------------------------------------------------------
def new_region_geom(region, axes, wcs, ndim):
    """``RegionGeom(region, axes=axes, wcs=wcs)`` for `~gammapy.maps.MapAxes` ``axes``.

    Without rebuilding the axes (the constructor makes new ``MapAxes`` of the
    same ``MapAxis`` objects) or recomputing the data shape; ``ndim`` is the
    number of axes plus 2.
    """
    if not direct_init_ok():
        return RegionGeom(region, axes=axes, wcs=wcs, binsz_wcs=REGION_GEOM_BINSZ_WCS)
    return _without_init(RegionGeom, _region=region, _axes=axes, _binsz_wcs=REGION_GEOM_BINSZ_WCS, _wcs=wcs,
                         ndim=ndim)


def new_region_nd_map(geom, data, unit, meta):
    """``RegionNDMap(geom, data, unit=unit, meta=meta)`` without the data checks (``unit``: a Unit).

    The callers pass data of shape ``geom.data_shape``; the constructor's checks
    recompute that shape several times, which dominates the cost of building
    many small maps.
    """
    if not direct_init_ok():
        return RegionNDMap(geom, data=data, unit=unit, meta=meta)
    return _without_init(RegionNDMap, _geom=geom, _data=data, _meta=meta, _unit=unit)


def new_point_region(center):
    """``PointSkyRegion(center)`` without validating the `~astropy.coordinates.SkyCoord` again."""
    if not direct_init_ok():
        return PointSkyRegion(center)
    return _without_init(PointSkyRegion, center=center, meta=RegionMeta(), visual=RegionVisual())


def new_irf_map(cls, irf_map, exposure_map):
    """``cls(irf_map, exposure_map=exposure_map)`` for an energy dispersion map class of gammapy.

    Without checking the axis names (those of the map it was extracted from).
    """
    if cls not in (EDispKernelMap, EDispMap) or not direct_init_ok():
        return cls(irf_map, exposure_map=exposure_map)
    return _without_init(cls, _irf_map=irf_map, exposure_map=exposure_map)


def _without_init(cls, **attributes):
    """A ``cls`` object whose ``__dict__`` is ``attributes`` (the constructor is not run)."""
    obj = cls.__new__(cls)
    obj.__dict__.update(attributes)
    return obj


@functools.cache
def direct_init_ok():
    """Whether gammapy's and regions' constructors set exactly the attributes the ``new_*`` functions set.

    Checked once per process: if a version sets others, the ``new_*``
    functions call the constructors.
    """
    energy = MapAxis.from_energy_bounds(1, 10, 2, unit="TeV", name="energy")
    energy_true = MapAxis.from_energy_bounds(1, 10, 3, unit="TeV", name="energy_true")
    axes = MapAxes.from_default([energy, energy_true], n_spatial_axes=2)
    region = PointSkyRegion(SkyCoord(0.0, 0.0, unit="deg", frame="galactic"))
    wcs = WcsGeom.create(npix=3, binsz=0.1, frame="galactic").wcs
    geom = RegionGeom(region, axes=axes, wcs=wcs, binsz_wcs=REGION_GEOM_BINSZ_WCS)
    region_map = RegionNDMap(geom, data=np.zeros(geom.data_shape), unit="", meta={})
    expected = [
        (region, {"center", "meta", "visual"}),
        (geom, {"_region", "_axes", "_binsz_wcs", "_wcs", "ndim"}),
        (region_map, {"_geom", "_data", "_meta", "_unit"}),
    ]
    migra = MapAxis.from_bounds(0.2, 5, nbin=2, name="migra")
    migra_map = RegionNDMap.create(region, axes=[migra, energy_true], wcs=wcs)
    for cls, irf in ((EDispKernelMap, region_map), (EDispMap, migra_map)):
        expected.append((cls(irf, exposure_map=None), {"_irf_map", "exposure_map"}))
    ok = all(set(vars(obj)) == names for obj, names in expected)
    if not ok:
        log.debug("gammapy constructors set other attributes: building objects with them")
    return ok


def dataset_metas(n):
    """``n`` dataset metadata equal to the default ``MapDatasetMetaData()``.

    Each dataset gets its own metadata objects (the constructor default
    deep-copies a class-level creation record); only immutable values and the
    creation time, an `~astropy.time.Time` that gammapy replaces rather than
    modifies, are shared. The copies are set in the pydantic model's
    ``__dict__`` (no validation: they are copies of validated values).
    """
    prototype = MapDatasetMetaData()
    shared = (type(None), str, int, float, bool)
    owned = [(field, value) for field, value in prototype if not isinstance(value, shared)]
    metas = []
    for _ in range(n):
        meta = prototype.model_copy()
        for field, value in owned:
            meta.__dict__[field] = (value.model_copy() if isinstance(value, BaseModel)
                                    else copy.deepcopy(value))
        metas.append(meta)
    return metas
