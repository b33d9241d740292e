"""Spectral extraction: gpsfast.spectra.extract_spectra vs the gammapy loop, same run.

Groups (the conftest prints the gammapy / gpsfast ratio of each):

- ``spectra 100 seeds PosTeV 10x6``: ``extract_spectra(dataset, regions)`` against
  ``[dataset.to_spectrum_dataset(r) for r in regions]``, 100 seeds with radii of
  0.1 to 0.3 deg, gammapy objects built on both sides.
- ``spectra 1000 seeds PosTeV 10x6``: gpsfast timed; the gammapy loop is timed
  on 20 of the seeds and extrapolated (``extra_info``).
- ``disk correlation PosTeV 10x6``: the full-map masked disk correlation kernel
  against SciPy FFT convolution of counts x mask (gammapy's own way to correlate
  maps), radius 0.2 deg.

The raw aperture kernel for the 100 seeds is timed too; its ``extra_info`` holds
the time of one read pass over the counts cube (``np.sum``, memory bandwidth)
measured in the same run, and the ratio of the two.

``index map PosTeV 10x6``: `IndexMapEstimator` over the whole map; gammapy has no
such estimator, so its ``extra_info`` holds the time of the gammapy equivalent
(``to_spectrum_dataset`` and a ``Fit`` of a power law per pixel) measured at a
few sampled pixels in the same run and extrapolated to every pixel.
"""
import time
import warnings

import astropy.units as u
import numpy as np
import pytest
from astropy.coordinates import SkyCoord
from regions import CircleSkyRegion
from scipy.signal import fftconvolve

from gpsfast.kernels.aperture import aperture_sums, correlate_masked, disk_weights
from gpsfast.spectra import IndexMapEstimator, extract_spectra
from gpsfast.spectra.pixels import seed_circles as _circles
from gpsfast.spectra.reduce import native_floats as _native
from gpsfast.spectra.seeds import Seeds as _Seeds

N_SEEDS = 100


def _regions(dataset, n, seed=0):
    """Seeds inside the map: random positions, radii 0.1 to 0.3 deg."""
    rng = np.random.default_rng(seed)
    image = dataset.counts.geom.to_image()
    ny, nx = image.data_shape
    binsz = image.pixel_scales[1].deg
    regions = []
    while len(regions) < n:
        radius = rng.uniform(0.1, 0.3)
        margin = radius / binsz + 2
        x, y = rng.uniform(margin, nx - 1 - margin), rng.uniform(margin, ny - 1 - margin)
        lon, lat = image.pix_to_coord((np.array(x), np.array(y)))
        center = SkyCoord(lon, lat, unit="deg", frame=image.frame)
        regions.append(CircleSkyRegion(center, radius * u.deg))
    return regions


@pytest.fixture(scope="module")
def seeds(postev_gps):
    regions = _regions(postev_gps, N_SEEDS)
    extract_spectra(postev_gps, regions[:2])  # compile / load the kernels
    return regions


def _gammapy_loop(dataset, regions):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return [dataset.to_spectrum_dataset(r) for r in regions]


def test_spectra_gpsfast(benchmark, postev_gps, seeds):
    benchmark.group = f"spectra {N_SEEDS} seeds PosTeV 10x6"
    benchmark.extra_info["impl"] = "gpsfast"
    out = benchmark.pedantic(extract_spectra, args=(postev_gps, seeds), rounds=15, iterations=1,
                             warmup_rounds=1)
    assert len(out) == N_SEEDS


def test_spectra_gammapy(benchmark, postev_gps, seeds):
    benchmark.group = f"spectra {N_SEEDS} seeds PosTeV 10x6"
    benchmark.extra_info["impl"] = "gammapy"
    out = benchmark.pedantic(_gammapy_loop, args=(postev_gps, seeds), rounds=1, iterations=1)
    assert len(out) == N_SEEDS


def test_spectra_1000_seeds(benchmark, postev_gps):
    """1000 seeds; gammapy's loop timed on 20 of them and extrapolated (extra_info)."""
    regions = _regions(postev_gps, 1000, seed=2)
    benchmark.group = "spectra 1000 seeds PosTeV 10x6"
    benchmark.extra_info["impl"] = "gpsfast"
    out = benchmark.pedantic(extract_spectra, args=(postev_gps, regions), rounds=3, iterations=1,
                             warmup_rounds=1)
    assert len(out) == 1000
    start = time.perf_counter()
    _gammapy_loop(postev_gps, regions[:20])
    per_seed = (time.perf_counter() - start) / 20
    benchmark.extra_info["gammapy_1000_extrapolated_s"] = per_seed * 1000
    benchmark.extra_info["speed_up_extrapolated"] = per_seed * 1000 / benchmark.stats.stats.median


def _read_pass_seconds(cube, repeat=7):
    best = np.inf
    for _ in range(repeat):
        start = time.perf_counter()
        np.sum(cube, dtype=np.float64)
        best = min(best, time.perf_counter() - start)
    return best


def test_aperture_kernel_vs_memory_pass(benchmark, postev_gps, seeds):
    """Raw kernel of the 100 seeds (counts with mask_safe), next to one pass over the cube."""
    dataset = postev_gps
    circles = _circles(dataset.counts.geom.to_image(), _Seeds(seeds))
    cube = _native(dataset.counts.data)
    mask = dataset.mask_safe.data
    args = (cube, mask, circles.cx_cut, circles.cy_cut, circles.r_cut,
            circles.x_lo, circles.y_lo, circles.x_hi, circles.y_hi)
    benchmark.group = f"aperture kernel {N_SEEDS} seeds PosTeV 10x6"
    benchmark.extra_info["impl"] = "gpsfast"
    benchmark.pedantic(aperture_sums, args=args, rounds=20, iterations=1, warmup_rounds=1)
    read_pass = _read_pass_seconds(cube)
    benchmark.extra_info["cube_MB"] = cube.nbytes / 1e6 + mask.nbytes / 1e6
    benchmark.extra_info["read_pass_ms"] = read_pass * 1e3
    benchmark.extra_info["kernel_over_read_pass"] = benchmark.stats.stats.median / read_pass


@pytest.fixture(scope="module")
def disk(postev_gps):
    binsz = postev_gps.counts.geom.pixel_scales[1].deg
    return disk_weights(0.2 / binsz)


def test_disk_correlation_gpsfast(benchmark, postev_gps, disk):
    benchmark.group = "disk correlation PosTeV 10x6"
    benchmark.extra_info["impl"] = "gpsfast"
    mask = postev_gps.mask_safe.data
    counts = _native(postev_gps.counts.data)
    correlate_masked(counts[:1], mask[:1], disk)  # compile / load
    benchmark.pedantic(correlate_masked, args=(counts, mask, disk), rounds=5, iterations=1)


def _fft_correlate(counts, mask, kernel):
    data = np.where(mask, counts, 0.0)
    return np.stack([fftconvolve(plane, kernel[::-1, ::-1], mode="same") for plane in data])


def test_disk_correlation_gammapy(benchmark, postev_gps, disk):
    benchmark.group = "disk correlation PosTeV 10x6"
    benchmark.extra_info["impl"] = "gammapy"
    benchmark.pedantic(_fft_correlate, args=(postev_gps.counts.data, postev_gps.mask_safe.data,
                                             disk), rounds=5, iterations=1)


def _gammapy_pixel_fit(dataset, region):
    from gammapy.modeling import Fit
    from gammapy.modeling.models import PowerLawSpectralModel, SkyModel

    spectrum = dataset.to_spectrum_dataset(region)
    spectrum.models = SkyModel(spectral_model=PowerLawSpectralModel(), name="pl")
    return Fit().run([spectrum])


def test_index_map(benchmark, postev_gps):
    radius = 0.1 * u.deg
    estimator = IndexMapEstimator(correlation_radius=radius)
    benchmark.group = "index map PosTeV 10x6"
    benchmark.extra_info["impl"] = "gpsfast"
    maps = benchmark.pedantic(estimator.run, args=(postev_gps,), rounds=3, iterations=1,
                              warmup_rounds=1)
    regions = _regions(postev_gps, 3, seed=1)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for region in regions:
            _gammapy_pixel_fit(postev_gps, CircleSkyRegion(region.center, radius))
    per_pixel = (time.perf_counter() - start) / len(regions)
    n_pix = maps["index"].data.size
    benchmark.extra_info["gammapy_per_pixel_s"] = per_pixel
    benchmark.extra_info["gammapy_full_map_extrapolated_s"] = per_pixel * n_pix
    benchmark.extra_info["speed_up_extrapolated"] = per_pixel * n_pix / benchmark.stats.stats.median
