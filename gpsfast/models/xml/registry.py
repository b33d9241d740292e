"""The one table of GammaLib model types, serving the XML reader and the writer.

Each `XmlType` entry is one GammaLib type: its XML type name(s), the gammapy
class it reads into (and is written from), and its parameters as `Par` items,
each an XML name (legacy aliases read too), a gammapy name and a
`~gpsfast.models.xml.params.Conversion` (scale and unit both ways). A plain
type needs nothing else: the reader builds the class from the converted
parameters (and the position or ellipse of a spatial model, `Geometry`), the
writer writes them back in the order listed. Special cases (files, nodes,
components) give ``read`` and ``write`` hooks, which may call the generic
parts (`XmlType.read_kwargs`, `XmlType.write_parameters`).

Reading picks, among the entries of the element's ``type`` name, the first whose
``signature`` parameter is present (GammaLib tells ``PowerLaw`` with
``PhotonFlux`` from ``PowerLaw`` with ``Prefactor`` in the same way), else the
entry without a signature. Writing walks the model class's MRO and takes the
first entry of that class (or listing it in ``writes``) whose ``write_if``
accepts the model. Adding a type is adding one entry (`register`).
"""
from dataclasses import dataclass
from typing import Callable
from xml.etree.ElementTree import SubElement

from ...errors import InputError
from ..bulk import build_component
from .params import PLAIN, parse_pars, pick

__all__ = [
    "BACKGROUND_TYPES",
    "ELEMENTS",
    "NOT_REPRESENTABLE",
    "SKIPPED_SOURCE_TYPES",
    "SKY_SOURCE_TYPES",
    "SUPPORTED_XML_TYPES",
    "Geometry",
    "Par",
    "XmlType",
    "entries",
    "read_component",
    "register",
    "unknown",
    "write_component",
]

SKY_SOURCE_TYPES = ("PointSource", "ExtendedSource", "DiffuseSource", "CompositeSource")
BACKGROUND_TYPES = ("CTAIrfBackground", "CTACubeBackground", "CTAAeffBackground")
#: Instrument-specific background / data-space models that are not sky models:
#: skipped with a warning naming the source.
SKIPPED_SOURCE_TYPES = (
    "RadialAcceptance",
    "CTABackground",
    "CTASkyCube",
    "DRBPhibarNodes",
    "DRBFitting",
    "DataSpace",
    "SPIBackground",
)
#: Model elements of a ``<source>`` (``temporalModel`` is read as ``temporal``).
ELEMENTS = ("spectrum", "spatialModel", "temporal")

#: Every XML type name ``read_xml`` understands, by element kind (filled by `register`).
SUPPORTED_XML_TYPES = {"source": SKY_SOURCE_TYPES + BACKGROUND_TYPES, **{element: () for element in ELEMENTS}}
#: GammaLib types gpsfast recognises but cannot represent exactly in gammapy, and why.
NOT_REPRESENTABLE = {}

_NO_EQUIVALENT = {
    "spectrum": "source {name!r}: spectral model {cls} has no GammaLib XML equivalent in gpsfast",
    "spatialModel": "source {name!r}: spatial model {cls} has no exact GammaLib XML equivalent; use gpsfast.models "
                    "GammaLib* spatial models",
    "temporal": "source {name!r}: temporal model {cls} has no GammaLib XML equivalent",
}


def unknown(kind, name):
    """Message for an unknown or unsupported type, listing the supported ones."""
    supported = ", ".join(SUPPORTED_XML_TYPES[kind])
    reason = NOT_REPRESENTABLE.get(name)
    what = f"unsupported {kind} type {name!r} ({reason})" if reason else f"unknown {kind} type {name!r}"
    return f"{what}; supported types: {supported}"


@dataclass(frozen=True)
class Par:
    """One parameter of a type: GammaLib name (and legacy aliases), gammapy name, conversion."""

    xml: str
    name: str
    conversion: object = PLAIN
    aliases: tuple = ()

    def read(self, ctx, el, pars, physical=True):
        """The gammapy parameter, from the parsed ``<parameter>`` elements ``pars``."""
        return self.conversion.read(pick(ctx, el, pars, self.xml, *self.aliases), self.name, physical)

    def write(self, el, model):
        """Append the model's parameter to ``el``."""
        self.conversion.write(el, self.xml, getattr(model, self.name))


class Geometry:
    """Where a spatial model is (and its shape, for ellipses): read into constructor arguments, written back.

    Subclasses implement ``read(ctx, el, pars) -> dict`` and ``write(el, model)``.
    """

    def read(self, ctx, el, pars):
        raise NotImplementedError

    def write(self, el, model):
        raise NotImplementedError


@dataclass(frozen=True)
class XmlType:
    """One GammaLib model type: how it is read into gammapy and written back.

    Attributes
    ----------
    element : {"spectrum", "spatialModel", "temporal"}
        The XML element it is the ``type`` of.
    names : tuple of str
        XML type names read as this entry (legacy ones too); the first is written.
    cls : type
        gammapy class read; the writer uses the entry for it and its subclasses.
    pars : tuple of `Par`
        Parameters, in the order written.
    fixed : tuple of (str, callable)
        gammapy parameters with no XML counterpart: name and a function making it.
    geometry : `Geometry`, optional
        Position (and shape) of a spatial model.
    signature : tuple of str
        XML parameter names, one of which selects this entry among the entries
        of the same XML name (empty: the default entry of that name).
    writes : tuple of type
        Further classes written as this type (gammapy's own models).
    write_if : callable, optional
        ``write_if(model)``: whether a model of ``cls`` is written as this type.
    read, write : callable, optional
        ``read(entry, ctx, el, pars, physical) -> model`` and ``write(entry, el,
        model, name, warn)`` replace the generic reading and writing.
    warning : callable, optional
        ``warning(model, name, xml_type) -> str or None``: what an inexact write loses.
    readable, writable : bool
        Whether the reader / the writer use the entry (legacy forms are read
        only; gammapy models GammaLib lacks are written only).
    """

    element: str
    names: tuple
    cls: type
    pars: tuple = ()
    fixed: tuple = ()
    geometry: Geometry = None
    signature: tuple = ()
    writes: tuple = ()
    write_if: Callable = None
    read: Callable = None
    write: Callable = None
    warning: Callable = None
    readable: bool = True
    writable: bool = True

    @property
    def xml_type(self):
        """The type name written."""
        return self.names[0]

    def read_kwargs(self, ctx, el, pars, physical=True):
        """Constructor arguments of ``cls``: geometry, converted parameters and fixed parameters."""
        kwargs = {} if self.geometry is None else self.geometry.read(ctx, el, pars)
        for par in self.pars:
            kwargs[par.name] = par.read(ctx, el, pars, physical)
        for name, make in self.fixed:
            kwargs[name] = make()
        return kwargs

    def read_model(self, ctx, el, pars, physical=True):
        """The gammapy model of an element of this type."""
        if self.read is not None:
            return self.read(self, ctx, el, pars, physical)
        return build_component(self.cls, **self.read_kwargs(ctx, el, pars, physical))

    def write_parameters(self, el, model):
        """Append the geometry and the parameters of ``model`` to ``el``."""
        if self.geometry is not None:
            self.geometry.write(el, model)
        for par in self.pars:
            par.write(el, model)

    def write_model(self, el, model, name, warn):
        """Fill element ``el`` (type, attributes, parameters) from ``model``; ``warn`` takes inexact writes."""
        el.set("type", self.xml_type)
        if self.write is not None:
            self.write(self, el, model, name, warn)
        else:
            self.write_parameters(el, model)
        if self.warning is not None:
            text = self.warning(model, name, self.xml_type)
            if text:
                warn(text)


_READING = {}
_WRITING = {}


def register(entry):
    """Add a type to the registry (after the entries registered before it of the same names and classes)."""
    if entry.element not in ELEMENTS:
        raise ValueError(f"unknown XML element {entry.element!r}: one of {ELEMENTS}")
    if entry.readable:
        for name in entry.names:
            _READING.setdefault((entry.element, name), []).append(entry)
        known = SUPPORTED_XML_TYPES[entry.element]
        SUPPORTED_XML_TYPES[entry.element] = known + tuple(n for n in entry.names if n not in known)
    if entry.writable:
        for cls in (entry.cls, *entry.writes):
            _WRITING.setdefault((entry.element, cls), []).append(entry)
    return entry


def entries(element=None):
    """Every registered entry (of one element kind), in registration order."""
    seen = {}
    for group in (*_READING.values(), *_WRITING.values()):
        for entry in group:
            if element is None or entry.element == element:
                seen.setdefault(id(entry), entry)
    return list(seen.values())


def _for_reading(element, kind, pars):
    candidates = _READING.get((element, kind), [])
    for entry in candidates:
        if entry.signature and any(name in pars for name in entry.signature):
            return entry
    for entry in candidates:
        if not entry.signature:
            return entry
    return candidates[0] if candidates else None


def _for_writing(element, model):
    for cls in type(model).__mro__:
        for entry in _WRITING.get((element, cls), ()):
            if entry.write_if is None or entry.write_if(model):
                return entry
    return None


def read_component(ctx, el, element, physical=True):
    """The gammapy model of a ``<spectrum>``, ``<spatialModel>`` or ``<temporal>`` element.

    ``physical``: a spectrum is a flux (else a relative factor: backgrounds,
    factors of a product, the spectrum of a map cube).
    """
    kind = el.get("type")
    pars = parse_pars(ctx, el)
    entry = _for_reading(element, kind, pars)
    if entry is None:
        raise ctx.error(unknown(element, kind), el)
    return entry.read_model(ctx, el, pars, physical)


def write_component(parent, model, element, name, warn):
    """Append the element of ``model`` (``element``: its XML tag) to ``parent``; the element.

    Raises `InputError` naming the source ``name`` when no GammaLib type represents the model.
    """
    el = SubElement(parent, element)
    entry = _for_writing(element, model)
    if entry is None:
        raise InputError(_NO_EQUIVALENT[element].format(name=name, cls=type(model).__name__))
    entry.write_model(el, model, name, warn)
    return el
