"""Survey mode: the plane cut into overlapping regions of interest, processed independently, merged.

Each ROI is a `run_pipeline` task in its own folder (resumable through its
``state.json``); the tasks run in a joblib process pool or on a dask cluster.
The ROI catalogues are merged keeping, from each ROI, only the sources in its
core (the ROI minus half the overlap on each side), so that the cores tile the
strip and a source at a seam is kept once.
"""
import json
import logging
from pathlib import Path

import astropy.units as u
import joblib
import numpy as np
import yaml
from astropy.coordinates import SkyCoord
from astropy.table import Table, vstack
from gammapy.modeling.models import Models

from ..errors import InputError
from ..models import read_catalog, write_xml
from ..simulate import make_survey, read_survey, write_survey
from ..utils import atomic_output, write_text_atomic
from .config import PipelineConfig
from .run import run_pipeline

__all__ = ["make_rois", "run_survey"]

log = logging.getLogger(__name__)


def make_rois(glon_min, glon_max, glat, width, height, overlap):
    """Overlapping regions of interest along the plane.

    Parameters
    ----------
    glon_min, glon_max : float
        Longitude range of the strip (deg, increasing, may cross 0 as e.g. -5 to 5).
    glat : float
        Latitude of the strip centre (deg).
    width, height : float
        ROI size (deg).
    overlap : float
        Overlap of neighbouring ROIs in longitude (deg), smaller than ``width``.

    Returns
    -------
    rois : `~astropy.table.Table`
        Columns ``name``, ``glon``, ``glat``, ``width``, ``height``, ``core_min``,
        ``core_max`` (longitudes of the core, deg).
    """
    if not glon_max > glon_min:
        raise InputError(f"survey.glon_max ({glon_max}) must be larger than survey.glon_min ({glon_min})")
    if not 0 <= overlap < width:
        raise InputError(f"survey.roi_overlap ({overlap}) must be in [0, roi_width = {width})")
    step = width - overlap
    n_rois = max(1, int(np.ceil((glon_max - glon_min - overlap) / step)))
    centers = glon_min + width / 2 + step * np.arange(n_rois)
    core_min = centers - step / 2
    core_max = centers + step / 2
    core_min[0], core_max[-1] = -np.inf, np.inf
    return Table(
        {
            "name": [f"roi-{i + 1:02d}" for i in range(n_rois)],
            "glon": centers,
            "glat": np.full(n_rois, glat),
            "width": np.full(n_rois, width),
            "height": np.full(n_rois, height),
            "core_min": core_min,
            "core_max": core_max,
        }
    )


def _survey_datasets(config, folder, rois):
    """The strip's datasets: simulated once for the whole strip (one consistent sky), or the given files."""
    path = folder / "survey-datasets"
    if (path / "survey.yaml").is_file():
        return path
    strip = config.input
    lon_min = float(np.min(rois["glon"] - rois["width"] / 2))
    lon_max = float(np.max(rois["glon"] + rois["width"] / 2))
    center = SkyCoord(0.5 * (lon_min + lon_max), strip.glat, unit="deg", frame="galactic")
    datasets, models = make_survey(
        width=(lon_max - lon_min) * u.deg, height=float(np.max(rois["height"])) * u.deg, center=center,
        seed=strip.seed, irf=strip.irf, progress=True,
    )
    write_survey(path, datasets, models, meta={"input": strip.model_dump(mode="json")}, overwrite=True)
    return path


def _roi_config(config, roi, folder, survey_path):
    """Configuration of one ROI: the strip's datasets cut out around it, the strip's truth."""
    roi_folder = folder / str(roi["name"])
    inputs = roi_folder / "inputs"
    if not (inputs / "done").is_file():
        inputs.mkdir(parents=True, exist_ok=True)
        datasets, _ = read_survey(survey_path)
        center = SkyCoord(roi["glon"], roi["glat"], unit="deg", frame="galactic")
        for dataset in datasets:
            cutout = dataset.cutout(center, width=(roi["width"] * u.deg, roi["height"] * u.deg), name=dataset.name)
            cutout.write(inputs / f"{dataset.name}.fits", overwrite=True)
        write_text_atomic(inputs / "done", "")
    names = _dataset_names(survey_path)
    data = config.model_dump(mode="json")
    data["input"] = {
        "kind": "files",
        "datasets": [str(inputs / f"{name}.fits") for name in names],
        "truth": str(survey_path / "true_models.yaml"),
    }
    data["output"] = str(roi_folder / "pipeline")
    data["parallel"] = {"backend": "loky", "n_jobs": 1}  # the ROIs are the parallel tasks: no pool inside a ROI
    return PipelineConfig.model_validate(data)


def _dataset_names(survey_path):
    """Dataset names of a survey folder written by `write_survey`."""
    return yaml.safe_load((Path(survey_path) / "survey.yaml").read_text())["datasets"]


def _run_roi(config):
    run_pipeline(config)
    return str(config.output)


def _run_all(configs, n_jobs, backend, scheduler):
    from joblib import Parallel, delayed, parallel_config

    if backend == "dask":
        from distributed import Client

        client = Client(scheduler) if scheduler else Client(processes=True, n_workers=n_jobs, threads_per_worker=1)
        with client, parallel_config(backend="dask"):
            return Parallel()(delayed(_run_roi)(c) for c in configs)
    return Parallel(n_jobs=n_jobs, backend="loky")(delayed(_run_roi)(c) for c in configs)


def _core_rows(roi, pipeline_folder):
    """The ROI catalogue's rows of the sources in its core, names prefixed with the ROI's (``Parent`` too)."""
    path = pipeline_folder / "catalogue.fits"
    if not path.is_file():
        return None
    table = Table.read(path, hdu="CATALOG", mask_invalid=False)
    lon = np.asarray(table["GLON"], dtype=float)
    lon = (lon + 180.0) % 360.0 - 180.0
    table = table[(roi["core_min"] <= lon) & (lon < roi["core_max"])]
    prefix = f"{roi['name']}-"
    table["Source_Name"] = [prefix + str(name).strip() for name in table["Source_Name"]]
    table["Parent"] = [prefix + str(name).strip() if str(name).strip() else "" for name in table["Parent"]]
    table["ROI"] = np.full(len(table), str(roi["name"]))
    return table


def _filled(table):
    """Masked cells of an outer join (parameter columns of model types an ROI does not hold) filled for FITS."""
    for name in table.colnames:
        column = table[name]
        if getattr(column, "mask", None) is None or not np.any(column.mask):
            continue
        kind = column.dtype.kind
        fill = np.nan if kind == "f" else "" if kind in "US" else False if kind == "b" else 0
        table[name] = column.filled(fill)
    return table


def _merge(rois, folder):
    parts, counts = [], {}
    for roi in rois:
        rows = _core_rows(roi, folder / str(roi["name"]) / "pipeline")
        counts[str(roi["name"])] = 0 if rows is None else len(rows)
        if rows is not None and len(rows):
            parts.append(rows)
    models = Models([])
    if parts:
        table = _filled(vstack(parts, join_type="outer", metadata_conflicts="silent"))
        table.meta.update(EXTNAME="CATALOG", ORIGIN="gpsfast")
        with atomic_output(folder / "catalogue.fits", overwrite=True) as tmp:
            table.write(tmp, format="fits")
        models = read_catalog(folder / "catalogue.fits")
        write_xml(models, folder / "models.xml", overwrite=True)
    write_text_atomic(folder / "models.yaml", models.to_yaml())
    seeds = [Table.read(folder / str(r["name"]) / "pipeline" / "seeds.fits") for r in rois]
    if any(len(s) for s in seeds):
        vstack([s for s in seeds if len(s)], metadata_conflicts="silent").write(folder / "seeds.fits", overwrite=True)
    return counts


def run_survey(config=None, glon_min=None, glon_max=None, roi_width=10.0, roi_overlap=2.0, n_jobs=None):
    """Run the pipeline over a strip of the plane, ROI by ROI, and merge the catalogues.

    Parameters
    ----------
    config : `PipelineConfig`, optional
        Pipeline configuration; its ``input`` gives the simulated strip (seed,
        IRF, latitude) and ``parallel`` the backend.
    glon_min, glon_max : float, optional
        Longitude range of the strip (deg); by default ``input.glon -+ input.width / 2``.
    roi_width, roi_overlap : float
        ROI width (its height is ``input.height``) and overlap, in deg.
    n_jobs : int, optional
        Parallel ROIs (-1: one per CPU core); ``parallel.n_jobs`` by default. The
        pipeline of each ROI runs in one process.

    Returns
    -------
    folder : `~pathlib.Path`
        Output folder: ``survey-datasets/``, one ``roi-NN/`` folder per ROI (each a
        resumable pipeline run), the merged ``catalogue.fits``, ``models.yaml``,
        ``models.xml``, ``seeds.fits``, ``rois.ecsv`` and ``survey.json``.
    """
    config = config or PipelineConfig()
    if config.input.kind != "simulate":
        raise InputError("Survey mode simulates its strip: input.kind must be 'simulate'")
    strip = config.input
    glon_min = strip.glon - strip.width / 2 if glon_min is None else glon_min
    glon_max = strip.glon + strip.width / 2 if glon_max is None else glon_max
    rois = make_rois(glon_min, glon_max, strip.glat, roi_width, strip.height, roi_overlap)
    folder = Path(config.output)
    folder.mkdir(parents=True, exist_ok=True)
    rois.write(folder / "rois.ecsv", overwrite=True)
    survey_path = _survey_datasets(config, folder, rois)
    configs = [_roi_config(config, roi, folder, survey_path) for roi in rois]
    n_jobs = config.parallel.workers if n_jobs is None else int(n_jobs)
    n_jobs = joblib.cpu_count() if n_jobs == -1 else n_jobs
    if n_jobs < 1:
        raise InputError(f"run_survey: n_jobs must be -1 or at least 1, got {n_jobs}")
    _run_all(configs, n_jobs, config.parallel.backend, config.parallel.scheduler)
    counts = _merge(rois, folder)
    write_text_atomic(folder / "survey.json", json.dumps({"rois": counts, "n_sources": sum(counts.values())}, indent=2))
    log.info("Survey of %d ROIs merged: %s", len(rois), counts)
    return folder
