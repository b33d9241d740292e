"""Seed classification and ranking, trained on simulated surveys and checked on a held-out patch."""
import joblib
import numpy as np
import pytest

from gpsfast.detect import FEATURES, SeedClassifier, find_seeds, seed_features, seed_labels, significance_maps
from gpsfast.errors import InputError


def simulated_seeds(survey_cache, seed):
    datasets, models = survey_cache(4, 2, seed=seed, density=3)
    maps = significance_maps(datasets)
    seeds = find_seeds(maps, threshold=3.5)
    return seeds, seed_labels(seeds, models)


@pytest.fixture(scope="module")
def training(survey_cache):
    return [simulated_seeds(survey_cache, seed) for seed in (11, 12, 13)]


@pytest.fixture(scope="module")
def held_out(survey_cache):
    return simulated_seeds(survey_cache, 14)


@pytest.fixture(scope="module")
def classifier(training):
    return SeedClassifier().fit([s for s, _ in training], [labels for _, labels in training])


def test_features_shape_and_names(held_out):
    seeds, _ = held_out
    features = seed_features(seeds)
    assert features.shape == (len(seeds), len(FEATURES))
    column = FEATURES.index("sqrt_ts_r0.1")
    expected = np.max([seeds.table[c] for c in seeds.table.colnames if c.endswith("_r0.1")], axis=0)
    np.testing.assert_allclose(features[:, column], expected)
    assert np.all(np.isnan(features[:, FEATURES.index("index")])), "no index map given: missing, not made up"


def test_labels_from_truth(training):
    labels = np.concatenate([labels for _, labels in training])
    assert {"point", "extended", "spurious"} <= set(labels)


def test_held_out_precision_recall(classifier, held_out):
    seeds, labels = held_out
    prediction = classifier.predict(seeds)
    real = labels != "spurious"
    predicted = prediction["p_real"] >= 0.5
    true_positive = np.count_nonzero(predicted & real)
    precision = true_positive / max(np.count_nonzero(predicted), 1)
    recall = true_positive / max(np.count_nonzero(real), 1)
    assert precision >= 0.9 and recall >= 0.9, (precision, recall)
    assert set(prediction["class"]) <= {"spurious", "point", "extended", "shell"}


def test_rank_orders_by_score(classifier, held_out):
    seeds, _ = held_out
    ranked = classifier.rank(seeds)
    score = np.asarray(ranked.table["score"])
    assert np.all(np.diff(score) <= 0)
    assert list(ranked.table["rank"]) == list(range(1, len(ranked) + 1))
    np.testing.assert_allclose(score, ranked.table["p_real"] * ranked.table["sqrt_ts"])


def test_save_load_roundtrip(tmp_path, classifier, held_out):
    seeds, _ = held_out
    path = tmp_path / "classifier.joblib"
    classifier.save(path)
    loaded = SeedClassifier.load(path)
    np.testing.assert_array_equal(loaded.predict(seeds)["p_real"], classifier.predict(seeds)["p_real"])


def test_load_errors(tmp_path, classifier):
    with pytest.raises(InputError, match="not found"):
        SeedClassifier.load(tmp_path / "missing.joblib")
    corrupted = tmp_path / "corrupted.joblib"
    corrupted.write_bytes(b"not a pickle at all")
    with pytest.raises(InputError, match="Corrupted seed classifier file"):
        SeedClassifier.load(corrupted)
    path = tmp_path / "classifier.joblib"
    classifier.save(path)
    payload = joblib.load(path)
    payload["sklearn_version"] = "0.1"
    joblib.dump(payload, tmp_path / "old.joblib")
    with pytest.raises(InputError, match="scikit-learn 0.1.*retrain"):
        SeedClassifier.load(tmp_path / "old.joblib")
    payload["features"] = ["sqrt_ts"]
    joblib.dump(payload, tmp_path / "other.joblib")
    with pytest.raises(InputError, match="uses features.*retrain"):
        SeedClassifier.load(tmp_path / "other.joblib")
    joblib.dump({"something": 1}, tmp_path / "foreign.joblib")
    with pytest.raises(InputError, match="not a gpsfast seed classifier"):
        SeedClassifier.load(tmp_path / "foreign.joblib")


def test_training_needs_both_classes(training):
    seeds, labels = training[0]
    with pytest.raises(InputError, match="both real and spurious"):
        SeedClassifier().fit([seeds], [np.full(len(seeds), "point")])
