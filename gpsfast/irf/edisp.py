"""`FastEDispKernelMap`: gammapy's ``EDispKernelMap`` with ``get_edisp_kernel`` cached per map pixel."""
import numpy as np
from astropy.coordinates import SkyCoord
from gammapy.irf import EDispKernel, EDispKernelMap
from gammapy.maps import RegionGeom

from gpsfast import _compat, twins
from gpsfast.errors import InputError
from gpsfast.irf.lookup import CachedMaskSafe
from gpsfast.pixels import nearest_pixel

__all__ = ["FastEDispKernelMap"]


class FastEDispKernelMap(CachedMaskSafe, EDispKernelMap):
    """`~gammapy.irf.EDispKernelMap` whose ``get_edisp_kernel`` is cached per map pixel.

    gammapy looks the kernel up at the map pixel nearest to the position (after
    moving the position to the nearest valid pixel): the kernel is constant over
    each pixel of the map, so it is read once per pixel here, with the same
    nearest-pixel rule. The map data must not be changed in place while it is in use.
    """

    @classmethod
    def from_edisp_map(cls, edisp):
        """`FastEDispKernelMap` sharing the kernel and exposure maps of ``edisp``.

        Parameters
        ----------
        edisp : `~gammapy.irf.EDispKernelMap`
            Energy dispersion kernel map.

        Returns
        -------
        edisp : `FastEDispKernelMap`
        """
        return cls(edisp_kernel_map=edisp.edisp_map, exposure_map=edisp.exposure_map)

    def get_edisp_kernel(self, position=None, energy_axis=None):
        """Energy dispersion kernel at a position, as gammapy's ``get_edisp_kernel``.

        Parameters
        ----------
        position : `~astropy.coordinates.SkyCoord`, optional
            Position; default the map centre.
        energy_axis : `~gammapy.maps.MapAxis`, optional
            Reconstructed energy axis, only checked.

        Returns
        -------
        edisp : `~gammapy.irf.EDispKernel`
        """
        geom = self.edisp_map.geom
        if isinstance(geom, RegionGeom) or not isinstance(position, SkyCoord) or not geom.is_regular:
            return super().get_edisp_kernel(position=position, energy_axis=energy_axis)
        if energy_axis and energy_axis != geom.axes["energy"]:
            raise InputError("get_edisp_kernel: energy axis differs from the one of the EDisp map")
        position = _compat.nearest_valid_position(self, position)
        x, y = geom.to_image().coord_to_pix(position)
        ny, nx = geom.data_shape[-2:]
        # gammapy's nearest-neighbour lookup: ties go down
        key = tuple(int(nearest_pixel(np.ravel(pix)[0], n, ties="down")) for pix, n in ((x, nx), (y, ny)))
        cache = self.__dict__.setdefault("_fast_kernels", {})
        if key not in cache:
            data = self.edisp_map.data[..., key[1], key[0]]
            cache[key] = np.nan_to_num(data, nan=0.0, posinf=0.0, neginf=0.0).astype(data.dtype)
        return EDispKernel(axes=geom.axes[["energy_true", "energy"]], data=cache[key].copy())


twins.register(EDispKernelMap, FastEDispKernelMap, FastEDispKernelMap.from_edisp_map)
