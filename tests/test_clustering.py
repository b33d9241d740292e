"""Clustering of spectral index maps: overlapping sources of different index are told apart."""
import warnings

import astropy.units as u
import numpy as np
import pytest
from astropy.coordinates import SkyCoord
from gammapy.maps import Map, MapAxis, Maps, WcsGeom
from gammapy.modeling.models import (
    FoVBackgroundModel,
    GaussianSpatialModel,
    Models,
    PowerLawSpectralModel,
    SkyModel,
)
from regions import PolygonSkyRegion, Regions
from scipy import ndimage
from sklearn.cluster import AgglomerativeClustering
from sklearn.feature_extraction.image import grid_to_graph

from gpsfast.spectra import cluster_index_map, cluster_regions
from gpsfast.errors import InputError
from gpsfast.irf import make_cta_like_irfs
from gpsfast.kernels.plfit import FLAG_NO_DATA
from gpsfast.spectra import IndexMapEstimator
from gpsfast.survey import make_pointings, make_survey_datasets

# (lon, lat, index, amplitude in cm-2 s-1 TeV-1); sigma 0.1 deg, 0.5 deg apart
TWO_SOURCES = [(-0.25, 0.0, 2.0, 1e-11), (0.25, 0.05, 3.0, 3e-11)]
ONE_SOURCE = [(0.1, 0.0, 2.5, 3e-11)]


@pytest.fixture(scope="module")
def patch():
    """An empty 2 x 2 deg PosTeV survey patch at l = 0."""
    center = SkyCoord(0, 0, unit="deg", frame="galactic")
    pointings = make_pointings(center, 2 * u.deg, 2 * u.deg, 3.5 * u.deg)
    return make_survey_datasets(make_cta_like_irfs(), pointings, "postev", center, 2 * u.deg, 2 * u.deg)


def _index_maps(patch, sources, sigma=0.1, seed=2):
    dataset = patch.copy(name="patch")
    background = FoVBackgroundModel(dataset_name=dataset.name)
    models = [
        SkyModel(
            spatial_model=GaussianSpatialModel(lon_0=lon * u.deg, lat_0=lat * u.deg,
                                               sigma=sigma * u.deg, frame="galactic"),
            spectral_model=PowerLawSpectralModel(index=index, amplitude=amplitude * u.Unit("cm-2 s-1 TeV-1")),
            name=f"src{i}",
        )
        for i, (lon, lat, index, amplitude) in enumerate(sources)
    ]
    dataset.models = Models(models + [background])
    dataset.fake(random_state=seed)
    dataset.models = Models([background])
    return IndexMapEstimator(correlation_radius=0.1 * u.deg).run(dataset)


@pytest.fixture(scope="module")
def two_maps(patch):
    return _index_maps(patch, TWO_SOURCES)


@pytest.fixture(scope="module", params=[2, 16])
def two_maps_seeds(patch, request):
    """Two-source maps for two noise realisations (in the second, the faint rim of the
    index 3 source scatters up to index 3.5 and must not become a cluster)."""
    return _index_maps(patch, TWO_SOURCES, seed=request.param)


def _pixel(geom, lon, lat):
    """(x, y) index of the pixel containing a position."""
    x, y = geom.to_image().coord_to_idx({"lon": np.array([lon]), "lat": np.array([lat])})
    return int(x[0]), int(y[0])


def _match(table, sources):
    """Row of the cluster whose centroid is closest to each true source, and the distance."""
    centres = SkyCoord(table["glon"], table["glat"], frame="galactic")
    rows = []
    for lon, lat, _, _ in sources:
        separation = centres.separation(SkyCoord(lon, lat, unit="deg", frame="galactic")).deg
        rows.append((int(np.argmin(separation)), separation.min()))
    return rows


def _check_labels(labels, table, maps, sqrt_ts_min=5.0):
    data = labels.data
    assert data.dtype == np.int32 and labels.geom == maps["index"].geom
    assert sorted(np.unique(data[data > 0])) == list(table["label"]) == list(range(1, len(table) + 1))
    for row in table:
        member = data == row["label"]
        assert member.sum() == row["n_pixels"]
        assert ndimage.label(member)[1] == 1, "a cluster is one contiguous patch"
        assert row["index"] == pytest.approx(
            np.average(maps["index"].data[member], weights=maps["index_err"].data[member] ** -2.0))
        assert row["sqrt_ts_max"] == pytest.approx(maps["sqrt_ts"].data[member].max())
    inside = data > 0
    assert np.all(maps["flag"].data[inside] == 0)
    assert np.all(np.isfinite(maps["index"].data[inside]))
    assert np.all(maps["sqrt_ts"].data[inside] >= sqrt_ts_min)
    assert np.all(np.diff(table["sqrt_ts_max"]) <= 0), "brightest cluster first"


def test_two_overlapping_sources_are_separated(two_maps_seeds):
    two_maps = two_maps_seeds
    # the two sources form a single island of significant pixels
    significant = (two_maps["flag"].data == 0) & (two_maps["sqrt_ts"].data >= 5)
    assert ndimage.label(significant)[1] == 1
    labels, table = cluster_index_map(two_maps)
    assert len(table) == 2
    _check_labels(labels, table, two_maps)
    matches = _match(table, TWO_SOURCES)
    assert {row for row, _ in matches} == {0, 1}
    for (row, separation), (lon, lat, index, _) in zip(matches, TWO_SOURCES):
        assert separation < 0.05
        assert abs(table["index"][row] - index) < 0.15
        assert table["index_std"][row] < 0.4
        # the true position is in its own cluster
        x, y = _pixel(labels.geom, lon, lat)
        assert labels.data[y, x] == table["label"][row]
    # each half of the pair of 0.1 deg Gaussians spreads over ~0.3 deg at 5 sigma
    assert np.all((table["radius"] > 0.2 * u.deg) & (table["radius"] < 0.45 * u.deg))


def test_single_source_is_one_cluster(patch):
    maps = _index_maps(patch, ONE_SOURCE, sigma=0.2, seed=3)
    labels, table = cluster_index_map(maps)
    assert len(table) == 1
    _check_labels(labels, table, maps)
    (_, separation), = _match(table, ONE_SOURCE)
    assert separation < 0.05
    assert abs(table["index"][0] - 2.5) < 0.1


def test_flagged_and_nan_pixels_excluded(two_maps):
    maps = Maps(**{name: two_maps[name].copy() for name in two_maps})
    geom = maps["index"].geom
    # blanks in the core of the index 2 source: NaN index, a flag, NaN sqrt_ts
    x, y = _pixel(geom, -0.25, 0.0)
    maps["index"].data[y - 2:y + 1, x - 2:x + 1] = np.nan
    maps["flag"].data[y + 1:y + 3, x - 2:x + 1] = FLAG_NO_DATA
    maps["sqrt_ts"].data[y - 2:y + 3, x + 1] = np.nan
    blank = np.zeros(geom.data_shape, bool)
    blank[y - 2:y + 3, x - 2:x + 2] = True
    labels, table = cluster_index_map(maps)
    assert np.all(labels.data[blank] == 0)
    assert len(table) == 2
    _check_labels(labels, table, maps)
    _, reference = cluster_index_map(two_maps)
    assert table["n_pixels"].sum() == reference["n_pixels"].sum() - blank.sum()


def test_nothing_significant_gives_empty_table(patch, two_maps):
    maps = _index_maps(patch, [])
    labels, table = cluster_index_map(maps)
    assert len(table) == 0
    assert {"label", "n_pixels", "glon", "glat", "radius", "index", "index_std", "sqrt_ts_max"} <= set(
        table.colnames)
    assert np.all(labels.data == 0)
    assert len(cluster_regions(labels)) == 0
    # a threshold above every pixel: same
    labels, table = cluster_index_map(two_maps, sqrt_ts_min=1e3)
    assert len(table) == 0 and np.all(labels.data == 0)
    labels, table = cluster_index_map(two_maps, sqrt_ts_min=1e3, n_clusters=3)
    assert len(table) == 0


def test_regions_outline_the_clusters(two_maps, tmp_path):
    labels, table = cluster_index_map(two_maps)
    regions = cluster_regions(labels)
    assert isinstance(regions, Regions) and len(regions) == len(table)
    image = labels.geom.to_image()
    for label, region in zip(table["label"], regions):
        assert isinstance(region, PolygonSkyRegion)
        assert region.meta["text"] == f"cluster {label}"
        member = labels.data == label
        filled = ndimage.binary_fill_holes(member)
        inside = region.contains(image.get_coord().skycoord, image.wcs)
        assert np.array_equal(inside, filled)
    path = tmp_path / "clusters.reg"
    regions.write(path, format="ds9")
    assert len(Regions.read(path, format="ds9")) == len(table)


def _synthetic_maps(index, sqrt_ts=10.0, frame="galactic"):
    ny, nx = index.shape
    geom = WcsGeom.create(npix=(nx, ny), binsz=0.05, frame=frame, skydir=(10, 0))
    return Maps(
        index=Map.from_geom(geom, data=index),
        index_err=Map.from_geom(geom, data=np.full(index.shape, 0.1)),
        sqrt_ts=Map.from_geom(geom, data=np.full(index.shape, sqrt_ts)),
        flag=Map.from_geom(geom, data=np.zeros(index.shape, np.int16)),
    )


def _two_halves(noise=0.3, seed=1):
    """A 12 x 15 map (not square) of index 3.5 in columns 0-6, 2.5 elsewhere, with noise."""
    index = np.random.default_rng(seed).normal(2.5, noise, (12, 15))
    index[:, :7] += 1.0
    return index


def test_noisy_halves_are_separated():
    maps = _synthetic_maps(_two_halves())
    labels, table = cluster_index_map(maps)
    assert len(table) == 2
    expected = np.where(np.arange(15) < 7, 1, 2)[None, :] * np.ones((12, 1), int)
    assert len(set(zip(labels.data.ravel(), expected.ravel()))) == 2, "exactly the two halves"
    assert sorted(np.round(table["index"], 1)) == [2.5, 3.5]


def test_index_errors_guard_splits():
    """Halves whose indices differ by 1 are not split when the index errors are 1."""
    maps = _synthetic_maps(_two_halves())
    maps["index_err"].data[...] = 1.0
    assert len(cluster_index_map(maps)[1]) == 1
    assert len(cluster_index_map(maps, n_sigma=0)[1]) == 2
    del maps["index_err"]  # without errors: features only
    assert len(cluster_index_map(maps)[1]) == 2


def test_n_clusters_is_scikit_learn_cut():
    index = _two_halves(noise=0.6, seed=2)
    maps = _synthetic_maps(index)
    # the same features (index / 0.3, position / 0.5 deg), by scikit-learn directly
    y, x = np.mgrid[:12, :15]
    features = np.column_stack([index.ravel() / 0.3, x.ravel() * 0.1, y.ravel() * 0.1])
    connectivity = grid_to_graph(12, 15)  # row-major numbering of a (12, 15) image
    for n_clusters in (2, 3, 5):
        labels, table = cluster_index_map(maps, n_clusters=n_clusters, min_pixels=1)
        assert len(table) == n_clusters
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            expected = AgglomerativeClustering(
                n_clusters=n_clusters, linkage="ward", connectivity=connectivity).fit(features).labels_
        pairs = set(zip(labels.data.ravel(), expected))
        assert len(pairs) == n_clusters, "the same partition of the pixels"


def test_islands_stay_apart_and_icrs_columns():
    index = np.full((10, 20), 2.5)
    maps = _synthetic_maps(index, frame="icrs")
    maps["sqrt_ts"].data[:, 9:11] = 0.0  # two islands of 10 x 9 pixels
    labels, table = cluster_index_map(maps)
    assert len(table) == 2 and list(table["n_pixels"]) == [90, 90]
    assert {"ra", "dec", "ra_peak", "dec_peak"} <= set(table.colnames)
    assert np.all(table["index"] == pytest.approx(2.5)) and np.all(table["index_std"] < 1e-12)
    with pytest.raises(InputError, match="fewer than the 2 separate islands"):
        cluster_index_map(maps, n_clusters=1)
    # islands smaller than min_pixels are dropped
    assert len(cluster_index_map(maps, min_pixels=91)[1]) == 0


def test_bad_input(two_maps):
    with pytest.raises(InputError, match="must be the gammapy Maps"):
        cluster_index_map(two_maps["index"])
    with pytest.raises(InputError, match="lack sqrt_ts"):
        cluster_index_map({"index": two_maps["index"]})
    cube = Map.create(npix=10, binsz=0.05, axes=[MapAxis.from_energy_bounds(1, 10, 2, "TeV")])
    with pytest.raises(InputError, match=r"maps\['index'\] must be an image"):
        cluster_index_map({"index": cube, "sqrt_ts": cube})
    with pytest.raises(InputError, match=r"maps\['sqrt_ts'\] must be a gammapy WcsNDMap"):
        cluster_index_map({"index": two_maps["index"], "sqrt_ts": two_maps["sqrt_ts"].data})
    with pytest.raises(InputError, match="unknown feature scale"):
        cluster_index_map(two_maps, scales={"spectral_index": 0.3})
    with pytest.raises(InputError, match="all feature scales are None"):
        cluster_index_map(two_maps, scales={"index": None, "position": None})
    with pytest.raises(InputError, match="n_clusters"):
        cluster_index_map(two_maps, n_clusters=0)
    with pytest.raises(InputError, match="n_sigma"):
        cluster_index_map(two_maps, n_sigma=-1)
    with pytest.raises(InputError, match="min_pixels"):
        cluster_index_map(two_maps, min_pixels=0)
    with pytest.raises(InputError, match="labels must be"):
        cluster_regions(two_maps)
