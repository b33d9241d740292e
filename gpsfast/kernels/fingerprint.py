"""Cheap content fingerprints of arrays, to recognise unchanged inputs."""
import numpy as np
from numba import njit

__all__ = ["fingerprint"]

_PRIME = np.uint64(0x100000001B3)
_OFFSETS = np.array([0xCBF29CE484222325, 0x84222325CBF29CE4, 0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F], dtype=np.uint64)


@njit(cache=True, nogil=True)
def fingerprint(words):
    """FNV-style hash of a buffer seen as 64-bit words, in one pass.

    Four independent lanes hash the words in turn (for instruction-level
    parallelism); any change of any bit changes the result except with
    probability ~2^-64.

    Parameters
    ----------
    words : ndarray of uint64, shape (n,)
        The buffer (see ``gpsfast.detect.excess._fingerprint`` for padding).

    Returns
    -------
    fingerprint : ndarray of uint64, shape (4,)
        Lane hashes.
    """
    lanes = _OFFSETS.copy()
    n = words.shape[0]
    for i in range(0, n - n % 4, 4):
        for k in range(4):
            lanes[k] = (lanes[k] ^ words[i + k]) * _PRIME
    for i in range(n - n % 4, n):
        lanes[0] = (lanes[0] ^ words[i]) * _PRIME
    return lanes
