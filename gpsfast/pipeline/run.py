"""The survey pipeline: datasets -> significance maps -> seeds -> association -> spectra -> seed models
-> group fits -> catalogue -> residual maps -> validation -> plots.

Each stage writes its outputs (atomically) into the output folder and records
itself in ``state.json``, which holds the result-relevant configuration and a
digest of every input file. A re-run with the same configuration and inputs
resumes after the last finished stage; an output folder holding a run made with
another configuration or other inputs is refused (never silently mixed) unless
``overwrite``, which first deletes every output of the old run. A run holds an
exclusive lock on its output folder (`gpsfast.utils.folder_lock`).
"""
import json
import logging
import time
import warnings
from pathlib import Path

import astropy.units as u
import numpy as np
from astropy.coordinates import SkyCoord
from astropy.io.fits.verify import VerifyWarning
from astropy.table import Table, vstack
from gammapy.datasets import Datasets
from gammapy.estimators import FluxMaps
from gammapy.maps import Map
from gammapy.modeling.models import Models

from ..accelerate import accelerated
from ..detect import SeedCatalog, associate, find_seeds, significance_maps
from ..errors import InputError
from ..groups import fit_groups, make_groups
from ..models import accelerate_models, write_catalog, write_xml
from ..simulate import make_survey, read_survey, write_survey
from ..spectra import IndexMapEstimator, extract_spectra_table
from ..utils import atomic_output, check_writable_dir, folder_lock, write_atomic, write_text_atomic
from .config import PipelineConfig
from .folder import RunState, file_digest, remove_outputs, settings_key
from .inputs import check_dataset, read_dataset, read_models_file
from .modelling import (
    PoolFit,
    seed_amplitude,
    seed_models,
    select_seeds,
)
from .report import stage_plots, stage_validation

__all__ = ["run_pipeline", "STAGES", "OUTPUTS"]

log = logging.getLogger(__name__)

STAGES = (
    "datasets", "significance", "seeds", "association", "spectra", "models", "fit", "catalogue", "residual",
    "validation", "plots",
)


OUTPUTS = (
    "state.json", "config.yaml", "run.log", "datasets", "maps", "fits", "seeds.fits", "seeds.reg",
    "associations_*.ecsv", "seed_spectra_*.fits", "initial_models.yaml", "fitted_models.yaml", "fit_results.ecsv",
    "catalogue.fits", "catalogue.reg", "models.yaml", "models.xml", "validation.json", "validation_*.ecsv",
    "significance_*.png", "residual_*.png", "flux_recovery.png", "completeness.png",
)
"""What a run writes into its output folder (globs): all of it, and only it, goes with ``overwrite``."""

RESULT_NEUTRAL = ("parallel", "output")
"""Configuration sections that do not change the results: a run may resume with other values."""


INPUT_FILE_KEYS = {"input": ("datasets", "truth", "irf"), "association": ("known_sources",)}
"""Configuration keys naming input files: a run is keyed by their content (`_input_digests`), not their path."""


def _settings(config):
    """The result-relevant configuration (JSON values), input file paths left out."""
    exclude = {section: set(keys) for section, keys in INPUT_FILE_KEYS.items()}
    return config.model_dump(mode="json", exclude={**exclude, **{key: True for key in RESULT_NEUTRAL}})


def _input_files(config):
    """Configuration key -> input file, for every input file of the configuration."""
    files = {}
    if config.input.kind == "files":
        files.update({f"input.datasets[{i}]": path for i, path in enumerate(config.input.datasets)})
        files["input.truth"] = config.input.truth
    else:
        files["input.irf"] = config.input.irf
    files["association.known_sources"] = config.association.known_sources
    return {key: Path(path) for key, path in files.items() if path is not None}


def _input_digests(config):
    """Configuration key -> name and content digest of its input file; `InputError` naming the key of a missing one.

    Moved files with the same names and content give the same digests: a run resumes.
    """
    digests = {}
    for key, path in _input_files(config).items():
        if not path.is_file():
            what = "Dataset file" if key.startswith("input.datasets") else "Input file"
            raise InputError(f"{what} not found: {path} ({key})")
        digests[key] = {"name": path.name, "digest": file_digest(path)}
    return digests


class _Run:
    """The data a run passes between stages, read back from the output folder when resuming."""

    def __init__(self, config, folder, key=""):
        self.config = config
        self.folder = folder
        self.maps_folder = folder / "maps"
        self.key = key

    @property
    def datasets_folder(self):
        return self.folder / "datasets"

    def datasets(self):
        datasets, _ = read_survey(self.datasets_folder)
        return datasets

    def truth(self):
        if self.config.input.kind == "simulate":
            return Models.read(self.datasets_folder / "true_models.yaml")
        if self.config.input.truth is not None:
            return read_models_file(self.config.input.truth, "input.truth")
        return None

    def map_labels(self):
        return [f"{name}_r{radius:g}" for name in self.dataset_names() for radius in self.config.significance.radii]

    def dataset_names(self):
        return json.loads((self.datasets_folder / "names.json").read_text())

    def significance_maps(self):
        return {label: FluxMaps.read(self.maps_folder / f"significance_{label}.fits") for label in self.map_labels()}

    def seeds(self):
        return SeedCatalog.read(self.folder / "seeds.fits")

    def models(self, filename):
        return Models.read(self.folder / filename)


def _stage_datasets(run):
    config = run.config.input
    if config.kind == "simulate":
        center = SkyCoord(config.glon, config.glat, unit="deg", frame="galactic")
        datasets, models = make_survey(
            width=config.width * u.deg, height=config.height * u.deg, center=center, seed=config.seed,
            irf=config.irf, progress=True,
        )
        for dataset in datasets:
            check_dataset(dataset, f"{dataset.name} (simulated)", run.config.significance.radii)
        write_survey(run.datasets_folder, datasets, models, meta={"input": config.model_dump(mode="json")},
                     overwrite=True)
    else:
        names = [Path(path).name.split(".")[0] for path in config.datasets]
        if len(set(names)) < len(names):
            raise InputError(f"input.datasets: two files give the same dataset name ({', '.join(names)}): a dataset "
                             "is named after its file: rename one")
        datasets = Datasets([read_dataset(path, run.config.significance.radii) for path in config.datasets])
        write_survey(run.datasets_folder, datasets, Models([]), overwrite=True)
    write_text_atomic(run.datasets_folder / "names.json", json.dumps(datasets.names))


def _background_only(dataset):
    copy = dataset.copy(name=dataset.name)
    copy.models = [m for m in (dataset.models or []) if m.name == f"{dataset.name}-bkg"] or None
    return copy


def _stage_significance(run):
    run.maps_folder.mkdir(exist_ok=True)
    for label, maps in significance_maps(run.datasets(), run.config.significance.radii).items():
        _write_flux_maps(maps, run.maps_folder / f"significance_{label}.fits")


def _write_flux_maps(maps, path):
    """`FluxMaps` written atomically, their reference model beside them in ``<path>_model.yaml`` (gammapy's name)."""
    write_atomic(maps, path, overwrite=True, filename_model=f"{path}_model.yaml")


def _stage_seeds(run):
    config = run.config.seeds
    seeds = find_seeds(
        run.significance_maps(), threshold=config.threshold, min_distance=f"{config.min_distance} deg",
        hough=config.hough, hough_threshold=config.hough_threshold,
    )
    write_atomic(seeds, run.folder / "seeds.fits", overwrite=True)
    if len(seeds):
        _write_regions(seeds, run.folder / "seeds.reg")
        log.info("%d seeds", len(seeds))
    else:
        log.warning("No seed above sqrt_ts %g in the significance maps of %s: no source will be found",
                    config.threshold, ", ".join(run.dataset_names()))


def _write_regions(seeds, path):
    with atomic_output(path, overwrite=True) as tmp:
        seeds.write_regions(tmp, overwrite=True)


def _stage_association(run):
    config = run.config.association
    seeds = run.seeds()
    references = {"truth": run.truth()}
    if config.known_sources is not None:
        references["known"] = read_models_file(config.known_sources, "association.known_sources")
    # the catalogue's Assoc column: the known source of a seed, or its true source, or "" (no reference given)
    seeds.table["assoc"] = np.full(len(seeds.table), "", dtype="U64")
    for label, models in references.items():
        if models is None:
            continue
        pairs = associate(seeds, models, threshold=config.overlap_threshold, min_radius=f"{config.min_radius} deg")
        write_atomic(pairs, run.folder / f"associations_{label}.ecsv", overwrite=True)
    write_atomic(seeds, run.folder / "seeds.fits", overwrite=True)


def _stage_spectra(run):
    seeds = run.seeds()
    regions = Table(
        {
            "name": seeds.table["name"],
            "glon": seeds.table["glon"],
            "glat": seeds.table["glat"],
            "radius": np.maximum(np.asarray(seeds.table["radius"]), run.config.spectra.min_seed_radius),
        }
    )
    for dataset in run.datasets():
        dataset = _background_only(dataset)
        inside = _inside_map(dataset, regions)
        if inside.any():
            spectra = extract_spectra_table(dataset, regions[inside])
            with warnings.catch_warnings():
                # the long meta keys (energy_edges, energy_true_edges) become HIERARCH cards: valid, read back as written
                warnings.filterwarnings("ignore", category=VerifyWarning, message="Keyword name")
                write_atomic(spectra, run.folder / f"seed_spectra_{dataset.name}.fits", overwrite=True)
        index = IndexMapEstimator(correlation_radius=f"{run.config.spectra.index_radius} deg").run(dataset)
        write_atomic(index, run.maps_folder / f"index_{dataset.name}.fits", overwrite=True)


def _inside_map(dataset, regions):
    """Seeds whose circle lies fully inside the dataset's map."""
    geom = dataset.counts.geom.to_image()
    position = SkyCoord(np.asarray(regions["glon"]), np.asarray(regions["glat"]), unit="deg", frame="galactic")
    x, y = geom.to_image().coord_to_pix({"skycoord": position})
    radius = np.asarray(regions["radius"]) / np.mean(geom.pixel_scales.to_value("deg"))
    nx, ny = geom.data_shape[-1], geom.data_shape[-2]
    return (x - radius >= 0) & (y - radius >= 0) & (x + radius <= nx - 1) & (y + radius <= ny - 1)


def _stage_models(run):
    """Initial GeneralizedGaussian + LogParabola models of the kept seeds, bounded around them."""
    config = run.config.fit
    kept = select_seeds(run.seeds().table, config.min_separation)
    positions = SkyCoord(np.asarray(kept["glon"]), np.asarray(kept["glat"]), unit="deg", frame="galactic")
    index = np.full(len(kept), 2.5)
    index_path = run.maps_folder / "index_postev.fits"
    if index_path.is_file() and len(kept):
        values = Map.read(index_path, hdu="INDEX").get_by_coord({"skycoord": positions})
        index = np.where(np.isfinite(values), np.clip(values, 1.2, 4.8), 2.5)
    path = run.folder / "seed_spectra_postev.fits"
    spectra = Table.read(path) if path.is_file() else None
    amplitude = [
        seed_amplitude(spectra, name, gamma) if spectra is not None and name in list(spectra["name"]) else 1e-13
        for name, gamma in zip(kept["name"], index)
    ]
    models = seed_models(kept, index, amplitude, position_range=config.position_range, free_beta=config.free_beta)
    write_text_atomic(run.folder / "initial_models.yaml", models.to_yaml())


def _fit_client(config):
    if config.backend != "dask" or config.scheduler is None:
        return None
    from distributed import Client

    return Client(config.scheduler)


def _fit_pass(run, datasets, everything, groups, checkpoint):
    """One round of group fits, checkpointed in ``checkpoint`` (its name: the pass label); its results table."""
    config, parallel = run.config.fit, run.config.parallel
    client = _fit_client(parallel)
    try:
        table = fit_groups(
            datasets, everything, groups=groups, n_jobs=parallel.workers, backend=parallel.backend, client=client,
            checkpoint=checkpoint, max_iterations=config.max_iterations,
            progress=True, fit_function=PoolFit(), release=config.release_shape,
        )
    finally:
        if client is not None:
            client.close()
    label = checkpoint.name
    table["pass"] = label
    failed = int(np.sum(~table["success"]))
    if failed:
        log.warning("%s: %d of %d group fits failed: their sources keep their starting models", label, failed,
                    len(table))
    return table


def _groups(run, everything):
    config = run.config.fit
    return make_groups(everything, max_size=config.max_group_size, margin=f"{config.margin} deg")


def _with_models(datasets, models):
    """The datasets with their own background model and ``models``."""
    for dataset in datasets:
        backgrounds = [m for m in (dataset.models or []) if m.name == f"{dataset.name}-bkg"]
        dataset.models = [*backgrounds, *models]
    return datasets


def _residual_maps(run, datasets, models):
    """Residual significance maps of the datasets with their background and ``models``."""
    accelerate_models(models)
    with accelerated():
        return significance_maps(_with_models(datasets, models), run.config.significance.radii,
                                 background_only=False)


def _residual_seed_models(run, datasets, models, index):
    """Models for the residual peaks farther than ``fit.residual_min_separation`` from every source."""
    config = run.config
    maps = _residual_maps(run, datasets, models)
    seeds = find_seeds(maps, threshold=config.seeds.threshold, min_distance=f"{config.seeds.min_distance} deg",
                       hough=False).table
    if not len(seeds) or not len(models):
        return Models([])
    known = SkyCoord([m.position.galactic for m in models])
    position = SkyCoord(np.asarray(seeds["glon"]), np.asarray(seeds["glat"]), unit="deg", frame="galactic")
    far = position[:, None].separation(known[None, :]).deg.min(axis=1) > config.fit.residual_min_separation
    kept = select_seeds(seeds[far], config.fit.residual_min_separation)
    kept["name"] = [f"RES{index}-{k + 1:03d}" for k in range(len(kept))]
    amplitude = [_residual_amplitude(maps, row) for row in kept]
    log.info("residual pass %d: %d new sources", index, len(kept))
    return seed_models(kept, amplitude=amplitude, position_range=config.fit.position_range,
                       free_beta=config.fit.free_beta)


def _residual_amplitude(maps, row):
    """dN/dE at 1 TeV (cm-2 s-1 TeV-1) from the residual flux norm of the strongest map at a seed."""
    label = max(maps, key=lambda key: float(row[f"sqrt_ts_{key}"]) if f"sqrt_ts_{key}" in row.colnames else -1)
    position = SkyCoord(row["glon"], row["glat"], unit="deg", frame="galactic")
    norm = float(maps[label]["norm"].sum_over_axes(keepdims=False).get_by_coord({"skycoord": position})[0])
    reference = maps[label].reference_model.spectral_model(1 * u.TeV).to_value("cm-2 s-1 TeV-1")
    return max(norm, 1e-3) * reference if np.isfinite(norm) else 1e-13


def _stage_fit(run):
    """Group fits of the seed models, then of the sources found in the residual maps.

    Each group is fitted on cutouts with the other sources cached as npred
    templates. After the first pass, peaks of the residual significance maps
    farther than ``fit.residual_min_separation`` from every source become new sources,
    and the groups holding them are fitted (``fit.residual_passes`` times at most).
    """
    models = run.models("initial_models.yaml")
    config = run.config.fit
    if not config.enabled or not len(models):
        write_text_atomic(run.folder / "fitted_models.yaml", models.to_yaml())
        return
    # group-fit checkpoints live under a key of everything they depend on: never reused for another run
    datasets_digests = sorted(file_digest(path) for path in run.datasets_folder.glob("*.fits"))
    checkpoints = run.folder / "fits" / settings_key(run.key, file_digest(run.folder / "initial_models.yaml"),
                                                     datasets_digests)
    datasets = run.datasets()
    backgrounds = [m for d in datasets for m in (d.models or []) if m.name == f"{d.name}-bkg"]
    everything = Models([*models, *backgrounds])
    accelerate_models(everything)
    tables = [_fit_pass(run, datasets, everything, _groups(run, everything), checkpoints / "pass-0")]
    sources = list(models.names)
    for index in range(1, config.residual_passes + 1):
        new = _residual_seed_models(run, datasets, Models([everything[name] for name in sources]), index)
        if not len(new):
            break
        accelerate_models(new)
        everything = Models([*[everything[name] for name in sources], *new, *backgrounds])
        sources += list(new.names)
        groups = [g for g in _groups(run, everything) if set(g.names) & set(new.names)]
        tables.append(_fit_pass(run, datasets, everything, groups, checkpoints / f"pass-{index}"))
    write_atomic(vstack(tables), run.folder / "fit_results.ecsv", overwrite=True)
    write_text_atomic(run.folder / "fitted_models.yaml", Models([everything[name] for name in sources]).to_yaml())


def _stage_catalogue(run):
    models = run.models("fitted_models.yaml")
    if len(models):
        _write_catalogue(run, models)
        write_xml(models, run.folder / "models.xml", overwrite=True)
        write_text_atomic(run.folder / "catalogue.reg", _ds9_regions(models))
    else:
        for name in ("catalogue.fits", "models.xml", "catalogue.reg"):
            (run.folder / name).unlink(missing_ok=True)
        log.warning("No source found: the catalogue is empty (models.yaml holds no source; no catalogue.fits, "
                    "models.xml or catalogue.reg written)")
    write_text_atomic(run.folder / "models.yaml", models.to_yaml())


def _write_catalogue(run, models):
    """``catalogue.fits``: the fitted models with Npred and TS per dataset, and the seeds' nesting and associations."""
    evaluated = models.copy()
    accelerate_models(evaluated)
    datasets = _with_models(run.datasets(), evaluated)
    with accelerated():
        return write_catalog(models, run.folder / "catalogue.fits", datasets=datasets, seeds=run.seeds().table,
                             overwrite=True)


def _ds9_regions(models):
    lines = ["# Region file format: DS9", "galactic"]
    for model in models:
        position = model.position.galactic
        radius = model.spatial_model.r_0.value if "r_0" in model.spatial_model.parameters.names else 0.05
        lines.append(f"circle({position.l.deg:.5f},{position.b.deg:.5f},{radius:.5f}) # text={{{model.name}}}")
    return "\n".join(lines) + "\n"


def _stage_residual(run):
    """Residual significance maps: every dataset with its background and the catalogue's models."""
    for label, flux_maps in _residual_maps(run, run.datasets(), run.models("models.yaml")).items():
        _write_flux_maps(flux_maps, run.maps_folder / f"residual_{label}.fits")


_STAGE_FUNCTIONS = {
    "datasets": _stage_datasets,
    "significance": _stage_significance,
    "seeds": _stage_seeds,
    "association": _stage_association,
    "spectra": _stage_spectra,
    "models": _stage_models,
    "fit": _stage_fit,
    "catalogue": _stage_catalogue,
    "residual": _stage_residual,
    "validation": stage_validation,
    "plots": stage_plots,
}


def run_pipeline(config=None, overwrite=False):
    """Run the survey pipeline, resuming an interrupted run of the same configuration and inputs.

    The run holds an exclusive lock on its output folder: a second run there fails
    at once (`~gpsfast.errors.FolderInUseError`, naming the holder). The folder's
    ``state.json`` records the result-relevant configuration and a digest of each
    input file; a run with other values is refused unless ``overwrite``.

    Parameters
    ----------
    config : `PipelineConfig`, optional
        Configuration; the embedded demo (a simulated 10 x 6 deg patch) by default.
    overwrite : bool
        Start again in an output folder that holds another run: every output of
        that run (`OUTPUTS`, and nothing else) is deleted first; never an input
        file of this run (`InputError` instead), nor anything in a folder without
        a gpsfast ``state.json``.

    Returns
    -------
    folder : `~pathlib.Path`
        The output folder: ``datasets/``, ``maps/`` (significance and index maps),
        ``seeds.fits``, ``seeds.reg``, ``associations_*.ecsv``, ``seed_spectra_*.fits``,
        ``initial_models.yaml``, ``fits/<key>/`` (group-fit checkpoints), ``fit_results.ecsv``,
        ``catalogue.fits``, ``catalogue.reg``, ``models.yaml``, ``models.xml``, residual maps,
        ``validation.json``, PNG figures, ``run.log``, ``state.json`` and the lock file
        ``.gpsfast.lock``. With no source found, ``models.yaml`` is empty and there is no
        ``catalogue.fits``, ``models.xml`` or ``catalogue.reg``.
    """
    config = config or PipelineConfig()
    folder = check_writable_dir(config.output)
    folder.mkdir(parents=True, exist_ok=True)
    with folder_lock(folder, "gpsfast run"):
        if overwrite:
            remove_outputs(folder, OUTPUTS, protect=_input_files(config).values())
        state = RunState(folder / "state.json", _settings(config), _input_digests(config))
        write_text_atomic(folder / "config.yaml", config.to_yaml())
        if "association" not in state.done:  # unreadable model files: an error now, not after the first stages
            for key, path in (("input.truth", config.input.truth if config.input.kind == "files" else None),
                              ("association.known_sources", config.association.known_sources)):
                if path is not None:
                    read_models_file(path, key)
        _run_stages(_Run(config, folder, state.key), state)
    return folder


def _run_stages(run, state):
    handler = logging.FileHandler(run.folder / "run.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger("gpsfast").addHandler(handler)
    logging.getLogger("gpsfast").setLevel(logging.INFO)
    try:
        for stage in STAGES:
            if stage in state.done:
                log.info("Stage %s already done: skipped", stage)
                continue
            start = time.perf_counter()
            log.info("Stage %s", stage)
            _STAGE_FUNCTIONS[stage](run)
            seconds = time.perf_counter() - start
            state.mark(stage, seconds)
            log.info("Stage %s done in %.1f s", stage, seconds)
    finally:
        logging.getLogger("gpsfast").removeHandler(handler)
        handler.close()
