"""On-disk checkpoint of the group fits: one JSON file per finished group, keyed by the inputs' fingerprint."""
import hashlib
import json
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..utils import write_text_atomic
from .tasks import GroupResult

__all__ = ["Checkpoint", "inputs_fingerprint"]


def _update_with_array(digest, array):
    array = np.ascontiguousarray(array)
    digest.update(f"{array.dtype.str}{array.shape}".encode())
    digest.update(array.data)


def _dataset_arrays(dataset):
    maps = [dataset.counts, dataset.exposure, dataset.background, dataset.mask_safe, dataset.mask_fit,
            getattr(dataset.psf, "psf_map", None), getattr(dataset.edisp, "edisp_map", None)]
    return [m.data for m in maps if m is not None]


def _tag(component):
    tag = getattr(component, "tag", "")
    return tag[0] if isinstance(tag, (list, tuple)) else str(tag)


def inputs_fingerprint(datasets, models, release):
    """Digest of what the group fits depend on: the datasets' content and geometry, the starting models.

    Parameters
    ----------
    datasets : `~gammapy.datasets.Datasets`
        Counts, exposure, background, masks, PSF and energy dispersion maps, and
        each map geometry's WCS, are hashed.
    models : `~gammapy.modeling.models.Models`
        Each model's name, component types and every parameter's value, unit,
        bounds and frozen flag are hashed.
    release : bool
        Release of the main source's shape.

    Returns
    -------
    digest : str
        32 hex digits.
    """
    digest = hashlib.blake2b(digest_size=16)
    for dataset in datasets:
        geom = dataset.counts.geom
        wcs = geom.wcs.to_header_string() if hasattr(geom, "wcs") else repr(geom)
        digest.update(f"{dataset.name}|{wcs}|{list(geom.axes.names)}".encode())
        for array in _dataset_arrays(dataset):
            _update_with_array(digest, array)
    for model in models:
        parts = [model.name, type(model).__name__]
        parts += [_tag(getattr(model, name, None)) for name in ("spatial_model", "spectral_model", "temporal_model")]
        parts += [(p.name, p.value, str(p.unit), p.min, p.max, p.frozen) for p in model.parameters]
        digest.update(repr(parts).encode())
    digest.update(repr(bool(release)).encode())
    return digest.hexdigest()


class Checkpoint:
    """Results of finished groups, one JSON file each, written atomically (`gpsfast.utils.write_text_atomic`).

    ``groups.json`` records the groups and the `inputs_fingerprint` of the run that
    wrote the folder: results are only resumed by a run with the same of both.
    """

    def __init__(self, path, groups, fingerprint):
        self.path = Path(path).expanduser()
        self.path.mkdir(parents=True, exist_ok=True)
        meta = self.path / "groups.json"
        expected = {"groups": [list(g.names) for g in groups], "inputs": fingerprint}
        if meta.is_file():
            if json.loads(meta.read_text()) != expected:
                raise InputError(f"checkpoint {self.path} was written for other groups or other inputs (datasets, "
                                 "starting models); use an empty folder")
        else:
            self._write(meta, expected)

    @staticmethod
    def _write(path, data):
        write_text_atomic(path, json.dumps(data))

    def _file(self, iteration, key):
        return self.path / f"iter{iteration:03d}-{key}.json"

    def save(self, result):
        self._write(self._file(result.iteration, result.key), result.to_dict())

    def load(self, iteration, groups):
        done = {}
        for group in groups:
            path = self._file(iteration, group.key)
            if path.is_file():
                done[group.key] = GroupResult.from_dict(json.loads(path.read_text()))
        return done
