"""Generalized Gaussian (Sersic) evaluation: gpsfast's compiled model vs gammapy's.

Geometry: 10 x 6 deg galactic CAR patch at 0.03 deg (333 x 200 pixels) with a
1-100 TeV true-energy axis (8 bins), as built by ``WcsGeom.create``. Each round
runs ``evaluate_geom`` and ``integrate_geom`` of five GPS-like sources (r_0 from
0.05 to 0.5 deg, eta from 0.2 to 1, elongation up to 0.9). The speed-up
``gammapy / gpsfast`` prints at the end of the run (see ``conftest.py``).

Also: cold ``npred_signal`` of all compact sources of the GPS-realistic PosTeV
patch (gammapy vs ``gpsfast.fit.fast_irfs`` with compiled Sersic models), and
one local fit with the sources outside its fit mask present and frozen
(gammapy) vs cached in a template by ``gpsfast.fit.cache_outer_sources``.
"""
import numpy as np
import pytest
from gammapy.maps import MapAxis, WcsGeom
from gammapy.modeling.models import GeneralizedGaussianSpatialModel as GammapyModel

from gpsfast.models.sersic import GeneralizedGaussianSpatialModel

SOURCES = [
    dict(lon_0="320.4 deg", lat_0="0.2 deg", r_0="0.05 deg", eta=0.2, e=0.0, phi="0 deg"),
    dict(lon_0="318.1 deg", lat_0="-0.6 deg", r_0="0.15 deg", eta=0.5, e=0.5, phi="30 deg"),
    dict(lon_0="322.0 deg", lat_0="1.1 deg", r_0="0.3 deg", eta=0.7, e=0.3, phi="-60 deg"),
    dict(lon_0="316.2 deg", lat_0="0.4 deg", r_0="0.5 deg", eta=1.0, e=0.9, phi="120 deg"),
    dict(lon_0="324.8 deg", lat_0="-2.8 deg", r_0="0.2 deg", eta=0.4, e=0.6, phi="75 deg"),
]


@pytest.fixture(scope="module")
def geom():
    axis = MapAxis.from_energy_bounds("1 TeV", "100 TeV", nbin=8, name="energy_true")
    return WcsGeom.create(
        skydir=(320, 0), frame="galactic", binsz=0.03, width=(10, 6), axes=[axis]
    )


def evaluate_and_integrate(models, geom):
    for model in models:
        model.evaluate_geom(geom)
        model.integrate_geom(geom)


@pytest.mark.parametrize("impl", ["gammapy", "gpsfast"])
def test_sersic_evaluate_integrate(benchmark, geom, impl):
    cls = GammapyModel if impl == "gammapy" else GeneralizedGaussianSpatialModel
    models = [cls(frame="galactic", **pars) for pars in SOURCES]
    benchmark.group = "sersic evaluate+integrate 5 sources 333x200"
    benchmark.extra_info["impl"] = impl
    # warm-up outside the timing: Numba compilation / gammapy's cached coordinates
    evaluate_and_integrate(models, geom)
    benchmark.pedantic(evaluate_and_integrate, args=(models, geom), rounds=15, iterations=1)

    reference = GammapyModel(frame="galactic", **SOURCES[2]).integrate_geom(geom).data
    values = models[2].integrate_geom(geom).data
    np.testing.assert_allclose(values, reference, rtol=1e-4, atol=1e-12 * reference.max())


@pytest.mark.parametrize("impl", ["gammapy", "gpsfast"])
def test_sersic_integrate_image(benchmark, geom, impl):
    """``integrate_geom`` on the image geometry, as gammapy's MapEvaluator calls it."""
    cls = GammapyModel if impl == "gammapy" else GeneralizedGaussianSpatialModel
    models = [cls(frame="galactic", **pars) for pars in SOURCES]
    image = geom.to_image()
    benchmark.group = "sersic integrate_geom image 5 sources"
    benchmark.extra_info["impl"] = impl

    def integrate():
        for model in models:
            model.integrate_geom(image)

    integrate()
    benchmark.pedantic(integrate, rounds=15, iterations=1)
    assert models[0].integrate_geom(image).data.sum() == pytest.approx(1, abs=0.05)


def _sources(models):
    return [
        m.name for m in models
        if getattr(m, "spatial_model", None) is not None and m.spatial_model.tag[0] != "TemplateSpatialModel"
    ]


@pytest.mark.parametrize("impl", ["gammapy", "gpsfast"])
def test_npred_sources_cold(benchmark, postev_gps, impl):
    """Cold ``npred_signal`` of every compact source of the 10 x 6 deg PosTeV patch.

    Cold: fresh evaluators each round (PSF and EDisp kernels looked up for every
    source). gpsfast: the same gammapy call inside `gpsfast.fit.fast_irfs`, with
    the generalized Gaussian sources switched to the compiled class.
    """
    import copy

    from gpsfast.irf import fast_irfs
    from gpsfast.models.sersic import accelerate_models

    dataset = copy.deepcopy(postev_gps)  # the session fixture stays untouched
    models = dataset.models
    if impl == "gpsfast":
        accelerate_models(models)
    names = _sources(models)
    benchmark.group = f"npred cold {len(names)} sources PosTeV 10x6 deg"
    benchmark.extra_info["impl"] = impl

    def setup():
        dataset.models = models

    def npred():
        if impl == "gpsfast":
            with fast_irfs(dataset):
                return dataset.npred_signal(model_names=names)
        return dataset.npred_signal(model_names=names)

    setup()
    npred()  # warm-up: Numba compilation, gammapy's cached geometries
    result = benchmark.pedantic(npred, setup=setup, rounds=3, iterations=1)
    assert result.data.sum() > 0


@pytest.mark.parametrize("impl", ["gammapy", "gpsfast"])
def test_local_fit_outer_sources(benchmark, postev_gps, impl):
    """One local fit (amplitude and position of the brightest source in a 1.5 deg disk).

    gammapy: every other source present and frozen. gpsfast: the sources centred
    outside the fit mask cached in a frozen template (time of that caching in
    ``extra_info``). Each round starts from fresh evaluators.
    """
    import copy
    import time

    from astropy.coordinates import SkyCoord
    import astropy.units as u
    from gammapy.modeling import Fit
    from regions import CircleSkyRegion

    from gpsfast.modeling import cache_outer_sources, frozen, select_models

    region = CircleSkyRegion(SkyCoord(0, 0, unit="deg", frame="galactic"), 1.5 * u.deg)

    def setup():
        dataset = copy.deepcopy(postev_gps)
        dataset.mask_fit = dataset.counts.geom.region_mask([region])
        inner = select_models(dataset.models, region)
        target = max(inner, key=lambda m: m.spectral_model.integral(1 * u.TeV, 100 * u.TeV).value)
        free = [target.spectral_model.amplitude, target.spatial_model.lon_0, target.spatial_model.lat_0]
        if impl == "gpsfast":
            start = time.perf_counter()
            cache_outer_sources([dataset], dataset.models)
            benchmark.extra_info["cache_outer_sources_s"] = time.perf_counter() - start
        return (dataset, free), {}

    def fit(dataset, free):
        with frozen(dataset.models, keep=free):
            return Fit().run([dataset])

    benchmark.group = "local fit, outer sources frozen vs cached, PosTeV 10x6 deg"
    benchmark.extra_info["impl"] = impl
    result = benchmark.pedantic(fit, setup=setup, rounds=2, iterations=1)
    assert result.success
