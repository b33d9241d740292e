"""Spectra of many regions, per-pixel index maps and their clustering.

- `extract_spectra`, `extract_spectra_table` (`gpsfast.spectra.extract`): the
  spectra gammapy's ``MapDataset.to_spectrum_dataset`` extracts in circular
  regions, for many regions at once, with pixel membership bit for bit the one of
  gammapy. The job is split as the data flow: the regions (`gpsfast.spectra.seeds`),
  their pixel geometry as astropy and regions compute it (`gpsfast.spectra.pixels`),
  the sums of the dataset's maps (`gpsfast.spectra.reduce`) and the gammapy
  objects built from them (`gpsfast.spectra.build`);
- `IndexMapEstimator` (`gpsfast.spectra.index_map`): a forward-folded power law
  fitted at every pixel;
- `cluster_index_map`, `cluster_regions` (`gpsfast.spectra.clustering`): index
  maps grouped into contiguous regions of one spectrum.
"""
from gpsfast.spectra.clustering import DEFAULT_SCALES, cluster_index_map, cluster_regions
from gpsfast.spectra.extract import extract_spectra, extract_spectra_table
from gpsfast.spectra.index_map import IndexMapEstimator

__all__ = [
    "DEFAULT_SCALES",
    "IndexMapEstimator",
    "cluster_index_map",
    "cluster_regions",
    "extract_spectra",
    "extract_spectra_table",
]
