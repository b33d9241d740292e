"""PSF convolution of maps and image planes, as gammapy's ``WcsNDMap.convolve`` (FFT, "same" mode)."""
import threading
import weakref

import numpy as np
from scipy import fft as sp_fft

from gpsfast import _compat

__all__ = ["convolve_planes", "convolve_psf"]

# rfft of the kernel planes per kernel object and FFT shape
_KERNEL_SPECTRA = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


def convolve_psf(sky_map, kernel):
    """Convolve a WCS map with a PSF kernel as ``WcsNDMap.convolve`` (FFT, "same" mode).

    The result equals gammapy's: every energy plane is convolved with the
    kernel plane of its energy (an image with every kernel plane, giving a
    cube), with ``scipy.signal.fftconvolve``'s FFT lengths, dtypes and centring.
    The planes are transformed in one batch, an image once for all kernel
    planes, and the kernel's transform is kept per kernel object
    (until the kernel is deleted or its data array replaced).

    Parameters
    ----------
    sky_map : `~gammapy.maps.WcsNDMap`
        Image, or cube with one plane per kernel plane.
    kernel : `~gammapy.irf.PSFKernel`
        PSF kernel with one plane per energy.

    Returns
    -------
    convolved : `~gammapy.maps.WcsNDMap` or None
        Convolved map (float32, as gammapy's), or None for the cases left to
        gammapy (other shapes, kernels with another pixel size).
    """
    kernel_map = kernel.psf_kernel_map
    geom = sky_map.geom
    if kernel_map.data.ndim != 3 or not np.allclose(
        geom.pixel_scales.deg, kernel_map.geom.pixel_scales.deg, rtol=1e-5
    ):
        return None
    if geom.is_image:
        images = sky_map.data.astype(np.float32)[np.newaxis]
        geom = geom.to_cube(kernel_map.geom.axes)
    elif sky_map.data.ndim == 3 and geom.shape_axes == kernel_map.data.shape[:1]:
        images = sky_map.data
        geom = geom.copy()
    else:
        return None
    data = convolve_planes(images, kernel)
    if data is None:
        return None
    return _compat.map_init_copy(sky_map, data=data, geom=geom)


def convolve_planes(images, kernel):
    """FFT convolution of image planes with a PSF kernel's planes, as ``scipy.signal.fftconvolve``.

    The array core of `convolve_psf` (no pixel-size check): one image, shape
    (1, ny, nx), convolved with every kernel plane, or one image per kernel
    plane; "same" mode, float32 result.

    Parameters
    ----------
    images : ndarray, shape (1, ny, nx) or (n_planes, ny, nx)
        Images (float32 as gammapy's maps, or float64).
    kernel : `~gammapy.irf.PSFKernel`
        PSF kernel with n_planes planes.

    Returns
    -------
    convolved : ndarray, float32, shape (n_planes, ny, nx), or None
        None for the cases left to gammapy (empty or complex data).
    """
    kernel_data = kernel.psf_kernel_map.data
    if images.size == 0 or kernel_data.size == 0:
        return None
    if images.dtype.kind == "c" or kernel_data.dtype.kind == "c":
        return None
    image_shape = np.array(images.shape[-2:])
    full_shape = image_shape + kernel_data.shape[-2:] - 1
    fft_shape = tuple(sp_fft.next_fast_len(int(n), True) for n in full_shape)
    spectrum = sp_fft.rfftn(images, fft_shape, axes=(-2, -1))
    spectrum = spectrum * _kernel_spectrum(kernel, fft_shape)
    convolved = sp_fft.irfftn(spectrum, fft_shape, axes=(-2, -1))
    start = (full_shape - image_shape) // 2
    stop = start + image_shape
    return convolved[..., start[0] : stop[0], start[1] : stop[1]].astype(np.float32)


def _kernel_spectrum(kernel, fft_shape):
    """rfft of the float32 kernel planes on ``fft_shape``, kept per kernel object."""
    data = kernel.psf_kernel_map.data
    with _LOCK:
        spectra = _KERNEL_SPECTRA.get(kernel)
    if spectra is None or spectra[0] is not data:
        spectra = (data, {})
        with _LOCK:
            _KERNEL_SPECTRA[kernel] = spectra
    # one entry per FFT shape, inserted whole (threads computing the same one get equal arrays)
    spectrum = spectra[1].get(fft_shape)
    if spectrum is None:
        spectrum = sp_fft.rfftn(data.astype(np.float32), fft_shape, axes=(-2, -1))
        spectra[1][fft_shape] = spectrum
    return spectrum
