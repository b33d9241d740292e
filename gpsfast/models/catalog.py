"""Survey catalogue: gammapy sky models <-> a FITS table with one row per source.

Each row carries the source name, GLON/GLAT and RA/DEC, the model type names,
spatial size columns, integral fluxes (0.05-1 TeV and 1-100 TeV, with errors
from the parameter covariance), Npred and TS per dataset when datasets are
given, a ``Flag`` bit mask (parameters at a bound, see `write_catalog`),
nesting / association columns from the detection stage's seeds (``Main``,
``Parent``, ``Assoc``), and every model parameter as columns
``<component>_<name>`` with ``_err``, ``_min``, ``_max`` and ``_frozen``.
The model structure (types, files, nodes) is kept per row in ``Model_Structure``
(JSON without parameter values), so reading gives back the same models:
parameter values, errors, limits, frozen flags and units come from the columns.
"""
import json
import logging
from pathlib import Path

import numpy as np
import astropy.units as u
from astropy.coordinates import SkyCoord
from astropy.table import Table
from gammapy.modeling.models import Models, SkyModel

from ..errors import InputError
from ..utils import atomic_output
from .bulk import build_models
from .catalog_external import catalogue_schema, read_cta_gps_catalog, read_hgps_catalog
from .yamlio import portable_filenames

__all__ = [
    "write_catalog",
    "read_catalog",
    "SurveyCatalog",
    "FLUX_BANDS",
    "FLAG_POSITION_AT_BOUND",
    "FLAG_SIZE_AT_BOUND",
    "FLAG_OTHER_AT_BOUND",
]

log = logging.getLogger(__name__)

#: Integral-flux bands (TeV) written to the catalogue.
FLUX_BANDS = ((0.05, 1.0), (1.0, 100.0))
#: ``Flag`` bits: a free position parameter (``lon_0``, ``lat_0``) at one of its bounds,
#: a free size parameter (``r_0``, ``sigma``, ``radius``, ``width``) at one of its bounds
#: (at the lower one: not resolved), any other free parameter at one of its bounds.
FLAG_POSITION_AT_BOUND, FLAG_SIZE_AT_BOUND, FLAG_OTHER_AT_BOUND = 1, 2, 4
_POSITION_PARAMETERS = ("lon_0", "lat_0")
_SIZE_BOUND_PARAMETERS = ("r_0", "sigma", "radius", "width")
_PAR_KEYS = ("value", "error", "min", "max", "frozen", "unit")
_SIZE_PARAMETERS = ("r_0", "sigma", "radius", "width", "e", "phi")


def _walk_parameters(node, prefix, out):
    """Collect the parameter lists of a model dict (recursively, through compound models)."""
    if isinstance(node, dict):
        if "parameters" in node and isinstance(node["parameters"], list):
            for par in node["parameters"]:
                out.append((f"{prefix}{par['name']}", par))
        for key, value in node.items():
            if key != "parameters" and isinstance(value, dict):
                _walk_parameters(value, f"{prefix}{key}_" if key.startswith("model") else prefix, out)
            elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
                for i, item in enumerate(value):
                    if key != "parameters":
                        _walk_parameters(item, f"{prefix}{key}{i}_", out)
    return out


def _structure(model, folder="."):
    """Model dict with parameter values stripped, and the (column prefix, parameter dict) pairs.

    Referenced files are stored relative to ``folder`` (the catalogue's) when inside it, else absolute.
    """
    data = portable_filenames(model.to_dict(full_output=True), folder)
    data.pop("name", None)
    data.pop("covariance", None)
    pars = []
    for comp in ("spectral", "spatial", "temporal"):
        if comp in data:
            _walk_parameters(data[comp], f"{comp}_", pars)
    for _, par in pars:
        for key in _PAR_KEYS:
            par.pop(key, None)
        par.pop("is_norm", None)
    return data, pars


def _flux_with_error(model, emin, emax):
    """Integral flux and its error propagated from the parameter covariance (numerical gradient)."""
    spec = model.spectral_model
    emin, emax = emin * u.TeV, emax * u.TeV
    flux = spec.integral(emin, emax)
    if not flux.unit.is_equivalent("cm-2 s-1"):
        # relative spectrum of a map cube: the flux lives in the template
        return np.nan, np.nan
    flux = flux.to_value("cm-2 s-1")
    pars = spec.parameters
    free = [p for p in pars if not p.frozen and p.error > 0]
    if not free:
        return flux, 0.0
    cov = spec.covariance.get_subcovariance(free).data
    grad = []
    for p in free:
        value = p.value
        step = 1e-6 * (abs(value) if value != 0 else 1.0)
        p.value = value + step
        up = spec.integral(emin, emax).to_value("cm-2 s-1")
        p.value = value - step
        down = spec.integral(emin, emax).to_value("cm-2 s-1")
        p.value = value
        grad.append((up - down) / (2 * step))
    grad = np.array(grad)
    return flux, float(np.sqrt(max(grad @ cov @ grad, 0.0)))


def _dataset_stats(sources, datasets):
    """Npred and TS (fit statistic without minus with the source) of every source in each dataset.

    Returns
    -------
    npred, ts : dict
        Source name -> {dataset name: value}; NaN where the dataset does not hold the source.
    """
    names = [model.name for model in sources]
    npred = {name: {} for name in names}
    ts = {name: {} for name in names}
    for dataset in datasets:
        held = set(dataset.models.names) if dataset.models is not None else set()
        stats = _cash_stats if _cash_map_dataset(dataset) else _stats_by_removal
        values = stats(dataset, [name for name in names if name in held])
        for name in names:
            npred[name][dataset.name], ts[name][dataset.name] = values.get(name, (np.nan, np.nan))
    return npred, ts


def _cash_map_dataset(dataset):
    return dataset.tag == "MapDataset" and dataset.stat_type == "cash" and dataset.counts is not None


def _cash_stats(dataset, names):
    """Npred and TS from the predicted counts: the statistic with ``npred - npred_source``, one pass per source."""
    from gammapy.stats import cash

    counts = dataset.counts.data.astype(float)
    mask = dataset.mask.data if dataset.mask is not None else np.ones(counts.shape, dtype=bool)
    npred_total = dataset.npred().data.astype(float)
    with_sources = float(np.sum(cash(counts[mask], npred_total[mask])))
    out = {}
    for name in names:
        npred = dataset.npred_signal(model_names=[name]).data.astype(float)
        without = float(np.sum(cash(counts[mask], (npred_total - npred)[mask])))
        out[name] = (float(npred.sum()), without - with_sources)
    return out


def _stats_by_removal(dataset, names):
    """Npred and TS with the dataset's own statistic, each source removed in turn (any dataset type)."""
    models = dataset.models
    with_sources = dataset.stat_sum()
    out = {}
    for name in names:
        npred = float(dataset.npred_signal(model_names=[name]).data.sum())
        dataset.models = Models([m for m in models if m.name != name])
        try:
            without = dataset.stat_sum()
        finally:
            dataset.models = models
        out[name] = (npred, float(without - with_sources))
    return out


def _size_columns(model):
    """Spatial size parameters (deg; ``e`` dimensionless), NaN where the model has none."""
    spatial = model.spatial_model
    names = spatial.parameters.names if spatial is not None else []
    row = {}
    for name in _SIZE_PARAMETERS:
        unit = "" if name == "e" else "deg"
        row[f"Size_{name}"] = spatial.parameters[name].quantity.to_value(unit) if name in names else np.nan
    return row


def _tag(component):
    if component is None:
        return ""
    return component.tag[0] if isinstance(component.tag, list) else component.tag


def write_catalog(models, path, datasets=None, overwrite=False, seeds=None):
    """Write sky models (and fit results) as a survey catalogue FITS table.

    ``Flag`` is a bit mask of free parameters that ended at one of their bounds (within
    1e-6 relative, or 1% of their error), where the fit wanted a value outside the range:
    `FLAG_POSITION_AT_BOUND` (1, the source needs a look), `FLAG_SIZE_AT_BOUND` (2; at the
    lower bound: not resolved), `FLAG_OTHER_AT_BOUND` (4).

    Parameters
    ----------
    models : `~gammapy.modeling.models.Models` or list of `~gammapy.modeling.models.SkyModel`
        Sources; models that are not `SkyModel` (e.g. backgrounds) are left out.
    path : str or `~pathlib.Path`
        Output FITS file (written atomically).
    datasets : `~gammapy.datasets.Datasets`, optional
        Datasets the models were fitted to: adds ``Npred_<name>`` and ``TS_<name>``
        columns for each dataset, and their sums ``Npred`` and ``TS``.
    overwrite : bool
        Replace an existing file.
    seeds : `~astropy.table.Table`, optional
        Seed table of the detection stage (`~gpsfast.detect.SeedCatalog` ``table``: ``name``,
        ``parent``, ``nested``, ``assoc``): a source named after a seed gets its ``Main``
        (not nested), ``Parent`` and ``Assoc`` (associated known source).

    Returns
    -------
    table : `~astropy.table.Table`
        The catalogue as written.
    """
    sources = [m for m in models if isinstance(m, SkyModel)]
    if not sources:
        raise InputError("write_catalog: no SkyModel to write")
    names = [m.name for m in sources]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise InputError(f"write_catalog: duplicate source names: {', '.join(dupes)}")
    par_columns = {}
    stats = _dataset_stats(sources, datasets) if datasets is not None else None
    detection = _seed_columns(seeds)
    folder = Path(path).parent
    rows = [_source_row(model, stats, detection, par_columns, folder) for model in sources]
    table = _rows_to_table(rows, par_columns)
    _check_ascii(table)
    table.meta["EXTNAME"] = "CATALOG"
    table.meta["ORIGIN"] = "gpsfast"
    with atomic_output(path, overwrite) as tmp:
        table.write(tmp, format="fits")
    return table


def _check_ascii(table):
    """FITS text is ASCII: refuse a non-ASCII string with the column and source (before anything is written)."""
    for name in table.colnames:
        if table[name].dtype.kind != "U":
            continue
        for i, value in enumerate(table[name]):
            if not str(value).isascii():
                bad = next(c for c in str(value) if not c.isascii())
                raise InputError(
                    f"write_catalog: source {str(table['Source_Name'][i])!r} (row {i + 1}), column {name!r}: "
                    f"{str(value)!r} has the non-ASCII character {bad!r} (U+{ord(bad):04X}); FITS text is ASCII: "
                    "rename it"
                )


def _column_for(base, unit, par_columns):
    """Column of a parameter: ``base``, or ``base`` with a unit suffix if ``base`` holds another kind of unit."""
    column = base
    if column in par_columns and not u.Unit(par_columns[column]).is_equivalent(u.Unit(unit)):
        try:
            text = u.Unit(unit).to_string("fits")
        except ValueError:
            text = str(unit)
        suffix = "_".join("".join(c if c.isalnum() else " " for c in text).split()) or "dimensionless"
        column = f"{base}__{suffix}"
    par_columns.setdefault(column, unit)
    return column


def _seed_columns(seeds):
    """Seed name -> ``Main``, ``Parent``, ``Assoc`` columns of the catalogue."""
    if seeds is None:
        return {}
    missing = [c for c in ("name", "parent", "nested", "assoc") if c not in seeds.colnames]
    if missing:
        raise InputError(f"write_catalog: the seed table lacks the column(s) {', '.join(missing)}")
    return {
        str(row["name"]): {
            "Main": not bool(row["nested"]),
            "Parent": _text(row["parent"]),
            "Assoc": _text(row["assoc"]),
        }
        for row in seeds
    }


def _text(value):
    return "" if np.ma.is_masked(value) else str(value).strip()


def _at_bound(par):
    """Whether a free parameter sits at its min or max (within 1e-6 relative, or 1% of its error)."""
    if par.frozen:
        return False
    error = par.error if np.isfinite(par.error) else 0.0
    for bound in (par.min, par.max):
        if np.isfinite(bound):
            distance = abs(par.value - bound)
            if distance <= 1e-6 * max(abs(par.value), abs(bound)) or distance <= 0.01 * error:
                return True
    return False


def _flag(model):
    """The ``Flag`` bits of a source (see `write_catalog`)."""
    flag = 0
    for component in (model.spectral_model, model.spatial_model, model.temporal_model):
        for par in component.parameters if component is not None else []:
            if not _at_bound(par):
                continue
            if component is model.spatial_model and par.name in _POSITION_PARAMETERS:
                flag |= FLAG_POSITION_AT_BOUND
            elif component is model.spatial_model and par.name in _SIZE_BOUND_PARAMETERS:
                flag |= FLAG_SIZE_AT_BOUND
            else:
                flag |= FLAG_OTHER_AT_BOUND
    return flag


def _source_row(model, stats, detection, par_columns, folder="."):
    """One catalogue row; registers the parameter columns (and their units) in ``par_columns``."""
    row = {"Source_Name": model.name}
    spatial = model.spatial_model
    if spatial is not None and "lon_0" in spatial.parameters.names:
        gal, icrs = spatial.position.galactic, spatial.position.icrs
        row.update(GLON=gal.l.deg, GLAT=gal.b.deg, RA=icrs.ra.deg, DEC=icrs.dec.deg)
    row["Spatial_Model"] = _tag(spatial)
    row["Spectral_Model"] = _tag(model.spectral_model)
    row["Temporal_Model"] = _tag(model.temporal_model)
    row["Frame"] = getattr(spatial, "frame", "") or ""
    row.update(_size_columns(model))
    for emin, emax in FLUX_BANDS:
        key = f"Flux_{emin:g}_{emax:g}TeV".replace(".", "p")
        row[key], row[key + "_err"] = _flux_with_error(model, emin, emax)
    if stats is not None:
        npred, ts = stats[0][model.name], stats[1][model.name]
        for name in npred:
            row[f"Npred_{name}"], row[f"TS_{name}"] = npred[name], ts[name]
        row["Npred"] = float(np.nansum(list(npred.values())))
        row["TS"] = float(np.nansum(list(ts.values())))
    structure, pars = _structure(model, folder)
    for (base, par_dict), par in zip(pars, _parameter_values(model, pars)):
        column = _column_for(base, par.unit, par_columns)
        par_dict["column"] = column
        conv = u.Unit(par.unit).to(u.Unit(par_columns[column]))
        row[column] = par.value * conv
        row[column + "_err"] = par.error * conv
        row[column + "_min"] = par.min * conv
        row[column + "_max"] = par.max * conv
        row[column + "_frozen"] = bool(par.frozen)
        row[column + "_unit"] = str(par.unit)
    row["Model_Structure"] = json.dumps(structure)
    row.update(Flag=_flag(model), **detection.get(model.name, {"Main": True, "Parent": "", "Assoc": ""}))
    return row


def _parameter_values(model, pars):
    """Parameters of a sky model matching the serialised ones of `_structure`, in order.

    A component whose serialisation drops its parameters (gammapy's
    ``ConstantSpatialModel``) contributes none.
    """
    out = []
    for name, comp in (("spectral", model.spectral_model), ("spatial", model.spatial_model),
                       ("temporal", model.temporal_model)):
        n_serialised = sum(1 for column, _ in pars if column.startswith(name + "_"))
        if comp is not None and n_serialised:
            if n_serialised != len(comp.parameters):
                raise InputError(f"source {model.name!r}: cannot map the {name} parameters to catalogue columns")
            out.extend(list(comp.parameters))
    return out


def _rows_to_table(rows, par_columns):
    names = []
    for row in rows:
        for key in row:
            if key not in names:
                names.append(key)
    table = Table()
    for name in names:
        values = [row.get(name) for row in rows]
        sample = next(v for v in values if v is not None)
        if isinstance(sample, (bool, np.bool_)):
            table[name] = np.array([bool(v) if v is not None else False for v in values])
        elif isinstance(sample, str):
            table[name] = np.array([v if v is not None else "" for v in values], dtype=str)
        elif isinstance(sample, (int, np.integer)) and not isinstance(sample, bool):
            table[name] = np.array([v if v is not None else 0 for v in values], dtype=np.int32)
        else:
            table[name] = np.array([v if v is not None else np.nan for v in values], dtype=float)
        base = name
        for suffix in ("_err", "_min", "_max"):
            if name.endswith(suffix):
                base = name[: -len(suffix)]
        if base in par_columns and not name.endswith(("_frozen", "_unit")):
            table[name].unit = u.Unit(par_columns[base]) if par_columns[base] else None
        elif name in ("GLON", "GLAT", "RA", "DEC") or (name.startswith("Size_") and name != "Size_e"):
            table[name].unit = u.deg
        elif name.startswith("Flux_"):
            table[name].unit = u.Unit("cm-2 s-1")
    return table


_PAR_SUFFIXES = ("_err", "_min", "_max", "_frozen", "_unit")


def _cell_float(row, column, where):
    try:
        return float(row[column])
    except (TypeError, ValueError):
        raise InputError(f"{where}: column {column!r} is not a number ({row[column]!r})") from None


def _parameter_from_row(row, column, colnames, where):
    """value, error, min, max, frozen and unit of one parameter column; non-finite or inconsistent values refused."""
    missing = [column + s for s in ("",) + _PAR_SUFFIXES if column + s not in colnames]
    if missing:
        raise InputError(f"{where}: parameter column(s) {', '.join(map(repr, missing))} missing")
    raw_unit = row[column + "_unit"]
    unit = "" if np.ma.is_masked(raw_unit) else str(raw_unit).strip()
    col_unit = colnames[column]
    try:
        conv = u.Unit(col_unit).to(u.Unit(unit)) if col_unit and unit and col_unit != unit else 1.0
    except (ValueError, TypeError, u.UnitsError):
        raise InputError(f"{where}: column {column!r}: unit {unit!r} (column unit {col_unit!r}) is not a valid "
                         "or compatible unit") from None
    value, error, vmin, vmax = (_cell_float(row, column + s, where) * conv for s in ("", "_err", "_min", "_max"))
    if not np.isfinite(value):
        raise InputError(f"{where}: column {column!r} value is {value} (not finite)")
    if np.isnan(error):
        error = 0.0
    if vmin > vmax:
        raise InputError(f"{where}: column {column!r}: min={vmin} is larger than max={vmax}")
    return dict(value=value, error=error, min=vmin, max=vmax, frozen=bool(row[column + "_frozen"]), unit=unit)


def _resolve_filenames(node, folder):
    """Relative ``filename`` entries of a model dict taken relative to the catalogue's folder."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        if key == "filename" and isinstance(value, str) and value and not Path(value).is_absolute():
            node[key] = str(Path(folder) / value)
        elif isinstance(value, (dict, list)):
            _resolve_filenames(value, folder)


def _row_to_model(row, colnames, where=None, folder=None):
    name = str(row["Source_Name"]).strip()
    where = f"catalogue row {name!r}" if where is None else f"{where} ({name!r})"
    try:
        structure = json.loads(str(row["Model_Structure"]))
    except json.JSONDecodeError as exc:
        raise InputError(f"{where}: Model_Structure is not valid JSON ({exc})") from None
    if not isinstance(structure, dict) or "spectral" not in structure:
        raise InputError(f"{where}: Model_Structure has no spectral model")
    pars = []
    for comp in ("spectral", "spatial", "temporal"):
        if comp in structure:
            _walk_parameters(structure[comp], f"{comp}_", pars)
    for base, par in pars:
        column = par.pop("column", base)
        par.update(_parameter_from_row(row, column, colnames, where))
    structure["name"] = name
    if folder is not None:
        _resolve_filenames(structure, folder)
    try:
        return SkyModel.from_dict(structure)
    except InputError as exc:
        raise InputError(f"{where}: {exc}") from None
    except Exception as exc:
        kinds = ", ".join(f"{c} {structure[c].get('type')!r}" for c in ("spectral", "spatial", "temporal")
                          if isinstance(structure.get(c), dict))
        raise InputError(f"{where}: cannot build the model ({kinds}): {type(exc).__name__}: "
                         f"{str(exc).splitlines()[0][:200] if str(exc) else ''}") from None


class SurveyCatalog:
    """A survey catalogue written by `write_catalog`, behaving like gammapy's ``SourceCatalog``.

    Parameters
    ----------
    table : `~astropy.table.Table`
        Catalogue table (one row per source).
    """

    def __init__(self, table, path=None):
        self.table = table
        self.path = path
        names = [str(n).strip() for n in table["Source_Name"]]
        first = {}
        for i, name in enumerate(names):
            if name in first:
                raise InputError(f"{self._label()}: duplicate source name {name!r} in rows {first[name] + 1} "
                                 f"and {i + 1}")
            first[name] = i
        self._index = first

    def _label(self):
        return str(self.path) if self.path is not None else "catalogue"

    @classmethod
    def read(cls, path):
        """Read the catalogue FITS file."""
        path = Path(path)
        if not path.is_file():
            raise InputError(f"catalogue file not found: {path}")
        try:
            table = Table.read(path, hdu="CATALOG", mask_invalid=False)
        except Exception as exc:
            raise InputError(f"{path}: not a gpsfast catalogue ({exc})") from None
        for column in ("Source_Name", "Model_Structure"):
            if column not in table.colnames:
                raise InputError(f"{path}: catalogue has no {column!r} column")
        return cls(table, path=path)

    def __len__(self):
        return len(self.table)

    def _column_units(self):
        return {name: (str(col.unit) if col.unit is not None else "") for name, col in self.table.columns.items()}

    def _model(self, index, units):
        folder = Path(self.path).parent if self.path is not None else None
        return _row_to_model(self.table[index], units, where=f"{self._label()}: row {index + 1}", folder=folder)

    def __getitem__(self, key):
        """The `~gammapy.modeling.models.SkyModel` of a source, by name or row index."""
        if isinstance(key, str):
            if key not in self._index:
                raise KeyError(f"no source named {key!r} in the catalogue")
            key = self._index[key]
        return self._model(key, self._column_units())

    def to_models(self, strict=True, bad=None):
        """All sources as `~gammapy.modeling.models.Models`.

        Parameters
        ----------
        strict : bool
            Refuse the table at the first bad row (default); with ``False``
            bad rows are left out with a logged warning.
        bad : list, optional
            Receives the `~gpsfast.errors.InputError` of each row left out
            (its message names file, row, source and column).
        """
        units = self._column_units()
        models = []
        for i in range(len(self.table)):
            try:
                models.append(self._model(i, units))
            except InputError as exc:
                if strict:
                    raise
                log.warning("%s: not converted", exc)
                if bad is not None:
                    bad.append(exc)
        return build_models(models)

    @property
    def positions(self):
        """Source positions (`~astropy.coordinates.SkyCoord`, galactic)."""
        return SkyCoord(self.table["GLON"], self.table["GLAT"], unit="deg", frame="galactic")


def read_catalog(path, strict=True):
    """Read a catalogue FITS table into gammapy sky models.

    Three schemas are recognised: gpsfast's survey catalogue (`write_catalog`),
    the CTA-GPS gammapy catalogue and H.E.S.S. HGPS (see
    `gpsfast.models.catalog_external`); any other table gives an
    `~gpsfast.errors.InputError` naming the known schemas.

    Parameters
    ----------
    path : str or `~pathlib.Path`
        Catalogue FITS file.
    strict : bool
        Refuse the table at the first bad row (default), else leave bad rows
        out with a logged warning naming file, row and column.

    Returns
    -------
    models : `~gammapy.modeling.models.Models`
        One `~gammapy.modeling.models.SkyModel` per row (per component for HGPS).
    """
    return read_catalog_detailed(path, strict=strict)


def read_catalog_detailed(path, strict=True, bad=None):
    """`read_catalog`, also giving the rows left out in lenient mode (``bad`` receives their errors)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"catalogue file not found: {path}")
    schema, hdu = catalogue_schema(path)
    if schema == "hgps":
        return read_hgps_catalog(path)
    if schema == "cta-gps":
        return read_cta_gps_catalog(path, hdu=hdu, strict=strict, bad=bad)
    return SurveyCatalog.read(path).to_models(strict=strict, bad=bad)
