"""Circular regions given to `gpsfast.spectra.extract_spectra`: parsing, and stacking by frame.

A list of `~regions.CircleSkyRegion` or a seed table (``ra``/``dec`` or
``glon``/``glat`` and ``radius``) becomes `Seeds`: the regions grouped by frame and
units, their centres and radii stacked into arrays without any conversion, so that
every array element goes through the floating-point operations the region alone
would.
"""
import astropy.units as u
import numpy as np
from astropy.coordinates import ICRS, Galactic, Latitude, Longitude, SkyCoord, UnitSphericalRepresentation
from astropy.table import Table
from regions import CircleSkyRegion

from gpsfast.errors import InputError

__all__ = ["PLAIN_FRAMES", "SeedGroup", "Seeds", "parse_regions"]


PLAIN_FRAMES = (Galactic, ICRS)  # frames without attributes (`PlainSky`)


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


def parse_regions(regions):
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


class SeedGroup:
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


class Seeds:
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
            if type(frame) in PLAIN_FRAMES and key in plain:
                plain[key][2].append(idx)
                continue
            for group in groups:
                if (group[0] is not None and group[1] == units
                        and frame.is_equivalent_frame(group[0])):
                    group[2].append(idx)
                    break
            else:
                groups.append([frame, units, [idx]])
                if type(frame) in PLAIN_FRAMES:
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
            return SeedGroup(members, region.center.frame, None, None,
                          region.radius.reshape((1,)), center=region.center)
        centers = [regions[i].center.frame.data for i in members]
        lon = Longitude(_values([c.lon for c in centers]), units[0], copy=False)
        lat = Latitude(_values([c.lat for c in centers]), units[1], copy=False)
        radius = u.Quantity(_values([regions[i].radius for i in members]), units[2], copy=False)
        return SeedGroup(members, frame, lon, lat, radius)

    def __len__(self):
        return len(self.regions)
