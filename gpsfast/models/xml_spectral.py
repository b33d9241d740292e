"""Old path of `gpsfast.models.xml.spectral`: `read_spectral`."""
from .xml.spectral import read_spectral

__all__ = ["read_spectral"]
