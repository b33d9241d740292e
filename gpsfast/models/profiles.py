r"""GammaLib's tabulated radial profile ``GaussianProfile`` (``GModelSpatialRadialProfileGauss``).

GammaLib's radial *profile* models (``GModelSpatialRadialProfile::cache_index``
and ``eval``) do not evaluate their formula directly: the profile
:math:`f(\theta)` is tabulated on 100 nodes :math:`\theta_j = j\,\Delta`,
:math:`\Delta = \theta_{max} / 100`, normalised with the Riemann sum
:math:`2\pi \sum_j f(\theta_j) \sin\theta_j \Delta`, and interpolated linearly
between the nodes (``GNodeArray``: extrapolated along the last segment beyond
:math:`\theta_{99}`), negative values set to zero. For ``GaussianProfile``,
:math:`f(\theta) = \exp(-\theta^2 / 2\sigma^2) / (2\pi\sigma^2)` and
:math:`\theta_{max} = 5\sigma`. `GammaLibGaussianProfileSpatialModel` does the
same, so it differs from ``RadialGaussian`` at the 1e-4 level as GammaLib's does.
"""
import numpy as np
import astropy.units as u
from gammapy.modeling import Parameter
from gammapy.modeling.models import SPATIAL_MODEL_REGISTRY, SpatialModel
from regions import CircleSkyRegion

from .spatial import _theta

__all__ = ["GammaLibGaussianProfileSpatialModel", "N_PROFILE_NODES"]

#: Nodes of GammaLib's radial-profile table (``m_num_nodes``).
N_PROFILE_NODES = 100


def _profile_table(sigma_rad):
    """Node spacing and normalised node values of the Gaussian profile, as GammaLib tabulates them."""
    step = 5.0 * sigma_rad / N_PROFILE_NODES
    nodes = step * np.arange(N_PROFILE_NODES)
    values = np.exp(-0.5 * nodes**2 / sigma_rad**2) / (2 * np.pi * sigma_rad**2)
    norm = 2 * np.pi * np.sum(values * np.sin(nodes) * step)
    return step, values / norm if norm > 0 else values


class GammaLibGaussianProfileSpatialModel(SpatialModel):
    """GammaLib ``GaussianProfile``: the Gaussian tabulated, normalised and interpolated as GammaLib does.

    See `gpsfast.models.profiles`.
    """

    tag = ["GammaLibGaussianProfileSpatialModel", "gl-gauss-profile"]
    lon_0 = Parameter("lon_0", "0 deg")
    lat_0 = Parameter("lat_0", "0 deg", min=-90, max=90)
    sigma = Parameter("sigma", "0.1 deg", min=0)

    @property
    def evaluation_radius(self):
        """Five sigma (GammaLib's ``theta_max``)."""
        return 5 * self.sigma.quantity

    @property
    def evaluation_bin_size_min(self):
        return self.sigma.quantity / 3.0

    @staticmethod
    def evaluate(lon, lat, lon_0, lat_0, sigma):
        theta = _theta(lon, lat, lon_0, lat_0)
        sigma_rad = u.Quantity(sigma).to_value("rad")
        if not sigma_rad > 0:
            return np.zeros(np.shape(theta)) * u.Unit("sr-1")
        step, values = _profile_table(sigma_rad)
        left = np.clip(np.floor(theta / step).astype(np.int64), 0, N_PROFILE_NODES - 2)
        w_right = theta / step - left
        value = (1.0 - w_right) * values[left] + w_right * values[left + 1]
        return np.maximum(value, 0.0) * u.Unit("sr-1")

    def to_region(self, size_factor=1.0, **kwargs):
        return CircleSkyRegion(self.position, size_factor * self.sigma.quantity, **kwargs)


if GammaLibGaussianProfileSpatialModel not in SPATIAL_MODEL_REGISTRY:
    SPATIAL_MODEL_REGISTRY.append(GammaLibGaussianProfileSpatialModel)
