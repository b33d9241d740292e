"""Background and diffuse: hysteresis exclusion masks, FoV background fit, diffuse templates, the iteration."""
import astropy.units as u
import numpy as np
import pytest
from astropy.coordinates import SkyCoord
from astropy.io import fits
from gammapy.datasets import Datasets, MapDataset
from gammapy.irf import EDispKernelMap, PSFMap
from gammapy.maps import Map, MapAxis, WcsGeom
from gammapy.modeling import Fit
from gammapy.modeling.models import (
    FoVBackgroundModel,
    GaussianSpatialModel,
    Models,
    PointSpatialModel,
    PowerLawSpectralModel,
    SkyModel,
    TemplateSpatialModel,
)
from numpy.testing import assert_allclose, assert_array_equal
from scipy.ndimage import distance_transform_edt
from skimage.filters import apply_hysteresis_threshold

from gpsfast.background import background_models, exclusion_mask, fit_background, iterate_background
from gpsfast.background import diffuse_from_file, estimate_diffuse
from gpsfast.detect import significance_maps
from gpsfast.errors import InputError
from gpsfast.fit import fast_datasets, frozen


def tiny_dataset(name="tiny", width=(2.0, 1.5), binsz=0.04, background=20.0, exposure=1e11, psf_sigma=0.06):
    """A small MapDataset (1-100 TeV, 4 bins): flat exposure, E^-1.5 background, Gaussian PSF, diagonal edisp."""
    axis = MapAxis.from_energy_bounds("1 TeV", "100 TeV", nbin=4, name="energy")
    axis_true = MapAxis.from_energy_bounds("0.7 TeV", "150 TeV", nbin=10, name="energy_true")
    geom = WcsGeom.create(skydir=SkyCoord(0, 0, unit="deg", frame="galactic"), width=width, binsz=binsz,
                          frame="galactic", axes=[axis])
    dataset = MapDataset.create(geom, energy_axis_true=axis_true, name=name)
    dataset.exposure = Map.from_geom(dataset.exposure.geom, data=np.full(dataset.exposure.data.shape, exposure),
                                     unit="m2 s")
    energy = axis.center.to_value("TeV")
    dataset.background.data[...] = (background * energy**-1.5)[:, None, None]
    dataset.mask_safe.data[...] = True
    dataset.psf = PSFMap.from_gauss(axis_true, sigma=psf_sigma * u.deg)
    dataset.edisp = EDispKernelMap.from_diagonal_response(axis, axis_true)
    return dataset


def source(name, lon, lat, sigma=None, amplitude=1e-12, index=2.4):
    position = dict(lon_0=lon * u.deg, lat_0=lat * u.deg, frame="galactic")
    spatial = PointSpatialModel(**position) if sigma is None else GaussianSpatialModel(sigma=sigma * u.deg,
                                                                                       **position)
    spectral = PowerLawSpectralModel(index=index, amplitude=amplitude * u.Unit("cm-2 s-1 TeV-1"))
    return SkyModel(spatial_model=spatial, spectral_model=spectral, name=name)


def latitude_diffuse(amplitude=1e-8, scale=0.3, index=2.6, name="true-diffuse"):
    """Diffuse emission: a Gaussian latitude profile (sr-1) times a power law (per sr)."""
    geom = WcsGeom.create(skydir=SkyCoord(0, 0, unit="deg", frame="galactic"), width=(3, 2.5), binsz=0.02,
                          frame="galactic")
    lat = geom.get_coord().skycoord.b.deg
    template = Map.from_geom(geom, data=np.exp(-0.5 * (lat / scale) ** 2), unit="sr-1")
    spectral = PowerLawSpectralModel(index=index, amplitude=amplitude * u.Unit("cm-2 s-1 TeV-1"))
    return SkyModel(spatial_model=TemplateSpatialModel(template, normalize=False, filename=f"{name}.fits"),
                    spectral_model=spectral, name=name)


# ------------------------------------------------------------------ exclusion mask


def random_significance(seed=0, shape=(30, 40), binsz=0.05):
    rng = np.random.default_rng(seed)
    geom = WcsGeom.create(skydir=(0, 0), npix=shape[::-1], binsz=binsz, frame="galactic")
    data = rng.normal(size=shape)
    data[10:14, 5:9] += 6
    data[20:22, 30:36] += 3.5
    data[3, 3] = np.nan
    return Map.from_geom(geom, data=data)


def test_exclusion_mask_is_skimage_hysteresis():
    significance = random_significance()
    mask = exclusion_mask(significance, low=2.5, high=4.5)
    expected = apply_hysteresis_threshold(np.nan_to_num(significance.data, nan=-np.inf), 2.5, 4.5)
    assert mask.geom == significance.geom
    assert mask.data.dtype == bool
    assert_array_equal(~mask.data, expected)
    assert expected.sum() > 10 and not expected.all()


def test_exclusion_mask_combines_maps_and_dilates():
    first, second = random_significance(0), random_significance(1)
    mask = exclusion_mask({"a": first, "b": second}, low=3, high=5, radius="0.12 deg")
    union = apply_hysteresis_threshold(np.nan_to_num(first.data, nan=-np.inf), 3, 5)
    union |= apply_hysteresis_threshold(np.nan_to_num(second.data, nan=-np.inf), 3, 5)
    distance = distance_transform_edt(~union) * 0.05
    assert_array_equal(~mask.data, distance <= 0.12 + 1e-9)


def test_exclusion_mask_on_a_finer_geometry_and_flux_maps():
    coarse = random_significance(2, shape=(15, 20), binsz=0.1)
    fine_geom = WcsGeom.create(skydir=(0, 0), npix=(40, 30), binsz=0.05, frame="galactic")
    mask = exclusion_mask(coarse, geom=fine_geom, low=3, high=5)
    significant = apply_hysteresis_threshold(np.nan_to_num(coarse.data, nan=-np.inf), 3, 5)
    # each coarse pixel covers 2 x 2 fine pixels
    assert_array_equal(~mask.data, np.kron(significant, np.ones((2, 2), dtype=bool)))
    with pytest.raises(InputError, match="low <= high"):
        exclusion_mask(coarse, low=5, high=3)
    with pytest.raises(InputError, match="significance maps"):
        exclusion_mask(3.0)


# ------------------------------------------------------------------ background fit


@pytest.fixture(scope="module")
def offset_background():
    """Counts with the background scaled by 1.05 and tilted by 0.05; models with norm 1, tilt 0."""
    dataset = tiny_dataset(background=60.0)
    sources = [source("bright", 0.3, 0.1, amplitude=3e-12), source("ext", -0.4, -0.1, sigma=0.15, amplitude=4e-12)]
    truth = FoVBackgroundModel(dataset_name=dataset.name)
    truth.spectral_model.norm.value, truth.spectral_model.tilt.value = 1.05, 0.05
    dataset.models = Models([*sources, truth])
    dataset.fake(random_state=1)
    models = Models([*sources, FoVBackgroundModel(dataset_name=dataset.name)])
    dataset.models = models
    return dataset, models


def test_fit_background_recovers_norm_and_tilt(offset_background):
    dataset, models = offset_background
    significance = significance_maps([dataset], radii=(0.1,))
    mask = exclusion_mask(significance, geom=dataset.counts.geom, low=3, high=5, radius="0.1 deg")
    assert 0.02 < 1 - mask.data.mean() < 0.5
    source_values = [p.value for p in models.parameters if p.name in ("amplitude", "index", "sigma")]
    table = fit_background(dataset, models, mask)
    row = table[0]
    assert row["success"]
    assert abs(row["norm"] - 1.05) < 3 * row["norm_err"] and row["norm_err"] < 0.015
    assert abs(row["tilt"] - 0.05) < 3 * row["tilt_err"] and row["tilt_err"] < 0.02
    background = models[f"{dataset.name}-bkg"].spectral_model
    assert background.norm.value == row["norm"] and background.tilt.frozen
    assert [p.value for p in models.parameters if p.name in ("amplitude", "index", "sigma")] == source_values
    assert dataset.mask_fit is None and set(dataset.models.names) == set(models.names)
    assert_allclose(row["fit_fraction"], mask.data.mean())

    # same best fit as gammapy's fit of the masked dataset, sources frozen
    reference = Models([m.copy(name=m.name) for m in models])
    background_ref = reference[f"{dataset.name}-bkg"].spectral_model
    background_ref.norm.value, background_ref.tilt.value, background_ref.tilt.frozen = 1, 0, False
    masked = dataset.copy(name=dataset.name)
    masked.mask_fit = Map.from_geom(dataset.counts.geom, data=np.broadcast_to(mask.data, dataset.data_shape))
    masked.models = reference
    with frozen(reference, keep=[background_ref.norm, background_ref.tilt]):
        Fit().run([masked])
    assert_allclose([background_ref.norm.value, background_ref.tilt.value], [row["norm"], row["tilt"]], atol=2e-4)
    slow = fit_background(dataset, reference, mask, fast=False)
    assert_allclose([slow[0]["norm"], slow[0]["tilt"]], [row["norm"], row["tilt"]], atol=2e-4)


def test_background_models_added_and_checked():
    dataset = tiny_dataset(name="nobkg")
    models = Models([source("s", 0, 0)])
    backgrounds = background_models([dataset], models)
    assert backgrounds["nobkg"].name == "nobkg-bkg" and "nobkg-bkg" in models.names
    dataset.background = None
    with pytest.raises(InputError, match="no background map"):
        background_models([dataset], models)


# ------------------------------------------------------------------ diffuse


@pytest.fixture(scope="module")
def diffuse_patch():
    """Strong diffuse emission (latitude profile), two compact sources, true background."""
    dataset = tiny_dataset(name="diffuse", width=(2.4, 2.0))
    compact = [source("p1", 0.5, 0.05, amplitude=1.5e-12), source("g2", -0.5, -0.1, sigma=0.1, amplitude=2e-12)]
    truth = Models([*compact, latitude_diffuse(), FoVBackgroundModel(dataset_name=dataset.name)])
    dataset.models = truth
    dataset.fake(random_state=5)
    return dataset, compact


def fit_compact(dataset, models, names):
    with frozen(models, keep=names):
        result = Fit().run(fast_datasets([dataset]))
    assert result.success
    return {name: models[name].spectral_model.amplitude for name in names}


def test_estimated_diffuse_absorbs_the_emission(diffuse_patch):
    dataset, compact = diffuse_patch
    models = Models([m.copy(name=m.name) for m in compact])
    models.append(FoVBackgroundModel(dataset_name=dataset.name))
    dataset.models = models
    mask = exclusion_mask(significance_maps([dataset], radii=(0.1,)), geom=dataset.counts.geom, radius="0.15 deg")
    fit_background(dataset, models, mask)
    diffuse, mask = estimate_diffuse([dataset], mask, smoothing="0.25 deg", radius="0.15 deg")
    assert isinstance(diffuse.spatial_model, TemplateSpatialModel) and not diffuse.spectral_model.amplitude.frozen
    models.append(diffuse)
    table = fit_background(dataset, models, mask, free=diffuse)
    assert table[0]["success"]
    without = Models([m.copy(name=m.name) for m in compact])
    without.append(FoVBackgroundModel(dataset_name=dataset.name))
    dataset.models = without
    fit_background(dataset, without, mask)
    dataset.models = models
    names = [m.name for m in compact]
    with_diffuse = fit_compact(dataset, models, names)
    dataset.models = without
    no_diffuse = fit_compact(dataset, without, names)

    # residuals over large scales (latitude bands of 0.4 deg) consistent with zero
    dataset.models = models
    residual = (dataset.counts.data - dataset.npred().data).sum(axis=(0, 2))
    npred = dataset.npred().data.sum(axis=(0, 2))
    lat = dataset.counts.geom.get_coord().skycoord.b.deg[0, :, 0]
    bands = np.floor((lat + 1) / 0.4)
    for band in np.unique(bands):
        inside = bands == band
        assert abs(residual[inside].sum()) < 3.5 * np.sqrt(npred[inside].sum()), band
    for model in compact:
        true = model.spectral_model.amplitude.value
        fitted = with_diffuse[model.name]
        assert abs(fitted.value - true) < 3 * fitted.error, model.name
        # without the diffuse component the sources take its flux
        assert no_diffuse[model.name].value - true > 2 * fitted.error, model.name


def test_diffuse_from_files(diffuse_patch, tmp_path):
    dataset, compact = diffuse_patch
    true = latitude_diffuse()
    template = true.spatial_model.map
    cube_geom = template.geom.to_cube([MapAxis.from_energy_bounds("0.5 TeV", "200 TeV", nbin=12,
                                                                  name="energy_true")])
    energy = cube_geom.axes["energy_true"].center
    cube = Map.from_geom(cube_geom, unit="cm-2 s-1 TeV-1 sr-1")
    cube.data = (template.data[None] * true.spectral_model(energy).value[:, None, None])
    cube.write(tmp_path / "cube.fits")
    model = diffuse_from_file(tmp_path / "cube.fits", name="file-diffuse")
    assert model.name == "file-diffuse" and type(model.spectral_model).__name__ == "PowerLawNormSpectralModel"
    assert not model.spectral_model.norm.frozen and not model.spectral_model.tilt.frozen
    models = Models([*[m.copy(name=m.name) for m in compact], model, FoVBackgroundModel(dataset_name=dataset.name)])
    dataset.models = models
    table = fit_background(dataset, models, None, free=model)
    norm, tilt = model.spectral_model.norm, model.spectral_model.tilt
    assert table[0]["success"]
    assert abs(norm.value - 1) < 3 * norm.error and abs(tilt.value) < 3 * tilt.error

    template.write(tmp_path / "image.fits")
    with pytest.raises(InputError, match="needs a spectral model"):
        diffuse_from_file(tmp_path / "image.fits")
    image = diffuse_from_file(tmp_path / "image.fits", spectral_model=PowerLawSpectralModel(), tilt=False)
    assert image.spatial_model.normalize and image.spectral_model.index.frozen
    # the same cube as GammaLib writes it: intensity planes in the primary HDU, ENERGIES (MeV) table
    hdu = fits.PrimaryHDU(cube.data.astype("f8") * 1e-6, header=template.geom.wcs.to_header())
    energies = fits.BinTableHDU.from_columns([fits.Column("Energy", "D", unit="MeV", array=energy.to_value("MeV"))],
                                             name="ENERGIES")
    fits.HDUList([hdu, energies]).writeto(tmp_path / "gammalib_cube.fits")
    xml = tmp_path / "diffuse.xml"
    xml.write_text(
        '<source_library><source name="gal" type="DiffuseSource">'
        '<spectrum type="ConstantValue"><parameter name="Normalization" value="1" scale="1" min="0" max="10" '
        'free="1"/></spectrum><spatialModel type="DiffuseMapCube" file="gammalib_cube.fits">'
        '<parameter name="Normalization" value="1" scale="1" min="0" max="10" free="0"/></spatialModel>'
        "</source></source_library>"
    )
    from_xml = diffuse_from_file(xml)
    assert from_xml.name == "gal" and from_xml.spatial_model.is_energy_dependent
    assert_allclose(from_xml.spectral_model.norm.value, 1)
    with pytest.raises(InputError, match="does not exist"):
        diffuse_from_file(tmp_path / "missing.fits")


def test_iterate_background(offset_background):
    dataset, models = offset_background
    models = Models([m.copy(name=m.name) for m in models])
    calls = []

    def fit_sources(datasets, models):
        calls.append(sorted(models.names))
        with frozen(models, keep=["bright", "ext"]):
            Fit().run(fast_datasets(datasets))

    result = iterate_background(Datasets([dataset]), models, fit_sources, iterations=1, radii=(0.1,))
    assert len(calls) == 1 and len(result.masks) == 2 and list(result.table["pass"]) == [0, 1]
    last = result.tables[-1][0]
    assert abs(last["norm"] - 1.05) < 3 * last["norm_err"]
    # the residual mask excludes less than the raw one: the sources are modelled
    assert result.masks[1].data.mean() > result.masks[0].data.mean()
    with pytest.raises(InputError, match="fit_sources"):
        iterate_background(Datasets([dataset]), models, iterations=1)


def test_iterate_background_estimates_the_diffuse_component(diffuse_patch):
    dataset, compact = diffuse_patch
    truth = latitude_diffuse()
    dataset.models = Models([truth])
    true_npred = dataset.npred_signal().data.sum()
    models = Models([m.copy(name=m.name) for m in compact])
    result = iterate_background(Datasets([dataset]), models, iterations=0, radii=(0.1,), diffuse="estimate",
                                smoothing="0.25 deg", radius="0.15 deg")
    assert result.diffuse.name in models.names and not result.diffuse.spectral_model.amplitude.frozen
    assert len(result.masks) == 1 and result.tables[0][0]["success"]
    # the estimate's mask excludes the compact sources only, not the plane
    assert result.masks[0].data.mean() > 0.85
    npred = dataset.npred_signal(model_names=[result.diffuse.name]).data.sum()
    assert abs(npred / true_npred - 1) < 0.15
