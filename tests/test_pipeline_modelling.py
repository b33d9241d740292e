"""Seed selection, bounded seed models and catalogue matching of the pipeline."""
import astropy.units as u
import numpy as np
import pytest
from astropy.table import Table
from gammapy.modeling.models import (
    GaussianSpatialModel,
    Models,
    PointSpatialModel,
    PowerLawSpectralModel,
    SkyModel,
)

from gpsfast.pipeline.modelling import match_catalogue, seed_models, select_seeds


def seed_table():
    return Table(
        {
            "name": ["A", "B", "C", "D", "E"],
            "glon": [0.0, 0.1, 1.0, 1.15, -0.3],
            "glat": [0.0, 0.0, 0.5, 0.5, 0.0],
            "radius": [0.1, 0.3, 0.02, 2.0, 0.2],
            "sqrt_ts": [8.0, 20.0, 6.0, 5.5, 7.0],
        }
    )


def test_select_seeds_keeps_strongest_of_each_cluster():
    kept = select_seeds(seed_table(), min_separation=0.2)
    # B (20, radius 0.3) beats A (0.1 deg away); E is 0.4 deg from B: kept; C beats D (0.15 deg away)
    assert list(kept["name"]) == ["B", "E", "C"]
    # with a smaller separation, A (0.1 deg from B) is still inside B's radius; D is outside C's 0.02 deg
    assert list(select_seeds(seed_table(), min_separation=0.05)["name"]) == ["B", "E", "C", "D"]
    # B's radius capped at 0.05 deg: A is kept
    assert list(select_seeds(seed_table(), 0.05, max_merge_radius=0.05)["name"]) == ["B", "A", "E", "C", "D"]
    assert len(select_seeds(seed_table()[:0])) == 0


def test_select_seeds_drops_hough_circles_holding_seeds():
    table = seed_table()
    table["method"] = ["peak", "hough", "peak", "hough", "peak"]
    table["n_children"] = [0, 1, 0, 0, 0]
    # B is a Hough circle around A: dropped, A kept; D (an empty shell) is weaker than C, 0.15 deg away
    assert list(select_seeds(table, min_separation=0.2)["name"]) == ["A", "E", "C"]
    table["radius"][2] = 0.5
    table["sqrt_ts"][2] = 9.0
    # C (radius 0.5) is now the strongest: E is 0.3 deg from A, A is 1.1 deg from C: both kept
    assert list(select_seeds(table, min_separation=0.2)["name"]) == ["C", "A", "E"]


def test_seed_models_bounded_around_seeds():
    table = seed_table()
    models = seed_models(table, index=[2.0, 2.2, 2.4, 2.6, 2.8], amplitude=[1e-12] * 5, position_range=0.2)
    assert models.names == list(table["name"])
    for row, model in zip(table, models):
        spatial, spectral = model.spatial_model, model.spectral_model
        assert spatial.lon_0.min == pytest.approx(row["glon"] - 0.2)
        assert spatial.lon_0.max == pytest.approx(row["glon"] + 0.2)
        assert spatial.lat_0.min == pytest.approx(row["glat"] - 0.2)
        assert 0.03 <= spatial.r_0.value <= 0.5
        assert spatial.r_0.min <= spatial.r_0.value <= spatial.r_0.max
        assert spatial.eta.frozen and spatial.e.frozen and spatial.phi.frozen
        assert not spatial.lon_0.frozen and not spatial.r_0.frozen
        assert spectral.amplitude.quantity == 1e-12 * u.Unit("cm-2 s-1 TeV-1")
        assert spectral.amplitude.min == 0
    assert models["A"].spatial_model.r_0.value == pytest.approx(0.05)
    assert models["C"].spatial_model.r_0.value == pytest.approx(0.03)
    assert models["D"].spatial_model.r_0.value == pytest.approx(0.5)
    assert [m.spectral_model.alpha.value for m in models] == [2.0, 2.2, 2.4, 2.6, 2.8]


def source(name, lon, lat):
    spatial = PointSpatialModel(lon_0=lon * u.deg, lat_0=lat * u.deg, frame="galactic")
    return SkyModel(spatial_model=spatial, spectral_model=PowerLawSpectralModel(), name=name)


def test_match_catalogue_one_to_one_nearest_first():
    truth = Models([source("T1", 0, 0), source("T2", 0.1, 0), source("T3", 5, 5)])
    spatial = GaussianSpatialModel(lon_0="359.95 deg", lat_0="0.02 deg", sigma="0.1 deg", frame="galactic")
    catalogue = Models([
        SkyModel(spatial_model=spatial, spectral_model=PowerLawSpectralModel(), name="C1"),
        source("C2", 0.12, 0.0),
    ])
    pairs = match_catalogue(truth, catalogue, max_separation=0.3)
    assert dict(zip(pairs["source"], pairs["model"])) == {"T1": "C1", "T2": "C2"}
    row = pairs[list(pairs["source"]).index("T1")]
    np.testing.assert_allclose([row["dlon"], row["dlat"]], [-0.05, 0.02], atol=1e-6)
    np.testing.assert_allclose(row["separation"], np.hypot(0.05, 0.02), rtol=1e-3)
    assert len(match_catalogue(truth, Models([]))) == 0
