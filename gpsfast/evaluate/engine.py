"""The likelihood engine of `FastMapDataset`: per-source npred blocks, their sum, the Cash statistic.

Functions of a dataset and a ``states`` dictionary holding each source's cached
pieces (`gpsfast.evaluate.source.SourceNpred`), the stacked npred of the models
gammapy evaluates itself and the background prediction. `FastMapDataset` keeps
``states`` on the dataset; the drop-in mode (`gpsfast.accelerated`) keeps one per
plain gammapy dataset.
"""
import numpy as np
import astropy.units as u
from gammapy.maps import Map

from gpsfast import _compat
from gpsfast.evaluate.source import SourceNpred, components, fast_source_supported, parameter_state
from gpsfast.kernels.cash import cash_sum_masked

__all__ = ["cash_stat_sum", "fast_stat_supported", "signal_array", "signal_blocks"]


def signal_blocks(dataset, states, model_names=None):
    """Predicted signal counts of ``dataset`` as blocks; ``states`` keeps the sources' pieces.

    gammapy's ``MapDataset.npred_signal(model_names, stack=True)`` before the
    sum: the evaluators are updated as gammapy does (mask image computed once),
    supported sources go through `SourceNpred`, the others through their
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
            state = SourceNpred(evaluator)
            states[name] = state
        if state.needs_update():
            if mask_image is None:
                mask_image = dataset.mask_image
            evaluator.update(dataset.exposure, dataset.psf, dataset.edisp, geom, mask_image)
            state.supported = None
        if not evaluator.contributes:
            continue
        if state.supported is None or state.components != components(evaluator.model):
            state.supported = fast_source_supported(evaluator)
            state.components = components(evaluator.model)
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


def signal_array(dataset, states, model_names=None):
    """Predicted signal counts of ``dataset`` summed on its geometry (float64 array)."""
    total = np.zeros(_compat.dataset_geom(dataset).data_shape)
    for values, (y0, y1, x0, x1, cy0, cx0) in signal_blocks(dataset, states, model_names):
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
        parameter_state(part) for part in parts
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


def cash_stat_sum(dataset, states):
    """gammapy's ``MapDataset.stat_sum`` (Cash): background plus the source blocks, compiled Cash sum."""
    blocks = signal_blocks(dataset, states)
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


def fast_stat_supported(dataset):
    return dataset.stat_type == "cash" and dataset.counts is not None

