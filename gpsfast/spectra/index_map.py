"""`IndexMapEstimator`: a power-law index fitted at every pixel of a map dataset.

The spectrum summed in a disk around every pixel (`gpsfast.kernels.aperture.correlate_masked`)
is fitted with a forward-folded power law by a compiled per-pixel Cash fit
(`gpsfast.kernels.plfit`).
"""
import itertools

import astropy.units as u
import numpy as np
from astropy.coordinates import Angle
from gammapy.datasets import MapDatasetOnOff
from gammapy.irf import EDispMap
from gammapy.maps import Map, MapAxis, Maps, WcsNDMap

from gpsfast.errors import InputError
from gpsfast.kernels.aperture import correlate_masked, disk_weights
from gpsfast.kernels.plfit import fit_powerlaw_map
from gpsfast.pixels import nearest_pixel
from gpsfast.spectra.reduce import check_dataset, native_floats

__all__ = ["IndexMapEstimator"]


class IndexMapEstimator:
    """Maps of a power-law index fitted at every pixel.

    At every pixel, counts and background are summed in a disk of radius
    ``correlation_radius`` (with ``mask_safe``), the exposure is averaged in the
    disk and the energy dispersion is taken at the pixel (nearest IRF map
    pixel): the spectrum ``dataset.to_spectrum_dataset`` would extract in a
    circle centred on the pixel. A `~gammapy.modeling.models.PowerLawSpectralModel`
    forward-folded through the energy dispersion is fitted to it with the Cash
    statistic, in the reconstructed energy bins inside ``energy_edges`` that are
    safe, by a compiled per-pixel fit (`gpsfast.kernels.plfit`). With more than
    two ``energy_edges`` the fit is done in each energy band separately (as
    gammapy estimators do with ``energy_edges``), and the maps get an
    ``energy`` axis with one plane per band.

    Pixels without enough signal are not given a number: their index and
    amplitude are NaN and the ``flag`` map tells why (`gpsfast.kernels.plfit`
    flags: 0 fitted, 1 no data, 2 test statistic below ``ts_threshold``, 3 index
    at a bound of ``index_range``, 4 Hessian not positive definite).

    Parameters
    ----------
    correlation_radius : `~astropy.units.Quantity`
        Radius of the disk in which spectra are summed. Default 0.1 deg.
    energy_edges : `~astropy.units.Quantity`, optional
        Reconstructed energy range ``[min, max]`` of the fit, or edges of
        several bands ``[e0, e1, ..., en]`` (one fit per band); default: all
        bins. A reconstructed energy bin belongs to a band when it lies
        entirely inside it (``WcsGeom.energy_mask``).
    reference_energy : `~astropy.units.Quantity`
        Reference energy of the power law. Default 1 TeV.
    index_range : tuple of float
        Interval in which the index is searched. Default (0.5, 5).
    ts_threshold : float
        Minimum test statistic of a fitted pixel. Default 4.
    """
    tag = "IndexMapEstimator"

    def __init__(self, correlation_radius=0.1 * u.deg, energy_edges=None,
                 reference_energy=1 * u.TeV, index_range=(0.5, 5.0), ts_threshold=4.0):
        self.correlation_radius = Angle(correlation_radius)
        if not self.correlation_radius.to_value(u.deg) > 0:
            raise InputError(f"correlation_radius must be positive, got {correlation_radius}")
        self.energy_edges = None if energy_edges is None else u.Quantity(energy_edges)
        if self.energy_edges is not None:
            edges = self.energy_edges
            if (edges.ndim != 1 or edges.size < 2 or not edges.unit.is_equivalent(u.TeV)
                    or not np.all(np.diff(edges.value) > 0)):
                raise InputError("energy_edges must be increasing energies [min, max] or "
                                 f"[e0, e1, ..., en], got {energy_edges}")
        self.reference_energy = u.Quantity(reference_energy)
        self.index_range = tuple(float(v) for v in index_range)
        if not self.index_range[0] < self.index_range[1]:
            raise InputError(f"index_range must be increasing, got {index_range}")
        self.ts_threshold = float(ts_threshold)

    def _check(self, dataset):
        check_dataset(dataset, False)
        if isinstance(dataset, MapDatasetOnOff):
            raise InputError(f"dataset {dataset.name!r}: IndexMapEstimator needs a MapDataset "
                             "with a background model, not a MapDatasetOnOff")
        for key in ("exposure", "background", "edisp"):
            if getattr(dataset, key) is None:
                raise InputError(f"dataset {dataset.name!r} has no {key}")

    def _edisp(self, dataset):
        """EDisp kernel data on its IRF grid, and the IRF pixel of every map pixel."""
        edisp = dataset.edisp
        if isinstance(edisp, EDispMap):
            edisp = edisp.to_edisp_kernel_map(dataset.counts.geom.axes["energy"])
        kernel = edisp.edisp_map
        if not isinstance(kernel, WcsNDMap):
            raise InputError(f"dataset {dataset.name!r}: edisp must be on a WcsGeom")
        coords = dataset.counts.geom.to_image().get_coord().skycoord
        x, y = kernel.geom.wcs.world_to_pixel(coords)
        ny_irf, nx_irf = kernel.geom.to_image().data_shape
        # the pixel whose bounds hold each map pixel centre, as to_spectrum_dataset's edisp
        iy = nearest_pixel(y, ny_irf, ties="up")
        ix = nearest_pixel(x, nx_irf, ties="up")
        data = np.nan_to_num(kernel.data.astype(np.float64), nan=0.0)
        return np.ascontiguousarray(data), iy, ix

    def run(self, dataset):
        """Fit the index at every pixel of a map dataset.

        Parameters
        ----------
        dataset : `~gammapy.datasets.MapDataset`
            Dataset with counts, background, exposure and energy dispersion.

        Returns
        -------
        maps : `~gammapy.maps.Maps`
            ``index``, ``index_err``, ``amplitude``, ``amplitude_err`` (at the
            reference energy), ``ts``, ``sqrt_ts`` and ``flag`` images; with
            more than two ``energy_edges``, maps with an ``energy`` axis of the
            bands.
        """
        self._check(dataset)
        geom = dataset.counts.geom
        image = geom.to_image()
        radius_pix = (self.correlation_radius / Angle(image.pixel_scales[1])).to_value("")
        disk = disk_weights(radius_pix)
        safe = dataset.mask_safe.data if dataset.mask_safe is not None else None
        safe = np.ones((1,) + image.data_shape, bool) if safe is None else np.asarray(safe, bool)
        ones_mask = np.ones((1,) + image.data_shape, bool)

        counts = correlate_masked(native_floats(dataset.counts.data), safe, disk)
        background = correlate_masked(native_floats(dataset.npred_background().data), safe, disk)
        n_safe = correlate_masked(np.ones((1,) + image.data_shape), safe, disk)
        use = np.broadcast_to(n_safe > 0, counts.shape)
        n_pix = correlate_masked(np.ones((1,) + image.data_shape), ones_mask, disk)[0]
        exposure = correlate_masked(native_floats(dataset.exposure.data), ones_mask, disk) / n_pix
        exposure *= (1 * dataset.exposure.unit).to_value("cm2 s")

        edisp, iy, ix = self._edisp(dataset)
        energy_true = dataset.exposure.geom.axes["energy_true"]
        e_lo = energy_true.edges[:-1].to_value(u.TeV)
        e_hi = energy_true.edges[1:].to_value(u.TeV)
        results = []
        for band in self._bands(geom):
            results.append(fit_powerlaw_map(
                counts, background, use & band, exposure, edisp, iy, ix, e_lo, e_hi,
                self.reference_energy.to_value(u.TeV), self.index_range[0], self.index_range[1],
                self.ts_threshold,
            ))
        # (n_bands, 6, ny, nx): amplitude, index, their errors, ts, flag
        result = np.stack([np.stack(r) for r in results])
        if self.energy_edges is not None and len(self.energy_edges) > 2:
            geom_out = image.to_cube([MapAxis.from_energy_edges(self.energy_edges,
                                                                name="energy")])
        else:
            geom_out = image
            result = result[0]
        result = np.moveaxis(result, -3, 0)
        amplitude_unit = u.Unit("cm-2 s-1 TeV-1")
        ts = result[4]
        with np.errstate(invalid="ignore"):
            sqrt_ts = np.sign(ts) * np.sqrt(np.abs(ts))
        maps = {
            "amplitude": (result[0], amplitude_unit),
            "index": (result[1], ""),
            "amplitude_err": (result[2], amplitude_unit),
            "index_err": (result[3], ""),
            "ts": (ts, ""),
            "sqrt_ts": (sqrt_ts, ""),
            "flag": (result[5].astype(np.int16), ""),
        }
        return Maps(**{
            name: Map.from_geom(geom_out, data=data, unit=unit)
            for name, (data, unit) in maps.items()
        })

    def _bands(self, geom):
        """Per band, the reconstructed energy bins it holds: (n_energy, 1, 1) bool arrays."""
        if self.energy_edges is None:
            return [np.ones((geom.axes["energy"].nbin, 1, 1), bool)]
        return [
            np.asarray(geom.energy_mask(energy_min=lo, energy_max=hi).data, bool)[..., :1, :1]
            for lo, hi in itertools.pairwise(self.energy_edges)
        ]
