"""Fast twins of gammapy objects: the one place that decides which objects run gpsfast's code.

A *twin* is an object of a gpsfast subclass of a gammapy class sharing the
gammapy object's state: the same `~gammapy.modeling.Parameter` objects for a
model, the same maps for an IRF map or a dataset. Every way of accelerating
gammapy objects asks here:

- `gpsfast.models.accelerate_models` (compiled generalized Gaussian models);
- `gpsfast.irf.fast_irfs` (fast PSF and energy dispersion maps in datasets);
- `gpsfast.evaluate.fast_dataset` / `fast_datasets` (compiled likelihood);
- the drop-in mode `gpsfast.accelerated`, whose patched gammapy methods run the
  twin's method.

The rule: an object of exactly a registered gammapy class has a twin; objects of
its subclasses (which may override the formulas) and gpsfast's own classes run
their own methods. The module defining a fast class registers it
(`register`) when it is imported.
"""
__all__ = ["fast_class", "fast_or_same", "fast_twin", "has_twin", "register"]

_FACTORIES = {}


def register(gammapy_cls, fast_cls, make):
    """Register the fast subclass of a gammapy class and the function making a twin.

    Parameters
    ----------
    gammapy_cls : type
        The gammapy class (only objects of exactly this class are switched).
    fast_cls : type
        Its gpsfast subclass.
    make : callable
        ``make(obj)`` returns the ``fast_cls`` twin of a ``gammapy_cls`` object.
    """
    if not issubclass(fast_cls, gammapy_cls):
        raise TypeError(f"{fast_cls.__name__} is not a subclass of {gammapy_cls.__name__}")
    _FACTORIES[gammapy_cls] = (fast_cls, make)


def fast_class(cls):
    """The registered fast subclass of exactly ``cls``, else None."""
    entry = _FACTORIES.get(cls)
    return None if entry is None else entry[0]


def has_twin(obj):
    """Whether ``obj`` is of exactly a gammapy class with a registered fast subclass."""
    return type(obj) in _FACTORIES


def fast_twin(obj):
    """A new fast twin of ``obj`` sharing its state, or None where it has none (see `has_twin`).

    Parameters
    ----------
    obj : object
        A gammapy object.

    Returns
    -------
    twin : object or None
    """
    entry = _FACTORIES.get(type(obj))
    return None if entry is None else entry[1](obj)


def fast_or_same(obj):
    """The fast twin of ``obj`` (`fast_twin`), or ``obj`` itself where it has none."""
    twin = fast_twin(obj)
    return obj if twin is None else twin
