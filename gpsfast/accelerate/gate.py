"""The gate of the drop-in mode: on in the contexts (threads, asyncio tasks) that entered it.

A `contextvars.ContextVar` holds the nesting depth of ``accelerate()`` calls of the
current context. The patched gammapy methods (`gpsfast.accelerate.patches`) run
gpsfast's code only where the gate is open, and gammapy's everywhere else, whatever
other threads do. A context copied inside the mode (``contextvars.copy_context``,
an asyncio task created there) starts with the gate open.
"""
import contextvars

__all__ = ["DEPTH", "is_open"]

DEPTH = contextvars.ContextVar("gpsfast_accelerated_depth", default=0)
"""Nesting depth of `gpsfast.accelerate` calls in the current context."""


def is_open():
    """Whether the current context is inside the drop-in mode."""
    return DEPTH.get() > 0
