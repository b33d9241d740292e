"""Drop-in mode: unmodified gammapy code runs gpsfast's compiled paths.

>>> import gpsfast
>>> with gpsfast.accelerated():          # doctest: +SKIP
...     npred = dataset.npred()
...     result = Fit().run([dataset])

or ``gpsfast.accelerate()`` ... ``gpsfast.deaccelerate()``. Inside, the objects that
plain gammapy code builds (models made before or inside the block, read from YAML,
deep copies, datasets read from disk) compute npred and likelihoods with:

- the compiled generalized Gaussian (Sersic) evaluation of
  `gpsfast.models.GeneralizedGaussianSpatialModel`;
- the PSF kernels of `gpsfast.fit.FastPSFMap` and the energy dispersion kernels
  of `gpsfast.fit.FastEDispKernelMap`;
- the predicted counts and Cash statistic of `gpsfast.fit.FastMapDataset`
  (cached spatial and spectral pieces per source, compiled folding and statistic);

with the same results: npred within 1e-6 of its peak in every bin and 1e-6
relative in total (the Sersic integrals agree to 1e-4 relative, the PSF kernels to
float32 rounding, the convolutions bit for bit), and the same best fits.

What is patched
---------------
While at least one ``accelerate()`` is active, these class attributes are replaced
(and nothing else: class identities, ``gammapy.modeling.models`` names, the model
registries and the YAML tags stay gammapy's):

====================================================  =====================================
gammapy attribute                                     replacement
====================================================  =====================================
``GeneralizedGaussianSpatialModel.evaluate``          gpsfast's compiled ``evaluate``
``GeneralizedGaussianSpatialModel.evaluate_geom``     gpsfast's ``evaluate_geom``
``GeneralizedGaussianSpatialModel.integrate_geom``    gpsfast's ``integrate_geom``
``PSFMap.get_psf_kernel``                             ``FastPSFMap.get_psf_kernel``
``EDispKernelMap.get_edisp_kernel``                   ``FastEDispKernelMap.get_edisp_kernel``
``WcsNDMap.convolve``                                 `convolve_psf` for a `~gammapy.irf.PSFKernel`
                                                      (``method="fft"``, ``mode="same"``)
``WcsGeom.cutout_slices``                             gammapy's, kept per pair of image geometries;
                                                      from the reference-pixel shift for cutouts
``WcsGeom.cutout`` (``mode="trim"``)                  ``Cutout2D``'s geometry without the array
``SkyModel.contributes``                              the mask cutout's slices, no cutout built
``MapDataset.npred_signal`` (``stack=True``)          `gpsfast.fit.FastMapDataset`'s evaluation
``MapDataset.stat_sum`` (Cash)                        `gpsfast.fit.FastMapDataset`'s statistic
====================================================  =====================================

The methods run on a *twin*: a gpsfast object sharing the gammapy object's
`~gammapy.modeling.Parameter` objects (models) or maps (IRFs), made at the first
call and kept while the mode is on; it is made again when the parameters, the
frame or the maps (or their data arrays) are replaced. Only objects of exactly
gammapy's class are switched: subclasses (which may override the formulas), and
gpsfast's own classes, run their own methods. ``evaluate`` (a static method) is the
compiled one for every class that inherits it, with the same results.

``WcsNDMap.convolve`` with a PSF kernel (what ``MapEvaluator.apply_psf`` calls)
runs `convolve_psf`: gammapy's FFT convolution of every energy plane, batched,
with the Fourier transform of the image done once for all planes (gammapy
transforms the same image once per plane) and the kernel's transform kept per
kernel object; same FFT lengths, dtypes and cropping as ``scipy.signal.convolve``.
Other kernels, methods and modes run gammapy's ``convolve``.

``WcsGeom.cutout_slices`` (run by ``Map.stack`` for every source at every
likelihood call, through sky coordinates) depends only on the two image
geometries (WCS parameters and shapes) and the mode: gammapy's result is kept
per such key (geometries with WCS distortions, or irregular ones, are not kept).

``WcsGeom.cutout`` in "trim" mode (what ``MapEvaluator`` runs for the exposure
cutout of every source) builds the cutout geometry as ``Cutout2D`` does (same
pixel position, size rounding and slices; the parent WCS with the reference
pixel moved) without the ``Cutout2D`` machinery; ``SkyModel.contributes`` finds
the mask pixels of that cutout the same way. Positions in another frame than the
geometry's, and WCS with distortions, run gammapy's code.

``MapDataset.npred_signal`` and ``stat_sum`` of plain MapDatasets run the
evaluation of `gpsfast.fit.FastMapDataset` (gammapy's evaluators still decide
when cutouts and kernels are updated); its cached pieces are kept per dataset
while the mode is on (counts and masks are read at every call; the background
map, like gammapy's own ``npred_background`` cache, is read again when the
background parameters change or the map is replaced).

Patching the methods rather than the class names means that models created
before the block, or with a class imported before it (the usual
``from gammapy.modeling.models import ...`` at the top of a script), are
accelerated too, that ``type(model)`` and ``isinstance`` checks are unchanged,
and that YAML written inside is plain gammapy YAML.

Scope and restoring
-------------------
The mode is process-wide (all threads see it while it is on); calls nest and
are counted under a lock, and the outermost exit puts back the exact previous
class attributes (the same objects; attributes that were inherited are removed
again), also when the block raises, and drops the twins. IRF map data changed in
place inside the block (``psf.psf_map.data[...] = ...``), rather than replaced,
is not seen by the kernel caches until the block ends; gammapy's own
``stack`` (with its default ``nan_to_num=True``) and ``normalize`` replace the
arrays and are seen.
"""
import contextlib
import functools
import logging
import threading
import weakref

import numpy as np

from gpsfast import _compat
from gpsfast.irf.convolve import convolve_planes, convolve_psf

__all__ = ["accelerate", "accelerated", "convolve_planes", "convolve_psf", "deaccelerate", "is_accelerated"]

log = logging.getLogger(__name__)

_ABSENT = object()
_LOCK = threading.RLock()
_TWIN_LOCK = threading.Lock()
_STATE = {"depth": 0, "saved": None}
_TWINS = weakref.WeakKeyDictionary()
_DATASET_STATES = weakref.WeakKeyDictionary()
_SLICES = {}
_MAX_SLICES = 4096
_GENERALIZED_GAUSSIAN_PARAMETERS = ("lon_0", "lat_0", "r_0", "eta", "e", "phi")


def is_accelerated():
    """Whether the drop-in mode is on (`accelerate` called more often than `deaccelerate`).

    Returns
    -------
    on : bool
    """
    return _STATE["depth"] > 0


def accelerate():
    """Switch the drop-in mode on: gammapy code runs gpsfast's fast paths.

    Calls nest: the mode stays on until `deaccelerate` has been called as often
    as `accelerate`. Prefer the `accelerated` context manager, which also
    restores gammapy when the block raises. See the module docstring for what is
    patched.
    """
    with _LOCK:
        if _STATE["depth"] == 0:
            _STATE["saved"] = _apply(_patches())
            log.debug("gpsfast drop-in mode on: %d gammapy attributes patched", len(_STATE["saved"]))
        _STATE["depth"] += 1


def deaccelerate():
    """Undo one `accelerate`; the last one restores gammapy's exact previous state.

    Raises
    ------
    RuntimeError
        When called more often than `accelerate`.
    """
    with _LOCK:
        if _STATE["depth"] == 0:
            raise RuntimeError("gpsfast.deaccelerate() called without a matching gpsfast.accelerate()")
        _STATE["depth"] -= 1
        if _STATE["depth"] == 0:
            saved, _STATE["saved"] = _STATE["saved"], None
            _restore(saved)
            with _TWIN_LOCK:
                _TWINS.clear()
                _DATASET_STATES.clear()
                _SLICES.clear()
            log.debug("gpsfast drop-in mode off: gammapy restored")


@contextlib.contextmanager
def accelerated():
    """Context manager: unmodified gammapy code inside runs gpsfast's fast paths.

    Same results as plain gammapy (npred to 1e-6 relative); gammapy's classes
    get back their exact previous attributes on exit, also when the block raises.
    Blocks nest. See the module docstring for what is patched.

    Examples
    --------
    >>> from gammapy.modeling import Fit
    >>> with gpsfast.accelerated():           # doctest: +SKIP
    ...     result = Fit().run(datasets)
    """
    accelerate()
    try:
        yield
    finally:
        deaccelerate()


def _apply(patches):
    """Set the patches; returns what to restore (the previous raw class attributes)."""
    saved = []
    try:
        for cls, name, attribute in patches:
            saved.append((cls, name, cls.__dict__.get(name, _ABSENT)))
            setattr(cls, name, attribute)
    except BaseException:
        _restore(saved)
        raise
    return saved


def _restore(saved):
    for cls, name, previous in reversed(saved):
        if previous is _ABSENT:
            delattr(cls, name)
        else:
            setattr(cls, name, previous)


def _patches():
    """(class, attribute name, replacement) of the drop-in mode."""
    from gammapy.datasets import MapDataset
    from gammapy.irf import EDispKernelMap, PSFKernel, PSFMap
    from gammapy.maps import WcsGeom, WcsNDMap
    from gammapy.modeling.models import GeneralizedGaussianSpatialModel as GammapyModel
    from gammapy.modeling.models import SkyModel

    from gpsfast.irf import FastEDispKernelMap, FastPSFMap
    from gpsfast.models.sersic import GeneralizedGaussianSpatialModel as FastModel

    def model_twin(model):
        return _twin(
            model,
            (model.frame, *_compat.parameter_objects(model, _GENERALIZED_GAUSSIAN_PARAMETERS)),
            FastModel.from_gammapy,
        )

    def psf_twin(psf):
        return _twin(psf, _irf_key(psf), FastPSFMap.from_psf_map)

    def edisp_twin(edisp):
        return _twin(edisp, _irf_key(edisp), FastEDispKernelMap.from_edisp_map)

    return [
        (GammapyModel, "evaluate", _evaluate_patch(GammapyModel, FastModel)),
        (GammapyModel, "evaluate_geom", _twin_method(GammapyModel, "evaluate_geom", model_twin)),
        (GammapyModel, "integrate_geom", _twin_method(GammapyModel, "integrate_geom", model_twin)),
        (PSFMap, "get_psf_kernel", _twin_method(PSFMap, "get_psf_kernel", psf_twin)),
        (EDispKernelMap, "get_edisp_kernel", _twin_method(EDispKernelMap, "get_edisp_kernel", edisp_twin)),
        (WcsNDMap, "convolve", _convolve_patch(WcsNDMap, PSFKernel)),
        (WcsGeom, "cutout_slices", _cutout_slices_patch(WcsGeom)),
        (SkyModel, "contributes", _contributes_patch(SkyModel, WcsGeom)),
        (WcsGeom, "cutout", _geom_cutout_patch(WcsGeom)),
        (MapDataset, "npred_signal", _npred_signal_patch(MapDataset)),
        (MapDataset, "stat_sum", _stat_sum_patch(MapDataset)),
    ]


def _irf_key(irf):
    """What an IRF-map twin depends on: the maps and their data arrays (by identity)."""
    irf_map, exposure = _compat.irf_map(irf), irf.exposure_map
    return (irf_map, irf_map.data, exposure, None if exposure is None else exposure.data)


def _same(key, other):
    return len(key) == len(other) and all(
        a is b or (isinstance(a, str) and a == b) for a, b in zip(key, other)
    )


def _twin(obj, key, make):
    """gpsfast twin of ``obj``, made again when ``key`` (compared by identity) changed."""
    entry = _TWINS.get(obj)
    if entry is not None and _same(entry[0], key):
        return entry[1]
    twin = make(obj)
    with _TWIN_LOCK:
        _TWINS[obj] = (key, twin)
    return twin


def _original(cls, name):
    """Function calling ``cls``'s current ``name`` (its own or the inherited one) on an object."""
    raw = cls.__dict__.get(name, _ABSENT)
    if raw is _ABSENT:
        def call(self, *args, **kwargs):
            return getattr(super(cls, self), name)(*args, **kwargs)
        return call, getattr(cls, name)
    return raw, raw


def _twin_method(cls, name, get_twin):
    """Method of ``cls`` running ``name`` on the gpsfast twin for objects of exactly ``cls``."""
    original, wrapped = _original(cls, name)

    @functools.wraps(wrapped)
    def method(self, *args, **kwargs):
        if type(self) is cls:
            return getattr(get_twin(self), name)(*args, **kwargs)
        return original(self, *args, **kwargs)

    return method


def _evaluate_patch(cls, fast_cls):
    """Static ``evaluate`` running gpsfast's compiled one.

    gpsfast's ``evaluate`` falls back to ``cls.evaluate`` where its kernel does not
    apply: a re-entrant call (per thread) runs gammapy's original.
    """
    original = cls.__dict__["evaluate"].__func__
    fast = fast_cls.__dict__["evaluate"].__func__
    inside = threading.local()

    @functools.wraps(original)
    def evaluate(lon, lat, lon_0, lat_0, r_0, eta, e, phi):
        if getattr(inside, "active", False):
            return original(lon, lat, lon_0, lat_0, r_0, eta, e, phi)
        inside.active = True
        try:
            return fast(lon, lat, lon_0, lat_0, r_0, eta, e, phi)
        finally:
            inside.active = False

    return staticmethod(evaluate)


def _cutout_slices_patch(cls):
    """``cutout_slices`` of ``cls`` whose result is kept per (WCS, shape, WCS, shape, mode).

    A geometry that differs from the parent only by an integer shift of the
    reference pixel (what ``cutout`` makes) gets its slices from that shift:
    gammapy finds the parent pixel of the cutout's centre through sky
    coordinates, which lands on the same pixel (to rounding far below the
    half pixel where ``overlap_slices`` rounds).
    """
    original, wrapped = _original(cls, "cutout_slices")

    @functools.wraps(wrapped)
    def cutout_slices(self, geom, mode="partial"):
        if type(self) is not cls or type(geom) is not cls:
            return original(self, geom, mode=mode)
        own, parent = _image_key_parts(self), _image_key_parts(geom)
        if own is None or parent is None:
            return original(self, geom, mode=mode)
        key = own[0] + (own[1].tobytes(),), parent[0] + (parent[1].tobytes(),), mode
        slices = _SLICES.get(key)
        if slices is None:
            slices = _shifted_slices(own, parent, mode)
            if slices is None:
                slices = original(self, geom, mode=mode)
            if len(_SLICES) >= _MAX_SLICES:
                _SLICES.clear()
            _SLICES[key] = slices
        return dict(slices)

    return cutout_slices


def _shifted_slices(own, parent, mode):
    """Cutout slices of a geometry shifted by whole pixels from its parent, else None."""
    from astropy.nddata.utils import overlap_slices

    if own[0][:-1] != parent[0][:-1]:
        return None
    shift = parent[1] - own[1]
    if not np.all(np.abs(shift - np.round(shift)) < 1e-9):
        return None
    shape = own[0][-1]
    # the parent pixel of the cutout's centre pixel, (y, x)
    position = [(n - 1) / 2.0 + offset for n, offset in zip(shape, np.round(shift)[::-1])]
    slices = overlap_slices(
        large_array_shape=parent[0][-1], small_array_shape=shape, position=position, mode=mode
    )
    return {"parent-slices": slices[0], "cutout-slices": slices[1]}


def _geom_cutout_patch(cls):
    """``cutout`` of ``cls`` building ``Cutout2D``'s "trim" geometry without the cutout array."""
    original, wrapped = _original(cls, "cutout")

    @functools.wraps(wrapped)
    def cutout(self, position, width, mode="trim", odd_npix=False, min_npix=1):
        if type(self) is cls and mode == "trim":
            result = _trim_cutout(self, position, width, odd_npix, min_npix)
            if result is not None:
                return result
        return original(self, position, width, mode=mode, odd_npix=odd_npix, min_npix=min_npix)

    return cutout


def _sky_pixel(geom, position):
    """Pixel (x, y) of a scalar SkyCoord on a WCS geometry in its own frame, else None.

    As ``skycoord_to_pixel(position, wcs, mode="all")`` where no frame
    transformation is needed.
    """
    from astropy.coordinates import SkyCoord

    wcs = geom.wcs
    if (
        not isinstance(position, SkyCoord)
        or not position.isscalar
        or position.frame.name != geom.frame
        or geom.frame not in ("galactic", "icrs")
        or wcs.has_distortion
        or wcs.sip is not None
        or (str(wcs.wcs.cunit[0]), str(wcs.wcs.cunit[1])) != ("deg", "deg")
    ):
        return None
    data = position.data
    if not hasattr(data, "lon"):
        return None
    x, y = wcs.all_world2pix(data.lon.deg, data.lat.deg, 0)
    return float(x), float(y)


def _trim_cutout(geom, position, width, odd_npix, min_npix):
    """gammapy's ``WcsGeom.cutout`` in "trim" mode for a plain WCS, else None.

    Same size rule (``Cutout2D``: pixels rounded to the nearest integer, odd
    if asked), same pixel position and ``overlap_slices``; the cutout WCS is the
    parent's with the reference pixel moved by the slice origin, as ``Cutout2D``
    does.
    """
    import copy

    import astropy.units as u
    from astropy.nddata.utils import overlap_slices
    from gammapy.utils.array import round_up_to_odd

    if not geom.is_regular:
        return None
    pix = _sky_pixel(geom, position)
    if pix is None:
        return None
    width = _compat.check_width(width) * u.deg
    width_npix = np.clip((width / geom.pixel_scales).to_value(""), min_npix, None)
    if odd_npix:
        width_npix = round_up_to_odd(width_npix)
    shape = tuple(int(np.round(side)) for side in np.atleast_1d(width_npix)[::-1])
    if len(shape) != 2:
        return None
    large_shape = geom.data_shape[-2:]
    # raises NoOverlapError as Cutout2D does
    slices, _ = overlap_slices(large_shape, shape, pix[::-1], mode="trim")
    wcs = copy.deepcopy(geom.wcs)
    wcs.wcs.crpix -= (slices[1].start, slices[0].start)
    cutout_shape = (slices[0].stop - slices[0].start, slices[1].stop - slices[1].start)
    wcs.array_shape = cutout_shape
    return _compat.geom_init_copy(geom, wcs=wcs, npix=cutout_shape[::-1])


def _npred_signal_patch(cls):
    """``npred_signal`` of ``cls`` running `gpsfast.fit.FastMapDataset`'s evaluation (stacked maps)."""
    original, wrapped = _original(cls, "npred_signal")

    @functools.wraps(wrapped)
    def npred_signal(self, model_names=None, stack=True):
        if type(self) is not cls or not stack:
            return original(self, model_names=model_names, stack=stack)
        from gammapy.maps import Map

        from gpsfast.evaluate.engine import signal_array

        data = signal_array(self, _dataset_states(self), model_names)
        return Map.from_geom(_compat.dataset_geom(self), data=data)

    return npred_signal


def _stat_sum_patch(cls):
    """``stat_sum`` of ``cls`` running `gpsfast.fit.FastMapDataset`'s compiled Cash statistic."""
    original, wrapped = _original(cls, "stat_sum")

    @functools.wraps(wrapped)
    def stat_sum(self):
        from gpsfast.evaluate.engine import cash_stat_sum, fast_stat_supported

        if type(self) is not cls or not fast_stat_supported(self):
            return original(self)
        return cash_stat_sum(self, _dataset_states(self))

    return stat_sum


def _dataset_states(dataset):
    """The cached evaluation pieces of a dataset in the drop-in mode (dropped when it ends)."""
    states = _DATASET_STATES.get(dataset)
    if states is None:
        states = {}
        with _TWIN_LOCK:
            _DATASET_STATES[dataset] = states
    return states


def _contributes_patch(cls, wcs_geom_cls):
    """``contributes`` of ``cls`` finding the mask cutout's pixels without building the cutout."""
    original, wrapped = _original(cls, "contributes")

    @functools.wraps(wrapped)
    def contributes(self, mask, margin="0 deg"):
        result = _mask_cutout_any(self, mask, margin, wcs_geom_cls) if type(self) is cls else None
        if result is None:
            return original(self, mask, margin=margin)
        return result

    return contributes


def _mask_cutout_any(model, mask, margin, wcs_geom_cls):
    """gammapy's ``SkyModel.contributes`` for an image mask on a plain WCS geometry, else None.

    gammapy cuts the mask out with ``Map.cutout`` (``Cutout2D`` in "trim" mode,
    then the parent slices of that cutout) and looks for a true pixel: the
    parent slices are those of ``Cutout2D``'s ``overlap_slices``, found here with
    the same pixel position, size and rounding, with no cutout geometry built.
    """
    from astropy.nddata.utils import NoOverlapError, overlap_slices
    import astropy.units as u

    geom = mask.geom
    spatial = model.spatial_model
    if (
        type(geom) is not wcs_geom_cls
        or not geom.is_image
        or spatial is None
    ):
        return None
    radius = model.evaluation_radius
    if radius is None:
        return None
    width = _compat.check_width(2 * radius + _compat.CUTOUT_MARGIN + u.Quantity(margin)) * u.deg
    width_npix = np.clip((width / geom.pixel_scales).to_value(""), 1, None)
    shape = tuple(int(np.round(side)) for side in width_npix[::-1])
    pix = _sky_pixel(geom, spatial.position)
    if pix is None:
        return None
    x, y = pix
    try:
        slices, _ = overlap_slices(geom.data_shape, shape, (y, x), mode="trim")
    except (NoOverlapError, ValueError):
        return False
    return bool(np.any(mask.data[slices]))


def _image_key_parts(geom):
    """What a WcsGeom's pixel <-> sky transform depends on, but the reference pixel; and the reference pixel.

    Returns ``(key, crpix)`` with the image shape last in ``key``, or None where not sure.
    """
    wcs = geom.wcs
    if not geom.is_regular or wcs.has_distortion:
        return None
    prm = wcs.wcs
    numbers = np.concatenate(
        [prm.crval, prm.cdelt, prm.get_pc().ravel(), [prm.lonpole, prm.latpole, prm.equinox]]
    )
    key = (
        numbers.tobytes(),
        tuple(prm.ctype),
        tuple(str(unit) for unit in prm.cunit),
        tuple(prm.get_pv()),
        prm.radesys,
        prm.has_cd(),
        tuple(int(n) for n in geom.data_shape[-2:]),
    )
    return key, np.array(prm.crpix, dtype=float)


def _convolve_patch(cls, kernel_cls):
    """``convolve`` of ``cls`` running `convolve_psf` for PSF kernels (FFT, "same" mode)."""
    original, wrapped = _original(cls, "convolve")

    @functools.wraps(wrapped)
    def convolve(self, kernel, method="fft", mode="same"):
        if type(self) is cls and method == "fft" and mode == "same" and isinstance(kernel, kernel_cls):
            result = convolve_psf(self, kernel)
            if result is not None:
                return result
        return original(self, kernel, method=method, mode=mode)

    return convolve
