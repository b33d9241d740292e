"""The ``gpsfast`` command line."""
import functools
import logging
import time

import astropy.units as u
import click
from astropy.coordinates import SkyCoord

from . import __version__
from .errors import GpsfastError

log = logging.getLogger(__name__)


def _user_errors(func):
    """Turn gpsfast's input errors into one-line click errors."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except GpsfastError as exc:
            raise click.ClickException(str(exc)) from None

    return wrapper


@click.group()
@click.version_option(__version__, prog_name="gpsfast")
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
def cli(verbose):
    """gpsfast: fast catalogue production for gamma-ray Galactic Plane Surveys."""
    level = {0: logging.WARNING, 1: logging.INFO}.get(verbose, logging.DEBUG)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


@cli.command()
@click.option("--out", "out", required=True, type=click.Path(file_okay=False), help="Output folder.")
@click.option(
    "--preset",
    type=click.Choice(["subtev", "postev", "both"], case_sensitive=False),
    default="both",
    show_default=True,
    help="Dataset preset(s): subtev = 0.05-1 TeV, postev = 1-100 TeV.",
)
@click.option("--width", type=float, default=10.0, show_default=True, help="Patch width in longitude (deg).")
@click.option("--height", type=float, default=6.0, show_default=True, help="Patch height in latitude (deg).")
@click.option("--glon", type=float, default=0.0, show_default=True, help="Patch centre longitude (deg).")
@click.option("--glat", type=float, default=0.0, show_default=True, help="Patch centre latitude (deg).")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed (population and counts).")
@click.option("--livetime", type=float, default=1.0, show_default=True, help="Livetime per pointing (h).")
@click.option(
    "--irf",
    type=click.Path(dir_okay=False),
    default=None,
    help="IRF FITS file (e.g. CTA prod5); analytic CTA-like IRFs if not given.",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing output folder.")
@_user_errors
def simulate(out, preset, width, height, glon, glat, seed, livetime, irf, overwrite):
    """Simulate a survey patch (datasets and true models) into OUT."""
    from .simulate import make_survey, sources_table, write_survey
    from .utils import check_writable_dir, refuse_existing

    out = check_writable_dir(out)
    refuse_existing(out, overwrite)
    start = time.perf_counter()
    center = SkyCoord(glon, glat, unit="deg", frame="galactic")
    datasets, models = make_survey(
        width=width * u.deg,
        height=height * u.deg,
        center=center,
        presets=preset.lower(),
        seed=seed,
        irf=irf,
        livetime=livetime * u.h,
        progress=True,
    )
    meta = {
        "width_deg": width,
        "height_deg": height,
        "glon_deg": glon,
        "glat_deg": glat,
        "seed": seed,
        "livetime_h": livetime,
        "irf": str(irf) if irf else "analytic CTA-like",
    }
    path = write_survey(out, datasets, models, meta=meta, overwrite=overwrite)
    n_sources = len(sources_table(models))
    click.echo(f"Simulated {width:g} x {height:g} deg around (l, b) = ({glon:g}, {glat:g}) deg, seed {seed}:")
    for dataset in datasets:
        energy = dataset.counts.geom.axes["energy"]
        click.echo(
            f"  {dataset.name}: {energy.edges[0]:.3g} - {energy.edges[-1]:.3g}, "
            f"{dataset.counts.geom.data_shape}, {int(dataset.counts.data.sum())} counts"
        )
    click.echo(f"  {n_sources} sources + large-scale diffuse; written to {path} in {time.perf_counter() - start:.1f} s")


@cli.command()
@click.argument("input_path", metavar="IN", type=click.Path(dir_okay=False))
@click.argument("output_path", metavar="OUT", type=click.Path(dir_okay=False))
@click.option("--overwrite", is_flag=True, help="Replace an existing output file.")
@click.option("--strict/--lenient", default=False, show_default=True,
              help="--strict: refuse the input at its first bad source; --lenient: convert every good source "
                   "and list each bad one (file, line, source, why).")
@_user_errors
def convert(input_path, output_path, overwrite, strict):
    """Convert sky models between ctools XML, gammapy YAML and the catalogue FITS table.

    The formats follow the extensions: .xml, .yaml/.yml, .fits/.fits.gz.
    """
    from .models import convert as convert_models

    click.echo(convert_models(input_path, output_path, overwrite=overwrite, strict=strict))


def _run(config_path, out, overwrite, **overrides):
    from .pipeline import load_config, run_pipeline

    config = load_config(config_path, output=out, **overrides)
    start = time.perf_counter()
    folder = run_pipeline(config, overwrite=overwrite)
    click.echo(f"Pipeline finished in {time.perf_counter() - start:.0f} s; outputs in {folder}")
    report = folder / "validation.json"
    if report.is_file():
        click.echo(f"Validation against the simulated truth: {report.read_text()}")


@cli.command()
@click.argument("config_path", metavar="[CONFIG]", required=False, type=click.Path(dir_okay=False))
@click.option("--out", default=None, type=click.Path(file_okay=False), help="Output folder (overrides the config).")
@click.option("--overwrite", is_flag=True, help="Start again in an output folder holding another run.")
@click.option("--print-config", is_flag=True, help="Print the full configuration (with defaults) and exit.")
@_user_errors
def run(config_path, out, overwrite, print_config):
    """Run the survey pipeline from a YAML configuration (the embedded demo without one).

    An interrupted run resumes where it stopped when run again with the same configuration.
    """
    if print_config:
        from .pipeline import load_config

        click.echo(load_config(config_path, output=out).to_yaml())
        return
    _run(config_path, out, overwrite)


@cli.command()
@click.option("--out", default="gpsfast-demo", show_default=True, type=click.Path(file_okay=False))
@click.option("--overwrite", is_flag=True, help="Start again in an output folder holding another run.")
@_user_errors
def demo(out, overwrite):
    """Run the pipeline on the embedded simulated 10 x 6 deg survey patch."""
    _run(None, out, overwrite)


@cli.command()
@click.argument("config_path", metavar="[CONFIG]", required=False, type=click.Path(dir_okay=False))
@click.option("--out", default=None, type=click.Path(file_okay=False), help="Output folder (overrides the config).")
@click.option("--glon-min", type=float, default=None, help="Strip start longitude (deg); input.glon - width/2.")
@click.option("--glon-max", type=float, default=None, help="Strip end longitude (deg); input.glon + width/2.")
@click.option("--roi-width", type=float, default=10.0, show_default=True, help="ROI width (deg).")
@click.option("--roi-overlap", type=float, default=2.0, show_default=True, help="ROI overlap (deg).")
@click.option("--n-jobs", type=int, default=None, help="ROIs in parallel (parallel.n_jobs by default).")
@_user_errors
def survey(config_path, out, glon_min, glon_max, roi_width, roi_overlap, n_jobs):
    """Run the pipeline over a strip of the plane in overlapping ROIs and merge the catalogues.

    Re-running the same command resumes: finished ROIs and stages are not redone.
    """
    from .pipeline import load_config, run_survey

    config = load_config(config_path, output=out)
    start = time.perf_counter()
    folder = run_survey(config, glon_min, glon_max, roi_width, roi_overlap, n_jobs)
    click.echo(f"Survey finished in {time.perf_counter() - start:.0f} s; outputs in {folder}")
    click.echo((folder / "survey.json").read_text())


def main():
    """Entry point of the ``gpsfast`` console script."""
    cli()
