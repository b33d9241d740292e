"""TS maps by a compiled per-pixel amplitude fit, a drop-in for gammapy's `TSMapEstimator`."""
import logging

import numpy as np
from gammapy.estimators import TSMapEstimator as GammapyTSMapEstimator
from gammapy.estimators.utils import estimate_exposure_reco_energy
from gammapy.maps import Map
from numba import parallel_chunksize
from scipy import ndimage

from .._compat import dataset_geom
from ..kernels.tsmap import QUANTITIES, RTOL_MIN, ts_map
from .excess import _fingerprint, _wcs_key

__all__ = ["TSMapEstimator"]

log = logging.getLogger(__name__)

_CACHE_SIZE = 8
_MAX_PATTERN_VALUES = 20_000_000
"""Largest number of energy-weighted kernel values (patterns x kernel pixels) built; beyond, gammapy's loop runs."""
_NOT_ACCELERATED = ("stat_scan", "sensitivity")


def _geom_key(geom):
    """Hashable description of a map geometry (WCS and non-spatial axes)."""
    axes = tuple((axis.name, tuple(np.asarray(axis.edges.value).tolist()), str(axis.unit)) for axis in geom.axes)
    return _wcs_key(geom), axes


class _Uncacheable(Exception):
    """An input whose content the cache keys do not describe (template models, unknown IRF types)."""


def _model_key(model):
    """Hashable description of a spatial or spectral model (None stays None)."""
    if model is None:
        return None
    if hasattr(model, "map") or hasattr(model, "values"):
        raise _Uncacheable(type(model).__name__)
    frame = getattr(model, "frame", None)
    return type(model).__name__, frame, tuple(model.parameters.names), tuple(model.parameters.value.tolist())


def _irf_key(irf):
    """Type and content fingerprint of a PSF or energy dispersion map (None stays None)."""
    if irf is None:
        return None
    maps = [getattr(irf, name, None) for name in ("psf_map", "edisp_map", "exposure_map")]
    if maps[0] is None and maps[1] is None:
        raise _Uncacheable(type(irf).__name__)
    return type(irf).__name__, tuple(
        None if m is None else (_geom_key(m.geom), str(m.unit), _fingerprint(m.data)) for m in maps
    )


def _energy_patterns(weights):
    """Distinct per-pixel patterns of a boolean ``(n_energy, ny, nx)`` mask.

    Returns
    -------
    patterns : ndarray, shape (n_patterns, n_energy), bool
    pattern_id : ndarray, shape (ny, nx), int64
    """
    n_energy, ny, nx = weights.shape
    packed = np.packbits(weights.reshape(n_energy, -1), axis=0)
    if packed.shape[0] <= 8:
        keys = np.zeros(packed.shape[1], dtype=np.uint64)
        for row in packed:
            keys = (keys << np.uint64(8)) | row.astype(np.uint64)
        _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    else:
        _, first, inverse = np.unique(packed.T, axis=0, return_index=True, return_inverse=True)
    patterns = weights.reshape(n_energy, -1)[:, first].T
    return patterns, inverse.reshape(ny, nx).astype(np.int64)


def _weighted_kernels(kernel, weights, patterns):
    """Energy-weighted kernels of gammapy's ``SimpleMapDataset.from_arrays``, one per mask pattern.

    The weights of each pattern are laid out in memory as a cut-out of the
    mask (``weights``), so that NumPy multiplies and sums in the same order as
    gammapy does on its cut-outs.
    """
    ky, kx = kernel.shape[1:]
    cutout = np.empty_like(weights)[:, :ky, :kx]
    out = np.empty((len(patterns), ky, kx), dtype=np.float64)
    for k, pattern in enumerate(patterns):
        cutout[...] = pattern[:, np.newaxis, np.newaxis]
        weighted = (kernel * cutout).sum(axis=0, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            weighted /= cutout.sum(axis=0, keepdims=True)
            weighted[~np.isfinite(weighted)] = 0
        out[k] = weighted[0]
    return out


def _window_pattern(pattern_id, shape):
    """Pattern shared by all the pixels of the ``shape`` window centred on each pixel, -1 where they differ."""
    low = ndimage.minimum_filter(pattern_id, size=shape, mode="nearest")
    high = ndimage.maximum_filter(pattern_id, size=shape, mode="nearest")
    return np.where(low == high, low, -1).astype(np.int64)


class _Planes:
    """Flat inputs of `gpsfast.kernels.tsmap.ts_map` for a list of fit input maps.

    ``valid`` is False for inputs the kernel does not handle (even kernel
    sizes, non-finite counts, too many mask patterns).
    """

    def __init__(self, maps):
        counts, background, exposure, pattern_maps = [], [], [], []
        kernels, offsets, shapes, pid_plane, window_shapes = [], [], [], [], []
        size = 0
        self.valid = True
        for item in maps:
            kernel = item["kernel"].data
            n_planes = item["counts"].data.shape[0]
            if kernel.shape[1] % 2 == 0 or kernel.shape[2] % 2 == 0:
                self.valid = False
                return
            if item["weights"] is not None:
                weights = item["weights"].data
                patterns, pattern_id = _energy_patterns(weights.astype(bool))
                if len(patterns) * kernel[0].size > _MAX_PATTERN_VALUES or n_planes != 1:
                    self.valid = False
                    return
                planes = [_weighted_kernels(kernel, weights, patterns.astype(weights.dtype))]
                pid = [len(pattern_maps)]
                pattern_maps.append(pattern_id)
                window_shapes.append(kernel.shape[1:])
            else:
                if kernel.shape[0] != n_planes:
                    self.valid = False
                    return
                planes = [plane[np.newaxis].astype(float) for plane in kernel]
                pid = [-1] * n_planes
            for plane, index in zip(planes, pid):
                kernels.append(plane.ravel())
                offsets.append(size)
                shapes.append(plane.shape[1:])
                pid_plane.append(index)
                size += plane.size
            counts.append(item["counts"].data.astype(float))
            background.append(item["background"].data.astype(float))
            exposure.append(item["exposure"].data.astype(float))
        self.counts = np.ascontiguousarray(np.concatenate(counts))
        if not np.isfinite(self.counts).all():
            self.valid = False
            return
        self.background = np.ascontiguousarray(np.concatenate(background))
        self.exposure = np.ascontiguousarray(np.concatenate(exposure))
        shape = self.counts.shape[1:]
        self.pattern_id = np.stack(pattern_maps) if pattern_maps else np.zeros((1,) + shape, dtype=np.int64)
        windows = [_window_pattern(pattern_map, window) for pattern_map, window in zip(pattern_maps, window_shapes)]
        self.window_pattern = np.stack(windows) if windows else np.zeros((1,) + shape, dtype=np.int64)
        self.kernels = np.concatenate(kernels)
        self.k_offset = np.array(offsets, dtype=np.int64)
        self.k_ny = np.array([s[0] for s in shapes], dtype=np.int64)
        self.k_nx = np.array([s[1] for s in shapes], dtype=np.int64)
        self.pid_plane = np.array(pid_plane, dtype=np.int64)

    def windows_inside(self, pos_y, pos_x):
        """Whether the kernel window of every plane at every position lies inside the maps."""
        ny, nx = self.counts.shape[1:]
        half_y = int(self.k_ny.max()) // 2
        half_x = int(self.k_nx.max()) // 2
        return bool(
            pos_y.min() >= half_y and pos_y.max() < ny - half_y and pos_x.min() >= half_x and pos_x.max() < nx - half_x
        )


class TSMapEstimator(GammapyTSMapEstimator):
    """Test statistic maps, a drop-in for gammapy's `~gammapy.estimators.TSMapEstimator`.

    Same constructor arguments and the same `~gammapy.estimators.FluxMaps`
    result. The amplitude fit at every pixel (cut-out of the kernel window,
    root bounds, Brent root finding of the Cash statistic derivative, errors,
    and on request the asymmetric errors and upper limits from the likelihood
    profile) runs in one compiled, multi-threaded kernel
    (`gpsfast.kernels.tsmap.ts_map`) that repeats gammapy's arithmetic (SciPy's
    ``brentq`` with the same tolerances and iterations, gammapy's Cython Cash
    statistic) with vectorised sums, so the maps match gammapy's to rounding
    (~1e-12 relative; sqrt_ts within 1e-6 even where TS is near 0). Only
    the per-pixel loop is replaced: padding, down-sampling, energy grouping
    and kernel are gammapy's, the input maps are computed with the same
    operations, with two savings that change no number:

    * the kernel (model convolved with the PSF at the centre exposure) is kept
      between calls while the model, IRFs, exposure, masks and geometry are
      unchanged (content fingerprints), and the exposure folded with the
      spectral model likewise;
    * the starting flux map (an FFT convolution) is only computed when a
      ``threshold`` uses it.

    Not accelerated, computed by gammapy's own per-pixel loop:
    ``selection_optional`` with ``"stat_scan"`` or ``"sensitivity"``,
    ``rtol`` below SciPy's minimum or a negative ``max_niter``, kernels of
    even size, non-finite counts, and masks with so many distinct energy
    patterns that the energy-weighted kernels would not fit in memory. ``n_jobs`` and
    ``parallel_backend`` only apply there; the compiled loop uses Numba's
    threads.

    Parameters
    ----------
    kernel_model : `~gammapy.modeling.models.SkyModel`, optional
        Source kernel model (default: point source with a power law of index 2).
    **kwargs : dict
        Other arguments of gammapy's `~gammapy.estimators.TSMapEstimator`
        (kernel_width, downsampling_factor, n_sigma, n_sigma_ul, threshold,
        rtol, selection_optional, energy_edges, sum_over_energy_groups,
        max_niter, ...).
    """

    @property
    def _accelerated(self):
        selection = set(self.selection_optional or [])
        return not selection.intersection(_NOT_ACCELERATED) and self.rtol >= RTOL_MIN and self.max_niter >= 0

    def _cache(self, name):
        caches = self.__dict__.setdefault("_gpsfast_caches", {})
        return caches.setdefault(name, {})

    @staticmethod
    def _remember(cache, key, value):
        if len(cache) >= _CACHE_SIZE:
            cache.pop(next(iter(cache)))
        cache[key] = value

    def _kernel_key(self, dataset):
        try:
            kernel_model = self.kernel_model
            return (
                None if self.kernel_width is None else str(self.kernel_width),
                _model_key(kernel_model.spatial_model),
                _model_key(kernel_model.spectral_model),
                _geom_key(dataset.exposure.geom),
                _geom_key(dataset.counts.geom),
                str(dataset.exposure.unit),
                _fingerprint(dataset.exposure.data),
                _irf_key(dataset.psf),
                _irf_key(dataset.edisp),
                _fingerprint(dataset.mask_image.data),
            )
        except _Uncacheable:
            return None

    def estimate_kernel(self, dataset):
        """Get the convolution kernel for the input dataset (see gammapy's `estimate_kernel`).

        The result is kept between calls while the kernel model, kernel width,
        geometry, exposure, IRFs and mask of the dataset are unchanged.

        Parameters
        ----------
        dataset : `~gammapy.datasets.MapDataset`
            Input dataset.

        Returns
        -------
        kernel : `~gammapy.maps.Map`
            Kernel map.
        """
        key = self._kernel_key(dataset)
        cache = self._cache("kernel")
        if key is None or key not in cache:
            kernel = super().estimate_kernel(dataset)
            if key is None:
                return kernel
            self._remember(cache, key, kernel)
        return cache[key].copy()

    def _exposure_npred(self, dataset):
        """``estimate_exposure_reco_energy(dataset, spectral_model, normalize=False)``, kept between calls."""
        try:
            key = (
                _model_key(self.kernel_model.spectral_model),
                _geom_key(dataset.exposure.geom),
                _geom_key(dataset_geom(dataset)),
                str(dataset.exposure.unit),
                _fingerprint(dataset.exposure.data),
                _irf_key(dataset.edisp),
            )
        except _Uncacheable:
            key = None
        cache = self._cache("exposure")
        if key is None or key not in cache:
            exposure = estimate_exposure_reco_energy(dataset, self.kernel_model.spectral_model, normalize=False)
            if key is None:
                return exposure
            self._remember(cache, key, exposure)
        return cache[key].copy()

    @staticmethod
    def _mask_default(dataset, npred):
        """gammapy's ``estimate_mask_default`` with the dataset's npred given."""
        if dataset.mask_fit:
            mask = dataset.mask
        elif dataset.mask_safe:
            mask = dataset.mask_safe
        else:
            mask = Map.from_geom(dataset.counts.geom, data=True, dtype=bool)
        mask &= np.isfinite(npred)
        return mask

    def estimate_fit_input_maps(self, dataset):
        """Estimate fit input maps (see gammapy's `estimate_fit_input_maps`).

        Same maps, except ``norm`` (the starting norm) which is NaN unless a
        ``threshold`` is set, since only the threshold test uses it.

        Parameters
        ----------
        dataset : `~gammapy.datasets.MapDataset`
            Map dataset.

        Returns
        -------
        maps : dict of `~gammapy.maps.Map`
            Maps dictionary.
        """
        if not self._accelerated:
            return super().estimate_fit_input_maps(dataset)
        kernel = self.estimate_kernel(dataset)
        npred = dataset.npred()
        mask = self._mask_default(dataset, npred)
        exposure_npred = self._exposure_npred(dataset)
        if self.threshold is None:
            norm = Map.from_geom(dataset.counts.geom.to_image(), data=np.nan, unit="")
        else:
            exposure = estimate_exposure_reco_energy(dataset, self.kernel_model.spectral_model, normalize=True)
            flux = self.estimate_flux_default(dataset=dataset, kernel=kernel, exposure=exposure)
            energy_axis = dataset.counts.geom.axes["energy"]
            flux_ref = self.kernel_model.spectral_model.integral(energy_axis.edges[0], energy_axis.edges[-1])
            norm = (flux / flux_ref).to_unit("")
        counts = dataset.counts * mask
        background = npred * mask
        exposure_npred *= mask
        weights = None
        if self.sum_over_energy_groups:
            weights = mask
            counts = counts.sum_over_axes()
            background = background.sum_over_axes()
            exposure_npred = exposure_npred.sum_over_axes()
        return {
            "counts": counts,
            "background": background,
            "norm": norm,
            "mask": mask,
            "weights": weights,
            "exposure": exposure_npred,
            "kernel": kernel,
        }

    def _norm_guess(self, maps, pos_y, pos_x):
        """Mean of the finite starting norms of the datasets at each position (1 where none is)."""
        if self.threshold is None:
            return np.ones(len(pos_y))
        guesses = np.array([item["norm"].data[0, pos_y, pos_x] for item in maps])
        finite = np.isfinite(guesses)
        count = finite.sum(axis=0)
        total = np.where(finite, guesses, 0.0).sum(axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(count > 0, total / count, 1.0)

    def estimate_flux_map(self, datasets):
        """Estimate flux and test statistic maps for a single energy bin (see gammapy's `estimate_flux_map`).

        Parameters
        ----------
        datasets : `~gammapy.datasets.Datasets`
            Map datasets with the same spatial geometry.

        Returns
        -------
        maps : dict of `~gammapy.maps.Map`
            One map per quantity of ``selection_all``.
        """
        if not self._accelerated:
            return super().estimate_flux_map(datasets)
        maps = [self.estimate_fit_input_maps(dataset=d) for d in datasets]
        mask_2d = np.logical_or.reduce([self._estimate_mask_2d(item) for item in maps])
        if not np.any(mask_2d):
            raise ValueError(
                "No valid positions found. Check that the dataset background is defined and not only zeros, "
                "or that the mask is not all False."
            )
        mask_2d = np.squeeze(mask_2d)
        planes = _Planes(maps)
        if mask_2d.ndim != 2 or not planes.valid:
            log.debug("TS map: gammapy's per-pixel loop (input not handled by the compiled kernel)")
            return super().estimate_flux_map(datasets)
        pos_y, pos_x = np.nonzero(mask_2d)
        if not planes.windows_inside(pos_y, pos_x):
            log.debug("TS map: gammapy's per-pixel loop (kernel windows leave the maps)")
            return super().estimate_flux_map(datasets)
        selection = set(self.selection_optional or [])
        # dynamic scheduling: on a shared machine a thread that loses its core must not hold the others up
        with parallel_chunksize(1):
            table = ts_map(
                planes.counts, planes.background, planes.exposure, planes.pattern_id, planes.window_pattern,
                planes.pid_plane, planes.kernels, planes.k_offset, planes.k_ny, planes.k_nx,
                self._norm_guess(maps, pos_y, pos_x), pos_y.astype(np.int64), pos_x.astype(np.int64),
                self.threshold is not None, float(self.threshold or 0.0), float(self.rtol), int(self.max_niter),
                float(self.n_sigma), float(self.n_sigma_ul), "ul" in selection, "errn-errp" in selection,
            )
        geom = maps[0]["counts"].geom.squash(axis_name="energy")
        result = {}
        for name in self.selection_all:
            m = Map.from_geom(geom=geom, data=np.nan, unit="")
            m.data[0, pos_y, pos_x] = table[:, QUANTITIES.index(name)]
            result[name] = m
        return result
