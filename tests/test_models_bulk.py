"""Models of big files without the dense covariance: same behaviour as plain gammapy, linear memory."""
import copy
import tracemalloc

import numpy as np
import pytest
import astropy.units as u
from gammapy.datasets import MapDataset
from gammapy.maps import MapAxis, WcsGeom
from gammapy.modeling import Fit
from gammapy.modeling.models import (
    DatasetModels,
    GaussianSpatialModel,
    LogParabolaSpectralModel,
    Models,
    PointSpatialModel,
    PowerLawSpectralModel,
    SkyModel,
)

from gpsfast.errors import InputError
from gpsfast.models import bulk, read_xml
from gpsfast.models.bulk import BlockCovariance, build_models, build_sky_model


def sources(n=5, seed=1):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        spectral = (PowerLawSpectralModel(index=rng.uniform(2, 3)) if i % 2 else
                    LogParabolaSpectralModel(alpha=2.3, beta=rng.uniform(0, 0.3)))
        spatial = (PointSpatialModel(lon_0=f"{i * 0.1} deg", frame="galactic") if i % 3 else
                   GaussianSpatialModel(lon_0=f"{i * 0.1} deg", sigma="0.1 deg", frame="galactic"))
        model = SkyModel(spectral, spatial, name=f"s{i}")
        for par in model.parameters:
            par.error = rng.uniform(0.01, 0.1)
        out.append(model)
    return out


def pair(n=5):
    """The same models as plain gammapy ``Models`` and as `build_models`."""
    models = sources(n)
    return Models(copy.deepcopy(models)), build_models(models)


def spd(n, seed=3):
    a = np.random.default_rng(seed).normal(size=(n, n))
    return a @ a.T + n * np.eye(n)


def test_plain_gammapy_objects():
    plain, lazy = pair()
    assert type(lazy) is Models and isinstance(lazy._covariance, BlockCovariance)
    assert lazy.to_dict() == plain.to_dict()
    assert lazy.names == plain.names and len(lazy.parameters) == len(plain.parameters)


def test_covariance_equals_gammapy():
    plain, lazy = pair()
    np.testing.assert_array_equal(lazy.covariance.data, plain.covariance.data)


def test_correlated_model_block_and_subcovariance_stay_lazy():
    plain, lazy = pair()
    for models in (plain, lazy):
        block = spd(len(models[1].parameters))
        models[1].covariance = block
    sub = [lazy.parameters[i] for i in (0, 5, 6, 7, 12, 20)]
    sub_plain = [plain.parameters[i] for i in (0, 5, 6, 7, 12, 20)]
    got = lazy.covariance.get_subcovariance(sub).data
    assert not lazy._covariance.is_dense
    np.testing.assert_array_equal(got, plain.covariance.get_subcovariance(sub_plain).data)
    np.testing.assert_array_equal(lazy.covariance.data, plain.covariance.data)
    assert lazy._covariance.is_dense


def test_full_covariance_set_and_read_back():
    plain, lazy = pair()
    full = spd(len(plain.parameters))
    plain.covariance = full
    lazy.covariance = full
    for a, b in zip(plain, lazy):
        np.testing.assert_array_equal(a.covariance.data, b.covariance.data)
    np.testing.assert_array_equal(lazy.covariance.data, plain.covariance.data)
    assert [p.error for p in lazy.parameters] == [p.error for p in plain.parameters]


def test_overlapping_blocks_as_gammapy():
    from gammapy.modeling import Parameters
    from gammapy.modeling.covariance import Covariance

    plain, lazy = pair(3)
    for models in (plain, lazy):
        pars = models.parameters
        models.covariance  # per-model blocks
        cov = models._covariance
        cov.set_subcovariance(Covariance(Parameters([pars[1], pars[2]]), np.array([[4.0, 1.0], [1.0, 3.0]])))
        cov.set_subcovariance(Covariance(Parameters([pars[2], pars[9]]), np.array([[2.0, 0.5], [0.5, 5.0]])))
    np.testing.assert_array_equal(lazy._covariance.data, plain._covariance.data)


def test_dense_matrix_over_the_limit_is_refused(monkeypatch):
    _, lazy = pair()
    monkeypatch.setattr(bulk, "MAX_DENSE_COVARIANCE_BYTES", 1000)
    with pytest.raises(InputError, match=r"covariance of \d+ parameters needs .* GiB as one dense matrix"):
        lazy.covariance.data
    with pytest.raises(InputError, match="dense matrix"):
        DatasetModels(lazy)
    # a model's own covariance is still available
    assert lazy[0].covariance.data.shape == (len(lazy[0].parameters),) * 2


def _dataset(models):
    axis = MapAxis.from_energy_bounds("1 TeV", "10 TeV", nbin=3, name="energy")
    geom = WcsGeom.create(skydir=(0.2, 0), frame="galactic", binsz=0.05, width=0.4, axes=[axis])
    dataset = MapDataset.create(geom, name="d")
    dataset.exposure.data += 1e12
    dataset.background.data += 0.2
    dataset.mask_safe.data[...] = True
    dataset.psf = dataset.edisp = None
    dataset.models = models
    dataset.counts = dataset.npred()
    return dataset


def test_fit_same_as_plain_gammapy():
    results = []
    for models in pair(2):
        for model in models:
            model.spectral_model.parameters["amplitude"].value = 3e-12
        dataset = _dataset(models)
        for model in models:
            model.spectral_model.parameters["amplitude"].value = 2e-12
            for par in model.parameters:
                par.frozen = par.name != "amplitude"
        result = Fit().run([dataset])
        assert result.success
        results.append(([p.value for p in dataset.models.parameters], dataset.models.covariance.data))
    np.testing.assert_allclose(results[0][0], results[1][0], rtol=1e-10)
    np.testing.assert_allclose(results[0][1], results[1][1], rtol=1e-8)


def test_build_sky_model_unit_check_as_gammapy():
    from gammapy.modeling.models import PowerLawNormSpectralModel

    relative = PowerLawNormSpectralModel()
    with pytest.raises(ValueError, match="not equivalent"):
        SkyModel(relative, PointSpatialModel())
    with pytest.raises(ValueError, match="not equivalent"):
        build_sky_model(relative, PointSpatialModel())
    model = build_sky_model(PowerLawSpectralModel(), PointSpatialModel(), name="x")
    assert type(model) is SkyModel and model.name == "x" and "_check_unit" not in model.__dict__
    assert model.parameters.names == SkyModel(PowerLawSpectralModel(), PointSpatialModel()).parameters.names


def _xml(n):
    head = '<?xml version="1.0"?>\n<source_library title="t">\n'
    body = "".join(
        f'<source name="S{i}" type="ExtendedSource"><spectrum type="PowerLaw">'
        '<parameter name="Prefactor" value="1" scale="1e-17" min="1e-3" max="1e3" free="1"/>'
        '<parameter name="Index" value="2.3" scale="-1" min="0" max="5" free="1"/>'
        '<parameter name="PivotEnergy" value="1" scale="1e6" free="0"/></spectrum>'
        '<spatialModel type="RadialGaussian"><parameter name="GLON" value="{0}" scale="1" free="1"/>'
        '<parameter name="GLAT" value="0.1" scale="1" free="1"/>'
        '<parameter name="Sigma" value="0.2" scale="1" min="0.01" max="10" free="1"/></spatialModel></source>\n'
        .format(i * 0.01) for i in range(n))
    return head + body + "</source_library>\n"


def _peak_bytes(path):
    tracemalloc.start()
    models = read_xml(path)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert not models._covariance.is_dense
    return peak


def test_read_memory_linear_in_sources(tmp_path):
    small, big = tmp_path / "small.xml", tmp_path / "big.xml"
    small.write_text(_xml(100))
    big.write_text(_xml(400))
    read_xml(small)  # warm caches (unit parsing, imports)
    peak_small, peak_big = _peak_bytes(small), _peak_bytes(big)
    # quadratic (gammapy's dense matrix) would be 16x; 7 parameters a source would need 6.3 MB at 400 sources
    assert peak_big / peak_small < 5.0
    assert peak_big / 400 < 100e3


def test_build_component_uses_the_given_parameters_only():
    from gammapy.modeling import Parameter

    from gpsfast.models.bulk import build_component

    given = dict(amplitude=Parameter("amplitude", 3e-12, unit="cm-2 s-1 TeV-1"), index=Parameter("index", 2.7),
                 reference=Parameter("reference", 1.0, unit="TeV", frozen=True))
    model = build_component(PowerLawSpectralModel, **given)
    assert [p is given[p.name] for p in model.parameters] == [True] * 3
    assert "default_parameters" not in model.__dict__
    defaults = PowerLawSpectralModel.default_parameters
    assert defaults["index"].value == 2.0 and all(p is not q for p, q in zip(model.parameters, defaults))
    # a parameter not given: gammapy's own constructor (a copy of the class default)
    partial = build_component(PowerLawSpectralModel, index=Parameter("index", 2.1))
    assert partial.amplitude is not defaults["amplitude"] and partial.amplitude.value == defaults["amplitude"].value
    other = build_component(PowerLawSpectralModel, **{k: v.copy() for k, v in given.items()})
    other.index.value = 1.5
    assert model.index.value == 2.7


def test_copy_and_pickle_keep_a_working_covariance(tmp_path):
    import pickle

    path = tmp_path / "m.xml"
    path.write_text(_xml(3))
    models = read_xml(path)
    models.covariance.get_subcovariance(models[0].parameters)  # builds the position index
    for other in (copy.deepcopy(models), pickle.loads(pickle.dumps(models))):
        sub = other.covariance.get_subcovariance(other[1].parameters).data
        np.testing.assert_array_equal(sub, models.covariance.get_subcovariance(models[1].parameters).data)
        np.testing.assert_array_equal(other.covariance.data, Models(list(copy.deepcopy(other))).covariance.data)
