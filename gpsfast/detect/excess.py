"""Correlated excess and significance maps computed with compiled kernels."""
import logging
import weakref

import astropy.units as u
import numpy as np
from gammapy.datasets import MapDataset, MapDatasetOnOff
from gammapy.estimators import ExcessMapEstimator as GammapyExcessMapEstimator
from gammapy.estimators import FluxMaps
from gammapy.estimators.map.excess import convolved_map_dataset_counts_statistics
from gammapy.estimators.utils import apply_threshold_sensitivity, estimate_exposure_reco_energy
from gammapy.maps import Map
from gammapy.modeling.models import SkyModel
from gammapy.stats import CashCountsStatistic

from ..kernels.aperture import correlate_masked
from ..kernels.cash import cash_errors
from ..kernels.fingerprint import fingerprint
from ..kernels.grouping import group_planes

__all__ = ["ExcessMapEstimator", "significance_maps"]

log = logging.getLogger(__name__)

_KERNEL_CACHE = {}
_GROUPING_CACHE = {}
_SCALE_CACHE = weakref.WeakKeyDictionary()
_REFERENCE_CACHE = weakref.WeakKeyDictionary()
"""Per estimator: (fingerprint of exposure, edisp, masks and settings, flux scale map)."""


def _group_bounds(axis_in, axis_out):
    """Plane ranges of ``axis_in`` summed into each bin of ``axis_out``.

    Reproduces the bin grouping of gammapy's ``Map.resample_axis`` (``numpy.ufunc.reduceat``
    on the edges found by ``numpy.digitize``), including its rule that an empty range
    takes the single plane at its start.
    """
    indices = np.digitize(axis_out.edges.value, axis_in.edges.value) - 1
    starts = indices[:-1].astype(np.int64)
    stops = indices[1:].astype(np.int64)
    stops = np.where(stops > starts, stops, starts + 1)
    return starts, stops


def _fingerprint(array):
    """Shape, dtype and content fingerprint of an array (None stays None)."""
    if array is None:
        return None
    array = np.ascontiguousarray(array)
    raw = array.reshape(-1).view(np.uint8)
    padded = np.zeros(-(-raw.size // 8) * 8, dtype=np.uint8)
    padded[: raw.size] = raw
    return array.shape, array.dtype.str, tuple(fingerprint(padded.view(np.uint64)).tolist())


class _Grouped:
    """The maps of a `MapDataset` grouped in energy that the Cash-statistic maps need."""

    stat_type = "cash"
    models = None

    def __init__(self, counts, background):
        self.counts = counts
        self.background = background


def _npred(dataset):
    """``dataset.npred().data``, skipping the empty signal sum when only background models are set."""
    if any(isinstance(model, SkyModel) for model in (dataset.models or [])):
        return dataset.npred().data
    return np.clip(dataset.npred_background().data, 0, None)


def _grouping(geom, axis):
    """Energy-grouped geometry and plane ranges (gammapy's ``resample_axis``), cached."""
    key = (_wcs_key(geom), tuple(geom.axes["energy"].edges.to_value("TeV")), tuple(axis.edges.to_value("TeV")))
    if key not in _GROUPING_CACHE:
        grouped = geom.resample_axis(axis)
        _GROUPING_CACHE[key] = grouped, _group_bounds(geom.axes["energy"], grouped.axes["energy"])
    return _GROUPING_CACHE[key]


def _wcs_key(geom):
    wcs = geom.wcs.wcs
    return geom.data_shape, tuple(wcs.ctype), tuple(wcs.crval), tuple(wcs.crpix), tuple(wcs.cdelt)


def _resample(data, mask, bounds, logical_or=False):
    """Group the planes of ``data`` (weighted by ``mask``) with `group_planes`."""
    data = np.ascontiguousarray(data, dtype=np.float64)
    mask = np.ones(data.shape, dtype=bool) if mask is None else np.broadcast_to(mask, data.shape)
    return group_planes(data, np.ascontiguousarray(mask, dtype=bool), *bounds, logical_or)


class ExcessMapEstimator(GammapyExcessMapEstimator):
    """Correlated excess and significance maps, a drop-in for gammapy's `ExcessMapEstimator`.

    Same constructor arguments, same `~gammapy.estimators.FluxMaps` result
    (``npred``, ``npred_excess``, ``counts``, ``ts``, ``sqrt_ts``, ``norm``,
    ``norm_err`` and the optional ``errn-errp``, ``ul``, ``sensitivity``, ``alpha``,
    ``acceptance_on``, ``acceptance_off``). The correlations with the top-hat
    kernel are exact masked sums done by a compiled kernel instead of FFT
    convolutions, and for a `~gammapy.datasets.MapDataset` the energy grouping
    is done on the few maps that are needed instead of resampling the whole
    dataset. The excess is computed against ``dataset.npred()``, so with models
    set on the dataset the maps are residual maps. The exposure part (exposure
    folded with the spectral model and correlated) is kept between calls while
    a fingerprint of the exposure, energy dispersion and masks is unchanged, so
    recomputing maps after a model update costs only the counts and npred part;
    the folding itself is gammapy's ``estimate_exposure_reco_energy``.

    A non-finite value in a correlated input makes only the output pixels whose
    kernel covers it NaN (an FFT convolution spreads it over the whole map).

    Parameters
    ----------
    correlation_radius : `~astropy.coordinates.Angle`
        Correlation radius. Default is 0.1 deg.
    **kwargs : dict
        Other arguments of gammapy's `~gammapy.estimators.ExcessMapEstimator`.
    """

    def run(self, dataset):
        """Compute the correlated excess, significance and flux maps.

        Parameters
        ----------
        dataset : `~gammapy.datasets.MapDataset` or `~gammapy.datasets.MapDatasetOnOff`
            Map dataset.

        Returns
        -------
        maps : `~gammapy.estimators.FluxMaps`
            As gammapy's `ExcessMapEstimator.run`.
        """
        if not isinstance(dataset, MapDataset) or dataset.counts.geom.is_region:
            raise ValueError(
                f"Unsupported dataset type {type(dataset).__name__} ({dataset.name}). "
                "Excess map is not applicable to 1D datasets."
            )
        if isinstance(dataset, MapDatasetOnOff):
            return super().run(dataset)
        axis = self._get_energy_axis(dataset)
        geom, bounds = _grouping(dataset.counts.geom, axis)
        mask_safe = None if dataset.mask_safe is None else dataset.mask_safe.data
        grouped = _Grouped(
            counts=Map.from_geom(geom, data=_resample(dataset.counts.data, mask_safe, bounds)),
            background=Map.from_geom(geom, data=_resample(_npred(dataset), mask_safe, bounds)),
        )
        mask = np.ones(geom.data_shape, dtype=bool)
        for name in ("mask_safe", "mask_fit"):
            if getattr(dataset, name) is not None:
                mask &= _resample(getattr(dataset, name).data, None, bounds, logical_or=True).astype(bool)
        mask = Map.from_geom(geom, data=mask, dtype=bool)
        kernel = self._kernel(grouped)
        key = self._exposure_key(dataset, axis)
        cached = _SCALE_CACHE.get(self)
        if key is None or cached is None or cached[0] != key:
            exposure = None
            if dataset.exposure:
                npred = estimate_exposure_reco_energy(dataset, self.spectral_model, normalize=False)
                exposure = Map.from_geom(geom, data=_resample(npred.data, mask_safe, bounds), unit=npred.unit)
            cached = (key, self._flux_scale(dataset, kernel, mask, exposure))
            _SCALE_CACHE[self] = cached
        return self._excess_maps(grouped, kernel, mask, cached[1])

    def _exposure_key(self, dataset, axis):
        """Fingerprint of everything the flux scale map depends on, or None without exposure."""
        if not dataset.exposure:
            return None
        spectral = self.spectral_model
        edisp = None if dataset.edisp is None else dataset.edisp.edisp_map.data
        return (
            str(self.correlation_radius),
            tuple(axis.edges.to_value("TeV")),
            type(spectral).__name__,
            tuple(spectral.parameters.value),
            _wcs_key(dataset.counts.geom),
            _fingerprint(dataset.exposure.data),
            _fingerprint(edisp),
            _fingerprint(None if dataset.mask_safe is None else dataset.mask_safe.data),
            _fingerprint(None if dataset.mask_fit is None else dataset.mask_fit.data),
        )

    def _kernel(self, dataset):
        """Top-hat kernel of gammapy's ``estimate_kernel``, peak-normalised, cached per pixel size."""
        key = (str(self.correlation_radius), np.mean(np.abs(dataset.counts.geom.wcs.wcs.cdelt)))
        kernel = _KERNEL_CACHE.get(key)
        if kernel is None:
            kernel_map = self.estimate_kernel(dataset)
            kernel = np.ascontiguousarray(kernel_map.data / kernel_map.data.max(), dtype=np.float64)
            _KERNEL_CACHE[key] = kernel
        return kernel

    def _correlate(self, data, kernel, mask=None):
        cube = np.asarray(data, dtype=np.float64)
        if mask is None:
            mask = np.ones((1,) + cube.shape[1:], dtype=bool)
        return correlate_masked(cube, np.ascontiguousarray(mask, dtype=bool), kernel)

    def _correlated_maps(self, dataset, kernel, mask):
        """The correlated maps of gammapy's ``_get_convolved_maps``, by exact masked sums."""
        geom = dataset.counts.geom
        mask_data = mask.data

        def correlate(data, use_mask=True):
            return Map.from_geom(geom, data=self._correlate(data, kernel, mask_data if use_mask else None))

        maps = {"n_on_conv": np.rint(self._correlate(dataset.counts.data, kernel, mask_data))}
        if not isinstance(dataset, MapDatasetOnOff):
            npred = dataset.background if dataset.models is None else dataset.npred()
            maps["background_conv"] = correlate(npred.data)
            return maps
        n_off = Map.from_geom(geom, data=dataset.counts_off.data * mask_data)
        acceptance_on = dataset.acceptance * mask
        acceptance_off = dataset.acceptance_off * mask
        with np.errstate(invalid="ignore", divide="ignore"):
            if self.correlate_off:
                background = dataset.background * mask
                background.data[dataset.acceptance_off == 0] = 0.0
                background_conv = correlate(background.data, use_mask=False)
                n_off = correlate(n_off.data, use_mask=False)
                alpha = background_conv / n_off
            else:
                alpha = correlate(acceptance_on.data, use_mask=False) / acceptance_off
        maps.update(
            {
                "n_off": n_off,
                "npred_sig_convolve": correlate(dataset.npred_signal().data),
                "acceptance_on": acceptance_on,
                "acceptance_off": acceptance_off,
                "alpha": alpha,
            }
        )
        return maps

    def _flux_scale(self, dataset, kernel, mask, reco_exposure):
        """Correlated exposure over correlated mask, as ``(data, unit)``; ``(1, "")`` without exposure."""
        if not dataset.exposure and reco_exposure is None:
            return 1.0, u.dimensionless_unscaled
        exposure_conv = self._correlate(reco_exposure.data, kernel)
        mask_conv = self._correlate(mask.data.astype(float), kernel)
        with np.errstate(invalid="ignore", divide="ignore"):
            return exposure_conv / mask_conv, reco_exposure.unit

    def estimate_excess_map(self, dataset, reco_exposure):
        """Estimate excess and test statistic maps for a single dataset.

        Parameters
        ----------
        dataset : `~gammapy.datasets.MapDataset` or `~gammapy.datasets.MapDatasetOnOff`
            Dataset, already grouped in energy.
        reco_exposure : `~gammapy.maps.Map` or None
            Exposure in reconstructed energy, grouped the same way.

        Returns
        -------
        maps : `~gammapy.estimators.FluxMaps`
        """
        kernel = self._kernel(dataset)
        mask = self.estimate_mask_default(dataset)
        scale = self._flux_scale(dataset, kernel, mask, reco_exposure)
        return self._excess_maps(dataset, kernel, mask, scale)

    def _excess_maps(self, dataset, kernel, mask, scale):
        geom = dataset.counts.geom
        convolved = self._correlated_maps(dataset, kernel, mask)
        stat = convolved_map_dataset_counts_statistics(convolved, dataset.stat_type)
        scale, scale_unit = scale
        arrays = {"npred": stat.n_on, "npred_excess": stat.n_sig, "ts": stat.ts, "sqrt_ts": stat.sqrt_ts}
        selection = self.selection_optional
        with np.errstate(invalid="ignore", divide="ignore"):
            norms = {"norm": stat.n_sig / scale, "norm_err": stat.error * self.n_sigma / scale}
            if {"errn-errp", "ul"} & set(selection):
                errn, errp, ul = self._errors(stat)
                if "errn-errp" in selection:
                    norms["norm_errn"] = errn / scale
                    norms["norm_errp"] = errp / scale
                if "ul" in selection:
                    norms["norm_ul"] = ul / scale
            if "sensitivity" in selection:
                excess = stat.n_sig_matching_significance(self.n_sigma_sensitivity)
                if self.apply_threshold_sensitivity:
                    excess = apply_threshold_sensitivity(
                        dataset.background.data,
                        excess,
                        self.gamma_min_sensitivity,
                        self.bkg_syst_fraction_sensitivity,
                    )
                norms["norm_sensitivity"] = excess / scale
        outside = ~mask.data
        maps = {}
        for name, data in arrays.items():
            maps[name] = Map.from_geom(geom, data=np.where(outside, np.nan, data))
        for name, data in norms.items():
            maps[name] = Map.from_geom(geom, data=np.where(outside, np.nan, data), unit=1 / scale_unit)
        maps["counts"] = maps["npred"]
        if isinstance(dataset, MapDatasetOnOff):
            for key in {"alpha", "acceptance_on", "acceptance_off"}.intersection(selection):
                maps[key] = convolved[key].copy(data=np.where(outside, np.nan, convolved[key].data))
        meta = {
            "n_sigma": self.n_sigma,
            "n_sigma_ul": self.n_sigma_ul,
            "n_sigma_sensitivity": self.n_sigma_sensitivity,
            "sed_type_init": "likelihood",
        }
        if self.apply_threshold_sensitivity:
            meta["gamma_min_sensitivity"] = self.gamma_min_sensitivity
            meta["bkg_syst_fraction_sensitivity"] = self.bkg_syst_fraction_sensitivity
        return FluxMaps.from_maps(maps=maps, meta=meta, reference_model=self._reference_model(), sed_type="likelihood")

    def _errors(self, stat):
        """errn, errp and ul of the excess: compiled for Cash, gammapy's root finding for WStat."""
        if isinstance(stat, CashCountsStatistic):
            n_on = np.ascontiguousarray(stat.n_on, dtype=np.float64)
            n_sig = np.ascontiguousarray(stat.n_sig, dtype=np.float64)
            errors = cash_errors(n_on, n_sig, float(self.n_sigma), float(self.n_sigma_ul))
            return (error.reshape(n_on.shape) for error in errors)
        return stat.compute_errn(self.n_sigma), stat.compute_errp(self.n_sigma), stat.compute_upper_limit(self.n_sigma_ul)

    def _reference_model(self):
        """``SkyModel(self.spectral_model)``, built once per spectral model (its unit check is slow)."""
        cached = _REFERENCE_CACHE.get(self)
        if cached is None or cached.spectral_model is not self.spectral_model:
            cached = SkyModel(self.spectral_model)
            _REFERENCE_CACHE[self] = cached
        return cached


def significance_maps(datasets, radii=(0.1, 0.2), background_only=True, **kwargs):
    """Significance maps of every dataset at every correlation radius.

    Parameters
    ----------
    datasets : `~gammapy.datasets.Datasets` or list of `~gammapy.datasets.MapDataset`
        Datasets (e.g. ``subtev`` and ``postev``).
    radii : sequence of float
        Correlation radii in degrees.
    background_only : bool
        Use only each dataset's ``<name>-bkg`` background model (raw significance);
        with False, the dataset's models are kept and the maps are residual maps.
    **kwargs : dict
        Other `ExcessMapEstimator` arguments.

    Returns
    -------
    maps : dict
        ``"<dataset>_r<radius>"`` -> `~gammapy.estimators.FluxMaps`, the labels
        `gpsfast.detect.find_seeds` and the seed classifier use.
    """
    maps = {}
    for dataset in datasets:
        if background_only:
            models = [m for m in (dataset.models or []) if m.name == f"{dataset.name}-bkg"]
            dataset = dataset.copy(name=dataset.name)
            dataset.models = models or None
        for radius in radii:
            estimator = ExcessMapEstimator(correlation_radius=f"{radius} deg", **kwargs)
            maps[f"{dataset.name}_r{radius:g}"] = estimator.run(dataset)
    return maps
