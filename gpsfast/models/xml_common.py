"""Old path of the XML reader's shared pieces, now in `gpsfast.models.xml` (common, params, registry)."""
from .xml import SUPPORTED_XML_TYPES
from .xml.common import DIFF_FLUX_UNIT, MEV_TO_TEV, Context, SourceError, align, as_unit, location, log
from .xml.params import XmlPar, parse_par, parse_pars, pick
from .xml.registry import BACKGROUND_TYPES, NOT_REPRESENTABLE, SKIPPED_SOURCE_TYPES, SKY_SOURCE_TYPES, unknown

SPECTRAL_TYPES = SUPPORTED_XML_TYPES["spectrum"]
SPATIAL_TYPES = SUPPORTED_XML_TYPES["spatialModel"]
TEMPORAL_TYPES = SUPPORTED_XML_TYPES["temporal"]

__all__ = [
    "BACKGROUND_TYPES", "DIFF_FLUX_UNIT", "MEV_TO_TEV", "NOT_REPRESENTABLE", "SKIPPED_SOURCE_TYPES",
    "SKY_SOURCE_TYPES", "SPATIAL_TYPES", "SPECTRAL_TYPES", "SUPPORTED_XML_TYPES", "TEMPORAL_TYPES", "Context",
    "SourceError", "XmlPar", "align", "as_unit", "location", "log", "parse_par", "parse_pars", "pick", "unknown",
]
