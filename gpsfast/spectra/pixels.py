"""The pixel geometry of circular regions as gammapy computes it, for all regions at once.

gammapy decides region membership on a cutout of the map around the region, with
``CircleSkyRegion.to_pixel`` on the cutout WCS (pixel centre strictly inside the
circle, radius converted with the local pixel scale). `seed_circles` computes the
cutout windows and the pixel centres and radii of every region in the cutout frame
with the same floating-point operations: for centres in the frame of the map
(Galactic or ICRS) directly on arrays and wcslib (`PlainSky`, checked against the
`~astropy.coordinates.SkyCoord` calls once per process by `plain_sky_exact`), else
with the astropy / regions calls on array sky coordinates (`AstropySky`).

`north_offsets` repeats astropy's ``offset_by`` and ``Angle.wrap_at`` on plain
arrays (`_wrap_at`): they run for every region and the `~astropy.coordinates.Angle`
machinery would cost more than the arithmetic.
"""
import copy
import functools
import logging

import astropy.units as u
import numpy as np
from astropy.coordinates import Angle, Latitude, Longitude, SkyCoord
from astropy.coordinates.angles import offset_by
from astropy.wcs import WCS
from astropy.wcs.utils import proj_plane_pixel_scales, skycoord_to_pixel, wcs_to_celestial_frame
from gammapy.maps import WcsGeom
from regions import CircleSkyRegion

from gpsfast._compat import pixel_scale_angle_at_skycoord
from gpsfast.kernels.aperture import aperture_pixels
from gpsfast.spectra.seeds import PLAIN_FRAMES, Seeds

__all__ = [
    "AstropySky",
    "CHUNK",
    "CIRCLE_FIELDS",
    "Circles",
    "OFFSET",
    "PlainSky",
    "ShiftedWcs",
    "choose_sky",
    "degree_values",
    "north_offsets",
    "plain_sky_exact",
    "seed_circles",
]

log = logging.getLogger(__name__)

OFFSET = 1 * u.arcsec  # offset used by regions to measure the pixel scale
CHUNK = 512  # regions per kernel call


class Circles:
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
        """Aperture pixel lists (`aperture_pixels`) in chunks of ``CHUNK`` circles.

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
        if cutout:
            cx, cy, r = self.cx_cut, self.cy_cut, self.r_cut
            win = (self.x_lo, self.y_lo, self.x_hi, self.y_hi)
        else:
            cx, cy, r = self.cx_full, self.cy_full, self.r_full
            win = (np.zeros(n, np.int64), np.zeros(n, np.int64), np.full(n, nx, np.int64),
                   np.full(n, ny, np.int64))
        # the pixel lists of all apertures are held at once: bound that memory
        return [
            aperture_pixels(ny, nx, cx[c], cy[c], r[c], *(w[c] for w in win))
            for c in (slice(i, i + CHUNK) for i in range(0, n, CHUNK))
        ]


@functools.lru_cache(maxsize=64)
def _scale(unit, other):
    """The factor by which astropy multiplies values to convert them from ``unit`` to ``other``."""
    return u.Unit(unit).to(other)


def degree_values(lon, lat):
    """Degree values of longitudes and latitudes, as ``SkyCoord.spherical`` gives them."""
    return lon.to_value(u.deg), lat.to_value(u.deg)


def _wrap_at(angle, a360, wrap_angle):
    """``Angle._wrap_at`` on values (``a360``: 360 degrees in their unit), in place.

    Hand-written rather than ``Angle.wrap_at`` for speed: it runs on the raw
    arrays of `north_offsets` for every region (an `~astropy.coordinates.Angle`
    per call would cost more than the arithmetic), with astropy's operations,
    so that the values are bit for bit those of ``directional_offset_by``
    (checked by `plain_sky_exact`).
    """
    floor = wrap_angle - a360
    if not ((angle < floor) | (angle >= wrap_angle)).any():
        return angle
    wraps = (angle - floor) // a360
    angle -= wraps * a360
    angle[angle >= wrap_angle] -= a360
    angle[angle < floor] += a360
    return angle


def north_offsets(lon, lat):
    """``directional_offset_by(0, OFFSET)`` of positions given as `Longitude`, `Latitude`.

    Returns the degree values of the offset positions, as the `SkyCoord` that
    `~astropy.coordinates.SkyCoord.directional_offset_by` builds holds them.
    The operations of `~astropy.coordinates.angles.offset_by` (spherical
    trigonometry on radian values, result wrapped to [0, 360) deg) are done
    on plain arrays, with the unit conversion factors of astropy; positions
    within 1e-12 of a pole go through ``offset_by`` itself.
    """
    to_rad = _scale(u.deg, u.rad)
    to_deg = _scale(u.rad, u.deg)
    distance = OFFSET.value * _scale(OFFSET.unit, u.rad)
    cos_a = np.cos(distance)
    sin_a = np.sin(distance)
    lat_rad = lat.value * _scale(lat.unit, u.rad)
    cos_c = np.sin(lat_rad)
    sin_c = np.cos(lat_rad)
    if np.any(sin_c < 1e-12):
        new_lon, new_lat = offset_by(lon=lon, lat=lat, posang=0.0, distance=OFFSET)
        return degree_values(Longitude(new_lon), Latitude(new_lat))
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
    return OFFSET.to(u.arcsec) / (np.hypot(dx, dy) * u.pixel)


def _radius_pix(radius, dx, dy):
    """``(radius / _pixel_scale(dx, dy)).to(u.pix).value`` on plain arrays."""
    scale = OFFSET.to_value(u.arcsec) / np.hypot(dx, dy)
    return (radius.value / scale) * _radius_scale(radius.unit)


@functools.lru_cache(maxsize=16)
def _radius_scale(unit):
    """``_scale`` from ``unit / (arcsec / pix)`` to pixels."""
    return _scale(unit / (u.arcsec / u.pix), u.pix)


class PlainSky:
    """The WCS calls of ``regions`` / ``astropy`` for positions in the WCS frame, as numbers.

    ``wcs.world_to_pixel(skycoord)`` of a `SkyCoord` in the frame of a FITS WCS
    without distortions or pixel bounds is ``wcs.all_world2pix(lon, lat, 0)`` on
    the degree values of its longitude and latitude, and ``wcs.pixel_to_world``
    is ``wcs.all_pix2world`` wrapped into a `SkyCoord` (`Longitude`,
    `Latitude`). These shortcuts leave out the `SkyCoord` machinery, not any
    floating-point operation: `plain_sky_exact` checks them against the
    astropy calls once per process.
    """

    def __init__(self, wcs):
        self.wcs = wcs

    @staticmethod
    def usable(wcs, frame):
        """Whether positions in ``frame`` can take the shortcuts on ``wcs``."""
        if type(frame) not in PLAIN_FRAMES or wcs.naxis != 2 or wcs.has_distortion:
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
        """``CircleSkyRegion.to_pixel`` of a `SeedGroup`: (x, y, r), and the degree
        (lon, lat) of the centres and of their north offsets."""
        sky = degree_values(group.lon, group.lat) + north_offsets(group.lon, group.lat)
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
        x, y, ox, oy = self.world_to_pixel(*degree_values(lon, lat), *north_offsets(lon, lat))
        return x, y, OFFSET.to_value(u.arcsec) / np.hypot(ox - x, oy - y)

    def cutout_shape(self, n_x, n_y, pixscale):
        """`AstropySky.cutout_shape` on plain arrays."""
        binsz = proj_plane_pixel_scales(self.wcs)  # degrees (`usable`)
        to_deg = _scale(u.arcsec, u.deg)
        return [
            np.round(np.clip(((n.astype(float) * pixscale) * to_deg) / b, 1, None)).astype(np.int64)
            for n, b in ((n_x, binsz[0]), (n_y, binsz[1]))
        ]


class AstropySky:
    """The same calls as `PlainSky`, through `SkyCoord` (any frame and WCS)."""

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


class ShiftedWcs:
    """Pixel centre and radius of circles on copies of a WCS with shifted CRPIX.

    ``CRPIX -> CRPIX - shift`` is what `~astropy.nddata.Cutout2D` (and
    ``WcsGeom.pad``) do. wcslib computes pixel coordinates as
    ``(v + crpix) - 1`` with ``v`` the pixel offset from CRPIX, so ``v`` is
    obtained once (from a WCS with CRPIX = 0, origin 1) and any shifted WCS gives
    ``(v + crpix - shift) - 1`` with the same rounding. That identity is checked
    against wcslib on the unshifted WCS; where it does not hold (an unusual
    WCS), each region is projected with its own shifted WCS copy.

    ``sky``: the degree (lon, lat) of the centres and of their north offsets in
    the WCS frame, when known (`PlainSky.circles`).
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
            for coords in (centers, centers.directional_offset_by(0.0, OFFSET)):
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
    ``sky``: `PlainSky` or `AstropySky` of the WCS.
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


def choose_sky(wcs, group, plain=None):
    """`PlainSky` where the group's positions can take its shortcuts, else `AstropySky`.

    ``plain``: None to decide (`plain_sky_exact`), False for `AstropySky`
    always, True to skip the check.
    """
    usable = group.lon is not None and plain is not False and PlainSky.usable(wcs, group.frame)
    if usable and (plain or plain_sky_exact()):
        return PlainSky(wcs)
    return AstropySky(wcs)


CIRCLE_FIELDS = ("cx_full", "cy_full", "r_full", "x_lo", "y_lo", "x_hi", "y_hi", "cx_cut",
                  "cy_cut", "r_cut", "outside")


def seed_circles(image_geom, seeds, plain=None):
    """`Circles` of the seeds on a 2D `WcsGeom`, with gammapy's containment test.

    ``plain``: see `choose_sky`.
    """
    wcs = image_geom.wcs
    shape = image_geom.data_shape
    circles = Circles(len(seeds), shape)
    for group in seeds.groups:
        sky = choose_sky(wcs, group, plain)
        (x, y, r), sky_values = sky.circles(group)
        shifted = ShiftedWcs(wcs, group, (x, y, r), sky_values)
        x_lo, y_lo, x_hi, y_hi, outside = _cutout_windows(sky, shape, x, y, r)
        cx, cy, rc = shifted(x_lo, y_lo)
        # gammapy's containment test: the circle on the image padded by one pixel
        # (CRPIX + 1) must not reach the padding
        px, py, pr = shifted(-1, -1)
        outside |= _touches_border(px, py, pr, (shape[0] + 2, shape[1] + 2))
        values = (x, y, r, x_lo, y_lo, x_hi, y_hi, cx, cy, rc, outside)
        for name, value in zip(CIRCLE_FIELDS, values):
            getattr(circles, name)[group.members] = value
    return circles


@functools.cache
def plain_sky_exact():
    """Whether `PlainSky` gives the numbers of the `SkyCoord` calls, bit for bit.

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
        seeds = Seeds([CircleSkyRegion(SkyCoord(a, b, unit="deg", frame=frame), c * u.deg)
                        for a, b, c in zip(lon, lat, radius)])
        fast = seed_circles(image, seeds, plain=True)
        slow = seed_circles(image, seeds, plain=False)
        if not all(np.array_equal(getattr(fast, name), getattr(slow, name))
                   for name in CIRCLE_FIELDS):
            log.warning("astropy computes sky positions differently than gpsfast expects: "
                        "using the slower SkyCoord calls")
            return False
    return True
