"""gpsfast: fast, complete catalogue production for gamma-ray Galactic Plane Surveys.

gpsfast sits on top of gammapy: its functions take and return gammapy and astropy
objects, and run the heavy loops in compiled kernels (``gpsfast.kernels``).
"""
import logging

from ._version import __version__
from .accelerate import accelerate, accelerated, deaccelerate, is_accelerated

logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = ["__version__", "accelerate", "accelerated", "deaccelerate", "is_accelerated"]
