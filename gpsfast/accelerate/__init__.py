"""Drop-in mode: unmodified gammapy code runs gpsfast's compiled paths.

>>> import gpsfast
>>> with gpsfast.accelerated():          # doctest: +SKIP
...     npred = dataset.npred()
...     result = Fit().run([dataset])

or ``gpsfast.accelerate()`` ... ``gpsfast.deaccelerate()``. Inside, the objects that
plain gammapy code builds (models made before or inside the block, read from YAML,
deep copies, datasets read from disk) compute npred and likelihoods with:

- the compiled generalized Gaussian (Sersic) evaluation of
  `gpsfast.models.GeneralizedGaussianSpatialModel`;
- the PSF kernels of `gpsfast.irf.FastPSFMap` and the energy dispersion kernels
  of `gpsfast.irf.FastEDispKernelMap`;
- the predicted counts and Cash statistic of `gpsfast.evaluate.FastMapDataset`
  (cached spatial and spectral pieces per source, compiled folding and statistic);

with the same results: npred within 1e-6 of its peak in every bin and 1e-6
relative in total (the Sersic integrals agree to 1e-4 relative, the PSF kernels to
float32 rounding, the convolutions bit for bit), and the same best fits.

What is patched
---------------
While at least one context is in the mode, these class attributes are replaced by
gated methods (and nothing else: class identities, ``gammapy.modeling.models``
names, the model registries and the YAML tags stay gammapy's); each runs the
replacement in the contexts that entered the mode, and gammapy's method
everywhere else:

====================================================  =====================================
gammapy attribute                                     replacement
====================================================  =====================================
``GeneralizedGaussianSpatialModel.evaluate``          gpsfast's compiled ``evaluate``
``GeneralizedGaussianSpatialModel.evaluate_geom``     gpsfast's ``evaluate_geom``
``GeneralizedGaussianSpatialModel.integrate_geom``    gpsfast's ``integrate_geom``
``PSFMap.get_psf_kernel``                             ``FastPSFMap.get_psf_kernel``
``EDispKernelMap.get_edisp_kernel``                   ``FastEDispKernelMap.get_edisp_kernel``
``WcsNDMap.convolve``                                 `convolve_psf` for a `~gammapy.irf.PSFKernel`
                                                      (``method="fft"``, ``mode="same"``)
``WcsGeom.cutout_slices``                             gammapy's, kept per pair of image geometries;
                                                      from the reference-pixel shift for cutouts
``WcsGeom.cutout`` (``mode="trim"``)                  ``Cutout2D``'s geometry without the array
``SkyModel.contributes``                              the mask cutout's slices, no cutout built
``MapDataset.npred_signal`` (``stack=True``)          `gpsfast.evaluate.FastMapDataset`'s evaluation
``MapDataset.stat_sum`` (Cash)                        `gpsfast.evaluate.FastMapDataset`'s statistic
====================================================  =====================================

The methods run on a *twin* (`gpsfast.twins`, the same objects that
`gpsfast.models.accelerate_models`, `gpsfast.irf.fast_irfs` and
`gpsfast.evaluate.fast_datasets` make): a gpsfast object sharing the gammapy
object's `~gammapy.modeling.Parameter` objects (models) or maps (IRFs), made at
the first call and kept while the mode is in use; it is made again when the
parameters, the frame or the maps (or their data arrays) are replaced. Only
objects of exactly gammapy's class are switched: subclasses (which may override
the formulas), and gpsfast's own classes, run their own methods. ``evaluate`` (a static method) is the
compiled one for every class that inherits it, with the same results.

``WcsNDMap.convolve`` with a PSF kernel (what ``MapEvaluator.apply_psf`` calls)
runs `convolve_psf`: gammapy's FFT convolution of every energy plane, batched,
with the Fourier transform of the image done once for all planes (gammapy
transforms the same image once per plane) and the kernel's transform kept per
kernel object; same FFT lengths, dtypes and cropping as ``scipy.signal.convolve``.
Other kernels, methods and modes run gammapy's ``convolve``.

``WcsGeom.cutout_slices`` (run by ``Map.stack`` for every source at every
likelihood call, through sky coordinates) depends only on the two image
geometries (WCS parameters and shapes) and the mode: gammapy's result is kept
per such key (geometries with WCS distortions, or irregular ones, are not kept).

``WcsGeom.cutout`` in "trim" mode (what ``MapEvaluator`` runs for the exposure
cutout of every source) builds the cutout geometry as ``Cutout2D`` does (same
pixel position, size rounding and slices; the parent WCS with the reference
pixel moved) without the ``Cutout2D`` machinery; ``SkyModel.contributes`` finds
the mask pixels of that cutout the same way. Positions in another frame than the
geometry's, and WCS with distortions, run gammapy's code.

``MapDataset.npred_signal`` and ``stat_sum`` of plain MapDatasets run the
evaluation of `gpsfast.evaluate.FastMapDataset` (gammapy's evaluators still decide
when cutouts and kernels are updated); its cached pieces are kept per dataset
while the mode is on (counts and masks are read at every call; the background
map, like gammapy's own ``npred_background`` cache, is read again when the
background parameters change or the map is replaced).

Patching the methods rather than the class names means that models created
before the block, or with a class imported before it (the usual
``from gammapy.modeling.models import ...`` at the top of a script), are
accelerated too, that ``type(model)`` and ``isinstance`` checks are unchanged,
and that YAML written inside is plain gammapy YAML.

Scope and restoring
-------------------
The mode is scoped to a context: `accelerate` / `accelerated` switch it on for
the thread (or asyncio task) that calls them, through a `contextvars.ContextVar`
(`gpsfast.accelerate.gate`); other threads, and contexts that never entered it,
run plain gammapy whatever another thread does. Calls nest per context. A context
copied inside the mode (``contextvars.copy_context()``, an asyncio task created
in the block) starts in it, and runs plain gammapy once no context is in the mode.

The gated methods are put on gammapy's classes at the first `accelerate` and stay
while any context is in the mode; when the last one leaves (also when a block
raises), the classes get back the exact previous attributes (the same objects;
attributes that were inherited are removed again) and the twins and caches are
dropped. An attribute that another patcher (pytest's ``monkeypatch``, a mock)
has set over a gated method is left alone: undoing that patch puts back the gated
method, which runs gammapy's code outside the mode and is removed at the next
exit. The caches are thread-safe (entries inserted whole under a lock).

Worker processes (joblib ``loky``, dask) do not inherit the mode: what travels
to them are gammapy and gpsfast objects (the fast classes pickle), and code that
wants the mode there enters it in the worker (as the pipeline's group fit
function, `gpsfast.pipeline.modelling.accelerated_fit`, does).

IRF map data changed in place inside the block (``psf.psf_map.data[...] = ...``),
rather than replaced, is not seen by the kernel caches until the mode ends;
gammapy's own ``stack`` (with its default ``nan_to_num=True``) and ``normalize``
replace the arrays and are seen.
"""

from gpsfast.accelerate.mode import accelerate, accelerated, deaccelerate, is_accelerated

__all__ = ["accelerate", "accelerated", "convolve_planes", "convolve_psf", "deaccelerate", "is_accelerated"]


def convolve_psf(sky_map, kernel):
    """`gpsfast.irf.convolve_psf` (kept under this name for the imports of earlier versions)."""
    from gpsfast.irf.convolve import convolve_psf as run

    return run(sky_map, kernel)


def convolve_planes(images, kernel):
    """`gpsfast.irf.convolve_planes` (kept under this name for the imports of earlier versions)."""
    from gpsfast.irf.convolve import convolve_planes as run

    return run(images, kernel)
