"""gammapy `~gammapy.modeling.models.Models` for big model files, in memory linear in the number of sources.

gammapy's ``DatasetModels.__init__`` builds the dense covariance matrix of *all*
parameters (``Covariance(self.parameters)``: ``np.diag`` of ``n_par x n_par``
floats), and ``SkyModel.__init__`` checks units by evaluating every model on a
small WCS geometry (``SkyModel._check_unit``, ~20 ms a source). A 2,000-source
file (~10,000 parameters) then needs an 800 MB matrix and ~40 s. Here:

- `BlockCovariance` is a gammapy `~gammapy.modeling.covariance.Covariance` that
  stays block diagonal (the per-model blocks gammapy sets) until someone needs
  the full matrix (``.data``); sub-covariances of a few parameters are answered
  from the blocks. A dense matrix over `MAX_DENSE_COVARIANCE_BYTES` is refused
  with an `~gpsfast.errors.InputError` before the machine runs out of memory.
- `build_models` makes a normal gammapy ``Models`` with that covariance.
- `build_sky_model` makes a normal ``SkyModel`` after a cheap unit check of its own.

The objects returned are gammapy's own classes (``type(models) is Models``);
``to_yaml``, ``covariance`` when asked, fitting and model editing behave as in
gammapy. The gammapy internals this needs are reached through `gpsfast._compat`
(`~gpsfast._compat.new_models`, `~gpsfast._compat.init_with_shadows`, ...).
"""
import collections
import logging
from pathlib import Path

import numpy as np
import astropy.units as u
from astropy.time import Time
from gammapy.modeling import Parameter, Parameters
from gammapy.modeling.covariance import Covariance
from gammapy.modeling.models import SkyModel, TemplateSpatialModel

from .. import _compat
from ..errors import InputError

__all__ = [
    "BlockCovariance",
    "build_component",
    "build_models",
    "build_sky_model",
    "models_from_dict",
    "MAX_DENSE_COVARIANCE_BYTES",
]

log = logging.getLogger(__name__)

#: Largest dense covariance matrix (bytes) `BlockCovariance` builds when the full matrix is asked for.
MAX_DENSE_COVARIANCE_BYTES = 4 * 2**30


class BlockCovariance(Covariance):
    """Covariance kept as per-model blocks until the full matrix is needed.

    Behaves as gammapy's `~gammapy.modeling.covariance.Covariance` of the same
    parameters: ``data`` gives the same dense matrix gammapy would hold (built
    on first use), ``get_subcovariance`` and ``set_subcovariance`` give and set
    the same values; before ``data`` is used, memory is linear in the number of
    parameters.

    Parameters
    ----------
    parameters : `~gammapy.modeling.Parameters`
        All parameters (as ``Models.parameters``).
    """

    def __init__(self, parameters):
        self.parameters = parameters
        self._data = None
        # gammapy starts from diag(error^2)
        self._variance = np.array([p.error**2 for p in parameters], dtype=float)
        self._owner = np.full(len(parameters), -1, dtype=np.int64)
        self._blocks = {}
        self._index = None

    def __getstate__(self):
        # the position index is keyed by parameter ids: rebuilt after a copy or unpickling
        state = self.__dict__.copy()
        state["_index"] = None
        return state

    @property
    def is_dense(self):
        """Whether the full matrix has been built."""
        return self._data is not None

    def _positions(self, parameters):
        if self._index is None:
            index = {}
            for i, par in enumerate(self.parameters):
                index.setdefault(id(par), i)
            self._index = index
        try:
            return np.array([self._index[id(par)] for par in parameters], dtype=np.int64)
        except KeyError:
            raise ValueError("parameter is not in this covariance") from None

    def _densify(self):
        n = len(self.parameters)
        needed = 8 * n * n
        if needed > MAX_DENSE_COVARIANCE_BYTES:
            raise InputError(
                f"the covariance of {n} parameters needs {needed / 2**30:.1f} GiB as one dense matrix "
                f"(limit {MAX_DENSE_COVARIANCE_BYTES / 2**30:.1f} GiB, "
                "gpsfast.models.bulk.MAX_DENSE_COVARIANCE_BYTES): use each model's covariance "
                "(models[name].covariance) or a subset of the models"
            )
        data = np.diag(self._variance)
        for idx, block in self._blocks.values():
            data[np.ix_(idx, idx)] = block
        self._data = data
        self._blocks = {}

    @property
    def data(self):
        """The dense covariance matrix (built on first use)."""
        if self._data is None:
            self._densify()
        return self._data

    @data.setter
    def data(self, value):
        value = np.asanyarray(value)
        n = len(self.parameters)
        if value.shape != (n, n):
            raise ValueError(f"Invalid covariance shape: {value.shape}, expected {(n, n)}")
        self._data = value
        self._blocks = {}

    def get_subcovariance(self, parameters):
        """Sub-covariance of ``parameters`` (from the blocks while the matrix is not dense)."""
        idx = self._positions(parameters)
        if self._data is not None:
            return Covariance(parameters=parameters, data=self._data[np.ix_(idx, idx)])
        data = np.diag(self._variance[idx])
        owners = self._owner[idx]
        for owner in set(owners[owners >= 0].tolist()):
            block_idx, block = self._blocks[owner]
            where = {pos: k for k, pos in enumerate(block_idx.tolist())}
            rows = np.nonzero(owners == owner)[0]
            local = np.array([where[p] for p in idx[rows]])
            data[np.ix_(rows, rows)] = block[np.ix_(local, local)]
        return Covariance(parameters=parameters, data=data)

    def set_subcovariance(self, covar):
        """Set the sub-covariance of ``covar.parameters`` as gammapy does.

        gammapy zeroes the rows and columns of those parameters when the block
        changes; with disjoint blocks that is replacing the block, so the
        blocks are kept apart. A block overlapping another one only in part
        builds the dense matrix first.
        """
        idx = self._positions(covar.parameters)
        new = np.asarray(covar.data, dtype=float)
        if self._data is None:
            owners = set(self._owner[idx].tolist())
            key = int(idx[0]) if len(idx) else -1
            if owners == {-1} or (owners == {key} and np.array_equal(self._blocks[key][0], idx)):
                self._owner[idx] = key
                self._blocks[key] = (idx, new.copy())
                return
            self._densify()
        data = self._data
        if not np.allclose(data[np.ix_(idx, idx)], new):
            data[idx, :] = 0
            data[:, idx] = 0
        data[np.ix_(idx, idx)] = new


def build_models(models):
    """gammapy ``Models`` of ``models`` without the dense covariance of all parameters.

    Parameters
    ----------
    models : list of `~gammapy.modeling.models.SkyModel` / `~gammapy.modeling.models.FoVBackgroundModel`
        Models with unique names.

    Returns
    -------
    models : `~gammapy.modeling.models.Models`
        A plain gammapy ``Models`` whose covariance is a `BlockCovariance`
        (`gpsfast._compat.new_models`).
    """
    models = list(models)
    counts = collections.Counter(m.name for m in models)
    dupes = sorted(name for name, n in counts.items() if n > 1)
    if dupes:
        raise InputError(f"duplicate model names: {', '.join(dupes)}")
    return _compat.new_models(models, BlockCovariance(Parameters.from_stack([m.parameters for m in models])))


def models_from_dict(data, path=""):
    """gammapy ``Models.from_dict`` without the dense covariance, keeping referenced file names absolute.

    As gammapy's: classes from ``gammapy.modeling.models.MODEL_REGISTRY``, file
    names completed (`gpsfast._compat.update_filenames`), model links such as
    ``link: shared-index`` (`gpsfast._compat.link_models`). Unlike gammapy, a
    file found next to the YAML file keeps its full path, so the models can be
    written again from any working directory.

    Parameters
    ----------
    data : dict
        Parsed YAML (``components`` and optionally ``covariance``).
    path : str or `~pathlib.Path`
        Folder the file names are relative to.

    Returns
    -------
    models : `~gammapy.modeling.models.Models`
    """
    from gammapy.modeling.models import MODEL_REGISTRY
    from gammapy.utils.scripts import make_path

    path = make_path(path)
    models = []
    for component in data["components"]:
        model_cls = MODEL_REGISTRY.get_cls(component["type"])
        _compat.update_filenames(component, path)
        models.append(model_cls.from_dict(component))
    models = build_models(models)
    if "covariance" in data:
        filename = Path(str(data["covariance"]))
        folder, name = (path, str(filename)) if (path / filename).exists() else (filename.parent, filename.name)
        try:
            models.read_covariance(folder, name, format="ascii.fixed_width")
        except ValueError as exc:
            log.warning("covariance file %s not read (%s): covariance from the parameter errors", filename, exc)
    _compat.link_models(models)
    return models


class _SharedParameters(Parameters):
    """Parameters whose ``copy`` is shallow: used while every default is replaced by a given parameter."""

    def copy(self):
        return Parameters(list(self))


def _plain_init(cls):
    from gammapy.modeling.models import SpatialModel, SpectralModel, TemporalModel
    from gammapy.modeling.models.core import ModelBase

    return cls.__init__ in (ModelBase.__init__, SpatialModel.__init__, SpectralModel.__init__,
                            TemporalModel.__init__)


def build_component(cls, **kwargs):
    """A gammapy spectral / spatial / temporal model, without copying the class defaults it does not use.

    ``ModelBase.__init__`` deep-copies all the class's default parameters
    (~0.2 ms a model) and then drops the copies of the parameters given.
    When every parameter is given as a `~gammapy.modeling.Parameter` and the
    class keeps gammapy's ``__init__``, the copy is skipped; otherwise this
    is ``cls(**kwargs)``. An instance attribute ``default_parameters`` (the
    defaults, not copied) shadows the class's during ``__init__``
    (`gpsfast._compat.init_with_shadows`).

    Returns
    -------
    model : ``cls``
    """
    defaults = cls.default_parameters
    if not _plain_init(cls) or not all(isinstance(kwargs.get(name), Parameter) for name in defaults.names):
        return cls(**kwargs)
    return _compat.init_with_shadows(cls, {"default_parameters": _SharedParameters(list(defaults))}, **kwargs)


_CHECK_TIME = Time(55555, format="mjd")
_CHECK_ENERGY = 1 * u.TeV
_DIFF_FLUX = u.Unit("cm-2 s-1 MeV-1")


def _unit_is_checked_here(spatial_model, temporal_model):
    """Whether `build_sky_model` can check the units itself (analytic spatial model, dimensionless temporal)."""
    if isinstance(spatial_model, TemplateSpatialModel):
        return False
    if temporal_model is None:
        return True
    return u.Quantity(temporal_model(_CHECK_TIME)).unit.is_equivalent(u.one)


def build_sky_model(spectral_model, spatial_model=None, temporal_model=None, name=None, datasets_names=None):
    """A gammapy ``SkyModel`` built without gammapy's per-model WCS evaluation of the units.

    The unit check here is the same as gammapy's for an analytic spatial model
    (surface brightness in sr-1) and a dimensionless temporal model: the
    spectrum at 1 TeV must be a differential flux. Other combinations (map
    templates, foreign temporal models) go through gammapy's own check
    (`gpsfast._compat.sky_model_without_unit_check` otherwise).

    Returns
    -------
    model : `~gammapy.modeling.models.SkyModel`
    """
    kwargs = dict(spectral_model=spectral_model, spatial_model=spatial_model, temporal_model=temporal_model,
                  name=name, datasets_names=datasets_names)
    if not _unit_is_checked_here(spatial_model, temporal_model):
        return SkyModel(**kwargs)
    unit = u.Quantity(spectral_model(_CHECK_ENERGY)).unit
    if not unit.is_equivalent(_DIFF_FLUX):
        raise ValueError(f"SkyModel unit {unit} is not equivalent to cm-2 s-1 MeV-1")
    return _compat.sky_model_without_unit_check(**kwargs)
