"""Run gammapy's own test files plain, with gpsfast's classes substituted, and accelerated.

gammapy ships its tests inside the installed package. This script runs a
selection of them three times, each in its own pytest process (see
``gammapy_suite_plugin.py`` for what each mode does):

- ``plain``: gammapy as installed;
- ``substituted``: gpsfast's `ExcessMapEstimator`, `TSMapEstimator` and
  `GeneralizedGaussianSpatialModel` in the place of gammapy's;
- ``accelerated``: every test inside ``gpsfast.accelerated()``.

It prints, per test file and mode, the counts of passed, failed and skipped
tests, the tests that pass plain but not in a gpsfast mode, the skip reasons
(gammapy's tests that need ``$GAMMAPY_DATA`` skip when it is not set) and the
tests that exist only in a gpsfast mode (importing gpsfast registers its model
classes in gammapy's registries, over which some tests are parametrised).
Exit status 1 when a test that passes plain does not pass in a gpsfast mode.

Usage, from the repository root::

    python tests/gammapy_suite/run.py                 # the full selection, three modes
    python tests/gammapy_suite/run.py --quick         # the subset run by the default test suite
    python tests/gammapy_suite/run.py --json out.json --jobs 1 -- -x   # pytest arguments after --
"""
import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
MODES = ("plain", "substituted", "accelerated")
PASSED = ("passed", "xpassed")

FULL = (
    "estimators/map/tests/test_excess.py",
    "estimators/map/tests/test_ts.py",
    "estimators/tests/test_utils.py",
    "modeling/models/tests/test_spatial.py",
    "modeling/models/tests/test_core.py",
    "modeling/models/tests/test_cube.py",
    "datasets/tests/test_map.py",
    "datasets/tests/test_evaluator.py",
    "makers/tests/test_map.py",
    "irf/psf/tests/test_kernel.py",
    "irf/psf/tests/test_map.py",
    "irf/psf/tests/test_parametric.py",
    "irf/psf/tests/test_table.py",
    "irf/edisp/tests/test_core.py",
    "irf/edisp/tests/test_kernel.py",
    "irf/edisp/tests/test_map.py",
    "maps/wcs/tests/test_geom.py",
    "maps/wcs/tests/test_ndmap.py",
)
"""gammapy test files (relative to the installed ``gammapy`` package) of the full run."""

QUICK = (
    "estimators/map/tests/test_excess.py",
    "estimators/map/tests/test_ts.py::test_ts_map_stat_scan_different_energy",
    "estimators/map/tests/test_ts.py::test_ts_map_asimov",
    "estimators/map/tests/test_ts.py::test_ts_map_with_model",
    "estimators/map/tests/test_ts.py::test_ts_map_deprecated_model_argument",
    "estimators/map/tests/test_ts.py::test_MapDatasetOnOff_error",
    "modeling/models/tests/test_spatial.py::test_generalized_gaussian",
    "modeling/models/tests/test_spatial.py::test_sky_gaussian",
    "datasets/tests/test_map.py",
    "datasets/tests/test_evaluator.py",
)
"""The subset of the default test suite: the drop-ins' own estimator tests and the dataset tests."""

QUICK_DESELECT = (
    "datasets/tests/test_evaluator.py::test_peek_region_geom",
    "datasets/tests/test_evaluator.py::test_peek_wcs_geom",
)
"""Slow tests of `QUICK`'s files that exercise nothing of gpsfast's (plots)."""


def gammapy_dir():
    """Folder of the installed gammapy package (the test files live inside it)."""
    import gammapy

    return Path(gammapy.__file__).resolve().parent


def run_mode(mode, targets, report, pytest_args=(), empty_data=None):
    """Run one pytest process in ``mode``; returns (the parsed report, wall seconds, CPU seconds).

    With ``empty_data`` (a folder), ``$GAMMAPY_DATA`` points to it, so the tests
    marked ``requires_data`` run, and those that read a file there count as skipped.
    """
    package = gammapy_dir()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    options = []
    if empty_data is not None:
        env["GAMMAPY_DATA"] = str(empty_data)
        options.append(f"--gpsfast-empty-data={empty_data}")
    command = [
        sys.executable, "-m", "pytest",
        "-c", str(HERE / "gammapy_pytest.ini"),
        "--rootdir", str(package.parent),
        "-p", "no:cacheprovider",
        "-p", "gammapy_suite_plugin",
        f"--gpsfast-mode={mode}",
        f"--gpsfast-report={report}",
        "-q", "--no-header", "-W", "ignore",
        *options,
        *pytest_args,
        *(str(package / target) for target in targets),
    ]
    start = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    with process.stdout:
        output = process.stdout.read()
    # wait4: this child's own CPU time, also when the modes run at the same time
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    cpu = usage.ru_utime + usage.ru_stime
    if process.returncode not in (0, 1) or not Path(report).exists():
        raise RuntimeError(f"pytest in mode {mode} ended with status {process.returncode}:\n{output[-4000:]}")
    with open(report) as file:
        return json.load(file), wall, cpu


def file_of(nodeid):
    return nodeid.split("::", 1)[0]


def compare(results):
    """Counts per file and mode, regressions, extra tests and skip reasons."""
    plain = results["plain"]["tests"]
    counts = collections.defaultdict(lambda: collections.Counter())
    for mode, result in results.items():
        for nodeid, record in result["tests"].items():
            outcome = "passed" if record["outcome"] in PASSED else record["outcome"]
            counts[(file_of(nodeid), mode)][outcome] += 1
    regressions = []
    extra = []
    for mode, result in results.items():
        if mode == "plain":
            continue
        tests = result["tests"]
        for nodeid, record in plain.items():
            if record["outcome"] in PASSED:
                other = tests.get(nodeid)
                if other is None or other["outcome"] not in PASSED:
                    detail = "not run" if other is None else f"{other['outcome']}: {other['detail']}"
                    regressions.append((mode, nodeid, detail))
        for nodeid, record in tests.items():
            if nodeid not in plain:
                extra.append((mode, nodeid, record["outcome"], record["detail"]))
    skips = collections.Counter()
    for nodeid, record in plain.items():
        if record["outcome"] == "skipped":
            skips[skip_reason(record["detail"])] += 1
    return counts, regressions, extra, skips


def skip_reason(detail):
    """A skip reason without the file name ("needs $GAMMAPY_DATA/a/b.fits" -> "needs $GAMMAPY_DATA")."""
    detail = detail.removeprefix("Skipped: ")
    return "needs a $GAMMAPY_DATA file" if detail.startswith("needs $GAMMAPY_DATA") else detail


def probe_counts(result):
    """Per file: number of tests that ran at least one of gpsfast's fast paths."""
    per_file = collections.Counter()
    for nodeid, record in result["tests"].items():
        if record.get("probes"):
            per_file[file_of(nodeid)] += 1
    return per_file


def format_table(results, counts, probes):
    modes = [mode for mode in MODES if mode in results]
    files = sorted({key[0] for key in counts})
    header = ["gammapy test file"] + [f"{mode} p/f/s" for mode in modes] + [f"fast {m[:5]}." for m in modes[1:]]
    rows = []
    totals = {mode: collections.Counter() for mode in modes}
    for name in files:
        row = [name.removeprefix("gammapy/")]
        for mode in modes:
            c = counts[(name, mode)]
            totals[mode].update(c)
            row.append(f"{c['passed']}/{c['failed'] + c['error']}/{c['skipped'] + c['xfailed']}")
        row += [str(probes[mode][name]) for mode in modes[1:]]
        rows.append(row)
    total_row = ["total"] + [
        f"{t['passed']}/{t['failed'] + t['error']}/{t['skipped'] + t['xfailed']}" for t in totals.values()
    ] + [str(sum(probes[mode].values())) for mode in modes[1:]]
    rows.append(total_row)
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    line = lambda r: "| " + " | ".join(str(v).ljust(w) for v, w in zip(r, widths)) + " |"  # noqa: E731
    out = [line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(r) for r in rows]
    return "\n".join(out)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="the subset of the default test suite")
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated subset of plain,substituted,accelerated")
    parser.add_argument("--jobs", type=int, default=min(3, os.cpu_count() or 1), help="modes run at the same time")
    parser.add_argument("--json", help="write the comparison (and every test's outcome per mode) to this file")
    parser.add_argument(
        "--keep-data-skips",
        action="store_true",
        help="without $GAMMAPY_DATA, skip every test marked requires_data (default: run them against an empty "
        "$GAMMAPY_DATA and count as skipped those that read a file)",
    )
    parser.add_argument(
        "--per-test", action="store_true", help="accelerated mode: enter gpsfast.accelerated() per test, not per session"
    )
    parser.add_argument("--list-skipped", action="store_true", help="print every test skipped plain, with the reason")
    parser.add_argument("targets", nargs="*", help="test files or ids relative to the gammapy package (default: the selection)")
    args, pytest_args = parser.parse_known_args(argv)
    pytest_args = [a for a in pytest_args if a != "--"]
    if args.per_test:
        pytest_args.append("--gpsfast-scope=test")
    modes = [m for m in args.modes.split(",") if m]
    if "plain" not in modes or set(modes) - set(MODES):
        parser.error("--modes: plain and any of substituted, accelerated")
    targets = args.targets or (QUICK if args.quick else FULL)
    if args.quick and not args.targets:
        pytest_args += [f"--deselect={gammapy_dir() / nodeid}" for nodeid in QUICK_DESELECT]
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        empty_data = None
        if "GAMMAPY_DATA" not in os.environ and not args.keep_data_skips:
            empty_data = Path(tmp) / "empty-gammapy-data"
            empty_data.mkdir()
        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            futures = {
                m: pool.submit(run_mode, m, targets, Path(tmp) / f"{m}.json", pytest_args, empty_data) for m in modes
            }
            runs = {m: future.result() for m, future in futures.items()}
    wall = time.perf_counter() - start
    results = {m: run[0] for m, run in runs.items()}
    counts, regressions, extra, skips = compare(results)
    probes = {m: probe_counts(results[m]) for m in modes if m != "plain"}
    print(f"gammapy {_gammapy_version()} test files, {len(targets)} targets (counts: passed/failed/skipped)")
    print(format_table(results, counts, probes))
    print()
    for mode, (_, mode_wall, mode_cpu) in runs.items():
        extra_info = ""
        if mode != "plain":
            result = results[mode]
            if mode == "substituted":
                extra_info = f"; substituted: {', '.join(result['substituted'])}"
            else:
                extra_info = f"; gpsfast.accelerated() entered once per {'test' if args.per_test else 'session'}"
            if result["probes_missing"]:
                extra_info += f"; probes not found: {', '.join(result['probes_missing'])}"
        print(f"{mode:12s} {mode_wall:6.1f} s wall, {mode_cpu:6.1f} s CPU{extra_info}")
    print(f"{'all':12s} {wall:6.1f} s wall ({args.jobs} at a time)")
    for mode in modes:
        for error in results[mode]["collection_errors"]:
            print(f"COLLECTION ERROR [{mode}] {error['nodeid']}: {error['detail']}")
    print()
    print(f"Skipped plain ({sum(skips.values())}):")
    for reason, n in skips.most_common():
        print(f"  {n:4d}  {reason}")
    if args.list_skipped:
        for nodeid, record in results["plain"]["tests"].items():
            if record["outcome"] == "skipped":
                print(f"        {nodeid}  -- {record['detail'].removeprefix('Skipped: ')}")
    failed_plain = [(k, r) for k, r in results["plain"]["tests"].items() if r["outcome"] not in PASSED + ("skipped", "xfailed")]
    if failed_plain:
        print()
        print(f"Failing plain, not compared ({len(failed_plain)}):")
        for nodeid, record in failed_plain:
            print(f"  {record['outcome']:8s} {nodeid}  -- {record['detail']}")
    if extra:
        print()
        print(f"Tests only in a gpsfast mode ({len(extra)}; parametrised over gammapy's registries):")
        for mode, nodeid, outcome, detail in extra:
            print(f"  [{mode}] {outcome:8s} {nodeid}" + (f"  -- {detail}" if outcome not in PASSED else ""))
    print()
    if regressions:
        print(f"PASS PLAIN BUT NOT IN A GPSFAST MODE ({len(regressions)}):")
        for mode, nodeid, detail in regressions:
            print(f"  [{mode}] {nodeid}  -- {detail}")
    else:
        print(f"Every test that passes plain passes {' and '.join(m for m in modes if m != 'plain') or '(no other mode)'}.")
    if args.json:
        with open(args.json, "w") as file:
            json.dump(
                {
                    "targets": list(targets),
                    "regressions": [dict(zip(("mode", "test", "detail"), r)) for r in regressions],
                    "extra": [dict(zip(("mode", "test", "outcome", "detail"), e)) for e in extra],
                    "skipped_plain": dict(skips),
                    "times": {m: {"wall_s": run[1], "cpu_s": run[2]} for m, run in runs.items()},
                    "results": results,
                },
                file,
                indent=1,
            )
    return 1 if regressions else 0


def _gammapy_version():
    import gammapy

    return gammapy.__version__


if __name__ == "__main__":
    sys.exit(main())
