"""The ``gpsfast`` command line.

Every error ends the command with one line on stderr (``Error: ...``) and exit
status 1 (130 when interrupted); ``-v`` (before or after the command name) also
shows the traceback of errors that are not gpsfast's own.
"""
import errno
import functools
import logging
import math
import sys
import time

import astropy.units as u
import click
from astropy.coordinates import SkyCoord

from . import __version__
from .errors import GpsfastError

log = logging.getLogger(__name__)


RESUME_HINT = "what was written before is kept: run the same command again to resume"


def _one_line(text):
    return " ".join(str(text).split())


def _os_error(exc):
    where = f" ({exc.filename})" if exc.filename else ""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"No space left on the device{where}: {RESUME_HINT} once there is space"
    return f"{exc.strerror or exc}{where}"


def _verbosity():
    ctx = click.get_current_context(silent=True)
    return 0 if ctx is None else ctx.find_root().ensure_object(dict).get("verbose", 0)


def _set_verbosity(verbose):
    level = {0: logging.WARNING, 1: logging.INFO}.get(verbose, logging.DEBUG)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if verbose:  # also when logging was configured before (e.g. -v after the command name)
        logging.getLogger().setLevel(level)


def _user_errors(func):
    """Turn every error into a one-line click error (the traceback with -v for errors not gpsfast's own)."""

    @click.option("-v", "--verbose", "command_verbose", count=True, help="More log output; tracebacks of bugs.")
    @functools.wraps(func)
    def wrapper(*args, command_verbose=0, **kwargs):
        if command_verbose:
            obj = click.get_current_context().find_root().ensure_object(dict)
            obj["verbose"] = obj.get("verbose", 0) + command_verbose
            _set_verbosity(obj["verbose"])
        try:
            return func(*args, **kwargs)
        except GpsfastError as exc:
            raise click.ClickException(_one_line(exc)) from None
        except KeyboardInterrupt:
            click.echo(f"Interrupted: {RESUME_HINT}", err=True)
            sys.exit(130)
        except OSError as exc:
            if _verbosity():
                raise
            raise click.ClickException(_one_line(_os_error(exc))) from None
        except Exception as exc:  # noqa: BLE001  a bug: one line, the traceback with -v
            if _verbosity():
                raise
            raise click.ClickException(
                _one_line(f"unexpected {type(exc).__name__}: {exc} (a gpsfast bug: run with -v for the traceback "
                          "and report it)")) from None

    return wrapper


class _Finite(click.FloatRange):
    """A float option in a range that also refuses NaN and infinities."""

    name = "finite float range"

    def convert(self, value, param, ctx):
        value = super().convert(value, param, ctx)
        if not math.isfinite(value):
            self.fail(f"{value} is not a finite number.", param, ctx)
        return value


@click.group()
@click.version_option(__version__, prog_name="gpsfast")
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug); tracebacks of bugs.")
@click.pass_context
def cli(ctx, verbose):
    """gpsfast: fast catalogue production for gamma-ray Galactic Plane Surveys."""
    ctx.ensure_object(dict)["verbose"] = verbose
    _set_verbosity(verbose)


@cli.command()
@click.option("--out", "out", required=True, type=click.Path(file_okay=False), help="Output folder.")
@click.option(
    "--preset",
    type=click.Choice(["subtev", "postev", "both"], case_sensitive=False),
    default="both",
    show_default=True,
    help="Dataset preset(s): subtev = 0.05-1 TeV, postev = 1-100 TeV.",
)
@click.option("--width", type=_Finite(0, 360, min_open=True), default=10.0, show_default=True,
              help="Patch width in longitude (deg).")
@click.option("--height", type=_Finite(0, 180, min_open=True), default=6.0, show_default=True,
              help="Patch height in latitude (deg).")
@click.option("--glon", type=_Finite(-360, 360), default=0.0, show_default=True, help="Patch centre longitude (deg).")
@click.option("--glat", type=_Finite(-90, 90), default=0.0, show_default=True, help="Patch centre latitude (deg).")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Random seed (population and counts).")
@click.option("--livetime", type=_Finite(0, None, min_open=True), default=1.0, show_default=True,
              help="Livetime per pointing (h).")
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
    click.echo(f"Pipeline finished in {time.perf_counter() - start:.0f} s; {_sources_line(folder)}; outputs in "
               f"{folder}")
    report = folder / "validation.json"
    if report.is_file():
        click.echo(f"Validation against the simulated truth: {report.read_text()}")


def _sources_line(folder):
    """``N sources in catalogue.fits``, or that none was found."""
    import yaml

    data = yaml.safe_load((folder / "models.yaml").read_text()) or {}
    n_sources = len(data.get("components") or [])
    if not n_sources:
        return "no source found (empty models.yaml, no catalogue.fits)"
    return f"{n_sources} source{'s' if n_sources > 1 else ''} in catalogue.fits"


OVERWRITE_HELP = "Start again in an output folder holding another run: its outputs are deleted first."


@cli.command()
@click.argument("config_path", metavar="[CONFIG]", required=False, type=click.Path(dir_okay=False))
@click.option("--out", default=None, type=click.Path(file_okay=False), help="Output folder (overrides the config).")
@click.option("--overwrite", is_flag=True, help=OVERWRITE_HELP)
@click.option("--print-config", is_flag=True, help="Print the full configuration (with defaults) and exit.")
@_user_errors
def run(config_path, out, overwrite, print_config):
    """Run the survey pipeline from a YAML configuration (the embedded demo without one).

    An interrupted run resumes where it stopped when run again with the same configuration.
    A folder holding a run of another configuration is refused (unless --overwrite);
    a folder in use by another run is refused at once.
    """
    if print_config:
        from .pipeline import load_config

        click.echo(load_config(config_path, output=out).to_yaml())
        return
    _run(config_path, out, overwrite)


@cli.command()
@click.option("--out", default="gpsfast-demo", show_default=True, type=click.Path(file_okay=False))
@click.option("--overwrite", is_flag=True, help=OVERWRITE_HELP)
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
@click.option("--overwrite", is_flag=True, help=OVERWRITE_HELP)
@_user_errors
def survey(config_path, out, glon_min, glon_max, roi_width, roi_overlap, n_jobs, overwrite):
    """Run the pipeline over a strip of the plane in overlapping ROIs and merge the catalogues.

    Re-running the same command resumes: finished ROIs and stages are not redone. A
    folder holding a survey with other settings is refused (unless --overwrite).
    """
    from .pipeline import load_config, run_survey

    config = load_config(config_path, output=out)
    start = time.perf_counter()
    folder = run_survey(config, glon_min, glon_max, roi_width, roi_overlap, n_jobs, overwrite=overwrite)
    click.echo(f"Survey finished in {time.perf_counter() - start:.0f} s; {_sources_line(folder)}; outputs in "
               f"{folder}")
    click.echo((folder / "survey.json").read_text())


def main():
    """Entry point of the ``gpsfast`` console script."""
    cli()
