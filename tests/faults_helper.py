"""ROI task functions for the fault-injection tests: pickled by reference into loky workers (this folder is on
their ``sys.path``), so they must live in an importable module, not in a test file."""
import os
import time
from pathlib import Path


def die_once(config):
    """Run a ROI's pipeline, except that the worker of roi-02 dies (``os._exit``) the first time."""
    from gpsfast.pipeline import run_pipeline

    marker = Path(config.output).parent.parent / "died-roi-02"
    if "roi-02" in str(config.output) and not marker.exists():
        marker.write_text(str(os.getpid()))
        os._exit(1)
    run_pipeline(config)
    return str(config.output)


def sleep_roi(path):
    """Write this worker's pid to ``path``, then sleep (a ROI that takes long)."""
    Path(path).write_text(str(os.getpid()))
    time.sleep(120)


FIT_CALLS = []


def counting_fit(datasets, optimize_opts=None):
    """A group 'fit' that only counts its calls and succeeds (for checkpoint tests)."""
    from types import SimpleNamespace

    FIT_CALLS.append(tuple(datasets.models.names))
    return SimpleNamespace(success=True, total_stat=0.0, message="")
