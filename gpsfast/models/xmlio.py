"""Old path of the XML reader, `gpsfast.models.xml.read`: this name is that very module.

``import gpsfast.models.xmlio`` gives the module object `gpsfast.models.xml.read`
itself (not a copy of its names), so that code setting its attributes, such as
``_BYTES_PER_SOURCE`` or ``build_models``, acts on the reader.
"""
import sys

from .xml import read

sys.modules[__name__] = read
