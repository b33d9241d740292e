"""Seeds on significance maps: peaks (gammapy's ``find_peaks``) and Hough circles (shells)."""
import logging

import astropy.units as u
import numpy as np
import scipy.ndimage
from astropy.coordinates import SkyCoord, angular_separation
from astropy.table import Table
from gammapy.estimators import FluxMaps
from gammapy.estimators.utils import find_peaks
from gammapy.maps import WcsNDMap
from skimage.transform import hough_circle, hough_circle_peaks

from ..errors import InputError
from .catalog import SeedCatalog

__all__ = ["find_peak_seeds", "find_circle_seeds", "find_seeds"]

log = logging.getLogger(__name__)

MIN_RING_COVERAGE = 0.6
"""Fraction of a shell candidate's limb circle that must be above the threshold."""


def _image(significance, label):
    """The 2D significance image of a Map or FluxMaps, with a clear error otherwise."""
    if isinstance(significance, FluxMaps):
        significance = significance["sqrt_ts"]
    if not isinstance(significance, WcsNDMap):
        raise InputError(f"Significance map {label!r} must be a WcsNDMap or FluxMaps, got {type(significance).__name__}")
    if not significance.geom.is_flat:
        axes = [f"{ax.name} ({ax.nbin} bins)" for ax in significance.geom.axes]
        raise InputError(f"Significance map {label!r} must have a single energy bin, has {', '.join(axes)}")
    return significance.sum_over_axes(keepdims=False)


def _pixel_size(geom):
    return float(np.mean(geom.pixel_scales.to_value("deg")))


def _half_max_radius(data, x, y, threshold, pixel_size):
    """Radius (deg) of the disk with the area of the connected region above half the peak."""
    level = max(threshold, 0.5 * data[y, x])
    labels, _ = scipy.ndimage.label(np.nan_to_num(data, nan=-np.inf) >= level)
    n_pix = np.count_nonzero(labels == labels[y, x]) if labels[y, x] else 1
    return float(np.sqrt(n_pix / np.pi) * pixel_size)


def find_peak_seeds(significance, threshold=5, min_distance="0.1 deg", label="map"):
    """Peaks of a significance map, with gammapy's ``find_peaks`` semantics.

    Parameters
    ----------
    significance : `~gammapy.maps.WcsNDMap` or `~gammapy.estimators.FluxMaps`
        Significance image (``sqrt_ts``), one energy bin.
    threshold : float
        Minimum significance of a peak.
    min_distance : str or `~astropy.units.Quantity`
        Minimum distance between peaks (a peak is the maximum within it).
    label : str
        Name of the map, recorded as the seed's origin.

    Returns
    -------
    seeds : `~astropy.table.Table`
        Columns ``glon``, ``glat``, ``radius`` (deg, the half-maximum radius of the
        significance blob), ``sqrt_ts``, ``method`` (``"peak"``), ``origin``.
        Empty (with these columns) when nothing passes the threshold.
    """
    image = _image(significance, label)
    data = image.data.astype(float)
    table = _empty_table()
    if not np.isfinite(data).any():
        log.warning("Significance map %s has no finite value: no peak seeds", label)
        return table
    peaks = find_peaks(image, threshold=threshold, min_distance=min_distance)
    if len(peaks) == 0:
        return table
    x, y = np.asarray(peaks["x"]), np.asarray(peaks["y"])
    position = SkyCoord.from_pixel(x, y, wcs=image.geom.wcs).galactic
    pixel_size = _pixel_size(image.geom)
    radius = [_half_max_radius(data, xi, yi, threshold, pixel_size) for xi, yi in zip(x, y)]
    return _table(position, radius, data[y, x], "peak", label)


def _radial_profile(data, x, y, r_max):
    """Azimuthal mean of ``data`` in one-pixel rings around (x, y), up to ``r_max`` pixels."""
    ny, nx = data.shape
    x0, x1 = max(0, int(x - r_max)), min(nx, int(x + r_max) + 2)
    y0, y1 = max(0, int(y - r_max)), min(ny, int(y + r_max) + 2)
    data = data[y0:y1, x0:x1]
    yy, xx = np.ogrid[y0:y1, x0:x1]
    ring = np.floor(np.hypot(xx - x, yy - y)).astype(int)
    use = np.isfinite(data) & (ring < r_max)
    sums = np.bincount(ring[use], weights=data[use], minlength=int(r_max))
    counts = np.bincount(ring[use], minlength=int(r_max))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.arange(sums.size) + 0.5, sums / counts


def _ring_coverage(data, x, y, radius, threshold, n_points=72):
    """Fraction of a circle (pixels) along which ``data`` exceeds ``threshold``."""
    angles = np.linspace(0, 2 * np.pi, n_points, endpoint=False)
    values = scipy.ndimage.map_coordinates(
        np.nan_to_num(data, nan=0.0), [y + radius * np.sin(angles), x + radius * np.cos(angles)], order=1
    )
    return float(np.mean(values > threshold))


def _shell_radius(data, x, y, r_max, threshold):
    """Radius (pixels) and limb significance of a limb-brightened profile; radius None if not shell-like.

    The azimuthal profile must rise from the centre to a maximum (the limb) by at
    least one unit of significance, with the limb above ``threshold``; the radius
    is where the profile falls below half of the limb value beyond it. The
    circle at the limb must be above ``threshold`` along most of its length.
    """
    radius, profile = _radial_profile(data, x, y, r_max)
    if not np.isfinite(profile).any():
        return None, np.nan
    i_max = int(np.nanargmax(profile))
    limb = profile[i_max]
    if i_max == 0 or limb < threshold or limb - profile[0] < 1:
        return None, limb
    if _ring_coverage(data, x, y, radius[i_max], threshold) < MIN_RING_COVERAGE:
        return None, limb
    outside = np.nonzero(profile[i_max:] < 0.5 * limb)[0]
    if outside.size == 0:
        return None, limb
    return radius[i_max + outside[0]], limb


def _refine_center(data, x, y, r_max, threshold):
    """Move a shell candidate to the centre that maximises its limb (azimuthal) significance.

    For a ring, the azimuthally averaged profile peaks highest when centred on
    the ring's centre. Greedy one-pixel steps, at most ``r_max / 3`` pixels away.
    """
    radius, limb = _shell_radius(data, x, y, r_max, threshold)
    if radius is None:
        return x, y, None, limb
    x0, y0 = x, y
    improved = True
    while improved:
        improved = False
        for dx, dy in ((1, 0), (-1, 0), (0, 1), (0, -1), (1, 1), (1, -1), (-1, 1), (-1, -1)):
            nx_, ny_ = x + dx, y + dy
            if np.hypot(nx_ - x0, ny_ - y0) > max(2, r_max / 3):
                continue
            r_new, l_new = _shell_radius(data, nx_, ny_, r_max, threshold)
            if r_new is not None and l_new > limb:
                x, y, radius, limb, improved = nx_, ny_, r_new, l_new, True
                break
    return x, y, radius, limb


def find_circle_seeds(
    significance,
    threshold=3,
    radius_min="0.15 deg",
    radius_max="0.8 deg",
    max_circles=20,
    label="map",
):
    """Shell-like circles in a significance map (scikit-image Hough transform).

    The boundary of the region above ``threshold`` votes for circle centres and
    radii (``hough_circle``, ``hough_circle_peaks``), so round structures are
    found whatever their profile. A candidate is kept when the azimuthal profile
    of the significance around its centre is limb-brightened, as a shell's is: it
    rises from the centre to a maximum above ``threshold`` by at least one unit
    of significance. Its centre is then moved to where that maximum (the
    azimuthally averaged limb) is highest, and candidates closer than 30% of a
    radius to a better one are dropped. The seed radius is where the profile
    falls below half of its maximum.

    Parameters
    ----------
    significance : `~gammapy.maps.WcsNDMap` or `~gammapy.estimators.FluxMaps`
        Significance image, one energy bin.
    threshold : float
        Significance level of the boundary, and minimum of the limb.
    radius_min, radius_max : str or `~astropy.units.Quantity`
        Range of boundary radii searched.
    max_circles : int
        Largest number of Hough candidates examined.
    label : str
        Name of the map, recorded as the seed's origin.

    Returns
    -------
    seeds : `~astropy.table.Table`
        Same columns as `find_peak_seeds`, ``method`` ``"hough"``, ``sqrt_ts`` the
        limb significance.
    """
    image = _image(significance, label)
    data = image.data.astype(float)
    table = _empty_table()
    pixel_size = _pixel_size(image.geom)
    r_min = u.Quantity(radius_min).to_value("deg") / pixel_size
    r_max = u.Quantity(radius_max).to_value("deg") / pixel_size
    radii = np.arange(max(2, int(np.floor(r_min))), int(np.ceil(r_max)) + 1)
    above = np.nan_to_num(data, nan=0.0) > threshold
    boundary = above & ~scipy.ndimage.binary_erosion(above)
    if radii.size == 0 or not boundary.any():
        return table
    accumulator = hough_circle(boundary, radii)
    min_sep = max(2, int(radii[0] // 2))
    _, cx, cy, _ = hough_circle_peaks(
        accumulator, radii, min_xdistance=min_sep, min_ydistance=min_sep, total_num_peaks=max_circles
    )
    found = []
    for x, y in zip(cx, cy):
        x, y, radius, limb = _refine_center(data, x, y, 1.5 * r_max, threshold)
        if radius is None or radius < r_min:
            continue
        if all(np.hypot(x - fx, y - fy) > 0.3 * fr / pixel_size for fx, fy, fr, _ in found):
            found.append((x, y, radius * pixel_size, limb))
    if not found:
        return table
    x, y, radius, limb = (np.array(v) for v in zip(*found))
    position = SkyCoord.from_pixel(x, y, wcs=image.geom.wcs).galactic
    return _table(position, radius, limb, "hough", label)


def _empty_table():
    table = Table(
        names=["glon", "glat", "radius", "sqrt_ts", "method", "origin"],
        dtype=[float, float, float, float, "U16", "U64"],
    )
    for name in ("glon", "glat", "radius"):
        table[name].unit = "deg"
    return table


def _table(position, radius, sqrt_ts, method, label):
    table = _empty_table()
    for lon, lat, r, sig in zip(position.l.wrap_at("180d").deg, position.b.deg, radius, sqrt_ts):
        table.add_row([lon, lat, r, sig, method, label])
    return table


def find_seeds(
    significance_maps,
    threshold=5,
    min_distance="0.1 deg",
    hough=True,
    hough_threshold=3,
    merge_distance="0.1 deg",
    **hough_kwargs,
):
    """Seeds from several significance maps, merged into one `SeedCatalog`.

    Peaks of every map (and Hough circles where ``hough``) are merged: candidates
    are taken by decreasing significance, and one closer than ``merge_distance``
    (or, for a circle, than 30% of its radius) to an existing seed of the same
    kind joins it. Each seed records the significance of every input map at its
    position, the maps and methods that found it, and its nesting.

    Parameters
    ----------
    significance_maps : dict
        Label -> significance image (`~gammapy.maps.WcsNDMap` or
        `~gammapy.estimators.FluxMaps`), e.g. ``{"postev_r0.1": ..., "postev_r0.2": ...}``.
    threshold : float
        Peak significance threshold.
    min_distance : str or `~astropy.units.Quantity`
        Minimum distance between peaks in one map.
    hough : bool
        Also look for shells with `find_circle_seeds`.
    hough_threshold : float
        Minimum mean significance along a Hough circle.
    merge_distance : str or `~astropy.units.Quantity`
        Distance under which candidates from different maps are one seed.
    **hough_kwargs : dict
        Passed to `find_circle_seeds`.

    Returns
    -------
    seeds : `SeedCatalog`
        Ranked by significance; empty (not an error) when nothing is found.
    """
    if not significance_maps:
        raise InputError("find_seeds needs at least one significance map")
    candidates = []
    for label, significance in significance_maps.items():
        candidates.append(find_peak_seeds(significance, threshold, min_distance, label=label))
        if hough:
            candidates.append(find_circle_seeds(significance, hough_threshold, label=label, **hough_kwargs))
    merged = _merge(candidates, u.Quantity(merge_distance).to_value("deg"))
    catalog = SeedCatalog(merged)
    catalog.add_significances(significance_maps)
    catalog.compute_nesting()
    log.info("Found %d seeds in %d maps", len(catalog), len(significance_maps))
    return catalog


def _merge(tables, merge_distance):
    """Merge candidate seeds from several maps, strongest first (see `find_seeds`).

    Greedy on purpose: this is non-maximum suppression, not a matching. A
    candidate joins the first, hence strongest, seed near it, so each seed keeps
    the position and significance of its strongest detection (and, but for ties
    in significance, the result does not depend on the order of the maps). An optimal assignment
    (``linear_sum_assignment``) would pair candidates to minimise the summed
    distance and could move a seed to a weaker detection.
    """
    rows = [row for table in tables for row in table]
    rows.sort(key=lambda row: -row["sqrt_ts"])
    seeds = []
    lon, lat, hough = np.zeros(len(rows)), np.zeros(len(rows)), np.zeros(len(rows), dtype=bool)
    for row in rows:
        row_lon, row_lat = np.deg2rad(row["glon"]), np.deg2rad(row["glat"])
        is_hough = row["method"] == "hough"
        n_seeds = len(seeds)
        separation = np.rad2deg(angular_separation(lon[:n_seeds], lat[:n_seeds], row_lon, row_lat))
        limit = 0.3 * np.array([seed["radius"] for seed in seeds]) if is_hough else merge_distance
        candidates = np.flatnonzero((hough[:n_seeds] == is_hough) & (separation < limit))
        if len(candidates) == 0:
            lon[n_seeds], lat[n_seeds], hough[n_seeds] = row_lon, row_lat, is_hough
            seeds.append(
                {
                    "position": SkyCoord(row["glon"], row["glat"], unit="deg", frame="galactic"),
                    "radius": row["radius"],
                    "sqrt_ts": row["sqrt_ts"],
                    "method": row["method"],
                    "origin": [row["origin"]],
                }
            )
            continue
        match = seeds[candidates[0]]
        if row["origin"] not in match["origin"]:
            match["origin"].append(row["origin"])
            match["radius"] = max(match["radius"], row["radius"]) if row["method"] == "peak" else match["radius"]
    table = _empty_table()
    table.remove_column("origin")
    table["origin"] = np.zeros(0, dtype="U256")
    for seed in seeds:
        position = seed["position"]
        table.add_row(
            [
                position.l.wrap_at("180d").deg,
                position.b.deg,
                seed["radius"],
                seed["sqrt_ts"],
                seed["method"],
                ",".join(seed["origin"]),
            ]
        )
    return table
