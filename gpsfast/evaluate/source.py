"""One source's predicted counts from cached pieces: `SourceNpred`.

The pieces of gammapy's ``MapEvaluator.compute_npred`` that change with different
parameters are kept apart: the PSF-convolved spatial integral times the exposure
(spatial parameters, IRFs), the spectral integral per true-energy bin (spectral
parameters) and the energy dispersion matrix (IRFs); a likelihood call that moves
only the spectrum recomputes only the spectral integrals and one compiled folding.
"""
import numpy as np
import astropy.units as u
from gammapy.maps import WcsGeom
from gammapy.modeling.models import LogParabolaSpectralModel, PowerLawSpectralModel, SkyModel

from gpsfast import _compat, twins
from gpsfast.irf import convolve
from gpsfast.kernels.npred import fold_energy, log_parabola_integrals, power_law_integrals
from gpsfast.models import sersic  # noqa: F401 (registers the compiled generalized Gaussian as a twin)

__all__ = ["SourceNpred", "components", "fast_source_supported", "parameter_names", "parameter_state"]


class SourceNpred:
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
        spatial = self.evaluator.model.spatial_model
        if not twins.has_twin(spatial):
            return spatial
        key = (spatial, spatial.frame, *spatial.parameters)
        twin = self.spatial_twin
        if twin is None or len(twin[0]) != len(key) or not all(
            a is b or (isinstance(a, str) and a == b) for a, b in zip(twin[0], key)
        ):
            twin = (key, twins.fast_twin(spatial))
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
        spatial, spectral, _ = _compat.sky_model_parts(self.evaluator.model)
        irfs_changed = self._irfs_changed(dataset_geom)
        spatial_values = self.current_spatial_values
        if spatial_values is None:
            spatial_values = parameter_state(spatial)
        if irfs_changed:
            self._update_irfs(dataset_geom)
        if irfs_changed or spatial_values != self.spatial_values:
            self._update_flux_exposure()
            self.spatial_values = spatial_values
            self.npred = None
        spectral_key = parameter_state(spectral)
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
        spatial_values = parameter_state(spatial)
        self.current_spatial_values = spatial_values
        if spatial_values == self.checked_spatial_values:
            return False
        needs = self.evaluator.needs_update
        self.checked_spatial_values = None if needs else spatial_values
        return needs


def parameter_state(model):
    """Values and units of a model's parameters (the Parameter objects read directly)."""
    return tuple(
        (par.value, par.unit, id(par))
        for par in _compat.parameter_objects(model, parameter_names(type(model)))
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


def parameter_names(cls):
    names = _PARAMETER_NAMES.get(cls)
    if names is None:
        names = tuple(cls.default_parameters.names)
        _PARAMETER_NAMES[cls] = names
    return names


def components(model):
    """Identities of a sky model's spatial, spectral and temporal models (read directly)."""
    return tuple(id(part) for part in _compat.sky_model_parts(model))


def fast_source_supported(evaluator):
    """Whether `SourceNpred` reproduces gammapy's evaluation of this evaluator's model."""
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

