"""Old path of `gpsfast.models.xml.write`: `write_xml`."""
from .xml.write import write_xml

__all__ = ["write_xml"]
