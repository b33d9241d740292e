"""Seed classification and ranking with scikit-learn, trained on simulated surveys."""
import logging
import re
from pathlib import Path

import joblib
import numpy as np
import sklearn
from astropy.table import Table
from gammapy.modeling.models import PointSpatialModel, ShellSpatialModel
from sklearn.ensemble import RandomForestClassifier
from sklearn.impute import SimpleImputer
from sklearn.pipeline import make_pipeline

from .._version import __version__
from ..errors import InputError
from .associate import associate
from .catalog import SeedCatalog

__all__ = ["FEATURES", "CLASSES", "seed_features", "seed_labels", "SeedClassifier"]

log = logging.getLogger(__name__)

FEATURES = (
    "sqrt_ts",
    "sqrt_ts_r0.1",
    "sqrt_ts_r0.2",
    "ratio_r0.2_r0.1",
    "sqrt_ts_subtev",
    "sqrt_ts_postev",
    "n_maps",
    "radius",
    "n_children",
    "has_parent",
    "is_hough",
    "index",
)
"""Feature names, in the order of the feature matrix (saved with a trained classifier)."""

CLASSES = ("spurious", "point", "extended", "shell")
"""Seed classes: not associated with a true source, or the type of the source it is associated with."""

_LABEL = re.compile(r"^sqrt_ts_(?P<dataset>.+)_r(?P<radius>[0-9.]+)$")


def _map_columns(table):
    """``{column: (dataset, radius)}`` for the ``sqrt_ts_<dataset>_r<radius>`` columns."""
    columns = {}
    for name in table.colnames:
        match = _LABEL.match(name)
        if match:
            columns[name] = (match["dataset"], float(match["radius"]))
    return columns


def _max_over(table, columns):
    if not columns:
        return np.full(len(table), np.nan)
    values = np.column_stack([np.asarray(table[c], dtype=float) for c in columns])
    best = np.max(np.where(np.isfinite(values), values, -np.inf), axis=1, initial=-np.inf)
    return np.where(np.isfinite(best), best, np.nan)


def seed_features(seeds):
    """Feature matrix of seeds.

    Built from the seed catalogue: the significance that found the seed, the
    highest significance at each correlation radius and in each dataset (from the
    ``sqrt_ts_<dataset>_r<radius>`` columns), their ratio, the number of maps that
    found it, its size, nesting, method and, when an ``index`` column is present
    (from an index map), its spectral index. Missing values are NaN (the
    classifier handles them).

    Parameters
    ----------
    seeds : `SeedCatalog` or `~astropy.table.Table`
        Seeds.

    Returns
    -------
    features : `~numpy.ndarray`, shape (n_seeds, len(FEATURES))
    """
    table = seeds.table if isinstance(seeds, SeedCatalog) else seeds
    columns = _map_columns(table)
    by_radius = {r: [c for c, (_, rr) in columns.items() if np.isclose(rr, r)] for r in (0.1, 0.2)}
    by_dataset = {d: [c for c, (dd, _) in columns.items() if dd == d] for d in ("subtev", "postev")}
    r01, r02 = _max_over(table, by_radius[0.1]), _max_over(table, by_radius[0.2])
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = r02 / r01
    origin = np.asarray(table["origin"]) if "origin" in table.colnames else np.full(len(table), "")
    parent = np.asarray(table["parent"]) if "parent" in table.colnames else np.full(len(table), "")
    values = {
        "sqrt_ts": np.asarray(table["sqrt_ts"], dtype=float),
        "sqrt_ts_r0.1": r01,
        "sqrt_ts_r0.2": r02,
        "ratio_r0.2_r0.1": ratio,
        "sqrt_ts_subtev": _max_over(table, by_dataset["subtev"]),
        "sqrt_ts_postev": _max_over(table, by_dataset["postev"]),
        "n_maps": np.array([len([o for o in str(s).split(",") if o]) for s in origin], dtype=float),
        "radius": np.asarray(table["radius"], dtype=float),
        "n_children": np.asarray(table["n_children"], dtype=float) if "n_children" in table.colnames
        else np.zeros(len(table)),
        "has_parent": np.array([bool(p) for p in parent], dtype=float),
        "is_hough": (np.asarray(table["method"]) == "hough").astype(float) if "method" in table.colnames
        else np.zeros(len(table)),
        "index": np.asarray(table["index"], dtype=float) if "index" in table.colnames else np.full(len(table), np.nan),
    }
    return np.column_stack([values[name] for name in FEATURES]) if len(table) else np.zeros((0, len(FEATURES)))


def _source_class(model):
    spatial = getattr(model, "spatial_model", None)
    if isinstance(spatial, PointSpatialModel):
        return "point"
    if isinstance(spatial, ShellSpatialModel):
        return "shell"
    return "extended"


def seed_labels(seeds, truth, threshold=0.1, min_radius="0.1 deg"):
    """Class of each seed from its association with the true sources.

    Parameters
    ----------
    seeds : `SeedCatalog`
        Seeds.
    truth : `~gammapy.modeling.models.Models`
        True source models of the simulated survey.
    threshold : float
        Minimum overlap fraction of an association.
    min_radius : str or `~astropy.units.Quantity`
        Smallest radius of seeds and sources (e.g. the PSF size).

    Returns
    -------
    labels : `~numpy.ndarray` of str
        ``"spurious"`` for a seed without a true source, else the best associated
        source's class (``point``, ``extended``, ``shell``).
    """
    pairs = associate(seeds, truth, threshold=threshold, min_radius=min_radius)
    best = {row["seed"]: row["source"] for row in pairs if row["rank_seed"] == 1}
    return np.array([_source_class(truth[best[n]]) if n in best else "spurious" for n in seeds.table["name"]])


class SeedClassifier:
    """Real-vs-spurious and point / extended / shell classification of seeds, and their ranking.

    Two scikit-learn random forests (missing features imputed with the training
    median) learn from seed catalogues of simulated surveys labelled by
    association with the truth (`seed_labels`). `rank` orders seeds by
    ``p_real * sqrt_ts``: the seeds to model first.

    Parameters
    ----------
    random_state : int
        Seed of the classifiers.
    **kwargs : dict
        Passed to `~sklearn.ensemble.RandomForestClassifier`.
    """

    def __init__(self, random_state=0, **kwargs):
        kwargs.setdefault("n_estimators", 200)
        kwargs.setdefault("min_samples_leaf", 2)
        kwargs.setdefault("class_weight", "balanced")
        self.real = self._pipeline(random_state, kwargs)
        self.kind = self._pipeline(random_state, kwargs)
        self.features = FEATURES

    @staticmethod
    def _pipeline(random_state, kwargs):
        return make_pipeline(
            SimpleImputer(strategy="median", keep_empty_features=True),
            RandomForestClassifier(random_state=random_state, **kwargs),
        )

    def fit(self, catalogs, labels):
        """Train on seed catalogues and their labels.

        Parameters
        ----------
        catalogs : list of `SeedCatalog`
            Seeds of simulated surveys.
        labels : list of array of str
            Their classes (`seed_labels`), one array per catalogue.

        Returns
        -------
        self : `SeedClassifier`
        """
        features = np.vstack([seed_features(c) for c in catalogs])
        labels = np.concatenate([np.asarray(lab) for lab in labels])
        if len(labels) != len(features):
            raise InputError(f"{len(features)} seeds but {len(labels)} labels")
        is_real = labels != "spurious"
        if is_real.all() or not is_real.any():
            raise InputError("Training needs both real and spurious seeds")
        self.real.fit(features, is_real)
        self.kind.fit(features[is_real], labels[is_real])
        log.info("Trained on %d seeds (%d real)", len(labels), is_real.sum())
        return self

    def predict(self, seeds):
        """Probability of being real and the most likely class of each seed.

        Parameters
        ----------
        seeds : `SeedCatalog`
            Seeds.

        Returns
        -------
        table : `~astropy.table.Table`
            Columns ``name``, ``p_real``, ``class`` (``spurious`` where ``p_real < 0.5``).
        """
        features = seed_features(seeds)
        table = Table({"name": np.asarray(seeds.table["name"])})
        if not len(features):
            table["p_real"] = np.zeros(0)
            table["class"] = np.zeros(0, dtype="U16")
            return table
        p_real = self.real.predict_proba(features)[:, list(self.real.classes_).index(True)]
        kind = self.kind.predict(features).astype("U16")
        table["p_real"] = p_real
        table["class"] = np.where(p_real >= 0.5, kind, "spurious")
        return table

    def rank(self, seeds):
        """Add ``p_real``, ``class``, ``score`` (= p_real x sqrt_ts) and ``rank`` columns to a catalogue.

        Parameters
        ----------
        seeds : `SeedCatalog`
            Seeds, modified in place and sorted by decreasing score.

        Returns
        -------
        seeds : `SeedCatalog`
        """
        prediction = self.predict(seeds)
        seeds.table["p_real"] = prediction["p_real"]
        seeds.table["class"] = prediction["class"]
        seeds.table["score"] = prediction["p_real"] * np.asarray(seeds.table["sqrt_ts"], dtype=float)
        seeds.table.sort("score", reverse=True)
        seeds.table["rank"] = np.arange(1, len(seeds) + 1)
        return seeds

    def save(self, filename):
        """Save with joblib, with the feature list and versions checked by `load`."""
        payload = {
            "gpsfast_version": __version__,
            "sklearn_version": sklearn.__version__,
            "features": list(self.features),
            "real": self.real,
            "kind": self.kind,
        }
        joblib.dump(payload, Path(filename))

    @classmethod
    def load(cls, filename):
        """Load a classifier saved by `save`.

        Raises
        ------
        InputError
            If the file is missing, not a gpsfast classifier, corrupted, or made
            with other features or another scikit-learn version.
        """
        path = Path(filename)
        if not path.is_file():
            raise InputError(f"Seed classifier file not found: {path}")
        try:
            payload = joblib.load(path)
        except Exception as exc:
            raise InputError(f"Corrupted seed classifier file {path} ({type(exc).__name__}: {exc})") from None
        if not isinstance(payload, dict) or not {"features", "real", "kind", "sklearn_version"} <= set(payload):
            raise InputError(f"{path} is not a gpsfast seed classifier")
        if list(payload["features"]) != list(FEATURES):
            raise InputError(
                f"Seed classifier {path} uses features {payload['features']}, this gpsfast uses {list(FEATURES)}: "
                "retrain it"
            )
        if payload["sklearn_version"] != sklearn.__version__:
            raise InputError(
                f"Seed classifier {path} was made with scikit-learn {payload['sklearn_version']}, "
                f"this is {sklearn.__version__}: retrain it"
            )
        classifier = cls()
        classifier.real, classifier.kind = payload["real"], payload["kind"]
        return classifier
