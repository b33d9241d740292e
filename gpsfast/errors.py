"""Exceptions that gpsfast raises for bad user input and for runs that cannot go on."""

__all__ = ["GpsfastError", "InputError", "FolderInUseError", "RunError"]


class GpsfastError(Exception):
    """Base class of the errors gpsfast raises on purpose.

    The message is complete on one line: it says what is wrong and where (file,
    option, model name), so the command-line interface prints it as it is.
    """


class InputError(GpsfastError, ValueError):
    """A user-given input (file, option, configuration value) is invalid."""


class FolderInUseError(GpsfastError):
    """Another process holds the lock of the output folder (its pid, host and start time in the message)."""


class RunError(GpsfastError):
    """Part of a run failed (e.g. a survey ROI); the finished work is kept, and a re-run retries the rest."""
