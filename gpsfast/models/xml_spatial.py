"""Old path of `gpsfast.models.xml.spatial` and `gpsfast.models.xml.temporal`."""
from .xml.spatial import DM_HALO_PARAMETERS, DM_PROFILES, read_spatial
from .xml.temporal import read_temporal

__all__ = ["read_spatial", "read_temporal", "DM_PROFILES", "DM_HALO_PARAMETERS"]
