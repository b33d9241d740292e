"""Clustering of spectral index maps, under its historical import path.

The code is in `gpsfast.spectra.clustering`; the names are re-exported here
unchanged so that ``from gpsfast.clustering import ...`` keeps working.
"""
from gpsfast.spectra.clustering import DEFAULT_SCALES, cluster_index_map, cluster_regions

__all__ = ["DEFAULT_SCALES", "cluster_index_map", "cluster_regions"]
