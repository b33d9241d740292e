"""`FastPSFMap`: gammapy's ``PSFMap`` with fast, equal ``get_psf_kernel`` and ``containment_radius``.

gammapy's ``get_psf_kernel`` (about 85% of the time of a cold ``MapDataset.npred``)
rebuilds the kernel geometry and its separations for every call; here they are
computed once per kernel geometry and kept, with the same results.
"""
import threading

import numpy as np
import astropy.units as u
from gammapy.irf import PSFKernel, PSFMap
from gammapy.maps import Map, WcsGeom
from gammapy.utils.array import round_up_to_odd

from gpsfast import _compat, twins
from gpsfast._compat import PSF_MAX_OVERSAMPLING
from gpsfast.irf.lookup import CachedMaskSafe, interp_axis, linear_weights, scaled_cell_weights
from gpsfast.pixels import image_key

__all__ = ["FastPSFMap"]

# PSF kernel sub-pixel grids per (kernel geometry, size, oversampling, rad axis)
_KERNEL_GRIDS = {}
_KERNEL_GRIDS_LOCK = threading.Lock()
_MAX_KERNEL_GRIDS = 1024


class FastPSFMap(CachedMaskSafe, PSFMap):
    """`~gammapy.irf.PSFMap` whose ``get_psf_kernel`` is fast and gives the same kernels.

    gammapy's ``get_psf_kernel`` rebuilds, for every true-energy bin, the kernel
    geometry, its sky coordinates and separations and interpolates the 4D PSF map
    there. None of the geometry depends on the source position: it is computed
    once per kernel geometry and kept; per call only the PSF profile at the
    position (a bilinear interpolation of the map's spatial bins) and its
    interpolation on the cached radius grid remain. Same algorithm as gammapy
    otherwise (float32 kernel, normalised per energy): the kernels agree to the
    float32 rounding (one ulp at most; bit for bit on the survey IRFs tested).

    Create it from an existing map with `from_psf_map`; it is a `PSFMap` in
    every other respect (I/O, plots, containment). The safe-mask image is cached
    too: the PSF map data must not be changed in place while it is in use.
    """

    @classmethod
    def from_psf_map(cls, psf):
        """`FastPSFMap` sharing the PSF and exposure maps of ``psf``.

        Parameters
        ----------
        psf : `~gammapy.irf.PSFMap`
            PSF map.

        Returns
        -------
        psf : `FastPSFMap`
        """
        return cls(psf_map=psf.psf_map, exposure_map=psf.exposure_map)

    def _containment_grid(self, energy_true):
        """Cumulated PSF profile and gammapy's interpolation grid for ``containment_radius``.

        gammapy interpolates the rad-cumulated PSF IRF at every (energy, radius)
        of a radius axis upsampled 20 times: the cell indices and weights of
        those points (``scipy.interpolate.RegularGridInterpolator``'s rule, on
        gammapy's scaled axes) and the out-of-range mask depend only on the
        energies, and are kept per energy array and PSF map object.
        """
        cached = self.__dict__.get("_fast_containment")
        if cached is None or cached[0] is not _compat.irf_map(self):
            cumsum = _compat.psf_irf(self).cumsum(axis_name="rad")
            rad = self.psf_map.geom.axes["rad"].upsample(factor=20).center
            cached = (_compat.irf_map(self), cumsum, rad, {})
            self.__dict__["_fast_containment"] = cached
        _, cumsum, rad, grids = cached
        key = (str(energy_true.unit), energy_true.value.tobytes())
        grid = grids.get(key)
        if grid is None:
            axes = cumsum.axes
            energy_axis, rad_axis = axes[self.energy_name], axes["rad"]
            energy_index, energy_weight = scaled_cell_weights(energy_axis, energy_true)
            rad_index, rad_weight = scaled_cell_weights(rad_axis, rad)
            invalid = (energy_axis.coord_to_idx(energy_true, clip=False) == -1)[np.newaxis, :] | (
                rad_axis.coord_to_idx(rad, clip=False) == -1
            )[:, np.newaxis]
            grid = (energy_index, energy_weight, rad_index, rad_weight, invalid)
            if len(grids) > 64:
                grids.clear()
            grids[key] = grid
        return cumsum, rad, grid

    def containment_radius(self, fraction, energy_true, position=None):
        """Containment radius, as `gammapy.irf.PSFMap.containment_radius`.

        The PSF map's cumulative profile is interpolated at the position once
        (bilinear over the map pixels, linear extrapolation as gammapy's
        interpolator), then on the (energy, radius) grid gammapy scans, with the
        grid's interpolation weights kept per energy array.

        Parameters
        ----------
        fraction : float
            Containment fraction.
        energy_true : `~astropy.units.Quantity`
            True energies (1D).
        position : `~astropy.coordinates.SkyCoord`, optional
            Position; default the map centre.

        Returns
        -------
        radius : `~astropy.coordinates.Angle`
            Containment radius per energy.
        """
        energy_true = u.Quantity(energy_true)
        if (
            energy_true.ndim != 1
            or np.ndim(fraction) != 0
            or not self.psf_map.geom.is_regular
            or (position is not None and not position.isscalar)
            or min(self.psf_map.geom.axes["rad"].nbin, self.psf_map.geom.axes[self.energy_name].nbin) < 2
        ):
            return super().containment_radius(fraction, energy_true, position=position)
        if position is None:
            position = self.psf_map.geom.center_skydir
        return self._containment_radius_pix(fraction, energy_true, self._position_pix(position))

    def _position_pix(self, position):
        """Pixel coordinates (x, y) of a scalar position on the PSF map."""
        x, y = self.psf_map.geom.to_image().coord_to_pix(position)
        return float(np.asarray(x, dtype=float).ravel()[0]), float(np.asarray(y, dtype=float).ravel()[0])

    def _containment_radius_pix(self, fraction, energy_true, pix):
        """`containment_radius` at pixel coordinates ``pix`` of the PSF map."""
        cumsum, rad, (energy_index, energy_weight, rad_index, rad_weight, invalid) = (
            self._containment_grid(energy_true)
        )
        data = cumsum.data
        x, y = pix
        ny, nx = data.shape[-2:]
        if not (-0.5 <= x <= nx - 0.5 and -0.5 <= y <= ny - 0.5):
            # gammapy masks coordinates outside the spatial axes: containment 0
            containment = np.zeros(invalid.shape)
        else:
            iy, wy = linear_weights(y, ny)
            ix, wx = linear_weights(x, nx)
            profile = interp_axis(interp_axis(data, iy, wy, axis=2), ix, wx, axis=2)
            # scipy's 2D linear rule, in its order of operations
            e0, e1 = energy_index[np.newaxis, :], energy_index[np.newaxis, :] + 1
            r0, r1 = rad_index[:, np.newaxis], rad_index[:, np.newaxis] + 1
            we, wr = energy_weight[np.newaxis, :], rad_weight[:, np.newaxis]
            containment = (
                profile[e0, r0] * (1 - we) * (1 - wr)
                + profile[e0, r1] * (1 - we) * wr
                + profile[e1, r0] * we * (1 - wr)
                + profile[e1, r1] * we * wr
            )
            containment = np.clip(containment, 0, np.inf)
            scale = cumsum.unit.to("")
            if scale != 1:
                containment = containment * scale
            containment[invalid | ~np.isfinite(containment)] = 0.0
        index = np.argmin(np.abs(containment - fraction), axis=0)
        return rad[index].reshape(energy_true.shape)

    def get_psf_kernel(
        self, geom, position=None, max_radius=None, containment=0.999, precision_factor=12
    ):
        """PSF kernel at a position, as `gammapy.irf.PSFMap.get_psf_kernel`.

        Parameters
        ----------
        geom : `~gammapy.maps.Geom`
            Target geometry.
        position : `~astropy.coordinates.SkyCoord`, optional
            Position; default the centre of the PSF map.
        max_radius : `~astropy.coordinates.Angle`, optional
            Maximum radius of the kernel; default the largest containment radius.
        containment : float, optional
            Containment fraction setting the kernel size. Default is 0.999.
        precision_factor : int, optional
            Ratio of the bin half-width to the 68% containment radius driving the
            oversampling. Default is 12.

        Returns
        -------
        kernel : `~gammapy.irf.PSFKernel`
        """
        if geom.is_region or geom.is_hpx or not self.psf_map.geom.is_regular:
            return super().get_psf_kernel(
                geom, position=position, max_radius=max_radius,
                containment=containment, precision_factor=precision_factor,
            )
        if position is None:
            position = self.psf_map.geom.center_skydir
        position = _compat.nearest_valid_position(self, position)

        pix = self._position_pix(position)
        energy_name = self.energy_name
        energy_axis = self.psf_map.geom.axes[energy_name]
        radii = self._kernel_radius(containment, energy_axis.center, position, pix)
        if max_radius is None:
            max_radius = np.max(radii)
        else:
            max_radius = u.Quantity(max_radius)
            radii[radii > max_radius] = max_radius
        # gammapy's _psf_upsampling_factor, vectorised
        r68 = self._kernel_radius(0.68, geom.axes[energy_name].center, position, pix)
        base_factor = (2 * r68 / geom.pixel_scales.max()).to_value("")
        factors = np.minimum(np.ceil(precision_factor / base_factor).astype(int), PSF_MAX_OVERSAMPLING)
        geom = self._odd_npix_geom(geom, max_radius)
        rad_edges = self.psf_map.geom.axes["rad"].edges
        grid_key = image_key(geom)
        if grid_key is not None:
            grid_key = (grid_key, str(rad_edges.unit), rad_edges.value.tobytes())
        profiles = self._profiles_at(pix)
        data = np.zeros(geom.data_shape, dtype=np.float32)
        binsz = geom.to_image().pixel_scales.max()
        energy_pix = self.psf_map.geom.axes[energy_name].coord_to_pix(
            geom.axes[energy_name].center
        )
        n_images = min(data.shape[0], len(radii))
        npixs = round_up_to_odd((2 * radii / binsz).to_value(""))
        for ind in range(n_images):
            npix = int(npixs[ind])
            rad_index, rad_weight, slices = self._kernel_grid(geom, grid_key, npix, factors[ind])
            e_index, e_weight = linear_weights(energy_pix[ind], profiles.shape[0])
            profile = interp_axis(profiles, e_index, e_weight, axis=0)
            values = np.clip(interp_axis(profile, rad_index, rad_weight, axis=0), 0, np.inf)
            factor = factors[ind]
            n = values.shape[0] // factor
            image = values.reshape(n, factor, n, factor).sum(axis=(1, 3))
            data[(ind,) + slices] = image
        return PSFKernel(Map.from_geom(geom, data=data), normalize=True)

    def _kernel_radius(self, fraction, energy_true, position, pix):
        """Containment radius at a position whose PSF-map pixel coordinates are ``pix``."""
        if (
            min(self.psf_map.geom.axes["rad"].nbin, self.psf_map.geom.axes[self.energy_name].nbin) < 2
            or np.ndim(energy_true) != 1
        ):
            return self.containment_radius(fraction, energy_true, position=position)
        return self._containment_radius_pix(fraction, u.Quantity(energy_true), pix)

    def _odd_npix_geom(self, geom, max_radius):
        """``geom.to_odd_npix(max_radius)``, kept per geometry object and radius."""
        cache = self.__dict__.setdefault("_fast_odd_geoms", {})
        entry = cache.get(id(geom))
        if entry is None or entry[0] is not geom:
            if len(cache) > 16:
                cache.clear()
            entry = (geom, {})
            cache[id(geom)] = entry
        key = float(max_radius.to_value("deg"))
        odd = entry[1].get(key)
        if odd is None:
            odd = geom.to_odd_npix(max_radius=max_radius)
            entry[1][key] = odd
        return odd

    def _profiles_at(self, pix):
        """PSF map values at pixel coordinates ``pix`` (bilinear in space), shape (n_energy, n_rad)."""
        x, y = pix
        cached = self.__dict__.get("_fast_finite_data")
        if cached is None or cached[0] is not _compat.irf_map(self):
            # gammapy's interp_by_pix interpolates with non-finite values set to 0
            finite = np.nan_to_num(self.psf_map.data, nan=0.0, posinf=0.0, neginf=0.0)
            cached = (_compat.irf_map(self), finite)
            self.__dict__["_fast_finite_data"] = cached
        data = cached[1]
        ny, nx = data.shape[-2:]
        ix, wx = linear_weights(x, nx)
        iy, wy = linear_weights(y, ny)
        rows = interp_axis(data, iy, wy, axis=2)
        return interp_axis(rows, ix, wx, axis=2)

    def _kernel_grid(self, geom, grid_key, npix, factor):
        """Rad-axis weights of the sub-pixels and the slices of the kernel image.

        They depend only on the geometry and the PSF map's rad axis: they are
        kept in a module-wide cache shared by all `FastPSFMap` objects, keyed by
        `gpsfast.pixels.image_key` of the geometry and the rad-axis edges.
        """
        key = None if grid_key is None else (grid_key, npix, factor)
        grid = None if key is None else _KERNEL_GRIDS.get(key)
        if grid is None:
            image = geom.to_image()
            # what WcsGeom.to_odd_npix builds for a radius giving npix pixels
            cut = WcsGeom.create(
                skydir=image.center_skydir, binsz=image.pixel_scales.max(), npix=npix,
                proj=image.projection, frame=image.frame,
            )
            upsampled = cut.upsample(factor=factor)
            rad = upsampled.get_coord(sparse=True).skycoord.separation(image.center_skydir)
            rad_pix = self.psf_map.geom.axes["rad"].coord_to_pix(rad)
            n_rad = self.psf_map.geom.axes["rad"].nbin
            rad_index, rad_weight = linear_weights(np.asarray(rad_pix, dtype=float), n_rad)
            idx = image.coord_to_idx(cut.get_coord())
            slices = (
                slice(int(idx[1].min()), int(idx[1].max()) + 1),
                slice(int(idx[0].min()), int(idx[0].max()) + 1),
            )
            grid = (rad_index, rad_weight, slices)
            if key is None:  # no key sure to describe the geometry (gpsfast.pixels.image_key)
                return grid
            # the entry is inserted whole, and the caller gets its own reference:
            # threads clearing or filling the cache at the same time do not disturb it
            with _KERNEL_GRIDS_LOCK:
                if len(_KERNEL_GRIDS) >= _MAX_KERNEL_GRIDS:
                    _KERNEL_GRIDS.clear()
                _KERNEL_GRIDS[key] = grid
        return grid


twins.register(PSFMap, FastPSFMap, FastPSFMap.from_psf_map)
