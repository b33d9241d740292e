"""Small shared helpers: progress bars, atomic outputs, output-folder locks, worker clean-up."""
import contextlib
import datetime
import fcntl
import json
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

from gammapy.utils import pbar
from tqdm.auto import tqdm

from .errors import FolderInUseError, InputError

__all__ = [
    "progress_bar", "atomic_dir", "atomic_output", "write_text_atomic", "check_writable_dir", "refuse_existing",
    "write_atomic", "file_mode", "folder_lock", "LOCK_NAME", "exit_with_parent",
]

LOCK_NAME = ".gpsfast.lock"
"""Lock file that a run holds in its output folder (`folder_lock`)."""


def progress_bar(iterable, desc=None, show=None, total=None):
    """Wrap an iterable in a tqdm progress bar (or make a bar updated by hand, ``iterable=None``).

    gammapy's ``gammapy.utils.pbar.progress_bar`` does not serve the callers:
    it turns the iterable into a list first (no bar over a generator of group
    fits or ROIs, nor one updated by hand as results arrive), has only the
    global ``SHOW_PROGRESS_BAR`` switch (gpsfast's functions take ``progress=``),
    leaves finished bars on screen, and its stand-in without tqdm has no
    ``close``. This one follows that same global switch by default.

    Parameters
    ----------
    iterable : iterable
        What to iterate over.
    desc : str, optional
        Label of the bar.
    show : bool, optional
        Show the bar (only when the output is a terminal); by default follows
        gammapy's ``gammapy.utils.pbar.SHOW_PROGRESS_BAR`` switch.
    total : int, optional
        Number of items, when ``iterable`` has no length.

    Returns
    -------
    bar : `tqdm.tqdm`
    """
    show = pbar.SHOW_PROGRESS_BAR if show is None else show
    return tqdm(iterable, desc=desc, total=total, disable=None if show else True, leave=False)


def check_writable_dir(path):
    """Check that a folder can be written at ``path``.

    Parameters
    ----------
    path : str or `~pathlib.Path`
        Folder to be written (it may not exist yet).

    Returns
    -------
    path : `~pathlib.Path`
        Absolute path.

    Raises
    ------
    InputError
        If the nearest existing parent is not a folder or a file cannot be
        created in it.
    """
    path = Path(path).expanduser().absolute()
    parent = path
    while not parent.exists():
        parent = parent.parent
    if parent == path and path.is_dir():
        parent = path.parent
    if not parent.is_dir():
        raise InputError(f"Output path {path}: {parent} is not a folder")
    try:
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as exc:
        raise InputError(f"Output folder {parent} is not writable ({exc.strerror})") from None
    return path


def refuse_existing(path, overwrite=False):
    """Raise `InputError` if ``path`` is a file, or a non-empty folder and not ``overwrite``."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputError(f"Output path {path} exists and is not a folder")
    if path.exists() and any(path.iterdir()) and not overwrite:
        raise InputError(f"Output folder {path} exists and is not empty; use --overwrite to replace it")


@contextlib.contextmanager
def atomic_dir(path, overwrite=False):
    """Write a folder atomically.

    Yields a temporary folder beside ``path``; when the block ends without error
    it replaces ``path``. On error the temporary folder is removed and an
    existing ``path`` is left untouched.

    Parameters
    ----------
    path : str or `~pathlib.Path`
        Final folder.
    overwrite : bool
        Replace an existing, non-empty ``path``. Without it, such a folder raises
        `InputError`.
    """
    path = check_writable_dir(path)
    refuse_existing(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)
    try:
        yield tmp
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
            os.replace(path, old / path.name)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def atomic_output(path, overwrite=False):
    """Yield a temporary path next to ``path``; on success it replaces ``path`` with `os.replace`.

    Parameters
    ----------
    path : str or `~pathlib.Path`
        Final output file.
    overwrite : bool
        Allow replacing an existing file (else `~gpsfast.errors.InputError`).
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise InputError(f"output file exists: {path} (use overwrite=True / --overwrite)")
    if not path.parent.is_dir():
        raise InputError(f"output folder does not exist: {path.parent}")
    suffix = "".join(path.suffixes)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix or ".tmp", dir=path.parent)
    os.close(fd)
    os.unlink(tmp)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text_atomic(path, text):
    """Write a text file atomically (temporary file in the same folder, synced to disk, then `os.replace`).

    The file gets the mode ``open`` gives (``0o666`` less the umask). Used for
    every small state file gpsfast writes (run states, checkpoints, reports).
    """
    with atomic_output(path, overwrite=True) as tmp:
        with open(tmp, "w") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())


def write_atomic(item, path, **kwargs):
    """``item.write(path, **kwargs)`` (astropy tables, gammapy maps...) atomically, replacing ``path``.

    The object writes a temporary file of the same extension (its format is told by
    it) in the same folder; on error the old ``path`` is left as it was.
    """
    with atomic_output(path, overwrite=True) as tmp:
        item.write(tmp, **kwargs)


def file_mode():
    """Mode of a new output file: ``0o666`` less the process umask (as ``open`` gives), for `tempfile.mkstemp` files."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _holder(fd):
    """Who holds a lock file, from the JSON its holder wrote into it."""
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode())
        return f"{info['command']} (pid {info['pid']} on host {info['host']}, started {info['started']})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process (it has not written its name yet)"


@contextlib.contextmanager
def folder_lock(folder, command="gpsfast"):
    """Hold an exclusive lock on an output folder for the time of a block.

    The lock is a `fcntl.flock` on ``folder / LOCK_NAME``, into which the holder
    writes its command, pid, host and start time. The kernel releases it when the
    holder ends in any way (also SIGKILL), so a stale lock never blocks a later
    run. The file descriptor is not inherited by worker processes.

    Parameters
    ----------
    folder : str or `~pathlib.Path`
        An existing folder.
    command : str
        What holds the lock (shown to whoever finds it taken).

    Raises
    ------
    FolderInUseError
        At once, naming the holder, when another process holds the lock.
    """
    path = Path(folder) / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FolderInUseError(
                f"Output folder {folder} is in use by {_holder(fd)}: wait for it to end or use another folder"
            ) from None
        started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
        info = {"command": command, "pid": os.getpid(), "host": socket.gethostname(), "started": started}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        yield path
    finally:
        os.close(fd)


_WATCHED = set()


def exit_with_parent(parent_pid, interval=1.0):
    """In a pool worker: end this process within ``interval`` s of the death of ``parent_pid``.

    A joblib/loky worker otherwise outlives a killed parent until its idle timeout
    (300 s), holding its memory, and goes on with the task it was running. Does
    nothing in the parent process itself, nor where ``parent_pid`` is not this
    process's parent (e.g. a dask worker under its nanny); starting it again is a
    no-op.

    Parameters
    ----------
    parent_pid : int
        Process id of the process that dispatched the task.
    interval : float
        Seconds between two checks.
    """
    if parent_pid == os.getpid() or os.getppid() != parent_pid or parent_pid in _WATCHED:
        return
    _WATCHED.add(parent_pid)

    def watch():
        while os.getppid() == parent_pid:
            time.sleep(interval)
        sys.stderr.flush()
        os._exit(1)

    threading.Thread(target=watch, name="gpsfast-exit-with-parent", daemon=True).start()
