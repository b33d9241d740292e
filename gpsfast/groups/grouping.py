"""Groups of overlapping sources: the overlap graph, its connected components and the split of large ones."""
import hashlib
import logging
from dataclasses import dataclass

import astropy.units as u
import numpy as np
from astropy.coordinates import Angle, SkyCoord
from gammapy.modeling.models import SkyModel, TemplateSpatialModel
from regions import RectangleSkyRegion
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from ..errors import InputError
from ..modeling import main_source

__all__ = ["Group", "make_groups", "source_extent"]

log = logging.getLogger("gpsfast.groups")


def source_extent(spatial_model):
    """Containment-like radius of a spatial model (about 86% for a Gaussian).

    Rule: ``2 sigma`` for Gaussians; ``r_0 (1 + 0.8 eta)`` for generalized
    Gaussians (``1.4 r_0`` = 2 sigma at eta = 0.5); ``radius + width`` for
    shells; ``r_0`` for disks; otherwise ``evaluation_radius / 2.5`` (0 for
    point sources).

    Parameters
    ----------
    spatial_model : `~gammapy.modeling.models.SpatialModel`
        Spatial model.

    Returns
    -------
    radius : `~astropy.coordinates.Angle`
    """
    pars = spatial_model.parameters
    names = set(pars.names)
    if "sigma" in names:
        return Angle(2 * pars["sigma"].quantity)
    if {"r_0", "eta"} <= names:
        return Angle(pars["r_0"].quantity * (1 + 0.8 * pars["eta"].value))
    if {"radius", "width"} <= names:
        return Angle(pars["radius"].quantity + pars["width"].quantity)
    if "r_0" in names:
        return Angle(pars["r_0"].quantity)
    radius = spatial_model.evaluation_radius
    return Angle(0 * u.deg if radius is None else radius / 2.5)


@dataclass(frozen=True)
class Group:
    """A group of overlapping sources fitted together.

    Attributes
    ----------
    index : int
        Position of the group in the list.
    names : tuple of str
        Names of the member sky models.
    main : str
        Name of the brightest member (its shape parameters are released).
    center : `~astropy.coordinates.SkyCoord`
        Centre of the cutout (galactic).
    width : `~astropy.coordinates.Angle`
        Width of the square cutout: the members' extents plus a margin.
    """

    index: int
    names: tuple
    main: str
    center: SkyCoord
    width: Angle

    @property
    def key(self):
        """Stable identifier of the group (hash of its member names)."""
        return hashlib.sha1("\n".join(sorted(self.names)).encode()).hexdigest()[:16]

    @property
    def region(self):
        """`~regions.RectangleSkyRegion` of the cutout."""
        return RectangleSkyRegion(center=self.center, width=self.width, height=self.width)


def _group_sources(models):
    """Sky models with a spatial model that is not a template (backgrounds, diffuse skipped)."""
    return [
        model
        for model in models
        if isinstance(model, SkyModel)
        and model.spatial_model is not None
        and not isinstance(model.spatial_model, TemplateSpatialModel)
    ]


def _overlap_graph(positions, radii):
    """Edges (i, j, weight) of the sources whose extents overlap.

    The weight is the overlap relative to the summed radii, in (0, 1]:
    ``(r_i + r_j - d_ij) / (r_i + r_j)``.
    """
    n = len(radii)
    sep = positions[:, None].separation(positions[None, :]).deg
    reach = radii[:, None] + radii[None, :]
    with np.errstate(divide="ignore", invalid="ignore"):
        weight = np.where(reach > 0, (reach - sep) / reach, 0.0)
    i, j = np.nonzero(np.triu(weight > 0, k=1))
    return i, j, weight[i, j], n


def _components(n, i, j):
    graph = coo_matrix((np.ones(len(i)), (i, j)), shape=(n, n))
    return connected_components(graph, directed=False)[1]


def _split(members, edges, max_size):
    """Split a component by cutting its weakest edges until no part exceeds ``max_size``.

    Edges are removed one at a time, weakest first (ties: the later pair in
    source order first); after each cut the connected components are
    recomputed and only the parts still too large are cut further.
    """
    if len(members) <= max_size:
        return [members]
    local = {m: k for k, m in enumerate(members)}
    inside = [(local[a], local[b], w) for a, b, w in edges if a in local and b in local]
    inside.sort(key=lambda e: (e[2], -e[0], -e[1]))
    while inside:
        inside.pop(0)
        labels = _components(len(members), [e[0] for e in inside], [e[1] for e in inside])
        if labels.max() > 0:
            parts = [[m for m, lab in zip(members, labels) if lab == k] for k in range(labels.max() + 1)]
            return [piece for part in parts for piece in _split(part, edges, max_size)]
    return [[m] for m in members]


def _group_geometry(positions, radii, margin):
    """Centre (mean direction) and width of a square covering members plus margin."""
    cart = positions.cartesian.xyz.value
    mean = cart.mean(axis=1)
    center = SkyCoord(*mean, representation_type="cartesian", frame=positions.frame)
    center = SkyCoord(center.spherical.lon, center.spherical.lat, frame=positions.frame)
    half = np.max(center.separation(positions).deg + radii)
    return center, Angle(2 * (half + margin), "deg")


def make_groups(models, psf_radius="0.1 deg", max_size=5, margin="0.3 deg"):
    """Groups of sky models whose extents overlap.

    Each source's extent is `source_extent` combined in quadrature with
    ``psf_radius``; two sources overlap when their separation is smaller than the
    sum of their extents, with the weight ``(r_i + r_j - d) / (r_i + r_j)``. The
    connected components of that graph are the groups. A group with more than
    ``max_size`` members is split by removing its weakest edges one by one
    (weakest first) until every part has at most ``max_size`` members.
    Background models and template (diffuse) sky models are not grouped.

    Parameters
    ----------
    models : `~gammapy.modeling.models.Models` or list of models
        All models.
    psf_radius : `~astropy.coordinates.Angle` or str, optional
        PSF containment radius combined with each source size. Default 0.1 deg.
    max_size : int, optional
        Largest number of sources in a group. Default 5.
    margin : `~astropy.coordinates.Angle` or str, optional
        Margin around the members' extents in the cutout. Default 0.3 deg.

    Returns
    -------
    groups : list of `Group`
        Ordered by the first member's position in ``models``.
    """
    if int(max_size) < 1:
        raise InputError(f"make_groups: max_size must be >= 1, got {max_size}")
    sources = _group_sources(list(models))
    if not sources:
        return []
    psf = Angle(psf_radius).deg
    radii = np.array([np.hypot(source_extent(m.spatial_model).deg, psf) for m in sources])
    positions = SkyCoord([m.position.galactic for m in sources])
    i, j, weight, n = _overlap_graph(positions, radii)
    labels = _components(n, i, j)
    edges = list(zip(i.tolist(), j.tolist(), weight.tolist()))
    parts = []
    for label in range(labels.max() + 1):
        members = [k for k in range(n) if labels[k] == label]
        parts.extend(_split(members, edges, int(max_size)))
    parts.sort(key=min)
    groups = []
    for index, part in enumerate(parts):
        members = [sources[k] for k in part]
        center, width = _group_geometry(positions[part], radii[part], Angle(margin).deg)
        main = main_source(members).name
        groups.append(Group(index, tuple(m.name for m in members), main, center, width))
    log.info("%d sources in %d groups (largest %d)", n, len(groups), max(len(g.names) for g in groups))
    return groups
