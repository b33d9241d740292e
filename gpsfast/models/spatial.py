"""Spatial models that reproduce GammaLib's radial and elliptical sky models exactly.

gammapy's Gaussian, disk and shell models use other normalisations (spherical
Gaussian, smoothed disk edge, flat-sky shell), so the GammaLib formulas are
given here as gammapy `~gammapy.modeling.models.SpatialModel` classes,
registered in gammapy's spatial registry on import (YAML round-trips).

Angles are great-circle separations in radians; surface brightness is in sr-1.
Elliptical models use the gammapy convention for ``phi`` (angle of the major
axis, counter-clockwise from the north of the model frame); `pa_to_phi` and
`phi_to_pa` convert from / to GammaLib's ``PA`` (east of celestial north).
"""
import functools

import numpy as np
import scipy.special
import astropy.units as u
from astropy.coordinates import Angle, CartesianRepresentation, SkyCoord, angular_separation, position_angle
from gammapy.modeling import Parameter, Parameters
from gammapy.modeling.models import SPATIAL_MODEL_REGISTRY, PointSpatialModel, SpatialModel
from regions import CircleAnnulusSkyRegion, CircleSkyRegion, EllipseSkyRegion

__all__ = [
    "GammaLibGaussianSpatialModel",
    "GammaLibDiskSpatialModel",
    "GammaLibShellSpatialModel",
    "GammaLibEllipticalDiskSpatialModel",
    "GammaLibEllipticalGaussianSpatialModel",
    "GammaLibEllipticalGeneralGaussianSpatialModel",
    "GammaLibRingSpatialModel",
    "GammaLibCompositeSpatialModel",
    "north_rotation",
    "pa_to_phi",
    "phi_to_pa",
]

#: GammaLib truncates its elliptical Gaussian at this many effective radii.
ELLIPTICAL_GAUSS_TRUNCATION = 3.0
#: GammaLib truncates its elliptical generalised Gaussian at this many semi-major axes
#: (``c_theta_max`` in GModelSpatialEllipticalGeneralGauss.cpp).
ELLIPTICAL_GENERAL_GAUSS_TRUNCATION = 5.0


@functools.lru_cache(maxsize=None)
def _to_icrs_matrix(frame):
    """Rotation matrix from ``frame`` to ICRS unit vectors (astropy's transformation of the axes)."""
    axes = SkyCoord(CartesianRepresentation([1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]), frame=frame)
    icrs = axes.icrs.cartesian
    # column j: the ICRS vector of the frame's axis j
    return np.stack([icrs.x.value, icrs.y.value, icrs.z.value])


def _unit_vector(lon, lat):
    return np.array([np.cos(lat) * np.cos(lon), np.cos(lat) * np.sin(lon), np.sin(lat)])


def north_rotation(lon, lat, frame):
    """Position angle of the model frame's north, measured east of celestial north.

    Parameters
    ----------
    lon, lat : `~astropy.units.Quantity`
        Centre in ``frame``.
    frame : str
        Model frame ("icrs", "galactic", ...).

    Returns
    -------
    angle : `~astropy.coordinates.Angle`
        Zero for a celestial frame.
    """
    if frame in ("icrs", "fk5"):
        return Angle(0, "deg")
    if frame == "galactic":
        # the frame is a fixed rotation of ICRS: rotate the centre and the pole, then the usual position angle
        matrix = _to_icrs_matrix(frame)
        centre = matrix @ _unit_vector(u.Quantity(lon).to_value("rad"), u.Quantity(lat).to_value("rad"))
        pole = matrix @ np.array([0.0, 0.0, 1.0])
        ra, dec = np.arctan2(centre[1], centre[0]), np.arcsin(np.clip(centre[2], -1, 1))
        ra_p, dec_p = np.arctan2(pole[1], pole[0]), np.arcsin(np.clip(pole[2], -1, 1))
        d_ra = ra_p - ra
        angle = np.arctan2(np.sin(d_ra) * np.cos(dec_p),
                           np.cos(dec) * np.sin(dec_p) - np.sin(dec) * np.cos(dec_p) * np.cos(d_ra))
        return Angle(angle, "rad").to("deg").wrap_at(180 * u.deg)
    centre = SkyCoord(lon, lat, frame=frame).icrs
    pole = SkyCoord(0 * u.deg, 90 * u.deg, frame=frame).icrs
    return Angle(centre.position_angle(pole)).wrap_at(180 * u.deg)


def pa_to_phi(pa, lon, lat, frame):
    """Convert GammaLib's ``PA`` (east of celestial north) to gammapy's ``phi`` in ``frame``."""
    return u.Quantity(pa, "deg") - north_rotation(lon, lat, frame).to("deg")


def phi_to_pa(phi, lon, lat, frame):
    """Convert gammapy's ``phi`` in ``frame`` to GammaLib's ``PA`` (east of celestial north)."""
    return u.Quantity(phi, "deg") + north_rotation(lon, lat, frame).to("deg")


def _theta(lon, lat, lon_0, lat_0):
    return u.Quantity(angular_separation(lon, lat, lon_0, lat_0)).to_value("rad")


def _r_eff(lon, lat, lon_0, lat_0, r_0, e, phi):
    """Effective ellipse radius (rad) towards each position: a b / sqrt((b cos)^2 + (a sin)^2)."""
    a = u.Quantity(r_0).to_value("rad")
    b = a * np.sqrt(1.0 - u.Quantity(e).to_value("") ** 2)
    d_phi = u.Quantity(position_angle(lon_0, lat_0, lon, lat)).to_value("rad") - u.Quantity(phi).to_value(
        "rad"
    )
    return a, b, a * b / np.sqrt((b * np.cos(d_phi)) ** 2 + (a * np.sin(d_phi)) ** 2)


class GammaLibGaussianSpatialModel(SpatialModel):
    r"""GammaLib ``RadialGaussian``: :math:`\frac{1}{2\pi\sigma^2} \exp(-\theta^2 / 2\sigma^2)`.

    Flat-sky normalisation, not truncated, :math:`\theta` the great-circle distance.
    """

    tag = ["GammaLibGaussianSpatialModel", "gl-gauss"]
    lon_0 = Parameter("lon_0", "0 deg")
    lat_0 = Parameter("lat_0", "0 deg", min=-90, max=90)
    sigma = Parameter("sigma", "0.1 deg", min=0)

    @property
    def evaluation_radius(self):
        """Five sigma."""
        return 5 * self.sigma.quantity

    @property
    def evaluation_bin_size_min(self):
        return self.sigma.quantity / 3.0

    @staticmethod
    def evaluate(lon, lat, lon_0, lat_0, sigma):
        theta = _theta(lon, lat, lon_0, lat_0)
        s = sigma.to_value("rad")
        return np.exp(-0.5 * theta**2 / s**2) / (2 * np.pi * s**2) * u.Unit("sr-1")

    def to_region(self, size_factor=1.0, **kwargs):
        return CircleSkyRegion(self.position, size_factor * self.sigma.quantity, **kwargs)


class GammaLibDiskSpatialModel(SpatialModel):
    r"""GammaLib ``RadialDisk``: :math:`1 / (2\pi (1 - \cos r))` for :math:`\theta \le r`, hard edge."""

    tag = ["GammaLibDiskSpatialModel", "gl-disk"]
    lon_0 = Parameter("lon_0", "0 deg")
    lat_0 = Parameter("lat_0", "0 deg", min=-90, max=90)
    r_0 = Parameter("r_0", "0.1 deg", min=0)

    @property
    def evaluation_radius(self):
        return self.r_0.quantity

    @property
    def evaluation_bin_size_min(self):
        return self.r_0.quantity / 10.0

    @staticmethod
    def evaluate(lon, lat, lon_0, lat_0, r_0):
        theta = _theta(lon, lat, lon_0, lat_0)
        r = r_0.to_value("rad")
        norm = 1.0 / (2 * np.pi * (1.0 - np.cos(r)))
        return np.where(theta <= r, norm, 0.0) * u.Unit("sr-1")

    def to_region(self, size_factor=1.0, **kwargs):
        return CircleSkyRegion(self.position, size_factor * self.r_0.quantity, **kwargs)


class GammaLibShellSpatialModel(SpatialModel):
    r"""GammaLib ``RadialShell``: projected uniform spherical shell on the sphere.

    :math:`\sqrt{\sin^2\theta_{out} - \sin^2\theta} - \sqrt{\sin^2\theta_{in} - \sin^2\theta}`
    (second term only inside :math:`\theta_{in}`), zero beyond :math:`\theta_{out}`,
    with GammaLib's exact spherical normalisation. ``radius`` is the inner radius.
    """

    tag = ["GammaLibShellSpatialModel", "gl-shell"]
    lon_0 = Parameter("lon_0", "0 deg")
    lat_0 = Parameter("lat_0", "0 deg", min=-90, max=90)
    radius = Parameter("radius", "0.5 deg", min=0)
    width = Parameter("width", "0.1 deg", min=0)

    @property
    def evaluation_radius(self):
        return self.radius.quantity + self.width.quantity

    @property
    def evaluation_bin_size_min(self):
        return self.width.quantity

    @staticmethod
    def _norm(theta_in, theta_out):
        def f1(x):
            return np.sqrt(1.0 - np.cos(2.0 * x))

        def f2(x):
            return (1.0 + np.cos(2.0 * x)) / 4.0 * np.log(np.sqrt(2.0) * np.cos(x) / (np.sqrt(2.0) + f1(x)))

        denom = 2 * np.pi * ((f1(theta_out) - f1(theta_in)) / (2.0 * np.sqrt(2.0)) + f2(theta_out) - f2(theta_in))
        return 1.0 / denom if denom > 0 else 0.0

    @staticmethod
    def evaluate(lon, lat, lon_0, lat_0, radius, width):
        theta = _theta(lon, lat, lon_0, lat_0)
        t_in = radius.to_value("rad")
        t_out = t_in + width.to_value("rad")
        x = np.sin(theta) ** 2
        x_in, x_out = np.sin(t_in) ** 2, np.sin(t_out) ** 2
        with np.errstate(invalid="ignore"):
            outer = np.where(x < x_out, np.sqrt(np.clip(x_out - x, 0, None)), 0.0)
            inner = np.where(x < x_in, np.sqrt(np.clip(x_in - x, 0, None)), 0.0)
        value = np.where(x < x_out, outer - inner, 0.0)
        return GammaLibShellSpatialModel._norm(t_in, t_out) * value * u.Unit("sr-1")

    def to_region(self, size_factor=1.0, **kwargs):
        return CircleAnnulusSkyRegion(
            self.position,
            size_factor * self.radius.quantity,
            size_factor * (self.radius.quantity + self.width.quantity),
            **kwargs,
        )


def _elliptical_parameters():
    return (
        Parameter("lon_0", "0 deg"),
        Parameter("lat_0", "0 deg", min=-90, max=90),
        Parameter("r_0", "0.1 deg", min=0),
        Parameter("e", 0.0, min=0, max=1),
        Parameter("phi", "0 deg"),
    )


class GammaLibRingSpatialModel(SpatialModel):
    r"""GammaLib ``RadialRing``: uniform between ``radius`` and ``radius + width``.

    Value :math:`1 / (2\pi(\cos r_i - \cos r_o))` for :math:`r_i \le \theta \le r_o`,
    with the inner radius :math:`r_i` = ``radius`` and the outer radius
    :math:`r_o` = ``radius + width`` (``GModelSpatialRadialRing::theta_min`` /
    ``theta_max``).
    """

    tag = ["GammaLibRingSpatialModel", "gl-ring"]
    lon_0 = Parameter("lon_0", "0 deg")
    lat_0 = Parameter("lat_0", "0 deg", min=-90, max=90)
    radius = Parameter("radius", "0.5 deg", min=0)
    width = Parameter("width", "0.1 deg", min=0)

    @property
    def evaluation_radius(self):
        """Outer radius."""
        return self.radius.quantity + self.width.quantity

    @property
    def evaluation_bin_size_min(self):
        return self.width.quantity / 3.0

    @staticmethod
    def evaluate(lon, lat, lon_0, lat_0, radius, width):
        theta = _theta(lon, lat, lon_0, lat_0)
        r_in = radius.to_value("rad")
        r_out = r_in + width.to_value("rad")
        denom = 2 * np.pi * (np.cos(r_in) - np.cos(r_out))
        norm = 1.0 / denom if denom > 0 else 0.0
        return np.where((theta <= r_out) & (theta >= r_in), norm, 0.0) * u.Unit("sr-1")

    def to_region(self, size_factor=1.0, **kwargs):
        return CircleAnnulusSkyRegion(
            self.position,
            size_factor * self.radius.quantity,
            size_factor * (self.radius.quantity + self.width.quantity),
            **kwargs,
        )


class _GammaLibElliptical(SpatialModel):
    """Region and minor axis of the GammaLib elliptical models."""

    @property
    def minor_axis(self):
        """Semi-minor axis."""
        return self.r_0.quantity * np.sqrt(1 - self.e.value**2)

    def to_region(self, size_factor=1.0, **kwargs):
        return EllipseSkyRegion(
            center=self.position,
            height=2 * size_factor * self.r_0.quantity,
            width=2 * size_factor * self.minor_axis,
            angle=self.phi.quantity,
            **kwargs,
        )


class GammaLibEllipticalDiskSpatialModel(_GammaLibElliptical):
    r"""GammaLib ``EllipticalDisk``: uniform inside the ellipse, hard edge.

    Value :math:`1 / (2\pi\sqrt{(1-\cos a)(1-\cos b)})` for :math:`\theta \le r_{eff}`,
    with :math:`r_{eff} = ab/\sqrt{(b\cos\Delta\phi)^2 + (a\sin\Delta\phi)^2}`,
    :math:`a` = ``r_0`` and :math:`b = a\sqrt{1-e^2}`.
    """

    tag = ["GammaLibEllipticalDiskSpatialModel", "gl-edisk"]
    lon_0, lat_0, r_0, e, phi = _elliptical_parameters()

    @property
    def evaluation_radius(self):
        return self.r_0.quantity

    @property
    def evaluation_bin_size_min(self):
        return self.minor_axis / 10.0

    @staticmethod
    def evaluate(lon, lat, lon_0, lat_0, r_0, e, phi):
        theta = _theta(lon, lat, lon_0, lat_0)
        a, b, r_eff = _r_eff(lon, lat, lon_0, lat_0, r_0, e, phi)
        denom = 2 * np.pi * np.sqrt((1.0 - np.cos(a)) * (1.0 - np.cos(b)))
        norm = 1.0 / denom if denom > 0 else 0.0
        inside = (theta <= max(a, b)) & (theta <= r_eff)
        return np.where(inside, norm, 0.0) * u.Unit("sr-1")


class GammaLibEllipticalGaussianSpatialModel(_GammaLibElliptical):
    r"""GammaLib ``EllipticalGaussian``, truncated at 3 effective radii.

    :math:`\exp(-\theta^2 / 2 r_{eff}^2) / (2\pi a b (1 - e^{-4.5}))` for
    :math:`\theta \le 3 r_{eff}`, zero beyond; :math:`a` = ``r_0`` is the
    semi-major axis (the Gaussian sigma along it).
    """

    tag = ["GammaLibEllipticalGaussianSpatialModel", "gl-egauss"]
    lon_0, lat_0, r_0, e, phi = _elliptical_parameters()

    @property
    def evaluation_radius(self):
        return ELLIPTICAL_GAUSS_TRUNCATION * self.r_0.quantity

    @property
    def evaluation_bin_size_min(self):
        return self.minor_axis / 3.0

    @staticmethod
    def evaluate(lon, lat, lon_0, lat_0, r_0, e, phi):
        theta = _theta(lon, lat, lon_0, lat_0)
        a, b, r_eff = _r_eff(lon, lat, lon_0, lat_0, r_0, e, phi)
        max_exponent = 0.5 * ELLIPTICAL_GAUSS_TRUNCATION**2
        denom = 2 * np.pi * a * b * (1.0 - np.exp(-max_exponent))
        norm = 1.0 / denom if denom > 0 else 0.0
        exponent = 0.5 * (theta / r_eff) ** 2
        inside = (theta <= ELLIPTICAL_GAUSS_TRUNCATION * max(a, b)) & (exponent <= max_exponent)
        return np.where(inside, norm * np.exp(-exponent), 0.0) * u.Unit("sr-1")


class GammaLibEllipticalGeneralGaussianSpatialModel(_GammaLibElliptical):
    r"""GammaLib ``EllipticalGeneralGaussian``, truncated at 5 semi-major axes.

    :math:`\exp(-(\theta / r_{eff})^{1/\eta}) / (2\pi a b \eta \Gamma(2\eta))` for
    :math:`\theta \le 5a`, zero beyond (``GModelSpatialEllipticalGeneralGauss::eval``
    and ``theta_max``). gammapy's `GeneralizedGaussianSpatialModel` has the same
    formula without the truncation.
    """

    tag = ["GammaLibEllipticalGeneralGaussianSpatialModel", "gl-egeneralgauss"]
    lon_0, lat_0, r_0, e, phi = _elliptical_parameters()
    eta = Parameter("eta", 0.5, min=0)

    @property
    def evaluation_radius(self):
        return ELLIPTICAL_GENERAL_GAUSS_TRUNCATION * self.r_0.quantity

    @property
    def evaluation_bin_size_min(self):
        return self.minor_axis / (3 + 8 * self.eta.value)

    @staticmethod
    def evaluate(lon, lat, lon_0, lat_0, r_0, e, phi, eta):
        theta = _theta(lon, lat, lon_0, lat_0)
        a, b, r_eff = _r_eff(lon, lat, lon_0, lat_0, r_0, e, phi)
        eta = u.Quantity(eta).to_value("")
        denom = 2 * np.pi * a * b * eta * scipy.special.gamma(2 * eta)
        norm = 1.0 / denom if denom > 0 else 0.0
        inside = theta <= ELLIPTICAL_GENERAL_GAUSS_TRUNCATION * max(a, b)
        return np.where(inside, norm * np.exp(-((theta / r_eff) ** (1.0 / eta))), 0.0) * u.Unit("sr-1")


class GammaLibCompositeSpatialModel(SpatialModel):
    r"""GammaLib spatial ``Composite``: scale-weighted mean of spatial components.

    :math:`\sum_i s_i M_i / \sum_i s_i`. Parameters: the scales ``scale_<i>``
    first, then each component's parameters in order. The model's position is
    the first component's; components may use different frames.

    Parameters
    ----------
    models : list of `~gammapy.modeling.models.SpatialModel`, optional
        Components; one `~gammapy.modeling.models.PointSpatialModel` at its
        default position if not given (every gammapy model class can be built
        without arguments, and gammapy's own tests rely on it).
    scales : list of float or `~gammapy.modeling.Parameter`, optional
        Component weights (default 1 each).
    names : list of str, optional
        Component names (GammaLib ``component`` attribute).
    """

    tag = ["GammaLibCompositeSpatialModel", "gl-composite"]

    def __init__(self, models=None, scales=None, names=None):
        if models is None:
            models = [PointSpatialModel()]
        if not models:
            raise ValueError("GammaLibCompositeSpatialModel needs at least one component")
        self.models = list(models)
        self.names = list(names) if names is not None else [str(i + 1) for i in range(len(self.models))]
        scales = [1.0] * len(self.models) if scales is None else scales
        self._scales = [
            s if isinstance(s, Parameter) else Parameter(f"scale_{i}", s, min=1e-10, max=1e13, frozen=True)
            for i, s in enumerate(scales)
        ]
        self.default_parameters = Parameters(self._scales)
        super().__init__(frame=self.models[0].frame)

    @property
    def scales(self):
        """The component weights (``scale_<i>`` parameters), in component order."""
        return list(self._scales)

    @property
    def parameters(self):
        pars = list(self._scales)
        for model in self.models:
            pars.extend(model.parameters)
        return Parameters(pars)

    @property
    def position(self):
        return self.models[0].position

    @property
    def evaluation_radius(self):
        radii = []
        for model in self.models:
            if model.evaluation_radius is None:
                return None
            offset = self.position.separation(model.position)
            radii.append(offset + model.evaluation_radius)
        return max(radii)

    @property
    def evaluation_bin_size_min(self):
        sizes = [m.evaluation_bin_size_min for m in self.models if m.evaluation_bin_size_min is not None]
        return min(sizes) if sizes else None

    def _weights(self):
        scales = np.array([s.value for s in self._scales])
        return scales / scales.sum()

    def __call__(self, lon, lat, energy=None):
        coords = SkyCoord(lon, lat, frame=self.frame)
        total = np.zeros(coords.shape) * u.Unit("sr-1")
        for weight, model in zip(self._weights(), self.models):
            if isinstance(model, PointSpatialModel):
                continue  # a delta function: zero surface brightness off its position (see integrate_geom)
            c = coords.transform_to(model.frame)
            total = total + weight * model(c.data.lon, c.data.lat).to("sr-1")
        return total

    def evaluate(self, lon, lat, *args):
        return self(lon, lat)

    def integrate_geom(self, geom, oversampling_factor=None):
        result = None
        for weight, model in zip(self._weights(), self.models):
            part = model.integrate_geom(geom, oversampling_factor=oversampling_factor) * weight
            result = part if result is None else result + part
        return result

    def to_dict(self, full_output=False):
        return {
            "spatial": {
                "type": self.tag[0],
                "frame": self.frame,
                "parameters": [p.to_dict() for p in self._scales],
                "names": self.names,
                "components": [m.to_dict(full_output)["spatial"] for m in self.models],
            }
        }

    @classmethod
    def from_dict(cls, data, **kwargs):
        data = data["spatial"]
        models = [SPATIAL_MODEL_REGISTRY.get_cls(c["type"]).from_dict({"spatial": c}) for c in data["components"]]
        scales = list(Parameters.from_dict(data["parameters"]))
        return cls(models, scales=scales, names=data.get("names"))

    def to_region(self, size_factor=1.0, **kwargs):
        return self.models[0].to_region(size_factor=size_factor, **kwargs)


for _cls in (
    GammaLibCompositeSpatialModel,
    GammaLibRingSpatialModel,
    GammaLibEllipticalGeneralGaussianSpatialModel,
    GammaLibGaussianSpatialModel,
    GammaLibDiskSpatialModel,
    GammaLibShellSpatialModel,
    GammaLibEllipticalDiskSpatialModel,
    GammaLibEllipticalGaussianSpatialModel,
):
    if _cls not in SPATIAL_MODEL_REGISTRY:
        SPATIAL_MODEL_REGISTRY.append(_cls)
