"""Clustering of spectral index maps into regions of one spectrum.

Overlapping sources with different spectra show up in an index map (see
`gpsfast.spectra.IndexMapEstimator`) as adjacent patches of different index.
`cluster_index_map` groups the significant, fitted pixels of such a map with
scikit-learn's agglomerative clustering (Ward linkage), constrained to the
pixel grid (`sklearn.feature_extraction.image.grid_to_graph`) so that every
cluster is a contiguous patch, on features built from the index, the position
and, optionally, the significance of each pixel.

The Ward tree is cut from the top: a cluster is split in the two clusters it
was merged from while they differ by more than ``distance_threshold`` (distance
between their mean feature vectors, each feature in units of its scale), their
mean indices differ by more than ``n_sigma`` times their errors, and both have
at least ``min_pixels`` pixels. Unlike scikit-learn's own
``distance_threshold`` (the Ward merge cost, which grows with the square root
of the cluster sizes), this criterion does not depend on the size of the
sources: with the default scales, two clusters are kept apart when their mean
indices differ by about 0.6.

`cluster_regions` turns the label map into `~regions.PolygonSkyRegion` s (the
outer contour of each cluster), for DS9 or CASA region files.
"""
import logging
import warnings
from collections.abc import Mapping

import astropy.units as u
import numpy as np
from astropy.coordinates import SkyCoord
from astropy.table import Table
from gammapy.maps import Map, WcsGeom
from regions import PixCoord, PolygonPixelRegion, Regions
from scipy import ndimage
from skimage.measure import approximate_polygon, find_contours
from sklearn.cluster import AgglomerativeClustering
from sklearn.feature_extraction.image import grid_to_graph

from gpsfast.errors import InputError

__all__ = ["DEFAULT_SCALES", "cluster_index_map", "cluster_regions"]

log = logging.getLogger(__name__)

DEFAULT_SCALES = {"index": 0.3, "position": 0.5 * u.deg, "sqrt_ts": None}
"""Feature scales: a difference of one scale is a distance of 1 (None: feature unused)."""

_REQUIRED = ("index", "sqrt_ts")


# ----------------------------------------------------------------------------
# input
# ----------------------------------------------------------------------------
def _check_maps(maps):
    if not isinstance(maps, Mapping):
        raise InputError(
            "maps must be the gammapy Maps of an IndexMapEstimator (index, sqrt_ts, ...), "
            f"got {type(maps).__name__}"
        )
    missing = [name for name in _REQUIRED if name not in maps]
    if missing:
        raise InputError(f"maps lack {', '.join(missing)}: got {', '.join(maps) or 'no maps'}")
    geom = maps["index"].geom if isinstance(maps["index"], Map) else None
    for name in ("index", "index_err", "sqrt_ts", "flag"):
        if name not in maps:
            continue
        item = maps[name]
        if not isinstance(item, Map) or not isinstance(item.geom, WcsGeom):
            raise InputError(f"maps[{name!r}] must be a gammapy WcsNDMap, got {type(item).__name__}")
        if not item.geom.is_image:
            raise InputError(f"maps[{name!r}] must be an image (no energy axis), got shape {item.data.shape}")
        if item.geom.data_shape != geom.data_shape:
            raise InputError(f"maps[{name!r}] has shape {item.data.shape}, maps['index'] {geom.data_shape}")
    return geom


def _scales(scales):
    out = dict(DEFAULT_SCALES)
    if scales is not None:
        unknown = set(scales) - set(out)
        if unknown:
            raise InputError(f"unknown feature scale(s) {sorted(unknown)}; use {sorted(out)}")
        out.update(scales)
    index = None if out["index"] is None else float(out["index"])
    sqrt_ts = None if out["sqrt_ts"] is None else float(out["sqrt_ts"])
    position = None if out["position"] is None else u.Quantity(out["position"], u.deg).to_value(u.deg)
    values = {"index": index, "position": position, "sqrt_ts": sqrt_ts}
    for name, value in values.items():
        if value is not None and not value > 0:
            raise InputError(f"scale of {name!r} must be positive or None, got {out[name]}")
    if all(value is None for value in values.values()):
        raise InputError("all feature scales are None: no feature to cluster on")
    return values


def _selection(maps, sqrt_ts_min):
    """Pixels that are fitted (flag 0), finite and at least ``sqrt_ts_min`` significant."""
    index = maps["index"].data
    sqrt_ts = maps["sqrt_ts"].data
    with np.errstate(invalid="ignore"):
        selected = np.isfinite(index) & np.isfinite(sqrt_ts) & (sqrt_ts >= sqrt_ts_min)
    if "flag" in maps:
        selected &= maps["flag"].data == 0
    if "index_err" in maps:
        err = maps["index_err"].data
        with np.errstate(invalid="ignore"):
            selected &= np.isfinite(err) & (err > 0)
    return selected


def _features(maps, geom, scales, iy, ix):
    columns = []
    if scales["index"] is not None:
        columns.append(maps["index"].data[iy, ix] / scales["index"])
    if scales["position"] is not None:
        binsz = np.abs(geom.pixel_scales.to_value(u.deg))
        columns.append(ix * binsz[0] / scales["position"])
        columns.append(iy * binsz[1] / scales["position"])
    if scales["sqrt_ts"] is not None:
        columns.append(maps["sqrt_ts"].data[iy, ix] / scales["sqrt_ts"])
    return np.column_stack(columns).astype(np.float64)


# ----------------------------------------------------------------------------
# the tree and its cut
# ----------------------------------------------------------------------------
class _WardTree:
    """Ward tree of one contiguous island of pixels, with node sizes and feature means.

    ``index`` and ``index_err`` are the index and its error at every pixel
    (leaf); ``index_err`` may be None.
    """

    def __init__(self, features, connectivity, index, index_err):
        self.index = index
        self.index_err = index_err
        self.n_leaves = len(features)
        n_nodes = 2 * self.n_leaves - 1
        self.size = np.ones(n_nodes, dtype=np.int64)
        total = np.zeros((n_nodes, features.shape[1]))
        total[: self.n_leaves] = features
        if self.n_leaves == 1:
            self.children = np.zeros((0, 2), dtype=np.int64)
        else:
            model = AgglomerativeClustering(
                n_clusters=None, distance_threshold=0.0, linkage="ward",
                connectivity=connectivity, compute_full_tree=True,
            )
            with warnings.catch_warnings():
                # an island is connected: no completion of the graph happens;
                # exactly equal features give a harmless zero-distance warning
                warnings.simplefilter("ignore")
                model.fit(features)
            self.children = model.children_
        for node, (a, b) in enumerate(self.children, start=self.n_leaves):
            self.size[node] = self.size[a] + self.size[b]
            total[node] = total[a] + total[b]
        self.mean = total / self.size[:, None]

    @property
    def root(self):
        return 2 * self.n_leaves - 2

    def children_of(self, node):
        return self.children[node - self.n_leaves]

    def is_split(self, node, distance_threshold, min_pixels, n_sigma):
        """Whether a node is kept as the two clusters it was merged from.

        Both must have ``min_pixels`` pixels, their mean features must be more
        than ``distance_threshold`` apart and, with index errors, their mean
        indices more than ``n_sigma`` times their typical errors combined.
        """
        if node < self.n_leaves:
            return False
        a, b = self.children_of(node)
        if min(self.size[a], self.size[b]) < min_pixels:
            return False
        if not np.linalg.norm(self.mean[a] - self.mean[b]) > distance_threshold:
            return False
        if self.index_err is None:
            return True
        (index_a, err_a), (index_b, err_b) = self.index_stats(a), self.index_stats(b)
        return abs(index_a - index_b) > n_sigma * np.hypot(err_a, err_b)

    def index_stats(self, node):
        """Mean index weighted by ``1 / index_err**2`` and median ``index_err`` of a node.

        The median pixel error, not the error of the mean: neighbouring pixels
        share their counts (correlation disk), so they are far from independent.
        """
        leaves = self.leaves(node)
        err = self.index_err[leaves]
        return np.average(self.index[leaves], weights=err**-2.0), np.median(err)

    def leaves(self, node):
        stack, out = [node], []
        while stack:
            node = stack.pop()
            if node < self.n_leaves:
                out.append(node)
            else:
                stack.extend(self.children_of(node))
        return np.array(out, dtype=np.int64)


def _cut_by_distance(trees, distance_threshold, min_pixels, n_sigma):
    """(tree, node) of the clusters: top-down splits while `_WardTree.is_split`."""
    clusters = []
    for tree in trees:
        stack = [tree.root]
        while stack:
            node = stack.pop()
            if tree.is_split(node, distance_threshold, min_pixels, n_sigma):
                stack.extend(tree.children_of(node))
            else:
                clusters.append((tree, node))
    return clusters


def _cut_by_number(trees, n_clusters):
    """(tree, node) of ``n_clusters`` clusters, undoing merges one at a time.

    Within an island, the latest merge (largest node id) is undone first, as in
    scikit-learn's ``n_clusters`` cut, so that on a single island the clusters
    are scikit-learn's. Across islands, the candidate merge of largest Ward
    height is undone first.
    """
    if n_clusters < len(trees):
        raise InputError(
            f"n_clusters={n_clusters} is fewer than the {len(trees)} separate islands of "
            "significant pixels; raise n_clusters or sqrt_ts_min"
        )
    open_nodes = [[tree.root] for tree in trees]  # per island, clusters as node ids
    n_current = len(trees)
    while n_current < n_clusters:
        candidates = [(i, max(nodes)) for i, nodes in enumerate(open_nodes)
                      if max(nodes) >= trees[i].n_leaves]
        if not candidates:
            raise InputError(f"n_clusters={n_clusters} is more than the {n_current} pixels selected")
        i, node = max(candidates, key=lambda c: _ward_height(trees[c[0]], c[1]))
        open_nodes[i].remove(node)
        open_nodes[i].extend(int(child) for child in trees[i].children_of(node))
        n_current += 1
    return [(tree, node) for tree, nodes in zip(trees, open_nodes) for node in nodes]


def _ward_height(tree, node):
    a, b = tree.children_of(node)
    na, nb = tree.size[a], tree.size[b]
    return np.sqrt(2.0 * na * nb / (na + nb)) * np.linalg.norm(tree.mean[a] - tree.mean[b])


# ----------------------------------------------------------------------------
# the cluster table
# ----------------------------------------------------------------------------
def _lonlat_names(geom):
    return ("glon", "glat") if geom.frame == "galactic" else ("ra", "dec")


def _empty_table(geom):
    lon, lat = _lonlat_names(geom)
    table = Table()
    table["label"] = np.zeros(0, dtype=np.int32)
    table["n_pixels"] = np.zeros(0, dtype=np.int64)
    for name in (lon, lat, f"{lon}_peak", f"{lat}_peak", "radius"):
        table[name] = u.Quantity(np.zeros(0), u.deg)
    for name in ("index", "index_err", "index_std", "sqrt_ts_max"):
        table[name] = np.zeros(0)
    return table


def _centroid(skycoord, weights):
    """Weighted mean direction of pixel centres (no wrap-around issue)."""
    xyz = skycoord.cartesian.xyz.value * weights
    mean = SkyCoord(*xyz.sum(axis=1), representation_type="cartesian", frame=skycoord.frame)
    mean.representation_type = "unitspherical"
    return mean


def _cluster_row(maps, geom, iy, ix, solid_angle):
    sqrt_ts = maps["sqrt_ts"].data[iy, ix]
    index = maps["index"].data[iy, ix]
    if "index_err" in maps:
        inv_var = 1.0 / maps["index_err"].data[iy, ix] ** 2
    else:
        inv_var = np.ones(len(index))
    skycoord = geom.pix_to_coord((ix, iy))
    skycoord = SkyCoord(skycoord[0], skycoord[1], unit="deg", frame=geom.frame)
    centre = _centroid(skycoord, sqrt_ts**2)
    peak = skycoord[np.argmax(sqrt_ts)]
    area = solid_angle[iy, ix].sum()
    return {
        "n_pixels": len(iy),
        "lon": centre.spherical.lon.wrap_at(360 * u.deg).to(u.deg),
        "lat": centre.spherical.lat.to(u.deg),
        "lon_peak": peak.spherical.lon.wrap_at(360 * u.deg).to(u.deg),
        "lat_peak": peak.spherical.lat.to(u.deg),
        "radius": np.sqrt(area / np.pi).to(u.deg, u.dimensionless_angles()),
        "index": np.sum(index * inv_var) / np.sum(inv_var),
        "index_err": np.sqrt(1.0 / np.sum(inv_var)),
        "index_std": np.std(index),
        "sqrt_ts_max": np.max(sqrt_ts),
    }


def _table(rows, geom):
    """Cluster table of the rows, labelled 1, 2, ... in their order."""
    table = _empty_table(geom)
    if not rows:
        return table
    lon, lat = _lonlat_names(geom)
    names = {"lon": lon, "lat": lat, "lon_peak": f"{lon}_peak", "lat_peak": f"{lat}_peak"}
    table = Table()
    table["label"] = np.arange(1, len(rows) + 1, dtype=np.int32)
    for key in rows[0]:
        values = [row[key] for row in rows]
        table[names.get(key, key)] = u.Quantity(values) if isinstance(values[0], u.Quantity) else values
    return table


# ----------------------------------------------------------------------------
# public API
# ----------------------------------------------------------------------------
def cluster_index_map(maps, n_clusters=None, distance_threshold=2.0, n_sigma=3.0, sqrt_ts_min=5.0,
                      scales=None, min_pixels=10):
    """Group the pixels of a spectral index map into contiguous clusters of one index.

    The pixels used are those fitted (``flag == 0``, when a ``flag`` map is
    given), with finite index (and positive ``index_err``) and ``sqrt_ts >=
    sqrt_ts_min``. Each 4-connected island of such pixels of at least
    ``min_pixels`` pixels is clustered on its own with scikit-learn's
    `~sklearn.cluster.AgglomerativeClustering` (Ward linkage, connectivity of
    the pixel grid), on the features index / ``scales["index"]``, pixel
    position (deg) / ``scales["position"]`` and sqrt_ts / ``scales["sqrt_ts"]``
    (a feature with scale None is left out). Islands never merge.

    Parameters
    ----------
    maps : `~gammapy.maps.Maps` or dict of `~gammapy.maps.WcsNDMap`
        Images from `gpsfast.spectra.IndexMapEstimator`: ``index`` and
        ``sqrt_ts`` are required; ``index_err`` (weights of the mean index)
        and ``flag`` are used when present.
    n_clusters : int, optional
        Number of clusters wanted. When given, the Ward trees are cut into
        that many clusters, undoing one merge at a time (within an island the
        latest, so that on a single island this is scikit-learn's
        ``n_clusters`` cut; across islands the one of largest Ward cost), and
        ``distance_threshold`` is not used. It must be at least the number of
        islands.
    distance_threshold : float
        A cluster is split in the two it was merged from while their mean
        feature vectors are more than this apart (in units of the scales) and
        both have at least ``min_pixels`` pixels. Default 2 (with the
        default scales: mean indices 0.6 apart).
    n_sigma : float
        With an ``index_err`` map, a split also needs the two mean indices
        (weighted by ``1 / index_err**2``) to differ by more than ``n_sigma``
        times the quadratic sum of the median ``index_err`` of the two
        clusters (a conservative error: pixels in a correlation disk share
        their counts). It keeps the noisy, faint rims of sources, whose
        indices scatter, from being split off. Default 3.
    sqrt_ts_min : float
        Minimum significance of a clustered pixel. Default 5.
    scales : dict, optional
        Scales of the features, updating `DEFAULT_SCALES`: ``index`` (0.3),
        ``position`` (0.5 deg), ``sqrt_ts`` (None: unused).
    min_pixels : int
        Minimum number of pixels of an island and of a cluster. Default 10.

    Returns
    -------
    labels : `~gammapy.maps.WcsNDMap`
        Cluster label of every pixel (int32), 0 where no cluster.
    clusters : `~astropy.table.Table`
        One row per cluster, by decreasing ``sqrt_ts_max``: ``label``,
        ``n_pixels``, ``glon``, ``glat`` (``ra``, ``dec`` for an ICRS map;
        centroid of the pixel centres weighted by ``sqrt_ts**2``),
        ``glon_peak``, ``glat_peak`` (pixel of maximum ``sqrt_ts``),
        ``radius`` (radius of a disk of the same solid angle), ``index`` (mean
        weighted by ``1 / index_err**2``), ``index_err`` (its error, treating
        pixels as independent, hence a lower bound), ``index_std`` (spread of
        the pixel indices) and ``sqrt_ts_max``. Empty when no pixel qualifies.
        `cluster_regions` gives the cluster outlines.
    """
    geom = _check_maps(maps)
    scales = _scales(scales)
    min_pixels = int(min_pixels)
    if min_pixels < 1:
        raise InputError(f"min_pixels must be at least 1, got {min_pixels}")
    if n_clusters is not None and not int(n_clusters) >= 1:
        raise InputError(f"n_clusters must be a positive integer, got {n_clusters}")
    if n_clusters is None and not float(distance_threshold) >= 0:
        raise InputError(f"distance_threshold must be non-negative, got {distance_threshold}")
    if n_clusters is None and not float(n_sigma) >= 0:
        raise InputError(f"n_sigma must be non-negative, got {n_sigma}")

    selected = _selection(maps, float(sqrt_ts_min))
    islands, n_islands = ndimage.label(selected)
    ny, nx = selected.shape
    trees, pixels = [], []
    for island in range(1, n_islands + 1):
        mask = islands == island
        if mask.sum() < min_pixels:
            continue
        iy, ix = np.nonzero(mask)  # row-major order, as grid_to_graph numbers them
        features = _features(maps, geom, scales, iy, ix)
        index_err = maps["index_err"].data[iy, ix] if "index_err" in maps else None
        trees.append(_WardTree(features, grid_to_graph(ny, nx, mask=mask), maps["index"].data[iy, ix],
                               index_err))
        pixels.append((iy, ix))
    log.debug("%d pixels selected in %d islands, %d clustered", selected.sum(), n_islands, len(trees))

    if n_clusters is None:
        nodes = _cut_by_distance(trees, float(distance_threshold), min_pixels, float(n_sigma))
    else:
        nodes = _cut_by_number(trees, int(n_clusters)) if trees else []
    solid_angle = geom.solid_angle().to(u.sr).squeeze()
    members = []
    for tree, node in nodes:
        iy, ix = pixels[trees.index(tree)]
        leaves = tree.leaves(node)
        members.append((iy[leaves], ix[leaves]))
    rows = [_cluster_row(maps, geom, iy, ix, solid_angle) for iy, ix in members]
    order = np.argsort([-row["sqrt_ts_max"] for row in rows], kind="stable")
    labels = np.zeros(selected.shape, dtype=np.int32)
    for label, k in enumerate(order, start=1):
        labels[members[k]] = label
    return Map.from_geom(geom, data=labels), _table([rows[k] for k in order], geom)


def _outline(mask):
    """Outer contour of a pixel mask, as (x, y) pixel vertices around its pixel centres."""
    padded = np.pad(mask, 1).astype(float)
    contours = find_contours(padded, 0.5, fully_connected="high")

    def area(contour):
        y, x = contour[:, 0], contour[:, 1]
        return abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1)))

    outer = max(contours, key=area)
    outer = approximate_polygon(outer[:-1], tolerance=1e-6) - 1.0
    return outer[:, 1], outer[:, 0]


def cluster_regions(labels):
    """Outlines of the clusters of a label map, as sky polygons.

    The polygon of a cluster runs half-way between its pixel centres and those
    of the pixels around it, so that the pixel centres inside it are those of
    the cluster (holes in a cluster are not cut out).

    Parameters
    ----------
    labels : `~gammapy.maps.WcsNDMap`
        Label map from `cluster_index_map` (0: no cluster).

    Returns
    -------
    regions : `~regions.Regions`
        One `~regions.PolygonSkyRegion` per label, by increasing label, with
        ``meta["text"]`` = ``"cluster <label>"``; write it with
        ``regions.write("clusters.reg", format="ds9")``.
    """
    if not isinstance(labels, Map) or not isinstance(labels.geom, WcsGeom) or not labels.geom.is_image:
        raise InputError(f"labels must be the WcsNDMap image of cluster_index_map, got {type(labels).__name__}")
    data = np.asarray(labels.data)
    wcs = labels.geom.wcs
    out = []
    for label in np.unique(data[data > 0]):
        x, y = _outline(data == label)
        region = PolygonPixelRegion(PixCoord(x, y)).to_sky(wcs)
        region.meta["text"] = f"cluster {label}"
        out.append(region)
    return Regions(out)
