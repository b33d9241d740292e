"""pytest plugin running gammapy's own test files in one of three modes.

Loaded by the harness (``python -m pytest -p gammapy_suite_plugin``, with this
folder on ``PYTHONPATH``); the mode is ``--gpsfast-mode``:

``plain``
    gammapy as installed.
``substituted``
    gpsfast's drop-ins are put in the place of gammapy's classes before any test
    module is imported, at the names the test modules import:
    ``gammapy.estimators.ExcessMapEstimator`` and ``TSMapEstimator`` (also in
    ``gammapy.estimators.map``) become `gpsfast.detect.ExcessMapEstimator` and
    `gpsfast.detect.TSMapEstimator`, ``gammapy.modeling.models.GeneralizedGaussianSpatialModel``
    becomes `gpsfast.models.GeneralizedGaussianSpatialModel`; after collection,
    every collected module global still bound to one of gammapy's classes is
    rebound too (the record lists, per test module, the names bound to gpsfast's classes). gammapy's own modules keep their classes (the registries, YAML
    tags and internal references are untouched).
``accelerated``
    every test runs inside ``gpsfast.accelerated()`` (an autouse fixture entering
    it once for the session, or with ``--gpsfast-scope=test`` once per test, so that
    its exit, which drops its caches and restores gammapy, runs after every test).

In both gpsfast modes gpsfast is imported before collection (as a script doing
``import gpsfast`` at the top would), and a few of gpsfast's fast-path entry
points (`PROBES`) are wrapped with a counter, so that the record says which tests
actually ran gpsfast's code rather than a fallback to gammapy's.

With ``--gpsfast-report FILE`` the outcome of every test (its id from the
``gammapy/`` folder on, outcome, skip reason or the last line of the failure,
duration, probes hit) and the substitutions made are written to FILE as JSON.

With ``--gpsfast-empty-data DIR`` (``$GAMMAPY_DATA`` set to the empty folder DIR by
the harness), the tests marked ``requires_data`` run; a test that then fails on
a file under DIR is reported skipped ("needs $GAMMAPY_DATA/<file>"), so the tests
that are marked but read no file (some only use fixtures made in memory) count
with their real outcome.

gammapy's ``conftest.py`` imports ``pytest_astropy_header`` (a plugin of
pytest-astropy, which gpsfast does not depend on): when it is not installed, a
module holding the two dictionaries that conftest fills is provided.
"""
import contextlib
import functools
import importlib
import json
import sys
import types

import pytest

MODES = ("plain", "substituted", "accelerated")

# (gammapy module, name, gpsfast module): the names the test modules import
SUBSTITUTIONS = (
    ("gammapy.estimators", "ExcessMapEstimator", "gpsfast.detect"),
    ("gammapy.estimators.map", "ExcessMapEstimator", "gpsfast.detect"),
    ("gammapy.estimators", "TSMapEstimator", "gpsfast.detect"),
    ("gammapy.estimators.map", "TSMapEstimator", "gpsfast.detect"),
    ("gammapy.modeling.models", "GeneralizedGaussianSpatialModel", "gpsfast.models"),
)


# (gpsfast module, function): fast paths; a call counts when it returns something
# other than None (None is where these functions hand the case back to gammapy)
PROBES = (
    ("gpsfast.detect.excess", "correlate_masked"),
    ("gpsfast.detect.tsmap", "ts_map"),
    ("gpsfast.models.sersic", "generalized_gaussian_grid"),
    ("gpsfast.models.sersic", "generalized_gaussian_points"),
    ("gpsfast.irf.convolve", "convolve_psf"),
    ("gpsfast.accelerate.geometry", "trim_cutout"),
    ("gpsfast.accelerate.geometry", "mask_cutout_any"),
    ("gpsfast.accelerate.geometry", "_shifted_slices"),
    ("gpsfast.evaluate.datasets", "signal_array"),
    ("gpsfast.evaluate.datasets", "cash_stat_sum"),
    ("gpsfast.accelerate.patches", "signal_array"),
    ("gpsfast.accelerate.patches", "cash_stat_sum"),
)


def _provide_astropy_header():
    try:
        importlib.import_module("pytest_astropy_header.display")
    except ImportError:
        package = types.ModuleType("pytest_astropy_header")
        display = types.ModuleType("pytest_astropy_header.display")
        display.PYTEST_HEADER_MODULES = {}
        display.TESTED_VERSIONS = {}
        package.display = display
        sys.modules["pytest_astropy_header"] = package
        sys.modules["pytest_astropy_header.display"] = display


_provide_astropy_header()


def pytest_addoption(parser):
    group = parser.getgroup("gpsfast", "gpsfast: gammapy's tests against gpsfast's drop-ins")
    group.addoption("--gpsfast-mode", choices=MODES, default="plain", help="plain, substituted or accelerated")
    group.addoption("--gpsfast-report", default=None, help="write the outcome of every test to this JSON file")
    group.addoption(
        "--gpsfast-scope",
        choices=("session", "test"),
        default="session",
        help="accelerated mode: enter gpsfast.accelerated() once for the session or once per test",
    )
    group.addoption(
        "--gpsfast-empty-data", default=None, help="the empty folder $GAMMAPY_DATA points to: reading it is a skip"
    )


class _Suite:
    """Substitutions, the accelerated mode and the outcome record of one run."""

    def __init__(self, config):
        self.mode = config.getoption("--gpsfast-mode")
        self.report_path = config.getoption("--gpsfast-report")
        self.empty_data = config.getoption("--gpsfast-empty-data")
        self.replaced = {}  # gammapy class -> gpsfast class
        self.uses = {}  # test module -> its names bound to gpsfast classes
        self.outcomes = {}
        self.errors = []
        self.hits = set()
        self.durations = {}
        self.probes_missing = []
        if self.mode != "plain":
            import gpsfast  # noqa: F401  (as a script importing gpsfast first)

            self._install_probes()
        if self.mode == "substituted":
            self._substitute()

    def _install_probes(self):
        for module_name, name in PROBES:
            try:
                module = importlib.import_module(module_name)
                function = getattr(module, name)
            except (ImportError, AttributeError):
                self.probes_missing.append(f"{module_name}.{name}")
                continue
            setattr(module, name, self._probe(function, f"{module_name.removeprefix('gpsfast.')}.{name}"))

    def _probe(self, function, label):
        hits = self.hits

        @functools.wraps(function)
        def probe(*args, **kwargs):
            result = function(*args, **kwargs)
            if result is not None:
                hits.add(label)
            return result

        return probe

    def _substitute(self):
        for module_name, name, fast_module_name in SUBSTITUTIONS:
            module = importlib.import_module(module_name)
            fast = getattr(importlib.import_module(fast_module_name), name)
            original = getattr(module, name)
            if original is not fast:
                if not issubclass(fast, original):
                    raise pytest.UsageError(f"{fast_module_name}.{name} does not subclass {module_name}.{name}")
                self.replaced[original] = fast
                setattr(module, name, fast)

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, items):
        if not self.replaced:
            return
        fast_classes = set(self.replaced.values())
        for module in {item.module for item in items if getattr(item, "module", None) is not None}:
            names = []
            for name, value in list(vars(module).items()):
                if not isinstance(value, type):
                    continue
                if value in self.replaced:
                    setattr(module, name, self.replaced[value])
                if value in self.replaced or value in fast_classes:
                    names.append(name)
            if names:
                self.uses[module.__name__] = sorted(names)

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(self, item, call):
        report = yield
        if self.empty_data and report.failed and call.excinfo is not None:
            needed = _missing_data_file(call.excinfo, self.empty_data, _requires_data(item))
            if needed is not None:
                report.outcome = "skipped"
                report.longrepr = (str(item.path), item.location[1], f"needs $GAMMAPY_DATA/{needed}")
        return report

    def pytest_runtest_logstart(self, nodeid, location):
        self.hits.clear()

    def pytest_runtest_logreport(self, report):
        nodeid = _short_id(report.nodeid)
        if report.when == "teardown" and nodeid in self.outcomes:
            self.outcomes[nodeid]["probes"] = sorted(self.hits)
        self.durations[nodeid] = self.durations.get(nodeid, 0.0) + report.duration
        if report.when == "call" or report.outcome != "passed":
            previous = self.outcomes.get(nodeid)
            if previous is not None and previous["outcome"] == "failed":
                return  # a teardown error after a failure keeps the failure
            detail = ""
            if report.skipped:
                detail = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
                outcome = "xfailed" if hasattr(report, "wasxfail") else "skipped"
            elif report.failed:
                outcome = "xpassed-strict" if hasattr(report, "wasxfail") else "failed"
                detail = _last_line(report)
            else:
                outcome = "xpassed" if hasattr(report, "wasxfail") else "passed"
            if report.when != "call" and report.failed:
                outcome = "error"
            self.outcomes[nodeid] = {"outcome": outcome, "when": report.when, "detail": detail}

    def pytest_collectreport(self, report):
        if report.failed:
            self.errors.append({"nodeid": _short_id(report.nodeid), "detail": _last_line(report)})

    def pytest_sessionfinish(self, session):
        if self.report_path is None:
            return
        for nodeid, record in self.outcomes.items():
            record["duration"] = round(self.durations.get(nodeid, 0.0), 3)
        with open(self.report_path, "w") as file:
            json.dump(
                {
                    "mode": self.mode,
                    "substituted": sorted(f"{c.__module__}.{c.__name__}" for c in self.replaced.values()),
                    "uses": self.uses,
                    "probes_missing": self.probes_missing,
                    "collection_errors": self.errors,
                    "tests": self.outcomes,
                },
                file,
                indent=1,
            )


def _accelerated_for(request, scope):
    """``gpsfast.accelerated()`` in the accelerated mode with this fixture scope, else a null context."""
    config = request.config
    if config.getoption("--gpsfast-mode") != "accelerated" or config.getoption("--gpsfast-scope") != scope:
        return contextlib.nullcontext()
    import gpsfast

    return gpsfast.accelerated()


@pytest.fixture(scope="session", autouse=True)
def _gpsfast_accelerated_session(request):
    """The whole session inside ``gpsfast.accelerated()`` (``--gpsfast-scope=session``, the default)."""
    with _accelerated_for(request, "session"):
        yield


@pytest.fixture(autouse=True)
def _gpsfast_accelerated_test(request):
    """Each test inside its own ``gpsfast.accelerated()`` (``--gpsfast-scope=test``)."""
    with _accelerated_for(request, "test"):
        yield


def _requires_data(item):
    """Whether the test is marked with gammapy's ``requires_data`` (a skipif "Missing data: ...")."""
    return any(str(mark.kwargs.get("reason", "")).startswith("Missing data") for mark in item.iter_markers("skipif"))


def _missing_data_file(excinfo, folder, marked):
    """What data file the failure is about, else None.

    A file under ``folder`` named by the exception (or one it chains), or, for a
    test marked ``requires_data``, any missing-file ``OSError`` (some name only
    the file, without its folder).
    """
    folder = folder.rstrip("/") + "/"
    error = excinfo.value
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        text = " ".join(str(part) for part in (error, getattr(error, "filename", None)) if part)
        index = text.find(folder)
        if index >= 0:
            return text[index + len(folder):].split("'")[0].split()[0].strip("\"',")
        if marked and isinstance(error, OSError):
            return f"... ({type(error).__name__}: {str(error)[:100]})"
        error = error.__cause__ or error.__context__
    return None


def _short_id(nodeid):
    """Test id from the ``gammapy/`` package folder on (the part after site-packages)."""
    marker = "gammapy/"
    index = nodeid.find(marker)
    return nodeid if index < 0 else nodeid[index:]


def _last_line(report):
    text = str(report.longrepr or "")
    lines = [line for line in text.splitlines() if line.startswith("E ")]
    if lines:
        return " | ".join(line[1:].strip() for line in lines[:3])[:400]
    stripped = [line for line in text.splitlines() if line.strip()]
    return stripped[-1][:400] if stripped else ""


def pytest_configure(config):
    config.pluginmanager.register(_Suite(config), "gpsfast-suite")
