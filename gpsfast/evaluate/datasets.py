"""`FastMapDataset` and `FastDatasets`: gammapy datasets with the compiled likelihood.

`fast_dataset` / `fast_datasets` make them from gammapy datasets (sharing maps and
models); `npred_signal` is gammapy's ``MapDataset.npred_signal`` with the fast IRF
kernels of `gpsfast.irf.fast_irfs`.
"""
from gammapy.datasets import Datasets, MapDataset
from gammapy.maps import Map
from gammapy.modeling import Parameter

from gpsfast import _compat, twins
from gpsfast.errors import InputError
from gpsfast.evaluate.engine import cash_stat_sum, fast_stat_supported, signal_array
from gpsfast.evaluate.source import parameter_names
from gpsfast.irf import fast_irfs

__all__ = ["FastDatasets", "FastMapDataset", "fast_dataset", "fast_datasets", "npred_signal"]


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
        data = signal_array(self, self._fast_states(), model_names)
        return Map.from_geom(_compat.dataset_geom(self), data=data)

    def stat_sum(self):
        """Total fit statistic, as `~gammapy.datasets.MapDataset.stat_sum` (Cash: compiled).

        Returns
        -------
        stat : float
        """
        if not fast_stat_supported(self):
            return super().stat_sum()
        return cash_stat_sum(self, self._fast_states())


def fast_dataset(dataset):
    """`FastMapDataset` sharing the maps, models and evaluators of a `~gammapy.datasets.MapDataset`.

    The PSF and energy dispersion maps are swapped for their twins, `FastPSFMap`
    and `FastEDispKernelMap` sharing the same data (`gpsfast.twins`). The new dataset has its own
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
    return _twin(dataset)


def _twin(dataset):
    """The `FastMapDataset` twin of a MapDataset (`fast_dataset`)."""
    fast = _compat.copy_as(dataset, FastMapDataset)
    fast.__dict__.pop("_fast_sources", None)
    _compat.set_dataset_evaluators(fast, dict(_compat.dataset_evaluators(dataset)))
    fast.psf = twins.fast_or_same(dataset.psf)
    fast.edisp = twins.fast_or_same(dataset.edisp)
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
            ids.extend(id(par) for par in _compat.parameter_objects(sub, parameter_names(type(sub))))
    return tuple(ids)


_SIMPLE_TYPES = {}


def _is_simple(cls):
    """Whether a model class keeps all its parameters as its own named Parameter attributes."""
    simple = _SIMPLE_TYPES.get(cls)
    if simple is None:
        names = parameter_names(cls)
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


twins.register(MapDataset, FastMapDataset, _twin)
