"""Spectra in circular regions, without ``MapDataset.to_spectrum_dataset``.

`extract_spectra` returns the same `~gammapy.datasets.SpectrumDataset` objects as
``[dataset.to_spectrum_dataset(region) for region in regions]``, but sums all
regions with compiled kernels (`gpsfast.kernels.aperture.aperture_pixels`,
`gpsfast.kernels.aperture.pixel_sums`) instead of building a region mask over
the whole map for each region; `extract_spectra_table` gives the same numbers as
a table.
"""
import astropy.units as u
import numpy as np
from astropy.table import Table
from gammapy.datasets import Datasets

from gpsfast import _compat
from gpsfast.errors import InputError
from gpsfast.spectra.build import Builder, random_names
from gpsfast.spectra.reduce import check_dataset, irf_region_maps, reduce_dataset
from gpsfast.spectra.seeds import Seeds, parse_regions

__all__ = ["extract_spectra", "extract_spectra_table"]


def extract_spectra(dataset, regions, containment_correction=False, names=None):
    """Extract the spectra of many circular regions of a map dataset.

    Same result as ``Datasets([dataset.to_spectrum_dataset(r) for r in regions])``:
    counts and background summed over the region pixels with ``mask_safe``,
    exposure averaged over the region pixels, ``mask_safe`` and ``mask_fit``
    true where any region pixel is, energy dispersion at the region centre (the
    nearest IRF map pixel), gti and meta_table of the dataset; the PSF and the
    models are not carried over. For a `~gammapy.datasets.MapDatasetOnOff` the
    result is a `~gammapy.datasets.SpectrumDatasetOnOff` with ``counts_off``
    summed, ``acceptance`` averaged over the safe region pixels and
    ``acceptance_off`` preserving the excess, as gammapy does.

    Parameters
    ----------
    dataset : `~gammapy.datasets.MapDataset` or `~gammapy.datasets.MapDatasetOnOff`
        Map dataset on a `~gammapy.maps.WcsGeom`.
    regions : list of `~regions.CircleSkyRegion` or `~astropy.table.Table`
        Regions, or a seed table with columns ``ra``/``dec`` (ICRS) or
        ``glon``/``glat`` (Galactic) and ``radius`` (degrees unless the columns
        carry units), optionally ``name``.
    containment_correction : bool, optional
        Multiply the exposure by the PSF containment in the region (needs a
        `~gammapy.irf.PSFMap`), as gammapy does. Default is False.
    names : list of str, optional
        Dataset names. Default: the ``name`` column of a seed table, else
        random names as gammapy gives.

    Returns
    -------
    datasets : `~gammapy.datasets.Datasets`
        One `~gammapy.datasets.SpectrumDataset` (or ``SpectrumDatasetOnOff``) per region.

    Raises
    ------
    gpsfast.errors.InputError
        For a region not fully inside the counts map or where the mask is not
        spatially uniform (gammapy raises a plain ``Exception`` there), and for
        invalid inputs.
    """
    check_dataset(dataset, containment_correction)
    names = _names(regions, names)
    seeds = Seeds(parse_regions(regions))
    regions = seeds.regions
    if names is not None and len(names) != len(regions):
        raise InputError(f"got {len(names)} names for {len(regions)} regions")
    sums = reduce_dataset(dataset, seeds)
    edisps = (
        irf_region_maps(dataset.edisp, seeds)
        if dataset.edisp is not None else [None] * len(regions)
    )
    builder = Builder(dataset, sums, containment_correction)
    names = random_names(len(regions)) if names is None else names
    metas = _compat.dataset_metas(len(regions))
    return Datasets([
        builder.build(s, region, names[s], edisps[s], metas[s])
        for s, region in enumerate(regions)
    ])


def _names(regions, names):
    if names is not None:
        return [str(n) for n in names]
    if isinstance(regions, Table) and "name" in regions.colnames:
        return [str(n) for n in regions["name"]]
    return None


def extract_spectra_table(dataset, regions):
    """Spectra of many circular regions of a map dataset, as a table.

    The numbers are those of `extract_spectra` (and of gammapy's
    ``to_spectrum_dataset``), without building gammapy objects.

    Parameters
    ----------
    dataset : `~gammapy.datasets.MapDataset` or `~gammapy.datasets.MapDatasetOnOff`
        Map dataset on a `~gammapy.maps.WcsGeom`.
    regions : list of `~regions.CircleSkyRegion` or `~astropy.table.Table`
        As in `extract_spectra`.

    Returns
    -------
    table : `~astropy.table.Table`
        One row per region: ``name`` (when given in a seed table), ``lon``,
        ``lat`` (deg, in the frame of each region centre), ``radius`` (deg),
        ``npix`` (pixels in the region), and per reconstructed energy bin
        ``counts``, ``background`` and ``excess = counts - background``
        (``mask_safe`` applied), ``mask_safe``; per true energy bin the mean
        ``exposure``. For a ``MapDatasetOnOff`` ``background`` is alpha times
        ``counts_off``, and ``counts_off`` is added. ``meta`` holds the energy
        bin edges in TeV (``energy_edges``, ``energy_true_edges``).
    """
    check_dataset(dataset, False)
    names = _names(regions, None)
    seeds = Seeds(parse_regions(regions))
    sums = reduce_dataset(dataset, seeds)
    table = Table()
    if names is not None:
        table["name"] = names
    for name in ("lon", "lat", "radius"):
        table[name] = u.Quantity(np.empty(len(seeds)), u.deg)
    for group in seeds.groups:
        if group.lon is None:
            sph = group.centers.spherical
            lon, lat = sph.lon, sph.lat
        else:
            lon, lat = group.lon, group.lat
        table["lon"][group.members] = lon.wrap_at(360 * u.deg).to(u.deg)
        table["lat"][group.members] = lat.to(u.deg)
        table["radius"][group.members] = group.radius.to(u.deg)
    table["npix"] = sums["n_pix"].astype(np.int64)
    counts = sums["counts"].astype(dataset.counts.data.dtype)
    table["counts"] = counts
    if "background" in sums:
        background = sums["background"].astype(np.float32)
    elif "alpha_counts_off" in sums:
        background = sums["alpha_counts_off"].astype(np.float32)
        table["counts_off"] = sums["counts_off"].astype(np.float32)
    else:
        background = None
    if background is not None:
        table["background"] = background
        table["excess"] = counts - background
    if "mask_safe" in sums:
        table["mask_safe"] = sums["mask_safe"]
    if "exposure" in sums:
        table["exposure"] = u.Quantity(
            sums["exposure"].astype(dataset.exposure.data.dtype), dataset.exposure.unit
        )
        table.meta["energy_true_edges"] = list(
            dataset.exposure.geom.axes["energy_true"].edges.to_value(u.TeV)
        )
    table.meta["energy_edges"] = list(dataset.counts.geom.axes["energy"].edges.to_value(u.TeV))
    return table
