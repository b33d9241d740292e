"""The survey pipeline configuration, validated with pydantic (as gammapy's ``AnalysisConfig``)."""
from pathlib import Path
from typing import Literal, Optional

import joblib
import yaml
from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, ValidationError, field_validator, model_validator

from ..errors import InputError
from ..models.yamlio import load_yaml_strict

__all__ = ["PipelineConfig", "load_config"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class InputConfig(_Section):
    """Where the datasets come from: the embedded simulation, or gammapy FITS files."""

    kind: Literal["simulate", "files"] = "simulate"
    width: float = Field(10.0, gt=0, le=360, description="Simulated patch width in longitude (deg).")
    height: float = Field(6.0, gt=0, le=180, description="Simulated patch height in latitude (deg).")
    glon: float = Field(0.0, ge=-360, le=360, description="Patch centre longitude (deg).")
    glat: float = Field(0.0, ge=-90, le=90, description="Patch centre latitude (deg).")
    seed: int = Field(0, ge=0, description="Random seed of the simulation.")
    irf: Optional[Path] = Field(None, description="IRF FITS file for the simulation (analytic CTA-like if not set).")
    datasets: list[Path] = Field(default_factory=list, description="MapDataset FITS files (kind: files).")
    truth: Optional[Path] = Field(None, description="True models YAML, for validation (kind: files).")

    @model_validator(mode="after")
    def _files_given(self):
        if self.kind == "files" and not self.datasets:
            raise ValueError("input.kind is 'files' but input.datasets is empty")
        return self


class SignificanceConfig(_Section):
    """Correlation radii (deg) of the significance maps, for every dataset."""

    radii: list[PositiveFloat] = Field(default_factory=lambda: [0.1, 0.2], min_length=1)


class SeedsConfig(_Section):
    """Seed finding on the significance maps."""

    threshold: float = Field(5.0, gt=0)
    min_distance: float = Field(0.1, gt=0, description="deg")
    hough: bool = True
    hough_threshold: float = Field(3.0, gt=0)


class AssociationConfig(_Section):
    """Association of seeds with known sources (XML, YAML or catalogue FITS) and with the truth."""

    known_sources: Optional[Path] = None
    overlap_threshold: float = Field(0.1, gt=0, le=1)
    min_radius: float = Field(0.1, gt=0, description="deg, e.g. the PSF size")


class SpectraConfig(_Section):
    """Seed spectra and spectral index maps."""

    index_radius: float = Field(0.2, gt=0, description="Correlation radius of the index maps (deg).")
    min_seed_radius: float = Field(0.1, gt=0, description="Smallest extraction radius (deg).")


class FitConfig(_Section):
    """Initial seed models and group fits (GeneralizedGaussian + LogParabola per kept seed)."""

    enabled: bool = Field(True, description="Fit the seed models by groups (false: catalogue of initial models).")
    min_separation: float = Field(0.2, gt=0, description="Seeds closer than this to a stronger one are merged (deg).")
    position_range: float = Field(0.2, gt=0, description="Fitted positions stay within this of the seed (deg).")
    free_beta: bool = Field(False, description="Fit the LogParabola curvature (else a power law).")
    release_shape: bool = Field(False, description="Fit eta, e and phi of each group's main source.")
    max_group_size: int = Field(4, ge=1, description="Largest number of sources fitted together.")
    margin: float = Field(0.3, ge=0, description="Cutout margin around a group's sources (deg).")
    max_iterations: int = Field(1, ge=1, description="Passes over the groups (each starts from the last).")
    residual_passes: int = Field(
        2, ge=0, description="Times residual-map peaks become new sources, fitted with their groups.")
    residual_min_separation: float = Field(
        0.1, gt=0, description="Residual peaks closer than this to a source are not new sources (deg).")


class ParallelConfig(_Section):
    """Parallel backend for the stages that use one."""

    backend: Literal["loky", "dask"] = "loky"
    n_jobs: int = Field(-1, ge=-1, description="Worker processes; -1: one per CPU core this process may use.")
    scheduler: Optional[str] = Field(None, description="dask scheduler address (backend: dask).")

    @field_validator("n_jobs")
    @classmethod
    def _some_workers(cls, value):
        if value == 0:
            raise ValueError("n_jobs must be -1 (one per CPU core) or at least 1")
        return value

    @property
    def workers(self):
        """The number of worker processes (`n_jobs`, -1 resolved with joblib's CPU count)."""
        return joblib.cpu_count() if self.n_jobs == -1 else self.n_jobs


class PipelineConfig(_Section):
    """Everything `gpsfast run` needs; every key has a default (the embedded demo)."""

    input: InputConfig = Field(default_factory=InputConfig)
    significance: SignificanceConfig = Field(default_factory=SignificanceConfig)
    seeds: SeedsConfig = Field(default_factory=SeedsConfig)
    association: AssociationConfig = Field(default_factory=AssociationConfig)
    spectra: SpectraConfig = Field(default_factory=SpectraConfig)
    fit: FitConfig = Field(default_factory=FitConfig)
    parallel: ParallelConfig = Field(default_factory=ParallelConfig)
    output: Path = Path("gpsfast-out")

    def to_yaml(self):
        """The configuration as YAML text."""
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def _describe(error, source):
    lines = []
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"]) or "(top level)"
        lines.append(f"{source}: {key}: {item['msg']}")
    return "; ".join(lines)


def load_config(path=None, **overrides):
    """Read and validate a pipeline configuration.

    Parameters
    ----------
    path : str or `~pathlib.Path`, optional
        YAML file; the defaults (the embedded demo) when not given.
    **overrides : dict
        Top-level keys replacing the file's (e.g. ``output=...``).

    Returns
    -------
    config : `PipelineConfig`

    Raises
    ------
    InputError
        Naming the file and the key for unknown or repeated keys, wrong types or values.
    """
    data, source = {}, "configuration"
    if path is not None:
        path = Path(path)
        source = str(path)
        if not path.is_file():
            raise InputError(f"Configuration file not found: {path}")
        data = load_yaml_strict(path, "configuration file") or {}
        if not isinstance(data, dict):
            raise InputError(f"{path}: the configuration must be a mapping of sections")
    data.update({key: value for key, value in overrides.items() if value is not None})
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as exc:
        raise InputError(_describe(exc, source)) from None
