"""Catalogues made by others, read into gammapy sky models: the CTA-GPS gammapy catalogue and H.E.S.S. HGPS.

CTA-GPS gammapy catalogue (one row per source, no units in the header):

==================  ===============================================================
column              meaning (unit)
==================  ===============================================================
Name                source name
GLON, GLAT          position (deg), with ``err_GLON``, ``err_GLAT``
SpatialModel        ``Point``, ``GeneralizedGaussian`` or ``ShellOut``
Reff                generalised-Gaussian ``r_0`` / outer shell radius (deg)
eta                 generalised-Gaussian shape index
fwidth              shell width as a fraction of ``Reff``
e, phi              eccentricity, position angle (deg, gammapy convention)
SpetralModel (sic)  ``PowerLaw`` (``PL``) or ``LogParabola`` (``LP``)
amplitude           differential flux at ``Eref`` (cm-2 s-1 TeV-1)
alpha, beta         index / log-parabola ``alpha`` and ``beta`` (natural log)
Eref                reference energy (TeV)
==================  ===============================================================

Each parameter column may have an ``err_`` column (its error). The other
columns (``R68``, ``NestFlag``, ``Main``, ``Parent``, ``F_subTeV``,
``F_postTeV``, ``Npred_*``, ``Asso_*``, ``TSnull*``, ``TSbkg``, ``TSall``) are
results, not model parameters, and are not read. The models are gammapy's
``PointSpatialModel``, ``GeneralizedGaussianSpatialModel``,
``Shell2SpatialModel`` (``r_0`` = ``Reff``, ``eta`` = ``fwidth``),
``PowerLawSpectralModel`` and ``LogParabolaSpectralModel``, in galactic
coordinates.

HGPS (``hgps_catalog_v1.fits.gz``, HDU ``HGPS_SOURCES``) is read with gammapy's
`~gammapy.catalog.SourceCatalogHGPS` (its multi-Gaussian sources give one model
per component).
"""
import logging
import re
import warnings

import numpy as np
from astropy.io import fits
from astropy.table import Table
from gammapy.modeling import Parameter
from gammapy.modeling.models import (
    GeneralizedGaussianSpatialModel,
    LogParabolaSpectralModel,
    PointSpatialModel,
    PowerLawSpectralModel,
    Shell2SpatialModel,
    SkyModel,
)

from ..errors import InputError
from .bulk import build_models
from .xml.common import align

__all__ = ["catalogue_schema", "read_cta_gps_catalog", "read_hgps_catalog", "CTA_GPS_COLUMNS"]

log = logging.getLogger(__name__)

#: Columns that identify the CTA-GPS gammapy catalogue (``SpetralModel`` or ``SpectralModel`` besides).
CTA_GPS_COLUMNS = ("Name", "GLON", "GLAT", "SpatialModel", "amplitude", "alpha", "Eref")
_SPECTRAL_COLUMNS = ("SpetralModel", "SpectralModel")
_SPATIAL_KINDS = {"point": "point", "pointspatialmodel": "point", "generalizedgaussian": "gg",
                  "generalisedgaussian": "gg", "generalizedgaussianspatialmodel": "gg", "shellout": "shell",
                  "shell2spatialmodel": "shell"}
_SPECTRAL_KINDS = {"pl": "pl", "powerlaw": "pl", "powerlawspectralmodel": "pl", "lp": "lp", "logparabola": "lp",
                   "logparabolaspectralmodel": "lp"}

KNOWN_SCHEMAS = ("gpsfast survey catalogue (HDU CATALOG with Source_Name and Model_Structure), "
                 "CTA-GPS gammapy catalogue (Name, GLON, GLAT, SpatialModel, SpetralModel, amplitude, alpha, "
                 "Eref, ...), H.E.S.S. HGPS catalogue (HDU HGPS_SOURCES)")


def catalogue_schema(path):
    """Which catalogue schema a FITS file holds.

    Returns
    -------
    schema : str
        ``"gpsfast"``, ``"hgps"`` or ``"cta-gps"``.
    hdu : int or str
        HDU of the table.

    Raises
    ------
    InputError
        Not a FITS file, or no known schema (the message lists the known ones and what the file holds).
    """
    try:
        with fits.open(path, memmap=False) as hdul:
            found = []
            for index, hdu in enumerate(hdul):
                columns = list(hdu.columns.names) if isinstance(hdu, fits.BinTableHDU) else []
                name = hdu.name.strip().upper()
                if name == "CATALOG" and {"Source_Name", "Model_Structure"} <= set(columns):
                    return "gpsfast", "CATALOG"
                if name == "HGPS_SOURCES":
                    return "hgps", "HGPS_SOURCES"
                if set(CTA_GPS_COLUMNS) <= set(columns) and set(_SPECTRAL_COLUMNS) & set(columns):
                    return "cta-gps", index
                found.append(f"{hdu.name or index}: {', '.join(columns[:8]) or 'no table'}"
                             + (", ..." if len(columns) > 8 else ""))
    except OSError as exc:
        raise InputError(f"{path}: not a FITS catalogue ({type(exc).__name__})") from None
    raise InputError(f"{path}: not a gpsfast catalogue nor another known schema ({KNOWN_SCHEMAS}); "
                     f"the file holds {'; '.join(found)}")


def _key(text):
    return re.sub(r"[^a-z0-9]", "", str(text).lower())


class _Row:
    """Cells of one CTA-GPS row, refusing missing or non-finite numbers with file, row, source and column."""

    def __init__(self, row, colnames, where):
        self.row, self.colnames, self.where = row, colnames, where

    def number(self, column):
        if column not in self.colnames:
            raise InputError(f"{self.where}: column {column!r} is missing")
        value = self.row[column]
        value = np.nan if np.ma.is_masked(value) else float(value)
        if not np.isfinite(value):
            raise InputError(f"{self.where}: column {column!r} value is {value} (not finite)")
        return value

    def error(self, column):
        name = f"err_{column}"
        if name not in self.colnames or np.ma.is_masked(self.row[name]):
            return 0.0
        value = float(self.row[name])
        return value if np.isfinite(value) else 0.0

    def parameter(self, name, column, unit="", **kwargs):
        return Parameter(name, self.number(column), unit=unit, error=self.error(column), **kwargs)


def _spatial(cells, kind):
    position = dict(lon_0=cells.parameter("lon_0", "GLON", "deg"),
                    lat_0=cells.parameter("lat_0", "GLAT", "deg", min=-90, max=90), frame="galactic")
    if not -90 <= position["lat_0"].value <= 90:
        raise InputError(f"{cells.where}: column 'GLAT' value {position['lat_0'].value} is not a latitude")
    if kind == "point":
        return PointSpatialModel(**position)
    r_0 = cells.parameter("r_0", "Reff", "deg", min=0)
    if r_0.value <= 0:
        raise InputError(f"{cells.where}: column 'Reff' value {r_0.value} must be > 0")
    if kind == "shell":
        eta = cells.parameter("eta", "fwidth", min=0, max=1)
        if not 0 < eta.value <= 1:
            raise InputError(f"{cells.where}: column 'fwidth' value {eta.value} must be in (0, 1]")
        return Shell2SpatialModel(r_0=r_0, eta=eta, **position)
    eta = cells.parameter("eta", "eta", min=0.01, max=1)
    e = cells.parameter("e", "e", min=0, max=1)
    if not 0 <= e.value < 1:
        raise InputError(f"{cells.where}: column 'e' value {e.value} must be in [0, 1)")
    return GeneralizedGaussianSpatialModel(r_0=r_0, eta=eta, e=e, phi=cells.parameter("phi", "phi", "deg"),
                                           **position)


def _spectral(cells, kind):
    amplitude = cells.parameter("amplitude", "amplitude", "cm-2 s-1 TeV-1")
    reference = cells.parameter("reference", "Eref", "TeV", frozen=True)
    if reference.value <= 0:
        raise InputError(f"{cells.where}: column 'Eref' value {reference.value} must be > 0")
    if kind == "pl":
        return PowerLawSpectralModel(amplitude=amplitude, index=cells.parameter("index", "alpha"), reference=reference)
    return LogParabolaSpectralModel(amplitude=amplitude, alpha=cells.parameter("alpha", "alpha"),
                                    beta=cells.parameter("beta", "beta"), reference=reference)


def _cta_gps_model(row, colnames, spectral_column, where):
    cells = _Row(row, colnames, where)
    spatial_name, spectral_name = str(row["SpatialModel"]).strip(), str(row[spectral_column]).strip()
    spatial_kind = _SPATIAL_KINDS.get(_key(spatial_name))
    if spatial_kind is None:
        raise InputError(f"{where}: unknown SpatialModel {spatial_name!r} (known: Point, GeneralizedGaussian, "
                         "ShellOut)")
    spectral_kind = _SPECTRAL_KINDS.get(_key(spectral_name))
    if spectral_kind is None:
        raise InputError(f"{where}: unknown {spectral_column} {spectral_name!r} (known: PowerLaw / PL, "
                         "LogParabola / LP)")
    spectral, spatial = align(_spectral(cells, spectral_kind)), align(_spatial(cells, spatial_kind))
    return SkyModel(spectral_model=spectral, spatial_model=spatial, name=str(row["Name"]).strip())


def read_cta_gps_catalog(path, hdu=1, strict=True, bad=None):
    """Read the CTA-GPS gammapy catalogue (see `gpsfast.models.catalog_external`) into sky models.

    Parameters
    ----------
    path : str or `~pathlib.Path`
        FITS file.
    hdu : int or str
        HDU of the table.
    strict : bool
        Refuse the table at the first bad row (default), else leave bad rows out.
    bad : list, optional
        Receives the `~gpsfast.errors.InputError` of each row left out.

    Returns
    -------
    models : `~gammapy.modeling.models.Models`
    """
    table = Table.read(path, hdu=hdu)
    spectral_column = next(c for c in _SPECTRAL_COLUMNS if c in table.colnames)
    colnames = set(table.colnames)
    models, first = [], {}
    for i, row in enumerate(table):
        name = str(row["Name"]).strip()
        where = f"{path}: row {i + 1} ({name!r})"
        try:
            if not name:
                raise InputError(f"{where}: empty Name")
            if name in first:
                raise InputError(f"{where}: duplicate source name (first in row {first[name] + 1})")
            models.append(_cta_gps_model(row, colnames, spectral_column, where))
            first[name] = i
        except InputError as exc:
            if strict:
                raise
            log.warning("%s: not converted", exc)
            if bad is not None:
                bad.append(exc)
    return build_models(models)


def read_hgps_catalog(path):
    """Read gammapy's HGPS catalogue file with `~gammapy.catalog.SourceCatalogHGPS` into sky models."""
    from gammapy.catalog import SourceCatalogHGPS

    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore", RuntimeWarning)
            models = SourceCatalogHGPS(str(path)).to_models()
    except Exception as exc:
        raise InputError(f"{path}: cannot read the HGPS catalogue with gammapy ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0][:200] if str(exc) else ''})") from None
    return build_models(list(models))
