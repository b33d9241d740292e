"""Survey mode: the plane cut into overlapping regions of interest, processed independently, merged.

Each ROI is a `run_pipeline` task in its own folder (resumable through its
``state.json``); the tasks run in a joblib process pool or on a dask cluster.
A ROI that raises is reported and the others go on; when a pool worker dies,
the unfinished ROIs are run again (their finished stages are kept), and a ROI
whose worker dies when it runs alone is reported failed. The ROI catalogues are
merged keeping, from each ROI, only the sources in its core (the ROI minus half
the overlap on each side), so that the cores tile the strip and a source at a
seam is kept once.

Like a single run, a survey folder holds a lock while it runs and records its
settings (configuration, longitude range, ROI size and overlap) in
``state.json``: a run with other settings is refused unless ``overwrite``. The
strip datasets and each ROI's cutouts are keyed by the settings that made them
and made again when these differ.
"""
import contextlib
import json
import logging
import shutil
from pathlib import Path

import astropy.units as u
import joblib
import numpy as np
import yaml
from astropy.coordinates import Angle, SkyCoord
from astropy.table import Table, vstack
from gammapy.modeling.models import Models

from ..errors import InputError, RunError
from ..models import read_catalog, write_xml
from ..simulate import make_survey, read_survey, write_survey
from ..parallel import WorkerDied, run_tasks
from ..utils import atomic_output, check_writable_dir, folder_lock, write_atomic, write_text_atomic
from .config import PipelineConfig
from .folder import RunState, remove_outputs, settings_key
from .run import _input_digests, _input_files, _settings, run_pipeline

__all__ = ["make_rois", "run_survey", "SURVEY_OUTPUTS"]

SURVEY_OUTPUTS = ("state.json", "survey-datasets", "roi-*", "rois.ecsv", "catalogue.fits", "models.yaml", "models.xml",
                  "seeds.fits", "survey.json")
"""What a survey writes into its folder (globs): all of it, and only it, goes with ``overwrite``."""

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
    values = {"glon_min": glon_min, "glon_max": glon_max, "glat": glat, "roi_width": width, "roi_height": height,
              "roi_overlap": overlap}
    for name, value in values.items():
        if not np.isfinite(value):
            raise InputError(f"survey.{name} must be a finite number, got {value}")
    if not glon_max > glon_min:
        raise InputError(f"survey.glon_max ({glon_max}) must be larger than survey.glon_min ({glon_min})")
    if not -90 <= glat <= 90:
        raise InputError(f"survey.glat ({glat}) must be in [-90, 90] deg")
    for name in ("roi_width", "roi_height"):
        if not values[name] > 0:
            raise InputError(f"survey.{name} ({values[name]}) must be larger than 0 deg")
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


def _survey_datasets(config, folder, rois, inputs):
    """The strip's datasets, simulated once for the whole strip (one consistent sky); their key.

    The key hashes the ``input`` settings, the IRF file's digest (in ``inputs``) and
    the strip's extent; datasets in the folder with another key are made again.
    """
    path = folder / "survey-datasets"
    strip = config.input
    lon_min = float(np.min(rois["glon"] - rois["width"] / 2))
    lon_max = float(np.max(rois["glon"] + rois["width"] / 2))
    height = float(np.max(rois["height"]))
    key = settings_key(_settings(config)["input"], inputs.get("input.irf"), lon_min, lon_max, height)
    if (path / "survey.yaml").is_file():
        if yaml.safe_load((path / "survey.yaml").read_text()).get("key") == key:
            return path, key
        log.info("%s was made with other settings: made again", path)
    center = SkyCoord(0.5 * (lon_min + lon_max), strip.glat, unit="deg", frame="galactic")
    datasets, models = make_survey(
        width=(lon_max - lon_min) * u.deg, height=height * u.deg, center=center,
        seed=strip.seed, irf=strip.irf, progress=True,
    )
    write_survey(path, datasets, models, meta={"input": strip.model_dump(mode="json"), "key": key}, overwrite=True)
    return path, key


def _roi_inputs(roi, roi_folder, survey_path, survey_key):
    """Cut the strip's datasets out around a ROI into ``inputs/``, unless done with the same strip and ROI.

    Cutouts made from another strip or for another ROI geometry are made again, and
    the ROI's pipeline folder (made from them) is deleted.
    """
    inputs = roi_folder / "inputs"
    key = settings_key(survey_key, [float(roi[c]) for c in ("glon", "glat", "width", "height")])
    done = inputs / "done"
    if done.is_file() and done.read_text().strip() == key:
        return inputs
    for stale in (inputs, roi_folder / "pipeline"):
        if stale.exists():
            log.info("%s was made from other inputs: made again", stale)
            shutil.rmtree(stale)
    inputs.mkdir(parents=True)
    datasets, _ = read_survey(survey_path)
    center = SkyCoord(roi["glon"], roi["glat"], unit="deg", frame="galactic")
    for dataset in datasets:
        cutout = dataset.cutout(center, width=(roi["width"] * u.deg, roi["height"] * u.deg), name=dataset.name)
        cutout.write(inputs / f"{dataset.name}.fits", overwrite=True)
    write_text_atomic(done, key)
    return inputs


def _roi_config(config, roi, folder, survey_path, survey_key):
    """Configuration of one ROI: the strip's datasets cut out around it, the strip's truth."""
    roi_folder = folder / str(roi["name"])
    inputs = _roi_inputs(roi, roi_folder, survey_path, survey_key)
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


def _roi_task(task):
    """Run one ROI, ``function(config)`` for a ``(function, config)`` pair: None, or its error on one line."""
    function, config = task
    try:
        function(config)
        return None
    except Exception as exc:  # noqa: BLE001  reported for this ROI; the other ROIs go on
        return f"{type(exc).__name__}: {exc}".replace("\n", " ")


@contextlib.contextmanager
def _cluster(backend, n_jobs, scheduler):
    """The dask client of a ``dask`` survey (the cluster at ``scheduler``, else a local one of ``n_jobs`` workers).

    None for the other backends; the client is closed when the block ends.
    """
    if backend != "dask":
        yield None
        return
    import distributed

    client = distributed.Client(scheduler) if scheduler else distributed.Client(
        processes=True, n_workers=n_jobs, threads_per_worker=1)
    with client:
        yield client


def _run_all(configs, n_jobs, backend, scheduler):
    """Run every ROI; ROI index -> error message of the ROIs that failed, and the pool failures seen.

    The ROIs run through `gpsfast.parallel.run_tasks`: in a loky pool, a dead
    worker breaks the pool; the unfinished ROIs are run in a fresh pool (finished
    stages are not redone), then, after a second failure, each alone in a fresh
    worker; a ROI whose worker dies then is reported failed. On dask, a ROI that
    keeps killing workers is reported failed.
    """
    failed, pool_failures = {}, []

    def pool_failed(exc, n_unfinished, last):
        pool_failures.append(f"{type(exc).__name__}: {exc}".split("\n")[0])
        log.warning("ROI worker pool failed (%s); running the %d unfinished ROIs again%s", pool_failures[-1],
                    n_unfinished, ", one at a time" if last else "")

    with _cluster(backend, n_jobs, scheduler) as client:
        outcomes = run_tasks(_roi_task, range(len(configs)), lambda index: (_run_roi, configs[index]),
                             n_jobs=min(n_jobs, max(1, len(configs))), client=client, pool_attempts=2,
                             on_pool_failure=pool_failed)
        for index, outcome in outcomes:
            if isinstance(outcome, WorkerDied):
                failed[index] = outcome.message.split("\n")[0]
            elif outcome:
                failed[index] = outcome
    return failed, pool_failures


def _core_rows(roi, pipeline_folder):
    """The ROI catalogue's rows of the sources in its core, names prefixed with the ROI's (``Parent`` too)."""
    path = pipeline_folder / "catalogue.fits"
    if not path.is_file():
        return None
    table = Table.read(path, hdu="CATALOG", mask_invalid=False)
    lon = Angle(np.asarray(table["GLON"], dtype=float), "deg").wrap_at(180 * u.deg).deg
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
    else:
        for name in ("catalogue.fits", "models.xml"):
            (folder / name).unlink(missing_ok=True)
        log.warning("No source found in any ROI: the merged catalogue is empty (models.yaml holds no source)")
    write_text_atomic(folder / "models.yaml", models.to_yaml())
    paths = [folder / str(r["name"]) / "pipeline" / "seeds.fits" for r in rois]
    seeds = [Table.read(path) for path in paths if path.is_file()]
    if any(len(s) for s in seeds):
        write_atomic(vstack([s for s in seeds if len(s)], metadata_conflicts="silent"), folder / "seeds.fits")
    else:
        (folder / "seeds.fits").unlink(missing_ok=True)
    return counts


def run_survey(config=None, glon_min=None, glon_max=None, roi_width=10.0, roi_overlap=2.0, n_jobs=None,
               overwrite=False):
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
    overwrite : bool
        Start again in a folder holding a survey made with other settings: every
        output of that survey (`SURVEY_OUTPUTS`, and nothing else, never an input
        file) is deleted first.

    Returns
    -------
    folder : `~pathlib.Path`
        Output folder: ``survey-datasets/``, one ``roi-NN/`` folder per ROI (each a
        resumable pipeline run), the merged ``catalogue.fits``, ``models.yaml``,
        ``models.xml``, ``seeds.fits``, ``rois.ecsv``, ``survey.json`` (sources per
        ROI, failed ROIs, worker-pool failures) and ``state.json``.

    Raises
    ------
    RunError
        After merging the others, when ROIs failed (named with their error); a
        re-run of the same survey retries them.
    """
    config = config or PipelineConfig()
    if config.input.kind != "simulate":
        raise InputError("Survey mode simulates its strip: input.kind must be 'simulate'")
    strip = config.input
    glon_min = strip.glon - strip.width / 2 if glon_min is None else float(glon_min)
    glon_max = strip.glon + strip.width / 2 if glon_max is None else float(glon_max)
    rois = make_rois(glon_min, glon_max, strip.glat, roi_width, strip.height, roi_overlap)
    n_jobs = config.parallel.workers if n_jobs is None else int(n_jobs)
    n_jobs = joblib.cpu_count() if n_jobs == -1 else n_jobs
    if n_jobs < 1:
        raise InputError(f"run_survey: n_jobs must be -1 or at least 1, got {n_jobs}")
    folder = check_writable_dir(config.output)
    folder.mkdir(parents=True, exist_ok=True)
    settings = {"config": _settings(config), "glon_min": glon_min, "glon_max": glon_max, "roi_width": roi_width,
                "roi_overlap": roi_overlap}
    with folder_lock(folder, "gpsfast survey"):
        if overwrite:
            remove_outputs(folder, SURVEY_OUTPUTS, protect=_input_files(config).values())
        inputs = _input_digests(config)
        RunState(folder / "state.json", settings, inputs)
        write_atomic(rois, folder / "rois.ecsv")
        survey_path, survey_key = _survey_datasets(config, folder, rois, inputs)
        configs = [_roi_config(config, roi, folder, survey_path, survey_key) for roi in rois]
        failed, pool_failures = _run_all(configs, n_jobs, config.parallel.backend, config.parallel.scheduler)
        counts = _merge(rois, folder)
        failed = {str(rois["name"][index]): message for index, message in sorted(failed.items())}
        report = {"rois": counts, "n_sources": sum(counts.values()), "failed": failed,
                  "worker_pool_failures": pool_failures}
        write_text_atomic(folder / "survey.json", json.dumps(report, indent=2))
    log.info("Survey of %d ROIs merged: %s", len(rois), counts)
    if failed:
        listed = "; ".join(f"{name}: {message}" for name, message in failed.items())
        raise RunError(f"{len(failed)} of {len(rois)} ROIs failed ({listed}); the merged catalogue in {folder} lacks "
                       "them: run the same survey again to retry them (finished work is kept)")
    return folder
