"""Read gammapy YAML model files strictly: duplicate keys and malformed YAML give a one-line error.

gammapy's ``Models.read`` uses ``yaml.safe_load``, which silently keeps the last
of two equal keys (a source's ``spectral`` given twice, a parameter listed
twice under one name). `read_yaml_models` refuses them with file, line and key.
"""
from pathlib import Path

import os

import yaml

from ..errors import InputError
from ..utils import atomic_output
from .bulk import models_from_dict

__all__ = ["read_yaml_models", "load_yaml_strict", "write_yaml_models", "portable_filenames"]


class _DuplicateKey(Exception):
    def __init__(self, key, line, first):
        super().__init__(key)
        self.key, self.line, self.first = key, line, first


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` refusing a mapping with a key given twice (merge keys ``<<`` excepted)."""


def _construct_unique_mapping(loader, node, deep=False):
    seen = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=True)
        line = key_node.start_mark.line + 1
        try:
            if key in seen:
                raise _DuplicateKey(key, line, seen[key])
        except TypeError:
            continue  # unhashable key: yaml itself refuses it below
        seen[key] = line
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping)


def load_yaml_strict(path, what="YAML file"):
    """Parse a YAML file, refusing duplicate keys.

    Parameters
    ----------
    path : str or `~pathlib.Path`
        File to read.
    what : str
        What the file is, for messages.

    Returns
    -------
    data : object
        The parsed document.

    Raises
    ------
    InputError
        Missing file, malformed YAML or a duplicate key (with file, line and key).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what} not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError) as exc:
        raise InputError(f"{path}: cannot read the {what} as UTF-8 text ({type(exc).__name__})") from None
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except _DuplicateKey as exc:
        raise InputError(f"{path}:{exc.line}: duplicate key {exc.key!r} (first given at line {exc.first})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise InputError(f"{where}: malformed YAML: {problem}") from None


def read_yaml_models(path):
    """Read a gammapy YAML model file as `~gammapy.modeling.models.Models`, strictly.

    Files named in the models are looked up relative to the YAML file's folder
    (as gammapy does) and kept as full paths; the covariance of all parameters
    is built only when asked for (`~gpsfast.models.bulk.models_from_dict`).

    Parameters
    ----------
    path : str or `~pathlib.Path`
        YAML file with a ``components`` list.

    Returns
    -------
    models : `~gammapy.modeling.models.Models`

    Raises
    ------
    InputError
        Missing file, malformed YAML, a duplicate key, no ``components`` list,
        or gammapy cannot build a model (with the file and the reason).
    """
    path = Path(path)
    data = load_yaml_strict(path, "YAML model file")
    if not isinstance(data, dict) or not isinstance(data.get("components"), list):
        raise InputError(f"{path}: not a gammapy model file (no 'components' list)")
    data.pop("metadata", None)
    for i, component in enumerate(data["components"]):
        if not isinstance(component, dict) or "type" not in component:
            raise InputError(f"{path}: component {i + 1} has no 'type'")
    try:
        return models_from_dict(data, path=path.parent)
    except InputError as exc:
        raise InputError(f"{path}: {exc}") from None
    except Exception as exc:
        text = str(exc).splitlines()[0][:200] if str(exc) else ""
        raise InputError(f"{path}: cannot read gammapy YAML models ({type(exc).__name__}: {text})") from None


def _portable(name, folder):
    path = Path(os.path.abspath(os.path.expanduser(str(name))))
    if folder == path.parent or folder in path.parents:
        return os.path.relpath(path, folder)
    return str(path)


def portable_filenames(data, folder):
    """Rewrite every ``filename`` in a model dict (recursively) for a file written in ``folder``.

    A file inside ``folder`` (or below) gets a path relative to it, any other
    file its absolute path; a relative name is taken relative to the working
    directory (what it means now). gammapy's ``Models.read`` and
    `read_yaml_models` resolve relative names against the YAML file's folder, so
    the written file reads from any working directory.

    Parameters
    ----------
    data : dict or list
        Model dict (``Models.to_dict()``, ``SkyModel.to_dict()``), changed in place.
    folder : str or `~pathlib.Path`
        Folder of the file being written.

    Returns
    -------
    data : dict or list
    """
    folder = Path(os.path.abspath(folder))
    items = data.items() if isinstance(data, dict) else enumerate(data) if isinstance(data, list) else ()
    for key, value in items:
        if key == "filename" and isinstance(value, (str, Path)) and str(value):
            data[key] = _portable(value, folder)
        elif isinstance(value, (dict, list)):
            portable_filenames(value, folder)
    return data


def write_yaml_models(models, path, overwrite=False):
    """Write models as gammapy YAML with referenced files relative to the YAML file (or absolute).

    Parameters
    ----------
    models : `~gammapy.modeling.models.Models`
        Models to write (no covariance file).
    path : str or `~pathlib.Path`
        Output YAML file, written atomically.
    overwrite : bool
        Replace an existing file.
    """
    from gammapy.utils.scripts import to_yaml

    path = Path(path)
    data = portable_filenames(models.to_dict(), path.parent)
    with atomic_output(path, overwrite) as tmp:
        Path(tmp).write_text(to_yaml(data))
