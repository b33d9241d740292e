"""Files referenced by a model file (``file=`` attributes), treated as untrusted input.

A model file may come from anywhere, so the files it names are only read from
inside allowed folders: the model file's own folder (and its sub-folders) and
the folders the caller lists. A name that leaves them (``../../etc/passwd``, an
absolute path elsewhere, ``/proc/self/environ``, a symbolic link pointing
outside) is refused before anything is opened, and no error message ever
shows what a referenced file contains. Environment variables (``$VAR``,
``${VAR}``, ``$(VAR)`` as GammaLib writes them, and ``~``) are expanded only
when asked (``expand_env=True``), so a model file cannot make gpsfast print
the environment.

GammaLib's own rule (``gammalib::xml_file_expand``) takes a bare file name
in the model file's folder and a name with a folder part relative to the
working directory; here a relative name is looked up in the model file's
folder first, then in each allowed folder in turn (add ``"."`` to
``allowed_dirs`` for GammaLib's working-directory rule). Maps, cubes, tables
and curves fall back to ``<name>.gz`` when ``<name>`` is absent, as GammaLib's
FITS reader does.
"""
import gzip
import os
import re
from pathlib import Path

from ..errors import InputError

__all__ = ["FileResolver", "check_fits_file", "read_text_file", "MAX_TEXT_TABLE_BYTES"]

#: Largest text table (FileFunction) read, in bytes.
MAX_TEXT_TABLE_BYTES = 64 * 2**20
_ENV_PATTERN = re.compile(r"\$\((\w+)\)")


def _expand(name):
    """Expand ``~``, ``$VAR``, ``${VAR}`` and GammaLib's ``$(VAR)`` (unset variables stay as written)."""
    name = _ENV_PATTERN.sub(lambda m: os.environ.get(m.group(1), m.group(0)), name)
    return os.path.expandvars(os.path.expanduser(name))


def _inside(path, root):
    return path == root or root in path.parents


class FileResolver:
    """Resolve the ``file=`` attributes of one model file inside the allowed folders.

    Parameters
    ----------
    model_path : str or `~pathlib.Path`
        The model file.
    allowed_dirs : list of str or `~pathlib.Path`, optional
        Folders, besides the model file's own, that referenced files may be in.
    expand_env : bool
        Expand environment variables and ``~`` in file names (GammaLib files
        use ``$CTOOLS``, ``$GAMMALIB``, ...). Off by default.
    """

    def __init__(self, model_path, allowed_dirs=None, expand_env=False):
        self.folder = Path(os.path.abspath(model_path)).parent
        extra = [Path(os.path.abspath(os.path.expanduser(str(d)))) for d in (allowed_dirs or [])]
        self.roots = [self.folder] + [d for d in extra if d != self.folder]
        self._real_roots = [Path(os.path.realpath(r)) for r in self.roots]
        self.expand_env = bool(expand_env)

    def _describe_roots(self):
        text = f"the model file's folder {self.folder}"
        if len(self.roots) > 1:
            text += " and " + ", ".join(str(r) for r in self.roots[1:])
        return text

    def resolve(self, name, gz=False):
        """Path of the referenced file ``name``.

        Parameters
        ----------
        name : str
            The ``file`` attribute.
        gz : bool
            Fall back to ``name + ".gz"`` when ``name`` is absent (FITS files, as GammaLib).

        Returns
        -------
        path : `~pathlib.Path`
            Absolute path of an existing regular file inside the allowed folders.

        Raises
        ------
        InputError
            Empty name, a name leaving the allowed folders, a missing file or
            not a regular file (the message holds no file contents and, without
            ``expand_env``, no environment values).
        """
        if not name or not name.strip():
            raise InputError("needs a non-empty 'file' attribute")
        if "\x00" in name:
            raise InputError("file name contains a NUL character: refused")
        has_env = "$" in name or name.startswith("~")
        expanded = _expand(name) if self.expand_env else name
        given = Path(expanded)
        if given.is_absolute():
            candidates = [Path(os.path.normpath(given))]
        else:
            candidates = [Path(os.path.normpath(root / given)) for root in self.roots]
        allowed = [c for c in candidates if any(_inside(c, root) for root in self.roots)]
        if not allowed:
            raise InputError(
                f"file {name!r} is outside the allowed folders ({self._describe_roots()}): refused "
                "(pass allowed_dirs=[...] to read_xml to allow another folder)"
            )
        for candidate in allowed:
            for path in (candidate, candidate.with_name(candidate.name + ".gz")) if gz else (candidate,):
                if not os.path.lexists(path):
                    continue
                real = Path(os.path.realpath(path))
                if not any(_inside(real, root) for root in self._real_roots):
                    raise InputError(f"file {name!r} links outside the allowed folders "
                                     f"({self._describe_roots()}): refused")
                if not real.is_file():
                    raise InputError(f"file {name!r} is not a regular file")
                return path
        if has_env and not self.expand_env:
            hint = "; it names an environment variable, which is not expanded (pass expand_env=True to read_xml)"
        elif has_env:
            hint = " (after expanding environment variables)"
        else:
            hint = ""
        where = "in the XML file's folder" + (" or the allowed folders" if len(self.roots) > 1 else "")
        shown = "" if self.expand_env and has_env else f": {', '.join(str(c) for c in allowed)}"
        raise InputError(f"file {name!r} not found {where}{shown}{hint}")


def read_text_file(path, what="table"):
    """Text of a referenced text file, refusing binary content and files over `MAX_TEXT_TABLE_BYTES`.

    Raises
    ------
    InputError
        The file is too large, holds NUL bytes or is not UTF-8 text (nothing of it is echoed).
    """
    path = Path(path)
    size = path.stat().st_size
    if size > MAX_TEXT_TABLE_BYTES:
        raise InputError(f"{path}: {what} file of {size} bytes is larger than {MAX_TEXT_TABLE_BYTES} bytes")
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rb") as handle:
            data = handle.read(MAX_TEXT_TABLE_BYTES + 1)
        if b"\x00" in data:
            raise UnicodeDecodeError("utf-8", b"", 0, 1, "NUL byte")
        return data.decode("utf-8")
    except (UnicodeDecodeError, OSError, EOFError):
        raise InputError(f"{path}: not a text {what} (binary or undecodable content)") from None


def check_fits_file(path, what="FITS file"):
    """Refuse a referenced file that is not FITS (plain or gzipped) before astropy parses it.

    Raises
    ------
    InputError
        The file does not start with a FITS primary header (nothing of it is echoed).
    """
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            head = handle.read(2)
        opener = gzip.open if head == b"\x1f\x8b" else open
        with opener(path, "rb") as handle:
            start = handle.read(9)
    except (OSError, EOFError):
        start = b""
    if start != b"SIMPLE  =":
        raise InputError(f"{path}: {what} is not a FITS file")
