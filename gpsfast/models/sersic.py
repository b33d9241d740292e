"""Compiled ``GeneralizedGaussianSpatialModel`` (2D Sersic-like profile).

`GeneralizedGaussianSpatialModel` here is a subclass of gammapy's model of the same
name: same parameters, bounds, defaults, YAML tag and results, with ``evaluate``,
``evaluate_geom`` and ``integrate_geom`` running in the Numba kernels of
`gpsfast.kernels.sersic`.

YAML and the model registry
---------------------------
The subclass keeps gammapy's ``tag`` (``GeneralizedGaussianSpatialModel`` /
``gauss-general``) and is *not* added to gammapy's ``SPATIAL_MODEL_REGISTRY``:

- a model written by gpsfast has ``type: GeneralizedGaussianSpatialModel`` and the
  same parameters, so plain gammapy reads it back as its own class;
- importing gpsfast does not change what plain gammapy builds from a YAML file (the
  registry returns the first class with a matching tag; inserting the subclass
  in front would silently change gammapy's behaviour in every script that
  imports gpsfast, appending it would never be used);
- models read by gammapy are switched to the compiled class explicitly, with
  `accelerate_models` (in place, keeping the very same `~gammapy.modeling.Parameter`
  objects, so links, covariance and fit state are kept) or
  `GeneralizedGaussianSpatialModel.from_gammapy`; `restore_gammapy_models` and
  `GeneralizedGaussianSpatialModel.to_gammapy` go back.

Fast paths and fallbacks
------------------------
The kernels handle `~gammapy.maps.WcsGeom` geometries with CAR, TAN or SIN
projection (no distortion, no CD matrix, no projection parameters) in the
``icrs`` or ``galactic`` frame, and models in those frames. Anything else
(`~gammapy.maps.RegionGeom`, HEALPix, other projections or frames, parameter values
that gammapy itself turns into NaN or infinities: ``r_0 <= 0``, ``e >= 1``, NaN)
goes to gammapy's own implementation, so results never silently differ.
"""
import copy
import logging
import math
import weakref
from functools import lru_cache

import numpy as np
import astropy.units as u
from astropy.coordinates import SkyCoord, UnitSphericalRepresentation
from astropy.nddata.utils import NoOverlapError, overlap_slices
from astropy.wcs.utils import proj_plane_pixel_scales
from scipy.special import gamma
from gammapy.maps import Map, WcsGeom
from gammapy.modeling.models import SkyModel
from gammapy.modeling.models import (
    GeneralizedGaussianSpatialModel as _GammapyGeneralizedGaussian,
)

from gpsfast import _compat, twins
from gpsfast._compat import MAX_OVERSAMPLING
from gpsfast.kernels.sersic import (
    PROJ_CAR,
    PROJ_SIN,
    PROJ_TAN,
    generalized_gaussian_grid,
    generalized_gaussian_points,
)

__all__ = [
    "GeneralizedGaussianSpatialModel",
    "accelerate_models",
    "restore_gammapy_models",
]

log = logging.getLogger(__name__)

_PROJECTIONS = {"CAR": PROJ_CAR, "TAN": PROJ_TAN, "SIN": PROJ_SIN}
_FRAMES = ("icrs", "galactic")
_EMPTY_WEIGHTS = np.empty((0, 0))
_SR_INV = u.Unit("sr-1")
_GRID_CACHE = weakref.WeakKeyDictionary()
_SOLID_ANGLE_CACHE = weakref.WeakKeyDictionary()


@lru_cache(maxsize=None)
def _frame_rotation(frame_from, frame_to):
    """3 x 3 matrix turning unit vectors of ``frame_from`` into ``frame_to``."""
    if frame_from == frame_to:
        return np.eye(3)
    axes = UnitSphericalRepresentation(lon=[0, 90, 0] * u.deg, lat=[0, 0, 90] * u.deg)
    moved = SkyCoord(axes, frame=frame_from).transform_to(frame_to)
    return np.ascontiguousarray(moved.cartesian.xyz.value)


def _rotation_z(angle):
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _native_to_celestial(euler):
    """wcslib's native-to-celestial rotation as a matrix (``wcsprm.cel.euler``)."""
    alpha_p, colat_p, phi_p = np.deg2rad(euler[:3])
    c1, s1 = math.cos(colat_p), math.sin(colat_p)
    flip = np.array([[-c1, 0.0, s1], [0.0, -1.0, 0.0], [s1, 0.0, c1]])
    return _rotation_z(alpha_p) @ flip @ _rotation_z(-phi_p)


def _local_basis(lon, lat):
    """Rows: centre, local north and local east unit vectors at (lon, lat) in rad."""
    cl, sl = math.cos(lon), math.sin(lon)
    cb, sb = math.cos(lat), math.sin(lat)
    return np.array(
        [[cb * cl, cb * sl, sb], [-sb * cl, -sb * sl, cb], [-sl, cl, 0.0]]
    )


class _GridSpec:
    """What the kernels need to know about a WcsGeom (image part)."""

    def __init__(self, geom):
        wcs = geom.wcs
        prm = wcs.wcs
        self.shape = tuple(int(n) for n in geom.data_shape[-2:])
        self.proj = _PROJECTIONS[prm.ctype[0][5:8]]
        self.pix2img = np.ascontiguousarray(prm.cdelt[:, None] * prm.get_pc())
        self.crpix = np.array(prm.crpix, dtype=float)
        self.native_to_frame = _native_to_celestial(prm.cel.euler)
        self.frame = geom.frame
        self.pixel_scales = proj_plane_pixel_scales(wcs)
        self.wcs = wcs


def _grid_spec(geom):
    """`_GridSpec` of ``geom`` or None where the kernels do not apply."""
    if not isinstance(geom, WcsGeom):
        return None
    try:
        return _GRID_CACHE[geom]
    except KeyError:
        pass
    spec = _GridSpec(geom) if _supported_geom(geom) else None
    _GRID_CACHE[geom] = spec
    return spec


def _supported_geom(geom):
    if not geom.is_regular or geom.frame not in _FRAMES:
        return False
    wcs = geom.wcs
    prm = wcs.wcs
    if wcs.naxis != 2 or wcs.has_distortion or prm.has_cd():
        return False
    if (prm.lng, prm.lat) != (0, 1) or any(str(unit) != "deg" for unit in prm.cunit):
        return False
    prm.set()
    code = prm.ctype[0][5:8]
    if code not in _PROJECTIONS or prm.ctype[1][5:8] != code:
        return False
    return len(prm.get_pv()) == 0 and not prm.cel.offset


class GeneralizedGaussianSpatialModel(_GammapyGeneralizedGaussian):
    r"""Two-dimensional generalized Gaussian model evaluated by compiled kernels.

    Drop-in replacement of `gammapy.modeling.models.GeneralizedGaussianSpatialModel`
    (same parameters, defaults, bounds, tag and results): ``evaluate``,
    ``evaluate_geom`` and ``integrate_geom`` run in `gpsfast.kernels.sersic`,
    in one pass over the pixels (the sub-pixels of ``integrate_geom`` are
    summed on the fly, with gammapy's oversampling factor and cutout).

    The class keeps gammapy's YAML tag and is not registered in gammapy's model
    registry: YAML written from it reads back in plain gammapy as gammapy's class,
    and gammapy's own models are switched to this class with `accelerate_models`
    or `from_gammapy` (see the module docstring for why).

    Parameters
    ----------
    lon_0, lat_0 : `~astropy.coordinates.Angle`
        Center position. Default is "0 deg", "0 deg".
    r_0 : `~astropy.coordinates.Angle`
        Length of the major semiaxis. Default is 1 deg.
    eta : float
        Shape parameter: ->0 disk, 0.5 Gaussian, 1 Laplace. Default is 0.5.
    e : float
        Eccentricity, ``0 <= e < 1``. Default is 0.
    phi : `~astropy.coordinates.Angle`
        Rotation angle of the major semiaxis, counter-clockwise from north.
        Default is 0 deg.
    frame : {"icrs", "galactic"}
        Center position coordinate frame.
    """

    lon_0 = copy.deepcopy(_GammapyGeneralizedGaussian.default_parameters["lon_0"])
    lat_0 = copy.deepcopy(_GammapyGeneralizedGaussian.default_parameters["lat_0"])
    r_0 = copy.deepcopy(_GammapyGeneralizedGaussian.default_parameters["r_0"])
    eta = copy.deepcopy(_GammapyGeneralizedGaussian.default_parameters["eta"])
    e = copy.deepcopy(_GammapyGeneralizedGaussian.default_parameters["e"])
    phi = copy.deepcopy(_GammapyGeneralizedGaussian.default_parameters["phi"])

    @classmethod
    def from_gammapy(cls, model):
        """Compiled model sharing the `~gammapy.modeling.Parameter` objects of ``model``.

        Parameters
        ----------
        model : `gammapy.modeling.models.GeneralizedGaussianSpatialModel`
            Model to accelerate.

        Returns
        -------
        model : `GeneralizedGaussianSpatialModel`
            New model whose parameters are the very objects of ``model``.
        """
        return cls.from_parameters(model.parameters, frame=model.frame)

    def to_gammapy(self):
        """Plain gammapy model sharing this model's `~gammapy.modeling.Parameter` objects."""
        return _GammapyGeneralizedGaussian.from_parameters(
            self.parameters, frame=self.frame
        )

    @staticmethod
    def evaluate(lon, lat, lon_0, lat_0, r_0, eta, e, phi):
        """Evaluate the model (surface brightness in sr-1) at ``lon``, ``lat``."""
        pars = (lon_0, lat_0, r_0, eta, e, phi)
        if any(np.ndim(par) != 0 for par in pars):
            return _GammapyGeneralizedGaussian.evaluate(lon, lat, *pars)
        shape = _shape_vector(
            u.Quantity(r_0, "deg").value,
            u.Quantity(eta, "").value,
            u.Quantity(e, "").value,
            u.Quantity(phi, "deg").value,
        )
        if shape is None:
            return _GammapyGeneralizedGaussian.evaluate(lon, lat, *pars)
        basis = _local_basis(
            u.Quantity(lon_0, "rad").value, u.Quantity(lat_0, "rad").value
        )
        lon_rad, lat_rad = np.broadcast_arrays(
            u.Quantity(lon, "rad").value, u.Quantity(lat, "rad").value
        )
        values = generalized_gaussian_points(
            np.ascontiguousarray(lon_rad, dtype=float).ravel(),
            np.ascontiguousarray(lat_rad, dtype=float).ravel(),
            basis,
            shape,
        )
        return u.Quantity(values.reshape(lon_rad.shape), _SR_INV, copy=False)

    def _kernel_inputs(self, geom):
        """(grid spec, shape vector, grid basis) or None where gammapy must run."""
        spec = _grid_spec(geom)
        if spec is None or self.frame not in _FRAMES:
            log.debug("geometry or frame %r not handled by the kernels: gammapy runs", self.frame)
            return None
        shape = _shape_vector(
            self.r_0.quantity.to_value("deg"),
            self.eta.value,
            self.e.value,
            self.phi.quantity.to_value("deg"),
        )
        if shape is None:
            return None
        lon, lat = self.position_lonlat
        if not (math.isfinite(lon) and math.isfinite(lat)):
            return None
        basis = (
            _local_basis(lon, lat)
            @ _frame_rotation(spec.frame, self.frame)
            @ spec.native_to_frame
        )
        return spec, shape, np.ascontiguousarray(basis)

    def evaluate_geom(self, geom):
        """Evaluate the model at the pixel centres of ``geom``.

        Parameters
        ----------
        geom : `~gammapy.maps.WcsGeom`
            Map geometry.

        Returns
        -------
        values : `~astropy.units.Quantity`
            Surface brightness in sr-1, shaped like gammapy's sparse coordinates
            of ``geom`` (one length-1 axis per non-spatial axis).
        """
        inputs = self._kernel_inputs(geom)
        if inputs is None:
            return super().evaluate_geom(geom)
        spec, shape, basis = inputs
        values = _run_grid(spec, basis, shape, (0, spec.shape[0], 0, spec.shape[1]), 1)
        sparse_shape = (1,) * (len(geom.data_shape) - 2) + spec.shape
        return u.Quantity(values.reshape(sparse_shape), _SR_INV, copy=False)

    def integrate_geom(self, geom, oversampling_factor=None):
        """Integrate the model over the pixels of ``geom``.

        Same rule as gammapy's `~gammapy.modeling.models.SpatialModel.integrate_geom`:
        the sub-pixel mean of the surface brightness, on a cutout of width
        ``2 * max(evaluation_radius, pixel size)`` around the centre with an
        oversampling factor of ``ceil(pixel size / evaluation_bin_size_min)``
        (at most 200), zero outside the cutout, times the pixel solid angle;
        pixel centres over the whole map when the factor is 1.

        Parameters
        ----------
        geom : `~gammapy.maps.WcsGeom` or `~gammapy.maps.RegionGeom`
            Geometry to integrate on (region geometries run in gammapy).
        oversampling_factor : int, optional
            Oversampling factor; default: estimated as gammapy does.

        Returns
        -------
        map : `~gammapy.maps.Map`
            Integral of the model in each pixel (dimensionless).
        """
        inputs = self._kernel_inputs(geom)
        if inputs is None:
            return super().integrate_geom(geom, oversampling_factor=oversampling_factor)
        spec, shape, basis = inputs
        ny, nx = spec.shape
        pix_scale = float(np.max(spec.pixel_scales))
        block = self._cutout_block(spec, pix_scale)
        if block is None:
            oversampling_factor = 1
        elif oversampling_factor is None:
            oversampling_factor = self._oversampling_factor(pix_scale)

        solid_angle = _solid_angle(geom, spec)
        if oversampling_factor > 1:
            y0, y1, x0, x1 = block
            data = np.zeros(geom.data_shape)
            data[..., y0:y1, x0:x1] = _run_grid(
                spec, basis, shape, block, oversampling_factor,
                np.ascontiguousarray(solid_angle[y0:y1, x0:x1]),
            )
        else:
            data = _run_grid(spec, basis, shape, (0, ny, 0, nx), 1, solid_angle)
            if len(geom.data_shape) > 2:
                data = np.broadcast_to(data, geom.data_shape).copy()
        return Map.from_geom(geom, data=data, unit="")

    def _oversampling_factor(self, pix_scale):
        res_scale = self.evaluation_bin_size_min.to_value("deg")
        if res_scale > 0:
            return int(min(math.ceil(pix_scale / res_scale), MAX_OVERSAMPLING))
        return MAX_OVERSAMPLING

    def _cutout_block(self, spec, pix_scale):
        """Pixel block (y0, y1, x0, x1) of gammapy's cutout, None where it fails."""
        width = 2 * max(self.evaluation_radius.to_value("deg"), pix_scale)
        width_npix = np.clip(width / spec.pixel_scales, 1, None)
        shape = tuple(int(np.round(n)) for n in width_npix[::-1])
        lon, lat = self.lon_0.quantity.to_value("deg"), self.lat_0.quantity.to_value("deg")
        if spec.frame != self.frame:
            lon, lat = _transform_position(lon, lat, self.frame, spec.frame)
        x, y = spec.wcs.wcs_world2pix(np.array([[lon, lat]]), 0)[0]
        try:
            slices, _ = overlap_slices(spec.shape, shape, (y, x), mode="trim")
        except (NoOverlapError, ValueError):
            return None
        return slices[0].start, slices[0].stop, slices[1].start, slices[1].stop


def _transform_position(lon, lat, frame_from, frame_to):
    """Transform a position in degrees between two frames with the cached rotation.

    The longitude is wrapped to [0, 360) with ``%`` rather than ``Angle.wrap_at``:
    this runs at every cutout update of a source in another frame than the map's,
    on plain floats.
    """
    lon, lat = math.radians(lon), math.radians(lat)
    vector = np.array(
        [math.cos(lat) * math.cos(lon), math.cos(lat) * math.sin(lon), math.sin(lat)]
    )
    x, y, z = _frame_rotation(frame_from, frame_to) @ vector
    return math.degrees(math.atan2(y, x)) % 360.0, math.degrees(math.asin(min(max(z, -1.0), 1.0)))


def _corner_pair(a, b):
    """(separation, PA numerator, PA denominator) from corner ``a`` towards ``b``.

    Corners are ``(sin lon, cos lon, sin lat, cos lat)`` arrays; the separation is
    astropy's Vincenty formula and ``atan2(num, den)`` its position angle, with
    ``sin`` and ``cos`` of the longitude difference from the sum formulas.
    """
    sl1, cl1, sb1, cb1 = a
    sl2, cl2, sb2, cb2 = b
    sdlon = sl2 * cl1 - cl2 * sl1
    cdlon = cl2 * cl1 + sl2 * sl1
    num = sdlon * cb2
    den = cb1 * sb2 - sb1 * cb2 * cdlon
    sep = np.arctan2(np.hypot(num, den), sb1 * sb2 + cb1 * cb2 * cdlon)
    return sep, num, den


def _sin_angle_between(pa_a, pa_b):
    """sin(pa_a - pa_b) from position angles given as (num, den) pairs."""
    (ya, xa), (yb, xb) = pa_a, pa_b
    return (ya * xb - xa * yb) / (np.hypot(ya, xa) * np.hypot(yb, xb))


def _solid_angle(geom, spec):
    """Pixel solid angles (sr) of a WcsGeom image, with gammapy's formula.

    gammapy caches them per geometry object, but computes them from SkyCoord
    objects (slow for the fresh cutout geometries of every MapEvaluator update):
    the same pixel-corner triangles are computed here on plain arrays, and
    gammapy's own cached values are used when they exist.
    """
    cached = _compat.cached_solid_angle(geom)
    if cached is not None:
        return cached.to_value("sr").reshape(spec.shape)
    if geom not in _SOLID_ANGLE_CACHE:
        ny, nx = spec.shape
        y, x = np.mgrid[-0.5 : ny + 0.5, -0.5 : nx + 0.5]
        lon, lat = np.radians(spec.wcs.wcs_pix2world(x, y, 0))
        trig = (np.sin(lon), np.cos(lon), np.sin(lat), np.cos(lat))
        ll = tuple(t[:-1, :-1] for t in trig)
        lr = tuple(t[1:, :-1] for t in trig)
        ul = tuple(t[:-1, 1:] for t in trig)
        ur = tuple(t[1:, 1:] for t in trig)
        low, *_ = _corner_pair(ll, lr)
        left, *pa_ll_ul = _corner_pair(ll, ul)
        up, *pa_ul_ur = _corner_pair(ul, ur)
        right, *pa_lr_ur = _corner_pair(lr, ur)
        _, *pa_lr_ll = _corner_pair(lr, ll)
        area = 0.5 * low * right * _sin_angle_between(pa_lr_ur, pa_lr_ll)
        area += 0.5 * up * left * _sin_angle_between(pa_ul_ur, pa_ll_ul)
        _SOLID_ANGLE_CACHE[geom] = np.abs(area)
    return _SOLID_ANGLE_CACHE[geom]


def _run_grid(spec, basis, shape, block, factor, weights=_EMPTY_WEIGHTS):
    y0, y1, x0, x1 = block
    return generalized_gaussian_grid(
        x0, y0, x1 - x0, y1 - y0, int(factor), spec.proj, spec.pix2img,
        spec.crpix, basis, shape, weights,
    )


def _shape_vector(r_0_deg, eta, e, phi_deg):
    """Kernel shape vector, None for values gammapy turns into NaN or infinities."""
    values = (r_0_deg, eta, e, phi_deg)
    if not all(math.isfinite(v) for v in values):
        return None
    if r_0_deg <= 0 or eta <= 0 or not 0 <= e < 1:
        return None
    r_0 = math.radians(r_0_deg)
    minor = r_0 * math.sqrt(1 - e**2)
    phi = math.radians(phi_deg)
    norm = 1.0 / (2 * math.pi * minor * r_0 * eta * gamma(2 * eta))
    return np.array(
        [math.cos(phi), math.sin(phi), 1 / minor**2, 1 / r_0**2, 0.5 / eta, norm]
    )


def _switch_spatial_models(models, convert):
    """Replace the spatial model of each sky model by ``convert(spatial)`` where that is not None; how many."""
    n_switched = 0
    for model in models:
        if isinstance(model, SkyModel) and model.spatial_model is not None:
            new = convert(model.spatial_model)
            if new is not None:
                model.spatial_model = new
                n_switched += 1
    return n_switched


def accelerate_models(models):
    """Switch gammapy generalized Gaussian spatial models to the compiled class, in place.

    The new spatial models share the `~gammapy.modeling.Parameter` objects of the
    old ones, so parameter links, frozen states and values are kept.

    Parameters
    ----------
    models : `~gammapy.modeling.models.Models` or list of `~gammapy.modeling.models.SkyModel`
        Models to update.

    Returns
    -------
    n_switched : int
        Number of spatial models replaced.
    """
    return _switch_spatial_models(models, lambda spatial: twins.fast_twin(spatial)
                                  if type(spatial) is _GammapyGeneralizedGaussian else None)


def restore_gammapy_models(models):
    """Switch compiled spatial models back to gammapy's class, in place.

    Parameters
    ----------
    models : `~gammapy.modeling.models.Models` or list of `~gammapy.modeling.models.SkyModel`
        Models to update.

    Returns
    -------
    n_switched : int
        Number of spatial models replaced.
    """
    return _switch_spatial_models(models, lambda spatial: spatial.to_gammapy()
                                  if isinstance(spatial, GeneralizedGaussianSpatialModel) else None)


twins.register(_GammapyGeneralizedGaussian, GeneralizedGaussianSpatialModel,
               GeneralizedGaussianSpatialModel.from_gammapy)
