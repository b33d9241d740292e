r"""GammaLib's sky-map models ``DiffuseMap`` and ``DiffuseMapCube`` as gammapy template models.

gammapy's `~gammapy.modeling.models.TemplateSpatialModel` differs from GammaLib
in three ways that move the predicted flux by 0.1-4 % (more next to empty
pixels); `GammaLibDiffuseMapSpatialModel` does it as GammaLib does:

- **Pixel values** (``GModelSpatialDiffuseMap::prepare_map``): pixels are
  visited in index order (x fastest); a pixel whose *flux* is negative, NaN or
  infinite is set to zero before the next pixel's flux is computed. The flux
  of a WCS pixel (``GSkyMap::flux``) integrates the interpolated map over the
  pixel in 8 wedges (centre, corners and edge mid-points): the sum over the
  wedges of the mean of the three vertex intensities times the wedge's solid
  angle (a spherical triangle).
- **Normalisation**: with ``normalize`` (GammaLib's default) every pixel is
  divided by the sum of the pixel fluxes, so that the map holds 1 ph/cm2/s; the
  map values are taken as intensities (sr-1) whatever the header unit.
- **Interpolation** (``GSkyMap::operator()(GSkyDir)``): bilinear in pixel
  coordinates between the four neighbouring pixel centres, the indices clamped
  at the map edges (wrapped in longitude for an all-sky map), zero outside
  ``[-0.5, n - 0.5]`` in either pixel coordinate.

GammaLib's ``Normalization`` (or ``Prefactor``) multiplies the map: it is the
parameter ``norm`` here (not dropped).

`GammaLibDiffuseCubeSpatialModel` is GammaLib's map cube
(``GModelSpatialDiffuseCube::cube_intensity``): the same bilinear interpolation
in each energy plane, then log-log interpolation between the two planes that
bracket the energy (``GNodeArray`` on log10 E: *extrapolated* along the first or
last pair of planes outside the cube's energy range, where gammapy gives zero);
where only one of the two is positive, that one; negative values give zero.
The cube is not normalised; energies come from the ``ENERGIES`` extension
(column ``Energy``, unit ``TUNIT1`` or MeV) and intensities are ph/cm2/s/MeV/sr.
"""
import logging
from pathlib import Path

import numpy as np
import astropy.units as u
from astropy.io import fits
from gammapy.maps import WcsGeom, WcsNDMap
from gammapy.modeling import Parameter
from gammapy.modeling.models import SPATIAL_MODEL_REGISTRY, TemplateSpatialModel

from .._compat import parameters_from_dict
from ..errors import InputError

__all__ = [
    "GammaLibDiffuseMapSpatialModel",
    "GammaLibDiffuseCubeSpatialModel",
    "gammalib_bilinear",
    "gammalib_pixel_fluxes",
    "read_gammalib_map",
]

log = logging.getLogger(__name__)

#: Pixels whose fluxes are computed at once (memory: ~40 floats a pixel).
_CHUNK = 65536


def _is_all_sky_in_x(wcs, nx):
    """GammaLib's wrap-around test: the map spans more than 359.99 deg in its first axis."""
    return abs(nx * wcs.wcs.get_cdelt()[0]) > 359.99


def gammalib_bilinear(image, x, y, wrap_x=False):
    """``GSkyMap::operator()(GSkyDir)``: bilinear interpolation at 0-based pixel coordinates ``(x, y)``.

    Parameters
    ----------
    image : `~numpy.ndarray`
        Pixel values, shape ``(ny, nx)`` (pixel centres at integer coordinates).
    x, y : `~numpy.ndarray`
        Pixel coordinates (same shape); NaN for directions the projection cannot map.
    wrap_x : bool
        Wrap the x index (all-sky map) instead of clamping it.

    Returns
    -------
    values : `~numpy.ndarray`
        Interpolated values, zero outside ``[-0.5, n - 0.5]``.
    """
    ny, nx = image.shape
    x, y = np.broadcast_arrays(np.asarray(x, dtype=float), np.asarray(y, dtype=float))
    with np.errstate(invalid="ignore"):
        inside = (x >= -0.5) & (x <= nx - 0.5) & (y >= -0.5) & (y <= ny - 0.5)
    x = np.where(inside, x, 0.0)
    y = np.where(inside, y, 0.0)
    ix, iy = np.floor(x).astype(np.int64), np.floor(y).astype(np.int64)
    x_left, x_right = ix, ix + 1
    if wrap_x:
        x_left = np.where(x_left < 0, x_left + nx, x_left)
        x_right = np.where(x_right >= nx, x_right - nx, x_right)
    else:
        x_left, x_right = np.maximum(x_left, 0), np.minimum(x_right, nx - 1)
    y_left, y_right = np.maximum(iy, 0), np.minimum(iy + 1, ny - 1)
    wx_right, wy_right = x - ix, y - iy
    wx_left, wy_left = 1.0 - wx_right, 1.0 - wy_right
    values = (wx_left * wy_left * image[y_left, x_left] + wx_left * wy_right * image[y_right, x_left]
              + wx_right * wy_left * image[y_left, x_right] + wx_right * wy_right * image[y_right, x_right])
    return np.where(inside, values, 0.0)


def _unit_vectors(wcs, x, y):
    lon, lat = wcs.wcs_pix2world(x, y, 0)
    lon, lat = np.radians(lon), np.radians(lat)
    return np.stack([np.cos(lat) * np.cos(lon), np.cos(lat) * np.sin(lon), np.sin(lat)], axis=-1)


def _triangle_solid_angle(a, b, c):
    """Solid angle of spherical triangles from unit vectors (Van Oosterom & Strackee)."""
    numerator = np.abs(np.einsum("...i,...i", a, np.cross(b, c)))
    denominator = 1.0 + np.einsum("...i,...i", a, b) + np.einsum("...i,...i", b, c) + np.einsum("...i,...i", c, a)
    return 2.0 * np.arctan2(numerator, denominator)


#: Wedge vertices around a pixel centre, in pixel offsets, in GammaLib's order (boundary1 .. boundary8).
_BOUNDARY = np.array([(-0.5, -0.5), (0.0, -0.5), (0.5, -0.5), (0.5, 0.0), (0.5, 0.5), (0.0, 0.5), (-0.5, 0.5),
                      (-0.5, 0.0)])


def gammalib_pixel_fluxes(image, wcs, index=None):
    """``GSkyMap::flux``: the flux of WCS pixels, from the 8 wedges of each pixel.

    Parameters
    ----------
    image : `~numpy.ndarray`
        Pixel values (intensities), shape ``(ny, nx)``.
    wcs : `~astropy.wcs.WCS`
        Celestial WCS of the image.
    index : `~numpy.ndarray`, optional
        Flat pixel indices (``x + nx * y``) to compute; default all pixels.

    Returns
    -------
    flux : `~numpy.ndarray`
        Flux of each pixel requested (intensity times sr).
    """
    ny, nx = image.shape
    wrap = _is_all_sky_in_x(wcs, nx)
    index = np.arange(nx * ny) if index is None else np.asarray(index, dtype=np.int64)
    out = np.empty(index.shape)
    for start in range(0, index.size, _CHUNK):
        part = index[start : start + _CHUNK]
        px, py = (part % nx).astype(float), (part // nx).astype(float)
        bx, by = px[:, None] + _BOUNDARY[:, 0], py[:, None] + _BOUNDARY[:, 1]
        centre = _unit_vectors(wcs, px, py)
        corners = _unit_vectors(wcs, bx, by)
        i0 = gammalib_bilinear(image, px, py, wrap)
        ik = gammalib_bilinear(image, bx, by, wrap)
        nxt = np.roll(np.arange(8), -1)
        omega = _triangle_solid_angle(corners, corners[:, nxt], centre[:, None, :])
        out[start : start + _CHUNK] = np.sum((ik + ik[:, nxt] + i0[:, None]) / 3.0 * omega, axis=1)
    return out


def _neighbours(k, nx, ny, wrap):
    """Flat indices of the 3 x 3 pixels around flat index ``k`` (their fluxes interpolate pixel ``k``)."""
    ky, kx = divmod(int(k), nx)
    xs = np.arange(kx - 1, kx + 2)
    xs = xs % nx if wrap else xs[(xs >= 0) & (xs < nx)]
    ys = np.arange(max(ky - 1, 0), min(ky + 2, ny))
    return np.unique((ys[:, None] * nx + xs[None, :]).ravel())


def prepare_gammalib_map(image, wcs, normalize=True):
    """Pixel values of a ``DiffuseMap`` after GammaLib's ``prepare_map`` (see the module docstring).

    Returns
    -------
    image : `~numpy.ndarray`
        Pixels with bad fluxes zeroed and, with ``normalize``, divided by the total flux.
    total : float
        Total flux before normalisation (ph/cm2/s for an intensity map).
    """
    image = np.array(image, dtype=float)
    ny, nx = image.shape
    wrap = _is_all_sky_in_x(wcs, nx)
    flat = image.reshape(-1)
    with np.errstate(invalid="ignore", over="ignore"):
        flux = gammalib_pixel_fluxes(image, wcs)
        position = 0
        while True:
            bad = np.flatnonzero(~(np.isfinite(flux[position:]) & (flux[position:] >= 0.0)))
            if not bad.size:
                break
            k = position + int(bad[0])
            flat[k] = 0.0
            flux[k] = 0.0
            later = _neighbours(k, nx, ny, wrap)
            later = later[later > k]
            if later.size:
                flux[later] = gammalib_pixel_fluxes(image, wcs, later)
            position = k + 1
    total = float(np.sum(flux))
    if normalize and total > 0.0:
        image /= total
    return image, total


#: Spellings of the degree in ``CUNITn`` that GammaLib accepts (it reads CDELT/CRVAL in degrees) and wcslib refuses.
_DEGREE_SPELLINGS = ("degrees", "degree", "degs", "deg")


def _fix_celestial_units(header, path):
    """Header with ``CUNITn = 'Degrees'`` (and other spellings of the degree) as ``'deg'`` for the sky axes."""
    for axis in (1, 2):
        key = f"CUNIT{axis}"
        value = header.get(key)
        if value is None:
            continue
        text = str(value).strip()
        if text.lower() in _DEGREE_SPELLINGS:
            header[key] = "deg"
        elif text:
            raise InputError(f"{path}: {key}={text!r}: the sky axes of a GammaLib map are in degrees")
    return header


def read_gammalib_map(path):
    """The first sky map of a FITS file, as GammaLib's ``GSkyMap::load`` picks it.

    ``CUNIT1/2 = 'Degrees'`` (or another spelling of the degree), which GammaLib
    reads and astropy's WCS refuses, is read as ``deg``.

    Returns
    -------
    data : `~numpy.ndarray`
        Pixel values, shape ``(n_maps, ny, nx)``.
    header : `~astropy.io.fits.Header`
        Header of the image HDU.

    Raises
    ------
    InputError
        No image HDU with at least two axes, or a HEALPix map (not supported here).
    """
    path = Path(path)
    try:
        with fits.open(path, memmap=False) as hdul:
            if any(str(hdu.header.get("PIXTYPE", "")).strip().upper() == "HEALPIX" for hdu in hdul):
                raise InputError(f"{path}: HEALPix sky maps are not supported for GammaLib's DiffuseMap here")
            for hdu in hdul:
                if isinstance(hdu, (fits.PrimaryHDU, fits.ImageHDU)) and hdu.header.get("NAXIS", 0) >= 2 \
                        and hdu.data is not None:
                    data = np.asarray(hdu.data, dtype=float)
                    return data.reshape((-1,) + data.shape[-2:]), _fix_celestial_units(hdu.header.copy(), path)
    except InputError:
        raise
    except (OSError, ValueError, TypeError) as exc:
        raise InputError(f"{path}: cannot read the sky map ({type(exc).__name__})") from None
    raise InputError(f"{path}: no image HDU with two or more axes (a GammaLib sky map)")


def _image_geom(header, path):
    try:
        return WcsGeom.from_header(header).to_image()
    except Exception as exc:
        raise InputError(f"{path}: the map's WCS is not valid ({type(exc).__name__}: {str(exc)[:200]})") from None


def _write_template(model, overwrite, filename):
    if filename is not None:
        model.filename = str(filename)
    if model.filename is None:
        raise InputError(f"{type(model).__name__}: no filename to write the map to")
    if overwrite or not Path(model.filename).exists():
        model.map.write(model.filename, overwrite=overwrite)


class GammaLibDiffuseMapSpatialModel(TemplateSpatialModel):
    """GammaLib ``DiffuseMap``: ``norm`` times a sky map, prepared and interpolated as GammaLib does.

    See `gpsfast.models.diffuse`. The map data held (``.map``) are after
    GammaLib's preparation (bad pixels zeroed, normalised when ``normalize``).

    Parameters
    ----------
    map : `~gammapy.maps.WcsNDMap`
        Sky map as read from the file (values in sr-1 when not normalised).
    normalize : bool
        GammaLib ``normalize`` attribute (default true: the map holds unit flux).
    filename : str, optional
        Map file (serialisation).
    norm : float or `~gammapy.modeling.Parameter`
        GammaLib ``Normalization``.
    """

    tag = ["GammaLibDiffuseMapSpatialModel", "gl-diffuse-map"]
    lon_0 = Parameter("lon_0", np.nan, unit="deg", frozen=True)
    lat_0 = Parameter("lat_0", np.nan, unit="deg", min=-90, max=90, frozen=True)
    norm = Parameter("norm", 1.0, min=0.001, max=1000.0, frozen=True)

    def __init__(self, map, normalize=True, filename=None, **kwargs):
        kwargs.pop("interp_kwargs", None)
        kwargs.pop("copy_data", None)
        data, self.total_flux = prepare_gammalib_map(map.data.reshape(map.data.shape[-2:]), map.geom.wcs,
                                                     normalize=normalize)
        prepared = WcsNDMap(map.geom.to_image(), data=data, unit="sr-1")
        super().__init__(prepared, normalize=False, filename=filename, copy_data=False, **kwargs)
        self.normalize = bool(normalize)
        self._wrap_x = _is_all_sky_in_x(self.map.geom.wcs, self.map.geom.data_shape[-1])

    @classmethod
    def read(cls, filename, normalize=True, **kwargs):
        """Read the first sky map of a FITS file (as GammaLib does) and prepare it."""
        data, header = read_gammalib_map(filename)
        geom = _image_geom(header, filename)
        return cls(WcsNDMap(geom, data=data[0]), normalize=normalize, filename=filename, **kwargs)

    def evaluate(self, lon, lat, energy=None, lon_0=None, lat_0=None, norm=1.0):
        offset_lon = 0.0 * u.deg if lon_0 is None else lon_0 - self.map_center.data.lon
        offset_lat = 0.0 * u.deg if lat_0 is None else lat_0 - self.map_center.data.lat
        lon = u.Quantity(lon - offset_lon).to_value("deg")
        lat = u.Quantity(lat - offset_lat).to_value("deg")
        lon, lat = np.broadcast_arrays(lon, lat)
        with np.errstate(invalid="ignore"):
            x, y = self.map.geom.wcs.wcs_world2pix(lon, lat, 0)
        value = gammalib_bilinear(self.map.data, x, y, self._wrap_x)
        return u.Quantity(norm).to_value("") * value * u.Unit("sr-1")

    def write(self, overwrite=False, filename=None):
        """Write the map only where the referenced file does not exist (the file is the model's source)."""
        _write_template(self, overwrite, filename)

    def copy(self, **kwargs):
        """Deep copy (the prepared map is not prepared again)."""
        pars = {p.name: p.copy() for p in self.parameters}
        pars.update(kwargs)
        model = self.__class__(self.map, normalize=False, filename=self.filename, **pars)
        model.normalize, model.total_flux = self.normalize, self.total_flux
        return model

    def to_dict(self, full_output=False):
        data = super().to_dict(full_output)
        data["spatial"]["normalize"] = self.normalize
        return data

    @classmethod
    def from_dict(cls, data, **kwargs):
        data = data["spatial"]
        parameters = parameters_from_dict(data["parameters"], cls.default_parameters)
        return cls.read(data["filename"], normalize=data.get("normalize", True),
                        **{p.name: p for p in parameters})


def read_cube_energies(path, n_maps):
    """Energies (MeV) of the planes of a GammaLib map cube (``GEnergies::read`` of the ``ENERGIES`` extension)."""
    try:
        with fits.open(path, memmap=False) as hdul:
            hdu = hdul["ENERGIES"]
            unit = hdu.header.get("TUNIT1", "MeV") or "MeV"
            energy = u.Quantity(np.asarray(hdu.data["Energy"], dtype=float), unit).to_value("MeV")
    except (KeyError, OSError, ValueError, TypeError, u.UnitsError) as exc:
        raise InputError(f"{path}: map cube needs an ENERGIES extension with an 'Energy' column "
                         f"({type(exc).__name__})") from None
    if len(energy) != n_maps:
        raise InputError(f"{path}: {len(energy)} energies in ENERGIES for {n_maps} maps in the cube")
    if len(energy) > 1 and (np.any(energy <= 0) or np.any(np.diff(energy) <= 0)):
        raise InputError(f"{path}: ENERGIES must be positive and increase strictly, got {energy.tolist()} MeV")
    return energy


class GammaLibDiffuseCubeSpatialModel(TemplateSpatialModel):
    """GammaLib ``DiffuseMapCube``: ``norm`` times a map cube, interpolated as GammaLib does.

    See `gpsfast.models.diffuse`. The spectral model of the source is then a
    relative factor.

    Parameters
    ----------
    map : `~gammapy.maps.WcsNDMap`
        Cube with an ``energy_true`` node axis, in cm-2 s-1 MeV-1 sr-1.
    filename : str, optional
        Cube file (serialisation).
    norm : float or `~gammapy.modeling.Parameter`
        GammaLib ``Normalization``.
    """

    tag = ["GammaLibDiffuseCubeSpatialModel", "gl-diffuse-cube"]
    lon_0 = Parameter("lon_0", np.nan, unit="deg", frozen=True)
    lat_0 = Parameter("lat_0", np.nan, unit="deg", min=-90, max=90, frozen=True)
    norm = Parameter("norm", 1.0, min=0.001, max=1000.0, frozen=True)

    def __init__(self, map, filename=None, **kwargs):
        kwargs.pop("interp_kwargs", None)
        kwargs.pop("copy_data", None)
        kwargs.pop("normalize", None)
        super().__init__(map, normalize=False, filename=filename, copy_data=False, **kwargs)
        self._log_energy = np.log10(self.map.geom.axes["energy_true"].center.to_value("MeV"))
        self._wrap_x = _is_all_sky_in_x(self.map.geom.wcs, self.map.geom.data_shape[-1])

    @classmethod
    def read(cls, filename, **kwargs):
        """Read a GammaLib map cube (first image HDU and its ``ENERGIES`` extension)."""
        from gammapy.maps import MapAxis

        data, header = read_gammalib_map(filename)
        energy = read_cube_energies(filename, len(data))
        axis = MapAxis.from_nodes(energy * u.MeV, name="energy_true", interp="log")
        geom = _image_geom(header, filename).to_cube([axis])
        cube = WcsNDMap(geom, data=data, unit="cm-2 s-1 MeV-1 sr-1")
        return cls(cube, filename=filename, **kwargs)

    def evaluate(self, lon, lat, energy=None, lon_0=None, lat_0=None, norm=1.0):
        if energy is None:
            raise ValueError("GammaLibDiffuseCubeSpatialModel needs an energy")
        offset_lon = 0.0 * u.deg if lon_0 is None else lon_0 - self.map_center.data.lon
        offset_lat = 0.0 * u.deg if lat_0 is None else lat_0 - self.map_center.data.lat
        lon = u.Quantity(lon - offset_lon).to_value("deg")
        lat = u.Quantity(lat - offset_lat).to_value("deg")
        lon, lat = np.broadcast_arrays(lon, lat)
        with np.errstate(invalid="ignore"):
            x, y = self.map.geom.wcs.wcs_world2pix(lon, lat, 0)
        planes = np.stack([gammalib_bilinear(plane, x, y, self._wrap_x) for plane in self.map.data])
        log_e = np.log10(u.Quantity(energy).to_value("MeV"))
        shape = np.broadcast_shapes(x.shape, np.shape(log_e))
        padded = (len(planes),) + (1,) * (len(shape) - x.ndim) + x.shape
        planes = np.broadcast_to(planes.reshape(padded), (len(planes),) + shape)
        log_e = np.broadcast_to(log_e, shape)
        nodes = self._log_energy
        if len(nodes) == 1:
            intensity = planes[0]
        else:
            left = np.clip(np.searchsorted(nodes, log_e, side="right") - 1, 0, len(nodes) - 2)
            w_right = (log_e - nodes[left]) / (nodes[left + 1] - nodes[left])
            i_left = np.take_along_axis(planes, left[None], axis=0)[0]
            i_right = np.take_along_axis(planes, left[None] + 1, axis=0)[0]
            both = (i_left > 0) & (i_right > 0)
            with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
                log_mix = (1.0 - w_right) * np.log(np.where(both, i_left, 1.0)) + w_right * np.log(
                    np.where(both, i_right, 1.0))
            intensity = np.where(both, np.exp(log_mix),
                                 np.where(i_left > 0, i_left, np.where(i_right > 0, i_right, 0.0)))
        value = np.maximum(u.Quantity(norm).to_value("") * intensity, 0.0)
        return value * self.map.unit

    def write(self, overwrite=False, filename=None):
        """Write the cube only where the referenced file does not exist (the file is the model's source)."""
        _write_template(self, overwrite, filename)

    def copy(self, **kwargs):
        """Deep copy."""
        pars = {p.name: p.copy() for p in self.parameters}
        pars.update(kwargs)
        return self.__class__(self.map.copy(), filename=self.filename, **pars)

    @classmethod
    def from_dict(cls, data, **kwargs):
        data = data["spatial"]
        parameters = parameters_from_dict(data["parameters"], cls.default_parameters)
        return cls.read(data["filename"], **{p.name: p for p in parameters})


for _cls in (GammaLibDiffuseMapSpatialModel, GammaLibDiffuseCubeSpatialModel):
    if _cls not in SPATIAL_MODEL_REGISTRY:
        SPATIAL_MODEL_REGISTRY.append(_cls)
