"""Entering and leaving the drop-in mode: `accelerate`, `deaccelerate`, `accelerated`, `is_accelerated`.

The mode is scoped to the context (thread, asyncio task) that enters it: the gate
of `gpsfast.accelerate.gate` is a `contextvars.ContextVar`. gammapy's classes
carry the gated methods of `gpsfast.accelerate.patches` while any context is in
the mode; they are imported and installed at the first `accelerate` (so that
``import gpsfast`` stays light) and removed when the last context leaves.
"""
import contextlib
import threading

from gpsfast.accelerate import gate

__all__ = ["accelerate", "accelerated", "deaccelerate", "is_accelerated"]

_LOCK = threading.Lock()
# accelerate() calls not yet undone, in all contexts together
_ACTIVE = {"count": 0}


def is_accelerated():
    """Whether the current context (thread, asyncio task) is in the drop-in mode.

    Returns
    -------
    on : bool
        True where `accelerate` was called more often than `deaccelerate` in
        this context; other threads do not change it.
    """
    return gate.is_open()


def accelerate():
    """Enter the drop-in mode in the current context: gammapy code here runs gpsfast's fast paths.

    Calls nest: the mode stays on in this context until `deaccelerate` has been
    called here as often as `accelerate`. Other threads, and contexts that never
    entered the mode, run plain gammapy meanwhile. Prefer the `accelerated`
    context manager, which also leaves the mode when the block raises. See
    `gpsfast.accelerate` for what is patched.
    """
    from gpsfast.accelerate import patches  # gammapy and gpsfast's fast classes, at the first call only

    with _LOCK:
        patches.install()
        _ACTIVE["count"] += 1
    gate.DEPTH.set(gate.DEPTH.get() + 1)


def deaccelerate():
    """Undo one `accelerate` of the current context.

    When no context is in the mode any more, gammapy's classes get back the
    attributes the mode replaced (those that another patcher has not replaced
    since), and the mode's caches are dropped.

    Raises
    ------
    RuntimeError
        When called more often than `accelerate` in this context.
    """
    depth = gate.DEPTH.get()
    if depth == 0:
        raise RuntimeError(
            "gpsfast.deaccelerate() called without a matching gpsfast.accelerate() in this thread / context"
        )
    gate.DEPTH.set(depth - 1)
    with _LOCK:
        _ACTIVE["count"] -= 1
        if _ACTIVE["count"] == 0:
            from gpsfast.accelerate import patches

            patches.uninstall()


@contextlib.contextmanager
def accelerated():
    """Context manager: unmodified gammapy code inside runs gpsfast's fast paths.

    Same results as plain gammapy (npred to 1e-6 relative). The mode holds for
    the code run in this context (thread, asyncio task) inside the block, not for
    other threads; blocks nest. On exit, also when the block raises, the mode is
    left, and gammapy's classes are restored once no context is in it.

    Examples
    --------
    >>> from gammapy.modeling import Fit
    >>> with gpsfast.accelerated():           # doctest: +SKIP
    ...     result = Fit().run(datasets)
    """
    accelerate()
    try:
        yield
    finally:
        deaccelerate()
