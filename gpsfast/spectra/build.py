"""The gammapy objects of the spectra, built from shared immutable parts (axes, WCS).

`Builder` makes the `~gammapy.datasets.SpectrumDataset` of each region from the
region sums; `RegionMaps` the `~gammapy.maps.RegionNDMap` s of many regions of one
template map. The constructors' re-validation of what the templates guarantee is
skipped (`gpsfast._compat.new_region_geom` and friends).
"""
import base64
import os

import astropy.units as u
import numpy as np
from gammapy.datasets import MapDatasetOnOff, SpectrumDataset, SpectrumDatasetOnOff
from gammapy.maps import MapAxes

from gpsfast import _compat

__all__ = ["Builder", "RegionMaps", "random_names"]


class RegionMaps:
    """Builds the `RegionNDMap` s that ``template.to_region_nd_map`` gives, of many regions.

    The `MapAxes` of the template are built once and shared by all geometries
    (gammapy shares their `MapAxis` objects and the WCS too); data arrays and
    meta are each map's own.

    Parameters
    ----------
    template : `~gammapy.maps.WcsNDMap`
        Map whose axes, WCS, unit, meta and dtype the region maps take.
    values : `~numpy.ndarray`
        Values of the regions, region index first.
    dtype : `~numpy.dtype`, optional
        Data type of the region maps; default that of the template.
    """
    def __init__(self, template, values, dtype=None):
        self.axes = MapAxes.from_default(template.geom.axes, n_spatial_axes=2)
        self.wcs = template.geom.wcs
        self.unit = u.Unit(template.unit)
        self.meta = template.meta
        shape = tuple(self.axes.shape[::-1]) + (1, 1)  # RegionGeom.data_shape
        self.ndim = len(shape)
        dtype = template.data.dtype if dtype is None else dtype
        self.values = np.array(values, dtype=dtype).reshape((len(values),) + shape)

    def geom(self, region):
        return _compat.new_region_geom(region, self.axes, self.wcs, self.ndim)

    def map(self, geom, s):
        """Region map of region number ``s`` on ``geom``."""
        return _compat.new_region_nd_map(geom, self.values[s].copy(), self.unit, self.meta.copy())


def random_names(n):
    """``n`` distinct dataset names drawn as ``gammapy.utils.scripts.make_name`` draws one.

    8 url-safe base64 characters of random bytes, not starting with "_". Not
    ``make_name`` itself: it draws one uuid4 per name (about 5 us, a tenth of
    `gpsfast.spectra.extract_spectra`'s time per region), and does not promise
    distinct names (a `~gammapy.datasets.Datasets` refuses duplicates); here the
    random bytes of all names come from one ``os.urandom`` call.
    """
    names = []
    seen = set()
    while len(names) < n:
        raw = base64.urlsafe_b64encode(os.urandom(6 * (n - len(names)))).decode()
        for k in range(0, len(raw), 8):
            name = raw[k:k + 8]
            if name[0] != "_" and name not in seen:
                seen.add(name)
                names.append(name)
    return names


class Builder:
    """Builds the spectrum datasets of the regions from the region sums.

    Maps of one region with equal geometries (counts, masks, background) share
    one `~gammapy.maps.RegionGeom`.
    """

    def __init__(self, dataset, sums, containment_correction):
        self.dataset = dataset
        self.sums = sums
        self.containment_correction = containment_correction
        templates = {
            "counts": dataset.counts,
            "mask_safe": dataset.mask_safe,
            "mask_fit": dataset.mask_fit,
            "exposure": dataset.exposure,
            "acceptance": getattr(dataset, "acceptance", None),
            "counts_off": getattr(dataset, "counts_off", None),
        }
        templates.update(sums["templates"])
        templates = {k: v for k, v in templates.items() if v is not None}
        self.geom_key = {}
        for name, template in templates.items():
            self.geom_key[name] = next(
                (key for key in set(self.geom_key.values())
                 if templates[key].geom == template.geom),
                name,
            )
        self.factories = {
            name: RegionMaps(template, sums[name], bool if name.startswith("mask") else None)
            for name, template in templates.items()
        }
        self.is_on_off = isinstance(dataset, MapDatasetOnOff)
        self.cls = SpectrumDatasetOnOff if self.is_on_off else SpectrumDataset

    def _map(self, geoms, region, name, s):
        key = self.geom_key[name]
        geom = geoms.get(key)
        if geom is None:
            geom = geoms[key] = self.factories[key].geom(region)
        return self.factories[name].map(geom, s)

    def build(self, s, region, name, edisp, meta):
        """The spectrum dataset of region number ``s``."""
        sums = self.sums
        dataset = self.dataset
        geoms = {}
        kwargs = {
            "counts": self._map(geoms, region, "counts", s),
            "edisp": edisp,
            "gti": dataset.gti,
            "meta_table": dataset.meta_table,
            "name": name,
            "meta": meta,
        }
        for key in ("mask_safe", "mask_fit"):
            if key in sums:
                kwargs[key] = self._map(geoms, region, key, s)
        if "exposure" in sums:
            exposure = self._map(geoms, region, "exposure", s)
            if self.containment_correction:
                containment = dataset.psf.containment(
                    position=region.center,
                    energy_true=exposure.geom.axes["energy_true"].center,
                    rad=region.radius,
                )
                exposure.quantity *= containment.reshape(exposure.geom.data_shape)
            kwargs["exposure"] = exposure
        if self.is_on_off:
            self._on_off(geoms, region, s, kwargs)
        elif "background" in sums:
            kwargs["background"] = self._map(geoms, region, "background", s)
        return self.cls(**kwargs)

    def _on_off(self, geoms, region, s, kwargs):
        sums = self.sums
        kwargs["acceptance"] = self._map(geoms, region, "acceptance", s)
        kwargs["counts_off"] = None
        kwargs["acceptance_off"] = None
        if "counts_off" in sums:
            counts_off = self._map(geoms, region, "counts_off", s)
            norm = self._map(geoms, region, "alpha_counts_off", s)
            acceptance_off = kwargs["acceptance"] * counts_off / norm
            np.nan_to_num(acceptance_off.data, copy=False)
            kwargs["counts_off"] = counts_off
            kwargs["acceptance_off"] = acceptance_off
