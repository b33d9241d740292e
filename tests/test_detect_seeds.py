"""Seeds (peaks, Hough circles), the seed catalogue and association by surface overlap."""
import astropy.units as u
import numpy as np
import pytest
from astropy.coordinates import SkyCoord
from astropy.table import Table
from gammapy.estimators.utils import find_peaks
from gammapy.maps import Map, WcsGeom
from gammapy.modeling.models import (
    FoVBackgroundModel,
    Models,
    PowerLawSpectralModel,
    ShellSpatialModel,
    SkyModel,
)
from regions import CircleSkyRegion, EllipseSkyRegion, Regions

from gpsfast.detect import (
    ExcessMapEstimator,
    SeedCatalog,
    associate,
    find_circle_seeds,
    find_peak_seeds,
    find_seeds,
    overlap_fraction,
    significance_maps,
)
from gpsfast.errors import InputError
from gpsfast.irf import make_cta_like_irfs
from gpsfast.simulate import sources_table
from gpsfast.survey import make_pointings, make_survey_datasets


def gaussian_image(positions, amplitude=10.0, sigma_pix=3.0, shape=(80, 120), noise=0.0, seed=0):
    geom = WcsGeom.create(skydir=(0, 0), npix=(shape[1], shape[0]), binsz=0.02, frame="galactic")
    y, x = np.mgrid[: shape[0], : shape[1]]
    data = np.random.default_rng(seed).normal(0, noise, shape) if noise else np.zeros(shape)
    for px, py in positions:
        data += amplitude * np.exp(-0.5 * ((x - px) ** 2 + (y - py) ** 2) / sigma_pix**2)
    return Map.from_geom(geom, data=data)


def test_peaks_match_gammapy_find_peaks():
    image = gaussian_image([(20, 30), (70, 50), (100, 20)], noise=0.5)
    expected = find_peaks(image, threshold=5, min_distance="0.1 deg")
    seeds = find_peak_seeds(image, threshold=5, min_distance="0.1 deg")
    assert len(seeds) == len(expected) == 3
    positions = SkyCoord(seeds["glon"], seeds["glat"], unit="deg", frame="galactic")
    reference = SkyCoord(expected["ra"], expected["dec"], unit="deg", frame="icrs")
    idx, separation, _ = positions.match_to_catalog_sky(reference)
    assert np.all(separation.deg < 1e-8) and len(set(idx)) == 3
    # the half-maximum radius of a Gaussian blob of sigma 3 px is 1.18 sigma = 0.07 deg
    assert np.all(np.abs(seeds["radius"] - 1.1774 * 3 * 0.02) < 0.02)


def test_peak_at_map_edge():
    image = gaussian_image([(0, 40)])
    seeds = find_peak_seeds(image, threshold=5)
    assert len(seeds) == 1
    position = SkyCoord(seeds["glon"][0], seeds["glat"][0], unit="deg", frame="galactic")
    x, y = image.geom.to_image().coord_to_pix({"skycoord": position})
    assert np.allclose([x.item(), y.item()], [0, 40], atol=1e-6)


@pytest.mark.parametrize("fill", ["zeros", "nan", "below"])
def test_nothing_found_is_empty_not_error(fill):
    image = gaussian_image([(40, 40)], amplitude=3)
    if fill == "zeros":
        image.data[...] = 0
    elif fill == "nan":
        image.data[...] = np.nan
    seeds = find_seeds({"map": image}, threshold=5)
    assert isinstance(seeds, SeedCatalog) and len(seeds) == 0
    assert "sqrt_ts_map" in seeds.table.colnames


def test_nan_pixels_ignored():
    image = gaussian_image([(40, 40), (90, 30)], noise=0.3)
    image.data[:, :10] = np.nan
    image.data[60:, 60:] = np.nan
    seeds = find_seeds({"map": image}, threshold=5, hough=False)
    assert len(seeds) == 2


def test_merge_maps_and_columns():
    first = gaussian_image([(30, 30), (90, 50)], amplitude=12)
    second = gaussian_image([(31, 30)], amplitude=8, sigma_pix=5)
    seeds = find_seeds({"r0.1": first, "r0.2": second}, threshold=5, hough=False)
    assert len(seeds) == 2
    brightest = seeds[0]
    assert brightest["name"] == "SEED-001"
    assert set(brightest["origin"].split(",")) == {"r0.1", "r0.2"}
    assert seeds[1]["origin"] == "r0.1"
    assert brightest["sqrt_ts_r0.1"] == pytest.approx(12, rel=0.01)
    assert brightest["sqrt_ts_r0.2"] > 7
    assert seeds["SEED-002"]["sqrt_ts_r0.2"] < 1


def test_bad_maps():
    with pytest.raises(InputError, match="at least one significance map"):
        find_seeds({})
    cube = Map.create(npix=10, binsz=0.02, axes=[__import__("gammapy.maps", fromlist=["MapAxis"]).MapAxis.from_energy_bounds(1, 10, 2, "TeV")])
    with pytest.raises(InputError, match="'cube' must have a single energy bin"):
        find_seeds({"cube": cube})


def test_nesting_and_lookup():
    table = Table(
        {
            "glon": [0.0, 0.05, 0.5, 0.02],
            "glat": [0.0, 0.0, 0.0, 0.01],
            "radius": [0.5, 0.1, 0.1, 0.02],
            "sqrt_ts": [10.0, 8.0, 6.0, 5.0],
        }
    )
    seeds = SeedCatalog(table)
    seeds.compute_nesting()
    assert list(seeds.table["name"]) == ["SEED-001", "SEED-002", "SEED-003", "SEED-004"]
    assert seeds["SEED-002"]["parent"] == "SEED-001"
    assert seeds["SEED-004"]["parent"] == "SEED-002", "the smallest containing seed is the parent"
    assert seeds["SEED-003"]["parent"] == "" and not seeds["SEED-003"]["nested"]
    assert seeds["SEED-001"]["n_children"] == 1 and seeds["SEED-002"]["n_children"] == 1
    with pytest.raises(KeyError, match="No seed named 'SEED-999'"):
        seeds["SEED-999"]


@pytest.mark.parametrize("fmt", ["ds9", "crtf"])
def test_regions_export(tmp_path, fmt):
    seeds = SeedCatalog(Table({"glon": [0.1, -0.3], "glat": [0.0, 0.2], "radius": [0.1, 0.3], "sqrt_ts": [9.0, 6.0]}))
    path = tmp_path / f"seeds.{fmt}"
    seeds.write_regions(path, format=fmt)
    regions = Regions.read(str(path), format=fmt)
    assert len(regions) == 2
    assert regions[1].radius.to_value("deg") == pytest.approx(0.3)
    assert regions[0].center.galactic.separation(SkyCoord(0.1, 0, unit="deg", frame="galactic")).deg < 1e-6
    with pytest.raises(InputError, match="exists"):
        seeds.write_regions(path, format=fmt)
    with pytest.raises(InputError, match="Unknown region format"):
        seeds.write_regions(tmp_path / "x.txt", format="fits")


def test_catalog_write_read(tmp_path):
    seeds = find_seeds({"m": gaussian_image([(30, 30), (90, 50)])}, threshold=5, hough=False)
    seeds.write(tmp_path / "seeds.fits")
    back = SeedCatalog.read(tmp_path / "seeds.fits")
    assert list(back.table["name"]) == list(seeds.table["name"])
    np.testing.assert_allclose(back.table["glon"], seeds.table["glon"])


def test_plot(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    image = gaussian_image([(30, 30), (90, 50)])
    seeds = find_seeds({"m": image}, threshold=5, hough=False)
    ax = seeds.plot(image)
    assert len(ax.patches) + len(ax.artists) >= 2
    ax.figure.savefig(tmp_path / "seeds.png")
    assert (tmp_path / "seeds.png").stat().st_size > 1000


def lens_fraction(r1, r2, d):
    """Overlap area of two circles over the smaller one's area (textbook lens formula)."""
    if d >= r1 + r2:
        return 0.0
    if d <= abs(r1 - r2):
        return 1.0
    a = r1**2 * np.arccos((d**2 + r1**2 - r2**2) / (2 * d * r1))
    b = r2**2 * np.arccos((d**2 + r2**2 - r1**2) / (2 * d * r2))
    c = 0.5 * np.sqrt((-d + r1 + r2) * (d + r1 - r2) * (d - r1 + r2) * (d + r1 + r2))
    return (a + b - c) / (np.pi * min(r1, r2) ** 2)


@pytest.mark.parametrize("r1, r2, d", [(0.1, 0.1, 0.05), (0.1, 0.3, 0.3), (0.2, 0.2, 0.39), (0.1, 0.5, 0.2), (0.1, 0.1, 0.5)])
def test_overlap_fraction_circles(r1, r2, d):
    a = CircleSkyRegion(SkyCoord(0, 0, unit="deg", frame="galactic"), r1 * u.deg)
    b = CircleSkyRegion(SkyCoord(d, 0, unit="deg", frame="galactic"), r2 * u.deg)
    assert overlap_fraction(a, b) == pytest.approx(lens_fraction(r1, r2, d), abs=0.03)
    assert overlap_fraction(a, b) == overlap_fraction(b, a)


def test_overlap_fraction_ellipse():
    """A thin ellipse along l crossing a circle: the overlap follows the orientation."""
    circle = CircleSkyRegion(SkyCoord(0.4, 0, unit="deg", frame="galactic"), 0.1 * u.deg)
    along = EllipseSkyRegion(SkyCoord(0, 0, unit="deg", frame="galactic"), width=1.0 * u.deg, height=0.1 * u.deg, angle=0 * u.deg)
    across = EllipseSkyRegion(SkyCoord(0, 0, unit="deg", frame="galactic"), width=1.0 * u.deg, height=0.1 * u.deg, angle=90 * u.deg)
    # flat-sky reference on a fine grid (the regions are small and at b = 0)
    l, b = np.meshgrid(np.linspace(0.29, 0.51, 1501), np.linspace(-0.11, 0.11, 1501))
    in_circle = (l - 0.4) ** 2 + b**2 < 0.1**2
    in_ellipse = (l / 0.5) ** 2 + (b / 0.05) ** 2 < 1
    expected = np.count_nonzero(in_circle & in_ellipse) / np.count_nonzero(in_circle)
    assert overlap_fraction(circle, along) == pytest.approx(expected, abs=0.03)
    assert overlap_fraction(circle, across) == 0


def test_associate_one_to_many():
    seeds = SeedCatalog(Table({"glon": [0.0, 1.0, 3.0], "glat": [0.0, 0.0, 0.0], "radius": [0.3, 0.1, 0.1], "sqrt_ts": [9.0, 7.0, 6.0]}))
    sources = Table({"name": ["A", "B", "C"], "glon": [0.1, -0.1, 1.02], "glat": [0.0, 0.05, 0.0], "radius": [0.05, 0.05, 0.1]})
    pairs = associate(seeds, sources, threshold=0.1)
    assert sorted(pairs["source"][pairs["seed"] == "SEED-001"]) == ["A", "B"]
    assert list(pairs["source"][pairs["seed"] == "SEED-002"]) == ["C"]
    assert seeds["SEED-001"]["n_assoc"] == 2 and seeds["SEED-003"]["assoc"] == ""
    assert set(pairs["rank_seed"][pairs["seed"] == "SEED-001"]) == {1, 2}
    with pytest.raises(InputError, match="threshold must be in"):
        associate(seeds, sources, threshold=0)


def test_associate_equals_all_pairs():
    """The candidate pairs of search_around_sky give the table of testing every pair."""
    from gammapy.modeling.models import DiskSpatialModel, GaussianSpatialModel, PointSpatialModel

    from gpsfast.detect.associate import source_regions

    rng = np.random.default_rng(11)
    n_seeds = 40
    glon = np.concatenate([rng.uniform(-1.5, 1.5, n_seeds - 2), [359.95, 0.02]])
    seeds = Table(
        {
            "name": [f"S{k}" for k in range(n_seeds)],
            "glon": glon,
            "glat": rng.uniform(-1, 1, n_seeds),
            "radius": rng.uniform(0.02, 0.4, n_seeds),
        }
    )
    models = []
    for k in range(30):
        lon, lat = rng.uniform(-1.5, 1.5), rng.uniform(-1, 1)
        kind = k % 3
        if kind == 0:
            spatial = PointSpatialModel(lon_0=lon * u.deg, lat_0=lat * u.deg, frame="galactic")
        elif kind == 1:
            spatial = GaussianSpatialModel(
                lon_0=lon * u.deg, lat_0=lat * u.deg, sigma=rng.uniform(0.05, 0.3) * u.deg,
                e=0.8, phi=rng.uniform(0, 180) * u.deg, frame="galactic",
            )
        else:
            position = SkyCoord(lon, lat, unit="deg", frame="galactic").icrs
            spatial = DiskSpatialModel(lon_0=position.ra, lat_0=position.dec, r_0=0.2 * u.deg, frame="icrs")
        models.append(SkyModel(spatial_model=spatial, spectral_model=PowerLawSpectralModel(), name=f"M{k}"))
    models = Models(models)

    pairs = associate(seeds, models, threshold=0.05)

    expected = []
    for seed_name, seed_region in source_regions(seeds).items():
        for source_name, source_region in source_regions(models).items():
            fraction = overlap_fraction(seed_region, source_region)
            if fraction >= 0.05:
                separation = seed_region.center.separation(source_region.center).deg
                expected.append((seed_name, source_name, fraction, separation))
    assert len(expected) >= 10
    assert list(zip(pairs["seed"], pairs["source"])) == [row[:2] for row in expected]
    assert list(pairs["overlap"]) == [row[2] for row in expected]
    np.testing.assert_allclose(pairs["separation"], [row[3] for row in expected], rtol=1e-9)
    assert len(associate(seeds[:0], models)) == 0


@pytest.fixture(scope="module")
def shell_dataset():
    center = SkyCoord(0, 0, unit="deg", frame="galactic")
    irfs = make_cta_like_irfs()
    pointings = make_pointings(center, 3 * u.deg, 3 * u.deg, 3.5 * u.deg)
    return make_survey_datasets(irfs, pointings, "postev", center, 3 * u.deg, 3 * u.deg)


@pytest.mark.parametrize("radius, width", [(0.6, 0.1), (0.4, 0.08)])
def test_hough_finds_shell(shell_dataset, radius, width):
    dataset = shell_dataset.copy(name="shell")
    shell = SkyModel(
        spatial_model=ShellSpatialModel(
            lon_0=0.3 * u.deg, lat_0=-0.2 * u.deg, radius=radius * u.deg, width=width * u.deg, frame="galactic"
        ),
        spectral_model=PowerLawSpectralModel(amplitude="1e-11 cm-2 s-1 TeV-1", index=2.3),
        name="shell",
    )
    background = FoVBackgroundModel(dataset_name=dataset.name)
    dataset.models = Models([shell, background])
    dataset.fake(random_state=1)
    dataset.models = Models([background])
    maps = ExcessMapEstimator(correlation_radius="0.2 deg").run(dataset)
    circles = find_circle_seeds(maps, threshold=3)
    assert len(circles) >= 1
    best = circles[np.argmax(circles["sqrt_ts"])]
    center = SkyCoord(best["glon"], best["glat"], unit="deg", frame="galactic")
    assert center.separation(SkyCoord(0.3, -0.2, unit="deg", frame="galactic")).deg < 0.05
    assert best["radius"] == pytest.approx(radius + width, rel=0.2)


def test_no_shell_in_a_gaussian_blob():
    image = gaussian_image([(60, 40)], amplitude=20, sigma_pix=8)
    assert len(find_circle_seeds(image, threshold=3)) == 0


def test_survey_detection_completeness(small_survey):
    """Sources whose expected significance is >= 5 get an associated seed (target >= 95%)."""
    datasets, models = small_survey
    maps = significance_maps(datasets)
    seeds = find_seeds(maps, threshold=5)
    truth = sources_table(models)
    bright = [name for name in truth["name"] if _expected_significance(datasets, models, name) >= 5]
    assert len(bright) >= 3
    pairs = associate(seeds, models, threshold=0.1, min_radius="0.1 deg")
    found = set(pairs["source"]) & set(bright)
    assert len(found) / len(bright) >= 0.95, sorted(set(bright) - found)


def _expected_significance(datasets, models, name):
    """Best expected Li & Ma significance of one source over both datasets, in a 0.2 deg disk."""
    from gammapy.stats import CashCountsStatistic

    best = 0.0
    model = models[name]
    for dataset in datasets:
        geom = dataset.counts.geom.to_image()
        separation = geom.get_coord().skycoord.separation(model.spatial_model.position)
        region = separation < max(0.2 * u.deg, 1.5 * getattr(model.spatial_model, "evaluation_radius", 0 * u.deg) / 3)
        mask = dataset.mask_safe.data & region
        signal = dataset.npred_signal(model_names=[name]).data[mask].sum()
        background = dataset.npred().data[mask].sum() - signal
        best = max(best, float(CashCountsStatistic(background + signal, background).sqrt_ts))
    return best
