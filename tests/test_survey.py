import astropy.units as u
import numpy as np
import pytest
from astropy.coordinates import Angle, SkyCoord

from gpsfast.errors import InputError
from gpsfast.irf import effective_area, make_cta_like_irfs
from gpsfast.survey import (
    PRESETS,
    get_preset,
    load_dl3_datasets,
    make_empty_dataset,
    make_pointings,
    make_survey_datasets,
)


@pytest.mark.parametrize(
    "name, e_min, e_max, binsz, offset_max",
    [("subtev", 0.05, 1, 0.06, 2.5), ("postev", 1, 100, 0.03, 3.5)],
)
def test_presets(name, e_min, e_max, binsz, offset_max, patch_center):
    preset = get_preset(name)
    edges = preset.energy_axis.edges.to_value("TeV")
    assert edges[0] == pytest.approx(e_min) and edges[-1] == pytest.approx(e_max)
    per_decade = (len(edges) - 1) / np.log10(e_max / e_min)
    assert 10 <= per_decade < 11
    true_edges = preset.energy_axis_true.edges.to_value("TeV")
    assert len(true_edges) == len(edges) + 4
    np.testing.assert_allclose(true_edges[2:-2], edges, rtol=1e-12)
    ratio = edges[1] / edges[0]
    np.testing.assert_allclose(true_edges[[0, 1, -2, -1]], [e_min / ratio**2, e_min / ratio, e_max * ratio, e_max * ratio**2])
    dataset = make_empty_dataset(name, patch_center, 2 * u.deg, 1 * u.deg)
    assert dataset.counts.geom.pixel_scales[0].to_value("deg") == pytest.approx(binsz)
    assert preset.offset_max.to_value("deg") == offset_max
    assert dataset.name == name


def test_unknown_preset():
    with pytest.raises(InputError, match="Unknown dataset preset 'foo'; choose one of subtev, postev"):
        get_preset("foo")


def test_pointings_rows(patch_center):
    pointings = make_pointings(patch_center, 10 * u.deg, 6 * u.deg, 3.5 * u.deg)
    assert set(np.round(pointings["glat"].data, 6)) == {-1.5, 0, 1.5}
    lon = Angle(pointings["glon"]).wrap_at(180 * u.deg).deg
    on_plane = np.sort(lon[pointings["glat"].data == 0])
    np.testing.assert_allclose(np.diff(on_plane), 1.5)
    assert lon.min() > -5 - 3.5 and lon.max() < 5 + 3.5
    assert len(np.unique(pointings["obs_id"])) == len(pointings)


@pytest.mark.parametrize("width, height", [(0, 2), (3, 0), (-1, 2), (np.nan, 1)])
def test_zero_size_patch(width, height, patch_center):
    with pytest.raises(InputError, match="positive size"):
        make_pointings(patch_center, width * u.deg, height * u.deg, 3 * u.deg)


@pytest.fixture(scope="module")
def stacked(patch_center):
    irfs = make_cta_like_irfs()
    pointings = make_pointings(patch_center, 4 * u.deg, 2 * u.deg, 2.5 * u.deg, livetime=0.5 * u.h)
    dataset = make_survey_datasets(irfs, pointings, "subtev", patch_center, 4 * u.deg, 2 * u.deg)
    return dataset, pointings


@pytest.mark.parametrize("lon, lat", [(0, 0), (1.7, -0.8), (-1.9, 0.9)])
def test_stacked_exposure(stacked, lon, lat):
    """Exposure = sum over pointings of livetime x aeff(offset), inside the maximum offset."""
    dataset, pointings = stacked
    position = SkyCoord(lon, lat, unit="deg", frame="galactic")
    geom = dataset.exposure.geom
    ix, iy = (int(np.ravel(i)[0]) for i in geom.to_image().coord_to_idx(position))
    lon_c, lat_c = geom.to_image().pix_to_coord((ix, iy))
    pixel = SkyCoord(lon_c, lat_c, unit="deg", frame="galactic")
    energy = geom.axes["energy_true"].center
    expected = np.zeros(energy.size)
    for row in pointings:
        offset = pixel.separation(SkyCoord(row["glon"], row["glat"], unit="deg", frame="galactic"))
        if offset < 2.5 * u.deg:
            aeff = effective_area(energy, offset)
            expected += (aeff * row["livetime"] * u.h).to_value("m2 s")
    measured = dataset.exposure.data[:, iy, ix]
    keep = energy > 0.04 * u.TeV
    np.testing.assert_allclose(measured[keep], expected[keep], rtol=0.02)


def test_stacked_psf_and_mask(stacked, patch_center):
    dataset, _ = stacked
    r68 = dataset.psf.containment_radius(0.68, energy_true=1 * u.TeV, position=patch_center)
    assert r68.to_value("deg") == pytest.approx(0.1, rel=0.1)
    assert dataset.mask_safe.data.all(), "a 4 x 2 deg patch is inside the 2.5 deg offset of some pointing"
    assert np.all(dataset.background.data >= 0) and dataset.background.data.sum() > 0


def test_offset_mask_away_from_pointings(patch_center):
    irfs = make_cta_like_irfs()
    pointings = make_pointings(patch_center, 1 * u.deg, 1 * u.deg, 2.5 * u.deg)[:1]
    dataset = make_survey_datasets(irfs, pointings, "subtev", patch_center, 8 * u.deg, 2 * u.deg)
    pointing = SkyCoord(pointings["glon"][0], pointings["glat"][0], unit="deg", frame="galactic")
    separation = dataset.counts.geom.to_image().get_coord().skycoord.separation(pointing).deg
    mask = dataset.mask_safe.data.any(axis=0)
    assert not mask[separation > 2.5 + 0.05].any()
    assert mask[separation < 2.5 - 0.05].all()
    assert np.all(dataset.exposure.data[:, separation > 2.6] == 0)


def test_dl3_reduction(shared_data):
    path = shared_data("dl3", "cta-1dc", "index", "gps")
    datasets = load_dl3_datasets(path, width=3 * u.deg, height=3 * u.deg, obs_ids=[110380, 111140, 111159])
    assert datasets.names == list(PRESETS)
    for dataset in datasets:
        assert dataset.counts.data.sum() > 1000
        assert dataset.exposure.data.max() > 0
        counts = dataset.counts.data[dataset.mask_safe.data].sum()
        background = dataset.background.data[dataset.mask_safe.data].sum()
        assert 0.2 * counts < background < counts + 5 * np.sqrt(counts), "the IRF background matches the runs"


def test_dl3_unknown_run(shared_data):
    path = shared_data("dl3", "cta-1dc", "index", "gps")
    with pytest.raises(InputError, match=r"Runs \[1\] are not in the data store"):
        load_dl3_datasets(path, obs_ids=[1])


def test_dl3_not_a_data_store(tmp_path):
    with pytest.raises(InputError, match="No DL3 data store"):
        load_dl3_datasets(tmp_path)
