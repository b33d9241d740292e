"""gammapy's own tests pass with gpsfast's drop-ins substituted and inside ``gpsfast.accelerated()``.

Runs the quick subset of ``tests/gammapy_suite/run.py`` (three pytest processes,
about 70 s of CPU on a loaded 2-core machine); ``python tests/gammapy_suite/run.py`` runs the full selection.
"""
import json
import subprocess
import sys
from pathlib import Path

import pytest

RUN = Path(__file__).resolve().parent / "run.py"


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    report = tmp_path_factory.mktemp("gammapy_suite") / "quick.json"
    process = subprocess.run(
        [sys.executable, str(RUN), "--quick", "--json", str(report)], capture_output=True, text=True, timeout=1800
    )
    if not report.exists():
        pytest.fail(f"the harness did not finish (status {process.returncode}):\n{process.stdout[-3000:]}{process.stderr[-3000:]}")
    with open(report) as file:
        return json.load(file), process


def test_nothing_that_passes_plain_fails_with_gpsfast(quick_run):
    result, process = quick_run
    assert result["regressions"] == [], process.stdout[-5000:]
    assert process.returncode == 0, process.stdout[-5000:]


def test_the_runs_test_something(quick_run):
    """Every mode ran the drop-ins' own gammapy tests, and the gpsfast modes ran gpsfast's code."""
    result, _ = quick_run
    plain, substituted, accelerated = (result["results"][m] for m in ("plain", "substituted", "accelerated"))
    for mode in (plain, substituted, accelerated):
        passed = {k for k, v in mode["tests"].items() if v["outcome"] == "passed"}
        assert any("test_excess.py" in k for k in passed) and any("test_ts.py" in k for k in passed)
        assert sum("test_generalized_gaussian" in k for k in passed) >= 10
    assert sorted(substituted["substituted"]) == [
        "gpsfast.detect.excess.ExcessMapEstimator",
        "gpsfast.detect.tsmap.TSMapEstimator",
        "gpsfast.models.sersic.GeneralizedGaussianSpatialModel",
    ]
    excess = [v for k, v in substituted["tests"].items() if "test_excess.py" in k and v["outcome"] == "passed"]
    assert sum("detect.excess.correlate_masked" in v["probes"] for v in excess) >= len(excess) - 2
    ts = [v for k, v in substituted["tests"].items() if "test_ts.py" in k and v["outcome"] == "passed"]
    assert any("detect.tsmap.ts_map" in v["probes"] for v in ts)
    hit = set().union(*(v.get("probes", []) for v in accelerated["tests"].values()))
    assert {"irf.convolve.convolve_psf", "accelerate.patches.signal_array", "models.sersic.generalized_gaussian_grid"} <= hit
    missing = substituted["probes_missing"] + accelerated["probes_missing"]
    assert not missing, f"fast-path probes not found (renamed? update PROBES in gammapy_suite_plugin.py): {missing}"
