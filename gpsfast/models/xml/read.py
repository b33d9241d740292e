"""Read ctools / GammaLib XML sky models as gammapy `~gammapy.modeling.models.Models`.

The file is parsed with defusedxml (line numbers kept for messages, depth and
size limits), each ``<source>`` read into a gammapy ``SkyModel`` (its
``<spectrum>``, ``<spatialModel>`` and ``<temporal>`` through the type registry,
`gpsfast.models.xml.registry`) or a ``FoVBackgroundModel`` (CTA backgrounds);
instrument backgrounds that are not sky models (`SKIPPED_SOURCE_TYPES`) are
skipped with a warning. Referenced files (``file=`` attributes) are untrusted
input: they are looked up in the XML file's folder (and the folders the caller
allows), names leaving them are refused, and environment variables are expanded
only when asked (see `gpsfast.models.xmlfiles`).

Every message names the file, the line and the source. Big files are read in
memory linear in the number of sources (`gpsfast.models.bulk`); files over
``max_sources`` sources or nested deeper than `MAX_XML_DEPTH` are refused.
"""
from dataclasses import dataclass, field
from pathlib import Path
from xml.etree.ElementTree import ParseError

import defusedxml
import defusedxml.ElementTree as safe_et
from gammapy.modeling import Parameter
from gammapy.modeling.models import (
    ConstantSpectralModel,
    FoVBackgroundModel,
    Models,
    PowerLawNormSpectralModel,
    PowerLawSpectralModel,
    TemplateSpatialModel,
)

from ...errors import InputError
from ...utils import progress_bar
from ..bulk import build_models, build_sky_model
from ..xmlfiles import FileResolver
from .common import Context, SourceError, align, log
from .registry import (
    BACKGROUND_TYPES,
    NOT_REPRESENTABLE,
    SKIPPED_SOURCE_TYPES,
    SKY_SOURCE_TYPES,
    SUPPORTED_XML_TYPES,
    unknown,
)
from .spatial import DM_HALO_PARAMETERS, DM_PROFILES, read_spatial
from .spectral import read_spectral
from .temporal import read_temporal

__all__ = [
    "read_xml",
    "XmlReadResult",
    "read_xml_detailed",
    "SUPPORTED_XML_TYPES",
    "NOT_REPRESENTABLE",
    "MAX_SOURCES",
    "MAX_XML_DEPTH",
    "DM_PROFILES",
    "DM_HALO_PARAMETERS",
]

#: Default largest number of ``<source>`` elements read from one file (about 40 kB of memory each).
MAX_SOURCES = 200_000
#: Largest nesting of XML elements (GammaLib model files need fewer than 10 levels).
MAX_XML_DEPTH = 64
#: Bytes of XML allowed per source of ``max_sources`` before the file is refused unread.
_BYTES_PER_SOURCE = 16384


# --------------------------------------------------------------------------- sources


def _one(ctx, src, tag, required=True):
    items = src.findall(tag)
    if len(items) > 1:
        raise ctx.error(f"has {len(items)} <{tag}> elements, expected one", items[1])
    if not items and required:
        raise ctx.error(f"has no <{tag}> element")
    return items[0] if items else None


def _to_norm_model(ctx, model):
    """A background spectrum (relative factor) as a gammapy norm spectral model."""
    if isinstance(model, PowerLawSpectralModel):
        amp, index, ref = model.amplitude, model.index, model.reference
        return PowerLawNormSpectralModel(
            norm=Parameter("norm", amp.value, min=amp.min, max=amp.max, error=amp.error, frozen=amp.frozen),
            tilt=Parameter("tilt", index.value, min=index.min, max=index.max, error=index.error, frozen=index.frozen),
            reference=ref,
        )
    if isinstance(model, ConstantSpectralModel):
        c = model.const
        return PowerLawNormSpectralModel(
            norm=Parameter("norm", c.value, min=c.min, max=c.max, error=c.error, frozen=c.frozen),
            tilt=Parameter("tilt", 0.0, frozen=True),
        )
    if model.is_norm_spectral_model:
        return model
    raise ctx.error(f"background spectrum {type(model).__name__} is not a relative (norm) spectral model")


def _read_source(ctx, src):
    kind = src.get("type")
    name = src.get("name")
    ctx.source, ctx.line = name, getattr(src, "sourceline", None)
    if name is None or not name.strip():
        raise ctx.error(f"a <source> of type {kind!r} has an empty or missing name")
    if kind in SKIPPED_SOURCE_TYPES:
        ctx.warn(f"{kind} is an instrument-specific background, not a sky model: skipped")
        return None
    if kind in BACKGROUND_TYPES:
        spectrum = read_spectral(ctx, _one(ctx, src, "spectrum"), physical=False)
        if kind == "CTAAeffBackground":
            ctx.warn("CTAAeffBackground: gammapy's background template must be built from the effective area")
        dataset = src.get("id") or name
        norm_model = align(_to_norm_model(ctx, spectrum))
        return FoVBackgroundModel(dataset_name=dataset, spectral_model=norm_model)
    if kind not in SKY_SOURCE_TYPES:
        raise ctx.error(unknown("source", kind))
    spatial = read_spatial(ctx, _one(ctx, src, "spatialModel"))
    # a map cube carries the spectrum itself: the spectral model is then a relative factor
    cube = isinstance(spatial, TemplateSpatialModel) and not spatial.map.geom.is_image
    spectral = read_spectral(ctx, _one(ctx, src, "spectrum"), physical=not cube)
    temporal_el = _one(ctx, src, "temporal", required=False)
    if temporal_el is None:
        temporal_el = _one(ctx, src, "temporalModel", required=False)
    temporal = None if temporal_el is None else read_temporal(ctx, temporal_el)
    for component in (spectral, spatial, temporal):
        if component is not None:
            align(component)
    try:
        return build_sky_model(spectral, spatial, temporal, name=name)
    except ValueError as exc:
        raise ctx.error(f"gammapy refuses the model: {exc}") from None


def _read_source_located(ctx, src):
    """`_read_source`, with every `InputError` (also from the model classes) naming file, line and source."""
    try:
        return _read_source(ctx, src)
    except SourceError:
        raise
    except InputError as exc:
        raise ctx.error(str(exc)) from None


# --------------------------------------------------------------------------- parsing


class _LineNumberingParser(safe_et.DefusedXMLParser):
    """defusedxml's parser, recording each element's line as ``element.sourceline``."""

    def _start(self, tag, attr_list):
        element = super()._start(tag, attr_list)
        element.sourceline = self.parser.CurrentLineNumber
        return element


def _check_depth(root, path):
    stack = [(root, 1)]
    while stack:
        element, depth = stack.pop()
        if depth > MAX_XML_DEPTH:
            line = getattr(element, "sourceline", "?")
            raise InputError(f"{path}:{line}: XML elements nested deeper than {MAX_XML_DEPTH} levels: refused "
                             "(GammaLib model files need fewer than 10)")
        stack.extend((child, depth + 1) for child in element)


def _parse(path, max_sources):
    path = Path(path)
    if not path.is_file():
        raise InputError(f"XML model file not found: {path}")
    size = path.stat().st_size
    if size > max_sources * _BYTES_PER_SOURCE:
        raise InputError(f"{path}: {size / 2**20:.0f} MB is too large for max_sources={max_sources} "
                         f"(more than {_BYTES_PER_SOURCE} bytes a source): refused before reading; "
                         "pass a larger max_sources to read_xml if the machine has the memory")
    parser = _LineNumberingParser(forbid_dtd=False, forbid_entities=True, forbid_external=True)
    try:
        tree = safe_et.parse(str(path), parser=parser)
    except ParseError as exc:
        line, col = exc.position
        raise InputError(f"{path}:{line}:{col}: malformed XML: {exc.msg if hasattr(exc, 'msg') else exc}") from None
    except defusedxml.EntitiesForbidden as exc:
        raise InputError(f"{path}: XML entity declarations are refused (entity {exc.name!r}): "
                         "possible entity-expansion attack") from None
    except defusedxml.ExternalReferenceForbidden as exc:
        raise InputError(f"{path}: XML external references are refused ({exc.sysid!r})") from None
    except defusedxml.DefusedXmlException as exc:
        raise InputError(f"{path}: unsafe XML refused: {exc}") from None
    root = tree.getroot()
    _check_depth(root, path)
    if root.tag != "source_library":
        raise InputError(f"{path}: root element is <{root.tag}>, expected <source_library> (not a model file)")
    return root


# --------------------------------------------------------------------------- public


@dataclass
class XmlReadResult:
    """What `read_xml_detailed` found: the models, the warnings, the sources skipped or refused."""

    models: Models
    warnings: list
    skipped: list
    n_sources: int
    #: Sources not converted in lenient mode (`~gpsfast.models.xml.common.SourceError`: path, line, source, reason).
    bad: list = field(default_factory=list)


def read_xml_detailed(path, strict=True, allowed_dirs=None, expand_env=False, max_sources=MAX_SOURCES):
    """Read a GammaLib / ctools XML model file and report warnings, skipped and bad sources.

    Parameters
    ----------
    path : str or `~pathlib.Path`
        XML file with a ``<source_library>`` root.
    strict : bool
        Refuse the file at the first bad source (default). With ``strict=False``
        every good source is converted and each bad one is reported in
        ``result.bad`` (file, line, source name, why); errors of the file
        itself (malformed or unsafe XML, too large) are raised in both modes.
    allowed_dirs : list of str or `~pathlib.Path`, optional
        Folders besides the XML file's own that referenced files (``file=``)
        may be read from (``"."`` for GammaLib's rule that a name with a folder
        part is relative to the working directory).
    expand_env : bool
        Expand environment variables (``$CTOOLS``, ``$(GAMMALIB)``, ``~``) in
        file names. Off by default: a model file is untrusted input.
    max_sources : int
        Refuse files with more sources (and files larger than 16 kB times
        this) before building any model, instead of running out of memory.

    Returns
    -------
    result : `XmlReadResult`
        ``models`` (`~gammapy.modeling.models.Models`), ``warnings`` (one line each,
        naming file, line and source), ``skipped`` (names of non-sky sources skipped),
        ``n_sources`` (number of ``<source>`` elements), ``bad`` (sources refused
        in lenient mode).
    """
    root = _parse(path, max_sources)
    ctx = Context(path, FileResolver(path, allowed_dirs=allowed_dirs, expand_env=expand_env))
    sources = root.findall("source")
    if len(sources) > max_sources:
        raise InputError(f"{path}: {len(sources)} sources, more than max_sources={max_sources}: refused "
                         "(pass a larger max_sources to read_xml if the machine has the memory)")
    models, skipped, bad, first_line = [], [], [], {}
    for src in progress_bar(sources, desc=f"reading {Path(path).name}"):
        try:
            model = _read_source_located(ctx, src)
            if model is not None and model.name in first_line:
                raise ctx.error(f"duplicate source name (first at line {first_line[model.name]})")
        except SourceError as exc:
            if strict:
                raise
            bad.append(exc)
            log.warning("%s: not converted", exc)
            model = False
        if model is None:
            skipped.append(src.get("name"))
        elif model is not False:
            first_line[model.name] = getattr(src, "sourceline", "?")
            models.append(model)
        ctx.source = ctx.line = None
    return XmlReadResult(build_models(models), ctx.warnings, skipped, len(sources), bad)


def read_xml(path, strict=True, allowed_dirs=None, expand_env=False, max_sources=MAX_SOURCES):
    """Read a ctools / GammaLib XML sky model file into gammapy models.

    Parameters
    ----------
    path : str or `~pathlib.Path`
        XML file (``<source_library>``).
    strict : bool
        Refuse the file at the first bad source (default); with ``False`` the
        bad sources are left out with a logged warning each (see
        `read_xml_detailed` for the list of them).
    allowed_dirs, expand_env, max_sources
        See `read_xml_detailed`: files it references are read only from its
        folder (and ``allowed_dirs``), environment variables in their names
        are expanded only with ``expand_env=True``.

    Returns
    -------
    models : `~gammapy.modeling.models.Models`
        One `~gammapy.modeling.models.SkyModel` per sky source and one
        `~gammapy.modeling.models.FoVBackgroundModel` per CTA background model.
        The covariance of all parameters is built only when asked for
        (`~gpsfast.models.bulk.BlockCovariance`).

    Raises
    ------
    InputError
        Malformed or unsafe XML (with file and line), unknown model type (the
        supported ones are listed), missing or non-finite parameter, min larger
        than max, unphysical size or position, missing or refused referenced
        file, too many sources. The message names file, line and source.
    """
    return read_xml_detailed(path, strict=strict, allowed_dirs=allowed_dirs, expand_env=expand_env,
                             max_sources=max_sources).models
