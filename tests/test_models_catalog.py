"""Survey catalogue FITS: exact round trip of a simulated survey's models, columns, Npred/TS."""
import operator

import numpy as np
import pytest
import astropy.units as u
from astropy.io import fits
from astropy.table import Table
from gammapy.datasets import Datasets, MapDataset
from gammapy.maps import MapAxis, WcsGeom
from gammapy.modeling import Parameter
from gammapy.modeling.models import (
    CompoundSpectralModel,
    ExpCutoffPowerLawSpectralModel,
    GaussianSpatialModel,
    LogParabolaSpectralModel,
    Models,
    PointSpatialModel,
    PowerLawSpectralModel,
    SkyModel,
)

from gpsfast.errors import InputError
from gpsfast.models import (
    FLAG_OTHER_AT_BOUND,
    FLAG_POSITION_AT_BOUND,
    FLAG_SIZE_AT_BOUND,
    GammaLibDiskSpatialModel,
    GammaLibEllipticalGaussianSpatialModel,
    GammaLibShellSpatialModel,
    NodeFunctionSpectralModel,
    SurveyCatalog,
    read_catalog,
    write_catalog,
)


def simulated_survey(n=24, seed=0):
    """Sources of many kinds with random parameters, errors, limits and frozen flags."""
    rng = np.random.default_rng(seed)
    models = []
    for i in range(n):
        lon, lat = rng.uniform(-60, 60), rng.uniform(-2, 2)
        kind = i % 6
        if kind == 0:
            spatial = PointSpatialModel(lon_0=lon * u.deg, lat_0=lat * u.deg, frame="galactic")
        elif kind == 1:
            spatial = GammaLibDiskSpatialModel(lon_0=lon * u.deg, lat_0=lat * u.deg, r_0=rng.uniform(0.05, 1) * u.deg,
                                               frame="galactic")
        elif kind == 2:
            spatial = GammaLibEllipticalGaussianSpatialModel(
                lon_0=lon * u.deg, lat_0=lat * u.deg, r_0=0.3 * u.deg, e=rng.uniform(0, 0.9),
                phi=rng.uniform(-90, 90) * u.deg, frame="galactic")
        elif kind == 3:
            spatial = GaussianSpatialModel(lon_0=lon * u.deg, lat_0=lat * u.deg, sigma=rng.uniform(0.05, 1) * u.deg,
                                           frame="galactic")
        elif kind == 4:
            spatial = GammaLibShellSpatialModel(lon_0=lon * u.deg, lat_0=lat * u.deg, radius=0.3 * u.deg,
                                                width=0.05 * u.deg, frame="galactic")
        else:
            spatial = PointSpatialModel(lon_0=rng.uniform(0, 360) * u.deg, lat_0=rng.uniform(-60, 60) * u.deg,
                                        frame="icrs")
        amp = 10 ** rng.uniform(-13, -11)
        skind = i % 4
        if skind == 0:
            spectral = PowerLawSpectralModel(index=rng.uniform(1.5, 3.5), amplitude=amp * u.Unit("cm-2 s-1 TeV-1"))
        elif skind == 1:
            spectral = ExpCutoffPowerLawSpectralModel(index=2.0, amplitude=amp * u.Unit("cm-2 s-1 TeV-1"),
                                                      lambda_=rng.uniform(0.01, 1) * u.Unit("TeV-1"))
        elif skind == 2:
            spectral = LogParabolaSpectralModel(alpha=2.3, beta=rng.uniform(0, 0.3),
                                                amplitude=amp * u.Unit("cm-2 s-1 TeV-1"), reference=1 * u.TeV)
        else:
            spectral = CompoundSpectralModel(
                PowerLawSpectralModel(index=2.5, amplitude=amp * u.Unit("cm-2 s-1 TeV-1")),
                NodeFunctionSpectralModel([Parameter("energy_0", 1.0, "TeV", frozen=True),
                                           Parameter("energy_1", 10.0, "TeV", frozen=True)],
                                          [Parameter("intensity_0", 1.0, ""), Parameter("intensity_1", 0.5, "")]),
                operator.mul,
            )
        model = SkyModel(spectral_model=spectral, spatial_model=spatial, name=f"GPS J{i:04d}")
        for par in model.parameters:
            par.error = abs(par.value) * rng.uniform(0.01, 0.2) if par.value != 0 else rng.uniform(0.01, 0.1)
            if rng.uniform() < 0.3:
                par.frozen = not par.frozen
            if rng.uniform() < 0.5 and par.unit != u.deg:
                par.min, par.max = par.value - 10 * abs(par.value), par.value + 10 * abs(par.value) + 1
        models.append(model)
    return Models(models)


def assert_models_equal(m1, m2):
    assert m1.names == m2.names
    for a, b in zip(m1, m2):
        assert type(a.spectral_model) is type(b.spectral_model)
        assert type(a.spatial_model) is type(b.spatial_model)
        assert a.spatial_model.frame == b.spatial_model.frame
        assert a.parameters.names == b.parameters.names
        for pa, pb in zip(a.parameters, b.parameters):
            for key in ("value", "error", "min", "max"):
                va, vb = getattr(pa, key), getattr(pb, key)
                assert va == vb or (np.isnan(va) and np.isnan(vb)), (a.name, pa.name, key, va, vb)
            assert pa.frozen == pb.frozen, (a.name, pa.name)
            assert pa.unit == pb.unit, (a.name, pa.name)


def test_round_trip_is_exact(tmp_path):
    models = simulated_survey()
    write_catalog(models, tmp_path / "cat.fits")
    assert_models_equal(models, read_catalog(tmp_path / "cat.fits"))


def test_columns_and_defaults(tmp_path):
    models = simulated_survey(n=6)
    write_catalog(models, tmp_path / "cat.fits")
    table = Table.read(tmp_path / "cat.fits", hdu="CATALOG", mask_invalid=False)
    for column in ("Source_Name", "GLON", "GLAT", "RA", "DEC", "Spatial_Model", "Spectral_Model", "Temporal_Model",
                   "Size_r_0", "Size_sigma", "Size_e", "Size_phi", "Flux_0p05_1TeV", "Flux_0p05_1TeV_err",
                   "Flux_1_100TeV", "Flux_1_100TeV_err", "Flag", "Main", "Parent", "Assoc",
                   "spectral_amplitude", "spectral_amplitude_err", "spatial_lon_0"):
        assert column in table.colnames, column
    assert table["GLON"].unit == u.deg
    pos = models[5].spatial_model.position
    assert table["RA"][5] == pytest.approx(pos.icrs.ra.deg, abs=1e-10)
    assert table["GLAT"][5] == pytest.approx(pos.galactic.b.deg, abs=1e-10)
    assert table["Spatial_Model"][1] == "GammaLibDiskSpatialModel"
    assert table["Size_r_0"][1] == pytest.approx(models[1].spatial_model.r_0.value)
    assert np.isnan(table["Size_r_0"][0])
    assert list(table["Flag"]) == [0] * 6 and all(table["Main"]) and set(table["Parent"]) == {""}


def test_integral_flux_and_error():
    from gpsfast.models.catalog import _flux_with_error

    model = SkyModel(PowerLawSpectralModel(index=2.0, amplitude="1e-12 cm-2 s-1 TeV-1"),
                     PointSpatialModel(), name="pl")
    model.spectral_model.amplitude.error = 1e-13
    model.spectral_model.index.frozen = True
    flux, err = _flux_with_error(model, 1.0, 100.0)
    expected = 1e-12 * (1 / 1.0 - 1 / 100.0)  # integral of E^-2 in TeV
    assert flux == pytest.approx(expected, rel=1e-9)
    assert err == pytest.approx(0.1 * expected, rel=1e-6)


def test_survey_catalog_class(tmp_path):
    models = simulated_survey(n=6)
    write_catalog(models, tmp_path / "cat.fits")
    cat = SurveyCatalog.read(tmp_path / "cat.fits")
    assert len(cat) == 6 and len(cat.table) == 6
    assert_models_equal(Models([models["GPS J0003"]]), Models([cat["GPS J0003"]]))
    assert cat[2].name == "GPS J0002"
    with pytest.raises(KeyError, match="no source named"):
        cat["nope"]
    assert_models_equal(models, cat.to_models())


def test_refuses_overwrite_and_bad_files(tmp_path):
    models = simulated_survey(n=2)
    write_catalog(models, tmp_path / "cat.fits")
    with pytest.raises(InputError, match="exists"):
        write_catalog(models, tmp_path / "cat.fits")
    with pytest.raises(InputError, match="not found"):
        read_catalog(tmp_path / "missing.fits")
    fits.HDUList([fits.PrimaryHDU()]).writeto(tmp_path / "other.fits")
    with pytest.raises(InputError, match="not a gpsfast catalogue"):
        read_catalog(tmp_path / "other.fits")


def _dataset(name, energy_edges, models):
    axis = MapAxis.from_energy_edges(energy_edges * u.TeV, name="energy")
    geom = WcsGeom.create(skydir=(0, 0), frame="galactic", binsz=0.1, width=2.0, axes=[axis])
    dataset = MapDataset.create(geom, name=name)
    dataset.exposure.data += 1e11
    dataset.mask_safe.data[...] = True
    dataset.psf = None  # point-like response: no PSF, no energy dispersion
    dataset.edisp = None
    dataset.background.data += 0.5
    dataset.models = models
    dataset.counts = dataset.npred()  # Asimov counts
    return dataset


def test_npred_and_ts_per_dataset(tmp_path):
    bright = SkyModel(PowerLawSpectralModel(amplitude="1e-11 cm-2 s-1 TeV-1"),
                      PointSpatialModel(lon_0="0.1 deg", lat_0="0 deg", frame="galactic"), name="bright")
    faint = SkyModel(PowerLawSpectralModel(amplitude="1e-13 cm-2 s-1 TeV-1"),
                     PointSpatialModel(lon_0="-0.4 deg", lat_0="0.2 deg", frame="galactic"), name="faint")
    models = Models([bright, faint])
    datasets = Datasets([_dataset("SubTeV", np.geomspace(0.05, 1, 4), models),
                         _dataset("PosTeV", np.geomspace(1, 100, 4), models)])
    table = write_catalog(models, tmp_path / "cat.fits", datasets=datasets)
    for column in ("Npred_SubTeV", "Npred_PosTeV", "TS_SubTeV", "TS_PosTeV", "Npred", "TS"):
        assert column in table.colnames
    expected = datasets["SubTeV"].npred_signal(model_names=["bright"]).data.sum()
    assert table["Npred_SubTeV"][0] == pytest.approx(expected, rel=1e-9)
    assert table["TS_SubTeV"][0] > table["TS_SubTeV"][1] > 0
    assert table["TS"][0] == pytest.approx(table["TS_SubTeV"][0] + table["TS_PosTeV"][0])
    # the datasets still hold both models afterwards
    assert datasets["SubTeV"].models.names == ["bright", "faint"]
    # TS as gammapy's statistic without minus with the source, the source removed from the models
    for row, name in enumerate(["bright", "faint"]):
        for dataset in datasets:
            with_source = dataset.stat_sum()
            dataset.models = Models([m for m in models if m.name != name])
            expected = dataset.stat_sum() - with_source
            dataset.models = models
            assert table[f"TS_{dataset.name}"][row] == pytest.approx(expected, rel=1e-7)


def test_ts_with_masked_pixels_and_a_source_in_one_dataset(tmp_path):
    source = SkyModel(PowerLawSpectralModel(amplitude="3e-12 cm-2 s-1 TeV-1"),
                      PointSpatialModel(lon_0="0.2 deg", lat_0="0 deg", frame="galactic"), name="src")
    other = SkyModel(PowerLawSpectralModel(amplitude="2e-12 cm-2 s-1 TeV-1"),
                     PointSpatialModel(lon_0="-0.3 deg", lat_0="0 deg", frame="galactic"), name="other",
                     datasets_names=["PosTeV"])
    models = Models([source, other])
    datasets = Datasets([_dataset("SubTeV", np.geomspace(0.05, 1, 4), models),
                         _dataset("PosTeV", np.geomspace(1, 100, 4), models)])
    subtev = datasets["SubTeV"]
    subtev.counts.data = np.random.default_rng(2).poisson(subtev.counts.data).astype(float)
    subtev.mask_safe.data[:, :, :8] = False  # half the source's pixels and bins out of the mask
    subtev.mask_safe.data[0] = False
    table = write_catalog(models, tmp_path / "cat.fits", datasets=datasets)
    with_source = subtev.stat_sum()
    subtev.models = Models([other])
    expected = subtev.stat_sum() - with_source
    assert table["TS_SubTeV"][0] == pytest.approx(expected, rel=1e-7)
    assert np.isnan(table["TS_SubTeV"][1]) and np.isnan(table["Npred_SubTeV"][1])
    assert table["TS_PosTeV"][1] > 0 and table["TS"][1] == pytest.approx(table["TS_PosTeV"][1])


def test_flag_marks_free_parameters_at_a_bound(tmp_path):
    def source(name, lon, frozen=False, error=0.0):
        model = SkyModel(PowerLawSpectralModel(), PointSpatialModel(lon_0=f"{lon} deg", lat_0="0 deg",
                                                                   frame="galactic"), name=name)
        lon_0 = model.spatial_model.lon_0
        lon_0.min, lon_0.max, lon_0.frozen, lon_0.error = 0.8, 1.2, frozen, error
        return model

    unresolved = SkyModel(PowerLawSpectralModel(index=5.0), GaussianSpatialModel(sigma="0.015 deg", frame="galactic"),
                          name="unresolved-steep")
    unresolved.spatial_model.sigma.min = 0.015
    unresolved.spectral_model.index.max = 5.0
    models = Models([source("inside", 1.0), source("at-max", 1.2), source("at-min-frozen", 0.8, frozen=True),
                     source("near-min", 0.8 + 1e-4, error=0.02), source("close-not-at", 0.8 + 1e-4, error=1e-3),
                     unresolved])
    table = write_catalog(models, tmp_path / "cat.fits")
    expected = [0, FLAG_POSITION_AT_BOUND, 0, FLAG_POSITION_AT_BOUND, 0, FLAG_SIZE_AT_BOUND | FLAG_OTHER_AT_BOUND]
    assert list(table["Flag"]) == expected
    assert list(Table.read(tmp_path / "cat.fits", hdu="CATALOG")["Flag"]) == [0, 1, 0, 1, 0, 6]


def test_seed_columns_main_parent_assoc(tmp_path):
    models = simulated_survey(n=3)
    names = models.names
    seeds = Table({"name": [names[0], names[1], "SEED-X"], "parent": ["", names[0], ""],
                   "nested": [False, True, False], "assoc": ["HESS J1745-290", "", "other"]})
    table = write_catalog(models, tmp_path / "cat.fits", seeds=seeds)
    assert list(table["Main"]) == [True, False, True]
    assert list(table["Parent"]) == ["", names[0], ""]
    assert list(table["Assoc"]) == ["HESS J1745-290", "", ""]
    with pytest.raises(InputError, match="lacks the column.*nested"):
        write_catalog(models, tmp_path / "other.fits", seeds=seeds[["name", "parent", "assoc"]])


def test_round_trip_with_files_and_temporal(tmp_path):
    from pathlib import Path

    from gpsfast.models import FileFunctionSpectralModel, GammaLibPhaseCurveTemporalModel

    data = Path(__file__).parent / "data" / "models"
    spectral = FileFunctionSpectralModel.read(data / "filefunction.txt", norm=2.0)
    temporal = GammaLibPhaseCurveTemporalModel.read(data / "phasecurve.fits", f0=Parameter("f0", 29.7, "s-1"))
    model = SkyModel(spectral, PointSpatialModel(lon_0="83.6 deg", lat_0="22.0 deg"), temporal, name="pulsar")
    model.spectral_model.norm.error = 0.3
    write_catalog([model], tmp_path / "cat.fits")
    back = read_catalog(tmp_path / "cat.fits")
    assert_models_equal(Models([model]), back)
    assert back[0].temporal_model.scale == "tt"
    assert Table.read(tmp_path / "cat.fits")["Temporal_Model"][0] == "GammaLibPhaseCurveTemporalModel"
    energy = np.geomspace(0.05, 20, 9) * u.TeV
    np.testing.assert_array_equal(back[0].spectral_model(energy).value, model.spectral_model(energy).value)


def test_same_parameter_name_with_other_units(tmp_path):
    """``amplitude`` is a differential flux in PowerLaw, an integral flux in PowerLaw2: two columns."""
    from gammapy.modeling.models import PowerLaw2SpectralModel

    models = Models([
        SkyModel(PowerLawSpectralModel(), PointSpatialModel(), name="a"),
        SkyModel(PowerLaw2SpectralModel(amplitude="3e-12 cm-2 s-1"), PointSpatialModel(), name="b"),
    ])
    table = write_catalog(models, tmp_path / "cat.fits")
    assert "spectral_amplitude" in table.colnames and "spectral_amplitude__s_1_cm_2" in table.colnames
    assert table["spectral_amplitude__s_1_cm_2"][1] == 3e-12
    assert_models_equal(models, read_catalog(tmp_path / "cat.fits"))
