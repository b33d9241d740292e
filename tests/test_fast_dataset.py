"""FastMapDataset: same npred and Cash statistic as gammapy's MapDataset, same best fit."""
import contextlib
import copy
import pickle

import numpy as np
import pytest
from numpy.testing import assert_allclose
import astropy.units as u
from astropy.coordinates import SkyCoord
from regions import CircleSkyRegion
from gammapy.datasets import Datasets, MapDataset, MapDatasetOnOff
from gammapy.maps import Map
from gammapy.modeling import Fit
from gammapy.modeling.models import (
    DiskSpatialModel,
    ExpCutoffPowerLawSpectralModel,
    FoVBackgroundModel,
    GaussianSpatialModel,
    GeneralizedGaussianSpatialModel,
    LogParabolaSpectralModel,
    Models,
    PointSpatialModel,
    PowerLawSpectralModel,
    SkyModel,
    TemplateNPredModel,
)

from gpsfast.accelerate import accelerated
from gpsfast.errors import InputError
from gpsfast.evaluate import FastDatasets, FastMapDataset, fast_dataset, fast_datasets


@pytest.fixture(scope="module")
def base_dataset(postev_patch):
    datasets, _ = postev_patch()
    dataset = datasets["postev"]
    dataset.models = None
    return dataset


def source(spatial, spectral, name):
    return SkyModel(spatial_model=spatial, spectral_model=spectral, name=name)


def sky_models():
    """Every supported kind of source, and some that run through gammapy's evaluator."""
    log_parabola = dict(amplitude="4e-12 cm-2 s-1 TeV-1", reference="1 TeV", alpha=2.3, beta=0.1)
    power_law = dict(amplitude="2e-12 cm-2 s-1 TeV-1", reference="1 TeV", index=2.4)
    return [
        source(
            GeneralizedGaussianSpatialModel(
                lon_0="0.2 deg", lat_0="0.1 deg", r_0="0.1 deg", eta=0.5, e=0.3, phi="30 deg", frame="galactic"
            ),
            LogParabolaSpectralModel(**log_parabola),
            name="gg",
        ),
        source(
            PointSpatialModel(lon_0="-0.3 deg", lat_0="-0.2 deg", frame="galactic"),
            PowerLawSpectralModel(**power_law),
            name="point",
        ),
        source(
            GaussianSpatialModel(lon_0="-0.1 deg", lat_0="0.25 deg", sigma="0.08 deg", e=0.4, phi="20 deg",
                                 frame="galactic"),
            PowerLawSpectralModel(**power_law),
            name="gauss",
        ),
        source(
            DiskSpatialModel(lon_0="0.45 deg", lat_0="-0.2 deg", r_0="0.12 deg", frame="galactic"),
            # other units than the energy axes': converted as gammapy does
            LogParabolaSpectralModel(amplitude="4e-15 cm-2 s-1 GeV-1", reference="1000 GeV", alpha=2.3, beta=0.1),
            name="disk",
        ),
        # centre outside the patch: leaks in through its tail and the PSF
        source(
            GeneralizedGaussianSpatialModel(
                lon_0="0.9 deg", lat_0="0.0 deg", r_0="0.15 deg", eta=1.0, e=0.9, phi="75 deg", frame="galactic"
            ),
            LogParabolaSpectralModel(**log_parabola),
            name="outside",
        ),
        # gammapy's evaluator: spectrum not compiled
        source(
            PointSpatialModel(lon_0="0.05 deg", lat_0="-0.3 deg", frame="galactic"),
            ExpCutoffPowerLawSpectralModel(amplitude="3e-12 cm-2 s-1 TeV-1", index=2.0, lambda_="0.05 TeV-1"),
            name="cutoff",
        ),
    ]


def make_pair(base_dataset, with_template=False):
    """A gammapy MapDataset and a FastMapDataset on copies of the same inputs and models."""
    dataset = copy.deepcopy(base_dataset)
    models = sky_models()
    background = FoVBackgroundModel(dataset_name=dataset.name)
    background.spectral_model.tilt.frozen = False
    models.append(background)
    if with_template:
        template = Map.from_geom(dataset.counts.geom, data=0.01 * np.ones(dataset.counts.geom.data_shape))
        models.append(TemplateNPredModel(template, name="template", datasets_names=[dataset.name]))
    dataset.models = Models(models)
    dataset.fake(random_state=3)
    fast = fast_dataset(copy.deepcopy(dataset))
    return dataset, fast


def shared_parameters(dataset, fast):
    return list(zip(dataset.models.parameters, fast.models.parameters))


def vary(pairs, rng, scale=0.03):
    """Move every free parameter of both datasets to the same random value."""
    for par, twin in pairs:
        if par.frozen or par.name in ("reference",):
            continue
        step = scale * (abs(par.value) if par.value != 0 else 0.1)
        value = par.value + rng.normal(0, step)
        if par.name in ("r_0", "sigma", "amplitude", "eta"):
            value = abs(value)
        if par.name == "e":
            value = min(abs(value), 0.95)
        if par.name == "eta":
            value = min(max(value, 0.05), 1.0)
        par.value = value
        twin.value = value


def test_fast_dataset_is_a_map_dataset(base_dataset):
    dataset, fast = make_pair(base_dataset)
    assert isinstance(fast, FastMapDataset) and isinstance(fast, MapDataset)
    assert fast.tag == "MapDataset"
    assert fast_dataset(fast) is fast
    with pytest.raises(InputError, match="expected a gammapy MapDataset"):
        fast_dataset(Datasets([dataset]))


@pytest.mark.parametrize("accelerate", [False, True])
def test_stat_sum_same_as_gammapy_for_varied_parameters(base_dataset, accelerate):
    # inside the drop-in mode both run the compiled generalized Gaussian: made there, so
    # that no evaluator keeps a spatial flux integrated by gammapy
    with accelerated() if accelerate else contextlib.nullcontext():
        dataset, fast = make_pair(base_dataset, with_template=True)
    pairs = shared_parameters(dataset, fast)
    for par, twin in pairs:
        if par.name in ("lon_0", "lat_0", "r_0", "amplitude", "alpha", "beta", "index", "sigma", "eta", "e",
                        "norm", "tilt"):
            par.frozen = twin.frozen = False
    rng = np.random.default_rng(1)
    # gammapy integrates the generalized Gaussian itself outside the drop-in mode (1e-4 per pixel)
    rtol = 1e-10 if accelerate else 1e-7
    with accelerated() if accelerate else contextlib.nullcontext():
        for step in range(12):
            desired = dataset.stat_sum()
            actual = fast.stat_sum()
            assert actual == pytest.approx(desired, rel=rtol), step
            vary(pairs, rng)
        # a source moved beyond its evaluation radius: evaluator update (new cutout and kernels)
        for name in ("gg", "point"):
            for model in (dataset.models[name], fast.models[name]):
                model.spatial_model.lon_0.value -= 0.35
        assert fast.stat_sum() == pytest.approx(dataset.stat_sum(), rel=rtol)
        # norm 0: the source vanishes
        for model in (dataset.models["gg"], fast.models["gg"]):
            model.spectral_model.amplitude.value = 0.0
        assert fast.stat_sum() == pytest.approx(dataset.stat_sum(), rel=rtol)


def test_npred_same_as_gammapy(base_dataset):
    with accelerated():
        dataset, fast = make_pair(base_dataset, with_template=True)
        desired = dataset.npred().data
        actual = fast.npred().data
        assert_allclose(actual, desired, rtol=1e-10, atol=1e-12 * desired.max())
        names = ["gg", "cutoff", "template"]
        assert_allclose(
            fast.npred_signal(model_names=names).data, dataset.npred_signal(model_names=names).data,
            rtol=1e-10, atol=1e-12 * desired.max(),
        )
        assert_allclose(
            fast.npred_signal(model_names="disk").data, dataset.npred_signal(model_names="disk").data,
            rtol=1e-10, atol=1e-12 * desired.max(),
        )
        per_model = fast.npred_signal(stack=False)
        assert per_model.geom.axes["models"].nbin == len(dataset.evaluators)
    # outside the drop-in mode gammapy integrates the generalized Gaussians itself
    dataset, fast = make_pair(base_dataset, with_template=True)
    desired = dataset.npred().data
    actual = fast.npred().data
    assert_allclose(actual, desired, rtol=1e-6, atol=1e-6 * desired.max())
    # the sources matter
    background = dataset.npred_background().data
    assert (desired - background).sum() > 0.1 * background.sum()


def test_masks_and_missing_irfs(base_dataset):
    with accelerated():
        dataset, fast = make_pair(base_dataset)
        # partial safe mask and fit mask
        region = CircleSkyRegion(SkyCoord(0.1, 0.0, unit="deg", frame="galactic"), 0.3 * u.deg)
        mask_fit = dataset.counts.geom.region_mask([region])
        for d in (dataset, fast):
            d.mask_fit = mask_fit
            d.mask_safe.data[:3] = False
        assert fast.stat_sum() == pytest.approx(dataset.stat_sum(), rel=1e-10)
        # empty fit mask
        for d in (dataset, fast):
            d.mask_fit = Map.from_geom(mask_fit.geom, data=np.zeros(mask_fit.data.shape, dtype=bool))
        assert fast.stat_sum() == dataset.stat_sum() == 0.0
    # no energy dispersion (diagonal response) and no PSF
    with accelerated():
        dataset, _ = make_pair(base_dataset)
        dataset.edisp = None
        dataset.psf = None
        dataset.models = dataset.models.copy()
        fast = fast_dataset(copy.deepcopy(dataset))
        assert fast.stat_sum() == pytest.approx(dataset.stat_sum(), rel=1e-10)


def test_models_reset_pickle_and_fast_datasets(base_dataset):
    dataset, fast = make_pair(base_dataset)
    reference = dataset.stat_sum()
    assert fast.stat_sum() == pytest.approx(reference, rel=1e-7)
    restored = pickle.loads(pickle.dumps(fast))
    assert type(restored) is FastMapDataset
    assert restored.stat_sum() == pytest.approx(reference, rel=1e-7)
    # new models: new evaluators, new cached pieces
    models = Models([m for m in dataset.models if m.name != "gg"]).copy()
    fast.models = models
    dataset.models = models.copy()
    assert fast.stat_sum() == pytest.approx(dataset.stat_sum(), rel=1e-7)
    # a container with a non-MapDataset member keeps it
    other = MapDatasetOnOff.create(geom=dataset.counts.geom, name="onoff")
    converted = fast_datasets(Datasets([dataset, other]))
    assert type(converted) is FastDatasets
    assert type(converted[0]) is FastMapDataset and converted[1] is other
    assert converted[0].models is dataset.models


def test_fit_same_best_fit(base_dataset):
    dataset, _ = make_pair(base_dataset)
    dataset.models = Models([dataset.models["gg"], dataset.models["point"], dataset.background_model])

    def fit(make):
        d = make(copy.deepcopy(dataset))
        models = d.models
        models.freeze()
        for name in ("amplitude", "alpha", "lon_0", "lat_0", "r_0"):
            models["gg"].parameters[name].frozen = False
        models["point"].spectral_model.amplitude.frozen = False
        models[f"{d.name}-bkg"].spectral_model.norm.frozen = False
        models["gg"].spatial_model.r_0.value = 0.13
        models["point"].spectral_model.amplitude.value = 3e-12
        result = Fit().run([d])
        assert result.success
        return result, d

    reference, expected = fit(lambda d: d)
    result, actual = fit(fast_dataset)
    assert type(actual) is FastMapDataset
    assert result.total_stat == pytest.approx(reference.total_stat, rel=1e-7)
    expected_free = expected.models.parameters.free_parameters
    free = actual.models.parameters.free_parameters
    assert free.names == expected_free.names and len(free) == 7
    for par, ref in zip(free, expected_free):
        assert abs(par.value - ref.value) <= max(1e-4 * abs(ref.value), 0.05 * ref.error), par.name


def test_fast_datasets_stat_sum_with_priors(base_dataset):
    from gammapy.modeling.models import GaussianPrior

    dataset, _ = make_pair(base_dataset)
    datasets = Datasets([dataset])
    fast = fast_datasets(datasets)
    assert type(fast) is FastDatasets
    assert fast.stat_sum() == pytest.approx(datasets.stat_sum(), rel=1e-7)
    # a prior set between calls is seen
    alpha = dataset.models["gg"].spectral_model.alpha
    alpha.prior = GaussianPrior(mu=2.0, sigma=0.1)
    desired = datasets.stat_sum()
    assert fast.stat_sum() == pytest.approx(desired, rel=1e-7)
    assert alpha.prior_stat_sum() > 1
    # a parameter linked between two models (a new Parameter object in one of them) is seen
    linked = dataset.models["disk"].spectral_model
    linked.alpha = alpha
    assert fast.stat_sum() == pytest.approx(datasets.stat_sum(), rel=1e-7)
    assert fast.stat_sum() != pytest.approx(desired, rel=1e-9)


def test_models_evaluated_by_gammapy_share_one_cached_block(base_dataset):
    """The template and the ExpCutoff source (gammapy's evaluators): one full-size block, kept while unchanged."""
    from gpsfast.evaluate.engine import _GAMMAPY_KEY, signal_blocks

    _, fast = make_pair(base_dataset, with_template=True)
    states = fast._fast_states()

    def gammapy_block():
        blocks = signal_blocks(fast, states)
        maps, _, stacked = states[_GAMMAPY_KEY]
        assert len(maps) == 2, "the template and the cutoff source, stacked together"
        assert blocks[-1][0] is stacked and sum(values is stacked for values, _ in blocks) == 1
        return stacked

    def desired():
        total = Map.from_geom(fast.counts.geom, dtype=float)
        total.stack(fast.models["template"].evaluate())
        total.stack(fast.evaluators["cutoff"].compute_npred())
        return total.data

    first = gammapy_block()
    assert gammapy_block() is first, "nothing changed: the stacked block is reused"
    assert_allclose(first, desired(), rtol=1e-6)
    fast.models["template"].spectral_model.norm.value = 1.5
    changed = gammapy_block()
    assert changed is not first
    assert_allclose(changed, desired(), rtol=1e-6)
