"""Large-scale diffuse emission as a model of the survey fit.

- `diffuse_from_file`: a user template (gammapy map or map cube FITS file, GammaLib
  / ctools XML ``DiffuseMapCube`` or ``DiffuseMap`` model, gammapy YAML model) as a
  sky model with its normalisation (and tilt) free;
- `estimate_diffuse`: the emission outside the source list, estimated from the
  maps with the sources excluded.

Both return a `~gammapy.modeling.models.SkyModel` (a
`~gammapy.modeling.models.TemplateSpatialModel` times a power law or a
normalisation) whose normalisation `gpsfast.background.fit_background` fits
with the FoV backgrounds (``free=``), as `gpsfast.background.iterate_background`
does.

The estimate
------------
`estimate_diffuse` takes the excess of the counts over the current model
(background and sources) outside the exclusion mask, divided by the counts a
unit intensity gives (the same power law in every pixel, through each dataset's
exposure and energy dispersion), both smoothed with a Gaussian (a normalised
convolution, summed over the datasets)::

    I = G * (w excess) / G * (w unit_npred)        (w: 1 outside the exclusion mask, 0 inside)

This ratio of smoothed maps assumes no shape (a latitude profile or a basis of
functions fitted to the maps would impose one on an emission whose morphology is
unknown), fills the excluded holes from their surroundings (only kept pixels
weigh) and its edge effects cancel between numerator and denominator. Strong
diffuse emission is itself significant and excluded by a mask of the raw
significance, and the smoothing flattens its profile: each iteration makes the
mask again from the residual significance with the estimate in the model (only
what a smooth component does not explain, the compact sources, stays excluded)
and adds the smoothed residual to the estimate (``I += G * (w residual) / G * (w
unit_npred)``, a Van Cittert step that gives back the profile flattened by the
smoothing). The smoothing width sets the scale kept: sources, excluded, are not
absorbed; a latitude profile of 0.3-1 deg is recovered with a width of 0.25-0.5
deg. Negative values (noise in empty regions) are set to zero.
"""
import logging
from pathlib import Path

import astropy.units as u
import numpy as np
from gammapy.maps import Map
from gammapy.modeling.models import (ConstantSpatialModel, Models, PowerLawNormSpectralModel, PowerLawSpectralModel,
                                     SkyModel, TemplateSpatialModel)
from scipy.ndimage import gaussian_filter

from ..detect import significance_maps
from ..errors import InputError
from ..models import read_xml
from .common import as_datasets, kept_image, shallow_copy
from .exclusion import exclusion_mask

__all__ = ["UNIT_INTENSITY", "diffuse_from_file", "estimate_diffuse"]

log = logging.getLogger(__name__)

UNIT_INTENSITY = 1e-10 * u.Unit("cm-2 s-1 TeV-1")
"""dN/dE at 1 TeV per steradian of the unit intensity of `estimate_diffuse` (about 2.8 Crab per sr)."""


def _free_diffuse_spectrum(spectral, tilt):
    """Free the normalisation (and tilt / index) of a diffuse model's spectrum; returns the spectrum."""
    names = spectral.parameters.names
    norm = next((n for n in ("norm", "amplitude", "const") if n in names), None)
    if norm is None:
        raise InputError(f"diffuse model: spectral model {type(spectral).__name__} has no norm, amplitude or const")
    spectral.parameters[norm].frozen = False
    slope = next((n for n in ("tilt", "index") if n in names), None)
    if slope is not None:
        spectral.parameters[slope].frozen = not tilt
    return spectral


def _template_model(spatial, spectral, name, tilt):
    if spatial.is_energy_dependent and spectral is None:
        spectral = PowerLawNormSpectralModel()
    if spectral is None:
        raise InputError(f"diffuse model {name!r}: a 2D template needs a spectral model (spectral_model=)")
    return SkyModel(spatial_model=spatial, spectral_model=_free_diffuse_spectrum(spectral, tilt), name=name)


def _from_model_file(path, name, tilt):
    if path.suffix.lower() == ".xml":
        candidates = read_xml(path)
    else:
        candidates = Models.read(path)
    templates = [m for m in candidates if isinstance(m, SkyModel) and isinstance(m.spatial_model, TemplateSpatialModel)]
    if name is not None:
        templates = [m for m in templates if m.name == name] or templates
    if len(templates) != 1:
        raise InputError(f"{path}: expected one diffuse (map template) sky model, found "
                         f"{[m.name for m in templates]}; pass name=")
    model = templates[0]
    spectral = model.spectral_model
    if model.spatial_model.is_energy_dependent and type(spectral).__name__ == "ConstantSpectralModel" \
            and spectral.const.unit.is_equivalent(""):
        spectral = PowerLawNormSpectralModel(norm=spectral.const.quantity.to_value(""))
    return _template_model(model.spatial_model, spectral, model.name, tilt)


def diffuse_from_file(filename, name=None, spectral_model=None, tilt=True):
    """A large-scale diffuse component read from a file, as a sky model with its normalisation free.

    Parameters
    ----------
    filename : str or `~pathlib.Path`
        - a gammapy map FITS file: a map cube (with an energy axis, intensity
          units such as ``cm-2 s-1 TeV-1 sr-1``) is used as it is, times a
          `~gammapy.modeling.models.PowerLawNormSpectralModel` (norm 1, tilt 0);
          a 2D map is a spatial template (normalised to 1 over the sky) and
          needs ``spectral_model``;
        - a GammaLib / ctools XML model file (`gpsfast.models.read_xml`) with a
          ``DiffuseMapCube`` or ``DiffuseMap`` source, or a gammapy YAML model
          file with a template sky model: its spectrum is kept (a constant
          becomes a PowerLawNorm).
    name : str, optional
        Name of the model (default ``diffuse``; for model files, the source to
        pick when there are several, and by default the source's name).
    spectral_model : `~gammapy.modeling.models.SpectralModel`, optional
        Spectrum of a FITS template.
    tilt : bool, optional
        Free the spectral tilt (``tilt`` or ``index``) too. Default True.

    Returns
    -------
    model : `~gammapy.modeling.models.SkyModel`
        `~gammapy.modeling.models.TemplateSpatialModel` times the spectrum,
        its ``norm`` / ``amplitude`` free (and the tilt).
    """
    path = Path(filename)
    if not path.is_file():
        raise InputError(f"diffuse model file {path} does not exist")
    if path.suffix.lower() in (".xml", ".yaml", ".yml"):
        return _from_model_file(path, name, tilt)
    try:
        template = Map.read(path)
    except Exception as exc:  # noqa: BLE001  any unreadable file is the user's input
        raise InputError(f"{path}: cannot read a gammapy map ({type(exc).__name__}: {exc})") from None
    cube = not template.geom.is_image
    if cube and not template.unit.is_equivalent("cm-2 s-1 TeV-1 sr-1"):
        raise InputError(f"{path}: a diffuse map cube must be an intensity (cm-2 s-1 TeV-1 sr-1), "
                         f"its unit is {template.unit!r}")
    spatial = TemplateSpatialModel(template, normalize=not cube, filename=str(path))
    return _template_model(spatial, spectral_model, name or "diffuse", tilt)


def _unit_npred(dataset, index):
    """Counts per bin of the unit intensity with a power law of ``index`` (no PSF: a smooth emission)."""
    unit = SkyModel(spatial_model=ConstantSpatialModel(value=1 * u.Unit("sr-1")),
                    spectral_model=PowerLawSpectralModel(index=index, amplitude=UNIT_INTENSITY), name="unit")
    unit.apply_irf["psf"] = False
    return shallow_copy(dataset, models=[unit]).npred_signal().data


def _dataset_images(dataset, index):
    """Excess over the current model and unit-intensity counts of one dataset, summed over energy (mask safe)."""
    safe = np.ones(dataset.data_shape, dtype=bool) if dataset.mask_safe is None else dataset.mask_safe.data
    excess = np.where(safe, dataset.counts.data - dataset.npred().data, 0).sum(axis=0)
    unit = np.where(safe, _unit_npred(dataset, index), 0).sum(axis=0)
    geom = dataset.geoms["geom"].to_image()
    return Map.from_geom(geom, data=excess), Map.from_geom(geom, data=unit)


def _masked_sum(images, exclusion, geom):
    """Sum over the datasets of their images times the exclusion mask, on ``geom``."""
    total = np.zeros(geom.data_shape)
    for dataset, image in images:
        if exclusion is not None:
            image = Map.from_geom(image.geom, data=np.where(kept_image(dataset, exclusion), image.data, 0))
        if image.geom != geom:
            image = image.reproject_to_geom(geom, preserve_counts=True)
        total += np.nan_to_num(image.data)
    return total


def _smoothed_ratio(residual, unit, geom, smoothing):
    """``G * residual / G * unit`` where the smoothed unit counts are not negligible, else 0."""
    width = (u.Quantity(smoothing, "deg").to_value("deg") / geom.pixel_scales.deg)[::-1]
    residual = gaussian_filter(residual, width, mode="constant")
    unit = gaussian_filter(unit, width, mode="constant")
    ratio = np.zeros(geom.data_shape)
    covered = unit > 1e-3 * unit.max()
    ratio[covered] = residual[covered] / unit[covered]
    return ratio


def _diffuse_model(intensity, geom, index, name, tilt):
    peak = intensity.max()
    if not peak > 0:
        raise InputError("estimate_diffuse: no positive excess outside the exclusion mask; no diffuse component")
    spatial = TemplateSpatialModel(Map.from_geom(geom, data=intensity / peak, unit="sr-1"), normalize=False,
                                   filename=f"{name}_template.fits")
    spectral = PowerLawSpectralModel(index=index, amplitude=peak * UNIT_INTENSITY)
    return _template_model(spatial, spectral, name, tilt)


def _residual_mask(datasets, diffuse, geom, low, high, radius, radii):
    """Exclusion mask of the residual significance with ``diffuse`` added to each dataset's models."""
    residual = [shallow_copy(d, models=Models([*(d.models or []), diffuse])) for d in datasets]
    return exclusion_mask(significance_maps(residual, radii=radii, background_only=False), geom=geom, low=low,
                          high=high, radius=radius)


def estimate_diffuse(datasets, exclusion=None, smoothing="0.5 deg", index=2.6, geom=None, name="diffuse",
                     tilt=True, iterations=2, low=3.0, high=5.0, radius="0.1 deg", radii=(0.1,)):
    """A large-scale diffuse component estimated from the maps, the sources excluded.

    The excess of the counts over each dataset's current model (background and
    sources: ``dataset.npred()``) outside the exclusion mask is divided by the
    counts of a unit intensity, both smoothed with a Gaussian of width
    ``smoothing`` (normalised convolution, summed over the datasets; see the
    module notes), and set to zero where negative. Strong diffuse emission is
    itself significant and excluded by a mask made from the raw significance:
    ``iterations`` times, the mask is then made again from the residual
    significance with the estimate added to the models (only what the smooth
    component does not explain, the compact sources, stays excluded), and the
    intensity estimated again with it.

    Parameters
    ----------
    datasets : `~gammapy.datasets.Datasets` or list of `~gammapy.datasets.MapDataset`
        Datasets with their models set (background fitted first).
    exclusion : `~gammapy.maps.WcsNDMap`, optional
        First exclusion mask (True: kept), e.g. from `exclusion_mask`.
    smoothing : `~astropy.units.Quantity` or str, optional
        Gaussian width of the smoothing. Default 0.5 deg.
    index : float, optional
        Spectral index of the unit intensity and starting index of the model.
    geom : `~gammapy.maps.WcsGeom`, optional
        Geometry of the template. Default: the first dataset's image.
    name : str, optional
        Model name. Default ``diffuse``.
    tilt : bool, optional
        Free the spectral index too. Default True.
    iterations : int, optional
        Residual-mask iterations. Default 2.
    low, high, radius, radii : optional
        `exclusion_mask` thresholds, dilation radius and the correlation radii
        (deg) of the residual significance maps. Default 3, 5, 0.1 deg, (0.1,).

    Returns
    -------
    model : `~gammapy.modeling.models.SkyModel`
        `~gammapy.modeling.models.TemplateSpatialModel` (sr-1, not normalised,
        peak 1; its map is written to its ``filename``, ``<name>_template.fits``,
        by ``model.spatial_model.write()``) times a
        `~gammapy.modeling.models.PowerLawSpectralModel` (``amplitude`` free: the
        normalisation; ``index`` free with ``tilt``).
    mask : `~gammapy.maps.WcsNDMap`
        The last exclusion mask (``exclusion`` without iterations): the one to
        fit the diffuse normalisation with.
    """
    datasets = as_datasets(datasets, "estimate_diffuse")
    geom = datasets[0].geoms["geom"].to_image() if geom is None else geom.to_image()
    images = [_dataset_images(d, index) for d in datasets]
    excess = [(d, image[0]) for d, image in zip(datasets, images)]
    unit = [(d, image[1]) for d, image in zip(datasets, images)]

    def refine(intensity, mask):
        unit_sum = _masked_sum(unit, mask, geom)
        residual = _masked_sum(excess, mask, geom) - intensity * unit_sum
        return np.clip(intensity + _smoothed_ratio(residual, unit_sum, geom, smoothing), 0, None)

    mask = exclusion
    intensity = refine(np.zeros(geom.data_shape), mask)
    model = _diffuse_model(intensity, geom, index, name, tilt)
    for _ in range(int(iterations)):
        mask = _residual_mask(datasets, model, geom, low, high, radius, radii)
        intensity = refine(intensity, mask)
        model = _diffuse_model(intensity, geom, index, name, tilt)
    log.info("diffuse estimate %s: %s (smoothing %s, %.1f%% excluded)", name,
             model.spectral_model.amplitude.quantity, smoothing, 0 if mask is None else 100 * (1 - mask.data.mean()))
    return model, mask
