"""Sky-model interoperability: ctools/GammaLib XML, gammapy YAML and survey catalogue FITS.

- `read_xml` / `write_xml`: ctools / GammaLib XML model files <-> gammapy
  `~gammapy.modeling.models.Models` (conventions, the type mapping and its
  registry are in `gpsfast.models.xml`).
- `write_catalog` / `read_catalog` / `SurveyCatalog`: the survey catalogue, a
  FITS table with one row per source that reads back into the same models;
  `read_catalog` also reads the CTA-GPS gammapy catalogue and H.E.S.S. HGPS
  (`gpsfast.models.catalog_external`).
- `convert`: file to file (``.xml``, ``.yaml``/``.yml``, ``.fits``), as used by
  ``gpsfast convert IN OUT``.
- `read_yaml_models` / `write_yaml_models`: gammapy YAML, refusing duplicate keys
  and writing referenced files relative to the YAML file.

Model files are untrusted input: files they reference are read only from the
model file's folder (and folders the caller allows), environment variables in
their names are expanded only when asked (`gpsfast.models.xmlfiles`), and every
error names file, line, source and value. Big files read in memory linear in the
number of sources (`gpsfast.models.bulk`: no dense covariance until asked).

Where gammapy's formula differs from GammaLib's, a gammapy-compatible class
here reproduces GammaLib exactly (``GammaLib*``, ``NodeFunction``,
``FileFunction``, ...). Importing this package registers those classes in
gammapy's model registries, so ``Models.read`` of a YAML file that uses them
needs ``import gpsfast.models`` first.

Examples
--------
>>> from gpsfast.models import read_xml, write_catalog  # doctest: +SKIP
>>> models = read_xml("crab.xml")  # doctest: +SKIP
>>> models.write("crab.yaml")  # doctest: +SKIP
>>> write_catalog(models, "catalog.fits", datasets=datasets)  # doctest: +SKIP
"""
from .spatial import (
    GammaLibCompositeSpatialModel,
    GammaLibDiskSpatialModel,
    GammaLibEllipticalDiskSpatialModel,
    GammaLibEllipticalGaussianSpatialModel,
    GammaLibEllipticalGeneralGaussianSpatialModel,
    GammaLibGaussianSpatialModel,
    GammaLibRingSpatialModel,
    GammaLibShellSpatialModel,
)
from .spectral import (
    BinFunctionSpectralModel,
    ExponentialSpectralModel,
    FileFunctionSpectralModel,
    GammaLibPowerLaw2SpectralModel,
    GammaLibSmoothBrokenPowerLawSpectralModel,
    GammaLibSuperExpCutoffPowerLawSpectralModel,
    NodeFunctionSpectralModel,
    PowerLawEnergyFluxSpectralModel,
)
from .spectral_table import GammaLibTableSpectralModel
from .diffuse import GammaLibDiffuseCubeSpatialModel, GammaLibDiffuseMapSpatialModel
from .profiles import GammaLibGaussianProfileSpatialModel
from .dmprofiles import GammaLibDMBurkertSpatialModel, GammaLibDMEinastoSpatialModel, GammaLibDMZhaoSpatialModel
from .temporal import GammaLibConstantTemporalModel, GammaLibLightCurveTemporalModel, GammaLibPhaseCurveTemporalModel
from .sersic import GeneralizedGaussianSpatialModel, accelerate_models, restore_gammapy_models
from .catalog import (
    FLAG_OTHER_AT_BOUND,
    FLAG_POSITION_AT_BOUND,
    FLAG_SIZE_AT_BOUND,
    SurveyCatalog,
    read_catalog,
    write_catalog,
)
from .convert import convert
from .xml import SUPPORTED_XML_TYPES, read_xml, read_xml_detailed, write_xml
from .yamlio import read_yaml_models, write_yaml_models

__all__ = [
    "FLAG_POSITION_AT_BOUND",
    "FLAG_SIZE_AT_BOUND",
    "FLAG_OTHER_AT_BOUND",
    "GeneralizedGaussianSpatialModel",
    "accelerate_models",
    "restore_gammapy_models",
    "read_xml",
    "read_xml_detailed",
    "read_yaml_models",
    "write_yaml_models",
    "write_xml",
    "write_catalog",
    "read_catalog",
    "SurveyCatalog",
    "convert",
    "SUPPORTED_XML_TYPES",
    "BinFunctionSpectralModel",
    "ExponentialSpectralModel",
    "FileFunctionSpectralModel",
    "GammaLibPowerLaw2SpectralModel",
    "GammaLibSmoothBrokenPowerLawSpectralModel",
    "GammaLibSuperExpCutoffPowerLawSpectralModel",
    "NodeFunctionSpectralModel",
    "PowerLawEnergyFluxSpectralModel",
    "GammaLibTableSpectralModel",
    "GammaLibDMBurkertSpatialModel",
    "GammaLibDMEinastoSpatialModel",
    "GammaLibDMZhaoSpatialModel",
    "GammaLibCompositeSpatialModel",
    "GammaLibDiffuseCubeSpatialModel",
    "GammaLibDiffuseMapSpatialModel",
    "GammaLibDiskSpatialModel",
    "GammaLibEllipticalDiskSpatialModel",
    "GammaLibEllipticalGaussianSpatialModel",
    "GammaLibEllipticalGeneralGaussianSpatialModel",
    "GammaLibRingSpatialModel",
    "GammaLibGaussianSpatialModel",
    "GammaLibGaussianProfileSpatialModel",
    "GammaLibShellSpatialModel",
    "GammaLibConstantTemporalModel",
    "GammaLibLightCurveTemporalModel",
    "GammaLibPhaseCurveTemporalModel",
]
