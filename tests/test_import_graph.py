"""The module structure of gpsfast: every module imports alone, no import cycle, dependencies one way.

The import graph is read from the sources with `ast`: every ``import`` and
``from ... import`` of a gpsfast module, at module level and inside functions
(an import inside a function hides a cycle from Python, it does not remove it).
``from package import name`` is an edge to ``package.name`` where that is a
module, else to the package; the implicit import of parent packages is not an
edge.
"""
import ast
import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE_DIR = Path(__file__).resolve().parents[1] / "gpsfast"

KNOWN_CYCLES = []
"""Import cycles left to a later refactoring step (each a sorted list of module names).

Only cycles within ``gpsfast.groups`` and ``gpsfast.pipeline`` may be listed here;
the step that splits those modules empties the list. None is left today.
"""

LAYERS = [
    ("gpsfast._version", "gpsfast.errors", "gpsfast.kernels", "gpsfast.parallel", "gpsfast.pixels", "gpsfast.twins",
     "gpsfast.utils"),
    ("gpsfast._compat",),
    ("gpsfast.irf",),
    ("gpsfast.models",),
    ("gpsfast.evaluate",),
    ("gpsfast.modeling",),
    ("gpsfast.detect", "gpsfast.spectra", "gpsfast.clustering", "gpsfast.groups", "gpsfast.fit",
     "gpsfast.survey", "gpsfast.simulate"),
    ("gpsfast.background", "gpsfast.selection", "gpsfast.fluxpoints", "gpsfast.properties"),
    ("gpsfast.accelerate",),
    ("gpsfast.pipeline",),
    ("gpsfast.cli", "gpsfast"),
]
"""The layers of the package, lowest first: a module imports from its own layer or lower ones.

A name stands for the module and its sub-modules; ``gpsfast``, the package itself, for its ``__init__`` only.
"""

KNOWN_UPWARD_IMPORTS = set()
"""Imports of a higher layer left to the owners of those files (each an (importer, imported) pair)."""

# third-party packages loaded before the modules are imported one by one (`test_every_module_imports_alone`)
THIRD_PARTY = [
    "numpy", "scipy.optimize", "scipy.signal", "scipy.sparse.csgraph", "numba", "astropy.units", "astropy.table",
    "astropy.coordinates", "astropy.io.fits", "astropy.wcs", "regions", "gammapy.maps", "gammapy.irf",
    "gammapy.datasets", "gammapy.modeling", "gammapy.modeling.models", "gammapy.estimators", "gammapy.makers",
    "gammapy.data", "sklearn.cluster", "skimage.measure", "joblib", "click", "yaml", "pydantic", "tqdm",
    "iminuit", "defusedxml", "matplotlib",
]


def all_modules():
    """{module name: (path, is_package)} of every gpsfast source file."""
    modules = {}
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts = parts[:-1]
        modules[".".join(parts)] = (path, is_package)
    return modules


def import_graph(modules):
    """{module: set of gpsfast modules it imports}, module-level and function-level imports."""
    graph = {}
    for name, (path, is_package) in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names if alias.name in modules)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    package = name.split(".") if is_package else name.split(".")[:-1]
                    package = package[: len(package) - node.level + 1]
                    base = ".".join(package + ([base] if base else []))
                for alias in node.names:
                    full = f"{base}.{alias.name}"
                    if full in modules:
                        targets.add(full)
                    elif base in modules:
                        targets.add(base)
        targets.discard(name)
        graph[name] = targets
    return graph


def cycles(graph):
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in sorted(graph[node]):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                other = stack.pop()
                on_stack.discard(other)
                component.append(other)
                if other == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def layer(name):
    """Index in `LAYERS` of the longest matching prefix."""
    best = None
    for rank, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            matches = name == prefix or (prefix != "gpsfast" and name.startswith(prefix + "."))
            if matches and (best is None or len(prefix) > best[1]):
                best = (rank, len(prefix))
    assert best is not None, f"{name} is in no layer of tests/test_import_graph.py: add it to LAYERS"
    return best[0]


def test_graph_finds_cycles_and_relative_imports():
    """The checker itself: a cycle through a function-level relative import is found."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    modules = all_modules()
    graph = import_graph(modules)
    # relative (``from ..errors import``) and absolute imports are both edges
    assert "gpsfast.errors" in graph["gpsfast.detect.seeds"]
    assert "gpsfast.kernels.npred" in graph["gpsfast.evaluate.source"]
    # a function-level import is an edge too
    assert "gpsfast.accelerate.patches" in graph["gpsfast.accelerate.mode"]


def test_no_new_import_cycle():
    graph = import_graph(all_modules())
    found = cycles(graph)
    new = [cycle for cycle in found if cycle not in KNOWN_CYCLES]
    assert not new, f"new import cycle(s): {new}"
    for cycle in KNOWN_CYCLES:
        assert all(name.startswith(("gpsfast.groups", "gpsfast.pipeline")) for name in cycle), cycle


def test_dependencies_run_one_way():
    graph = import_graph(all_modules())
    upward = sorted(
        (name, target)
        for name, targets in graph.items()
        for target in targets
        if layer(target) > layer(name) and (name, target) not in KNOWN_UPWARD_IMPORTS
    )
    assert not upward, f"imports from a higher layer (see LAYERS): {upward}"


CHILD = r"""
import importlib, os, sys, traceback
for name in {third_party!r}:
    try:
        importlib.import_module(name)
    except ImportError:
        pass
assert not [m for m in sys.modules if m == "gpsfast" or m.startswith("gpsfast.")]
failures = []
for name in {modules!r}:
    pid = os.fork()
    if pid == 0:
        try:
            importlib.import_module(name)
        except BaseException:
            traceback.print_exc()
            os._exit(1)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    if status:
        failures.append(name)
print("FAILED:" + ",".join(failures))
"""


def test_every_module_imports_alone():
    """Each module imports in a process where no other gpsfast module was imported before.

    One fresh interpreter loads the third-party libraries, then forks one child
    per module, which imports that module alone (fork: the libraries are not
    loaded 60 times; no gpsfast module is loaded before the fork).
    """
    if not hasattr(os, "fork"):
        pytest.skip("needs os.fork (POSIX)")
    modules = sorted(all_modules())
    code = CHILD.format(third_party=THIRD_PARTY, modules=modules)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                            cwd=PACKAGE_DIR.parent)
    assert result.returncode == 0, result.stderr[-3000:]
    failed = result.stdout.strip().rsplit("FAILED:", 1)[-1]
    assert not failed, f"modules that do not import alone: {failed}\n{result.stderr[-3000:]}"


OLD_PATHS = {
    "gpsfast.fit": {
        "FastPSFMap": "gpsfast.irf", "FastEDispKernelMap": "gpsfast.irf", "fast_irfs": "gpsfast.irf",
        "FastMapDataset": "gpsfast.evaluate", "FastDatasets": "gpsfast.evaluate", "fast_dataset": "gpsfast.evaluate",
        "fast_datasets": "gpsfast.evaluate", "npred_signal": "gpsfast.evaluate",
        "frozen": "gpsfast.modeling", "select_models": "gpsfast.modeling", "main_source": "gpsfast.modeling",
        "release_shape": "gpsfast.modeling", "SHAPE_PARAMETERS": "gpsfast.modeling",
        "cache_outer_sources": "gpsfast.modeling",
        "fit_groups": "gpsfast.groups", "make_groups": "gpsfast.groups", "Group": "gpsfast.groups",
    },
    "gpsfast.accelerate": {
        "accelerate": "gpsfast.accelerate.mode", "accelerated": "gpsfast.accelerate.mode",
        "deaccelerate": "gpsfast.accelerate.mode", "is_accelerated": "gpsfast.accelerate.mode",
    },
    "gpsfast": {
        "accelerate": "gpsfast.accelerate.mode", "accelerated": "gpsfast.accelerate.mode",
        "deaccelerate": "gpsfast.accelerate.mode", "is_accelerated": "gpsfast.accelerate.mode",
    },
    "gpsfast.models": {
        "accelerate_models": "gpsfast.models.sersic", "GeneralizedGaussianSpatialModel": "gpsfast.models.sersic",
    },
    "gpsfast.spectra": {
        "extract_spectra": "gpsfast.spectra.extract", "extract_spectra_table": "gpsfast.spectra.extract",
        "IndexMapEstimator": "gpsfast.spectra.index_map", "cluster_index_map": "gpsfast.spectra.clustering",
        "cluster_regions": "gpsfast.spectra.clustering",
    },
    "gpsfast.clustering": {
        "cluster_index_map": "gpsfast.spectra.clustering", "cluster_regions": "gpsfast.spectra.clustering",
        "DEFAULT_SCALES": "gpsfast.spectra.clustering",
    },
    "gpsfast.irf": {
        "make_cta_like_irfs": "gpsfast.irf.analytic", "load_irfs": "gpsfast.irf.analytic",
        "effective_area": "gpsfast.irf.analytic", "psf_containment_radius_68": "gpsfast.irf.analytic",
        "PSF_R68_1TEV": "gpsfast.irf.analytic", "convolve_psf": "gpsfast.irf.convolve",
        "convolve_planes": "gpsfast.irf.convolve",
    },
}


@pytest.mark.parametrize("old", sorted(OLD_PATHS))
def test_old_import_paths_give_the_same_objects(old):
    module = importlib.import_module(old)
    for name, home in OLD_PATHS[old].items():
        assert getattr(module, name) is getattr(importlib.import_module(home), name), f"{old}.{name}"


def test_old_convolve_names_of_accelerate_run_the_irf_convolution():
    import astropy.units as u
    import numpy as np
    from gammapy.irf import PSFMap
    from gammapy.maps import Map, MapAxis, WcsGeom

    from gpsfast import irf
    from gpsfast.accelerate import convolve_planes, convolve_psf

    energy_true = MapAxis.from_energy_bounds("1 TeV", "10 TeV", nbin=2, name="energy_true")
    geom = WcsGeom.create(skydir=(0, 0), binsz=0.05, width=1.0, frame="galactic", axes=[energy_true])
    kernel = PSFMap.from_gauss(energy_true, sigma=0.1 * u.deg).get_psf_kernel(geom, max_radius="0.3 deg")
    sky_map = Map.from_geom(geom, data=np.random.default_rng(1).random(geom.data_shape))
    np.testing.assert_array_equal(convolve_psf(sky_map, kernel).data, irf.convolve_psf(sky_map, kernel).data)
    images = sky_map.data.astype(np.float32)
    np.testing.assert_array_equal(convolve_planes(images, kernel), irf.convolve_planes(images, kernel))
