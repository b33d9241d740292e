"""Shared pieces of the XML reader and writer: units, error locations, the reading context."""
import functools
import logging
from pathlib import Path

import astropy.units as u

from ...errors import InputError
from ..xmlfiles import FileResolver

__all__ = ["DIFF_FLUX_UNIT", "MEV_TO_TEV", "Context", "SourceError", "align", "as_unit", "location", "log"]

log = logging.getLogger("gpsfast.models.xml")

MEV_TO_TEV = 1e-6
DIFF_FLUX_UNIT = "cm-2 s-1 TeV-1"


def location(path, line=None, source=None):
    """``file:line: source 'name'`` as the messages of the XML reader start."""
    text = f"{path}:{line}:" if line else f"{path}:"
    if source is not None:
        text += f" source {source!r}"
    return text


class SourceError(InputError):
    """An error in one source of a model file: file, line, source name and the reason, on one line."""

    def __init__(self, path, line, source, reason):
        self.path, self.line, self.source, self.reason = str(path), line, source, reason
        super().__init__(f"{location(path, line, source)} {reason}")


@functools.lru_cache(maxsize=None)
def as_unit(text):
    """`astropy.units.Unit` of a unit string, parsed once (parsing costs ~0.1 ms a call)."""
    return u.Unit(text)


class Context:
    """Where the reader is in the file (for messages), the referenced-file resolver and the warnings."""

    def __init__(self, path, resolver=None):
        self.path = Path(path)
        self.resolver = resolver if resolver is not None else FileResolver(path)
        self.source = None
        self.line = None
        self.warnings = []

    def _line(self, el):
        return getattr(el, "sourceline", None) or self.line

    def error(self, message, el=None):
        """A `SourceError` at element ``el`` (default: the current source)."""
        return SourceError(self.path, self._line(el), self.source, message)

    def warn(self, message, el=None):
        """Record and log a warning at element ``el``."""
        text = f"{location(self.path, self._line(el), self.source)} {message}"
        self.warnings.append(text)
        log.warning(text)

    def resolve(self, element, gz=False):
        """Path of the element's ``file`` attribute (see `~gpsfast.models.xmlfiles.FileResolver`)."""
        try:
            return self.resolver.resolve(element.get("file"), gz=gz)
        except InputError as exc:
            raise self.error(f"{element.tag} of type {element.get('type')!r}: {exc}", element) from None


def align(model):
    """Give each parameter its class default's interp / scale settings (gammapy's YAML writer needs them)."""
    for attr in ("model1", "model2", "model"):
        sub = getattr(model, attr, None)
        if sub is not None and hasattr(sub, "default_parameters"):
            align(sub)
    for par, default in zip(model.parameters, model.default_parameters):
        if par.name == default.name:
            par.interp = default.interp
            par.scale_method = default.scale_method
            par.scale_transform = default.scale_transform
    return model
