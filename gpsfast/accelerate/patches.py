"""The gammapy methods of the drop-in mode: installed once, gated per context, removed when unused.

`install` puts one gated method on each attribute of the table in `_patch_table`
(the first time the mode is entered, or when another patcher has since removed
one); each runs gpsfast's code where the gate of `gpsfast.accelerate.gate` is
open and for objects of exactly gammapy's class, and gammapy's method (the
attribute it replaced) everywhere else. `uninstall` (when no context is in the
mode any more) puts back the replaced attribute where the gated method is still
the class attribute, and leaves alone an attribute someone else has set since.

The models and IRF maps run their twins (`gpsfast.twins`), kept per object here
while the mode is in use; plain datasets run the engine of
`gpsfast.evaluate.FastMapDataset` with cached pieces kept per dataset.
"""
import functools
import logging
import threading
import weakref

from gammapy.datasets import MapDataset
from gammapy.irf import EDispKernelMap, PSFKernel, PSFMap
from gammapy.maps import Map, WcsGeom, WcsNDMap
from gammapy.modeling.models import GeneralizedGaussianSpatialModel as GammapyModel
from gammapy.modeling.models import SkyModel

from gpsfast import _compat, twins
from gpsfast.accelerate import gate, geometry
from gpsfast.evaluate.engine import cash_stat_sum, fast_stat_supported, signal_array
from gpsfast.irf import convolve
from gpsfast.models.sersic import GeneralizedGaussianSpatialModel as FastModel

__all__ = ["install", "installed", "uninstall"]

log = logging.getLogger(__name__)

_ABSENT = object()
_GENERALIZED_GAUSSIAN_PARAMETERS = ("lon_0", "lat_0", "r_0", "eta", "e", "phi")

# (class, name, gated attribute) of the patches in place
_INSTALLED = []
# id(gated attribute) -> (gated attribute, the attribute it replaced), for those that may still be on a class
_GATED = {}
_TWINS = weakref.WeakKeyDictionary()
_DATASET_STATES = weakref.WeakKeyDictionary()
_CACHE_LOCK = threading.Lock()


def installed():
    """(class, name) of the gated methods in place."""
    return [(cls, name) for cls, name, attribute in _INSTALLED if cls.__dict__.get(name, _ABSENT) is attribute]


def install():
    """Put the gated methods on gammapy's classes where they are not (callers hold the mode's lock)."""
    if _INSTALLED and len(installed()) == len(_INSTALLED):
        return
    _INSTALLED.clear()
    for cls, name, make in _patch_table():
        current = cls.__dict__.get(name, _ABSENT)
        if id(current) in _GATED and _GATED[id(current)][0] is current:
            # one of ours, left by another patcher's undo: it defers to gammapy outside the mode
            _INSTALLED.append((cls, name, current))
            continue
        attribute = make()
        _GATED[id(attribute)] = (attribute, current)
        setattr(cls, name, attribute)
        _INSTALLED.append((cls, name, attribute))
    log.debug("gpsfast drop-in mode: %d gammapy attributes gated", len(_INSTALLED))


def uninstall():
    """Put back gammapy's attributes where the gated ones are still in place; drop the caches."""
    for cls, name, attribute in reversed(_INSTALLED):
        if cls.__dict__.get(name, _ABSENT) is not attribute:
            continue  # another patcher's attribute: theirs to undo (ours stays known, to be adopted again)
        previous = _GATED.pop(id(attribute))[1]
        if previous is _ABSENT:
            delattr(cls, name)
        else:
            setattr(cls, name, previous)
    _INSTALLED.clear()
    with _CACHE_LOCK:
        _TWINS.clear()
        _DATASET_STATES.clear()
    geometry.clear_caches()
    log.debug("gpsfast drop-in mode off: gammapy restored")


def _patch_table():
    """(class, attribute name, function making the gated attribute) of the drop-in mode."""
    def model_twin(model):
        return _twin(model, (model.frame, *_compat.parameter_objects(model, _GENERALIZED_GAUSSIAN_PARAMETERS)))

    def irf_twin(irf):
        return _twin(irf, _irf_key(irf))

    def on_twin(get_twin, name):
        def run(original, obj, *args, **kwargs):
            return getattr(get_twin(obj), name)(*args, **kwargs)
        return run

    table = [
        (GammapyModel, "evaluate_geom", on_twin(model_twin, "evaluate_geom")),
        (GammapyModel, "integrate_geom", on_twin(model_twin, "integrate_geom")),
        (PSFMap, "get_psf_kernel", on_twin(irf_twin, "get_psf_kernel")),
        (EDispKernelMap, "get_edisp_kernel", on_twin(irf_twin, "get_edisp_kernel")),
        (WcsNDMap, "convolve", _convolve),
        (WcsGeom, "cutout_slices", _cutout_slices),
        (SkyModel, "contributes", _contributes),
        (WcsGeom, "cutout", _cutout),
        (MapDataset, "npred_signal", _npred_signal),
        (MapDataset, "stat_sum", _stat_sum),
    ]
    return [(GammapyModel, "evaluate", lambda: _gated_evaluate(GammapyModel, FastModel))] + [
        (cls, name, functools.partial(_gated, cls, name, fast)) for cls, name, fast in table
    ]


def _original(cls, name):
    """Function calling ``cls``'s current ``name`` (its own or the inherited one) on an object."""
    raw = cls.__dict__.get(name, _ABSENT)
    if raw is _ABSENT:
        def call(self, *args, **kwargs):
            return getattr(super(cls, self), name)(*args, **kwargs)
        return call, getattr(cls, name)
    return raw, raw


def _gated(cls, name, fast):
    """``cls.name`` running ``fast(original, self, ...)`` inside the mode for objects of exactly ``cls``."""
    original, wrapped = _original(cls, name)

    @functools.wraps(wrapped)
    def method(self, *args, **kwargs):
        if gate.DEPTH.get() and type(self) is cls:
            return fast(original, self, *args, **kwargs)
        return original(self, *args, **kwargs)

    return method


def _gated_evaluate(cls, fast_cls):
    """Static ``evaluate`` running gpsfast's compiled one inside the mode.

    gpsfast's ``evaluate`` falls back to ``cls.evaluate`` where its kernel does not
    apply: a re-entrant call (per thread) runs gammapy's original.
    """
    original = cls.__dict__["evaluate"].__func__
    fast = fast_cls.__dict__["evaluate"].__func__
    inside = threading.local()

    @functools.wraps(original)
    def evaluate(lon, lat, lon_0, lat_0, r_0, eta, e, phi):
        if not gate.DEPTH.get() or getattr(inside, "active", False):
            return original(lon, lat, lon_0, lat_0, r_0, eta, e, phi)
        inside.active = True
        try:
            return fast(lon, lat, lon_0, lat_0, r_0, eta, e, phi)
        finally:
            inside.active = False

    return staticmethod(evaluate)


# ----------------------------------------------------------------------------
# twins of models and IRF maps
# ----------------------------------------------------------------------------
def _irf_key(irf):
    """What an IRF-map twin depends on: the maps and their data arrays (by identity)."""
    irf_map, exposure = _compat.irf_map(irf), irf.exposure_map
    return (irf_map, irf_map.data, exposure, None if exposure is None else exposure.data)


def _same(key, other):
    return len(key) == len(other) and all(
        a is b or (isinstance(a, str) and a == b) for a, b in zip(key, other)
    )


def _twin(obj, key):
    """The twin of ``obj`` (`gpsfast.twins`), made again when ``key`` (compared by identity) changed."""
    with _CACHE_LOCK:
        entry = _TWINS.get(obj)
    if entry is not None and _same(entry[0], key):
        return entry[1]
    twin = twins.fast_twin(obj)
    with _CACHE_LOCK:
        _TWINS[obj] = (key, twin)
    return twin


def _dataset_states(dataset):
    """The cached evaluation pieces of a plain dataset in the mode (dropped when it ends)."""
    with _CACHE_LOCK:
        states = _DATASET_STATES.get(dataset)
        if states is None:
            states = {}
            _DATASET_STATES[dataset] = states
    return states


# ----------------------------------------------------------------------------
# the fast methods: fast(original, self, ...) as gammapy's method
# ----------------------------------------------------------------------------
def _convolve(original, sky_map, kernel, method="fft", mode="same"):
    """`gpsfast.irf.convolve_psf` for PSF kernels (FFT, "same" mode), else gammapy's ``convolve``."""
    if method == "fft" and mode == "same" and isinstance(kernel, PSFKernel):
        result = convolve.convolve_psf(sky_map, kernel)
        if result is not None:
            return result
    return original(sky_map, kernel, method=method, mode=mode)


def _cutout_slices(original, geom, parent, mode="partial"):
    """gammapy's ``cutout_slices``, kept per pair of image geometries (`geometry.cutout_slices`)."""
    result = geometry.cutout_slices(geom, parent, mode, original) if type(parent) is WcsGeom else None
    return original(geom, parent, mode=mode) if result is None else result


def _cutout(original, geom, position, width, mode="trim", odd_npix=False, min_npix=1):
    """``Cutout2D``'s "trim" geometry without the cutout array (`geometry.trim_cutout`)."""
    if mode == "trim":
        result = geometry.trim_cutout(geom, position, width, odd_npix, min_npix)
        if result is not None:
            return result
    return original(geom, position, width, mode=mode, odd_npix=odd_npix, min_npix=min_npix)


def _contributes(original, model, mask, margin="0 deg"):
    """The mask cutout's slices, no cutout built (`geometry.mask_cutout_any`)."""
    result = geometry.mask_cutout_any(model, mask, margin)
    return original(model, mask, margin=margin) if result is None else result


def _npred_signal(original, dataset, model_names=None, stack=True):
    """`gpsfast.evaluate.FastMapDataset`'s evaluation of the stacked npred."""
    if not stack:
        return original(dataset, model_names=model_names, stack=stack)
    data = signal_array(dataset, _dataset_states(dataset), model_names)
    return Map.from_geom(_compat.dataset_geom(dataset), data=data)


def _stat_sum(original, dataset):
    """`gpsfast.evaluate.FastMapDataset`'s compiled Cash statistic."""
    if not fast_stat_supported(dataset):
        return original(dataset)
    return cash_stat_sum(dataset, _dataset_states(dataset))
