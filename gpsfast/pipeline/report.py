"""The last stages of a pipeline run: validation against the truth (``validation.json``) and the PNG figures."""
import json
import logging

import astropy.units as u
import numpy as np
from astropy.table import Table
from gammapy.estimators import FluxMaps

from ..accelerate import accelerated
from ..models import accelerate_models
from ..simulate import sources_table
from ..utils import atomic_output, write_atomic, write_text_atomic
from .modelling import match_catalogue

__all__ = ["stage_validation", "stage_plots"]

log = logging.getLogger(__name__)


def _expected_significances(datasets, truth, names):
    """Best expected significance of each true source over the datasets, in a 0.2 deg disk."""
    from gammapy.stats import CashCountsStatistic

    best = np.zeros(len(names))
    accelerate_models(truth)
    with accelerated():
        for dataset in datasets:
            dataset.models = truth
            npred = dataset.npred().data
            image = dataset.counts.geom.to_image().get_coord().skycoord
            safe = dataset.mask_safe.data if dataset.mask_safe is not None else np.ones(npred.shape, dtype=bool)
            for i, name in enumerate(names):
                mask = safe & (image.separation(truth[name].spatial_model.position) < 0.2 * u.deg)
                signal = dataset.npred_signal(model_names=[name]).data[mask].sum()
                background = npred[mask].sum() - signal
                best[i] = max(best[i], float(CashCountsStatistic(background + signal, background).sqrt_ts))
    return best


def _false_seeds(seeds, pairs):
    """Number of seeds without a true source: seed names absent from the truth associations ``pairs``."""
    associated = {str(name).strip() for name in pairs["seed"]}
    return sum(str(name).strip() not in associated for name in seeds.table["name"])


def _false_rate(n_false, datasets):
    """Seeds without a true source per square degree of the largest dataset map."""
    area = max(float(np.sum(d.counts.geom.to_image().solid_angle().to_value("deg2"))) for d in datasets)
    return n_false / area


def _flux(model, energy=(1 * u.TeV, 100 * u.TeV)):
    return float(model.spectral_model.integral(*energy).to_value("cm-2 s-1"))


def _completeness_vs_flux(table, n_bins=5):
    """Fraction of the true sources in the catalogue per bin of true 1-100 TeV flux (log bins)."""
    flux = np.asarray(table["flux_postev"], dtype=float)
    positive = flux > 0
    if not positive.any():
        return []
    edges = np.geomspace(flux[positive].min(), flux[positive].max() * (1 + 1e-9), n_bins + 1)
    rows = []
    for low, high in zip(edges[:-1], edges[1:]):
        inside = (flux >= low) & (flux < high)
        rows.append({"flux_min": float(low), "flux_max": float(high), "n_true": int(inside.sum()),
                     "n_found": int(np.sum(table["in_catalogue"][inside]))})
    return rows


def _catalogue_report(truth, models, table, bright):
    """Completeness, positions and fluxes of the catalogue against the true sources above 5 sigma."""
    pairs = match_catalogue(truth, models)
    detected = set(pairs["source"])
    table["in_catalogue"] = [name in detected for name in table["name"]]
    n_false = len(models) - len(pairs)
    pairs = pairs[[name in set(table["name"][bright]) for name in pairs["source"]]]
    report = {
        "n_sources": len(models),
        "false_sources": n_false,
        "completeness_vs_flux": _completeness_vs_flux(table),
        "completeness_above_5_sigma": float(np.mean(table["in_catalogue"][bright])) if bright.any() else None,
        "median_position_offset_deg": float(np.median(pairs["separation"])) if len(pairs) else None,
        "position_bias_deg": float(np.hypot(np.mean(pairs["dlon"]), np.mean(pairs["dlat"]))) if len(pairs) else None,
        "median_flux_ratio": float(np.median([_flux(models[m]) / _flux(truth[s])
                                              for s, m in zip(pairs["source"], pairs["model"])]))
        if len(pairs) else None,
    }
    return report, pairs


def stage_validation(run):
    truth = run.truth()
    if truth is None:
        log.info("No truth given: validation skipped")
        return
    datasets = run.datasets()
    table = sources_table(truth)
    table["expected_sqrt_ts"] = _expected_significances(datasets, truth, list(table["name"]))
    seed_pairs = Table.read(run.folder / "associations_truth.ecsv")
    table["detected"] = [name in set(seed_pairs["source"]) for name in table["name"]]
    bright = np.asarray(table["expected_sqrt_ts"] >= 5)
    seeds = run.seeds()
    best = seed_pairs[seed_pairs["rank_source"] == 1]
    catalogue, pairs = _catalogue_report(truth, run.models("models.yaml"), table, bright)
    write_atomic(pairs, run.folder / "validation_matches.ecsv", overwrite=True)
    write_atomic(table, run.folder / "validation_sources.ecsv", overwrite=True)
    n_false = _false_seeds(seeds, seed_pairs)
    report = {
        "n_true_sources": len(table),
        "n_true_above_5_sigma": int(bright.sum()),
        "catalogue": catalogue,
        "seeds": {
            "n_seeds": len(seeds),
            "completeness_above_5_sigma": float(np.mean(table["detected"][bright])) if bright.any() else None,
            "false_seeds": n_false,
            "false_seeds_per_deg2": _false_rate(n_false, datasets),
            "median_position_offset_deg": float(np.median(best["separation"])) if len(best) else None,
        },
    }
    write_text_atomic(run.folder / "validation.json", json.dumps(report, indent=2))
    log.info("Validation: %s", report)


def _major_log_labels_only(*axes):
    """No labels on the minor ticks of log axes (over less than a decade matplotlib labels them, overlapping)."""
    from matplotlib.ticker import LogFormatterSciNotation, NullFormatter

    for axis in axes:
        axis.set_major_formatter(LogFormatterSciNotation())
        axis.set_minor_formatter(NullFormatter())


def _plot_flux_recovery(run, plt):
    """Catalogue flux (1-100 TeV) of each matched true source above 5 sigma vs the true flux."""
    path = run.folder / "validation_matches.ecsv"
    if not path.is_file():
        return
    pairs = Table.read(path)
    if not len(pairs):
        return
    truth, models = run.truth(), run.models("models.yaml")
    true_flux = [_flux(truth[s]) for s in pairs["source"]]
    fitted_flux = [_flux(models[m]) for m in pairs["model"]]
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.loglog(true_flux, fitted_flux, "o")
    limits = [min(true_flux + fitted_flux), max(true_flux + fitted_flux)]
    ax.plot(limits, limits, "k--", lw=1)
    ax.set_xlabel("true flux 1-100 TeV (cm-2 s-1)")
    ax.set_ylabel("catalogue flux 1-100 TeV (cm-2 s-1)")
    ax.set_title("recovered vs true flux")
    _major_log_labels_only(ax.xaxis, ax.yaxis)
    _savefig(fig, run.folder / "flux_recovery.png", bbox_inches="tight")
    plt.close(fig)


def _plot_completeness(run, plt):
    """Completeness of the catalogue vs true flux, from ``validation.json``."""
    path = run.folder / "validation.json"
    if not path.is_file():
        return
    rows = json.loads(path.read_text())["catalogue"]["completeness_vs_flux"]
    rows = [row for row in rows if row["n_true"]]
    if not rows:
        return
    center = [np.sqrt(row["flux_min"] * row["flux_max"]) for row in rows]
    fraction = [row["n_found"] / row["n_true"] for row in rows]
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.semilogx(center, fraction, "o-")
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("true flux 1-100 TeV (cm-2 s-1)")
    ax.set_ylabel("fraction in the catalogue")
    ax.set_title("completeness vs flux")
    _major_log_labels_only(ax.xaxis)
    _savefig(fig, run.folder / "completeness.png", bbox_inches="tight")
    plt.close(fig)


def _savefig(fig, path, **kwargs):
    with atomic_output(path, overwrite=True) as tmp:
        fig.savefig(tmp, dpi=100, **kwargs)


def _plot_sources(ax, models):
    for model in models:
        position = model.position.galactic
        ax.plot(position.l.deg, position.b.deg, "+", color="cyan", ms=8, transform=ax.get_transform("galactic"))


def stage_plots(run):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if run.truth() is not None:
        _plot_flux_recovery(run, plt)
        _plot_completeness(run, plt)
    seeds, models = run.seeds(), run.models("models.yaml")
    for label, maps in run.significance_maps().items():
        fig = plt.figure(figsize=(10, 5))
        ax = fig.add_subplot(projection=maps["sqrt_ts"].geom.to_image().wcs)
        seeds.plot(maps["sqrt_ts"], ax=ax, vmin=-3, vmax=10)
        _plot_sources(ax, models)
        ax.set_title(f"sqrt_ts {label}: {len(seeds)} seeds (circles), {len(models)} fitted sources (+)")
        _savefig(fig, run.folder / f"significance_{label}.png")
        plt.close(fig)
        residual = FluxMaps.read(run.maps_folder / f"residual_{label}.fits")["sqrt_ts"]
        fig = plt.figure(figsize=(10, 5))
        ax = fig.add_subplot(projection=residual.geom.to_image().wcs)
        residual.plot(ax=ax, add_cbar=True, vmin=-5, vmax=5, cmap="RdBu_r")
        ax.set_title(f"residual sqrt_ts {label} (catalogue models subtracted)")
        _savefig(fig, run.folder / f"residual_{label}.png")
        plt.close(fig)
