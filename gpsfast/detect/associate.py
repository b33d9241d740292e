"""Association of seeds with known (or simulated) sources by surface overlap."""
import logging

import astropy.units as u
import numpy as np
from astropy.coordinates import SkyCoord, search_around_sky
from astropy.table import Table
from astropy.wcs import WCS
from gammapy.modeling.models import Models, SkyModel, TemplateSpatialModel
from regions import (
    CircleAnnulusSkyRegion,
    CircleSkyRegion,
    EllipseSkyRegion,
    PixCoord,
    PointSkyRegion,
)

from ..errors import InputError
from .catalog import SeedCatalog

__all__ = ["source_regions", "overlap_fraction", "associate"]

log = logging.getLogger(__name__)

N_GRID = 64


def _circle(position, radius):
    return CircleSkyRegion(position, u.Quantity(radius, "deg"))


def source_regions(sources, min_radius="0.05 deg"):
    """Sky regions (circle or ellipse) of sources, keyed by name.

    Parameters
    ----------
    sources : `~gammapy.modeling.models.Models`, `SeedCatalog` or `~astropy.table.Table`
        Sky models (their ``spatial_model.to_region()``: point sources get a circle of
        ``min_radius``, shells their outer circle; templates are skipped), or a table
        with ``name``, ``glon``, ``glat`` and ``radius`` (deg) columns.
    min_radius : str or `~astropy.units.Quantity`
        Smallest radius given to a source or seed (e.g. the PSF size).

    Returns
    -------
    regions : dict
        Name -> `~regions.CircleSkyRegion` or `~regions.EllipseSkyRegion`.
    """
    min_radius = u.Quantity(min_radius, "deg")
    if isinstance(sources, SeedCatalog):
        sources = sources.table
    if isinstance(sources, Table):
        missing = {"name", "glon", "glat", "radius"} - set(sources.colnames)
        if missing:
            raise InputError(f"Source table lacks columns {sorted(missing)}")
        positions = SkyCoord(np.asarray(sources["glon"]), np.asarray(sources["glat"]), unit="deg", frame="galactic")
        return {
            str(row["name"]): _circle(position, max(float(row["radius"]), min_radius.value))
            for row, position in zip(sources, positions)
        }
    if isinstance(sources, SkyModel):
        sources = Models([sources])
    if not isinstance(sources, Models):
        raise InputError(f"Sources must be Models, a SeedCatalog or a Table, got {type(sources).__name__}")
    regions = {}
    for model in sources:
        spatial = getattr(model, "spatial_model", None)
        if spatial is None or isinstance(spatial, TemplateSpatialModel):
            continue
        regions[model.name] = _model_region(spatial, min_radius)
    return regions


def _model_region(spatial, min_radius):
    try:
        region = spatial.to_region()
    except (AttributeError, NotImplementedError, TypeError):
        region = None
    position = spatial.position
    if isinstance(region, CircleAnnulusSkyRegion):
        return _circle(region.center, max(region.outer_radius, min_radius))
    if isinstance(region, CircleSkyRegion):
        return _circle(region.center, max(region.radius, min_radius))
    if isinstance(region, EllipseSkyRegion):
        width = max(region.width, 2 * min_radius)
        height = max(region.height, 2 * min_radius)
        return EllipseSkyRegion(region.center, width=width, height=height, angle=region.angle)
    if isinstance(region, PointSkyRegion) or region is None:
        radius = min_radius
        if region is None and hasattr(spatial, "evaluation_radius") and spatial.evaluation_radius is not None:
            radius = max(u.Quantity(spatial.evaluation_radius, "deg") / 3, min_radius)
        return _circle(position, radius)
    raise InputError(f"Cannot turn the {type(region).__name__} of a {type(spatial).__name__} into a circle or ellipse")


def _extent(region):
    if isinstance(region, CircleSkyRegion):
        return region.radius.to_value("deg")
    return 0.5 * max(region.width, region.height).to_value("deg")


def _area(region):
    if isinstance(region, CircleSkyRegion):
        return np.pi * region.radius.to_value("deg") ** 2
    return np.pi * region.width.to_value("deg") * region.height.to_value("deg") / 4


def overlap_fraction(region_a, region_b):
    """Overlap area of two sky regions over the area of the smaller one.

    Both regions are projected on a local tangent plane centred on the smaller
    one, sampled on a 64 x 64 grid covering it (pixel-centre membership, as
    ``regions`` decides it).

    Parameters
    ----------
    region_a, region_b : `~regions.CircleSkyRegion` or `~regions.EllipseSkyRegion`
        The two regions.

    Returns
    -------
    fraction : float
        Between 0 (disjoint) and 1 (the smaller one lies inside the other).
    """
    small, large = sorted((region_a, region_b), key=_area)
    separation = small.center.separation(large.center).deg
    if separation > _extent(small) + _extent(large):
        return 0.0
    extent = _extent(small)
    center = small.center.galactic
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["GLON-TAN", "GLAT-TAN"]
    wcs.wcs.crval = [center.l.deg, center.b.deg]
    wcs.wcs.cdelt = [-2 * extent / N_GRID, 2 * extent / N_GRID]
    wcs.wcs.crpix = [N_GRID / 2 + 0.5, N_GRID / 2 + 0.5]
    y, x = np.mgrid[0:N_GRID, 0:N_GRID]
    pixels = PixCoord(x.ravel(), y.ravel())
    inside_small = small.to_pixel(wcs).contains(pixels)
    inside_both = inside_small & large.to_pixel(wcs).contains(pixels)
    n_small = np.count_nonzero(inside_small)
    return float(np.count_nonzero(inside_both) / n_small) if n_small else 0.0


def associate(seeds, sources, threshold=0.1, min_radius="0.05 deg"):
    """Associate seeds with reference sources by surface overlap.

    A seed and a source are associated when the overlap of their circles or
    ellipses, over the area of the smaller one, is at least ``threshold``. All
    associated pairs are returned: a seed may match several sources and a
    source several seeds (one-to-many), each pair ranked by overlap for the seed
    (``rank_seed``) and for the source (``rank_source``). When ``seeds`` is a
    `SeedCatalog`, its table gets ``assoc`` (best source, or ``""``),
    ``assoc_overlap`` and ``n_assoc`` columns.

    The candidate pairs (centres closer than the sum of the two extents) come
    from `~astropy.coordinates.search_around_sky`. There is deliberately no
    one-to-one assignment (greedy or ``scipy.optimize.linear_sum_assignment``):
    a seed covering two blended sources, or a source split into a peak and a
    shell seed, is a real association each time, and a one-to-one matching would
    hide one of them; ``rank_seed == 1`` gives the best source of each seed.

    Parameters
    ----------
    seeds : `SeedCatalog` or `~astropy.table.Table`
        Seeds (``name``, ``glon``, ``glat``, ``radius``).
    sources : `~gammapy.modeling.models.Models`, `SeedCatalog` or `~astropy.table.Table`
        Reference sources: known sources or the simulated truth.
    threshold : float
        Minimum overlap fraction, in (0, 1].
    min_radius : str or `~astropy.units.Quantity`
        Smallest radius of any seed or source.

    Returns
    -------
    pairs : `~astropy.table.Table`
        Columns ``seed``, ``source``, ``overlap``, ``separation`` (deg),
        ``rank_seed``, ``rank_source``.
    """
    if not 0 < threshold <= 1:
        raise InputError(f"Association threshold must be in (0, 1], got {threshold}")
    seed_regions = source_regions(seeds, min_radius)
    reference = source_regions(sources, min_radius)
    seed_names, source_names = list(seed_regions), list(reference)
    rows = []
    for i, j, separation in _candidate_pairs(list(seed_regions.values()), list(reference.values())):
        fraction = overlap_fraction(seed_regions[seed_names[i]], reference[source_names[j]])
        if fraction >= threshold:
            rows.append((seed_names[i], source_names[j], fraction, separation))
    pairs = Table(rows=rows, names=["seed", "source", "overlap", "separation"], dtype=["U64", "U64", float, float])
    pairs["separation"].unit = "deg"
    pairs["rank_seed"] = _ranks(pairs, "seed")
    pairs["rank_source"] = _ranks(pairs, "source")
    if isinstance(seeds, SeedCatalog):
        _annotate(seeds, pairs)
    log.info("Associated %d pairs (%d seeds, %d sources)", len(pairs), len(seed_regions), len(reference))
    return pairs


def _candidate_pairs(regions_a, regions_b):
    """Index pairs ``(i, j, separation in deg)`` of regions that can overlap, by ``i`` then ``j``.

    Regions overlap only where the separation of their centres is at most the
    sum of their extents: `~astropy.coordinates.search_around_sky` (a k-d tree)
    finds those pairs within the largest such sum, instead of testing every pair.
    """
    if not regions_a or not regions_b:
        return []
    centers_a = _centers(regions_a)
    centers_b = _centers(regions_b)
    extent_a = np.array([_extent(region) for region in regions_a])
    extent_b = np.array([_extent(region) for region in regions_b])
    limit = (extent_a.max() + extent_b.max()) * u.deg
    idx_a, idx_b, separation, _ = search_around_sky(centers_a, centers_b, limit)
    separation = separation.deg
    keep = separation <= extent_a[idx_a] + extent_b[idx_b]
    idx_a, idx_b, separation = idx_a[keep], idx_b[keep], separation[keep]
    order = np.lexsort((idx_b, idx_a))
    return list(zip(idx_a[order].tolist(), idx_b[order].tolist(), separation[order].tolist()))


def _centers(regions):
    """Centres of regions as one galactic `~astropy.coordinates.SkyCoord`."""
    lon, lat = np.empty(len(regions)), np.empty(len(regions))
    for k, region in enumerate(regions):
        center = region.center if region.center.frame.name == "galactic" else region.center.galactic
        lon[k], lat[k] = center.l.deg, center.b.deg
    return SkyCoord(lon, lat, unit="deg", frame="galactic")


def _ranks(pairs, key):
    ranks = np.zeros(len(pairs), dtype=int)
    for name in np.unique(pairs[key]) if len(pairs) else []:
        idx = np.nonzero(pairs[key] == name)[0]
        order = idx[np.argsort(-np.asarray(pairs["overlap"])[idx], kind="stable")]
        ranks[order] = np.arange(1, idx.size + 1)
    return ranks


def _annotate(seeds, pairs):
    best = {row["seed"]: row for row in pairs if row["rank_seed"] == 1}
    names = seeds.table["name"]
    seeds.table["assoc"] = np.array([best[n]["source"] if n in best else "" for n in names], dtype="U64")
    seeds.table["assoc_overlap"] = [float(best[n]["overlap"]) if n in best else 0.0 for n in names]
    seeds.table["n_assoc"] = [int(np.count_nonzero(pairs["seed"] == n)) for n in names]
