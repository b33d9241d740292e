"""Drop-in mode (`gpsfast.accelerate`): plain gammapy code, same results, gammapy restored.

The gammapy snippets here are written as a user would write them, with the
model classes imported from ``gammapy.modeling.models`` at the top of the file:
nothing in them refers to gpsfast except the ``accelerated()`` block.
"""
import contextvars
import copy
import functools
import importlib
import os
import threading
import time

import numpy as np
import astropy.units as u
from astropy.coordinates import SkyCoord
import pytest
from gammapy.datasets import Datasets, MapDataset
from gammapy.irf import EDispKernelMap, PSFMap
from gammapy.maps import Map, MapAxis, WcsGeom, WcsNDMap
from gammapy.modeling import Fit
from gammapy.modeling import models as gammapy_models
from gammapy.modeling.models import (
    SPATIAL_MODEL_REGISTRY,
    GeneralizedGaussianSpatialModel,
    LogParabolaSpectralModel,
    Models,
    SkyModel,
)

from gpsfast.accelerate import accelerate, accelerated, deaccelerate, is_accelerated
from gpsfast.evaluate.source import SourceNpred
from gpsfast.groups import fit_groups, make_groups
from gpsfast.irf import FastEDispKernelMap, FastPSFMap, convolve_psf
from gpsfast.models.sersic import GeneralizedGaussianSpatialModel as CompiledModel
from gpsfast.models.sersic import accelerate_models
from gpsfast.pipeline.modelling import accelerated_fit

# the module of the PSF convolution (spied on below)
convolve_module = importlib.import_module("gpsfast.irf.convolve")

PATCHED_CLASSES = (
    GeneralizedGaussianSpatialModel, PSFMap, EDispKernelMap, WcsNDMap, WcsGeom, SkyModel, MapDataset,
)

SOURCES = [
    dict(lon_0="0.2 deg", lat_0="0.1 deg", r_0="0.1 deg", eta=0.5, e=0.3, phi="30 deg"),
    dict(lon_0="-0.3 deg", lat_0="-0.2 deg", r_0="0.2 deg", eta=0.8, e=0.6, phi="-40 deg"),
    dict(lon_0="0.0 deg", lat_0="0.25 deg", r_0="0.05 deg", eta=0.3, e=0.0, phi="0 deg"),
    # centre outside the 1.5 x 1 deg patch: leaks in through its tail and the PSF
    dict(lon_0="0.9 deg", lat_0="0.0 deg", r_0="0.15 deg", eta=1.0, e=0.9, phi="75 deg"),
]


@pytest.fixture(scope="module")
def base_dataset(postev_patch):
    datasets, _ = postev_patch()
    dataset = datasets["postev"]
    dataset.models = Models([dataset.background_model])
    return dataset


def gammapy_sources():
    """Sources as a plain gammapy script builds them."""
    models = []
    for idx, pars in enumerate(SOURCES):
        spatial = GeneralizedGaussianSpatialModel(frame="galactic", **pars)
        spectral = LogParabolaSpectralModel(
            amplitude="4e-12 cm-2 s-1 TeV-1", reference="1 TeV", alpha=2.3, beta=0.1
        )
        models.append(SkyModel(spectral_model=spectral, spatial_model=spatial, name=f"src-{idx}"))
    return models


def dataset_with_sources(base_dataset):
    dataset = copy.deepcopy(base_dataset)
    dataset.models = Models([*gammapy_sources(), dataset.background_model])
    return dataset


def snapshot():
    """gammapy's state touched by the mode: class attributes, names, registry."""
    return {
        "classes": {cls: dict(vars(cls)) for cls in PATCHED_CLASSES},
        "name": gammapy_models.GeneralizedGaussianSpatialModel,
        "spatial_name": gammapy_models.spatial.GeneralizedGaussianSpatialModel,
        "registry": list(SPATIAL_MODEL_REGISTRY),
    }


def assert_same_state(before, after):
    assert after["name"] is before["name"] is GeneralizedGaussianSpatialModel
    assert after["spatial_name"] is before["spatial_name"]
    assert len(after["registry"]) == len(before["registry"])
    assert all(a is b for a, b in zip(after["registry"], before["registry"]))
    for cls, attributes in before["classes"].items():
        now = after["classes"][cls]
        assert list(now) == list(attributes), cls.__name__
        assert all(now[name] is value for name, value in attributes.items()), cls.__name__


@pytest.fixture
def fast_calls(monkeypatch):
    """Counts the calls of gpsfast's fast methods (spied on their classes)."""
    counts = {}

    def spy(cls, name):
        original = getattr(cls, name)

        def method(self, *args, **kwargs):
            counts[name] = counts.get(name, 0) + 1
            return original(self, *args, **kwargs)

        monkeypatch.setattr(cls, name, method)

    spy(CompiledModel, "integrate_geom")
    spy(FastPSFMap, "get_psf_kernel")
    spy(FastEDispKernelMap, "get_edisp_kernel")
    original = convolve_module.convolve_planes

    def convolve(*args):
        counts["convolve_planes"] = counts.get("convolve_planes", 0) + 1
        return original(*args)

    monkeypatch.setattr(convolve_module, "convolve_planes", convolve)
    return counts


def test_npred_same_inside_and_outside(base_dataset, fast_calls):
    dataset = dataset_with_sources(base_dataset)
    reference = dataset.npred().data
    assert fast_calls == {}

    dataset = dataset_with_sources(base_dataset)
    with accelerated():
        assert is_accelerated()
        npred = dataset.npred().data
    assert not is_accelerated()

    n_sources = len(SOURCES)
    assert fast_calls["integrate_geom"] >= n_sources
    assert fast_calls["get_psf_kernel"] == n_sources
    assert fast_calls["get_edisp_kernel"] == n_sources
    assert fast_calls["convolve_planes"] >= n_sources - 1  # src-3 may not contribute
    assert npred.sum() == pytest.approx(reference.sum(), rel=1e-6)
    np.testing.assert_allclose(npred, reference, rtol=1e-6, atol=1e-6 * reference.max())
    # the sources contribute a meaningful part of the prediction
    background = dataset.npred_background().data
    assert (reference - background).sum() > 0.1 * background.sum()


def test_models_built_inside_are_gammapy_models(base_dataset):
    with accelerated():
        sources = gammapy_sources()
    assert all(type(model.spatial_model) is GeneralizedGaussianSpatialModel for model in sources)


def test_evaluate_same_and_invalid_parameters():
    lon = np.linspace(359.5, 360.5, 41) * u.deg
    lat = np.linspace(-0.4, 0.4, 41)[:, None] * u.deg
    args = dict(lon_0=0.05 * u.deg, lat_0=0.02 * u.deg, r_0=0.2 * u.deg, eta=0.4, e=0.5, phi=20 * u.deg)
    reference = GeneralizedGaussianSpatialModel.evaluate(lon, lat, **args)
    invalid = dict(args, r_0=0 * u.deg)
    with np.errstate(all="ignore"):
        reference_invalid = GeneralizedGaussianSpatialModel.evaluate(lon, lat, **invalid)
        with accelerated():
            values = GeneralizedGaussianSpatialModel.evaluate(lon, lat, **args)
            values_invalid = GeneralizedGaussianSpatialModel.evaluate(lon, lat, **invalid)
    assert values.unit == reference.unit
    np.testing.assert_allclose(values.value, reference.value, rtol=1e-6)
    # gammapy's own NaN / inf for r_0 = 0 (the fallback runs gammapy, no recursion)
    np.testing.assert_array_equal(values_invalid.value, reference_invalid.value)


def test_fit_same_best_fit(base_dataset):
    truth = dataset_with_sources(base_dataset)
    truth.fake(random_state=5)

    def fit():
        dataset = copy.deepcopy(truth)
        models = dataset.models
        models.freeze()
        for name in ("amplitude", "lon_0", "lat_0", "r_0"):
            models["src-0"].parameters[name].frozen = False
        models["src-1"].spectral_model.amplitude.frozen = False
        models["postev-bkg"].spectral_model.norm.frozen = False
        models["src-0"].spatial_model.r_0.value = 0.13
        models["src-1"].spectral_model.amplitude.value = 3e-12
        result = Fit().run([dataset])
        assert result.success
        return result, dataset

    reference, expected = fit()
    with accelerated():
        result, dataset = fit()
        # the likelihood itself, at the same parameter values
        for par, ref in zip(dataset.models.parameters, expected.models.parameters):
            par.value = ref.value
        stat_at_reference = dataset.stat_sum()
    assert stat_at_reference == pytest.approx(expected.stat_sum(), rel=1e-9)
    assert result.total_stat == pytest.approx(reference.total_stat, rel=1e-7)
    parameters = dataset.models.parameters.free_parameters
    assert parameters.names == expected.models.parameters.free_parameters.names
    assert len(parameters) == 6
    for par, ref in zip(parameters, expected.models.parameters.free_parameters):
        # Minuit stops within ~0.01 sigma of the minimum: both runs end there
        assert abs(par.value - ref.value) <= max(1e-4 * abs(ref.value), 0.02 * ref.error), par.name


def test_state_restored(base_dataset):
    before = snapshot()
    with accelerated():
        inside = snapshot()
        dataset_with_sources(base_dataset).npred()
    assert_same_state(before, snapshot())
    patched = [
        name
        for cls in PATCHED_CLASSES
        for name, value in inside["classes"][cls].items()
        if before["classes"][cls].get(name) is not value
    ]
    assert sorted(patched) == [
        "contributes", "convolve", "cutout", "cutout_slices", "evaluate", "evaluate_geom",
        "get_edisp_kernel", "get_psf_kernel", "integrate_geom", "npred_signal", "stat_sum",
    ]
    # inherited methods were removed again, not left as copies
    assert "integrate_geom" not in vars(GeneralizedGaussianSpatialModel)


def test_state_restored_after_exception():
    before = snapshot()
    with pytest.raises(KeyError, match="boom"):
        with accelerated():
            raise KeyError("boom")
    assert not is_accelerated()
    assert_same_state(before, snapshot())


def test_blocks_in_a_loop_leave_nothing_behind():
    from gpsfast.accelerate import patches

    before = snapshot()
    for _ in range(20):
        with accelerated():
            pass
    assert_same_state(before, snapshot())
    assert patches._GATED == {} and patches.installed() == []


def test_nesting_and_explicit_pair():
    before = snapshot()
    with accelerated():
        patched = snapshot()
        with accelerated():
            accelerate()
            deaccelerate()
        assert is_accelerated()
        assert_same_state(patched, snapshot())
    assert not is_accelerated()
    assert_same_state(before, snapshot())

    accelerate()
    try:
        assert is_accelerated()
    finally:
        deaccelerate()
    assert_same_state(before, snapshot())
    with pytest.raises(RuntimeError, match="without a matching"):
        deaccelerate()


def test_threads_entering_the_mode_each_have_it():
    before = snapshot()
    errors = []

    def work():
        try:
            for _ in range(50):
                assert not is_accelerated()
                with accelerated():
                    # another thread leaving its block must not switch the mode off here
                    assert is_accelerated()
                    assert "integrate_geom" in vars(GeneralizedGaussianSpatialModel)
        except Exception as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert not is_accelerated()
    assert_same_state(before, snapshot())


def test_other_threads_run_plain_gammapy(base_dataset, fast_calls):
    """A thread that never entered the mode runs gammapy's code while another thread is inside."""
    reference = dataset_with_sources(base_dataset).npred().data
    entered, done = threading.Event(), threading.Event()
    outcome = {}

    def inside():
        with accelerated():
            entered.set()
            done.wait(timeout=120)

    holder = threading.Thread(target=inside)
    holder.start()
    try:
        assert entered.wait(timeout=60)
        assert "npred_signal" in vars(MapDataset)  # the gated methods are in place
        assert not is_accelerated()
        outcome["npred"] = dataset_with_sources(base_dataset).npred().data
    finally:
        done.set()
        holder.join()
    assert fast_calls == {}, "the fast paths ran in a thread outside the mode"
    np.testing.assert_array_equal(outcome["npred"], reference)
    with accelerated():
        # a context copied inside the mode starts in it
        assert contextvars.copy_context().run(is_accelerated)
        dataset_with_sources(base_dataset).npred()
    assert fast_calls["get_psf_kernel"] == len(SOURCES)


class SwitchingDict(dict):
    """A cache dictionary that lets the other threads run right after each insertion."""

    def __setitem__(self, key, value):
        super().__setitem__(key, value)
        time.sleep(1e-4)


def kernel_reference(psf, geom, positions):
    return [psf.get_psf_kernel(geom, position=p, max_radius="0.4 deg").psf_kernel_map.data for p in positions]


def test_psf_kernel_and_cutout_caches_are_thread_safe(base_dataset, monkeypatch):
    """Threads filling and clearing the kernel-grid, twin and cutout caches at once get gammapy's results."""
    from gpsfast.accelerate import geometry
    from gpsfast.irf import psf as psf_module

    psf = copy.deepcopy(base_dataset.psf)
    geom = base_dataset.exposure.geom
    parent = base_dataset.counts.geom
    rng = np.random.default_rng(5)
    positions = [SkyCoord(lon, lat, unit="deg", frame="galactic")
                 for lon, lat in zip(rng.uniform(-0.6, 0.6, 6), rng.uniform(-0.4, 0.4, 6))]
    geoms = [geom, geom.upsample(2)]
    kernels = [kernel_reference(psf, g, positions) for g in geoms]
    cutouts = [parent.cutout(p, "0.3 deg") for p in positions]
    slices = [c.cutout_slices(parent) for c in cutouts]
    # caches of two entries, which hand over to the other threads after every insertion:
    # every thread keeps clearing what the others have just filled
    monkeypatch.setattr(psf_module, "_MAX_KERNEL_GRIDS", 2)
    monkeypatch.setattr(psf_module, "_KERNEL_GRIDS", SwitchingDict())
    monkeypatch.setattr(geometry, "_MAX_SLICES", 2)
    monkeypatch.setattr(geometry, "_SLICES", SwitchingDict())
    barrier = threading.Barrier(4)
    errors = []

    def work(seed):
        order = np.random.default_rng(seed).permutation(len(positions))
        try:
            barrier.wait(timeout=60)
            with accelerated():
                for _ in range(3):
                    for g, expected in zip(geoms, kernels):
                        for k in order:
                            kernel = psf.get_psf_kernel(g, position=positions[k], max_radius="0.4 deg")
                            np.testing.assert_allclose(kernel.psf_kernel_map.data, expected[k], rtol=1e-6,
                                                       atol=1e-9)
                    for k in order:
                        assert cutouts[k].cutout_slices(parent) == slices[k]
        except Exception as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=work, args=(seed,)) for seed in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []


@pytest.mark.parametrize("where", ["outside", "inside"])
def test_other_patchers_are_not_clobbered(base_dataset, monkeypatch, where):
    """pytest's monkeypatch applied before or inside the block keeps its attribute; undoing it leaves gammapy."""
    before = snapshot()
    original = PSFMap.get_psf_kernel
    calls = []

    def spy(self, *args, **kwargs):
        calls.append(1)
        return original(self, *args, **kwargs)

    psf = copy.deepcopy(base_dataset.psf)
    geom = base_dataset.exposure.geom
    position = geom.center_skydir
    reference = psf.get_psf_kernel(geom, position=position).psf_kernel_map.data
    if where == "outside":
        monkeypatch.setattr(PSFMap, "get_psf_kernel", spy)
    with accelerated():
        if where == "inside":
            monkeypatch.setattr(PSFMap, "get_psf_kernel", spy)
        psf.get_psf_kernel(geom, position=position)
    assert vars(PSFMap)["get_psf_kernel"] is spy, "the mode clobbered another patcher's attribute on exit"
    assert "integrate_geom" not in vars(GeneralizedGaussianSpatialModel)  # the mode's own attributes are gone
    n_calls = len(calls)
    psf.get_psf_kernel(geom, position=position)
    assert len(calls) == n_calls + 1
    monkeypatch.undo()
    # plain gammapy again (a gated method left by the undo runs gammapy's code outside the mode)
    np.testing.assert_array_equal(psf.get_psf_kernel(geom, position=position).psf_kernel_map.data, reference)
    with accelerated():
        pass
    assert_same_state(before, snapshot())


def test_yaml_written_inside_reads_in_plain_gammapy(base_dataset, tmp_path):
    dataset = dataset_with_sources(base_dataset)
    path = tmp_path / "models.yaml"
    with accelerated():
        dataset.models.write(path)
    models = Models.read(path)
    assert [m.name for m in models] == [m.name for m in dataset.models]
    for source in models[: len(SOURCES)]:
        assert type(source.spatial_model) is GeneralizedGaussianSpatialModel
    for read, written in zip(models.parameters, dataset.models.parameters):
        assert read.name == written.name
        assert read.value == pytest.approx(written.value, rel=1e-12)


def test_subclass_keeps_its_own_methods(base_dataset):
    class Truncated(GeneralizedGaussianSpatialModel):
        """A user's subclass with its own formula: never switched."""

        tag = ["TruncatedTestModel"]
        lon_0, lat_0, r_0, eta, e, phi = (
            copy.deepcopy(par) for par in GeneralizedGaussianSpatialModel.default_parameters
        )

        def integrate_geom(self, geom, oversampling_factor=None):
            result = super().integrate_geom(geom, oversampling_factor=oversampling_factor)
            result.data[result.data < 1e-3 * result.data.max()] = 0
            return result

    model = Truncated(frame="galactic", **SOURCES[0])
    geom = base_dataset.counts.geom.to_image()
    reference = model.integrate_geom(geom).data
    with accelerated():
        values = model.integrate_geom(geom).data
    np.testing.assert_allclose(values, reference, rtol=1e-4, atol=1e-9)
    assert (values == 0).sum() == (reference == 0).sum() > 0


def test_twins_follow_replaced_parameters_and_irf_data(base_dataset):
    geom = base_dataset.counts.geom.to_image()
    model = GeneralizedGaussianSpatialModel(frame="galactic", **SOURCES[0])
    psf = copy.deepcopy(base_dataset.psf)
    position = model.position
    kernel_geom = base_dataset.exposure.geom
    with accelerated():
        first = model.integrate_geom(geom).data
        model.r_0.value = 0.2  # same Parameter object
        wider = model.integrate_geom(geom).data
        model.lon_0 = copy.deepcopy(model.lon_0)  # new Parameter object
        model.lon_0.value = 0.1
        moved = model.integrate_geom(geom).data
        before = psf.get_psf_kernel(kernel_geom, position=position).psf_kernel_map.data
        psf.psf_map.data = psf.psf_map.data**2  # replaced data array: seen
        kernel = psf.get_psf_kernel(kernel_geom, position=position).psf_kernel_map.data
    expected = psf.get_psf_kernel(kernel_geom, position=position).psf_kernel_map.data
    np.testing.assert_allclose(kernel, expected, rtol=1e-6, atol=1e-9)
    assert not np.allclose(kernel, before, rtol=1e-3)
    np.testing.assert_allclose(moved, model.integrate_geom(geom).data, rtol=1e-4, atol=1e-12)
    model.r_0.value, model.lon_0.value = 0.2, 0.2
    np.testing.assert_allclose(wider, model.integrate_geom(geom).data, rtol=1e-4, atol=1e-12)
    assert not np.allclose(first, wider)
    assert not np.allclose(moved, wider)


@pytest.mark.parametrize("kind", ["image", "cube64", "cube32"])
def test_psf_convolution_same_as_gammapy(base_dataset, kind):
    geom = base_dataset.exposure.geom
    position = geom.center_skydir
    kernel = base_dataset.psf.get_psf_kernel(geom, position=position, max_radius="0.3 deg")
    cutout = geom.cutout(position, "0.9 deg", odd_npix=True)
    target = cutout.to_image() if kind == "image" else cutout
    rng = np.random.default_rng(3)
    data = rng.random(target.data_shape)
    data[..., 0, :] = 0  # an empty edge row
    sky_map = Map.from_geom(target, data=data.astype(np.float32 if kind == "cube32" else float))
    reference = sky_map.convolve(kernel)
    with accelerated():
        convolved = sky_map.convolve(kernel)
        assert convolve_psf(sky_map, kernel) is not None  # the fast path ran
        # a plain array kernel is left to gammapy
        smoothed = sky_map.convolve(np.ones((3, 3)) / 9)
    assert convolved.geom == reference.geom
    assert convolved.data.dtype == reference.data.dtype == np.float32
    np.testing.assert_allclose(convolved.data, reference.data, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(smoothed.data, sky_map.convolve(np.ones((3, 3)) / 9).data)


def test_psf_convolution_single_energy_bin(base_dataset):
    geom = base_dataset.exposure.geom.slice_by_idx({"energy_true": slice(3, 4)})
    position = geom.center_skydir
    psf = base_dataset.psf.slice_by_idx({"energy_true": slice(3, 4)})
    kernel = psf.get_psf_kernel(geom, position=position, max_radius="0.3 deg")
    sky_map = Map.from_geom(geom.cutout(position, "0.7 deg"), data=1.0)
    reference = sky_map.convolve(kernel).data
    with accelerated():
        convolved = sky_map.convolve(kernel).data
    assert convolved.shape == reference.shape
    np.testing.assert_allclose(convolved, reference, rtol=1e-6, atol=1e-7)


def test_single_bin_irf_maps_same_kernels():
    energy_true = MapAxis.from_energy_bounds("1 TeV", "10 TeV", nbin=3, name="energy_true")
    energy = MapAxis.from_energy_bounds("1 TeV", "10 TeV", nbin=2, name="energy")
    psf = PSFMap.from_gauss(energy_true, sigma=0.1 * u.deg)  # one all-sky spatial bin
    edisp = EDispKernelMap.from_gauss(energy, energy_true, sigma=0.2, bias=0.05)
    geom = WcsGeom.create(skydir=(10, 1), binsz=0.02, width=1, axes=[energy_true], frame="galactic")
    position = geom.center_skydir
    kernel = psf.get_psf_kernel(geom, position=position).psf_kernel_map.data
    matrix = edisp.get_edisp_kernel(position=position, energy_axis=energy).data
    with accelerated():
        fast_kernel = psf.get_psf_kernel(geom, position=position).psf_kernel_map.data
        fast_matrix = edisp.get_edisp_kernel(position=position, energy_axis=energy).data
    np.testing.assert_allclose(fast_kernel, kernel, rtol=1e-6, atol=1e-9)
    np.testing.assert_array_equal(fast_matrix, matrix)


def test_cutout_slices_and_stack_same_as_gammapy(base_dataset):
    parent = base_dataset.counts.geom
    corner = parent.pix_to_coord((0, 0, 0))
    positions = [parent.center_skydir, SkyCoord(corner[0], corner[1], frame="galactic")]
    cutouts = [parent.cutout(position, width) for position in positions for width in ("0.3 deg", "0.51 deg")]
    modes = ("partial", "trim", "strict")

    def slices():
        result = []
        for cutout in cutouts:
            for mode in modes:
                try:
                    result.append(cutout.cutout_slices(parent, mode=mode))
                except Exception as error:  # gammapy's own error for "strict" at the edge
                    result.append(type(error))
        return result

    def stacked():
        total = Map.from_geom(parent)
        for idx, cutout in enumerate(cutouts):
            total.stack(Map.from_geom(cutout, data=idx + 1.0))
        return total.data

    reference, reference_map = slices(), stacked()
    with accelerated():
        first, second, fast_map = slices(), slices(), stacked()
    assert first == second == reference
    assert len({str(s) for s in reference}) == len(cutouts)  # no two cutouts share slices
    np.testing.assert_array_equal(fast_map, reference_map)


@pytest.mark.parametrize(
    "geom",
    [
        WcsGeom.create(skydir=(0, 0), binsz=0.03, width=(4, 3), frame="galactic",
                       axes=[MapAxis.from_energy_bounds("1 TeV", "10 TeV", nbin=2)]),
        WcsGeom.create(skydir=(83.6, 22.0), binsz=0.02, width=(3, 2), frame="icrs", proj="TAN"),
        WcsGeom.create(skydir=(10, 80), binsz=0.1, width=(20, 10), frame="galactic", proj="AIT"),
    ],
)
def test_cutouts_and_slices_same_as_gammapy(geom):
    """WcsGeom.cutout ("trim"), cutout_slices (all modes), also off the map and across its edges."""
    rng = np.random.default_rng(2)
    centre = geom.center_skydir
    cases = [
        (
            SkyCoord(centre.data.lon.deg + rng.uniform(-3, 3), centre.data.lat.deg + rng.uniform(-2.5, 2.5),
                     unit="deg", frame=geom.frame),
            rng.uniform(0.01, 2.5) * u.deg,
            bool(rng.integers(2)),
        )
        for _ in range(60)
    ]
    # a position in another frame: gammapy's own path
    cases.append((SkyCoord(266.4, -28.9, unit="deg", frame="icrs"), 1 * u.deg, False))

    def run():
        results = []
        for position, width, odd in cases:
            try:
                cutout = geom.cutout(position, width, odd_npix=odd)
            except Exception as error:  # NoOverlapError off the map, as gammapy
                results.append(type(error).__name__)
                continue
            row = [cutout.data_shape, tuple(cutout.wcs.wcs.crpix), cutout.wcs.array_shape]
            for mode in ("trim", "partial", "strict"):
                try:
                    slices = cutout.cutout_slices(geom, mode=mode)
                    row.append((slices["parent-slices"], slices["cutout-slices"]))
                except Exception as error:
                    row.append(type(error).__name__)
            results.append(row)
        return results

    desired = run()
    with accelerated():
        actual = run()
    assert actual == desired
    assert sum(isinstance(row, str) for row in desired) > 0  # some cases are off the map


def test_contributes_same_as_gammapy(base_dataset):
    mask = base_dataset.mask_image.copy()
    mask.data[:, :10] = False
    rng = np.random.default_rng(4)
    models = []
    for _ in range(40):
        spatial = GeneralizedGaussianSpatialModel(
            lon_0=rng.uniform(-1.5, 1.5) * u.deg, lat_0=rng.uniform(-1.2, 1.2) * u.deg,
            r_0=rng.uniform(0.02, 0.3) * u.deg, eta=0.5, frame="galactic",
        )
        models.append(SkyModel(spatial_model=spatial, spectral_model=LogParabolaSpectralModel(), name=f"m{_}"))
    margins = ["0 deg", "0.3 deg"]
    desired = [model.contributes(mask, margin=margin) for model in models for margin in margins]
    with accelerated():
        actual = [model.contributes(mask, margin=margin) for model in models for margin in margins]
    assert actual == desired
    assert 0 < sum(desired) < len(desired)


def compiled_paths_fit(datasets, optimize_opts=None, parent_pid=None):
    """The pipeline's group fit function, checking where it runs that it took the compiled paths."""
    counts = {"npred": 0, "sersic": 0}
    compute, integrate = SourceNpred.compute, CompiledModel.integrate_geom

    def counting_compute(self, *args, **kwargs):
        counts["npred"] += 1
        return compute(self, *args, **kwargs)

    def counting_integrate(self, *args, **kwargs):
        counts["sersic"] += 1
        return integrate(self, *args, **kwargs)

    SourceNpred.compute, CompiledModel.integrate_geom = counting_compute, counting_integrate
    try:
        result = accelerated_fit(datasets, optimize_opts)
    finally:
        SourceNpred.compute, CompiledModel.integrate_geom = compute, integrate
    if os.getpid() == parent_pid:
        raise RuntimeError("the group fit ran in the parent process")
    spatial = [type(m.spatial_model) for m in datasets.models if m.name.startswith("src-")]
    if not spatial or any(cls is not CompiledModel for cls in spatial):
        raise RuntimeError(f"the sources did not travel as compiled models: {spatial}")
    if not (counts["npred"] and counts["sersic"]):
        raise RuntimeError(f"the compiled likelihood paths did not run in the worker: {counts}")
    return result


def test_group_fits_in_worker_processes_use_the_compiled_paths(base_dataset):
    """fit_groups with two loky workers: the pipeline's fit function runs the compiled paths there."""
    dataset = dataset_with_sources(base_dataset)
    dataset.models = Models([*gammapy_sources()[:2], dataset.background_model])
    dataset.fake(random_state=2)
    models = dataset.models
    models.freeze()
    for source in models[:2]:
        source.spectral_model.amplitude.frozen = False
        source.spectral_model.amplitude.value *= 1.3
    assert accelerate_models(models) == 2  # as the pipeline does before its fits
    groups = make_groups(models[:2])
    assert len(groups) == 2
    table = fit_groups(Datasets([dataset]), models, groups=groups, n_jobs=2, release=False,
                       fit_function=functools.partial(compiled_paths_fit, parent_pid=os.getpid()))
    assert len(table) == 2
    assert table["success"].all(), list(table["message"])
