"""Spectra in circular regions, without ``MapDataset.to_spectrum_dataset``.

`extract_spectra` returns the same `~gammapy.datasets.SpectrumDataset` objects as
``[dataset.to_spectrum_dataset(region) for region in regions]``, but sums all
regions with compiled kernels (`gpsfast.kernels.aperture.aperture_pixels`,
`gpsfast.kernels.aperture.pixel_sums`) instead of building a region mask over
the whole map for each region.

Pixel membership is the one of gammapy, bit for bit: gammapy decides it on a
cutout of the map around the region, with ``CircleSkyRegion.to_pixel`` on the
cutout WCS (pixel centre strictly inside the circle, radius converted with the
local pixel scale). The cutout bounds and the pixel centre and radius of every
region in the cutout frame are computed here for all regions at once, with the
same floating-point operations: for centres in the frame of the map (Galactic
or ICRS) directly on arrays and wcslib (`_PlainSky`, checked against the
`SkyCoord` calls once per process), else with the astropy / regions calls on
array `SkyCoord` s. The maps are summed in place, big-endian FITS data
included (`gpsfast.kernels.aperture.pixel_sums`), and the gammapy objects are
built from shared immutable parts (axes, WCS) without re-validating them.

`IndexMapEstimator` fits a forward-folded power law at every pixel to the
spectrum summed in a disk around it (`gpsfast.kernels.aperture.correlate_masked`
and `gpsfast.kernels.plfit`).
"""
import base64
import copy
import functools
import itertools
import logging
import os

import astropy.units as u
import numpy as np
from astropy.coordinates import (
    ICRS,
    Angle,
    Galactic,
    Latitude,
    Longitude,
    SkyCoord,
    UnitSphericalRepresentation,
)
from astropy.coordinates.angles import offset_by
from astropy.table import Table
from astropy.wcs import WCS
from astropy.wcs.utils import (
    proj_plane_pixel_scales,
    skycoord_to_pixel,
    wcs_to_celestial_frame,
)
from gammapy.datasets import (
    Datasets,
    MapDataset,
    MapDatasetOnOff,
    SpectrumDataset,
    SpectrumDatasetOnOff,
)
from gammapy.irf import EDispMap, PSFMap
from gammapy.maps import (
    Map,
    MapAxes,
    MapAxis,
    Maps,
    WcsGeom,
    WcsNDMap,
)
from regions import CircleSkyRegion

from . import _compat
from ._compat import pixel_scale_angle_at_skycoord
from .clustering import cluster_index_map, cluster_regions
from .errors import InputError
from .kernels.aperture import (
    DISK,
    aperture_pixels,
    correlate_masked,
    disk_weights,
    pixel_sums,
)
from .kernels.plfit import fit_powerlaw_map

__all__ = ["IndexMapEstimator", "cluster_index_map", "cluster_regions", "extract_spectra", "extract_spectra_table"]

log = logging.getLogger(__name__)

_OFFSET = 1 * u.arcsec  # offset used by regions to measure the pixel scale
_CHUNK = 512  # regions per kernel call
_PLAIN_FRAMES = (Galactic, ICRS)  # frames without attributes (`_PlainSky`)


# ----------------------------------------------------------------------------
# regions input
# ----------------------------------------------------------------------------
def _table_column_deg(table, name):
    col = table[name]
    unit = col.unit if col.unit is not None else u.deg
    return u.Quantity(np.asarray(col, dtype=float), unit).to(u.deg)


def _regions_from_table(table):
    if {"ra", "dec"} <= set(table.colnames):
        lon, lat, frame = "ra", "dec", "icrs"
    elif {"glon", "glat"} <= set(table.colnames):
        lon, lat, frame = "glon", "glat", "galactic"
    else:
        raise InputError(
            f"seed table needs columns ra/dec or glon/glat and radius, got {table.colnames}"
        )
    if "radius" not in table.colnames:
        raise InputError(f"seed table needs a 'radius' column, got {table.colnames}")
    lon_deg = _table_column_deg(table, lon)
    lat_deg = _table_column_deg(table, lat)
    radius = _table_column_deg(table, "radius")
    return [
        CircleSkyRegion(SkyCoord(lo, la, frame=frame), r)
        for lo, la, r in zip(lon_deg, lat_deg, radius)
    ]


def _parse_regions(regions):
    """Return a list of `CircleSkyRegion` from a list of regions or a seed table."""
    if isinstance(regions, CircleSkyRegion):
        regions = [regions]
    elif isinstance(regions, Table):
        regions = _regions_from_table(regions)
    regions = list(regions)
    if not regions:
        raise InputError("no regions given")
    for idx, region in enumerate(regions):
        if not isinstance(region, CircleSkyRegion):
            raise InputError(
                f"regions[{idx}] is a {type(region).__name__}; only CircleSkyRegion is supported"
            )
    return regions


class _Group:
    """Regions of one frame and units: indices, stacked centres and radii.

    ``lon`` and ``lat`` are the `~astropy.coordinates.Longitude` and
    `~astropy.coordinates.Latitude` of the centres in their own units, None
    for a centre that is not a plain (lon, lat) position.
    """

    def __init__(self, members, frame, lon, lat, radius, center=None):
        self.members = np.array(members)
        self.frame = frame
        self.lon = lon
        self.lat = lat
        self.radius = radius
        self._center = center

    @property
    def centers(self):
        """The centres as one array `~astropy.coordinates.SkyCoord`."""
        if self._center is not None:
            return self._center.reshape((1,))
        return SkyCoord(self.lon, self.lat, frame=self.frame.replicate_without_data())


def _values(quantities):
    """Values of scalar quantities (of one unit) as a float array."""
    return np.array([q.view(np.ndarray) for q in quantities], dtype=float)


class _Seeds:
    """Regions with their centres and radii stacked in groups.

    A group holds regions with equivalent frames and the same units of
    longitude, latitude and radius; values are stacked without any conversion,
    so that every array element goes through the same floating-point operations
    as the region alone would. A centre that is not a plain (lon, lat) position
    (e.g. with a distance) forms its own group.
    """

    def __init__(self, regions):
        self.regions = regions
        groups = []  # [frame, units, members]; frame None: a centre on its own
        plain = {}  # (frame class, units) -> group, for frames without attributes
        for idx, region in enumerate(regions):
            frame = region.center.frame
            data = frame.data
            if not isinstance(data, UnitSphericalRepresentation):
                groups.append([None, None, [idx]])
                continue
            units = (data.lon.unit, data.lat.unit, region.radius.unit)
            key = (type(frame), units)
            if type(frame) in _PLAIN_FRAMES and key in plain:
                plain[key][2].append(idx)
                continue
            for group in groups:
                if (group[0] is not None and group[1] == units
                        and frame.is_equivalent_frame(group[0])):
                    group[2].append(idx)
                    break
            else:
                groups.append([frame, units, [idx]])
                if type(frame) in _PLAIN_FRAMES:
                    plain[key] = groups[-1]
        self.groups = [self._group(*group) for group in groups]
        for group in self.groups:
            bad = group.members[~(group.radius.value > 0)]
            if bad.size:
                raise InputError(f"regions[{bad.min()}] has a non-positive radius "
                                 f"{regions[bad.min()].radius}")

    def _group(self, frame, units, members):
        regions = self.regions
        if frame is None:
            region = regions[members[0]]
            return _Group(members, region.center.frame, None, None,
                          region.radius.reshape((1,)), center=region.center)
        centers = [regions[i].center.frame.data for i in members]
        lon = Longitude(_values([c.lon for c in centers]), units[0], copy=False)
        lat = Latitude(_values([c.lat for c in centers]), units[1], copy=False)
        radius = u.Quantity(_values([regions[i].radius for i in members]), units[2], copy=False)
        return _Group(members, frame, lon, lat, radius)

    def __len__(self):
        return len(self.regions)


# ----------------------------------------------------------------------------
# pixel geometry of the regions, as gammapy computes it
# ----------------------------------------------------------------------------
class _Circles:
    """Pixel centres, radii and cutout windows of circles on one WCS image."""

    def __init__(self, n, shape):
        self.shape = shape
        self.cx_full = np.empty(n)
        self.cy_full = np.empty(n)
        self.r_full = np.empty(n)
        self.x_lo = np.empty(n, dtype=np.int64)
        self.y_lo = np.empty(n, dtype=np.int64)
        self.x_hi = np.empty(n, dtype=np.int64)
        self.y_hi = np.empty(n, dtype=np.int64)
        self.cx_cut = np.empty(n)
        self.cy_cut = np.empty(n)
        self.r_cut = np.empty(n)
        self.outside = np.zeros(n, dtype=bool)
        self._pixel_lists = {}

    def pixel_lists(self, cutout):
        """Aperture pixel lists (`aperture_pixels`) in chunks of ``_CHUNK`` circles.

        With ``cutout`` the circles are those gammapy draws on its cutouts
        (clipped to the cutout windows), else those on the whole image.
        """
        lists = self._pixel_lists.get(cutout)
        if lists is None:
            lists = self._pixel_lists[cutout] = self._make_pixel_lists(cutout)
        return lists

    def _make_pixel_lists(self, cutout):
        n = len(self.cx_full)
        ny, nx = self.shape
        zeros = np.zeros(n)
        if cutout:
            cx, cy, r = self.cx_cut, self.cy_cut, self.r_cut
            win = (self.x_lo, self.y_lo, self.x_hi, self.y_hi)
        else:
            cx, cy, r = self.cx_full, self.cy_full, self.r_full
            win = (np.zeros(n, np.int64), np.zeros(n, np.int64), np.full(n, nx, np.int64),
                   np.full(n, ny, np.int64))
        # the pixel lists of all apertures are held at once: bound that memory
        return [
            aperture_pixels(ny, nx, cx[c], cy[c], zeros[c], r[c], zeros[c],
                            *(w[c] for w in win), DISK)
            for c in (slice(i, i + _CHUNK) for i in range(0, n, _CHUNK))
        ]


@functools.lru_cache(maxsize=64)
def _scale(unit, other):
    """The factor by which astropy multiplies values to convert them from ``unit`` to ``other``."""
    return u.Unit(unit).to(other)


def _sky_values(lon, lat):
    """Degree values of longitudes and latitudes, as ``SkyCoord.spherical`` gives them."""
    return lon.to_value(u.deg), lat.to_value(u.deg)


def _wrap_at(angle, a360, wrap_angle):
    """``Angle._wrap_at`` on values (``a360``: 360 degrees in their unit), in place."""
    floor = wrap_angle - a360
    if not ((angle < floor) | (angle >= wrap_angle)).any():
        return angle
    wraps = (angle - floor) // a360
    angle -= wraps * a360
    angle[angle >= wrap_angle] -= a360
    angle[angle < floor] += a360
    return angle


def _north_offsets(lon, lat):
    """``directional_offset_by(0, _OFFSET)`` of positions given as `Longitude`, `Latitude`.

    Returns the degree values of the offset positions, as the `SkyCoord` that
    `~astropy.coordinates.SkyCoord.directional_offset_by` builds holds them.
    The operations of `~astropy.coordinates.angles.offset_by` (spherical
    trigonometry on radian values, result wrapped to [0, 360) deg) are done
    on plain arrays, with the unit conversion factors of astropy; positions
    within 1e-12 of a pole go through ``offset_by`` itself.
    """
    to_rad = _scale(u.deg, u.rad)
    to_deg = _scale(u.rad, u.deg)
    distance = _OFFSET.value * _scale(_OFFSET.unit, u.rad)
    cos_a = np.cos(distance)
    sin_a = np.sin(distance)
    lat_rad = lat.value * _scale(lat.unit, u.rad)
    cos_c = np.sin(lat_rad)
    sin_c = np.cos(lat_rad)
    if np.any(sin_c < 1e-12):
        new_lon, new_lat = offset_by(lon=lon, lat=lat, posang=0.0, distance=_OFFSET)
        return _sky_values(Longitude(new_lon), Latitude(new_lat))
    cos_b_angle = np.cos(0.0)
    sin_b_angle = np.sin(0.0)
    cos_b = cos_c * cos_a + sin_c * sin_a * cos_b_angle
    xsin_a = sin_a * sin_b_angle * sin_c
    xcos_a = cos_a - cos_b * cos_c
    new_lon = lon.value * _scale(lon.unit, u.rad) + np.arctan2(xsin_a, xcos_a)
    full_turn = 360.0 * to_rad
    new_lon = _wrap_at(new_lon, full_turn, full_turn) * to_deg
    new_lat = np.arcsin(cos_b) * to_deg
    return _wrap_at(new_lon, 360.0, 360.0), new_lat  # Longitude(new_lon), in degrees


def _pixel_scale(dx, dy):
    """``pixel_scale_angle_at_skycoord`` scale from the pixel offsets of the north offsets."""
    return _OFFSET.to(u.arcsec) / (np.hypot(dx, dy) * u.pixel)


def _radius_pix(radius, dx, dy):
    """``(radius / _pixel_scale(dx, dy)).to(u.pix).value`` on plain arrays."""
    scale = _OFFSET.to_value(u.arcsec) / np.hypot(dx, dy)
    return (radius.value / scale) * _radius_scale(radius.unit)


@functools.lru_cache(maxsize=16)
def _radius_scale(unit):
    """``_scale`` from ``unit / (arcsec / pix)`` to pixels."""
    return _scale(unit / (u.arcsec / u.pix), u.pix)


class _PlainSky:
    """The WCS calls of ``regions`` / ``astropy`` for positions in the WCS frame, as numbers.

    ``wcs.world_to_pixel(skycoord)`` of a `SkyCoord` in the frame of a FITS WCS
    without distortions or pixel bounds is ``wcs.all_world2pix(lon, lat, 0)`` on
    the degree values of its longitude and latitude, and ``wcs.pixel_to_world``
    is ``wcs.all_pix2world`` wrapped into a `SkyCoord` (`Longitude`,
    `Latitude`). These shortcuts leave out the `SkyCoord` machinery, not any
    floating-point operation: `_plain_sky_exact` checks them against the
    astropy calls once per process.
    """

    def __init__(self, wcs):
        self.wcs = wcs

    @staticmethod
    def usable(wcs, frame):
        """Whether positions in ``frame`` can take the shortcuts on ``wcs``."""
        if type(frame) not in _PLAIN_FRAMES or wcs.naxis != 2 or wcs.has_distortion:
            return False
        if wcs.pixel_bounds is not None or wcs.wcs.lng != 0 or wcs.wcs.lat != 1:
            return False
        if any(u.Unit(unit) != u.deg for unit in wcs.wcs.cunit):
            return False
        try:
            wcs_frame = wcs_to_celestial_frame(wcs)
        except ValueError:
            return False
        return type(wcs_frame) is type(frame) and frame.is_equivalent_frame(wcs_frame)

    def world_to_pixel(self, *lon_lat):
        """Pixel (x, y) of several (lon, lat) degree arrays, in one wcslib call."""
        sizes = [len(lon) for lon in lon_lat[::2]]
        x, y = self.wcs.all_world2pix(np.concatenate(lon_lat[::2]), np.concatenate(lon_lat[1::2]),
                                      0)
        out = []
        for part in np.split(np.arange(len(x)), np.cumsum(sizes)[:-1]):
            out += [x[part], y[part]]
        return out

    def circles(self, group):
        """``CircleSkyRegion.to_pixel`` of a `_Group`: (x, y, r), and the degree
        (lon, lat) of the centres and of their north offsets."""
        sky = _sky_values(group.lon, group.lat) + _north_offsets(group.lon, group.lat)
        x, y, ox, oy = self.world_to_pixel(*sky)
        return (x, y, _radius_pix(group.radius, ox - x, oy - y)), sky

    def pixel_to_sky(self, x, y):
        """``wcs.pixel_to_world``, as (`Longitude`, `Latitude`)."""
        lon, lat = self.wcs.all_pix2world(x, y, 0)
        return Longitude(lon, u.deg), Latitude(lat, u.deg)

    def pixel_scale_at(self, position):
        """``skycoord_to_pixel`` and the scale (arcsec / pix) of
        ``pixel_scale_angle_at_skycoord`` at a `pixel_to_sky` position."""
        lon, lat = position
        x, y, ox, oy = self.world_to_pixel(*_sky_values(lon, lat), *_north_offsets(lon, lat))
        return x, y, _OFFSET.to_value(u.arcsec) / np.hypot(ox - x, oy - y)

    def cutout_shape(self, n_x, n_y, pixscale):
        """`_AstropySky.cutout_shape` on plain arrays."""
        binsz = proj_plane_pixel_scales(self.wcs)  # degrees (`usable`)
        to_deg = _scale(u.arcsec, u.deg)
        return [
            np.round(np.clip(((n.astype(float) * pixscale) * to_deg) / b, 1, None)).astype(np.int64)
            for n, b in ((n_x, binsz[0]), (n_y, binsz[1]))
        ]


class _AstropySky:
    """The same calls as `_PlainSky`, through `SkyCoord` (any frame and WCS)."""

    def __init__(self, wcs):
        self.wcs = wcs

    def circles(self, group):
        return _to_pixel(self.wcs, group.centers, group.radius), None

    def pixel_to_sky(self, x, y):
        return self.wcs.pixel_to_world(x, y)

    def pixel_scale_at(self, position):
        _, pixscale, _ = pixel_scale_angle_at_skycoord(position, self.wcs)
        px, py = skycoord_to_pixel(position, self.wcs, mode="all")
        return px, py, pixscale

    def cutout_shape(self, n_x, n_y, pixscale):
        """Cutout size of ``WcsGeom.cutout`` for a region ``n_x`` by ``n_y`` pixels
        wide (``RegionGeom.width``, at pixel scale ``pixscale``)."""
        binsz = Angle(proj_plane_pixel_scales(self.wcs), "deg")
        out = []
        for n, b in ((n_x, binsz[0]), (n_y, binsz[1])):
            width = Angle(n * u.pix * pixscale, "arcsec").to_value(u.deg)
            out.append(np.round(np.clip((width * u.deg / b).to_value(""), 1, None))
                       .astype(np.int64))
        return out


def _to_pixel(wcs, centers, radius):
    """Vectorised ``CircleSkyRegion.to_pixel``: (x, y, r) arrays."""
    pix, scale, _ = pixel_scale_angle_at_skycoord(centers, wcs)
    r = (radius / scale).to(u.pix).value
    return np.asarray(pix.x, float), np.asarray(pix.y, float), np.asarray(r, float)


class _ShiftedWcs:
    """Pixel centre and radius of circles on copies of a WCS with shifted CRPIX.

    ``CRPIX -> CRPIX - shift`` is what `~astropy.nddata.Cutout2D` (and
    ``WcsGeom.pad``) do. wcslib computes pixel coordinates as
    ``(v + crpix) - 1`` with ``v`` the pixel offset from CRPIX, so ``v`` is
    obtained once (from a WCS with CRPIX = 0, origin 1) and any shifted WCS gives
    ``(v + crpix - shift) - 1`` with the same rounding. That identity is checked
    against wcslib on the unshifted WCS; where it does not hold (an unusual
    WCS), each region is projected with its own shifted WCS copy.

    ``sky``: the degree (lon, lat) of the centres and of their north offsets in
    the WCS frame, when known (`_PlainSky.circles`).
    """

    def __init__(self, wcs, group, reference, sky=None):
        self.wcs = wcs
        self.group = group
        self.radius = group.radius
        zero = WCS(naxis=2)  # the celestial transformation only, CRPIX = 0
        zero.wcs = copy.deepcopy(wcs.wcs)
        zero.wcs.crpix = [0.0, 0.0]
        self._crpix = np.array(wcs.wcs.crpix, dtype=float)
        if sky is None:
            frame = wcs_to_celestial_frame(wcs)
            centers = group.centers
            sky = []
            for coords in (centers, centers.directional_offset_by(0.0, _OFFSET)):
                sph = coords.transform_to(frame).spherical
                sky += [sph.lon.to_value(u.deg), sph.lat.to_value(u.deg)]
        self._v = [zero.wcs_world2pix(sky[0], sky[1], 1), zero.wcs_world2pix(sky[2], sky[3], 1)]
        self.exact = all(
            np.array_equal(a, b) for a, b in zip(self._shifted(0, 0), reference)
        )
        if not self.exact:
            log.debug("WCS pixel identity does not hold: projecting each region separately")

    def _shifted(self, sx, sy):
        (vx, vy), (ox, oy) = self._v
        crx = self._crpix[0] - sx
        cry = self._crpix[1] - sy
        x = (vx + crx) - 1.0
        y = (vy + cry) - 1.0
        r = _radius_pix(self.radius, ((ox + crx) - 1.0) - x, ((oy + cry) - 1.0) - y)
        return x, y, r

    def __call__(self, sx, sy):
        """(x, y, r) of every circle on the WCS with CRPIX shifted by -(sx, sy)."""
        n = len(self.radius)
        sx = np.broadcast_to(sx, n)
        sy = np.broadcast_to(sy, n)
        if self.exact:
            return self._shifted(sx, sy)
        out = np.empty((3, n))
        wcs = self.wcs.deepcopy()
        centers = self.group.centers
        for i in range(n):
            wcs.wcs.crpix = self._crpix - [sx[i], sy[i]]
            x, y, r = _to_pixel(wcs, centers[i:i + 1], self.radius[i:i + 1])
            out[:, i] = x[0], y[0], r[0]
        return out[0], out[1], out[2]


def _cutout_windows(sky, shape, x, y, r):
    """Cutout bounds that ``WcsNDMap.to_region_nd_map`` uses for circles (x, y, r).

    Mirrors ``RegionGeom.center_skydir`` / ``width`` (bounding box of the pixel
    circle, as a sky rectangle) and ``WcsGeom.cutout`` (``Cutout2D``, mode "trim").
    ``sky``: `_PlainSky` or `_AstropySky` of the WCS.
    """
    ny, nx = shape
    ix_min = np.floor(x - r + 0.5).astype(np.int64)
    ix_max = np.ceil(x + r + 0.5).astype(np.int64)
    iy_min = np.floor(y - r + 0.5).astype(np.int64)
    iy_max = np.ceil(y + r + 0.5).astype(np.int64)
    center = sky.pixel_to_sky(0.5 * (ix_max - 1 + ix_min), 0.5 * (iy_max - 1 + iy_min))
    px, py, pixscale = sky.pixel_scale_at(center)
    n_x, n_y = sky.cutout_shape(ix_max - ix_min, iy_max - iy_min, pixscale)
    x0 = np.ceil(px - n_x / 2.0).astype(np.int64)
    y0 = np.ceil(py - n_y / 2.0).astype(np.int64)
    x_lo = np.maximum(0, x0)
    y_lo = np.maximum(0, y0)
    x_hi = np.minimum(nx, x0 + n_x)
    y_hi = np.minimum(ny, y0 + n_y)
    outside = (x0 + n_x <= 0) | (y0 + n_y <= 0) | (x0 >= nx) | (y0 >= ny)
    return x_lo, y_lo, x_hi, y_hi, outside


def _touches_border(x, y, r, shape):
    """Whether any pixel of the border ring of an image is inside each circle."""
    ny, nx = shape
    out = np.zeros(len(x), dtype=bool)
    near = (x - r < 1) | (y - r < 1) | (x + r > nx - 2) | (y + r > ny - 2)
    cols = np.arange(nx, dtype=float)
    rows = np.arange(ny, dtype=float)
    for i in np.flatnonzero(near):
        hits = [
            np.hypot(cols - x[i], 0.0 - y[i]) < r[i],
            np.hypot(cols - x[i], (ny - 1.0) - y[i]) < r[i],
            np.hypot(0.0 - x[i], rows - y[i]) < r[i],
            np.hypot((nx - 1.0) - x[i], rows - y[i]) < r[i],
        ]
        out[i] = any(h.any() for h in hits)
    return out


def _sky(wcs, group, plain=None):
    """`_PlainSky` where the group's positions can take its shortcuts, else `_AstropySky`.

    ``plain``: None to decide (`_plain_sky_exact`), False for `_AstropySky`
    always, True to skip the check.
    """
    usable = group.lon is not None and plain is not False and _PlainSky.usable(wcs, group.frame)
    if usable and (plain or _plain_sky_exact()):
        return _PlainSky(wcs)
    return _AstropySky(wcs)


_CIRCLE_FIELDS = ("cx_full", "cy_full", "r_full", "x_lo", "y_lo", "x_hi", "y_hi", "cx_cut",
                  "cy_cut", "r_cut", "outside")


def _circles(image_geom, seeds, plain=None):
    """`_Circles` of the seeds on a 2D `WcsGeom`, with gammapy's containment test.

    ``plain``: see `_sky`.
    """
    wcs = image_geom.wcs
    shape = image_geom.data_shape
    circles = _Circles(len(seeds), shape)
    for group in seeds.groups:
        sky = _sky(wcs, group, plain)
        (x, y, r), sky_values = sky.circles(group)
        shifted = _ShiftedWcs(wcs, group, (x, y, r), sky_values)
        x_lo, y_lo, x_hi, y_hi, outside = _cutout_windows(sky, shape, x, y, r)
        cx, cy, rc = shifted(x_lo, y_lo)
        # gammapy's containment test: the circle on the image padded by one pixel
        # (CRPIX + 1) must not reach the padding
        px, py, pr = shifted(-1, -1)
        outside |= _touches_border(px, py, pr, (shape[0] + 2, shape[1] + 2))
        values = (x, y, r, x_lo, y_lo, x_hi, y_hi, cx, cy, rc, outside)
        for name, value in zip(_CIRCLE_FIELDS, values):
            getattr(circles, name)[group.members] = value
    return circles


@functools.cache
def _plain_sky_exact():
    """Whether `_PlainSky` gives the numbers of the `SkyCoord` calls, bit for bit.

    Checked once per process on two small maps (Galactic CAR across longitude
    0, ICRS TAN) with circles of many sizes; if an astropy version computes
    differently, every region goes through `SkyCoord`.
    """
    rng = np.random.default_rng(0)
    for frame, proj, skydir in [("galactic", "CAR", (0.0, 0.5)), ("icrs", "TAN", (83.6, -5.0))]:
        image = WcsGeom.create(skydir=skydir, width=(3.0, 2.0), binsz=0.02, frame=frame,
                               proj=proj)
        lon = skydir[0] + rng.uniform(-1.5, 1.5, 40)
        lat = skydir[1] + rng.uniform(-1.0, 1.0, 40)
        radius = rng.uniform(0.01, 1.0, 40)
        seeds = _Seeds([CircleSkyRegion(SkyCoord(a, b, unit="deg", frame=frame), c * u.deg)
                        for a, b, c in zip(lon, lat, radius)])
        fast = _circles(image, seeds, plain=True)
        slow = _circles(image, seeds, plain=False)
        if not all(np.array_equal(getattr(fast, name), getattr(slow, name))
                   for name in _CIRCLE_FIELDS):
            log.warning("astropy computes sky positions differently than gpsfast expects: "
                        "using the slower SkyCoord calls")
            return False
    return True


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


def _sums(data, mask, circles, cutout=True):
    """Kernel disk sums of a (n_energy, ny, nx) array on the circles.

    Returns ``(sums, norm, norm_all)`` as `aperture_sums` does.
    """
    if mask is None:
        mask = np.ones((1,) + data.shape[-2:], dtype=bool)
    cube = _kernel_cube(data)
    mask = np.ascontiguousarray(mask, dtype=bool)
    parts = [
        pixel_sums(cube, mask, pix, weight, start, stop) + (norm_all,)
        for pix, weight, start, stop, norm_all in circles.pixel_lists(cutout)
    ]
    return tuple(np.concatenate(arrays) for arrays in zip(*parts))


def _native(data):
    """float32 or float64 data in native byte order (FITS maps are big-endian)."""
    data = np.asarray(data)
    if data.dtype.kind != "f" or data.dtype.itemsize not in (4, 8):
        return data.astype(np.float64)
    return data.astype(data.dtype.newbyteorder("="), copy=False)


# ----------------------------------------------------------------------------
# the dataset reduction
# ----------------------------------------------------------------------------
def _check_dataset(dataset, containment_correction):
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


def _same_image(a, b):
    """Exactly the same pixel grid (``WcsGeom.__eq__`` allows a 1e-6 tolerance)."""
    return a.data_shape == b.data_shape and a.wcs.wcs.compare(b.wcs.wcs)


def _geom_circles(geom, seeds, cache):
    image = geom.to_image()
    for key, value in cache:
        if _same_image(key, image):
            return value
    value = _circles(image, seeds)
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
    _, norm, norm_all = _sums(cube, mask.data, circles, cutout=False)
    uniform = (norm == 0) | (norm == norm_all[:, None])
    bad = np.flatnonzero(~uniform.all(axis=1))
    if bad.size:
        i = bad[0]
        raise InputError(
            f"region {i} (center {seeds.regions[i].center.to_string('decimal')}): the mask of "
            f"dataset {dataset.name!r} is not spatially uniform within the region for "
            f"each energy bin ({bad.size} region(s) affected)"
        )


def _reduce(dataset, seeds):
    """All region sums of a dataset: dict of (n_regions, n_energy) arrays."""
    cache = []
    circles = _geom_circles(dataset.counts.geom, seeds, cache)
    _raise_outside(circles, seeds, dataset)
    _check_mask_uniform(dataset, seeds, cache)

    safe = dataset.mask_safe.data if dataset.mask_safe is not None else None
    out = {"circles": circles}
    counts, n_safe, n_all = _sums(dataset.counts.data, safe, circles)
    out["counts"] = counts
    out["n_pix"] = n_all
    if safe is not None:
        out["mask_safe"] = n_safe > 0
    if dataset.mask_fit is not None:
        out["mask_fit"] = _sums(dataset.counts.data, dataset.mask_fit.data, circles)[1] > 0
    templates = {}
    if dataset.stat_type == "cash" and dataset.background is not None:
        templates["background"] = dataset.npred_background()
        out["background"] = _sums(templates["background"].data, safe, circles)[0]
    if dataset.exposure is not None:
        exp_circles = _geom_circles(dataset.exposure.geom, seeds, cache)
        total, _, n_exp = _sums(dataset.exposure.data, None, exp_circles)
        with np.errstate(invalid="ignore", divide="ignore"):
            out["exposure"] = total / n_exp[:, None]
    if isinstance(dataset, MapDatasetOnOff):
        if dataset.counts_off is not None:
            templates["alpha_counts_off"] = dataset.background
            out["counts_off"] = _sums(dataset.counts_off.data, safe, circles)[0]
            out["alpha_counts_off"] = _sums(templates["alpha_counts_off"].data, safe, circles)[0]
        acc, n_acc, _ = _sums(dataset.acceptance.data, safe, circles)
        with np.errstate(invalid="ignore", divide="ignore"):
            out["acceptance"] = acc / n_acc
    out["templates"] = templates
    return out


def _nearest_irf_pixels(irf_map, seeds):
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
        sky = _sky(wcs, group)
        if isinstance(sky, _PlainSky):
            x, y = sky.world_to_pixel(*_sky_values(group.lon, group.lat))
        else:
            x, y = wcs.world_to_pixel(group.centers)
        idx = group.members
        for coord, out, n in ((x, ix, nx), (y, iy, ny)):
            lo = np.floor(coord + 0.5)
            tie[idx] |= lo == np.ceil(coord + 0.5)
            out[idx] = np.clip(lo, 0, n - 1).astype(np.int64)
    return iy, ix, tie


def _finite_irf_data(irf_map):
    """IRF map data with non-finite values as zero, where some values are finite."""
    data = irf_map.data
    finite = np.isfinite(data)
    if finite.any() and not finite.all():
        data = np.where(finite, data, 0.0).astype(irf_map.data.dtype)
    return data


def _irf_region_maps(irf, seeds):
    """``irf.to_region_nd_map(region.center)`` for all regions, with shared lookups."""
    irf_map = irf.edisp_map
    if not isinstance(irf_map, WcsNDMap):
        return [irf.to_region_nd_map(region.center) for region in seeds.regions]
    # the IRF values of all regions at once, region index first
    iy, ix, tie = _nearest_irf_pixels(irf_map, seeds)
    factories = [_RegionMaps(irf_map, np.moveaxis(_finite_irf_data(irf_map)[..., iy, ix], -1, 0))]
    exposure_map = irf.exposure_map
    if exposure_map is not None:
        if not _same_image(exposure_map.geom.to_image(), irf_map.geom.to_image()):
            iy, ix, tie_exposure = _nearest_irf_pixels(exposure_map, seeds)
            tie = tie | tie_exposure
        values = np.moveaxis(_finite_irf_data(exposure_map)[..., iy, ix], -1, 0)
        factories.append(_RegionMaps(exposure_map, values))
    out = []
    for s, region in enumerate(seeds.regions):
        if tie[s]:
            out.append(irf.to_region_nd_map(region.center))
            continue
        point = _compat.new_point_region(region.center)
        region_maps = [factory.map(factory.geom(point), s) for factory in factories] + [None]
        out.append(_compat.new_irf_map(irf.__class__, region_maps[0], region_maps[1]))
    return out


# ----------------------------------------------------------------------------
# gammapy objects, built without re-validating what the templates guarantee
# ----------------------------------------------------------------------------
class _RegionMaps:
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


def _random_names(n):
    """``n`` distinct dataset names drawn as ``gammapy.utils.scripts.make_name`` draws
    one (8 url-safe base64 characters of random bytes, not starting with "_")."""
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


class _Builder:
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
            name: _RegionMaps(template, sums[name], bool if name.startswith("mask") else None)
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


def extract_spectra(dataset, regions, containment_correction=False, names=None):
    """Extract the spectra of many circular regions of a map dataset.

    Same result as ``Datasets([dataset.to_spectrum_dataset(r) for r in regions])``:
    counts and background summed over the region pixels with ``mask_safe``,
    exposure averaged over the region pixels, ``mask_safe`` and ``mask_fit``
    true where any region pixel is, energy dispersion at the region centre (the
    nearest IRF map pixel), gti and meta_table of the dataset; the PSF and the
    models are not carried over. For a `~gammapy.datasets.MapDatasetOnOff` the
    result is a `~gammapy.datasets.SpectrumDatasetOnOff` with ``counts_off``
    summed, ``acceptance`` averaged over the safe region pixels and
    ``acceptance_off`` preserving the excess, as gammapy does.

    Parameters
    ----------
    dataset : `~gammapy.datasets.MapDataset` or `~gammapy.datasets.MapDatasetOnOff`
        Map dataset on a `~gammapy.maps.WcsGeom`.
    regions : list of `~regions.CircleSkyRegion` or `~astropy.table.Table`
        Regions, or a seed table with columns ``ra``/``dec`` (ICRS) or
        ``glon``/``glat`` (Galactic) and ``radius`` (degrees unless the columns
        carry units), optionally ``name``.
    containment_correction : bool, optional
        Multiply the exposure by the PSF containment in the region (needs a
        `~gammapy.irf.PSFMap`), as gammapy does. Default is False.
    names : list of str, optional
        Dataset names. Default: the ``name`` column of a seed table, else
        random names as gammapy gives.

    Returns
    -------
    datasets : `~gammapy.datasets.Datasets`
        One `~gammapy.datasets.SpectrumDataset` (or ``SpectrumDatasetOnOff``) per region.

    Raises
    ------
    gpsfast.errors.InputError
        For a region not fully inside the counts map or where the mask is not
        spatially uniform (gammapy raises a plain ``Exception`` there), and for
        invalid inputs.
    """
    _check_dataset(dataset, containment_correction)
    names = _names(regions, names)
    seeds = _Seeds(_parse_regions(regions))
    regions = seeds.regions
    if names is not None and len(names) != len(regions):
        raise InputError(f"got {len(names)} names for {len(regions)} regions")
    sums = _reduce(dataset, seeds)
    edisps = (
        _irf_region_maps(dataset.edisp, seeds)
        if dataset.edisp is not None else [None] * len(regions)
    )
    builder = _Builder(dataset, sums, containment_correction)
    names = _random_names(len(regions)) if names is None else names
    metas = _compat.dataset_metas(len(regions))
    return Datasets([
        builder.build(s, region, names[s], edisps[s], metas[s])
        for s, region in enumerate(regions)
    ])


def _names(regions, names):
    if names is not None:
        return [str(n) for n in names]
    if isinstance(regions, Table) and "name" in regions.colnames:
        return [str(n) for n in regions["name"]]
    return None


def extract_spectra_table(dataset, regions):
    """Spectra of many circular regions of a map dataset, as a table.

    The numbers are those of `extract_spectra` (and of gammapy's
    ``to_spectrum_dataset``), without building gammapy objects.

    Parameters
    ----------
    dataset : `~gammapy.datasets.MapDataset` or `~gammapy.datasets.MapDatasetOnOff`
        Map dataset on a `~gammapy.maps.WcsGeom`.
    regions : list of `~regions.CircleSkyRegion` or `~astropy.table.Table`
        As in `extract_spectra`.

    Returns
    -------
    table : `~astropy.table.Table`
        One row per region: ``name`` (when given in a seed table), ``lon``,
        ``lat`` (deg, in the frame of each region centre), ``radius`` (deg),
        ``npix`` (pixels in the region), and per reconstructed energy bin
        ``counts``, ``background`` and ``excess = counts - background``
        (``mask_safe`` applied), ``mask_safe``; per true energy bin the mean
        ``exposure``. For a ``MapDatasetOnOff`` ``background`` is alpha times
        ``counts_off``, and ``counts_off`` is added. ``meta`` holds the energy
        bin edges in TeV (``energy_edges``, ``energy_true_edges``).
    """
    _check_dataset(dataset, False)
    names = _names(regions, None)
    seeds = _Seeds(_parse_regions(regions))
    sums = _reduce(dataset, seeds)
    table = Table()
    if names is not None:
        table["name"] = names
    for name in ("lon", "lat", "radius"):
        table[name] = u.Quantity(np.empty(len(seeds)), u.deg)
    for group in seeds.groups:
        if group.lon is None:
            sph = group.centers.spherical
            lon, lat = sph.lon, sph.lat
        else:
            lon, lat = group.lon, group.lat
        table["lon"][group.members] = lon.wrap_at(360 * u.deg).to(u.deg)
        table["lat"][group.members] = lat.to(u.deg)
        table["radius"][group.members] = group.radius.to(u.deg)
    table["npix"] = sums["n_pix"].astype(np.int64)
    counts = sums["counts"].astype(dataset.counts.data.dtype)
    table["counts"] = counts
    if "background" in sums:
        background = sums["background"].astype(np.float32)
    elif "alpha_counts_off" in sums:
        background = sums["alpha_counts_off"].astype(np.float32)
        table["counts_off"] = sums["counts_off"].astype(np.float32)
    else:
        background = None
    if background is not None:
        table["background"] = background
        table["excess"] = counts - background
    if "mask_safe" in sums:
        table["mask_safe"] = sums["mask_safe"]
    if "exposure" in sums:
        table["exposure"] = u.Quantity(
            sums["exposure"].astype(dataset.exposure.data.dtype), dataset.exposure.unit
        )
        table.meta["energy_true_edges"] = list(
            dataset.exposure.geom.axes["energy_true"].edges.to_value(u.TeV)
        )
    table.meta["energy_edges"] = list(dataset.counts.geom.axes["energy"].edges.to_value(u.TeV))
    return table


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
        _check_dataset(dataset, False)
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
        iy = np.clip(np.floor(y + 0.5), 0, ny_irf - 1).astype(np.int64)
        ix = np.clip(np.floor(x + 0.5), 0, nx_irf - 1).astype(np.int64)
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

        counts = correlate_masked(_native(dataset.counts.data), safe, disk)
        background = correlate_masked(_native(dataset.npred_background().data), safe, disk)
        n_safe = correlate_masked(np.ones((1,) + image.data_shape), safe, disk)
        use = np.broadcast_to(n_safe > 0, counts.shape)
        n_pix = correlate_masked(np.ones((1,) + image.data_shape), ones_mask, disk)[0]
        exposure = correlate_masked(_native(dataset.exposure.data), ones_mask, disk) / n_pix
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

