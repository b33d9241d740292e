"""Instrument responses: the analytic CTA-like IRFs, fast IRF maps and PSF convolution.

- `make_cta_like_irfs`, `load_irfs`, `effective_area`, `background_rate`,
  `psf_containment_radius_68` (`gpsfast.irf.analytic`): the analytic CTA-like
  response, or one read from a FITS file;
- `FastPSFMap` (`gpsfast.irf.psf`), `FastEDispKernelMap` (`gpsfast.irf.edisp`):
  gammapy's IRF maps with the same kernels from cached geometry and per-pixel
  lookups; `fast_irfs` (`gpsfast.irf.datasets`) puts them in datasets for a block;
- `convolve_psf`, `convolve_planes` (`gpsfast.irf.convolve`): gammapy's FFT PSF
  convolution of maps, batched over the energy planes.
"""
from gpsfast.irf.analytic import (
    PSF_R68_1TEV,
    background_rate,
    effective_area,
    load_irfs,
    make_cta_like_irfs,
    psf_containment_radius_68,
)
from gpsfast.irf.convolve import convolve_planes, convolve_psf
from gpsfast.irf.datasets import fast_irfs
from gpsfast.irf.edisp import FastEDispKernelMap
from gpsfast.irf.psf import FastPSFMap

__all__ = [
    "PSF_R68_1TEV",
    "FastEDispKernelMap",
    "FastPSFMap",
    "background_rate",
    "convolve_planes",
    "convolve_psf",
    "effective_area",
    "fast_irfs",
    "load_irfs",
    "make_cta_like_irfs",
    "psf_containment_radius_68",
]
