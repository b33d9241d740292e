"""ctools / GammaLib XML model files <-> gammapy `~gammapy.modeling.models.Models`.

- `read_xml` / `read_xml_detailed` (`gpsfast.models.xml.read`) and `write_xml`
  (`gpsfast.models.xml.write`);
- one type registry serving both (`gpsfast.models.xml.registry`): an entry per
  GammaLib type, with its XML name(s), gammapy class and parameter mapping
  (`gpsfast.models.xml.params`: scale and unit conversion both ways); the
  entries are in `gpsfast.models.xml.spectral`, `~gpsfast.models.xml.spatial`
  and `~gpsfast.models.xml.temporal`. Adding a type is adding one entry.

Conventions (GammaLib ``GModelPar``): a parameter's value, error, min and max are
the XML attributes times ``scale`` (min and max swap when ``scale < 0``);
GammaLib works in MeV, cm, s and degrees, gammapy models here in TeV, cm, s
and degrees. Indices are written negative in GammaLib (``Index = -index``).

Mapping (GammaLib type, legacy names in brackets -> gammapy class; * = gpsfast
class reproducing GammaLib's formula where gammapy's differs):

=================================================  ==============================================
Spectral
PowerLaw [Prefactor/PivotEnergy|Scale]             PowerLawSpectralModel
PowerLaw [PhotonFlux], PowerLaw2 [Integral]        GammaLibPowerLaw2SpectralModel* (Index -1 too)
PowerLaw [EnergyFlux]                              PowerLawEnergyFluxSpectralModel*
ExponentialCutoffPowerLaw [ExpCutoff]              ExpCutoffPowerLawSpectralModel (lambda_=1/Ecut)
  (InverseCutoffEnergy)                            ExpCutoffPowerLawSpectralModel (lambda_)
SuperExponentialCutoffPowerLaw [PLSuperExpCutoff]  GammaLibSuperExpCutoffPowerLawSpectralModel (Index2)
BrokenPowerLaw                                     BrokenPowerLawSpectralModel
SmoothBrokenPowerLaw                               GammaLibSmoothBrokenPowerLawSpectralModel*
LogParabola [norm/alpha/beta/Eb]                   LogParabolaSpectralModel (natural log)
Gaussian                                           GaussianSpectralModel
Constant [ConstantValue]                           ConstantSpectralModel
FileFunction                                       FileFunctionSpectralModel*
NodeFunction                                       NodeFunctionSpectralModel*
BinFunction                                        BinFunctionSpectralModel*
Composite / Multiplicative                         CompoundSpectralModel (+ / *)
Exponential                                        ExponentialSpectralModel*
TableModel                                         GammaLibTableSpectralModel* (FITS table)
Spatial
PointSource [SkyDirFunction]                       PointSpatialModel
RadialDisk [DiskFunction]                          GammaLibDiskSpatialModel* (hard edge)
RadialGaussian [GaussFunction]                     GammaLibGaussianSpatialModel*
RadialShell [ShellFunction]                        GammaLibShellSpatialModel*
RadialRing                                         GammaLibRingSpatialModel* ([Radius, Radius+Width])
RadialGeneralGaussian                              GeneralizedGaussianSpatialModel (e=0)
GaussianProfile                                    GammaLibGaussianProfileSpatialModel* (100-node table)
EllipticalDisk                                     GammaLibEllipticalDiskSpatialModel*
EllipticalGaussian [EllipticalGauss]               GammaLibEllipticalGaussianSpatialModel* (3 r_eff)
EllipticalGeneralGaussian                          GammaLibEllipticalGeneralGaussianSpatialModel* (5 a)
DiffuseIsotropic [ConstantValue]                   ConstantSpatialModel
DiffuseMap [SpatialMap]                            GammaLibDiffuseMapSpatialModel* (norm, GammaLib pixels)
DiffuseMapCube [MapCubeFunction]                   GammaLibDiffuseCubeSpatialModel* (extrapolated in E)
Composite                                          GammaLibCompositeSpatialModel* (scale-weighted)
DMBurkertProfile, DMEinastoProfile, DMZhaoProfile  GammaLibDM{Burkert,Einasto,Zhao}SpatialModel*
Temporal
Constant                                           ConstantTemporalModel (GammaLibConstantTemporalModel*
                                                   when Normalization is not a fixed 1)
PhaseCurve                                         GammaLibPhaseCurveTemporalModel* (TT)
LightCurve                                         GammaLibLightCurveTemporalModel* (TT)
Background
CTAIrfBackground, CTACubeBackground,               FoVBackgroundModel (PowerLawNormSpectralModel)
CTAAeffBackground
=================================================  ==============================================

Written only (gammapy's own models GammaLib lacks, with a warning saying what differs):
``GaussianSpatialModel`` and ``DiskSpatialModel`` as the radial or elliptical
GammaLib type, ``ShellSpatialModel`` / ``Shell2SpatialModel`` as RadialShell,
an elliptical ``GeneralizedGaussianSpatialModel`` as EllipticalGeneralGaussian,
``SmoothBrokenPowerLawSpectralModel`` (beta times the sign of the break),
``TemplateSpatialModel`` as DiffuseMap / DiffuseMapCube.

Elliptical models: ``r_0`` = MajorRadius, ``e = sqrt(1 - (b/a)^2)``, and ``phi``
(model frame) = PA (east of celestial north) minus the position angle of the
model frame's north at the centre. Types listed in `NOT_REPRESENTABLE` (none at
present) give an `~gpsfast.errors.InputError` saying why; instrument backgrounds that are not
sky models (`SKIPPED_SOURCE_TYPES`) are skipped with a warning.
"""
from .read import MAX_SOURCES, MAX_XML_DEPTH, XmlReadResult, read_xml, read_xml_detailed
from .registry import NOT_REPRESENTABLE, SKIPPED_SOURCE_TYPES, SUPPORTED_XML_TYPES, Par, XmlType, register
from .write import write_xml

__all__ = [
    "MAX_SOURCES",
    "MAX_XML_DEPTH",
    "NOT_REPRESENTABLE",
    "SKIPPED_SOURCE_TYPES",
    "SUPPORTED_XML_TYPES",
    "Par",
    "XmlReadResult",
    "XmlType",
    "read_xml",
    "read_xml_detailed",
    "register",
    "write_xml",
]
