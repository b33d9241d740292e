"""What a worker gets to fit one group: cutouts of the datasets, the models they need, and what it sends back.

Only a `GroupTask` is shipped to a worker: cutouts of the datasets (made in the
parent, cheap), copies of the group's models and the outer models that reach
the cutout; the worker computes their npred template (`GroupTask.make_datasets`),
the expensive part of the set-up, so that the parent process stays free to
dispatch. It pickles with pickle and cloudpickle.
"""
import logging
from dataclasses import asdict, dataclass, field

import numpy as np
from astropy.nddata import NoOverlapError
from gammapy.datasets import Datasets
from gammapy.modeling import Fit
from gammapy.modeling.models import Models, SkyModel, TemplateNPredModel, TemplateSpatialModel

from ..errors import InputError
from ..evaluate import npred_signal
from ..irf import fast_irfs
from ..modeling import applies_to as _applies
from .grouping import Group

__all__ = ["GroupResult", "GroupTask", "make_group_task", "run_fit"]

log = logging.getLogger("gpsfast.groups")


@dataclass
class GroupTask:
    """What a worker needs to fit one group: cutouts of the datasets and the models they need.

    The cutouts are made where the task is built (map slices, cheap); the
    expensive part, the npred of the sources outside the group, is computed by
    `make_datasets` in the worker.

    Attributes
    ----------
    group : `Group`
    iteration : int
    cutouts : list of `~gammapy.datasets.MapDataset`
        Cutouts (same names as the full datasets) of the datasets the group
        overlaps, without models.
    members : list of `~gammapy.modeling.models.SkyModel`
        The group's models, copied by `make_datasets` (the fit changes the copies).
    backgrounds : dict
        ``{dataset name: [models]}``: the background models of each cutout
        (npred templates cut out as the dataset).
    outer : dict
        ``{dataset name: [models]}``: the sources outside the group that may add
        counts to each cutout (and diffuse models).
    fit_function : callable
        ``fit_function(datasets, optimize_opts)`` returning a gammapy ``FitResult``.
    release : bool
        Release the main source's shape parameters (first attempt only).
    safe : bool
        Start directly with the safe settings (after a worker died on this group).
    """

    group: Group
    iteration: int
    cutouts: list
    members: list
    backgrounds: dict
    outer: dict
    fit_function: object
    release: bool = True
    safe: bool = False

    def make_datasets(self):
        """The cutouts with their models, ready to fit.

        Each cutout gets copies of the group's members (one copy shared by all
        cutouts), its backgrounds and, when sources outside the group reach it,
        their npred as one frozen `~gammapy.modeling.models.TemplateNPredModel`
        named ``<dataset>-outer-sources``. Each call makes new copies of the
        members.

        Returns
        -------
        datasets : `~gammapy.datasets.Datasets`
        """
        datasets = Datasets()
        copies = [_copy_model(m) for m in self.members]
        for cutout in self.cutouts:
            name = cutout.name
            outer = self.outer[name]
            templates = [_outer_template(cutout, outer)] if outer else []
            members = [m for m in copies if _applies(m, name)]
            cutout.models = Models([*members, *self.backgrounds[name], *templates])
            datasets.append(cutout)
        return datasets


@dataclass
class GroupResult:
    """Result of one group fit (JSON-serialisable through `to_dict`).

    Attributes
    ----------
    index, key : int, str
        The group's `Group.index` and `Group.key`.
    iteration : int
    names : tuple of str
        Member sources.
    main : str
        Main source.
    success : bool
        Whether a fit attempt converged.
    stat : float
        Total fit statistic of the cutouts (NaN when every attempt raised).
    n_free : int
        Number of free parameters of the last attempt.
    time : float
        Wall time of the attempts in the worker (s).
    attempts : int
        Fit attempts, including one whose worker died.
    message : str
        What went wrong in each failed attempt; empty after a clean first fit.
    parameters : dict
        ``{model name: {parameter name: [value, error]}}``; empty on failure.
    """

    index: int
    key: str
    iteration: int
    names: tuple
    main: str
    success: bool
    stat: float
    n_free: int
    time: float
    attempts: int
    message: str
    parameters: dict = field(default_factory=dict)

    def to_dict(self):
        """Plain dictionary (JSON types) of the result."""
        data = asdict(self)
        data["names"] = list(self.names)
        return data

    @classmethod
    def from_dict(cls, data):
        """Result from a dictionary written by `to_dict`."""
        data = dict(data)
        data["names"] = tuple(data["names"])
        return cls(**data)


def _copy_model(model):
    return model.copy(name=model.name)


def _outer_models(models, group, reach):
    """Models outside the group that may add counts to its cutout."""
    outer = []
    for model in models:
        if not isinstance(model, SkyModel) or model.name in group.names:
            continue
        spatial = model.spatial_model
        if spatial is None or isinstance(spatial, TemplateSpatialModel):
            outer.append(model)
            continue
        radius = spatial.evaluation_radius
        radius = 0 if radius is None else radius.to_value("deg")
        if group.center.separation(model.position).deg < reach + radius:
            outer.append(model)
    return outer


def _cut_background(model, group):
    """Copy of a background model; npred templates get their map cut out as the datasets."""
    if not isinstance(model, TemplateNPredModel):
        return _copy_model(model)
    npred = model.map.cutout(position=group.center, width=group.width, mode="trim")
    return TemplateNPredModel(npred, spectral_model=model.spectral_model.copy(), name=model.name,
                              datasets_names=model.datasets_names)


def _outer_template(cutout, outer):
    """Frozen npred template of the outer sources on a cutout."""
    cutout.models = Models(outer)
    npred = npred_signal(cutout, model_names=[m.name for m in outer])
    template = TemplateNPredModel(npred, name=f"{cutout.name}-outer-sources", datasets_names=[cutout.name])
    template.spectral_model.norm.frozen = True
    return template


def make_group_task(datasets, models, group, iteration=0, fit_function=None, release=True):
    """Build the `GroupTask` of a group: cutouts of every dataset and the models they need.

    Only map slices and model selections are done here; the outer sources'
    npred is computed where the task runs (`GroupTask.make_datasets`).

    Parameters
    ----------
    datasets : `~gammapy.datasets.Datasets`
        Full datasets (MapDataset).
    models : `~gammapy.modeling.models.Models`
        All models (sources, backgrounds, diffuse).
    group : `Group`
    iteration : int, optional
    fit_function : callable, optional
        ``fit_function(datasets, optimize_opts)``; default `run_fit`.
    release : bool, optional
        Release the main source's shape parameters in the fit. Default True.

    Returns
    -------
    task : `GroupTask`
    """
    members = [models[name] for name in group.names]
    around = _outer_models(models, group, reach=group.width.deg / np.sqrt(2) + 1.0)
    cutouts, backgrounds, outer = [], {}, {}
    for dataset in datasets:
        try:
            cutout = dataset.cutout(position=group.center, width=group.width, mode="trim", name=dataset.name)
        except NoOverlapError:
            log.debug("group %d does not overlap dataset %s", group.index, dataset.name)
            continue
        cutouts.append(cutout)
        backgrounds[dataset.name] = [
            _cut_background(m, group) for m in models if not isinstance(m, SkyModel) and _applies(m, dataset.name)
        ]
        outer[dataset.name] = [m for m in around if _applies(m, dataset.name)]
    if not cutouts:
        raise InputError(f"group {group.index} {list(group.names)}: its cutout is outside every dataset")
    return GroupTask(group, iteration, cutouts, members, backgrounds, outer, fit_function or run_fit, release)


def run_fit(datasets, optimize_opts=None):
    """Default fit of a group: gammapy ``Fit`` (minuit) with the fast IRF kernels.

    Parameters
    ----------
    datasets : `~gammapy.datasets.Datasets`
    optimize_opts : dict, optional
        Minuit options.

    Returns
    -------
    result : `~gammapy.modeling.FitResult`
    """
    with fast_irfs(datasets):
        return Fit(optimize_opts=optimize_opts or {}).run(datasets)
