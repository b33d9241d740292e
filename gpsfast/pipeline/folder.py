"""What an output folder holds: its run's settings and inputs (``state.json``), and clean-up for ``--overwrite``.

A run records in its state file the result-relevant configuration and a content
digest of every input file. A later run in the same folder resumes only when both
are equal; otherwise it is refused with the first differences, unless it is told to
overwrite, which first deletes every output of the previous run (the files and
folders gpsfast writes there, and nothing else).
"""
import hashlib
import json
import logging
import shutil
from pathlib import Path

from ..errors import InputError
from ..utils import write_text_atomic

__all__ = ["RunState", "file_digest", "settings_key", "remove_outputs"]

log = logging.getLogger(__name__)


def file_digest(path, chunk=1 << 22):
    """BLAKE2b digest (32 hex digits) of a file's content."""
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as stream:
        while block := stream.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def settings_key(*parts):
    """Short hash (16 hex digits) of JSON-serialisable parts, independent of dict order."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _flat(data, prefix=""):
    if isinstance(data, dict):
        items = {}
        for key, value in data.items():
            items.update(_flat(value, f"{prefix}{key}."))
        return items
    return {prefix.rstrip("."): data}


def _differences(old, new, limit=3):
    """The first ``limit`` differing keys of two nested dicts, as ``key: old -> new``."""
    old, new = _flat(old), _flat(new)
    keys = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    text = [f"{k}: {old.get(k, '(unset)')} -> {new.get(k, '(unset)')}" for k in keys[:limit]]
    return ", ".join(text) + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


class RunState:
    """The state file of an output folder: settings, input digests, finished stages and their wall times (s).

    Parameters
    ----------
    path : `~pathlib.Path`
        The state file (``state.json``).
    settings : dict
        The result-relevant settings of the run (JSON-serialisable).
    inputs : dict
        Configuration key of an input file -> its name and `file_digest`.

    Raises
    ------
    InputError
        When the file records a run with other settings or inputs (the message
        names the first differences and says to use ``--overwrite``).
    """

    def __init__(self, path, settings, inputs):
        self.path = Path(path)
        self.settings = json.loads(json.dumps(settings, default=str))
        self.inputs = {str(k): v for k, v in inputs.items()}
        self.key = settings_key(self.settings, self.inputs)
        self.done, self.seconds = [], {}
        if self.path.is_file():
            self._check(self._read())
        else:
            self._write()

    def _read(self):
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError) as exc:
            raise InputError(f"{self.path}: unreadable state file ({exc}); use --overwrite to start again") from None

    def _check(self, state):
        folder = self.path.parent
        if state.get("key") != self.key:
            if "settings" not in state:
                what = "a run of another gpsfast version"
            elif state["settings"] != self.settings:
                what = f"a run made with another configuration ({_differences(state['settings'], self.settings)})"
            else:
                changed = sorted(k for k in set(state.get("inputs", {})) | set(self.inputs)
                                 if state.get("inputs", {}).get(k) != self.inputs.get(k))
                what = f"a run made from other input files ({', '.join(changed[:3])} changed)"
            raise InputError(f"Output folder {folder} holds {what}; use another output folder or --overwrite")
        self.done = state.get("done", [])
        self.seconds = state.get("seconds", {})

    def _write(self, **extra):
        state = {"key": self.key, "settings": self.settings, "inputs": self.inputs, "done": self.done,
                 "seconds": self.seconds, **extra}
        write_text_atomic(self.path, json.dumps(state, indent=1))

    def mark(self, stage, seconds):
        """Record a finished stage and its wall time."""
        self.done.append(stage)
        self.seconds[stage] = round(seconds, 3)
        self._write()


def remove_outputs(folder, patterns, protect=()):
    """Delete the files and folders of ``folder`` matching ``patterns`` (globs), and their temporary files.

    Temporary files are those the atomic writers leave when killed: ``.<name>.*``.
    Nothing is deleted unless the folder holds a gpsfast state file (``state.json``),
    nor when a match is or holds one of the ``protect`` paths (the run's input files).

    Returns
    -------
    removed : list of str
        The names removed.

    Raises
    ------
    InputError
        When a match holds a protected path (nothing is deleted then).
    """
    folder = Path(folder)
    if not (folder / "state.json").is_file():
        return []
    matches = sorted({path for pattern in (*patterns, *(f".{p}.*" for p in patterns)) for path in folder.glob(pattern)})
    protected = [Path(p).absolute() for p in protect]
    for path in matches:
        inside = [p for p in protected if p == path.absolute() or path.absolute() in p.parents]
        if inside:
            raise InputError(f"--overwrite would delete the input file {inside[0]} (it is in the previous run's "
                             f"{path.name}): move it out of {folder} or use another output folder")
    for path in matches:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    if matches:
        log.info("--overwrite: removed %d outputs of the previous run from %s", len(matches), folder)
    return [path.name for path in matches]
