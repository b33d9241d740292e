"""``gpsfast convert IN OUT``: XML <-> YAML, either -> survey catalogue FITS."""
import collections
import logging
from pathlib import Path

from gammapy.modeling.models import FoVBackgroundModel, SkyModel

from ..errors import InputError
from .catalog import read_catalog_detailed, write_catalog
from .xml import read_xml_detailed, write_xml
from .yamlio import read_yaml_models, write_yaml_models

__all__ = ["convert"]

log = logging.getLogger(__name__)


def _kind(path):
    name = str(path).lower()
    if name.endswith(".xml"):
        return "xml"
    if name.endswith((".yaml", ".yml")):
        return "yaml"
    if name.endswith((".fits", ".fits.gz", ".fit")):
        return "fits"
    raise InputError(f"cannot tell the format of {path}: use .xml, .yaml/.yml or .fits/.fits.gz")


def _read(path, kind, notes, bad, strict):
    if kind == "xml":
        result = read_xml_detailed(path, strict=strict)
        notes.extend(result.warnings)
        bad.extend(result.bad)
        return result.models
    if kind == "yaml":
        return read_yaml_models(path)
    return read_catalog_detailed(path, strict=strict, bad=bad)


def _summary(models, notes, bad, src, dst):
    sky = [m for m in models if isinstance(m, SkyModel)]
    bkg = [m for m in models if isinstance(m, FoVBackgroundModel)]
    spatial = collections.Counter(type(m.spatial_model).__name__ if m.spatial_model else "none" for m in sky)
    spectral = collections.Counter(type(m.spectral_model).__name__ for m in sky)
    lines = [f"converted {src} -> {dst}: {len(sky)} sources, {len(bkg)} background models "
             f"({len(models)} good, {len(bad)} bad)"]
    lines.append("  spatial: " + ", ".join(f"{k} {v}" for k, v in sorted(spatial.items())))
    lines.append("  spectral: " + ", ".join(f"{k} {v}" for k, v in sorted(spectral.items())))
    lines.extend(f"  bad (not converted): {b}" for b in bad)
    lines.extend(f"  warning: {n}" for n in notes)
    return "\n".join(lines)


def convert(input_path, output_path, overwrite=False, strict=True):
    """Convert a sky model file between ctools XML, gammapy YAML and the survey catalogue FITS.

    The direction follows the extensions (``.xml``, ``.yaml``/``.yml``,
    ``.fits``/``.fits.gz``). The output is written atomically.

    Parameters
    ----------
    input_path, output_path : str or `~pathlib.Path`
        Input and output files.
    overwrite : bool
        Replace an existing output file (else `~gpsfast.errors.InputError`).
    strict : bool
        Refuse the input at its first bad source (default). With ``False``
        (the default of ``gpsfast convert``) every good source of an XML file
        or catalogue is converted and each bad one is listed in the summary
        (file, line or row, source name, why); nothing is written when no
        source is good.

    Returns
    -------
    summary : str
        Number of sources by spatial and spectral type, good and bad, one line
        per bad source and the warnings.
    """
    src, dst = Path(input_path), Path(output_path)
    kin, kout = _kind(src), _kind(dst)
    if dst.exists() and not overwrite:
        raise InputError(f"output file exists: {dst} (use overwrite=True / --overwrite)")
    if src.resolve() == dst.resolve():
        raise InputError(f"input and output are the same file: {src}")
    notes, bad = [], []
    models = _read(src, kin, notes, bad, strict)
    if bad and not len(models):
        raise InputError(f"{src}: no source could be converted ({len(bad)} bad; first: {bad[0]})")
    if kout == "xml":
        notes.extend(write_xml(models, dst, overwrite=overwrite))
    elif kout == "yaml":
        write_yaml_models(models, dst, overwrite=overwrite)
    else:
        skipped = [m.name for m in models if not isinstance(m, SkyModel)]
        if skipped:
            notes.append(f"not sky models, left out of the catalogue: {', '.join(skipped)}")
        write_catalog(models, dst, overwrite=overwrite)
    summary = _summary(models, notes, bad, src, dst)
    log.info(summary)
    return summary
