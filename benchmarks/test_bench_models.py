"""Reading big GammaLib XML sky models: gpsfast's ``read_xml`` vs the same reader with gammapy's constructors.

The files are synthetic GPS-like model files (generated here, one per size):
point sources, Gaussians, shells and elliptical Gaussians in galactic
coordinates with power-law, cutoff and log-parabola spectra, one source in
ten with a ``FileFunction`` spectrum (50 distinct tables). ``gammapy``
builds every ``SkyModel`` with gammapy's constructor (a unit check on a WCS
geometry per source) and the ``Models`` with gammapy's (the dense covariance
of all parameters, quadratic in the number of sources); ``gpsfast`` uses
`gpsfast.models.bulk`. Peak memory is measured in a fresh subprocess
(``VmHWM``, imports included, and the increase over the imports).

Goal (issue 16): 2,000 sources in < 2 s and < 500 MB.
"""
import contextlib
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from gpsfast.models import read_xml

N_SOURCES = {"gps1638": 1638, "big2000": 2000}


def _par(name, value, scale=1.0, lo=None, hi=None, free=1):
    text = f'<parameter name="{name}" value="{value:.6g}" scale="{scale:g}"'
    text += "" if lo is None else f' min="{lo:g}"'
    text += "" if hi is None else f' max="{hi:g}"'
    return text + f' free="{free}"/>'


def _spectrum(i, rng):
    amp = _par("Prefactor", rng.uniform(1, 9), 1e-18, 1e-7, 1e7)
    index = _par("Index", rng.uniform(2, 3), -1, 0, 5)
    pivot = _par("PivotEnergy", 1, 1e6, free=0)
    kind = i % 10
    if kind == 0:
        norm = _par("Normalization", 1.0, 1, 0, 1e3)
        return f'<spectrum type="FileFunction" file="spec_{i % 50:02d}.txt">{norm}</spectrum>'
    if kind in (1, 2, 3):
        cut = _par("CutoffEnergy", rng.uniform(1, 50), 1e6, 0.01, 1000)
        return f'<spectrum type="ExponentialCutoffPowerLaw">{amp}{index}{cut}{pivot}</spectrum>'
    if kind in (4, 5):
        curv = _par("Curvature", rng.uniform(0, 0.3), -1, -5, 5)
        return f'<spectrum type="LogParabola">{amp}{index}{curv}{pivot}</spectrum>'
    return f'<spectrum type="PowerLaw">{amp}{index}{pivot}</spectrum>'


def _spatial(i, rng):
    pos = _par("GLON", rng.uniform(0, 360), 1, -360, 360) + _par("GLAT", rng.uniform(-2, 2), 1, -90, 90)
    kind = i % 4
    if kind == 0:
        return "PointSource", f'<spatialModel type="PointSource">{pos}</spatialModel>'
    if kind == 1:
        return "ExtendedSource", (f'<spatialModel type="RadialGaussian">{pos}'
                                  f'{_par("Sigma", rng.uniform(0.05, 0.5), 1, 0.001, 10)}</spatialModel>')
    if kind == 2:
        return "ExtendedSource", (f'<spatialModel type="RadialShell">{pos}{_par("Radius", rng.uniform(0.05, 0.5))}'
                                  f'{_par("Width", 0.05)}</spatialModel>')
    return "ExtendedSource", (f'<spatialModel type="EllipticalGaussian">{pos}{_par("PA", rng.uniform(0, 180))}'
                              f'{_par("MinorRadius", 0.1)}{_par("MajorRadius", 0.3)}</spatialModel>')


def write_gps_like(folder, n_sources, seed=0):
    """A GPS-like XML model file of ``n_sources`` sources (and its FileFunction tables) in ``folder``."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    energy = np.geomspace(1e4, 1e8, 30)
    for k in range(50):
        values = 1e-10 * (energy / 1e4) ** -(2 + 0.02 * k)
        (folder / f"spec_{k:02d}.txt").write_text("".join(f"{e:.6e} {v:.6e}\n" for e, v in zip(energy, values)))
    lines = ['<?xml version="1.0"?>', '<source_library title="GPS-like">']
    for i in range(n_sources):
        kind, spatial = _spatial(i, rng)
        lines.append(f'<source name="J{i:05d}" type="{kind}">{_spectrum(i, rng)}{spatial}</source>')
    lines.append("</source_library>")
    path = folder / f"gps_{n_sources}.xml"
    path.write_text("\n".join(lines) + "\n")
    return path


@contextlib.contextmanager
def gammapy_construction():
    """The XML reader with gammapy's own ``SkyModel`` and ``Models`` constructors."""
    import gpsfast.models.xmlio as xmlio
    from gammapy.modeling.models import Models, SkyModel

    saved = xmlio.build_sky_model, xmlio.build_models
    xmlio.build_sky_model = lambda spectral, spatial, temporal, name=None: SkyModel(spectral, spatial, temporal,
                                                                                     name=name)
    xmlio.build_models = Models
    try:
        yield
    finally:
        xmlio.build_sky_model, xmlio.build_models = saved


_MEMORY_SCRIPT = textwrap.dedent("""
    import contextlib, json, sys, time
    sys.path.insert(0, {bench!r})
    import gpsfast.models
    from gpsfast.models import read_xml
    from test_bench_models import gammapy_construction

    def high_water_mb():
        # VmHWM: this process's peak resident memory (ru_maxrss can carry the parent's over fork + exec)
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024

    before = high_water_mb()
    context = gammapy_construction() if {impl!r} == "gammapy" else contextlib.nullcontext()
    start = time.perf_counter()
    with context:
        models = read_xml({path!r})
    seconds = time.perf_counter() - start
    peak = high_water_mb()
    print(json.dumps(dict(n=len(models), seconds=seconds, peak_mb=peak, increase_mb=peak - before)))
""")


def peak_memory(path, impl):
    """Read ``path`` in a fresh Python: models, seconds, peak RSS and its increase over the imports (MB)."""
    from pathlib import Path

    script = _MEMORY_SCRIPT.format(bench=str(Path(__file__).parent), impl=impl, path=str(path))
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=900)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def xml_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gps-like")
    return {key: write_gps_like(folder, n) for key, n in N_SOURCES.items()}


@pytest.mark.parametrize("impl", ["gammapy", "gpsfast"])
def test_read_xml_2000_sources(benchmark, xml_files, impl):
    path = xml_files["big2000"]
    benchmark.group = "read_xml 2000 GPS-like sources"
    benchmark.extra_info["impl"] = impl
    context = gammapy_construction() if impl == "gammapy" else contextlib.nullcontext()
    with context:
        models = benchmark.pedantic(read_xml, args=(path,), rounds=1 if impl == "gammapy" else 3, iterations=1)
    assert len(models) == N_SOURCES["big2000"]
    memory = peak_memory(path, impl)
    benchmark.extra_info.update(peak_rss_mb=memory["peak_mb"], increase_mb=memory["increase_mb"],
                                subprocess_read_s=memory["seconds"])


def test_read_xml_1638_sources(benchmark, xml_files):
    """The size of the published CTA GPS sky model (1,638 sources), gpsfast only."""
    path = xml_files["gps1638"]
    benchmark.group = "read_xml 1638 GPS-like sources"
    benchmark.extra_info["impl"] = "gpsfast"
    models = benchmark.pedantic(read_xml, args=(path,), rounds=3, iterations=1)
    assert len(models) == N_SOURCES["gps1638"]
    memory = peak_memory(path, "gpsfast")
    benchmark.extra_info.update(peak_rss_mb=memory["peak_mb"], increase_mb=memory["increase_mb"],
                                subprocess_read_s=memory["seconds"])
