"""Write gammapy `~gammapy.modeling.models.Models` as a ctools / GammaLib XML model file.

Each parameter is written as GammaLib's ``value * scale`` with a power-of-ten
scale chosen so that reading the file back gives the same float (``scale = 1``
otherwise); indices are written with ``scale = -1`` (GammaLib indices are
negative). gpsfast's exact GammaLib model classes are written exactly; gammapy's
own models that GammaLib lacks are written as the closest GammaLib model with a
warning naming the source and the difference, or refused with `InputError`
(the types are those of the registry, `gpsfast.models.xml.registry`).
"""
import logging
from pathlib import Path
from xml.etree.ElementTree import Element, ElementTree, SubElement, indent

from gammapy.modeling.models import (
    ConstantSpatialModel,
    FoVBackgroundModel,
    PointSpatialModel,
    PowerLawNormSpectralModel,
    SkyModel,
    TemplateSpatialModel,
)

from ...errors import InputError
from ...utils import atomic_output
from ..spatial import GammaLibCompositeSpatialModel
from .params import ENERGY, INDEX, PLAIN
from .registry import write_component
from .spatial import SPATIAL
from .spectral import SPECTRUM
from .temporal import TEMPORAL

__all__ = ["write_xml"]

log = logging.getLogger("gpsfast.models.xml")


def _file_attr(filename, xml_path):
    """File name as GammaLib writes it: bare when next to the XML file, else absolute."""
    path = Path(filename).resolve()
    if path.parent == Path(xml_path).resolve().parent:
        return path.name
    return str(path)


def _write_background(root, model, warn):
    # gammapy names the model "<dataset>-bkg": the XML source takes the dataset name. No ``id``: GammaLib
    # would apply the model only to the observation of that id (a dataset name is not an observation id)
    name = model.datasets_names[0] if model.datasets_names else model.name
    src = SubElement(root, "source", {"name": name, "type": "CTAIrfBackground", "instrument": "CTA"})
    spec = model.spectral_model
    if isinstance(spec, PowerLawNormSpectralModel):
        el = SubElement(src, "spectrum", {"type": "PowerLaw"})
        PLAIN.write(el, "Prefactor", spec.norm)
        INDEX.write(el, "Index", spec.tilt)
        ENERGY.write(el, "PivotEnergy", spec.reference)
    else:
        raise InputError(f"background {model.name!r}: spectral model {type(spec).__name__} cannot be written to XML")
    if model.spatial_model is not None:
        warn(f"background {model.name!r}: spatial correction model not written (no CTAIrfBackground equivalent)")


def _source_type(spatial):
    if isinstance(spatial, PointSpatialModel):
        return "PointSource"
    if isinstance(spatial, (ConstantSpatialModel, TemplateSpatialModel)):
        return "DiffuseSource"
    if isinstance(spatial, GammaLibCompositeSpatialModel):
        return "CompositeSource"
    return "ExtendedSource"


def write_xml(models, path, overwrite=False):
    """Write gammapy models as a ctools / GammaLib XML model file.

    Parameters
    ----------
    models : `~gammapy.modeling.models.Models` or list of models
        Sky models (and `~gammapy.modeling.models.FoVBackgroundModel`, written
        as ``CTAIrfBackground``).
    path : str or `~pathlib.Path`
        Output file.
    overwrite : bool
        Replace an existing file.

    Returns
    -------
    warnings : list of str
        Conversions that are not exact, one line each.

    Raises
    ------
    InputError
        If the file exists and ``overwrite`` is False, or a model has no XML equivalent.
    """
    messages = []

    def warn(text):
        messages.append(text)
        log.warning(text)

    root = Element("source_library", {"title": "source library"})
    models = list(models)
    names = [m.name for m in models]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise InputError(f"write_xml: duplicate source names: {', '.join(dupes)}")
    for model in models:
        if isinstance(model, FoVBackgroundModel):
            _write_background(root, model, warn)
            continue
        if not isinstance(model, SkyModel):
            raise InputError(f"model {model.name!r} of type {type(model).__name__} cannot be written to XML")
        if model.spatial_model is None:
            raise InputError(f"source {model.name!r} has no spatial model; GammaLib sky sources need one")
        kind = _source_type(model.spatial_model)
        src = SubElement(root, "source", {"name": model.name, "type": kind})
        write_component(src, model.spectral_model, SPECTRUM, model.name, warn)
        write_component(src, model.spatial_model, SPATIAL, model.name, warn)
        if model.temporal_model is not None:
            write_component(src, model.temporal_model, TEMPORAL, model.name, warn)
    for el in root.iter():
        if el.get("file"):
            el.set("file", _file_attr(el.get("file"), path))
    indent(root, space="  ")
    with atomic_output(path, overwrite) as tmp:
        ElementTree(root).write(tmp, encoding="UTF-8", xml_declaration=True)
    return messages
