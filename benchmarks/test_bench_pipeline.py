"""The survey pipeline: gpsfast vs the same stages in plain gammapy, on the 10 x 6 deg GPS-realistic patch.

``test_detection_and_spectra_stages``
    Both sides start from the same datasets (background model only) and produce significance maps at 0.1 and
    0.2 deg for both datasets, seeds above 5 sigma, and one spectrum per seed and dataset.
``test_pipeline_end_to_end``
    Every stage from the significance maps to the residual maps (`pipeline_reference`): the benchmark times the
    gpsfast side (group fits in-process, their likelihood calls counted); in the same run (optionally) the group
    fits are timed again with 2 workers, and the plain-gammapy reference is run, its fit stage measured per likelihood
    call on a sample of groups and extrapolated to the calls of all groups. A second fit-stage reference fits each
    group on gammapy cutouts with every model present (gammapy at its best without caching). Per-stage times of both
    sides, the measured and extrapolated parts and the end-to-end speed-ups are printed and stored in ``extra_info``.

The run takes 4-5 min on a quiet 2-core machine, mostly gpsfast's group fits (~80 s) and gammapy's sampled fits;
set ``GPSFAST_BENCH_FIT_2_JOBS=1`` to also time gpsfast's group fits with 2 workers (~60 s more).
"""
import os

import astropy.units as u
import numpy as np
import pytest
from gammapy.estimators import ExcessMapEstimator as GammapyExcessMapEstimator
from gammapy.estimators.utils import find_peaks
from pipeline_reference import STAGES, CallCounter, gammapy_reference, gpsfast_fit_time, gpsfast_pipeline
from regions import CircleSkyRegion

from gpsfast.detect import find_seeds, significance_maps
from gpsfast.spectra import extract_spectra

RADII = (0.1, 0.2)
N_JOBS_2 = os.environ.get("GPSFAST_BENCH_FIT_2_JOBS", "0") == "1"


@pytest.fixture(scope="module")
def datasets(survey_gps):
    datasets, models = survey_gps
    out = []
    for dataset in datasets:
        copy = dataset.copy(name=dataset.name)
        copy.models = [m for m in models if m.name == f"{dataset.name}-bkg"]
        out.append(copy)
    return out


def gammapy_stages(datasets):
    regions = []
    for dataset in datasets:
        for radius in RADII:
            maps = GammapyExcessMapEstimator(correlation_radius=f"{radius} deg").run(dataset)
            peaks = find_peaks(maps["sqrt_ts"], threshold=5, min_distance="0.1 deg")
            regions += [CircleSkyRegion(p, 0.1 * u.deg) for p in _positions(peaks)]
    return [d.to_spectrum_dataset(r) for d in datasets for r in regions if _inside(d, r)]


def _positions(peaks):
    from astropy.coordinates import SkyCoord

    return SkyCoord(peaks["ra"], peaks["dec"], unit="deg") if len(peaks) else []


def _inside(dataset, region):
    geom = dataset.counts.geom.to_image()
    return bool(geom.contains(region.center)[0]) and geom.center_skydir.separation(region.center).deg < 2.5


def gpsfast_stages(datasets):
    seeds = find_seeds(significance_maps(datasets, RADII), threshold=5, hough=False)
    regions = [CircleSkyRegion(p, 0.1 * u.deg) for p in seeds.positions]
    return [extract_spectra(d, [r for r in regions if _inside(d, r)]) for d in datasets]


@pytest.mark.parametrize("impl", ["gammapy", "gpsfast"])
def test_detection_and_spectra_stages(benchmark, datasets, impl):
    benchmark.group = "pipeline detection + seed spectra, 10x6 deg, 2 datasets"
    benchmark.extra_info["impl"] = impl
    stages = gammapy_stages if impl == "gammapy" else gpsfast_stages
    result = benchmark.pedantic(stages, args=(datasets,), rounds=1, iterations=1, warmup_rounds=0)
    assert len(result) > 0


def _report(fast, reference, fit_2_jobs):
    """Printable lines and ``extra_info`` figures of the end-to-end comparison."""
    lines = [f"{'stage':<13}{'gammapy (s)':>14}{'gpsfast (s)':>14}{'speed-up':>10}"]
    info = {}
    for stage in STAGES:
        slow = reference["fit_all"] if stage == "fit" else reference["times"][stage]
        quick = fast["times"][stage]
        mark = " (extrapolated)" if stage == "fit" else ""
        lines.append(f"{stage:<13}{slow:>14.2f}{quick:>14.2f}{slow / quick:>9.1f}x{mark}")
        info[f"gammapy_{stage}_s"] = round(slow, 3)
        info[f"gpsfast_{stage}_s"] = round(quick, 3)
    ratio = reference["total"] / fast["total"]
    lines.append(f"{'end to end':<13}{reference['total']:>14.2f}{fast['total']:>14.2f}{ratio:>9.1f}x")
    cutouts = reference["fit_cutouts_all"]
    ratio_cutouts = reference["total_cutouts"] / fast["total"]
    lines.append(f"{'fit, cutouts':<13}{cutouts:>14.2f}{fast['times']['fit']:>14.2f}"
                 f"{cutouts / fast['times']['fit']:>9.1f}x (extrapolated; gammapy Fit per group on gammapy cutouts)")
    lines.append(f"{'end to end':<13}{reference['total_cutouts']:>14.2f}{fast['total']:>14.2f}{ratio_cutouts:>9.1f}x"
                 " (gammapy fits on cutouts)")
    total_2_jobs = None
    if fit_2_jobs is not None:
        total_2_jobs = fast["total"] - fast["times"]["fit"] + fit_2_jobs
        lines.append(f"gpsfast fit stage with n_jobs=2: {fit_2_jobs:.2f} s, end to end {total_2_jobs:.2f} s, "
                     f"speed-up {reference['total'] / total_2_jobs:.1f}x "
                     f"({reference['total_cutouts'] / total_2_jobs:.1f}x vs gammapy fits on cutouts)")
    own = reference["own"]
    lines += [
        (f"gammapy fit stage = {reference['fit_setup']:.2f} s set-up (first likelihood of all models, measured) "
         f"+ {reference['fit_calls']} likelihood calls (counted in gpsfast's fits of the same groups) x "
         f"{np.mean(reference['fit_call']):.3f} s per call (measured with gammapy's Fit on the full datasets "
         f"over {reference['fit_sample_calls_timed']} calls of {len(reference['fit_call'])} sampled groups of "
         f"sizes {reference['fit_sample_sizes']}: {', '.join(f'{t:.3f}' for t in reference['fit_call'])} s/call)"),
        (f"gammapy fit stage on cutouts = {reference['n_groups']} groups x "
         f"{np.mean(reference['fit_cutouts_setup']):.3f} s set-up + {reference['fit_calls']} calls x "
         f"{np.mean(reference['fit_cutouts_call']):.4f} s per call (sampled groups: set-up "
         f"{', '.join(f'{t:.3f}' for t in reference['fit_cutouts_setup'])} s, "
         f"{', '.join(f'{t:.4f}' for t in reference['fit_cutouts_call'])} s/call)"),
        (f"  cross-check, mean extrapolated time of the sampled groups x {reference['n_groups']} groups: "
         f"{reference['fit_all_per_group']:.1f} s"),
        (f"gammapy measured part {reference['measured']:.2f} s (fit stage: {reference['times']['fit']:.2f} s), "
         f"extrapolated part {reference['total'] - reference['measured']:.2f} s"),
        (f"seeds / sources / groups: gammapy peaks {own['n_seeds']} / {own['n_sources']} / {own['n_groups']}, "
         f"gpsfast {fast['n_seeds']} / {fast['n_sources']} / {fast['n_groups']} (group sizes "
         f"{sorted(fast['group_sizes'])}; {fast['n_fit_success']} fits converged, {fast['fit_group_mean']:.2f} s "
         f"per group)"),
    ]
    info.update(
        gammapy_end_to_end_s=round(reference["total"], 2),
        gammapy_measured_s=round(reference["measured"], 2),
        gammapy_extrapolated_s=round(reference["total"] - reference["measured"], 2),
        gammapy_fit_setup_s=round(reference["fit_setup"], 2),
        gammapy_fit_s_per_call=",".join(f"{t:.4f}" for t in reference["fit_call"]),
        gammapy_fit_sample_sizes=",".join(str(n) for n in reference["fit_sample_sizes"]),
        gammapy_fit_calls=reference["fit_calls"],
        gammapy_fit_per_group_extrapolation_s=round(reference["fit_all_per_group"], 2),
        gammapy_cutouts_fit_s=round(cutouts, 2),
        gammapy_cutouts_end_to_end_s=round(reference["total_cutouts"], 2),
        gpsfast_end_to_end_s=round(fast["total"], 2),
        speed_up_end_to_end=round(ratio, 2),
        speed_up_end_to_end_vs_cutouts=round(ratio_cutouts, 2),
        n_sources=f"gammapy {own['n_sources']}, gpsfast {fast['n_sources']}",
        n_groups=f"gammapy {own['n_groups']}, gpsfast {fast['n_groups']}",
    )
    if fit_2_jobs is not None:
        info.update(gpsfast_fit_2_jobs_s=round(fit_2_jobs, 2), gpsfast_end_to_end_2_jobs_s=round(total_2_jobs, 2),
                    speed_up_end_to_end_2_jobs=round(reference["total"] / total_2_jobs, 2),
                    speed_up_end_to_end_2_jobs_vs_cutouts=round(reference["total_cutouts"] / total_2_jobs, 2))
    return lines, info


def test_pipeline_end_to_end(benchmark, datasets, tmp_path, capsys):
    benchmark.group = "pipeline end to end (significance -> residual), 10x6 deg, 2 datasets"
    benchmark.extra_info["impl"] = "gpsfast"
    counter = CallCounter()
    fast = benchmark.pedantic(gpsfast_pipeline, args=(datasets, tmp_path), kwargs={"counter": counter}, rounds=1,
                              iterations=1, warmup_rounds=0)
    fit_2_jobs = gpsfast_fit_time(datasets, fast["initial_models"], fast["groups"], n_jobs=2) if N_JOBS_2 else None
    reference = gammapy_reference(datasets, tmp_path, fit_models=fast["initial_models"],
                                  fit_group_list=fast["groups"], calls=counter.calls)
    lines, info = _report(fast, reference, fit_2_jobs)
    benchmark.extra_info.update(info)
    with capsys.disabled():
        print("\n" + "\n".join(["pipeline end to end, 10x6 deg (one round, same run)", *lines]))
    assert fast["n_sources"] > 0 and reference["own"]["n_sources"] > 0
    assert fast["n_fit_success"] > 0 and len(counter.calls) == fast["n_groups"]
