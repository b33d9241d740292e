"""Shared fixtures: small simulated survey patches (cached on disk) and the real data folder.

`cached_survey` simulates a patch with `gpsfast.simulate.make_survey` once and
keeps it in ``.pytest-cache-gpsfast/`` at the top of the repository (or
``$GPSFAST_TEST_CACHE``), keyed by the simulation parameters, the gpsfast and
gammapy versions and a digest of the gpsfast sources (so that a change of the
simulation code is never served a stale patch); every call reads it back as new
objects, which a test may change freely. The cache is safe under pytest-xdist
workers and concurrent runs: one process builds a patch under a file lock, and
the folder appears complete or not at all (`gpsfast.simulate.write_survey` is
atomic). Deleting the folder only costs the next run the simulations.
"""
import contextlib
import fcntl
import hashlib
import json
import os
from pathlib import Path

import astropy.units as u
import pytest
from astropy.coordinates import SkyCoord

REPOSITORY = Path(__file__).resolve().parents[1]
SHARED_DATA = REPOSITORY.parent / "shared" / "data"
SURVEY_CACHE = Path(os.environ.get("GPSFAST_TEST_CACHE", REPOSITORY / ".pytest-cache-gpsfast"))


@pytest.fixture(scope="session")
def shared_data():
    """Function giving the path of a real data file under ``../shared/data``.

    It skips the calling test, with the reason, when the file is absent.
    """

    def get(*parts):
        path = SHARED_DATA.joinpath(*parts)
        if not path.exists():
            pytest.skip(f"real data not available: {path} (the ../shared/data folder is absent)")
        return path

    return get


def _sources_digest():
    """Digest of every gpsfast source file (a cached patch is made again when the code changes)."""
    digest = hashlib.blake2b(digest_size=16)
    package = REPOSITORY / "gpsfast"
    for path in sorted(package.rglob("*.py")):
        digest.update(str(path.relative_to(package)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


@contextlib.contextmanager
def _locked(path):
    """An exclusive `fcntl.flock` on ``path`` for the block (waits for another holder)."""
    with open(path, "a") as stream:
        fcntl.flock(stream, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(stream, fcntl.LOCK_UN)


def cached_survey(width, height, presets="both", seed=0, density=None):
    """``make_survey`` of a patch at l = 0 (sizes in deg, ``density`` in deg-2), from the disk cache.

    Returns
    -------
    datasets, models
        New objects read from the cached folder (`gpsfast.simulate.read_survey`).
    """
    import gammapy

    from gpsfast import __version__
    from gpsfast.simulate import make_survey, read_survey, write_survey

    params = {"width": float(width), "height": float(height), "presets": presets, "seed": int(seed),
              "density": None if density is None else float(density)}
    key = json.dumps({"params": params, "gpsfast": __version__, "gammapy": gammapy.__version__,
                      "sources": _sources_digest()}, sort_keys=True)
    folder = SURVEY_CACHE / f"survey-{hashlib.sha256(key.encode()).hexdigest()[:16]}"
    if not (folder / "survey.yaml").is_file():
        SURVEY_CACHE.mkdir(parents=True, exist_ok=True)
        with _locked(folder.with_suffix(".lock")):
            if not (folder / "survey.yaml").is_file():
                kwargs = {} if density is None else {"density": params["density"] / u.deg**2}
                datasets, models = make_survey(width=params["width"] * u.deg, height=params["height"] * u.deg,
                                               presets=presets, seed=params["seed"], **kwargs)
                write_survey(folder, datasets, models, meta={"test_cache_key": key}, overwrite=True)
    return read_survey(folder)


@pytest.fixture(scope="session")
def survey_cache():
    """`cached_survey`, for test modules that simulate a patch of their own."""
    return cached_survey


@pytest.fixture(scope="session")
def postev_patch():
    """Function giving the shared 1.5 x 1 deg PosTeV patch at l = 0 (seed 7): new (datasets, true models) each call."""
    return lambda: cached_survey(1.5, 1.0, presets="postev", seed=7)


@pytest.fixture(scope="session")
def small_survey():
    """A 3 x 2 deg simulated patch at l = 0 with both presets (datasets, true models)."""
    return cached_survey(3, 2, seed=7, density=3)


@pytest.fixture(scope="session")
def patch_center():
    return SkyCoord(0, 0, unit="deg", frame="galactic")
