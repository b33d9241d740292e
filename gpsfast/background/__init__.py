"""Background of survey fits: exclusion masks, FoV background normalisation and tilt, the iteration.

- `exclusion_mask`: the regions of significant emission, found by hysteresis
  thresholding of significance maps (scikit-image's
  ``apply_hysteresis_threshold``), combined over the datasets' maps and
  optionally dilated, as a gammapy exclusion mask (True where the background can
  be fitted);
- `fit_background`: the FoV background normalisation and tilt of every dataset
  (`~gammapy.modeling.models.FoVBackgroundModel`) fitted outside the exclusion
  mask, the sources' predicted counts held fixed (cached once as one npred
  template per dataset), on `gpsfast.fit.fast_datasets`;
- the large-scale diffuse component is in `gpsfast.background.diffuse` (`diffuse_from_file`,
  `estimate_diffuse`): `fit_background` fits its normalisation with ``free=``;
- `iterate_background`: the survey sequence, first background fit -> source pass
  -> exclusion mask from the residual significance -> background (and diffuse
  normalisation) refitted.
"""
from .diffuse import diffuse_from_file, estimate_diffuse
from .exclusion import exclusion_mask
from .fov import background_models, fit_background
from .iteration import BackgroundIteration, iterate_background

__all__ = [
    "BackgroundIteration", "background_models", "diffuse_from_file", "estimate_diffuse", "exclusion_mask",
    "fit_background", "iterate_background",
]
