"""The sums of a map dataset in many circular regions (`reduce_dataset`) and the IRFs at their centres.

Counts, background, masks and exposure are summed in place on the regions' pixel
lists (`gpsfast.kernels.aperture.pixel_sums`, big-endian FITS data included); the
energy dispersion of every region is read at the IRF pixel gammapy picks
(`irf_region_maps`).
"""
import astropy.units as u
import numpy as np
from gammapy.datasets import MapDataset, MapDatasetOnOff
from gammapy.irf import PSFMap
from gammapy.maps import WcsGeom, WcsNDMap

from gpsfast import _compat
from gpsfast.errors import InputError
from gpsfast.kernels.aperture import pixel_sums
from gpsfast.pixels import half_way, nearest_pixel
from gpsfast.spectra.build import RegionMaps
from gpsfast.spectra.pixels import PlainSky, choose_sky, degree_values, seed_circles

__all__ = ["check_dataset", "disk_sums", "irf_region_maps", "native_floats", "reduce_dataset", "same_image"]


def _kernel_cube(data):
    """A cube as `pixel_sums` reads it, without copying float32 / float64 data.

    Floats in the non-native byte order (FITS maps are big-endian) are passed
    as the unsigned-integer view of their bytes, which the kernel swaps back.
    """
    data = np.ascontiguousarray(data)
    if data.dtype.kind == "f" and data.dtype.itemsize in (4, 8):
        if data.dtype.isnative:
            return data
        return data.view(np.uint32 if data.dtype.itemsize == 4 else np.uint64)
    return data.astype(np.float64)


def disk_sums(data, mask, circles, cutout=True):
    """Kernel disk sums of a (n_energy, ny, nx) array on the circles.

    Returns ``(sums, norm, norm_all)`` as `aperture_sums` does.
    """
    if mask is None:
        mask = np.ones((1,) + data.shape[-2:], dtype=bool)
    cube = _kernel_cube(data)
    mask = np.ascontiguousarray(mask, dtype=bool)
    parts = [
        pixel_sums(cube, mask, pix, start, stop) + (norm_all,)
        for pix, start, stop, norm_all in circles.pixel_lists(cutout)
    ]
    return tuple(np.concatenate(arrays) for arrays in zip(*parts))


def native_floats(data):
    """float32 or float64 data in native byte order (FITS maps are big-endian)."""
    data = np.asarray(data)
    if data.dtype.kind != "f" or data.dtype.itemsize not in (4, 8):
        return data.astype(np.float64)
    return data.astype(data.dtype.newbyteorder("="), copy=False)


def check_dataset(dataset, containment_correction):
    if not isinstance(dataset, MapDataset):
        raise InputError(f"dataset must be a gammapy MapDataset, got {type(dataset).__name__}")
    if dataset.counts is None:
        raise InputError(f"dataset {dataset.name!r} has no counts map")
    if not isinstance(dataset.counts.geom, WcsGeom):
        raise InputError(
            f"dataset {dataset.name!r}: counts must be on a WcsGeom, "
            f"got {type(dataset.counts.geom).__name__}"
        )
    if containment_correction and (dataset.psf is None or not isinstance(dataset.psf, PSFMap)):
        raise InputError(
            f"dataset {dataset.name!r}: no PSFMap set, containment correction impossible"
        )
    if isinstance(dataset, MapDatasetOnOff) and dataset.acceptance is None:
        raise InputError(f"dataset {dataset.name!r}: MapDatasetOnOff without acceptance")


def same_image(a, b):
    """Exactly the same pixel grid (``WcsGeom.__eq__`` allows a 1e-6 tolerance)."""
    return a.data_shape == b.data_shape and a.wcs.wcs.compare(b.wcs.wcs)


def _geom_circles(geom, seeds, cache):
    image = geom.to_image()
    for key, value in cache:
        if same_image(key, image):
            return value
    value = seed_circles(image, seeds)
    cache.append((image, value))
    return value


def _raise_outside(circles, seeds, dataset):
    bad = np.flatnonzero(circles.outside)
    if bad.size:
        i = bad[0]
        raise InputError(
            f"region {i} (center {seeds.regions[i].center.to_string('decimal')}, radius "
            f"{seeds.regions[i].radius.to_value(u.deg):g} deg) is not fully contained in the "
            f"counts map of dataset {dataset.name!r} ({bad.size} region(s) outside)"
        )


def _check_mask_uniform(dataset, seeds, cache):
    """gammapy refuses regions where the mask is not spatially uniform per energy."""
    mask = dataset.mask
    if mask is None or mask.geom.is_region:
        return
    if np.all(mask.data == mask.data[..., :1, :1]):
        return  # spatially constant in every energy bin
    circles = _geom_circles(mask.geom, seeds, cache)
    # only the pixel counts are used: any float cube of the right shape does
    cube = dataset.counts.data if dataset.counts.data.shape == mask.data.shape else mask.data
    _, norm, norm_all = disk_sums(cube, mask.data, circles, cutout=False)
    uniform = (norm == 0) | (norm == norm_all[:, None])
    bad = np.flatnonzero(~uniform.all(axis=1))
    if bad.size:
        i = bad[0]
        raise InputError(
            f"region {i} (center {seeds.regions[i].center.to_string('decimal')}): the mask of "
            f"dataset {dataset.name!r} is not spatially uniform within the region for "
            f"each energy bin ({bad.size} region(s) affected)"
        )


def reduce_dataset(dataset, seeds):
    """All region sums of a dataset: dict of (n_regions, n_energy) arrays."""
    cache = []
    circles = _geom_circles(dataset.counts.geom, seeds, cache)
    _raise_outside(circles, seeds, dataset)
    _check_mask_uniform(dataset, seeds, cache)

    safe = dataset.mask_safe.data if dataset.mask_safe is not None else None
    out = {"circles": circles}
    counts, n_safe, n_all = disk_sums(dataset.counts.data, safe, circles)
    out["counts"] = counts
    out["n_pix"] = n_all
    if safe is not None:
        out["mask_safe"] = n_safe > 0
    if dataset.mask_fit is not None:
        out["mask_fit"] = disk_sums(dataset.counts.data, dataset.mask_fit.data, circles)[1] > 0
    templates = {}
    if dataset.stat_type == "cash" and dataset.background is not None:
        templates["background"] = dataset.npred_background()
        out["background"] = disk_sums(templates["background"].data, safe, circles)[0]
    if dataset.exposure is not None:
        exp_circles = _geom_circles(dataset.exposure.geom, seeds, cache)
        total, _, n_exp = disk_sums(dataset.exposure.data, None, exp_circles)
        with np.errstate(invalid="ignore", divide="ignore"):
            out["exposure"] = total / n_exp[:, None]
    if isinstance(dataset, MapDatasetOnOff):
        if dataset.counts_off is not None:
            templates["alpha_counts_off"] = dataset.background
            out["counts_off"] = disk_sums(dataset.counts_off.data, safe, circles)[0]
            out["alpha_counts_off"] = disk_sums(templates["alpha_counts_off"].data, safe, circles)[0]
        acc, n_acc, _ = disk_sums(dataset.acceptance.data, safe, circles)
        with np.errstate(invalid="ignore", divide="ignore"):
            out["acceptance"] = acc / n_acc
    out["templates"] = templates
    return out


def nearest_irf_pixels(irf_map, seeds):
    """Spatial pixel of an IRF map that gammapy's nearest interpolation picks per centre.

    ``IRFMap.to_region_nd_map(center)`` evaluates the map at the centre of the
    pixel bounding box of the point, i.e. at pixel ``floor(x + 0.5)``, then picks
    the nearest pixel (clipped to the map). Returns the ``(iy, ix)`` index
    arrays and a mask of the regions whose position is exactly half-way between
    two pixels (there gammapy's own call decides).
    """
    wcs = irf_map.geom.wcs
    ny, nx = irf_map.geom.to_image().data_shape
    ix = np.empty(len(seeds), np.int64)
    iy = np.empty(len(seeds), np.int64)
    tie = np.zeros(len(seeds), bool)
    for group in seeds.groups:
        sky = choose_sky(wcs, group)
        if isinstance(sky, PlainSky):
            x, y = sky.world_to_pixel(*degree_values(group.lon, group.lat))
        else:
            x, y = wcs.world_to_pixel(group.centers)
        idx = group.members
        for coord, out, n in ((x, ix, nx), (y, iy, ny)):
            tie[idx] |= half_way(coord)
            out[idx] = nearest_pixel(coord, n, ties="up")
    return iy, ix, tie


def _finite_irf_data(irf_map):
    """IRF map data with non-finite values as zero, where some values are finite."""
    data = irf_map.data
    finite = np.isfinite(data)
    if finite.any() and not finite.all():
        data = np.where(finite, data, 0.0).astype(irf_map.data.dtype)
    return data


def irf_region_maps(irf, seeds):
    """``irf.to_region_nd_map(region.center)`` for all regions, with shared lookups."""
    irf_map = irf.edisp_map
    if not isinstance(irf_map, WcsNDMap):
        return [irf.to_region_nd_map(region.center) for region in seeds.regions]
    # the IRF values of all regions at once, region index first
    iy, ix, tie = nearest_irf_pixels(irf_map, seeds)
    factories = [RegionMaps(irf_map, np.moveaxis(_finite_irf_data(irf_map)[..., iy, ix], -1, 0))]
    exposure_map = irf.exposure_map
    if exposure_map is not None:
        if not same_image(exposure_map.geom.to_image(), irf_map.geom.to_image()):
            iy, ix, tie_exposure = nearest_irf_pixels(exposure_map, seeds)
            tie = tie | tie_exposure
        values = np.moveaxis(_finite_irf_data(exposure_map)[..., iy, ix], -1, 0)
        factories.append(RegionMaps(exposure_map, values))
    out = []
    for s, region in enumerate(seeds.regions):
        if tie[s]:
            out.append(irf.to_region_nd_map(region.center))
            continue
        point = _compat.new_point_region(region.center)
        region_maps = [factory.map(factory.geom(point), s) for factory in factories] + [None]
        out.append(_compat.new_irf_map(irf.__class__, region_maps[0], region_maps[1]))
    return out
