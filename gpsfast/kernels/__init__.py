"""Numba kernels of gpsfast: NumPy arrays in, arrays out.

Nothing here imports astropy,
gammapy or does any I/O; the wrappers in ``gpsfast`` convert gammapy objects to
arrays, call these kernels and build gammapy objects from the results.
"""
