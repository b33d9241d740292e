"""Parity of gpsfast.spectra with gammapy's MapDataset.to_spectrum_dataset."""
import re
import warnings

import astropy.units as u
import numpy as np
import pytest
from astropy.coordinates import SkyCoord
from astropy.table import Table
from gammapy.datasets import (
    MapDataset,
    MapDatasetOnOff,
    SpectrumDataset,
    SpectrumDatasetOnOff,
)
from gammapy.datasets.metadata import MapDatasetMetaData
from gammapy.irf import EDispMap, PSFMap
from gammapy.maps import MapAxis, WcsGeom
from numpy.testing import assert_allclose, assert_array_equal
from regions import CircleSkyRegion, RectangleSkyRegion

from gpsfast import _compat
from gpsfast.spectra import pixels, seeds
from gpsfast.errors import InputError
from gpsfast.spectra import extract_spectra, extract_spectra_table

RTOL = 1e-6


def _energy_axes(n_reco, n_true=6):
    energy = MapAxis.from_energy_bounds(1, 100, n_reco, unit="TeV", name="energy")
    energy_true = MapAxis.from_energy_bounds(0.5, 200, n_true, unit="TeV", name="energy_true")
    return energy, energy_true


def _fill(dataset, seed, exposure_nan=False):
    """Random counts, background, exposure, and a position-dependent edisp."""
    rng = np.random.default_rng(seed)
    dataset.mask_safe.data[...] = True  # MapDataset.create makes an all-False mask
    dataset.counts.data = rng.poisson(3.0, dataset.counts.data.shape).astype(np.float32)
    if dataset.background is not None:
        dataset.background.data = rng.uniform(0.3, 3.0, dataset.background.data.shape).astype(
            np.float32)
    dataset.exposure.data = rng.uniform(1e9, 3e9, dataset.exposure.data.shape).astype(np.float32)
    if exposure_nan:
        dataset.exposure.data[:, 10:14, 20:23] = np.nan
    irf = dataset.edisp.edisp_map
    irf.data = rng.uniform(0, 1, irf.data.shape).astype(irf.data.dtype)
    if dataset.edisp.exposure_map is not None:
        exp = dataset.edisp.exposure_map
        exp.data = rng.uniform(1e9, 2e9, exp.data.shape).astype(exp.data.dtype)
    return dataset


@pytest.fixture(scope="module")
def car_dataset():
    """Galactic CAR map, 0.05 deg pixels, energy-dependent (spatially uniform) safe mask."""
    energy, energy_true = _energy_axes(4)
    geom = WcsGeom.create(skydir=SkyCoord(10, 0.3, unit="deg", frame="galactic"),
                          width=(4, 3), binsz=0.05, frame="galactic", proj="CAR", axes=[energy])
    dataset = _fill(MapDataset.create(geom, energy_axis_true=energy_true, name="car"), 1,
                    exposure_nan=True)
    dataset.mask_safe.data[0] = False
    return dataset


@pytest.fixture(scope="module")
def tan_dataset():
    """RA/Dec TAN map with odd pixel counts, EDispMap (migra), NaN exposure, mask_fit."""
    energy, energy_true = _energy_axes(3, 5)
    migra = MapAxis.from_bounds(0.2, 5, nbin=7, node_type="edges", name="migra")
    geom = WcsGeom.create(skydir=SkyCoord(83.6, 22.0, unit="deg", frame="icrs"),
                          npix=(47, 39), binsz=0.07, frame="icrs", proj="TAN", axes=[energy])
    dataset = MapDataset.create(geom, energy_axis_true=energy_true, migra_axis=migra,
                                binsz_irf=0.5, name="tan")
    dataset = _fill(dataset, 2, exposure_nan=True)
    dataset.mask_fit = dataset.mask_safe.copy()
    dataset.mask_fit.data[-1] = False
    return dataset


@pytest.fixture(scope="module")
def single_bin_dataset():
    energy, energy_true = _energy_axes(1, 1)
    geom = WcsGeom.create(skydir=SkyCoord(0, 0, unit="deg", frame="galactic"),
                          npix=(41, 33), binsz=0.03, frame="galactic", proj="CAR",
                          axes=[energy])
    return _fill(MapDataset.create(geom, energy_axis_true=energy_true, name="one"), 3)


@pytest.fixture(scope="module")
def fake_dataset():
    energy, energy_true = _energy_axes(5)
    geom = WcsGeom.create(skydir=SkyCoord(-20, 0.5, unit="deg", frame="galactic"),
                          width=(3, 2), binsz=0.02, frame="galactic", proj="CAR", axes=[energy])
    dataset = _fill(MapDataset.create(geom, energy_axis_true=energy_true, name="fake"), 4)
    dataset.fake(random_state=5)
    return dataset


@pytest.fixture(scope="module")
def onoff_dataset():
    energy, energy_true = _energy_axes(3)
    geom = WcsGeom.create(skydir=SkyCoord(30, -0.2, unit="deg", frame="galactic"),
                          width=(3, 2), binsz=0.04, frame="galactic", proj="CAR", axes=[energy])
    dataset = MapDatasetOnOff.create(geom, energy_axis_true=energy_true, name="onoff")
    rng = np.random.default_rng(6)
    shape = dataset.counts.data.shape
    dataset.counts.data = rng.poisson(3.0, shape).astype(np.float32)
    dataset.counts_off.data = rng.poisson(10.0, shape).astype(np.float32)
    dataset.acceptance.data = rng.uniform(0.5, 1.5, shape).astype(np.float32)
    dataset.acceptance_off.data = rng.uniform(3, 5, shape).astype(np.float32)
    dataset.exposure.data = rng.uniform(1e9, 3e9, dataset.exposure.data.shape).astype(np.float32)
    dataset.mask_safe.data[...] = True
    dataset.mask_safe.data[-1] = False
    return dataset


def _seeds(geom, n, seed, max_radius_deg=1.0):
    """Regions on pixel centres with radii of whole pixels (the boundary case), at
    random positions with random radii, and close to the map edges."""
    rng = np.random.default_rng(seed)
    image = geom.to_image()
    ny, nx = image.data_shape
    binsz = geom.pixel_scales[1].deg
    max_pix = max_radius_deg / binsz
    regions = []
    for k in range(n):
        mode = k % 3
        if mode == 0:
            x, y = float(rng.integers(0, nx)), float(rng.integers(0, ny))
            radius = int(rng.integers(1, max(2, min(max_pix, 0.5 * min(nx, ny))))) * binsz
        elif mode == 1:
            x, y = rng.uniform(-0.5, nx - 0.5), rng.uniform(-0.5, ny - 0.5)
            radius = binsz * rng.uniform(0.7, max(1.0, min(max_pix, 0.5 * min(nx, ny))))
        else:  # touching an edge: about one pixel from it
            x, y = rng.uniform(2, nx - 3), rng.uniform(2, ny - 3)
            radius = binsz * (min(x, y, nx - 1 - x, ny - 1 - y) + rng.choice([-0.6, 0.0, 0.6]))
            radius = max(radius, binsz)
        center = image.pix_to_coord((np.array(x), np.array(y)))
        center = SkyCoord(center[0], center[1], unit="deg", frame=geom.frame)
        regions.append(CircleSkyRegion(center, radius * u.deg))
    return regions


def _gammapy(dataset, regions, **kwargs):
    """gammapy's spectra, None where gammapy raises."""
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for region in regions:
            try:
                out.append(dataset.to_spectrum_dataset(region, **kwargs))
            except Exception:  # gammapy raises a bare Exception
                out.append(None)
    return out


def _assert_map(ref, out, exact):
    assert out.geom == ref.geom
    assert out.unit == ref.unit
    assert out.data.dtype == ref.data.dtype
    assert out.data.shape == ref.data.shape
    if exact:
        assert_array_equal(out.data, ref.data)
    else:
        assert_allclose(out.data, ref.data, rtol=RTOL, atol=0, equal_nan=True)


def _assert_same(ref, out):
    assert type(out) is type(ref)
    _assert_map(ref.counts, out.counts, exact=True)
    for key in ["background", "exposure", "acceptance", "acceptance_off"]:
        ref_map = getattr(ref, key, None)
        if ref_map is None:
            assert getattr(out, key, None) is None
        else:
            _assert_map(ref_map, getattr(out, key), exact=False)
    for key in ["mask_safe", "mask_fit", "counts_off"]:
        ref_map = getattr(ref, key, None)
        if ref_map is None:
            assert getattr(out, key, None) is None
        else:
            _assert_map(ref_map, getattr(out, key), exact=True)
    assert type(out.edisp) is type(ref.edisp)
    _assert_map(ref.edisp._irf_map, out.edisp._irf_map, exact=True)
    _assert_map(ref.edisp.exposure_map, out.edisp.exposure_map, exact=True)
    assert out.psf is None and ref.psf is None
    assert out.gti is ref.gti and out.meta_table is ref.meta_table
    assert out.models is None or len(out.models) == 0


def _check_parity(dataset, regions, **kwargs):
    refs = _gammapy(dataset, regions, **kwargs)
    good = [r for r, ref in zip(regions, refs) if ref is not None]
    bad = [r for r, ref in zip(regions, refs) if ref is None]
    assert good, "no region gammapy accepts: the test is empty"
    out = extract_spectra(dataset, good, **kwargs)
    assert len(out) == len(good)
    assert sum(d.counts.data.sum() for d in out) > 0, "no counts: the test is empty"
    for ref, spec in zip([r for r in refs if r is not None], out):
        _assert_same(ref, spec)
    for region in bad:
        with pytest.raises(InputError):
            extract_spectra(dataset, [region], **kwargs)
    return out


def test_car_parity(car_dataset):
    regions = _seeds(car_dataset.counts.geom, 60, seed=10)
    out = _check_parity(car_dataset, regions)
    assert all(isinstance(d, SpectrumDataset) for d in out)
    # the exposure NaN patch reaches some regions: NaN as in gammapy, checked above
    assert any(np.isnan(d.exposure.data).any() for d in out)


def test_pixel_centre_integer_radius(car_dataset, tan_dataset):
    """Regions on pixel centres with radii of exact whole pixels, counted exactly."""
    for dataset in [car_dataset, tan_dataset]:
        image = dataset.counts.geom.to_image()
        binsz = dataset.counts.geom.pixel_scales[1].deg
        regions = []
        for x, y, k in [(20, 19, 1), (21, 18, 2), (22, 17, 3), (23, 16, 5), (24, 18, 10)]:
            lon, lat = image.pix_to_coord((np.array(float(x)), np.array(float(y))))
            center = SkyCoord(lon, lat, unit="deg", frame=dataset.counts.geom.frame)
            regions.append(CircleSkyRegion(center, k * binsz * u.deg))
        _check_parity(dataset, regions)


def test_region_without_pixel_centre(car_dataset):
    """A circle on a pixel corner, smaller than the half diagonal: no pixel inside."""
    image = car_dataset.counts.geom.to_image()
    lon, lat = image.pix_to_coord((np.array(30.5), np.array(20.5)))
    binsz = car_dataset.counts.geom.pixel_scales[1].deg
    tiny = CircleSkyRegion(SkyCoord(lon, lat, unit="deg", frame="galactic"), 0.6 * binsz * u.deg)
    other = CircleSkyRegion(image.center_skydir, 0.2 * u.deg)
    out = _check_parity(car_dataset, [tiny, other])
    assert out[0].counts.data.sum() == 0 and np.all(np.isnan(out[0].exposure.data))
    assert not out[0].mask_safe.data.any()


def test_tan_parity_other_frame(tan_dataset):
    """Odd TAN/ICRS geometry, region centres in Galactic coordinates, EDispMap."""
    regions = _seeds(tan_dataset.counts.geom, 45, seed=11)
    regions = [CircleSkyRegion(r.center.galactic, r.radius) for r in regions]
    out = _check_parity(tan_dataset, regions)
    assert isinstance(out[0].edisp, EDispMap)
    assert out[0].mask_fit is not None


def test_mixed_frames_and_units(car_dataset):
    """Centres in several frames and units, radii in arcmin, a centre with a distance."""
    regions = _seeds(car_dataset.counts.geom, 12, seed=20, max_radius_deg=0.5)
    mixed = []
    for k, region in enumerate(regions):
        center, radius = region.center, region.radius
        if k % 4 == 1:
            icrs = center.icrs
            center = SkyCoord(icrs.ra.to(u.hourangle), icrs.dec, frame="icrs")
        elif k % 4 == 2:
            radius = radius.to(u.arcmin)
        elif k % 4 == 3:
            center = SkyCoord(center.l, center.b, distance=2 * u.kpc, frame="galactic")
        mixed.append(CircleSkyRegion(center, radius))
    _check_parity(car_dataset, mixed)


def test_single_energy_bin(single_bin_dataset):
    _check_parity(single_bin_dataset, _seeds(single_bin_dataset.counts.geom, 15, seed=12))


def test_without_mask_safe(single_bin_dataset):
    dataset = single_bin_dataset.copy(name="nomask")
    dataset.mask_safe = None
    out = _check_parity(dataset, _seeds(dataset.counts.geom, 6, seed=19))
    assert out[0].mask_safe is None


def test_fake_dataset(fake_dataset):
    _check_parity(fake_dataset, _seeds(fake_dataset.counts.geom, 20, seed=13))


def test_onoff_parity(onoff_dataset):
    out = _check_parity(onoff_dataset, _seeds(onoff_dataset.counts.geom, 20, seed=14))
    assert all(isinstance(d, SpectrumDatasetOnOff) for d in out)


def test_per_region_projection_fallback(car_dataset, monkeypatch):
    """The per-region WCS projection (used for unusual WCS) gives the same spectra."""

    original = pixels.ShiftedWcs.__init__

    def no_identity(self, *args, **kwargs):
        original(self, *args, **kwargs)
        self.exact = False

    monkeypatch.setattr(pixels.ShiftedWcs, "__init__", no_identity)
    _check_parity(car_dataset, _seeds(car_dataset.counts.geom, 9, seed=15))


def test_regions_in_chunks(car_dataset, monkeypatch):
    """Regions summed in several kernel calls give the same spectra as in one."""

    regions = [r for r, ref in zip(_seeds(car_dataset.counts.geom, 15, seed=21),
                                   _gammapy(car_dataset, _seeds(car_dataset.counts.geom, 15, 21)))
               if ref is not None]
    whole = extract_spectra_table(car_dataset, regions)
    monkeypatch.setattr(pixels, "CHUNK", 4)
    chunked = extract_spectra_table(car_dataset, regions)
    for name in ["counts", "background", "exposure", "mask_safe", "npix"]:
        assert_array_equal(chunked[name], whole[name])


def test_mask_not_uniform_raises(car_dataset):
    dataset = car_dataset.copy(name="masked")
    dataset.mask_safe.data[:, :, :40] = False  # a spatial mask edge
    geom = dataset.counts.geom.to_image()
    inside = []
    for x in [20.0, 39.0, 60.0]:
        lon, lat = geom.pix_to_coord((np.array(x), np.array(30.0)))
        inside.append(CircleSkyRegion(SkyCoord(lon, lat, unit="deg", frame="galactic"),
                                      0.3 * u.deg))
    refs = _gammapy(dataset, inside)
    assert refs[0] is not None and refs[1] is None and refs[2] is not None
    _check_parity(dataset, inside)
    # fully masked region: zero counts, mask_safe False, same as gammapy
    out = extract_spectra(dataset, [inside[0]])[0]
    assert not out.mask_safe.data.any() and out.counts.data.sum() == 0


def test_region_outside_raises(car_dataset):
    geom = car_dataset.counts.geom
    edge = geom.center_skydir.directional_offset_by(90 * u.deg, 1.95 * u.deg)
    region = CircleSkyRegion(edge, 0.2 * u.deg)
    with pytest.raises(Exception, match="fully contained"):
        car_dataset.to_spectrum_dataset(region)
    with pytest.raises(InputError, match="not fully contained"):
        extract_spectra(car_dataset, [region])
    far = CircleSkyRegion(SkyCoord(100, 50, unit="deg", frame="galactic"), 0.1 * u.deg)
    with pytest.raises(InputError, match="region 1"):
        extract_spectra_table(car_dataset, [region.__class__(geom.center_skydir, 0.2 * u.deg), far])


def test_containment_correction(car_dataset):
    dataset = car_dataset.copy(name="psf")
    energy_true = dataset.exposure.geom.axes["energy_true"]
    dataset.psf = PSFMap.from_gauss(energy_true, sigma=0.1 * u.deg)
    regions = _seeds(dataset.counts.geom, 6, seed=16, max_radius_deg=0.3)
    out = _check_parity(dataset, regions, containment_correction=True)
    plain = extract_spectra(dataset, [out[0].counts.geom.region])[0]
    assert np.all(out[0].exposure.data < plain.exposure.data)
    without_psf = car_dataset.copy(name="nopsf")
    without_psf.psf = None
    with pytest.raises(ValueError):
        without_psf.to_spectrum_dataset(regions[0], containment_correction=True)
    with pytest.raises(InputError, match="PSFMap"):
        extract_spectra(without_psf, regions[:1], containment_correction=True)


def test_seed_table_and_names(car_dataset):
    regions = [r for r, ref in zip(_seeds(car_dataset.counts.geom, 9, 17),
                                   _gammapy(car_dataset, _seeds(car_dataset.counts.geom, 9, 17)))
               if ref is not None]
    table = Table({
        "glon": [r.center.l.deg for r in regions],
        "glat": [r.center.b.deg for r in regions],
        "radius": [r.radius.to_value("deg") for r in regions],
        "name": [f"seed-{i}" for i in range(len(regions))],
    })
    from_table = extract_spectra(car_dataset, table)
    from_list = extract_spectra(car_dataset, regions)
    assert from_table.names == list(table["name"])
    assert len(set(from_list.names)) == len(regions)
    for a, b in zip(from_table, from_list):
        assert_array_equal(a.counts.data, b.counts.data)
        assert_allclose(a.exposure.data, b.exposure.data, rtol=RTOL)
    icrs = SkyCoord(table["glon"], table["glat"], unit="deg", frame="galactic").icrs
    table_icrs = Table({"ra": icrs.ra.deg, "dec": icrs.dec.deg, "radius": table["radius"]})
    named = extract_spectra(car_dataset, table_icrs, names=[f"n{i}" for i in range(len(table))])
    assert named.names[0] == "n0"
    assert_array_equal(named[0].counts.data, from_list[0].counts.data)


def test_spectra_table(car_dataset, onoff_dataset):
    regions = [r for r, ref in zip(_seeds(car_dataset.counts.geom, 12, 18),
                                   _gammapy(car_dataset, _seeds(car_dataset.counts.geom, 12, 18)))
               if ref is not None]
    table = extract_spectra_table(car_dataset, regions)
    specs = extract_spectra(car_dataset, regions)
    assert len(table) == len(regions)
    for row, spec in zip(table, specs):
        assert_array_equal(row["counts"], spec.counts.data.ravel())
        assert_allclose(row["background"], spec.background.data.ravel(), rtol=RTOL)
        assert_allclose(row["excess"], (spec.counts.data - spec.background.data).ravel(),
                        rtol=RTOL, atol=1e-4)
        assert_allclose(row["exposure"], spec.exposure.data.ravel(), rtol=RTOL)
        assert_array_equal(row["mask_safe"], spec.mask_safe.data.ravel())
    assert table["exposure"].unit == car_dataset.exposure.unit
    assert len(table.meta["energy_edges"]) == car_dataset.counts.geom.axes["energy"].nbin + 1
    onoff_regions = [CircleSkyRegion(onoff_dataset.counts.geom.center_skydir, 0.3 * u.deg)]
    onoff = extract_spectra_table(onoff_dataset, onoff_regions)
    ref = _gammapy(onoff_dataset, onoff_regions)[0]
    assert_array_equal(onoff["counts_off"][0], ref.counts_off.data.ravel())
    assert_allclose(onoff["background"][0], ref.background.data.ravel(), rtol=RTOL)


def test_spectra_table_positions(car_dataset):
    """Centre and radius columns: each region's own values, in its own frame, in degrees."""
    regions = _seeds(car_dataset.counts.geom, 12, seed=20, max_radius_deg=0.5)
    mixed = []
    for k, region in enumerate(regions):
        center, radius = region.center, region.radius
        if k % 4 == 1:
            icrs = center.icrs
            center = SkyCoord(icrs.ra.to(u.hourangle), icrs.dec, frame="icrs")
        elif k % 4 == 2:
            radius = radius.to(u.arcmin)
        elif k % 4 == 3:
            center = SkyCoord(center.l, center.b, distance=2 * u.kpc, frame="galactic")
        mixed.append(CircleSkyRegion(center, radius))
    good = [r for r, ref in zip(mixed, _gammapy(car_dataset, mixed)) if ref is not None]
    table = extract_spectra_table(car_dataset, good)
    for row, region in zip(table, good):
        sph = region.center.spherical
        assert row["lon"] == sph.lon.wrap_at(360 * u.deg).deg
        assert row["lat"] == sph.lat.deg
        assert row["radius"] == region.radius.to_value(u.deg)
    assert table["lon"].unit == table["radius"].unit == u.deg


def test_bad_input(car_dataset):
    center = car_dataset.counts.geom.center_skydir
    with pytest.raises(InputError, match="only CircleSkyRegion"):
        extract_spectra(car_dataset, [RectangleSkyRegion(center, 1 * u.deg, 1 * u.deg)])
    with pytest.raises(InputError, match="radius"):
        extract_spectra(car_dataset, Table({"glon": [10.0], "glat": [0.3]}))
    with pytest.raises(InputError, match="no regions"):
        extract_spectra(car_dataset, [])
    with pytest.raises(InputError, match="WcsGeom"):
        extract_spectra(extract_spectra(car_dataset, [CircleSkyRegion(center, 0.2 * u.deg)])[0],
                        [CircleSkyRegion(center, 0.2 * u.deg)])


# ----------------------------------------------------------------------------
# fast paths of extract_spectra: big-endian data, sky numerics, object building
# ----------------------------------------------------------------------------
def test_fast_paths_are_taken():
    """The parity tests above go through the fast paths, not their fallbacks."""
    assert pixels.plain_sky_exact()
    assert _compat.direct_init_ok()


def test_big_endian_dataset_parity(car_dataset):
    """Maps read from FITS are big-endian: the spectra of gammapy and of native-order maps."""
    dataset = car_dataset.copy(name="big-endian")
    for m in [dataset.counts, dataset.background, dataset.exposure, dataset.edisp.edisp_map,
              dataset.edisp.exposure_map]:
        m.data = m.data.astype(m.data.dtype.newbyteorder(">"))
    dataset.counts.data = dataset.counts.data.astype(">f8")
    assert not dataset.exposure.data.dtype.isnative
    regions = _seeds(dataset.counts.geom, 15, seed=30)
    out = _check_parity(dataset, regions)
    native = extract_spectra(car_dataset, [d.counts.geom.region for d in out])
    for a, b in zip(out, native):
        assert_array_equal(a.counts.data, b.counts.data)
        assert_array_equal(a.background.data, b.background.data)
        assert_array_equal(a.exposure.data, b.exposure.data)


def _sky_seeds(geom, n, seed):
    rng = np.random.default_rng(seed)
    ny, nx = geom.data_shape
    x, y = rng.uniform(-0.5, nx - 0.5, n), rng.uniform(-0.5, ny - 0.5, n)
    lon, lat = geom.pix_to_coord((x, y))
    radius = rng.uniform(0.5, 0.3 * min(nx, ny), n) * geom.pixel_scales[1].deg
    return [CircleSkyRegion(SkyCoord(a, b, unit="deg", frame=geom.frame), c * u.deg)
            for a, b, c in zip(lon, lat, radius)]


@pytest.mark.parametrize("frame, proj, skydir, binsz", [
    ("galactic", "CAR", (0.0, 0.2), 0.02),  # across longitude 0
    ("galactic", "AIT", (300.0, 5.0), 0.1),
    ("icrs", "TAN", (83.6, 22.0), 0.07),
    ("icrs", "TAN", (10.0, 89.0), 0.05),  # around the pole
])
def test_plain_sky_numbers_are_skycoord_numbers(frame, proj, skydir, binsz):
    """Pixel circles and cutouts computed without SkyCoord equal the SkyCoord ones, bit for bit."""
    image = WcsGeom.create(skydir=skydir, width=(6, 4), binsz=binsz, frame=frame, proj=proj)
    regions = _sky_seeds(image, 60, seed=31)
    if frame == "icrs":  # other units of the same frame: their own group
        regions += [CircleSkyRegion(SkyCoord(r.center.ra.to(u.hourangle), r.center.dec,
                                             frame="icrs"), r.radius.to(u.arcmin))
                    for r in regions[:10]]
        regions.append(CircleSkyRegion(SkyCoord(0.0, 90.0, unit="deg", frame="icrs"),
                                       0.3 * u.deg) if skydir[1] > 80 else regions[0])
    stacked = seeds.Seeds(regions)
    assert all(isinstance(pixels.choose_sky(image.wcs, g, True), pixels.PlainSky)
               for g in stacked.groups)
    fast = pixels.seed_circles(image, stacked, plain=True)
    slow = pixels.seed_circles(image, stacked, plain=False)
    for name in pixels.CIRCLE_FIELDS:
        assert_array_equal(getattr(fast, name), getattr(slow, name), err_msg=name)


def test_north_offsets_are_directional_offset_by():
    rng = np.random.default_rng(32)
    lon = np.concatenate([rng.uniform(0, 360, 200), [0.0, 359.9999999, 180.0, 45.0, 10.0]])
    lat = np.concatenate([rng.uniform(-90, 90, 200), [0.0, -1e-9, 89.9999999, -90.0, 90.0]])
    for unit in [u.deg, u.rad]:
        coords = SkyCoord((lon * u.deg).to(unit), (lat * u.deg).to(unit), frame="galactic")
        sph = coords.directional_offset_by(0.0, pixels.OFFSET).spherical
        data = coords.frame.data
        new_lon, new_lat = pixels.north_offsets(data.lon, data.lat)
        assert_array_equal(new_lon, sph.lon.degree)
        assert_array_equal(new_lat, sph.lat.degree)


def test_fallback_paths_same_spectra(car_dataset, monkeypatch):
    """With the SkyCoord calls and gammapy's constructors, the same spectra."""
    regions = [r for r, ref in zip(_seeds(car_dataset.counts.geom, 12, 33),
                                   _gammapy(car_dataset, _seeds(car_dataset.counts.geom, 12, 33)))
               if ref is not None]
    fast = extract_spectra(car_dataset, regions)
    monkeypatch.setattr(pixels, "plain_sky_exact", lambda: False)
    monkeypatch.setattr(_compat, "direct_init_ok", lambda: False)
    slow = _check_parity(car_dataset, regions)
    for a, b in zip(fast, slow):
        for key in ["counts", "background", "exposure", "mask_safe"]:
            assert_array_equal(getattr(a, key).data, getattr(b, key).data)
            assert getattr(a, key).geom == getattr(b, key).geom
        assert_array_equal(a.edisp.edisp_map.data, b.edisp.edisp_map.data)


def test_datasets_are_independent(car_dataset):
    """Each dataset owns its data, maps and metadata, as the gammapy loop gives them."""
    regions = [CircleSkyRegion(car_dataset.counts.geom.center_skydir, r * u.deg)
               for r in (0.2, 0.3, 0.4)]
    out = extract_spectra(car_dataset, regions)
    ref = _gammapy(car_dataset, regions[:1])[0]
    assert out[0].meta == ref.meta == MapDatasetMetaData()
    assert out[0].meta is not out[1].meta and out[0].meta.creation is not out[1].meta.creation
    out[0].meta.creation.update_time()
    assert out[1].meta == ref.meta
    before = [d.counts.data.copy() for d in out[1:]]
    for key in ["counts", "background", "exposure", "mask_safe"]:
        getattr(out[0], key).data[...] = 0
    out[0].edisp.edisp_map.data[...] = -1
    out[0].edisp.exposure_map.data[...] = -1
    for d, counts in zip(out[1:], before):
        assert_array_equal(d.counts.data, counts)
        assert np.all(d.exposure.data > 0) and d.mask_safe.data.any()
        assert np.all(d.edisp.edisp_map.data >= 0) and np.all(d.edisp.exposure_map.data > 0)
    assert len(set(out.names)) == 3
    for name in out.names:
        assert re.fullmatch(r"[A-Za-z0-9_-]{8}", name) and name[0] != "_"


# ----------------------------------------------------------------------------
# IndexMapEstimator and its per-pixel power-law fit kernel
# ----------------------------------------------------------------------------
def _plfit_inputs(index=2.3, amplitude=2e-12, seed=None):
    """A forward-folded power-law spectrum: (n, b, exposure, edisp, edges)."""
    e_true = np.geomspace(0.5, 200, 13)
    n_true, n_reco = 12, 8
    rng = np.random.default_rng(7)
    edisp = rng.uniform(0, 1, (n_true, n_reco)) * np.exp(
        -0.5 * ((np.arange(n_true)[:, None] * 8 / 12 - np.arange(n_reco)) / 1.0) ** 2)
    edisp /= edisp.sum(axis=1, keepdims=True)
    exposure = np.full(n_true, 1e15)  # cm2 s
    b = 50 * np.geomspace(1, 1e-3, n_reco)
    from gpsfast.kernels.plfit import powerlaw_integrals

    integrals = powerlaw_integrals(e_true[:-1], e_true[1:], 1.0, index)
    mu = b + amplitude * (exposure * integrals) @ edisp
    n = mu if seed is None else np.random.default_rng(seed).poisson(mu).astype(float)
    return n, b, exposure, edisp, e_true[:-1].copy(), e_true[1:].copy()


def _cash_reference(params, n, b, exposure, edisp, e_lo, e_hi):
    amplitude, index = params[0] * 1e-12, params[1]
    val = 1 - index
    integ = (e_hi ** val - e_lo ** val) / val
    mu = np.maximum(b + amplitude * (exposure * integ) @ edisp, 1e-25)
    return 2 * np.sum(mu - n * np.log(mu))


def test_plfit_kernel_matches_scipy_minimum():
    from scipy.optimize import minimize

    from gpsfast.kernels.plfit import FLAG_OK, fit_powerlaw

    use = np.ones(8, bool)
    n, b, exposure, edisp, e_lo, e_hi = _plfit_inputs()
    res = fit_powerlaw(n, b, use, exposure, edisp, e_lo, e_hi, 1.0, 0.5, 5.0, 4.0)
    assert res[5] == FLAG_OK
    assert_allclose(res[:2], [2e-12, 2.3], rtol=1e-6)  # Asimov data: the truth
    for seed in [1, 2, 3]:
        n, b, exposure, edisp, e_lo, e_hi = _plfit_inputs(seed=seed)
        res = fit_powerlaw(n, b, use, exposure, edisp, e_lo, e_hi, 1.0, 0.5, 5.0, 4.0)
        ref = minimize(_cash_reference, [1.0, 2.0], args=(n, b, exposure, edisp, e_lo, e_hi),
                       method="Nelder-Mead", options={"xatol": 1e-9, "fatol": 1e-10,
                                                      "maxiter": 5000})
        assert_allclose(res[0], ref.x[0] * 1e-12, rtol=1e-4)
        assert_allclose(res[1], ref.x[1], atol=1e-4)
        c_null = _cash_reference([0.0, 2.0], n, b, exposure, edisp, e_lo, e_hi)
        assert_allclose(res[4], c_null - ref.fun, rtol=1e-6)
        # errors: covariance 2 H^-1 of the Cash statistic, from a numerical Hessian
        h = np.array([1e-3, 1e-3])
        x0 = np.array([res[0] * 1e12, res[1]])
        hess = np.empty((2, 2))
        for i in range(2):
            for j in range(2):
                ei, ej = np.eye(2)[i] * h[i], np.eye(2)[j] * h[j]
                f = [_cash_reference(x0 + si * ei + sj * ej, n, b, exposure, edisp, e_lo, e_hi)
                     for si, sj in [(1, 1), (1, -1), (-1, 1), (-1, -1)]]
                hess[i, j] = (f[0] - f[1] - f[2] + f[3]) / (4 * h[i] * h[j])
        err = np.sqrt(np.diag(2 * np.linalg.inv(hess)))
        assert_allclose([res[2] * 1e12, res[3]], err, rtol=1e-3)


def test_plfit_kernel_flags():
    from gpsfast.kernels.plfit import FLAG_LOW_TS, FLAG_NO_DATA, FLAG_OK, fit_powerlaw

    n, b, exposure, edisp, e_lo, e_hi = _plfit_inputs()
    use = np.ones(8, bool)
    no_signal = fit_powerlaw(b.copy(), b, use, exposure, edisp, e_lo, e_hi, 1.0, 0.5, 5.0, 4.0)
    assert no_signal[5] == FLAG_LOW_TS and np.all(np.isnan(no_signal[:4]))
    bad = exposure.copy()
    bad[3] = np.nan
    res = fit_powerlaw(n, b, use, bad, edisp, e_lo, e_hi, 1.0, 0.5, 5.0, 4.0)
    assert res[5] == FLAG_NO_DATA and np.all(np.isnan(res[:5]))
    res = fit_powerlaw(n, b, np.zeros(8, bool), exposure, edisp, e_lo, e_hi, 1.0, 0.5, 5.0, 4.0)
    assert res[5] == FLAG_NO_DATA
    # empty bins (no background, no response, no counts) do not spoil the fit
    n0, b0, edisp0 = n.copy(), b.copy(), edisp.copy()
    n0[-1] = b0[-1] = edisp0[:, -1] = 0.0
    res = fit_powerlaw(n0, b0, use, exposure, edisp0, e_lo, e_hi, 1.0, 0.5, 5.0, 4.0)
    assert res[5] == FLAG_OK and abs(res[1] - 2.3) < 1e-6


@pytest.fixture(scope="module")
def source_dataset():
    """Simulated counts of an extended power-law source (index 2.5) over background."""
    from gammapy.modeling.models import (
        GaussianSpatialModel,
        Models,
        PowerLawSpectralModel,
        SkyModel,
    )

    energy, energy_true = _energy_axes(8, 12)
    geom = WcsGeom.create(skydir=SkyCoord(0, 0, unit="deg", frame="galactic"), width=(2, 1.5),
                          binsz=0.05, frame="galactic", axes=[energy])
    dataset = MapDataset.create(geom, energy_axis_true=energy_true, name="src")
    dataset.psf = None
    dataset.mask_safe.data[...] = True
    dataset.exposure.data[...] = 1e11
    rng = np.random.default_rng(8)
    dataset.background.data = (rng.uniform(0.5, 1.5, dataset.background.data.shape)
                               * energy.center.to_value("TeV")[:, None, None] ** -2.0)
    source = SkyModel(
        PowerLawSpectralModel(index=2.5, amplitude="3e-12 cm-2 s-1 TeV-1"),
        GaussianSpatialModel(lon_0="0.3 deg", lat_0="0.1 deg", sigma="0.1 deg",
                             frame="galactic"),
        name="source",
    )
    dataset.models = Models([source])
    dataset.fake(random_state=1)
    dataset.models = None
    return dataset


def _gammapy_index_fit(dataset, region, energy_edges):
    from gammapy.modeling import Fit
    from gammapy.modeling.models import PowerLawSpectralModel, SkyModel

    spectrum = dataset.to_spectrum_dataset(region)
    spectrum.mask_fit = spectrum.counts.geom.energy_mask(*energy_edges)
    model = PowerLawSpectralModel(index=2, amplitude="1e-12 cm-2 s-1 TeV-1")
    spectrum.models = SkyModel(spectral_model=model, name="pl")
    model.amplitude.value = 0
    stat_null = spectrum.stat_sum()
    model.amplitude.value = 1e-12
    result = Fit().run([spectrum])
    assert result.success
    return model, stat_null - result.total_stat


def test_index_map_matches_gammapy_fit(source_dataset):
    from gpsfast.spectra import IndexMapEstimator

    radius = 0.125 * u.deg  # 2.5 pixels: no pixel centre on the circle
    energy_edges = [1.5, 80] * u.TeV
    maps = IndexMapEstimator(correlation_radius=radius, energy_edges=energy_edges).run(
        source_dataset)
    assert set(maps.keys()) >= {"index", "index_err", "amplitude", "amplitude_err", "ts",
                                "sqrt_ts", "flag"}
    ts = np.where(maps["flag"].data == 0, maps["ts"].data, -np.inf)
    peak = np.unravel_index(np.argmax(ts), ts.shape)
    image = source_dataset.counts.geom.to_image()
    for dy, dx in [(0, 0), (2, -1), (-1, 2)]:
        y, x = peak[0] + dy, peak[1] + dx
        assert maps["flag"].data[y, x] == 0
        lon, lat = image.pix_to_coord((np.array(float(x)), np.array(float(y))))
        region = CircleSkyRegion(SkyCoord(lon, lat, unit="deg", frame="galactic"), radius)
        model, ts_ref = _gammapy_index_fit(source_dataset, region, energy_edges)
        index, index_err = maps["index"].data[y, x], maps["index_err"].data[y, x]
        amplitude = maps["amplitude"].quantity[y, x]
        # gammapy (Minuit) converges to a fraction of the error; the minimum is the same
        assert abs(index - model.index.value) < 0.02 * model.index.error
        assert abs(amplitude - model.amplitude.quantity) < 0.02 * model.amplitude.error * u.Unit(
            model.amplitude.unit)
        assert_allclose(index_err, model.index.error, rtol=0.02)
        assert_allclose(maps["amplitude_err"].data[y, x], model.amplitude.error, rtol=0.02)
        assert_allclose(maps["ts"].data[y, x], ts_ref, rtol=1e-5)


def test_index_map_recovers_index_and_flags(source_dataset):
    from gpsfast.kernels.plfit import FLAG_LOW_TS
    from gpsfast.spectra import IndexMapEstimator

    maps = IndexMapEstimator(correlation_radius=0.15 * u.deg).run(source_dataset)
    flag = maps["flag"].data
    ts = np.where(flag == 0, maps["ts"].data, -np.inf)
    peak = np.unravel_index(np.argmax(ts), ts.shape)
    index, error = maps["index"].data[peak], maps["index_err"].data[peak]
    assert 0 < error < 0.1
    assert abs(index - 2.5) < 3 * error
    # the source position: 0.3, 0.1 deg
    lon, lat = source_dataset.counts.geom.to_image().pix_to_coord(peak[::-1])
    assert abs(u.Quantity(lon, "deg").value - 0.3) < 0.1
    assert abs(u.Quantity(lat, "deg").value - 0.1) < 0.1
    # pixels without enough signal: flagged and NaN, not a number
    low = flag == FLAG_LOW_TS
    assert low.sum() > 0.3 * flag.size
    assert np.all(np.isnan(maps["index"].data[low]))
    assert np.all(np.isnan(maps["amplitude"].data[low]))
    assert np.all(maps["ts"].data[low] < 4)
    assert np.all(np.isfinite(maps["index"].data[flag == 0]))


def test_index_map_edisp_map_dataset(tan_dataset):
    """A dataset with an EDispMap (migra axis) and NaN exposure: flagged, no crash."""
    from gpsfast.kernels.plfit import FLAG_NO_DATA
    from gpsfast.spectra import IndexMapEstimator

    maps = IndexMapEstimator(correlation_radius=0.15 * u.deg).run(tan_dataset)
    flag = maps["flag"].data
    assert flag.shape == tan_dataset.counts.geom.to_image().data_shape
    assert np.all(flag[10:14, 20:23] == FLAG_NO_DATA)  # the NaN exposure patch
    assert np.all(np.isnan(maps["index"].data[flag != 0]))
    assert maps["amplitude"].unit == u.Unit("cm-2 s-1 TeV-1")


def test_index_map_energy_bands(source_dataset):
    """One index map per energy band: each the map of the band run on its own."""
    from gpsfast.spectra import IndexMapEstimator

    edges = [1, 10, 100] * u.TeV
    radius = 0.15 * u.deg
    maps = IndexMapEstimator(correlation_radius=radius, energy_edges=edges).run(source_dataset)
    axis = maps["index"].geom.axes["energy"]
    assert_allclose(axis.edges.to_value(u.TeV), edges.value)
    assert maps["index"].data.shape == (2,) + source_dataset.counts.geom.to_image().data_shape
    for k in range(2):
        band = IndexMapEstimator(correlation_radius=radius, energy_edges=edges[k:k + 2]).run(
            source_dataset)
        assert band["index"].geom.is_image
        for name in band:
            assert maps[name].unit == band[name].unit
            assert_array_equal(maps[name].data[k], band[name].data)
        assert np.sum(band["flag"].data == 0) > 10  # fitted pixels in each band
    assert not np.array_equal(maps["index"].data[0], maps["index"].data[1], equal_nan=True)


def test_index_map_bad_input(onoff_dataset, car_dataset):
    from gpsfast.spectra import IndexMapEstimator

    with pytest.raises(InputError, match="MapDatasetOnOff"):
        IndexMapEstimator().run(onoff_dataset)
    with pytest.raises(InputError, match="correlation_radius"):
        IndexMapEstimator(correlation_radius=0 * u.deg)
    with pytest.raises(InputError, match="index_range"):
        IndexMapEstimator(index_range=(3, 2))
    for edges in ([10, 1] * u.TeV, [1] * u.TeV, [1, 2] * u.deg, [[1, 2], [3, 4]] * u.TeV):
        with pytest.raises(InputError, match="energy_edges"):
            IndexMapEstimator(energy_edges=edges)
    no_edisp = car_dataset.copy(name="noedisp")
    no_edisp.edisp = None
    with pytest.raises(InputError, match="edisp"):
        IndexMapEstimator().run(no_edisp)
